//! weles-guest: the agent inside the VM.
//!
//! It connects to the guest channel (a virtio-serial port in a VM, a Unix socket in tests),
//! announces itself, and streams the kernel's binary IMA measurement list to the manager: from
//! whatever offset the manager asks for, then every appended byte as it appears. It keeps
//! reconnecting, so a manager restart costs nothing but a short gap. It holds no secret and
//! makes no decision: the manager trusts its bytes only once they replay to the vTPM's PCRs.
//!
//! When the manager asks (SIGNING_SETUP), it makes the VM's SSH host key in the vTPM — usable
//! only with the manager's PolicySigned authorization — and reports where it lives.

pub mod channel;
pub mod gate;
pub mod host_key;
pub mod ssh_agent;
pub mod stream;
pub mod tpm;

use std::path::PathBuf;
use std::time::Duration;

/// Where the agent reads and writes.
#[derive(Clone, Debug)]
pub struct Options {
    /// The guest channel: a character device (virtio-serial port) or a Unix socket.
    pub channel: PathBuf,
    /// The binary IMA measurement list.
    pub ima_log: PathBuf,
    /// The TPM: `/dev/tpmrm0`, or a Unix socket speaking raw TPM frames.
    pub tpm: PathBuf,
    /// The file holding this boot's id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id_file: PathBuf,
    /// How often to look for new log bytes.
    pub poll: Duration,
    /// Stop after the first connection ends instead of reconnecting (tests, one-shot use).
    pub once: bool,
    /// Serve sshd's `HostKeyAgent` here (the host key in the vTPM, signing with the manager's
    /// authorization).
    pub agent_socket: Option<PathBuf>,
    /// Where to write the host key's public half once the manager accepted it (sshd's
    /// `HostKey`, beside `HostKeyAgent`).
    pub host_key: Option<PathBuf>,
    /// Where to keep the host certificate the manager issues (sshd's `HostCertificate`).
    pub host_certificate: Option<PathBuf>,
    /// A shell command run after each new certificate (e.g. `systemctl reload ssh`).
    pub on_certificate: Option<String>,
}

/// Runs the agent until the process is stopped (or, with `once`, the connection ends).
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let boot_id = std::fs::read_to_string(&opts.boot_id_file)
        .map(|s| s.trim().to_owned())
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot read the boot id {}: {e}",
                opts.boot_id_file.display()
            )
        })?;
    let gate = std::sync::Arc::new(gate::Gate::default());
    if let Some(path) = &opts.agent_socket {
        ssh_agent::serve(path, opts.tpm.clone(), gate.clone()).map_err(|e| {
            anyhow::anyhow!("cannot serve the agent socket {}: {e}", path.display())
        })?;
    }
    let mut backoff = Duration::from_millis(50);
    loop {
        match channel::Channel::connect(&opts.channel) {
            Ok(ch) => {
                backoff = Duration::from_millis(50);
                eprintln!("weles-guest: connected to {}", opts.channel.display());
                match stream::serve(ch, opts, &boot_id, &gate) {
                    Ok(()) => eprintln!("weles-guest: the manager closed the channel"),
                    Err(e) => eprintln!("weles-guest: channel lost: {e}"),
                }
                if opts.once {
                    return Ok(());
                }
            }
            Err(e) => {
                if opts.once {
                    return Err(anyhow::anyhow!(
                        "cannot open the guest channel {}: {e}",
                        opts.channel.display()
                    ));
                }
                eprintln!(
                    "weles-guest: cannot open {} ({e}); retrying in {} ms",
                    opts.channel.display(),
                    backoff.as_millis()
                );
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
