//! `weles operator`: the host operator's commands, over welesd's local socket.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use weles_proto::operator::{self, OperatorReply, OperatorRequest, TenantInfo, VmInfo};

use crate::Outcome;

#[derive(Args)]
pub struct OperatorArgs {
    /// welesd's operator socket.
    #[arg(long, global = true, default_value = "/run/weles/operator.sock")]
    socket: PathBuf,
    /// Print welesd's JSON reply instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: OperatorCommand,
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Is welesd up? Version, TEE backend, counts, store version.
    Health,
    /// Tenants: the owners of VMs, known by their SSH keys.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// VMs: create (welesd manufactures and runs its vTPM), list, status, delete.
    #[command(subcommand)]
    Vm(VmCommand),
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Registers a tenant by its SSH public key; the tenant signs policies and API requests
    /// with the matching private key.
    Add {
        name: String,
        /// The tenant's public key file (`id_ed25519.pub`, an `authorized_keys` line).
        #[arg(long)]
        ssh_key: PathBuf,
    },
    List,
}

#[derive(Subcommand)]
enum VmCommand {
    /// Creates a VM for a tenant and prints the QEMU arguments that attach its vTPM and guest
    /// channel.
    Create {
        name: String,
        #[arg(long)]
        tenant: String,
    },
    List,
    Status {
        name: String,
    },
    /// Stops monitoring, shuts the vTPM down and deletes its state (irreversible).
    Delete {
        name: String,
    },
}

pub fn run(args: OperatorArgs) -> anyhow::Result<Outcome> {
    let req = match args.command {
        OperatorCommand::Health => OperatorRequest::Health,
        OperatorCommand::Tenant(TenantCommand::Add { name, ssh_key }) => {
            let key = String::from_utf8(crate::read_file(&ssh_key)?)
                .with_context(|| format!("{} is not text", ssh_key.display()))?;
            OperatorRequest::RegisterTenant { name, ssh_key: key }
        }
        OperatorCommand::Tenant(TenantCommand::List) => OperatorRequest::ListTenants,
        OperatorCommand::Vm(VmCommand::Create { name, tenant }) => {
            OperatorRequest::CreateVm { tenant, name }
        }
        OperatorCommand::Vm(VmCommand::List) => OperatorRequest::ListVms,
        OperatorCommand::Vm(VmCommand::Status { name }) => OperatorRequest::VmStatus { name },
        OperatorCommand::Vm(VmCommand::Delete { name }) => OperatorRequest::DeleteVm { name },
    };
    let reply = operator::call(&args.socket, &req)?;
    if let OperatorReply::Error(e) = &reply {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&reply)?);
        }
        anyhow::bail!("welesd refused ({}): {}", e.code, e.message);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(Outcome::Success);
    }
    match reply {
        OperatorReply::Health(h) => {
            println!("welesd {} — up {} s", h.version, h.uptime_s);
            let sim = if h.tee == "sim" {
                " (SIMULATED: no hardware protection)"
            } else {
                ""
            };
            println!("TEE backend: {}{sim}", h.tee);
            println!(
                "{} tenants, {} VMs, store version {}",
                h.tenants, h.vms, h.store_version
            );
            println!(
                "host: {}",
                h.host.as_deref().unwrap_or("not attested (no [host] tpm)")
            );
        }
        OperatorReply::Tenant(t) => print_tenant(&t),
        OperatorReply::Tenants(ts) => {
            if ts.is_empty() {
                println!("no tenants");
            }
            for t in &ts {
                print_tenant(t);
            }
        }
        OperatorReply::Vm(v) => print_vm(&v, true),
        OperatorReply::Vms(vs) => {
            if vs.is_empty() {
                println!("no VMs");
            }
            for v in &vs {
                print_vm(v, false);
            }
        }
        OperatorReply::Deleted { name } => println!("deleted VM {name}"),
        OperatorReply::Error(_) => {}
    }
    Ok(Outcome::Success)
}

fn print_tenant(t: &TenantInfo) {
    println!("{}  {}", t.name, t.ssh_key_fingerprint);
}

fn print_vm(v: &VmInfo, details: bool) {
    let reason = if v.reason.is_empty() {
        String::new()
    } else {
        format!(" — {}", v.reason)
    };
    println!("{} (tenant {}): {}{reason}", v.name, v.tenant, v.state);
    if !details {
        return;
    }
    let policy = v
        .policy_version
        .map_or("none".to_owned(), |p| format!("version {p}"));
    println!(
        "  policy {policy}; {} entries verified, {} extends, {} boots",
        v.entries, v.extends, v.boots
    );
    let pid = v
        .vtpm_pid
        .map_or("not running".to_owned(), |p| format!("pid {p}"));
    println!("  vTPM {pid}, {} restarts", v.vtpm_restarts);
    println!("  QEMU arguments:\n    {}", v.qemu_args.join(" "));
}
