//! welesd, the WELES manager (`docs/manager.md`).
//!
//! * [`monitor`] — one VM's measured history judged as it grows: pure logic, the heart.
//! * [`vtpm_link`] — follows a weles-vtpm's event socket and feeds the monitor.
//! * [`guest_link`] — serves a VM's guest channel and feeds the monitor.
//! * [`vm`] — one supervised VM: its monitor, links and notices.
//! * [`notices`] — the numbered stream of what happened, for subscribers.
//! * [`supervisor`] — one weles-vtpm process per VM: manufactured, kept running, adopted.
//! * [`store`] — tenants, VMs, policies, the EK CA: sealed and rollback-protected.
//! * [`manager`] — all of the above for every VM; the operations the APIs call.
//! * [`operator`] — the local operator API (Unix socket).
//! * [`config`] — welesd.toml.
//! * [`tenant_api`] — the tenant API (HTTPS, signed requests, events, webhooks' settings).
//! * [`identity`], [`tee`] — the manager key, the TLS key, the TEE backend (`sim`).
//! * [`host`] — host attestation: the host TPM's EK, AK, credential activation and quotes.
//! * [`audit`] — the signed, hash-chained audit log with per-tenant sealed records.
//! * [`webhook`] — HMAC-signed, ordered, retried event delivery.
//! * [`signing`], [`krl`] — the SSH signing gate: host keys, authorizations, host
//!   certificates, revoked keys.

pub mod audit;
pub mod config;
pub mod guest_link;
pub mod host;
pub mod identity;
pub mod krl;
pub mod manager;
pub mod monitor;
pub mod notices;
pub mod operator;
pub mod signing;
pub mod store;
pub mod supervisor;
pub mod tee;
pub mod tenant_api;
pub mod vm;
pub mod vtpm_link;
pub mod webhook;

#[doc(hidden)]
pub mod testing;
