//! `welesd`: see the library documentation and `docs/manager.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sha2::Digest as _;
use weles_manager::config::Config;
use weles_manager::manager::Manager;
use weles_manager::operator;

/// The WELES manager: keeps one vTPM per VM running, follows every PCR extend and the guest's
/// IMA log, and judges each VM against its tenant's policy as it runs.
///
/// Operators drive it with `weles operator …` over its local socket
/// (RUN_DIR/operator.sock, root only).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (TOML; see docs/manager.md). Without one, defaults apply.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides `state_dir` (sealed store, vTPM states).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Overrides `run_dir` (sockets).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Overrides `tenant_api`: where the tenant API listens (`127.0.0.1:0`: any free port).
    #[arg(long)]
    tenant_api: Option<String>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("welesd: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut cfg = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = cli.state_dir {
        cfg.state_dir = d;
    }
    if let Some(d) = cli.run_dir {
        cfg.run_dir = d;
    }
    if let Some(a) = cli.tenant_api {
        cfg.tenant_api = a;
    }
    if cfg.tee == "sim" {
        eprintln!(
            "welesd {}: TEE backend `sim` — SIMULATED, no hardware protection (development and tests only)",
            env!("CARGO_PKG_VERSION")
        );
    } else {
        eprintln!(
            "welesd {}: TEE backend `{}`",
            env!("CARGO_PKG_VERSION"),
            cfg.tee
        );
    }
    let socket = cfg.operator_socket();
    let listener = operator::bind(&socket).context("operator socket")?;
    let api_listener = std::net::TcpListener::bind(&cfg.tenant_api)
        .with_context(|| format!("tenant API: cannot listen on {}", cfg.tenant_api))?;
    let (mgr, notes) = Manager::open(cfg).context("opening the manager's store")?;
    let api_addr = api_listener.local_addr()?;
    mgr.set_api_addr(api_addr);
    let api = weles_manager::tenant_api::TenantApi::new(mgr.clone()).context("tenant API")?;
    std::thread::Builder::new()
        .name("tenant-api".into())
        .spawn(move || api.serve(api_listener))?;
    for n in notes {
        eprintln!("welesd: {n}");
    }
    let h = mgr.health();
    eprintln!(
        "welesd: {} tenants, {} VMs, store version {}; operator socket {}; tenant API https://{api_addr}",
        h.tenants,
        h.vms,
        h.store_version,
        socket.display()
    );
    match mgr.host_keys() {
        Some(k) => eprintln!(
            "welesd: host attestation on: EK certificate sha256 {}, AK sha256 {}",
            hex::encode(sha2::Sha256::digest(
                hex::decode(&k.ek_certificate).unwrap_or_default()
            )),
            weles_proto::api::ak_sha256(&hex::decode(&k.ak_public).unwrap_or_default())
        ),
        None => eprintln!("welesd: host attestation off (no [host] tpm configured)"),
    }
    operator::serve(listener, mgr);
    Ok(())
}
