//! The tenant API (`docs/api.md`): HTTPS (rustls, TLS 1.3, the manager's pinned key), JSON,
//! versioned paths, every request but `POST /v1/evidence` signed with the tenant's SSH key.
//!
//! One thread per connection; requests on a connection are served in order. The HTTP subset and
//! its limits live in `weles_proto::http` (fuzzed); a malformed request gets its status code and
//! the connection is closed.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64ct::Encoding as _;
use sha2::Digest as _;
use ssh_key::encoding::Decode as _;
use weles_proto::api::{self, ApiError, EventPage, EvidenceRequest, PolicyUpload};
use weles_proto::http::{self, Request};

use crate::manager::{Manager, ManagerError};
use crate::notices::NoticeRecord;

/// Most tenant API connections served at once.
pub const MAX_CONNECTIONS: usize = 512;

/// Requests that carry the same (tenant, nonce) within the skew window are replays.
struct ReplayCache {
    seen: HashMap<(String, String), u64>,
}

impl ReplayCache {
    /// Records the nonce; false if it was seen already.
    fn insert(&mut self, tenant: &str, nonce: &str, now_ms: u64) -> bool {
        if self.seen.len() > 100_000 {
            // Entries older than twice the window can no longer be replayed (their time is out).
            self.seen
                .retain(|_, t| now_ms.saturating_sub(*t) <= 2 * api::MAX_SKEW_MS);
        }
        self.seen
            .insert((tenant.to_owned(), nonce.to_owned()), now_ms)
            .is_none()
    }
}

pub struct TenantApi {
    mgr: Arc<Manager>,
    tls: Arc<rustls::ServerConfig>,
    manager_key: String,
    replay: Mutex<ReplayCache>,
    /// Requests signed before this instant (ms) are refused: the replay cache is not persistent,
    /// and a restart must not reopen the window.
    started_ms: u64,
}

/// Why a request is refused, as an HTTP status and an API error.
struct Refusal {
    status: u16,
    code: &'static str,
    message: String,
}

fn refuse(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

impl From<ManagerError> for Refusal {
    fn from(e: ManagerError) -> Self {
        let status = match &e {
            ManagerError::UnknownVm(_) | ManagerError::UnknownTenant(_) => 404,
            ManagerError::Invalid(_) | ManagerError::InvalidPolicy(_) => 400,
            ManagerError::BadSignature(_) => 403,
            ManagerError::StaleVersion(_) | ManagerError::Exists(_) => 409,
            ManagerError::Store(_) | ManagerError::Internal(_) => 500,
        };
        Refusal {
            status,
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl TenantApi {
    pub fn new(mgr: Arc<Manager>) -> anyhow::Result<Arc<TenantApi>> {
        let (key, cert) = mgr.tls_identity();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(cert)],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.to_vec().into()),
            )?;
        Ok(Arc::new(TenantApi {
            manager_key: mgr.manager_public_key(),
            mgr,
            tls: Arc::new(tls),
            replay: Mutex::new(ReplayCache {
                seen: HashMap::new(),
            }),
            started_ms: now_ms(),
        }))
    }

    /// Serves connections until the listener fails; at most [`MAX_CONNECTIONS`] at once (more
    /// are closed at once: a flood of connections costs threads, not the monitors' time).
    pub fn serve(self: Arc<Self>, listener: TcpListener) {
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if open.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= MAX_CONNECTIONS {
                open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                drop(conn);
                continue;
            }
            let (api, held) = (self.clone(), open.clone());
            let spawned = std::thread::Builder::new()
                .name("tenant-api".into())
                .spawn(move || {
                    api.connection(conn);
                    held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            if spawned.is_err() {
                open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    fn connection(&self, tcp: TcpStream) {
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
        let _ = tcp.set_write_timeout(Some(Duration::from_secs(30)));
        let _ = tcp.set_nodelay(true);
        let Ok(conn) = rustls::ServerConnection::new(self.tls.clone()) else {
            return;
        };
        let mut stream = BufReader::new(rustls::StreamOwned::new(conn, tcp));
        loop {
            let req = match http::read_request(&mut stream) {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    let body = error_body("bad_request", &e.to_string());
                    let _ = http::write_response(
                        stream.get_mut(),
                        e.status(),
                        "application/json",
                        &body,
                    );
                    return;
                }
            };
            let close = req
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            if !self.handle(&req, stream.get_mut()) || close {
                let _ = stream.get_mut().flush();
                stream.get_mut().conn.send_close_notify();
                let _ = stream.get_mut().flush();
                return;
            }
        }
    }

    /// Answers one request; false when the connection must end (an event stream ended).
    fn handle(&self, req: &Request, out: &mut impl Write) -> bool {
        let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
        let result = match (req.method.as_str(), segments.as_slice()) {
            ("POST", ["v1", "evidence"]) => self.evidence(req),
            ("GET", ["v1", "host"]) => match self.mgr.host_keys() {
                Some(k) => json(&k),
                None => Err(refuse(
                    404,
                    "not_found",
                    "this manager does not attest its host (no [host] tpm configured)",
                )),
            },
            (_, ["v1", "evidence"]) => Err(refuse(405, "bad_request", "use POST")),
            (method, ["v1", rest @ ..]) => match self.authenticate(req) {
                Err(r) => Err(r),
                Ok(tenant) => match (method, rest) {
                    ("GET", ["vms"]) => json(&self.mgr.tenant_vms(&tenant)),
                    ("GET", ["vms", vm]) => self
                        .mgr
                        .tenant_vm_status(&tenant, vm)
                        .map_err(Refusal::from)
                        .and_then(|s| json(&s)),
                    ("PUT", ["vms", vm, "policy"]) => self.upload(&tenant, vm, req),
                    ("GET", ["vms", vm, "events"]) => self.events_page(&tenant, vm, req),
                    ("GET", ["vms", vm, "events", "stream"]) => {
                        return self.event_stream(&tenant, vm, req, out);
                    }
                    ("PUT", ["webhook"]) => serde_json::from_slice::<api::WebhookSet>(&req.body)
                        .map_err(|e| refuse(400, "bad_request", format!("body: {e}")))
                        .and_then(|w| {
                            self.mgr
                                .set_webhook(&tenant, &w.url, &w.secret, w.ca.as_deref())
                                .map_err(Refusal::from)
                        })
                        .and_then(|s| json(&s)),
                    ("GET", ["webhook"]) => self
                        .mgr
                        .webhook_state(&tenant)
                        .ok_or_else(|| refuse(404, "not_found", "no webhook is set"))
                        .and_then(|s| json(&s)),
                    ("DELETE", ["webhook"]) => self
                        .mgr
                        .delete_webhook(&tenant)
                        .map_err(Refusal::from)
                        .and_then(|()| json(&serde_json::json!({ "deleted": true }))),
                    ("GET", ["krl"]) => {
                        let krl = self.mgr.tenant_krl(&tenant);
                        return http::write_response(out, 200, "application/octet-stream", &krl)
                            .is_ok();
                    }
                    ("GET", ["audit-key"]) => self
                        .mgr
                        .tenant_audit_key(&tenant)
                        .map_err(Refusal::from)
                        .and_then(|k| json(&serde_json::json!({ "key": k.as_str() }))),
                    ("GET", ["ssh-ca"]) => self
                        .mgr
                        .tenant_ca(&tenant)
                        .map_err(Refusal::from)
                        .and_then(|k| json(&serde_json::json!({ "public_key": k }))),
                    _ => Err(refuse(
                        404,
                        "not_found",
                        format!("no endpoint {} {}", req.method, req.path),
                    )),
                },
            },
            _ => Err(refuse(
                404,
                "not_found",
                format!("no endpoint {} {}", req.method, req.path),
            )),
        };
        let written = match result {
            Ok(body) => http::write_response(out, 200, "application/json", &body),
            Err(r) => http::write_response(
                out,
                r.status,
                "application/json",
                &error_body(r.code, &r.message),
            ),
        };
        written.is_ok()
    }

    fn evidence(&self, req: &Request) -> Result<Vec<u8>, Refusal> {
        let body: EvidenceRequest = serde_json::from_slice(&req.body)
            .map_err(|e| refuse(400, "bad_request", format!("body: {e}")))?;
        json(&self.mgr.evidence(&body.nonce, body.credential.as_ref())?)
    }

    /// Checks the request's signature, freshness and uniqueness; returns the tenant.
    fn authenticate(&self, req: &Request) -> Result<String, Refusal> {
        let get = |h: &str| {
            req.header(h)
                .ok_or_else(|| refuse(401, "unauthenticated", format!("missing header {h}")))
        };
        let tenant = get(api::H_TENANT)?;
        let time: u64 = get(api::H_TIME)?.parse().map_err(|_| {
            refuse(
                401,
                "unauthenticated",
                "x-weles-time: milliseconds since the epoch",
            )
        })?;
        let nonce = get(api::H_NONCE)?;
        if nonce.len() < 16 || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refuse(
                401,
                "unauthenticated",
                "x-weles-nonce: 8–32 random bytes, hex",
            ));
        }
        let sig_b64 = get(api::H_SIGNATURE)?;
        let key = self.mgr.tenant_key(tenant).ok_or_else(|| {
            refuse(
                401,
                "unauthenticated",
                format!("no tenant named {tenant:?}"),
            )
        })?;
        let blob = base64ct::Base64::decode_vec(sig_b64)
            .map_err(|_| refuse(401, "unauthenticated", "x-weles-signature is not base64"))?;
        let sig = ssh_key::SshSig::decode(&mut blob.as_slice()).map_err(|e| {
            refuse(
                401,
                "unauthenticated",
                format!("x-weles-signature is not an SSH signature: {e}"),
            )
        })?;
        let body_hash = hex::encode(sha2::Sha256::digest(&req.body));
        let msg = api::request_message(
            &self.manager_key,
            &req.method,
            &req.target(),
            &body_hash,
            time,
            nonce,
        );
        key.verify(api::REQUEST_NAMESPACE, &msg, &sig)
            .map_err(|_| {
                refuse(
                    401,
                    "unauthenticated",
                    format!("the request signature does not verify with tenant {tenant}'s key"),
                )
            })?;
        let now = now_ms();
        if time.abs_diff(now) > api::MAX_SKEW_MS {
            return Err(refuse(
                401,
                "unauthenticated",
                format!(
                    "request time {time} is more than 5 minutes from the manager's clock ({now})"
                ),
            ));
        }
        if time < self.started_ms {
            return Err(refuse(
                401,
                "replayed",
                "the request was signed before the manager started; sign it again",
            ));
        }
        let fresh = self
            .replay
            .lock()
            .map(|mut c| c.insert(tenant, nonce, now))
            .unwrap_or(false);
        if !fresh {
            return Err(refuse(
                401,
                "replayed",
                "this request (its nonce) was already used",
            ));
        }
        Ok(tenant.to_owned())
    }

    fn upload(&self, tenant: &str, vm: &str, req: &Request) -> Result<Vec<u8>, Refusal> {
        let up: PolicyUpload = serde_json::from_slice(&req.body)
            .map_err(|e| refuse(400, "bad_request", format!("body: {e}")))?;
        let version = self.mgr.upload_policy(tenant, vm, &up)?;
        json(&serde_json::json!({ "vm": vm, "policy_version": version }))
    }

    fn events_page(&self, tenant: &str, vm: &str, req: &Request) -> Result<Vec<u8>, Refusal> {
        self.mgr.check_owner(tenant, vm)?;
        let after = number(req, "after", 0)?;
        let limit = number(req, "limit", 100)?.clamp(1, 1000) as usize;
        let events = self.mgr.events_history(tenant, vm, after, limit)?;
        let next = events
            .last()
            .and_then(|e| e["seq"].as_u64())
            .unwrap_or(after);
        json(&EventPage {
            events,
            next,
            lost_before: None,
        })
    }

    /// Server-sent events: everything after `after`, then as it happens; a comment line every
    /// 15 s keeps proxies from closing an idle stream.
    fn event_stream(&self, tenant: &str, vm: &str, req: &Request, out: &mut impl Write) -> bool {
        let start = self
            .mgr
            .check_owner(tenant, vm)
            .map_err(Refusal::from)
            .and_then(|()| number(req, "after", 0));
        let mut after = match start {
            Ok(a) => a,
            Err(r) => {
                let body = error_body(r.code, &r.message);
                return http::write_response(out, r.status, "application/json", &body).is_ok();
            }
        };
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\r\n";
        if out
            .write_all(head.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return false;
        }
        // What the audit log holds up to `cut`, then from the live notices everything after it:
        // a record is published while the log is locked, so every record up to `cut` is on disk
        // and every later one reaches the live notices after this point.
        let cut = self.mgr.audit().last_seq();
        let mut backlog = String::new();
        match self.mgr.events_history(tenant, vm, after, usize::MAX) {
            Ok(events) => {
                for e in events {
                    if e["seq"].as_u64().is_some_and(|s| s > cut) {
                        break;
                    }
                    let kind = event_kind(&e);
                    backlog.push_str(&format!("id: {}\nevent: {kind}\ndata: {e}\n\n", e["seq"]));
                }
            }
            Err(_) => return false,
        }
        after = after.max(cut);
        if !backlog.is_empty()
            && out
                .write_all(backlog.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
        {
            return false;
        }
        let mut idle = Duration::ZERO;
        loop {
            let batch = self
                .mgr
                .notices()
                .read_after(after, Duration::from_millis(500));
            let mut text = String::new();
            if let Some(first) = batch.lost_before {
                text.push_str(&format!(
                    "event: lost\ndata: {{\"lost_before\":{first}}}\n\n"
                ));
            }
            for r in &batch.records {
                after = r.seq;
                if r.vm == vm {
                    text.push_str(&sse(r));
                }
            }
            if text.is_empty() {
                idle += Duration::from_millis(500);
                if idle >= Duration::from_secs(15) {
                    text.push_str(": keepalive\n\n");
                    idle = Duration::ZERO;
                }
            } else {
                idle = Duration::ZERO;
            }
            if !text.is_empty()
                && out
                    .write_all(text.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
            {
                return false;
            }
        }
    }
}

fn event_kind(e: &serde_json::Value) -> &'static str {
    match e["kind"].as_str() {
        Some("violation") => "violation",
        _ => "state",
    }
}

fn sse(r: &NoticeRecord) -> String {
    let kind = match &r.notice {
        crate::monitor::Notice::State { .. } => "state",
        crate::monitor::Notice::Violation(_) => "violation",
    };
    format!(
        "id: {}\nevent: {kind}\ndata: {}\n\n",
        r.seq,
        serde_json::to_string(r).unwrap_or_default()
    )
}

fn number(req: &Request, name: &str, default: u64) -> Result<u64, Refusal> {
    match req.query_param(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            refuse(
                400,
                "bad_request",
                format!("query parameter {name}={v:.20} is not a number"),
            )
        }),
    }
}

fn json(v: &impl serde::Serialize) -> Result<Vec<u8>, Refusal> {
    serde_json::to_vec(v).map_err(|e| refuse(500, "internal", e.to_string()))
}

fn error_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&ApiError {
        error: code.to_owned(),
        message: message.to_owned(),
    })
    .unwrap_or_default()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
