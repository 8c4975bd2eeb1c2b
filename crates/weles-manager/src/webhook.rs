//! Webhooks: each tenant's VM notices POSTed as JSON to the tenant's URL, in order, each until
//! it is accepted (any 2xx), with exponential backoff between attempts.
//!
//! The body is the event as the event stream shows it; `X-Weles-Event` carries its number (the
//! audit record's: receivers drop numbers they have seen) and `X-Weles-Signature` is
//! `sha256=` + HMAC-SHA256(secret, body) in hex. The cursor (the last number accepted) is sealed
//! in the store after each delivery, so a restarted manager skips none and repeats none whose
//! acceptance it had sealed; a manager killed between the receiver's 2xx and that seal sends
//! the one event again under the same number (at least once, never out of order).
//!
//! `https://` receivers are reached over TLS (1.2 or 1.3, rustls) and must present a certificate
//! for the URL's host that chains to the tenant's CA (`ca`, when the tenant gave one: then only
//! it) or to the manager host's system roots (`/etc/ssl/certs/ca-certificates.crt`).

use std::io::BufReader;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

use crate::manager::Manager;

/// A tenant's webhook as stored. (Its `Debug` leaves the secret out.)
#[derive(Clone, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    /// The HMAC key, hex (the tenant chose it; both sides hold it).
    pub secret: String,
    /// The last event number the receiver accepted.
    pub delivered: u64,
    /// For `https://`: the CA certificate(s), PEM, the receiver's certificate must chain to
    /// (none: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

pub use weles_proto::api::DeliveryState;

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("delivered", &self.delivered)
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

/// Where a webhook goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// The host as the URL names it (a DNS name or an IP address, without brackets).
    pub host: String,
    pub port: u16,
    /// `host:port` as the Host header and the connection want it.
    pub authority: String,
    pub path: String,
}

/// `http://HOST[:PORT]/PATH` or `https://HOST[:PORT]/PATH` (ports 80 and 443 by default; IPv6
/// hosts in brackets).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(r), _) => (true, r),
        (None, Some(r)) => (false, r),
        _ => return Err(format!("{url}: expected http:// or https://")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url}: an IPv6 host needs its closing ]"))?;
            (h, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{url}: {p:?} is not a port"))?,
        None if tls => 443,
        None => 80,
    };
    if host.is_empty() || host.bytes().any(|b| b <= b' ' || b >= 0x7f || b == b'@') {
        return Err(format!("{url}: expected http(s)://HOST[:PORT]/PATH"));
    }
    if path.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(format!("{url}: the path has spaces or control characters"));
    }
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(Target {
        tls,
        host: host.to_owned(),
        port,
        authority,
        path: path.to_owned(),
    })
}

/// Where the manager host's CA bundle is (Debian's `ca-certificates`).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The roots an `https://` receiver's certificate must chain to: the tenant's CA, else the
/// system's. Errors name what is missing or malformed.
pub fn roots(ca: Option<&str>) -> Result<rustls::RootCertStore, String> {
    let (what, pem) = match ca {
        Some(pem) => ("the webhook's CA".to_owned(), pem.as_bytes().to_vec()),
        None => (
            SYSTEM_ROOTS.to_owned(),
            std::fs::read(SYSTEM_ROOTS).map_err(|e| {
                format!("{SYSTEM_ROOTS}: {e} (install ca-certificates, or give the receiver's CA)")
            })?,
        ),
    };
    let mut store = rustls::RootCertStore::empty();
    let ders = weles_policy::ima_keys::pem_bodies(&pem).map_err(|e| format!("{what}: {e}"))?;
    let (added, _) = store.add_parsable_certificates(
        ders.into_iter()
            .map(rustls::pki_types::CertificateDer::from),
    );
    if added == 0 {
        return Err(format!("{what}: no usable CA certificate"));
    }
    Ok(store)
}

/// Checks a tenant-chosen secret: hex, at least 16 bytes.
pub fn check_secret(secret_hex: &str) -> Result<(), String> {
    match hex::decode(secret_hex) {
        Ok(k) if k.len() >= 16 => Ok(()),
        _ => Err("the webhook secret must be at least 16 bytes, hex".into()),
    }
}

/// `sha256=` + HMAC-SHA256(secret, body), hex.
pub fn signature(secret_hex: &str, body: &[u8]) -> String {
    let key = zeroize::Zeroizing::new(hex::decode(secret_hex).unwrap_or_default());
    // HMAC accepts keys of any length; the error case cannot happen.
    let Ok(mut mac) = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One POST; Ok when the receiver answered 2xx.
fn post(hook: &Webhook, seq: u64, body: &[u8]) -> Result<(), String> {
    let t = parse_url(&hook.url)?;
    let addr = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", t.authority))?
        .next()
        .ok_or_else(|| format!("{}: no address", t.authority))?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let headers = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("X-Weles-Event".to_owned(), seq.to_string()),
        (
            "X-Weles-Signature".to_owned(),
            signature(&hook.secret, body),
        ),
        ("Connection".to_owned(), "close".to_owned()),
    ];
    let status = if t.tls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots(hook.ca.as_deref())?)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(t.host.clone())
            .map_err(|e| format!("{}: {e}", t.host))?;
        let conn = rustls::ClientConnection::new(Arc::new(config), name)
            .map_err(|e| format!("TLS: {e}"))?;
        let mut tls = rustls::StreamOwned::new(conn, s);
        exchange(&mut tls, &t, &headers, body)?
    } else {
        let mut plain = s;
        exchange(&mut plain, &t, &headers, body)?
    };
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

/// Writes the request and reads the response's status.
fn exchange<S: std::io::Read + std::io::Write>(
    stream: &mut S,
    t: &Target,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<u16, String> {
    weles_proto::http::write_request(stream, "POST", &t.authority, &t.path, headers, body)
        .map_err(|e| e.to_string())?;
    stream.flush().map_err(|e| e.to_string())?;
    let (status, _) = weles_proto::http::read_response_head(&mut BufReader::new(stream))
        .map_err(|e| format!("response: {e}"))?;
    Ok(status)
}

/// Delivers one tenant's events until stopped.
pub struct Deliverer {
    stop: Arc<AtomicBool>,
    pub state: Arc<Mutex<DeliveryState>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Deliverer {
    pub fn start(mgr: Weak<Manager>, tenant: String, hook: Webhook) -> Deliverer {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(DeliveryState {
            url: hook.url.clone(),
            delivered: hook.delivered,
            ..DeliveryState::default()
        }));
        let (s, st) = (stop.clone(), state.clone());
        let thread = std::thread::Builder::new()
            .name(format!("webhook-{tenant}"))
            .spawn(move || run(&mgr, &tenant, &hook, &s, &st))
            .ok();
        Deliverer {
            stop,
            state,
            thread,
        }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    mgr: &Weak<Manager>,
    tenant: &str,
    hook: &Webhook,
    stop: &AtomicBool,
    state: &Mutex<DeliveryState>,
) {
    let mut delivered = hook.delivered;
    let mut attempts = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let Some(m) = mgr.upgrade() else { return };
        let next = m
            .tenant_events_after(tenant, delivered, 1)
            .into_iter()
            .next();
        let Some(event) = next else {
            // Wait for something new (or a stop) without holding the manager.
            let notices = m.notices().clone();
            drop(m);
            notices.read_after(notices.last_seq(), Duration::from_millis(500));
            continue;
        };
        drop(m);
        let seq = event["seq"].as_u64().unwrap_or(delivered + 1);
        let body = serde_json::to_vec(&event).unwrap_or_default();
        match post(hook, seq, &body) {
            Ok(()) => {
                delivered = seq;
                attempts = 0;
                if let Some(m) = mgr.upgrade() {
                    m.webhook_delivered(tenant, seq);
                }
                if let Ok(mut s) = state.lock() {
                    *s = DeliveryState {
                        url: hook.url.clone(),
                        delivered,
                        ..DeliveryState::default()
                    };
                }
            }
            Err(e) => {
                attempts += 1;
                let wait = Duration::from_millis(250) * 2u32.pow(attempts.min(8));
                let wait = wait.min(Duration::from_secs(60));
                if let Ok(mut s) = state.lock() {
                    s.pending = Some(seq);
                    s.attempts = attempts;
                    s.last_error = Some(e);
                    s.next_attempt_ms = Some(now_ms() + wait.as_millis() as u64);
                }
                let until = std::time::Instant::now() + wait;
                while std::time::Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn urls_and_signatures() {
        let t = parse_url("http://127.0.0.1:9000/hooks/weles").unwrap();
        assert_eq!(
            (t.tls, t.authority.as_str(), t.path.as_str()),
            (false, "127.0.0.1:9000", "/hooks/weles")
        );
        assert_eq!(parse_url("http://h:1").unwrap().path, "/");
        let t = parse_url("https://hooks.example.com/weles").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port),
            (true, "hooks.example.com", 443)
        );
        assert_eq!(parse_url("http://h/").unwrap().port, 80);
        let t = parse_url("https://[::1]:8443/x").unwrap();
        assert_eq!(
            (t.host.as_str(), t.authority.as_str()),
            ("::1", "[::1]:8443")
        );
        assert!(parse_url("ftp://h:1/").is_err());
        assert!(parse_url("http:///x").is_err());
        assert!(parse_url("http://h:0/").is_err());
        assert!(parse_url("http://h:99999/").is_err());
        assert!(parse_url("http://user@h:1/").is_err());
        assert!(parse_url("http://h:1/a b").is_err());
        assert!(parse_url("https://[::1/").is_err());
        // RFC 4231 test case 2.
        let key = hex::encode(b"Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// A CA, and a receiver certificate for 127.0.0.1 it issued: (CA PEM, leaf DER, leaf key
    /// PKCS#8 DER).
    fn receiver_pki() -> (String, Vec<u8>, Vec<u8>) {
        use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        use std::str::FromStr;
        use weles_vtpm::manufacture::{Profile, issue, new_ca, new_p256_key, p256_spki};
        use x509_cert::der::{Encode, asn1::OctetString};
        use x509_cert::ext::pkix::name::GeneralName;
        use x509_cert::ext::pkix::{KeyUsage, KeyUsages, SubjectAltName};
        use x509_cert::ext::{ToExtension, pkix::ExtendedKeyUsage};
        let (ca_key, ca_pem) = new_ca("webhook test CA").unwrap();
        let ca_key = p256::ecdsa::SigningKey::from_pkcs8_pem(&ca_key).unwrap();
        let ca_cert = x509_cert::Certificate::load_pem_chain(ca_pem.as_bytes()).unwrap();
        let issuer = ca_cert[0].tbs_certificate().subject().clone();
        let subject = x509_cert::name::Name::from_str("CN=receiver").unwrap();
        let san = SubjectAltName(vec![GeneralName::IpAddress(
            OctetString::new(vec![127, 0, 0, 1]).unwrap(),
        )])
        .to_extension(&subject, &[])
        .unwrap();
        let eku = ExtendedKeyUsage(vec![x509_cert::der::oid::db::rfc5280::ID_KP_SERVER_AUTH])
            .to_extension(&subject, &[])
            .unwrap();
        let key = new_p256_key().unwrap();
        let profile = Profile {
            issuer,
            subject,
            ca: false,
            key_usage: KeyUsage(KeyUsages::DigitalSignature.into()),
            extra: vec![san, eku],
        };
        let leaf = issue(profile, p256_spki(&key).unwrap(), &ca_key, 1).unwrap();
        let key_der = key.to_pkcs8_der().unwrap().as_bytes().to_vec();
        (ca_pem, leaf.to_der().unwrap(), key_der)
    }

    /// An HTTPS receiver on loopback answering 204 once; returns its port and what it got.
    fn https_receiver(
        cert: Vec<u8>,
        key: Vec<u8>,
    ) -> (
        u16,
        std::thread::JoinHandle<Option<weles_proto::http::Request>>,
    ) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(cert)],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
            )
            .unwrap();
        let t = std::thread::spawn(move || {
            let (tcp, _) = l.accept().ok()?;
            let conn = rustls::ServerConnection::new(Arc::new(config)).ok()?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            let req = weles_proto::http::read_request(&mut BufReader::new(&mut s)).ok()??;
            weles_proto::http::write_response(&mut s, 204, "text/plain", b"").ok()?;
            let _ = s.flush();
            Some(req)
        });
        (port, t)
    }

    #[test]
    fn https_receivers_are_verified_against_the_tenants_ca() {
        let (ca_pem, cert, key) = receiver_pki();
        let (port, receiver) = https_receiver(cert.clone(), key.clone());
        let hook = Webhook {
            url: format!("https://127.0.0.1:{port}/hooks/weles"),
            secret: hex::encode([7u8; 16]),
            delivered: 0,
            ca: Some(ca_pem),
        };
        post(&hook, 41, b"{\"seq\":41}").unwrap();
        let req = receiver.join().unwrap().unwrap();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/hooks/weles")
        );
        assert_eq!(req.header("x-weles-event"), Some("41"));
        assert_eq!(
            req.header("x-weles-signature").map(str::to_owned),
            Some(signature(&hook.secret, b"{\"seq\":41}"))
        );
        // Another CA: the handshake fails, nothing is delivered.
        let (other_ca, _, _) = receiver_pki();
        let (port, receiver) = https_receiver(cert.clone(), key.clone());
        let wrong = Webhook {
            url: format!("https://127.0.0.1:{port}/hooks/weles"),
            ca: Some(other_ca),
            ..hook.clone()
        };
        let e = post(&wrong, 42, b"{}").unwrap_err();
        assert!(e.contains("certificate"), "{e}");
        assert!(receiver.join().unwrap().is_none());
        // The right CA, the wrong name (the certificate is for 127.0.0.1, not localhost).
        let (port, receiver) = https_receiver(cert, key);
        let misnamed = Webhook {
            url: format!("https://localhost:{port}/hooks/weles"),
            ..hook.clone()
        };
        let e = post(&misnamed, 43, b"{}").unwrap_err();
        assert!(e.contains("certificate"), "{e}");
        assert!(receiver.join().unwrap().is_none());
        // A CA that is not a certificate is refused before any connection.
        assert!(roots(Some("not a certificate")).is_err());
    }
}
