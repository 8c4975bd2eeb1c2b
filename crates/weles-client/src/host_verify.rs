//! The tenant's own check of a manager's host: the host TPM's evidence, verified here, never
//! taken on the manager's word.
//!
//! In order (each step names what failed):
//! 1. the EK certificate chains to one of the TPM makers' CAs the tenant configured — directly
//!    or through intermediate CAs (the tenant's or the manager's, each a CA, each verified, at
//!    most four) — every certificate on the path is within its validity, and the EK certificate
//!    certifies exactly the EK public area the evidence carries;
//! 2. the credential the tenant made for (EK, AK name) came back decrypted: the AK lives in the
//!    TPM that holds the EK (only that TPM can answer, and only with that AK loaded);
//! 3. the AK is a restricted signing key (it signs only what the TPM itself generated);
//! 4. the quote verifies with the AK, carries the qualifying data binding the tenant's nonce and
//!    the manager key, covers sha256 PCRs 0–10 (and sha1 PCRs 0–10 when the host quotes that
//!    bank too), and its PCR digest is over the reported values;
//! 5. the firmware's event log, when sent (or when the policy requires one), replays in every
//!    quoted bank to the quoted PCRs 0–7 (a PCR it never extends must be zero) and to PCRs 8–9
//!    where it extends them; the host's IMA log replays to the quoted PCR 10 in every quoted
//!    bank and every entry complies with the host policy; PCRs 0–9 match the policy's
//!    measured-boot reference values, where it lists any;
//! 6. (in the caller) the TEE report data binds this AK: report and quote come from one machine.

use base64ct::Encoding;
use sha2::Digest as _;
use weles_ima::{Bank, Config, Digest, HashAlgorithm, Verifier};
use weles_policy::Policy;
use weles_policy::ima_keys::TrustedKey;
use weles_proto::api::{HostEvidence, HostKeys, host_qualifying_data};
use weles_tpm::attest::{Quote, is_attestation_key, pcr_digest, verify_signature};
use weles_tpm::credential::EkPublic;
use weles_tpm::event_log::{ALG_SHA1, EventLog, event_type_name};
use weles_tpm::public::EccPublic;
use x509_cert::der::{Decode, Encode};

/// What the tenant trusts about hosts.
pub struct HostTrust {
    /// CA certificates (DER) of TPM makers: an EK certificate must chain to one of them.
    pub ek_cas: Vec<Vec<u8>>,
    /// Intermediate CA certificates (DER) the tenant offers as path material (not trusted by
    /// themselves).
    pub ek_intermediates: Vec<Vec<u8>>,
    /// The host policy: IMA entries (`[ima]`) and measured-boot reference values (`[host]`).
    pub policy: Policy,
    /// "Now" for certificate validity, seconds since the epoch (injected in tests).
    pub now: u64,
}

/// A host that checked out.
#[derive(Clone, Debug)]
pub struct HostVerdict {
    /// SHA-256 of the EK certificate, hex (to pin).
    pub ek_certificate_sha256: String,
    /// The EK's kind: "RSA 2048 (template L-1)" or "ECC P-256 (template L-2)".
    pub ek_kind: &'static str,
    /// SHA-256 of the AK's TPMT_PUBLIC, hex (what the TEE report binds).
    pub ak_sha256: String,
    /// Entries of the host IMA log verified up to the quoted PCR 10.
    pub ima_entries: u64,
    /// PCRs 0–9 that matched a reference value.
    pub reference_pcrs: Vec<u32>,
    /// Events of the firmware event log replayed to the quote (`None`: no log was sent).
    pub boot_events: Option<usize>,
    /// The banks quoted and checked.
    pub banks: Vec<&'static str>,
}

/// Why a host does not check out; the message says which step.
#[derive(Debug, thiserror::Error)]
#[error("host attestation: {0}")]
pub struct HostRefused(pub String);

fn refuse<T>(why: impl Into<String>) -> Result<T, HostRefused> {
    Err(HostRefused(why.into()))
}

fn unhex(what: &str, s: &str) -> Result<Vec<u8>, HostRefused> {
    hex::decode(s).map_err(|_| HostRefused(format!("{what} is not hex")))
}

/// A credential for the host's AK, to send with the evidence request: (credential, secret the
/// host must return). Also checks the keys' form.
pub fn make_challenge(
    keys: &HostKeys,
) -> Result<(weles_proto::api::Credential, [u8; 32]), HostRefused> {
    let ek = EkPublic::parse(&unhex("ek_public", &keys.ek_public)?)
        .map_err(|e| HostRefused(format!("the EK public area: {e}")))?;
    let ak = EccPublic::parse(&unhex("ak_public", &keys.ak_public)?)
        .map_err(|e| HostRefused(format!("the AK public area: {e}")))?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| HostRefused(format!("randomness: {e}")))?;
    let (blob, enc) = weles_tpm::credential::make_credential(&ek, &ak.name(), &secret)
        .map_err(|e| HostRefused(format!("making the credential: {e}")))?;
    Ok((
        weles_proto::api::Credential {
            blob: hex::encode(blob),
            secret: hex::encode(enc),
        },
        secret,
    ))
}

/// Verifies the host evidence for `nonce` and `manager_key`, with the credential secret the
/// tenant sent (`expected_secret`).
pub fn verify(
    host: &HostEvidence,
    nonce: &str,
    manager_key: &str,
    expected_secret: &[u8],
    trust: &HostTrust,
) -> Result<HostVerdict, HostRefused> {
    // 1. The EK and its certificate.
    let ek_public = unhex("ek_public", &host.keys.ek_public)?;
    let ek =
        EkPublic::parse(&ek_public).map_err(|e| HostRefused(format!("the EK public area: {e}")))?;
    let cert_der = unhex("ek_certificate", &host.keys.ek_certificate)?;
    let mut intermediates = trust.ek_intermediates.clone();
    for c in &host.keys.ek_chain {
        intermediates.push(unhex("ek_chain", c)?);
    }
    if intermediates.len() > MAX_OFFERED_INTERMEDIATES {
        return refuse(format!(
            "{} intermediate certificates offered for the EK certificate (at most {MAX_OFFERED_INTERMEDIATES})",
            intermediates.len()
        ));
    }
    check_ek_certificate(&cert_der, &ek, trust, &intermediates)?;

    // 2. The AK shares the EK's TPM.
    let activated = match &host.activated {
        Some(a) => unhex("activated", a)?,
        None => return refuse("the manager did not answer the credential (AK not activated)"),
    };
    if !constant_time_eq(&activated, expected_secret) {
        return refuse(
            "the credential came back with another secret: the AK is not in the TPM that \
             holds the certified EK",
        );
    }

    // 3. The AK.
    let ak_public = unhex("ak_public", &host.keys.ak_public)?;
    let ak = EccPublic::parse(&ak_public)
        .map_err(|e| HostRefused(format!("the AK public area: {e}")))?;
    if !is_attestation_key(&ak) {
        return refuse("the AK is not a restricted ECDSA P-256 signing key");
    }

    // 4. The quote.
    let attest = unhex("quote", &host.quote)?;
    let signature = unhex("signature", &host.signature)?;
    verify_signature(&ak, &attest, &signature)
        .map_err(|e| HostRefused(format!("the quote: {e}")))?;
    let quote = Quote::parse(&attest).map_err(|e| HostRefused(format!("the quote: {e}")))?;
    if quote.extra_data != host_qualifying_data(nonce, manager_key) {
        return refuse(
            "the quote's qualifying data does not bind our nonce and this manager's key \
             (a replayed or relayed quote)",
        );
    }
    let wanted: Vec<u32> = (0..=10).collect();
    let sha256_only = [(weles_tpm::ids::ALG_SHA256, wanted.clone())];
    let with_sha1 = [
        (weles_tpm::ids::ALG_SHA256, wanted.clone()),
        (ALG_SHA1, wanted),
    ];
    let sha1_quoted = if quote.selection == sha256_only {
        false
    } else if quote.selection == with_sha1 {
        true
    } else {
        return refuse(
            "the quote does not cover exactly sha256 PCRs 0–10 (and optionally sha1 PCRs 0–10)",
        );
    };
    let pcrs = pcr_values(&host.pcrs, 32, "sha256")?;
    let pcrs_sha1 = match (&host.pcrs_sha1, sha1_quoted) {
        (Some(v), true) => Some(pcr_values(v, 20, "sha1")?),
        (None, false) => None,
        _ => return refuse("the sha1 PCR values do not match the quote's banks"),
    };
    let quoted: Vec<&[u8]> = pcrs
        .iter()
        .chain(pcrs_sha1.iter().flatten())
        .map(Vec::as_slice)
        .collect();
    if quote.pcr_digest != pcr_digest(quoted) {
        return refuse("the reported PCR values are not the ones quoted");
    }

    // 5. The firmware's event log, the IMA log and the reference values.
    let event_log = match &host.event_log {
        Some(b64) => Some(
            base64ct::Base64::decode_vec(b64)
                .map_err(|_| HostRefused("event_log is not base64".into()))?,
        ),
        None if trust.policy.host_event_log_required => {
            return refuse("the host sent no firmware event log, and the host policy requires one");
        }
        None => None,
    };
    let boot_log = match &event_log {
        Some(bytes) => {
            let log = EventLog::parse(bytes).map_err(|e| HostRefused(e.to_string()))?;
            check_event_log(&log, weles_tpm::ids::ALG_SHA256, &pcrs)?;
            if let Some(sha1) = &pcrs_sha1 {
                check_event_log(&log, ALG_SHA1, sha1)?;
            }
            Some(log)
        }
        None => None,
    };
    let log = base64ct::Base64::decode_vec(&host.ima_log)
        .map_err(|_| HostRefused("ima_log is not base64".into()))?;
    let mut v = Verifier::new(Config {
        banks: vec![Bank::Sha256],
        ..Config::default()
    });
    let mut expected_pcr10 = vec![(HashAlgorithm::Sha256, &pcrs[10])];
    if let Some(sha1) = &pcrs_sha1 {
        expected_pcr10.push((HashAlgorithm::Sha1, &sha1[10]));
    }
    for (alg, value) in expected_pcr10 {
        let d = Digest::new(alg, value).ok_or_else(|| HostRefused("PCR 10".into()))?;
        v.expect_pcr(d)
            .map_err(|e| HostRefused(format!("PCR 10: {e}")))?;
    }
    v.verify_all(&log, &trust.policy)
        .map_err(|e| HostRefused(format!("the host IMA log: {e}")))?;
    let Some(entries) = v.pcr_matched_at() else {
        return refuse(format!(
            "the host IMA log ({} entries) does not replay to the quoted PCR 10",
            v.state().entries
        ));
    };
    if let Some(bad) = v.violations().iter().find(|x| x.index < entries) {
        return refuse(format!(
            "the host IMA log breaks the host policy at entry {} ({}): {}",
            bad.index,
            bad.path,
            bad.reason.as_str()
        ));
    }
    let mut reference_pcrs = Vec::new();
    for (index, allowed) in &trust.policy.host_pcrs {
        let value = &pcrs[*index as usize];
        if !allowed.iter().any(|d| d.as_bytes() == value.as_slice()) {
            return refuse(format!(
                "PCR {index} is sha256:{}, not a reference value of the host policy{}",
                hex::encode(value),
                boot_log
                    .as_ref()
                    .map(|l| measured_into(l, *index))
                    .unwrap_or_default()
            ));
        }
        reference_pcrs.push(*index);
    }
    Ok(HostVerdict {
        ek_certificate_sha256: hex::encode(sha2::Sha256::digest(&cert_der)),
        ek_kind: ek.kind(),
        ak_sha256: weles_proto::api::ak_sha256(&ak_public),
        ima_entries: entries,
        reference_pcrs,
        boot_events: boot_log.map(|l| l.events.len()),
        banks: if sha1_quoted {
            vec!["sha256", "sha1"]
        } else {
            vec!["sha256"]
        },
    })
}

fn pcr_values(values: &[String], size: usize, bank: &str) -> Result<Vec<Vec<u8>>, HostRefused> {
    let v: Vec<Vec<u8>> = values
        .iter()
        .map(|p| unhex("pcrs", p))
        .collect::<Result<_, _>>()?;
    if v.len() != 11 || v.iter().any(|p| p.len() != size) {
        return refuse(format!(
            "the {bank} PCR values are not eleven {bank} digests"
        ));
    }
    Ok(v)
}

/// The event log replays, in bank `alg`, to the quoted PCRs: 0–7 always (never extended:
/// zero), 8–9 where it extends them.
fn check_event_log(log: &EventLog, alg: u16, quoted: &[Vec<u8>]) -> Result<(), HostRefused> {
    let bank = if alg == ALG_SHA1 { "sha1" } else { "sha256" };
    let replayed = log.replay(alg).map_err(|e| HostRefused(e.to_string()))?;
    for pcr in 0..=9u32 {
        let value = &quoted[pcr as usize];
        let ok = match replayed.get(&pcr) {
            Some(r) => r == value,
            None => pcr > 7 || value.iter().all(|&b| b == 0),
        };
        if !ok {
            return refuse(format!(
                "the firmware event log does not replay to the quoted {bank} PCR {pcr} \
                 (replayed {}, quoted {}): the log is not this boot's{}",
                replayed
                    .get(&pcr)
                    .map(hex::encode)
                    .unwrap_or_else(|| "nothing".into()),
                hex::encode(value),
                measured_into(log, pcr)
            ));
        }
    }
    Ok(())
}

/// "; the event log measured into PCR n: …" — what the tenant needs to see why a PCR differs.
fn measured_into(log: &EventLog, pcr: u32) -> String {
    let events: Vec<String> = log
        .events
        .iter()
        .filter(|e| e.pcr == pcr && e.event_type != weles_tpm::event_log::EV_NO_ACTION)
        .map(|e| {
            let sha256 = e
                .digests
                .iter()
                .find(|(a, _)| *a == weles_tpm::ids::ALG_SHA256)
                .map(|(_, d)| hex::encode(&d[..8]))
                .unwrap_or_default();
            format!(
                "#{} {} sha256:{sha256}…",
                e.index,
                event_type_name(e.event_type)
            )
        })
        .collect();
    if events.is_empty() {
        return String::new();
    }
    format!(
        "; the event log measured into PCR {pcr}: {}",
        events.join(", ")
    )
}

/// Whether `cert` carries a valid signature by the key of `issuer_der` (RSA PKCS#1 v1.5 or
/// ECDSA, SHA-256/384) and names it as issuer.
fn signed_by(cert: &x509_cert::Certificate, issuer_der: &[u8]) -> bool {
    let Ok(issuer) = x509_cert::Certificate::from_der(issuer_der) else {
        return false;
    };
    if cert.tbs_certificate().issuer() != issuer.tbs_certificate().subject() {
        return false;
    }
    let Ok(tbs) = cert.tbs_certificate().to_der() else {
        return false;
    };
    let (hash_alg, digest) = match cert.signature_algorithm().oid.to_string().as_str() {
        "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" => {
            (HashAlgorithm::Sha256, sha2::Sha256::digest(&tbs).to_vec())
        }
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => {
            (HashAlgorithm::Sha384, sha2::Sha384::digest(&tbs).to_vec())
        }
        _ => return false,
    };
    TrustedKey::from_der("EK CA", issuer_der)
        .map(|key| key.verify_prehashed(hash_alg, &digest, cert.signature().raw_bytes()))
        .unwrap_or(false)
}

fn valid_at(cert: &x509_cert::Certificate, now: u64) -> bool {
    let v = cert.tbs_certificate().validity();
    v.not_before.to_unix_duration().as_secs() <= now
        && now <= v.not_after.to_unix_duration().as_secs()
}

fn is_ca(cert: &x509_cert::Certificate) -> bool {
    use x509_cert::ext::pkix::BasicConstraints;
    matches!(
        cert.tbs_certificate().get_extension::<BasicConstraints>(),
        Ok(Some((_, bc))) if bc.ca
    )
}

/// Longest path above the EK certificate: intermediates, then a configured CA.
const MAX_INTERMEDIATES: usize = 4;
/// Path building tries intermediates depth-first: bound how many it may be offered.
const MAX_OFFERED_INTERMEDIATES: usize = 16;

/// A path from `cert` to one of the tenant's CAs, through `intermediates` (each a CA, valid
/// now, signing the one below); `depth` intermediates may still be used.
fn chains_to_ca(
    cert: &x509_cert::Certificate,
    trust: &HostTrust,
    intermediates: &[Vec<u8>],
    depth: usize,
) -> bool {
    if trust.ek_cas.iter().any(|ca| {
        signed_by(cert, ca)
            && x509_cert::Certificate::from_der(ca).is_ok_and(|c| valid_at(&c, trust.now))
    }) {
        return true;
    }
    depth > 0
        && intermediates.iter().any(|der| {
            let Ok(i) = x509_cert::Certificate::from_der(der) else {
                return false;
            };
            i != *cert
                && is_ca(&i)
                && valid_at(&i, trust.now)
                && signed_by(cert, der)
                && chains_to_ca(&i, trust, intermediates, depth - 1)
        })
}

fn check_ek_certificate(
    der: &[u8],
    ek: &EkPublic,
    trust: &HostTrust,
    intermediates: &[Vec<u8>],
) -> Result<(), HostRefused> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| HostRefused(format!("the EK certificate: {e}")))?;
    if !chains_to_ca(&cert, trust, intermediates, MAX_INTERMEDIATES) {
        return refuse(format!(
            "the EK certificate (issuer {}) does not chain to any configured TPM maker CA \
             ({} intermediate certificate(s) offered; give a missing one with \
             --host-ca-intermediate)",
            cert.tbs_certificate().issuer(),
            intermediates.len()
        ));
    }
    if !valid_at(&cert, trust.now) {
        return refuse("the EK certificate is not valid now");
    }
    // The certificate's key is exactly the EK's.
    let ek_spki = ek
        .spki_der()
        .map_err(|e| HostRefused(format!("the EK: {e}")))?;
    let cert_spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| HostRefused(format!("the EK certificate: {e}")))?;
    if ek_spki != cert_spki {
        return refuse("the EK certificate certifies another key than the host's EK");
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
