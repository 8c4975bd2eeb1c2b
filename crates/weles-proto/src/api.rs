//! The tenant API's JSON bodies and the request-signing rule (`docs/api.md`), both ends.

use serde::{Deserialize, Serialize};

/// sshsig namespace of API request signatures (distinct from `weles-policy`: a signed policy is
/// never a signed request, nor the reverse).
pub const REQUEST_NAMESPACE: &str = "weles-api";
/// sshsig namespace of the manager's evidence signatures.
pub const EVIDENCE_NAMESPACE: &str = "weles-evidence";
/// sshsig namespace of audit records.
pub const AUDIT_NAMESPACE: &str = "weles-audit";

/// Headers of a signed request.
pub const H_TENANT: &str = "x-weles-tenant";
pub const H_TIME: &str = "x-weles-time";
pub const H_NONCE: &str = "x-weles-nonce";
pub const H_SIGNATURE: &str = "x-weles-signature";

/// How far a request's time may be from the manager's clock.
pub const MAX_SKEW_MS: u64 = 300_000;

/// The exact bytes a tenant signs for one request. Binding the manager's key keeps a request
/// meant for one manager from being replayed to another; the body hash binds the body; time and
/// nonce make it single-use.
pub fn request_message(
    manager_key: &str,
    method: &str,
    target: &str,
    body_sha256_hex: &str,
    time_ms: u64,
    nonce: &str,
) -> Vec<u8> {
    format!(
        "weles-api-v1\n{manager_key}\n{method}\n{target}\n{body_sha256_hex}\n{time_ms}\n{nonce}\n"
    )
    .into_bytes()
}

/// `POST /v1/evidence` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceRequest {
    /// 16–64 random bytes, hex.
    pub nonce: String,
    /// A credential for the host's AK, made by the tenant with the host's EK
    /// (`GET /v1/host`): the manager answers with what the host TPM decrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
}

/// TPM2_MakeCredential's output (without size prefixes), hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// TPM2B_ID_OBJECT contents (integrity HMAC and encrypted secret).
    pub blob: String,
    /// TPM2B_ENCRYPTED_SECRET contents (the seed, RSA-OAEP to the EK).
    pub secret: String,
}

/// `GET /v1/host`: the host TPM's keys, for the tenant to make a credential (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKeys {
    /// The EK's TPMT_PUBLIC (RSA 2048, template L-1).
    pub ek_public: String,
    /// The EK certificate (DER) from the TPM's NV memory.
    pub ek_certificate: String,
    /// The AK's TPMT_PUBLIC (restricted ECDSA P-256).
    pub ak_public: String,
    /// Intermediate CA certificates (DER, hex) between the EK certificate and its maker's root,
    /// as the operator configured them: path material for the tenant, never trusted by itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ek_chain: Vec<String>,
}

/// What the host TPM says, bound to the tenant's nonce and the manager key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEvidence {
    #[serde(flatten)]
    pub keys: HostKeys,
    /// What ActivateCredential returned for the tenant's credential (hex); absent without one.
    pub activated: Option<String>,
    /// TPMS_ATTEST of TPM2_Quote over sha256 PCRs 0–10 (then sha1 PCRs 0–10 when the host is
    /// configured to quote sha1 too) with qualifying data [`host_qualifying_data`] (hex).
    pub quote: String,
    /// Its TPMT_SIGNATURE by the AK (hex).
    pub signature: String,
    /// The quoted PCRs' values, sha256 bank, index 0–10 (hex), read right after the quote.
    pub pcrs: Vec<String>,
    /// The same for the sha1 bank, when quoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcrs_sha1: Option<Vec<String>>,
    /// The host's binary IMA measurement list, read after the quote (base64).
    pub ima_log: String,
    /// The firmware's measured-boot event log (TCG crypto-agile format, base64), when the host
    /// has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log: Option<String>,
}

/// The qualifying data of the host quote: SHA-256 binding the tenant's nonce and the manager
/// key, so a quote made for another nonce or another manager does not fit.
pub fn host_qualifying_data(nonce_hex: &str, manager_key: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [
        b"weles-host-quote-v1\n".as_slice(),
        nonce_hex.as_bytes(),
        b"\n",
        manager_key.as_bytes(),
        b"\n",
    ] {
        h.update(part);
    }
    h.finalize().into()
}

/// SHA-256 of the AK's TPMT_PUBLIC, hex: what the TEE report data binds.
pub fn ak_sha256(ak_public: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(ak_public))
}

/// What the manager says about itself, bound to the tenant's nonce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// `sim` (no hardware: proves nothing about the platform), later `sgx`, `tsm`.
    pub tee: String,
    pub nonce: String,
    /// The manager identity key M (OpenSSH `ssh-ed25519 …`).
    pub manager_key: String,
    /// SHA-256 of the TLS certificate's SubjectPublicKeyInfo, hex.
    pub tls_spki_sha256: String,
    /// SHA-512(`"weles-report-v1" ‖ nonce ‖ M ‖ TLS SPKI hash [‖ host AK hash]`), hex: what a TEE
    /// report carries ([`report_data`]).
    pub report_data: String,
    /// The TEE's report over `report_data` (for `sim`: a JSON description, no signature).
    pub report: String,
    /// M's sshsig (namespace `weles-evidence`) over `report_data` (hex text): M is held by
    /// whoever answered.
    pub signature: String,
    pub manager_version: String,
    /// The host TPM's quote, keys and IMA log, when the manager attests its host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostEvidence>,
}

/// The report data a TEE report must carry for this evidence. With host attestation, it also
/// binds the host's AK (`host_ak_sha256`): a TEE report and a TPM quote from different machines
/// do not fit together.
pub fn report_data(
    nonce_hex: &str,
    manager_key: &str,
    tls_spki_sha256_hex: &str,
    host_ak_sha256_hex: Option<&str>,
) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha512::new();
    for part in [
        b"weles-report-v1\n".as_slice(),
        nonce_hex.as_bytes(),
        b"\n",
        manager_key.as_bytes(),
        b"\n",
        tls_spki_sha256_hex.as_bytes(),
        b"\n",
    ] {
        h.update(part);
    }
    if let Some(ak) = host_ak_sha256_hex {
        h.update(b"host-ak:");
        h.update(ak.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// `PUT /v1/vms/{vm}/policy` body: the policy file and the tenant's detached signature.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpload {
    pub policy: String,
    /// Armored sshsig (namespace `weles-policy`), as `weles policy sign` / `ssh-keygen -Y sign`.
    pub signature: String,
}

/// One VM as its tenant sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    pub name: String,
    pub state: String,
    pub reason: String,
    pub policy_version: Option<u64>,
    pub entries: u64,
    pub extends: u64,
    pub boots: u64,
    /// The newest event about this VM (sequence number), if any.
    pub last_event: Option<u64>,
    /// The first violation of this boot.
    pub violation: Option<serde_json::Value>,
    /// The vTPM's ECC EK certificate (DER, hex), issued by the manager's EK CA.
    pub ek_certificate: Option<String>,
    /// The VM's SSH host key (OpenSSH), once the manager read it from the vTPM and accepted it.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Its current OpenSSH host certificate from the tenant's SSH CA.
    #[serde(default)]
    pub host_certificate: Option<String>,
    /// The host names the tenant's policy gives it (the certificate's principals).
    #[serde(default)]
    pub hostnames: Vec<String>,
}

/// A page of events (`GET /v1/vms/{vm}/events`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<serde_json::Value>,
    /// Ask with `after=next` for the following page.
    pub next: u64,
    /// Events after the requested one that are no longer kept start here.
    pub lost_before: Option<u64>,
}

/// An API error body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable: `unauthenticated`, `replayed`, `forbidden`, `unknown_vm`, `bad_signature`,
    /// `stale_version`, `invalid_policy`, `bad_request`, `not_found`, `internal`.
    pub error: String,
    pub message: String,
}

/// `PUT /v1/webhook` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSet {
    /// `http://HOST[:PORT]/PATH` or `https://HOST[:PORT]/PATH`.
    pub url: String,
    /// The HMAC-SHA256 key, hex, at least 16 bytes.
    pub secret: String,
    /// For `https://`: the CA certificate(s), PEM, that issued the receiver's certificate —
    /// then only they are trusted; absent: the manager host's system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// How a tenant's webhook deliveries are going (`GET /v1/webhook`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryState {
    pub url: String,
    /// The last event number the receiver accepted.
    pub delivered: u64,
    /// The event being delivered, if one is waiting.
    pub pending: Option<u64>,
    /// Failed attempts at the pending event.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_ms: Option<u64>,
}
