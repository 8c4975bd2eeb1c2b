//! `weles-guest`: see the library documentation.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The WELES guest agent: streams this VM's IMA measurement list to the WELES manager over the
/// guest channel, from whatever offset the manager asks, then as it grows. Reconnects forever.
///
/// In a VM started by welesd the defaults are right: the channel is the virtio-serial port
/// `org.weles.guest.0`, the log is the kernel's binary measurement list.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The guest channel: a virtio-serial port device or a Unix socket.
    #[arg(long, default_value = "/dev/virtio-ports/org.weles.guest.0")]
    channel: PathBuf,
    /// The binary IMA measurement list to stream.
    #[arg(
        long,
        default_value = "/sys/kernel/security/ima/binary_runtime_measurements"
    )]
    ima_log: PathBuf,
    /// The TPM: the kernel's resource manager, or a Unix socket speaking raw TPM 2.0 frames.
    #[arg(long, default_value = "/dev/tpmrm0")]
    tpm: PathBuf,
    /// The file holding this boot's id; a new id tells the manager the VM rebooted.
    #[arg(long, default_value = "/proc/sys/kernel/random/boot_id")]
    boot_id_file: PathBuf,
    /// How often to look for new log entries, in milliseconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    poll_ms: u64,
    /// Exit when the first connection ends instead of reconnecting.
    #[arg(long)]
    once: bool,
    /// Serve an ssh-agent here for sshd's `HostKeyAgent`: the VM's host key, in the vTPM,
    /// signing only with the manager's authorization.
    #[arg(long)]
    agent_socket: Option<PathBuf>,
    /// Write the host key's public half here once the manager accepts it, for sshd's `HostKey`
    /// line (sshd signs through `--agent-socket`).
    #[arg(long)]
    host_key: Option<PathBuf>,
    /// Keep the host certificate the manager issues here, for sshd's `HostCertificate`.
    #[arg(long)]
    host_certificate: Option<PathBuf>,
    /// A shell command to run after each new certificate, e.g. "systemctl reload ssh".
    #[arg(long)]
    on_certificate: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let opts = weles_guest::Options {
        channel: cli.channel,
        ima_log: cli.ima_log,
        tpm: cli.tpm,
        boot_id_file: cli.boot_id_file,
        poll: Duration::from_millis(cli.poll_ms),
        once: cli.once,
        agent_socket: cli.agent_socket,
        host_key: cli.host_key,
        host_certificate: cli.host_certificate,
        on_certificate: cli.on_certificate,
    };
    match weles_guest::run(&opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weles-guest: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
