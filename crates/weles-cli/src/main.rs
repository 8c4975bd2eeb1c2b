//! `weles`: the WELES command line for tenants and operators.

mod audit_cmd;
mod demo;
mod ima_cmd;
mod operator_cmd;
mod policy_cmd;
mod tenant_cmd;
mod trust_config;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// WELES: policy-driven runtime integrity for cloud VMs.
///
/// Tenants: write, sign and push policies, trust a manager (welesd), watch your VMs' states and
/// events, verify the manager's audit log. Operators: manage tenants and VMs of a host's welesd.
/// Anyone: verify an IMA measurement list against a policy offline.
///
/// Exit codes: 0 success / compliant, 1 failure / not compliant, 2 invalid input or usage.
#[derive(Parser)]
#[command(
    name = "weles",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect and verify IMA measurement lists.
    #[command(subcommand)]
    Ima(ima_cmd::ImaCommand),
    /// Check, convert, generate, sign and verify tenant policies.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Trust a WELES manager (verify its evidence, pin its keys).
    #[command(subcommand)]
    Manager(tenant_cmd::ManagerCommand),
    /// Your VMs at the trusted manager: status, events.
    #[command(subcommand)]
    Vm(tenant_cmd::VmCommand),
    /// Operate a host's welesd: tenants, VMs, health (local socket, root).
    Operator(operator_cmd::OperatorArgs),
    /// Write the known_hosts line and ssh_config block that let stock ssh trust your VM's
    /// host certificate (and re-key often, so sessions to a VM that stops complying die).
    SshConfig(tenant_cmd::SshConfigArgs),
    /// Your webhook at the trusted manager: set, show, delete.
    #[command(subcommand)]
    Webhook(tenant_cmd::WebhookCommand),
    /// Verify a manager's audit log offline.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// See it all work on this machine: welesd, a QEMU VM with IMA and its vTPM, a signed
    /// policy, stock ssh — then a tampered binary, the violation, and the refused login.
    ///
    /// Needs root, the binaries of this build (welesd beside weles) and a guest image from
    /// `bash scripts/guest-image.sh` (`bash scripts/quickstart.sh` does all of it). Takes about
    /// 15 s without KVM. Everything it starts is stopped at the end, also on Ctrl-C, unless
    /// --keep.
    Demo(demo::DemoArgs),
}

/// How a command that ran to completion ended. Errors (exit 2) are returned as `Err` instead.
pub enum Outcome {
    Success,
    /// A negative verdict (not compliant, signature invalid): exit 1, output already printed.
    Negative,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ima(c) => ima_cmd::run(c),
        Command::Policy(c) => policy_cmd::run(c),
        Command::Operator(a) => operator_cmd::run(a),
        Command::Manager(c) => tenant_cmd::manager(c),
        Command::Vm(c) => tenant_cmd::vm(c),
        Command::Audit(c) => audit_cmd::run(c),
        Command::Webhook(c) => tenant_cmd::webhook(c),
        Command::SshConfig(a) => tenant_cmd::ssh_config(a),
        Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Negative) => ExitCode::from(1),
        Err(e) => {
            eprintln!("weles: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Reads a file, naming it in the error.
pub fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
