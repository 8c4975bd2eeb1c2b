//! `weles-vtpm`: a VM's TPM 2.0 for QEMU, libvirt and tpm2-tools, started like swtpm.
//!
//!     weles-vtpm socket --tpm2 --ctrl type=unixio,path=/run/vm1/tpm.sock --tpmstate dir=/var/lib/vm1
//!     weles-vtpm socket --tpm2 --server type=tcp,port=2321,bindaddr=127.0.0.1 \
//!         --ctrl type=tcp,port=2322,bindaddr=127.0.0.1 --flags not-need-init,startup-clear --tpmstate dir=D

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use weles_vtpm::engine::Engine;
use weles_vtpm::host_counter::HostTpmCounter;
use weles_vtpm::sealed::{FileCounter, MonotonicStore, SealedState, SimSealing};
use weles_vtpm::{log, manufacture, options, server};

/// A VM's TPM 2.0 (libtpms), driven like swtpm: QEMU `-tpmdev emulator`, libvirt, tpm2-tools.
#[derive(Parser)]
#[command(name = "weles-vtpm", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Serve the TPM on sockets (swtpm's `socket` mode).
    ///
    /// QEMU: `-chardev socket,id=chrtpm,path=SOCK -tpmdev emulator,id=tpm0,chardev=chrtpm
    /// -device tpm-crb,tpmdev=tpm0` with `--ctrl type=unixio,path=SOCK`.
    Socket(SocketArgs),
    /// Manufacture a new vTPM, as swtpm_setup does: PCR banks, EKs (RSA-2048 at 0x81010001, ECC
    /// P-256 at 0x81010002) and their certificates (NV 0x01c00002, 0x01c0000a) issued by your CA.
    ///
    /// Example:
    ///   weles-vtpm manufacture --tpmstate dir=/var/lib/vm1/tpm --vtpm-id vm1 \
    ///       --ca-key ca.key --ca-cert ca.crt --pcr-banks sha1,sha256
    Manufacture(ManufactureArgs),
}

/// Where and how the state is kept (shared by both modes).
#[derive(clap::Args)]
struct StateArgs {
    /// dir=PATH: where the TPM's state is kept.
    #[arg(long, value_name = "SPEC")]
    tpmstate: String,
    /// WELES: this vTPM's identity, bound into its sealed state (default: one created in the
    /// state directory on first start). The manager passes the VM id.
    #[arg(long, value_name = "ID")]
    vtpm_id: Option<String>,
    /// WELES: sealing provider for the state: sim[,keyfile=PATH] (default: sim with a key file
    /// created in the state directory; it protects nothing from the host's root).
    #[arg(long, value_name = "SPEC", default_value = "sim")]
    seal: String,
    /// WELES: where the newest state version is recorded (rollback protection):
    /// type=tpm,host=H,port=P,index=0x01NNNNNN (an NV counter on the host TPM), or file=PATH
    /// (default: a file in the state directory; development only).
    #[arg(long, value_name = "SPEC")]
    monotonic: Option<String>,
}

#[derive(clap::Args)]
struct ManufactureArgs {
    #[command(flatten)]
    state: StateArgs,
    /// The issuing CA's private key (PKCS#8 PEM, ECDSA P-256).
    #[arg(long, value_name = "FILE")]
    ca_key: PathBuf,
    /// The issuing CA's certificate (PEM): its subject becomes the EK certificates' issuer.
    #[arg(long, value_name = "FILE")]
    ca_cert: PathBuf,
    /// PCR banks to allocate.
    #[arg(long, value_name = "LIST", default_value = "sha1,sha256")]
    pcr_banks: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SocketArgs {
    /// Emulate a TPM 2.0 (required: TPM 1.2 is not offered).
    #[arg(long)]
    tpm2: bool,
    /// Data channel: type=tcp,port=N[,bindaddr=A] or type=unixio,path=P.
    #[arg(long, value_name = "SPEC")]
    server: Option<String>,
    /// Control channel: type=tcp,port=N[,bindaddr=A] or type=unixio,path=P.
    #[arg(long, value_name = "SPEC")]
    ctrl: Option<String>,
    /// not-need-init (initialise at start), startup-clear | startup-state | startup-none.
    #[arg(long, value_name = "FLAGS")]
    flags: Option<String>,
    #[command(flatten)]
    state: StateArgs,
    /// file=PATH[,level=N]: log to a file instead of stderr.
    #[arg(long, value_name = "SPEC")]
    log: Option<String>,
    /// file=PATH: write the process id there.
    #[arg(long, value_name = "SPEC")]
    pid: Option<String>,
    /// Run in the background.
    #[arg(long)]
    daemon: bool,
    /// WELES: event socket for the manager: type=unixio,path=P or type=tcp,port=N[,bindaddr=A].
    #[arg(long, value_name = "SPEC")]
    events: Option<String>,
    /// WELES: this vTPM is new: start without state even if the monotonic store already holds a
    /// version (given by whoever creates vTPMs; otherwise a deleted state is refused).
    #[arg(long)]
    fresh_state: bool,
}

fn run(a: SocketArgs) -> anyhow::Result<()> {
    if !a.tpm2 {
        anyhow::bail!("weles-vtpm emulates a TPM 2.0 only: add --tpm2");
    }
    let server = a
        .server
        .as_deref()
        .map(|s| options::endpoint("--server", s))
        .transpose()?;
    let ctrl = a
        .ctrl
        .as_deref()
        .map(|s| options::endpoint("--ctrl", s))
        .transpose()?;
    let events = a
        .events
        .as_deref()
        .map(|s| options::endpoint("--events", s))
        .transpose()?;
    if server.is_none() && ctrl.is_none() {
        anyhow::bail!("give --ctrl (for QEMU) and/or --server (for tools)");
    }
    let (init_at_start, startup) = a
        .flags
        .as_deref()
        .map(options::flags)
        .transpose()?
        .unwrap_or((false, None));
    let state_dir = options::tpmstate(&a.state.tpmstate)?;
    let log_file = a
        .log
        .as_deref()
        .map(|l| options::file("--log", l))
        .transpose()?
        .flatten();
    let pid_file = a
        .pid
        .as_deref()
        .map(|p| options::file("--pid", p))
        .transpose()?
        .flatten();

    if a.daemon {
        // Re-run ourselves without --daemon, detached, and return once it started.
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|x| x != "--daemon")
            .collect();
        let exe = std::env::current_exe()?;
        std::process::Command::new(exe)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        return Ok(());
    }
    log::init(log_file.as_deref())?;
    if let Some(p) = &pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))?;
    }
    let (state, identity) = open_state(&a.state, a.fresh_state)?;
    let engine = Arc::new(Engine::open(Some(state))?);
    log::line(&format!(
        "vTPM {identity:?}: sealed state in {}",
        state_dir.display()
    ));
    server::run(
        engine,
        server::Options {
            ctrl,
            server,
            events,
            init_at_start,
            startup,
        },
    )
}

/// The sealed state of `args`: directory, identity, sealing provider, monotonic store.
fn open_state(args: &StateArgs, fresh: bool) -> anyhow::Result<(SealedState, String)> {
    let state_dir = options::tpmstate(&args.tpmstate)?;
    std::fs::create_dir_all(&state_dir)?;
    let identity = match &args.vtpm_id {
        Some(id) => id.clone(),
        None => identity_in(&state_dir)?,
    };
    let seal = options::key_values("--seal", &args.seal)?;
    if !seal.contains_key("sim") {
        anyhow::bail!(
            "--seal {:?}: only the sim provider exists yet (sim[,keyfile=PATH])",
            args.seal
        );
    }
    let key_file = seal
        .get("keyfile")
        .map(PathBuf::from)
        .unwrap_or_else(|| state_dir.join("seal.key"));
    let (provider, created) = SimSealing::open(&key_file)?;
    if created {
        log::line(&format!(
            "created a sim sealing key at {} (sim: protected only by file permissions, not by a TEE)",
            key_file.display()
        ));
    }
    let counter: Box<dyn MonotonicStore> = match args.monotonic.as_deref() {
        Some(m) => {
            let kv = options::key_values("--monotonic", m)?;
            match kv.get("type").map(String::as_str) {
                Some("tpm") => {
                    let host = kv.get("host").map_or("127.0.0.1", String::as_str);
                    let port: u16 = kv
                        .get("port")
                        .and_then(|p| p.parse().ok())
                        .ok_or_else(|| anyhow::anyhow!("--monotonic type=tpm needs port=N"))?;
                    let index = kv
                        .get("index")
                        .and_then(|i| u32::from_str_radix(i.trim_start_matches("0x"), 16).ok())
                        .ok_or_else(|| {
                            anyhow::anyhow!("--monotonic type=tpm needs index=0x01NNNNNN")
                        })?;
                    Box::new(HostTpmCounter::new(host, port, index)?)
                }
                _ => Box::new(FileCounter::new(
                    &options::file("--monotonic", m)?.ok_or_else(|| {
                        anyhow::anyhow!("--monotonic needs file=PATH or type=tpm,...")
                    })?,
                )),
            }
        }
        None => Box::new(FileCounter::new(&state_dir.join("version.counter"))),
    };
    let mut state = SealedState::new(&state_dir, &identity, Box::new(provider), counter);
    if fresh {
        state = state.fresh();
    }
    Ok((state, identity))
}

fn manufacture(a: ManufactureArgs) -> anyhow::Result<()> {
    let state_dir = options::tpmstate(&a.state.tpmstate)?;
    if state_dir.join("tpm-state.sealed").exists() {
        anyhow::bail!(
            "{} already holds a TPM; manufacture only a new one",
            state_dir.display()
        );
    }
    let banks = manufacture::banks(&a.pcr_banks)?;
    let ca = manufacture::Ca::from_pem(
        &std::fs::read_to_string(&a.ca_key)
            .map_err(|e| anyhow::anyhow!("--ca-key {}: {e}", a.ca_key.display()))?,
        &std::fs::read_to_string(&a.ca_cert)
            .map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", a.ca_cert.display()))?,
    )?;
    let (state, identity) = open_state(&a.state, true)?;
    let engine = Engine::open(Some(state))?;
    let eks = manufacture::manufacture(&engine, &banks, &ca, &identity)?;
    engine.stop();
    for ek in &eks {
        std::fs::write(
            state_dir.join(format!("ek-{}.der", ek.kind)),
            &ek.certificate,
        )?;
    }
    if a.json {
        let eks: Vec<serde_json::Value> = eks
            .iter()
            .map(|ek| {
                serde_json::json!({
                    "kind": ek.kind,
                    "handle": format!("{:#010x}", ek.handle),
                    "certificate_nv": format!("{:#010x}", ek.nv_index),
                    "certificate": hex::encode(&ek.certificate),
                })
            })
            .collect();
        let out = serde_json::json!({
            "vtpm_id": identity,
            "pcr_banks": a.pcr_banks.split(',').collect::<Vec<_>>(),
            "eks": eks,
        });
        println!("{out}");
    } else {
        println!(
            "manufactured vTPM {identity:?} in {} (PCR banks {})",
            state_dir.display(),
            a.pcr_banks
        );
        for ek in &eks {
            println!(
                "  EK {:<3} persistent {:#010x}, certificate in NV {:#010x} ({} bytes, also ek-{}.der)",
                ek.kind,
                ek.handle,
                ek.nv_index,
                ek.certificate.len(),
                ek.kind
            );
        }
    }
    Ok(())
}

/// The identity kept in the state directory, created on first start.
fn identity_in(dir: &std::path::Path) -> anyhow::Result<String> {
    let path = dir.join("identity");
    if let Ok(id) = std::fs::read_to_string(&path) {
        return Ok(id.trim().to_string());
    }
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Socket(a) => run(a),
        Mode::Manufacture(a) => manufacture(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weles-vtpm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
