//! The tenant's side of the tenant API (`docs/api.md`): TLS to a manager whose key is pinned
//! (not a CA's word), requests signed with the tenant's SSH key, and the trust file that
//! remembers a manager. Used by the `weles` CLI (and by tests that play a tenant).

pub mod host_verify;

/// Intel DCAP collateral and verification, for the CLI's trust flags.
pub use weles_tee::dcap;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use base64ct::Encoding as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use ssh_key::encoding::Encode as _;
use weles_proto::api;
use weles_proto::http::{self, Response};

/// What `weles manager trust` pinned.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trust {
    /// `https://host:port`.
    pub url: String,
    /// The manager identity key M (OpenSSH).
    pub manager_key: String,
    /// SHA-256 of the manager's TLS key (SubjectPublicKeyInfo), hex.
    pub tls_spki_sha256: String,
    pub tee: String,
    /// The tenant name and private key file requests are signed with.
    pub tenant: String,
    pub key: PathBuf,
    pub trusted_at_ms: u64,
    /// The host as attested at trust time (`--host-ca`): absent if the host was not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<TrustedHost>,
}

/// The host TPM pinned by `weles manager trust --host-ca`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrustedHost {
    /// SHA-256 of the EK certificate, hex.
    pub ek_certificate_sha256: String,
    /// SHA-256 of the AK's TPMT_PUBLIC, hex.
    pub ak_sha256: String,
}

/// `$WELES_HOME` or `~/.config/weles`.
pub fn home() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("WELES_HOME") {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME").context("neither WELES_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".config/weles"))
}

pub fn trust_path() -> anyhow::Result<PathBuf> {
    Ok(home()?.join("manager.json"))
}

pub fn load_trust() -> anyhow::Result<Trust> {
    let path = trust_path()?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "no trusted manager ({}: {e}); run `weles manager trust URL --tenant NAME --key KEY` first",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| path.display().to_string())
}

pub fn save_trust(t: &Trust) -> anyhow::Result<PathBuf> {
    let path = trust_path()?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(t)? + "\n")
        .with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, &path).with_context(|| path.display().to_string())?;
    Ok(path)
}

/// Accepts exactly the pinned TLS key (or, when trusting for the first time, any key — the
/// evidence must then bind the key that was seen); the handshake signature is always checked.
#[derive(Debug)]
struct PinnedKey {
    pin: Option<[u8; 32]>,
    seen: Mutex<Option<[u8; 32]>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], String> {
    use x509_cert::der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(|e| e.to_string())?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| e.to_string())?;
    Ok(sha2::Sha256::digest(&spki).into())
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = spki_sha256(end_entity).map_err(rustls::Error::General)?;
        if let Some(pin) = self.pin
            && pin != got
        {
            return Err(rustls::Error::General(format!(
                "the manager's TLS key {} is not the pinned {} (a different manager, or an attack)",
                hex::encode(got),
                hex::encode(pin)
            )));
        }
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(got);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Signs requests as a tenant.
pub struct Signer {
    pub tenant: String,
    pub key: ssh_key::PrivateKey,
    pub manager_key: String,
}

impl Signer {
    pub fn from_trust(t: &Trust) -> anyhow::Result<Signer> {
        let text = std::fs::read(&t.key).with_context(|| t.key.display().to_string())?;
        let pass = std::env::var_os("WELES_KEY_PASSPHRASE").map(|p| p.into_encoded_bytes());
        let key = weles_policy::signing::load_private_key(&text, pass.as_deref())
            .with_context(|| t.key.display().to_string())?;
        Ok(Signer {
            tenant: t.tenant.clone(),
            key,
            manager_key: t.manager_key.clone(),
        })
    }

    /// The headers that authenticate one request (fresh time and nonce each call).
    pub fn headers(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> anyhow::Result<Vec<(String, String)>> {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
        let nonce = hex::encode(nonce);
        let body_hash = hex::encode(sha2::Sha256::digest(body));
        let msg = api::request_message(&self.manager_key, method, target, &body_hash, time, &nonce);
        let sig = self
            .key
            .sign(api::REQUEST_NAMESPACE, ssh_key::HashAlg::Sha512, &msg)
            .context("signing the request")?;
        let blob = sig.encode_vec().context("encoding the signature")?;
        Ok(vec![
            (api::H_TENANT.into(), self.tenant.clone()),
            (api::H_TIME.into(), time.to_string()),
            (api::H_NONCE.into(), nonce),
            (
                api::H_SIGNATURE.into(),
                base64ct::Base64::encode_string(&blob),
            ),
        ])
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A connection to a manager.
pub struct Connection {
    host: String,
    stream: BufReader<Tls>,
    /// The TLS key the manager presented (SHA-256 of its SPKI).
    pub seen_spki: [u8; 32],
}

/// `https://host:port` → (`host:port`, host).
fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("{url}: the manager URL must start with https://"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("{url}: expected https://HOST:PORT");
    }
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => bail!("{url}: expected https://HOST:PORT (with a port)"),
    };
    Ok((
        authority.to_owned(),
        host.trim_matches(['[', ']']).to_owned(),
    ))
}

impl Connection {
    /// Connects; with `pin`, only to a manager holding that TLS key.
    pub fn open(url: &str, pin: Option<[u8; 32]>) -> anyhow::Result<Connection> {
        let (authority, host) = parse_url(url)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedKey {
            pin,
            seen: Mutex::new(None),
            algorithms: provider.signature_verification_algorithms,
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        let name = ServerName::try_from(host.clone())
            .map_err(|_| anyhow::anyhow!("{host}: not a host name or address"))?;
        let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
        let tcp = TcpStream::connect(&authority)
            .with_context(|| format!("cannot connect to the manager at {authority}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let _ = tcp.set_nodelay(true);
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Complete the handshake now, so that a wrong key is reported as such.
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .with_context(|| format!("TLS with the manager at {authority}"))?;
        }
        let seen_spki = verifier
            .seen
            .lock()
            .ok()
            .and_then(|s| *s)
            .context("the manager presented no certificate")?;
        Ok(Connection {
            host: authority,
            stream: BufReader::new(tls),
            seen_spki,
        })
    }

    /// Sends a request (signed when `signer` is given) and reads the response.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        body: &[u8],
        signer: Option<&Signer>,
    ) -> anyhow::Result<Response> {
        self.send(method, target, body, signer)?;
        http::read_response(&mut self.stream).context("reading the manager's response")
    }

    /// Sends a request with exactly these authentication headers (tests replay them) and reads
    /// the response.
    pub fn request_with(
        &mut self,
        method: &str,
        target: &str,
        body: &[u8],
        headers: Vec<(String, String)>,
    ) -> anyhow::Result<Response> {
        self.send_with(method, target, body, headers)?;
        http::read_response(&mut self.stream).context("reading the manager's response")
    }

    fn send(
        &mut self,
        method: &str,
        target: &str,
        body: &[u8],
        signer: Option<&Signer>,
    ) -> anyhow::Result<()> {
        let headers = match signer {
            Some(s) => s.headers(method, target, body)?,
            None => Vec::new(),
        };
        self.send_with(method, target, body, headers)
    }

    fn send_with(
        &mut self,
        method: &str,
        target: &str,
        body: &[u8],
        mut headers: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        if !body.is_empty() {
            headers.push(("Content-Type".into(), "application/json".into()));
        }
        http::write_request(
            self.stream.get_mut(),
            method,
            &self.host,
            target,
            &headers,
            body,
        )
        .context("sending the request")?;
        Ok(())
    }

    /// Opens a server-sent event stream and calls `on_event(event, data)` for each event until
    /// it returns false or the stream ends.
    pub fn events(
        &mut self,
        target: &str,
        signer: &Signer,
        mut on_event: impl FnMut(&str, &str) -> bool,
    ) -> anyhow::Result<()> {
        self.stream.get_mut().sock.set_read_timeout(None)?;
        self.send("GET", target, b"", Some(signer))?;
        let (status, headers) = http::read_response_head(&mut self.stream)?;
        if status != 200 {
            let body = http::read_response_body(&mut self.stream, &headers)?;
            bail!("{}", api_error(status, &body));
        }
        let (mut event, mut data) = (String::new(), String::new());
        let mut line = String::new();
        loop {
            line.clear();
            if self.stream.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if !data.is_empty() && !on_event(&event, &data) {
                    return Ok(());
                }
                event.clear();
                data.clear();
            } else if let Some(v) = l.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(v) = l.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }
}

/// A readable message from an API error response.
pub fn api_error(status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<api::ApiError>(body) {
        Ok(e) => format!("the manager refused ({status} {}): {}", e.error, e.message),
        Err(_) => format!(
            "the manager answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
    }
}

/// Decodes a successful JSON response, or turns an error response into an error.
pub fn json<T: serde::de::DeserializeOwned>(r: &Response) -> anyhow::Result<T> {
    if r.status != 200 {
        bail!("{}", api_error(r.status, &r.body));
    }
    serde_json::from_slice(&r.body).context("the manager's response is not the expected JSON")
}

pub fn flush_stdout() {
    let _ = std::io::stdout().flush();
}

/// The checks every backend shares: our nonce, the report data binding nonce, M and the TLS
/// key we saw, M's signature; then the TEE's own evidence (for `sim`, the report restates the
/// report data). Returns what the TEE evidence showed, in one line.
pub fn verify_evidence(
    ev: &weles_proto::api::Evidence,
    nonce: &str,
    seen_spki: &str,
    tee: &TeeTrust,
) -> anyhow::Result<String> {
    if ev.nonce != nonce {
        bail!("it answers another nonce (a replayed answer?)");
    }
    if ev.tls_spki_sha256 != seen_spki {
        bail!(
            "it names TLS key {} but this connection used {seen_spki} (a relay?)",
            ev.tls_spki_sha256
        );
    }
    // Evidence that carries a host AK must bind it in the report data.
    let ak = match &ev.host {
        Some(h) => Some(api::ak_sha256(
            &hex::decode(&h.keys.ak_public).context("host AK is not hex")?,
        )),
        None => None,
    };
    let expected = api::report_data(nonce, &ev.manager_key, seen_spki, ak.as_deref());
    if ev.report_data != expected {
        bail!("its report data does not bind the nonce, the manager key and the TLS key");
    }
    let m = ssh_key::PublicKey::from_openssh(&ev.manager_key).context("manager key")?;
    let sig = ssh_key::SshSig::from_pem(ev.signature.as_bytes()).context("signature")?;
    m.verify(api::EVIDENCE_NAMESPACE, ev.report_data.as_bytes(), &sig)
        .map_err(|_| {
            anyhow::anyhow!("the manager key's signature over the report data does not verify")
        })?;
    match ev.tee.as_str() {
        "sim" => {
            let report: serde_json::Value =
                serde_json::from_str(&ev.report).context("sim report is not JSON")?;
            if report["report_data"].as_str() != Some(expected.as_str()) {
                bail!("the sim report carries other report data");
            }
            Ok("simulated: nothing but the manager's word".into())
        }
        "tsm" => verify_tsm_report(&ev.report, &expected, tee),
        "sgx" => {
            let r: serde_json::Value =
                serde_json::from_str(&ev.report).context("sgx report is not JSON")?;
            let quote = base64ct::Base64::decode_vec(r["quote"].as_str().unwrap_or(""))
                .map_err(|_| anyhow::anyhow!("sgx report: quote is not base64"))?;
            verify_dcap(&quote, &expected, tee, false)
        }
        other => bail!("TEE backend {other:?}: unknown; refused"),
    }
}

/// What the tenant trusts about real TEEs: reference values and offline collateral.
#[derive(Clone, Debug, Default)]
pub struct TeeTrust {
    /// SEV-SNP: the VCEK (DER) of the chip the manager runs on, from AMD's key server.
    pub snp_vcek: Option<Vec<u8>>,
    /// SEV-SNP: the launch measurements (48 bytes) of manager images the tenant accepts.
    pub snp_measurements: Vec<[u8; 48]>,
    /// SGX and TDX: Intel's collateral for the platform (TCB info, QE identity, CRLs).
    pub dcap_collateral: Option<weles_tee::dcap::Collateral>,
    /// SGX and TDX: the TCB statuses accepted besides `UpToDate`.
    pub dcap_accept: Vec<String>,
    /// SGX: enclave measurements (MRENCLAVE) of manager builds the tenant accepts.
    pub sgx_mrenclaves: Vec<[u8; 32]>,
    /// SGX: enclave signers (MRSIGNER) the tenant accepts.
    pub sgx_mrsigners: Vec<[u8; 32]>,
    /// TDX: the trust domain measurements (MRTD) the tenant accepts.
    pub tdx_mrtds: Vec<[u8; 48]>,
    /// TDX: runtime measurement registers that must hold these values (index 0–3).
    pub tdx_rtmrs: Vec<(usize, [u8; 48])>,
    /// "Now" for certificate validity, seconds since the epoch.
    pub now: u64,
}

/// A configfs-tsm report: for SEV-SNP, AMD's chain and the VCEK's signature, a trusted launch
/// measurement, and our report data in it; for TDX, the DCAP quote (see [`verify_dcap`]).
fn verify_tsm_report(report: &str, expected_hex: &str, tee: &TeeTrust) -> anyhow::Result<String> {
    let r: serde_json::Value = serde_json::from_str(report).context("tsm report is not JSON")?;
    let outblob = base64ct::Base64::decode_vec(r["outblob"].as_str().unwrap_or(""))
        .map_err(|_| anyhow::anyhow!("tsm report: outblob is not base64"))?;
    match r["provider"].as_str() {
        Some("sev_guest") => {}
        Some("tdx_guest") => return verify_dcap(&outblob, expected_hex, tee, true),
        other => bail!("tsm report from provider {other:?}: refused"),
    }
    // The VCEK: the tenant's own copy, else the one the host put into the certificate table
    // (auxblob) — untrusted either way until AMD's chain verifies it.
    let auxblob = match r["auxblob"].as_str() {
        Some(b) => base64ct::Base64::decode_vec(b)
            .map_err(|_| anyhow::anyhow!("tsm report: auxblob is not base64"))?,
        None => Vec::new(),
    };
    let from_host = if auxblob.is_empty() {
        None
    } else {
        weles_tee::snp::vcek_from_cert_table(&auxblob)
            .map_err(|e| anyhow::anyhow!("the SEV-SNP report: {e}"))?
    };
    let Some(vcek) = tee.snp_vcek.as_deref().or(from_host) else {
        bail!(
            "the manager runs in an SEV-SNP VM and its host supplies no VCEK: give its chip's \
             VCEK (--snp-vcek, from AMD's key server) and the measurements you accept \
             (--snp-measurement)"
        );
    };
    let report = weles_tee::snp::verify(&outblob, vcek, tee.now)
        .map_err(|e| anyhow::anyhow!("the SEV-SNP report: {e}"))?;
    if !tee.snp_measurements.contains(&report.measurement) {
        bail!(
            "the SEV-SNP launch measurement {} is not one you accept (--snp-measurement)",
            hex::encode(report.measurement)
        );
    }
    if hex::encode(report.report_data) != expected_hex {
        bail!(
            "the SEV-SNP report does not carry our report data (nonce, manager key, TLS key): a \
             replayed or relayed report"
        );
    }
    Ok(format!(
        "SEV-SNP report verified by AMD's chain: launch measurement {}, TCB {}",
        hex::encode(report.measurement),
        hex::encode(report.reported_tcb)
    ))
}

/// An SGX enclave's or a TDX trust domain's DCAP quote: Intel's chain and the tenant's
/// collateral, accepted TCB statuses, the measurements the tenant accepts, and our report data.
fn verify_dcap(
    quote: &[u8],
    expected_hex: &str,
    tee: &TeeTrust,
    td: bool,
) -> anyhow::Result<String> {
    use weles_tee::dcap::{self, Body};
    let kind = if td { "TDX" } else { "SGX" };
    let Some(collateral) = &tee.dcap_collateral else {
        bail!(
            "the manager runs in {kind}: give Intel's collateral for its platform (--dcap-collateral) \
             and the measurements you accept ({})",
            if td {
                "--tdx-mrtd, --tdx-rtmr"
            } else {
                "--sgx-mrenclave or --sgx-mrsigner"
            }
        );
    };
    let mut policy = dcap::Policy::default();
    policy
        .accepted_statuses
        .extend(tee.dcap_accept.iter().cloned());
    let v = dcap::verify(quote, collateral, tee.now, &policy)
        .map_err(|e| anyhow::anyhow!("the {kind} quote: {e}"))?;
    let measured = match (&v.body, td) {
        (Body::Enclave(e), false) => {
            if tee.sgx_mrenclaves.is_empty() && tee.sgx_mrsigners.is_empty() {
                bail!(
                    "give the enclave measurements or signers you accept (--sgx-mrenclave, --sgx-mrsigner)"
                );
            }
            if !tee.sgx_mrenclaves.is_empty() && !tee.sgx_mrenclaves.contains(&e.mr_enclave) {
                bail!(
                    "the enclave's MRENCLAVE {} is not one you accept (--sgx-mrenclave)",
                    hex::encode(e.mr_enclave)
                );
            }
            if !tee.sgx_mrsigners.is_empty() && !tee.sgx_mrsigners.contains(&e.mr_signer) {
                bail!(
                    "the enclave's MRSIGNER {} is not one you accept (--sgx-mrsigner)",
                    hex::encode(e.mr_signer)
                );
            }
            format!(
                "MRENCLAVE {}, MRSIGNER {}, ISV product {} SVN {}",
                hex::encode(e.mr_enclave),
                hex::encode(e.mr_signer),
                e.isv_prod_id,
                e.isv_svn
            )
        }
        (Body::Td(t), true) => {
            if tee.tdx_mrtds.is_empty() {
                bail!("give the trust domain measurements you accept (--tdx-mrtd)");
            }
            if !tee.tdx_mrtds.contains(&t.mr_td) {
                bail!(
                    "the trust domain's MRTD {} is not one you accept (--tdx-mrtd)",
                    hex::encode(t.mr_td)
                );
            }
            for (i, want) in &tee.tdx_rtmrs {
                let have = t.rtmr.get(*i).context("RTMR index above 3")?;
                if have != want {
                    bail!(
                        "the trust domain's RTMR{i} is {}, not the {} you gave (--tdx-rtmr)",
                        hex::encode(have),
                        hex::encode(want)
                    );
                }
            }
            format!("MRTD {}", hex::encode(t.mr_td))
        }
        _ => bail!("the {kind} evidence carries a quote of another TEE type: refused"),
    };
    if hex::encode(v.report_data) != expected_hex {
        bail!(
            "the {kind} quote does not carry our report data (nonce, manager key, TLS key): a \
             replayed or relayed quote"
        );
    }
    let statuses: Vec<String> = v
        .judged
        .iter()
        .map(|j| format!("{} {}", j.component, j.status))
        .collect();
    Ok(format!(
        "{kind} quote verified by Intel's chain (FMSPC {}; {}): {measured}",
        v.fmspc,
        statuses.join(", ")
    ))
}
