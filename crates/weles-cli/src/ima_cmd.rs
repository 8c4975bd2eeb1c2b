//! `weles ima ...`

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use weles_ima::parallel::ParallelError;
use weles_ima::{Config, Digest, LogFormat, verify_parallel};
use weles_policy::{Policy, PolicyFormat, signing};

use crate::{Outcome, read_file};

#[derive(Subcommand)]
pub enum ImaCommand {
    /// Verify a measurement list against a policy (and PCR 10 values).
    ///
    /// Every entry's template hash is checked and every entry is judged by the policy; with
    /// --pcr10, the log must also replay to each given value at some prefix (the PCR may lag the
    /// log). Exit 0: compliant; 1: not compliant; 2: invalid input.
    ///
    /// Example:
    ///   weles ima verify --log /sys/kernel/security/ima/binary_runtime_measurements \
    ///       --policy vm.toml --pcr10 sha256:$(cat /sys/class/tpm/tpm0/pcr-sha256/10)
    Verify(VerifyArgs),
    /// Print the entries of a measurement list.
    Show(ShowArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The measurement list: binary_runtime_measurements or ascii_runtime_measurements
    /// (detected).
    #[arg(long, value_name = "FILE")]
    log: PathBuf,
    /// The policy: WELES TOML or Keylime runtime-policy JSON (detected).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// Expected PCR 10 value as ALG:HEX (sha1, sha256, sha384, sha512); repeat per bank.
    #[arg(long = "pcr10", value_name = "ALG:HEX")]
    pcr10: Vec<String>,
    /// Verify the policy's sshsig signature (made with `weles policy sign` or
    /// `ssh-keygen -Y sign -n weles-policy`) with this public key before using it.
    #[arg(long, value_name = "PUBKEY")]
    signer: Option<PathBuf>,
    /// The policy's signature file (default: POLICY.sig). Used with --signer.
    #[arg(long, value_name = "FILE", requires = "signer")]
    signature: Option<PathBuf>,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    /// The measurement list (binary or ASCII).
    #[arg(long, value_name = "FILE")]
    log: PathBuf,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: ImaCommand) -> anyhow::Result<Outcome> {
    match cmd {
        ImaCommand::Verify(a) => verify(a),
        ImaCommand::Show(a) => show(a),
    }
}

fn verify(a: VerifyArgs) -> anyhow::Result<Outcome> {
    let expected = a
        .pcr10
        .iter()
        .map(|p| Digest::parse(p).with_context(|| format!("--pcr10 {p:?}: expected ALG:HEX")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let policy_name = a.policy.display().to_string();
    let signature = a.signer.as_ref().map(|signer| {
        (
            signer.clone(),
            crate::policy_cmd::sig_path(&a.policy, a.signature.as_deref()),
        )
    });

    // Start loading the policy at once; the log is read and hashed meanwhile.
    let (report, policy) = std::thread::scope(|s| {
        let loader = s.spawn(|| -> anyhow::Result<Policy> {
            let bytes = read_file(&a.policy)?;
            if let Some((signer, sig_path)) = &signature {
                let key = signing::load_public_key(&String::from_utf8_lossy(&read_file(signer)?))
                    .with_context(|| format!("--signer {}", signer.display()))?;
                signing::verify(&key, &bytes, &read_file(sig_path)?)
                    .with_context(|| format!("policy signature {}", sig_path.display()))?;
            }
            Ok(Policy::load(&bytes, &policy_name)?)
        });
        let log = read_file(&a.log)?;
        // Replay exactly the banks we have values for; template hashes are checked regardless.
        let config = Config {
            banks: Vec::new(),
            ..Config::default()
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wait_for_policy = || {
            loader
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the policy loader failed")))
        };
        verify_parallel(&log, &config, &expected, threads, wait_for_policy).map_err(|e| match e {
            ParallelError::Appraiser(e) => e,
            ParallelError::Parse(e) => anyhow::Error::new(e).context(a.log.display().to_string()),
            e => anyhow::Error::new(e),
        })
    })?;
    let state = &report.state;
    let compliant = report.compliant();

    if a.json {
        let violations: Vec<_> = report
            .violations
            .iter()
            .map(|x| {
                json!({
                    "index": x.index, "path": x.path, "reason": x.reason.as_str(),
                    "digest": x.digest, "offset": x.offset, "detail": x.detail,
                })
            })
            .collect();
        let pcrs: Vec<_> = report.pcr_matches
            .iter()
            .map(|m| json!({"bank": m.bank.name(), "expected": m.expected.to_hex(), "matched_at": m.matched_at}))
            .collect();
        let out = json!({
            "compliant": compliant,
            "entries": state.entries,
            "pcr_matched_at": report.pcr_matched_at(),
            "violations": violations,
            "violations_total": report.violations_total,
            "log_format": state.format.map(|f| f.name()),
            "pcr": pcrs,
            "policy": {"format": format_name(policy.format), "version": policy.version},
        });
        println!("{out}");
    } else {
        let verdict = if compliant {
            "COMPLIANT"
        } else {
            "NOT COMPLIANT"
        };
        println!("{verdict}");
        println!(
            "  log     {} ({}, {} entries)",
            a.log.display(),
            state.format.map_or("empty", |f: LogFormat| f.name()),
            state.entries
        );
        println!(
            "  policy  {} ({}, version {}, {} paths{})",
            a.policy.display(),
            format_name(policy.format),
            policy.version,
            policy.digests.len(),
            if signature.is_some() {
                ", signature verified"
            } else {
                ""
            }
        );
        for m in &report.pcr_matches {
            match m.matched_at {
                Some(n) => println!(
                    "  PCR 10  {} {} matches the replay after {n} of {} entries",
                    m.bank,
                    short(&m.expected),
                    state.entries
                ),
                None => println!(
                    "  PCR 10  {} {} matches no prefix of the log",
                    m.bank,
                    short(&m.expected)
                ),
            }
        }
        if expected.is_empty() {
            println!(
                "  PCR 10  no value given (--pcr10): the log is checked for consistency only, not attested"
            );
        }
        if !compliant {
            println!("  violations ({}):", report.violations_total);
            for x in &report.violations {
                println!(
                    "    entry {:<6} {:<22} {}",
                    x.index,
                    x.reason.as_str(),
                    x.path
                );
                println!("           {}", x.detail);
            }
            let hidden = report.violations_total - report.violations.len() as u64;
            if hidden > 0 {
                println!("    ... and {hidden} more");
            }
        }
    }
    Ok(if compliant {
        Outcome::Success
    } else {
        Outcome::Negative
    })
}

fn short(d: &Digest) -> String {
    let h = d.to_hex();
    format!("{}…{}", &h[..8], &h[h.len() - 8..])
}

pub fn format_name(f: PolicyFormat) -> &'static str {
    match f {
        PolicyFormat::Toml => "WELES TOML",
        PolicyFormat::Keylime => "Keylime runtime policy",
    }
}

fn show(a: ShowArgs) -> anyhow::Result<Outcome> {
    let bytes = read_file(&a.log)?;
    if bytes.is_empty() {
        bail!("{}: empty measurement list", a.log.display());
    }
    let format = LogFormat::detect(&bytes);
    let mut reader = weles_ima::Reader::new(format, &bytes, 0, 0, Default::default(), true);
    while let Some(e) = reader.next_entry() {
        let e = e.with_context(|| a.log.display().to_string())?;
        let digest = match e.file_digest() {
            Some((Ok(alg), _, d)) => format!("{alg}:{}", hex::encode(d)),
            Some((Err(name), _, d)) => format!("{name}:{}", hex::encode(d)),
            None => String::new(),
        };
        if a.json {
            println!(
                "{}",
                json!({
                    "index": e.index, "offset": e.offset, "pcr": e.pcr,
                    "template": e.template_name, "template_hash": hex::encode(e.template_hash),
                    "template_hash_ok": e.template_hash_ok(), "violation": e.is_violation(),
                    "digest": digest, "path": e.name_lossy(),
                    "signature": e.signature().map(hex::encode),
                })
            );
        } else {
            let flag = if e.is_violation() {
                " [violation]"
            } else if !e.template_hash_ok() {
                " [TEMPLATE HASH MISMATCH]"
            } else if e.signature().is_some() {
                " [signed]"
            } else {
                ""
            };
            println!(
                "{:>5} {:>2} {:<10} {} {}{flag}",
                e.index,
                e.pcr,
                e.template_name,
                digest,
                e.name_lossy()
            );
        }
    }
    Ok(Outcome::Success)
}
