//! welesd's configuration file (TOML). Every field has a default; an empty file is valid.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The sealed store, the EK CA certificate, each VM's vTPM state.
    pub state_dir: PathBuf,
    /// Sockets: the operator socket, and per VM the vTPM, event and guest sockets.
    pub run_dir: PathBuf,
    /// The TEE backend: `sim` (no protection: development and tests), `sgx` (welesd runs in a
    /// Gramine-SGX enclave), `tsm` (welesd runs in a confidential VM: SEV-SNP or TDX).
    pub tee: String,
    /// The backend's interface: `sgx`: Gramine's attestation directory (`/dev/attestation`);
    /// `tsm`: the configfs-tsm report directory (`/sys/kernel/config/tsm/report`).
    pub tee_device: Option<PathBuf>,
    /// Where the tenant API (HTTPS) listens; port 0 picks a free port (see `weles operator
    /// health`).
    pub tenant_api: String,
    pub vtpm: VtpmConfig,
    pub store: StoreConfig,
    /// Host attestation with the host's TPM (`[host] tpm = "127.0.0.1:2321"`).
    pub host: crate::host::HostConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VtpmConfig {
    /// The weles-vtpm binary; default: next to welesd, else from `PATH`.
    pub binary: Option<PathBuf>,
    /// PCR banks of new vTPMs.
    pub pcr_banks: Vec<String>,
    /// Also serve each vTPM's data channel on RUN_DIR/vms/VM/data.sock (tpm2-tools, tests, a
    /// QEMU-less guest). QEMU does not need it: it hands the vTPM its data channel over the
    /// control socket.
    pub data_socket: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Record the store's version in an NV counter of the host TPM reached at `host:port`
    /// (a swtpm-style data socket); default: a file beside the store (development only — whoever
    /// can restore the state directory can restore that file too).
    pub host_tpm: Option<String>,
    /// The NV index of that counter.
    pub host_tpm_index: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/weles"),
            run_dir: PathBuf::from("/run/weles"),
            tee: "sim".into(),
            tee_device: None,
            tenant_api: "127.0.0.1:8443".into(),
            vtpm: VtpmConfig::default(),
            store: StoreConfig::default(),
            host: crate::host::HostConfig::default(),
        }
    }
}

impl Default for VtpmConfig {
    fn default() -> Self {
        VtpmConfig {
            binary: None,
            pcr_banks: vec!["sha1".into(), "sha256".into()],
            data_socket: false,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            host_tpm: None,
            host_tpm_index: 0x0150_0016,
        }
    }
}

impl Config {
    /// Reads a configuration file; errors name the file and the line.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, source: &str) -> anyhow::Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(":{line}")
                })
                .unwrap_or_default();
            anyhow::anyhow!("{source}{at}: {}", e.message())
        })?;
        if !["sim", "sgx", "tsm"].contains(&cfg.tee.as_str()) {
            anyhow::bail!(
                "{source}: tee = {:?}: the backends are `sim`, `sgx` and `tsm`",
                cfg.tee
            );
        }
        for b in &cfg.vtpm.pcr_banks {
            if !["sha1", "sha256", "sha384", "sha512"].contains(&b.as_str()) {
                anyhow::bail!(
                    "{source}: vtpm.pcr_banks: unknown bank {b:?} (sha1, sha256, sha384, sha512)"
                );
            }
        }
        Ok(cfg)
    }

    pub fn operator_socket(&self) -> PathBuf {
        self.run_dir.join("operator.sock")
    }

    /// The weles-vtpm binary to run.
    pub fn vtpm_binary(&self) -> PathBuf {
        if let Some(b) = &self.vtpm.binary {
            return b.clone();
        }
        let beside = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("weles-vtpm")));
        match beside {
            Some(p) if p.exists() => p,
            _ => PathBuf::from("weles-vtpm"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::parse("", "c.toml").unwrap();
        assert_eq!(c.tee, "sim");
        assert_eq!(c.vtpm.pcr_banks, ["sha1", "sha256"]);
        let c = Config::parse("state_dir = \"/s\"\n[store]\nhost_tpm = \"127.0.0.1:2321\"\nhost_tpm_index = 0x01500020\n", "c").unwrap();
        assert_eq!(c.store.host_tpm_index, 0x0150_0020);
        let e = Config::parse("\nstate_dri = \"/x\"", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml:2: unknown field `state_dri`"), "{e}");
        let e = Config::parse("tee = \"sev\"", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the backends are `sim`, `sgx` and `tsm`"), "{e}");
        assert_eq!(Config::parse("tee = \"tsm\"", "c").unwrap().tee, "tsm");
        assert!(Config::parse("[vtpm]\npcr_banks = [\"md5\"]", "c").is_err());
    }
}
