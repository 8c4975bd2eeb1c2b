//! The operator API (`docs/manager.md` §4): welesd's local Unix socket, root only.
//!
//! Each request and each reply is one JSON object in a [`crate::framing`] frame; one reply per
//! request, in order. Replies are externally tagged: `{"vm": {…}}`, `{"error": {"code", "message"}}`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum OperatorRequest {
    Health,
    /// Registers a tenant by its SSH public key (an `authorized_keys` line).
    RegisterTenant {
        name: String,
        ssh_key: String,
    },
    ListTenants,
    /// Creates a VM for a tenant: manufactures its vTPM, starts it, starts monitoring.
    CreateVm {
        tenant: String,
        name: String,
    },
    /// Stops monitoring, stops the vTPM and deletes its state.
    DeleteVm {
        name: String,
    },
    ListVms,
    VmStatus {
        name: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub version: String,
    /// The TEE backend; `sim` protects nothing (development and tests).
    pub tee: String,
    pub tenants: usize,
    pub vms: usize,
    pub uptime_s: u64,
    /// The sealed store's version (bumped by every change).
    pub store_version: u64,
    /// Where the tenant API listens (`host:port`), once it does.
    pub tenant_api: Option<String>,
    /// Host attestation: off (`None`), attested, watched, or violated (with the finding).
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantInfo {
    pub name: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub ssh_key_fingerprint: String,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub tenant: String,
    /// `rebooted`, `pending`, `compliant`, `violated` or `unverifiable`.
    pub state: String,
    pub reason: String,
    pub policy_version: Option<u64>,
    pub entries: u64,
    pub extends: u64,
    pub boots: u64,
    /// The vTPM process, if running.
    pub vtpm_pid: Option<u32>,
    pub vtpm_restarts: u64,
    /// The control socket QEMU's `-chardev socket,path=` points at.
    pub vtpm_socket: String,
    /// The Unix socket behind the VM's virtio-serial port `org.weles.guest.0`.
    pub guest_socket: String,
    /// QEMU arguments that attach the vTPM and the guest channel.
    pub qemu_args: Vec<String>,
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Stable: `bad_request`, `unknown_tenant`, `unknown_vm`, `exists`, `invalid`, `internal`.
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorReply {
    Health(Health),
    Tenant(TenantInfo),
    Tenants(Vec<TenantInfo>),
    Vm(Box<VmInfo>),
    Vms(Vec<VmInfo>),
    Deleted { name: String },
    Error(ErrorReply),
}

impl OperatorReply {
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        OperatorReply::Error(ErrorReply {
            code: code.to_owned(),
            message: message.into(),
        })
    }
}

/// The client side (`weles operator`, tests): connects, sends one request, reads its reply.
pub fn call(socket: &std::path::Path, req: &OperatorRequest) -> std::io::Result<OperatorReply> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot reach welesd at {}: {e}", socket.display()),
        )
    })?;
    let body = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    crate::framing::write_frame(&mut s, &body)?;
    let reply = crate::framing::read_frame(&mut s)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "welesd closed the connection without replying",
        )
    })?;
    serde_json::from_slice(&reply)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        let r: OperatorRequest =
            serde_json::from_str(r#"{"op":"create_vm","tenant":"acme","name":"web-1"}"#).unwrap();
        assert_eq!(
            r,
            OperatorRequest::CreateVm {
                tenant: "acme".into(),
                name: "web-1".into()
            }
        );
        assert!(
            serde_json::from_str::<OperatorRequest>(r#"{"op":"delete_vm","name":"a","x":1}"#)
                .is_err()
        );
        let e = serde_json::to_string(&OperatorReply::error("unknown_vm", "no VM x")).unwrap();
        assert_eq!(e, r#"{"error":{"code":"unknown_vm","message":"no VM x"}}"#);
    }
}
