//! Webhooks: each tenant's VM notices POSTed as JSON to the tenant's URL, in order, each until
//! it is accepted (any 2xx), with exponential backoff between attempts.
//!
//! The body is the event as the event stream shows it; `X-Weles-Event` carries its number (the
//! audit record's: receivers drop numbers they have seen) and `X-Weles-Signature` is
//! `sha256=` + HMAC-SHA256(secret, body) in hex. The cursor (the last number accepted) is sealed
//! in the store after each delivery, so a restarted manager skips none and repeats none whose
//! acceptance it had sealed; a manager killed between the receiver's 2xx and that seal sends
//! the one event again under the same number (at least once, never out of order). Only `http://` URLs are delivered today (a relay on the
//! tenant's side can forward to HTTPS).

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
}

pub use weles_proto::api::DeliveryState;

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("delivered", &self.delivered)
            .finish()
    }
}

/// `http://host:port/path` → (`host:port`, path).
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url}: only http:// webhooks are delivered (use a relay for https)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || !authority.contains(':') {
        return Err(format!("{url}: expected http://HOST:PORT/PATH"));
    }
    if path.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(format!("{url}: the path has spaces or control characters"));
    }
    Ok((authority.to_owned(), path.to_owned()))
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
fn post(url: &str, seq: u64, secret: &str, body: &[u8]) -> Result<(), String> {
    let (authority, path) = parse_url(url)?;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let headers = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("X-Weles-Event".to_owned(), seq.to_string()),
        ("X-Weles-Signature".to_owned(), signature(secret, body)),
        ("Connection".to_owned(), "close".to_owned()),
    ];
    weles_proto::http::write_request(&mut w, "POST", &authority, &path, &headers, body)
        .map_err(|e| e.to_string())?;
    let (status, _) = weles_proto::http::read_response_head(&mut BufReader::new(s))
        .map_err(|e| format!("response: {e}"))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
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
        match post(&hook.url, seq, &hook.secret, &body) {
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

    #[test]
    fn urls_and_signatures() {
        assert_eq!(
            parse_url("http://127.0.0.1:9000/hooks/weles").unwrap(),
            ("127.0.0.1:9000".into(), "/hooks/weles".into())
        );
        assert_eq!(parse_url("http://h:1").unwrap().1, "/");
        assert!(parse_url("https://h:1/").unwrap_err().contains("relay"));
        assert!(parse_url("http://nohost/").is_err());
        assert!(parse_url("http://h:1/a b").is_err());
        // RFC 4231 test case 2.
        let key = hex::encode(b"Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
