//! `weles policy ...`

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use regex::bytes::Regex;
use serde_json::json;
use weles_ima::Bank;
use weles_policy::generate::{self, RootfsRules};
use weles_policy::{Policy, PolicyDocument, keylime, signing, to_toml};

use crate::ima_cmd::format_name;
use crate::{Outcome, read_file};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy (TOML or Keylime JSON) and summarise it.
    Check(CheckArgs),
    /// Convert a Keylime runtime policy (JSON v1) to a WELES TOML policy.
    ImportKeylime(ImportArgs),
    /// Generate a policy from a guest root filesystem or a known-good IMA log.
    ///
    /// --rootfs hashes executables, shared libraries and the files --include names, in
    /// parallel. --from-log allowlists every measurement of a run you trust (violation entries
    /// and corrupt entries are never allowlisted).
    ///
    /// Examples:
    ///   weles policy generate --rootfs /srv/guest-root --include '^/etc/ssh/' -o vm.toml
    ///   weles policy generate --from-log good-run.bin --hostname web-1.example.com -o vm.toml
    Generate(GenerateArgs),
    /// Sign a policy file (sshsig, namespace weles-policy) with an OpenSSH private key.
    ///
    /// Interoperates with `ssh-keygen -Y sign -f KEY -n weles-policy POLICY`. The passphrase of
    /// an encrypted key is read from WELES_KEY_PASSPHRASE or --passphrase-file.
    Sign(SignArgs),
    /// Verify a policy's signature with the signer's OpenSSH public key.
    ///
    /// Accepts signatures from `weles policy sign` and `ssh-keygen -Y sign -n weles-policy`.
    /// Exit 0: valid (and the policy parses); 1: signature invalid; 2: bad input.
    Verify(VerifyArgs),
    /// Upload a signed policy for one of your VMs to the trusted manager.
    ///
    /// The manager checks the signature against your registered key and that the version is
    /// newer than the VM's current policy; the new policy judges entries from now on.
    Push(crate::tenant_cmd::PushArgs),
    /// Measured-boot reference values for a host policy, from a known-good boot's event log.
    ///
    /// Replays the firmware's event log (a trusted host's
    /// /sys/kernel/security/tpm0/binary_bios_measurements) in the sha256 bank and prints the
    /// `[host]` section of a host policy: each PCR's value (a PCR the log never extends: zero).
    /// Hosts whose quoted PCRs differ are refused by `weles manager trust --host-policy`.
    ///
    /// Example:
    ///   weles policy host-pcrs --event-log good-boot.bin >> host.toml
    HostPcrs(HostPcrsArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// The policy file.
    policy: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ImportArgs {
    /// Keylime runtime policy JSON.
    input: PathBuf,
    /// Output TOML file (default: standard output).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Policy version to write (at least Keylime's `release`, and at least 1).
    #[arg(long, value_name = "N", default_value_t = 1)]
    policy_version: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Toml,
    Keylime,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Root filesystem of the guest image (a mounted image or unpacked tree).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "from_log",
        required_unless_present = "from_log"
    )]
    rootfs: Option<PathBuf>,
    /// A measurement list of a known-good run (binary or ASCII).
    #[arg(long, value_name = "FILE")]
    from_log: Option<PathBuf>,
    /// Also hash files whose guest path matches this regex (e.g. '^/etc/ssh/'); repeatable.
    #[arg(long, value_name = "REGEX")]
    include: Vec<String>,
    /// Never hash files whose guest path matches this regex; repeatable.
    #[arg(long, value_name = "REGEX")]
    exclude: Vec<String>,
    /// Hash every regular file, not only executables and libraries.
    #[arg(long)]
    all_files: bool,
    /// Write an exclude rule into the policy: matching paths are not checked at runtime.
    #[arg(long, value_name = "REGEX")]
    ignore: Vec<String>,
    /// File digest algorithm (must match the guest's ima_hash).
    #[arg(long, default_value = "sha256", value_parser = ["sha1", "sha256", "sha384", "sha512"])]
    algorithm: String,
    /// Hashing threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Policy version (each policy pushed for a VM must have a greater one).
    #[arg(long, value_name = "N", default_value_t = 1)]
    policy_version: u64,
    /// SSH host name of the VM (for its host certificate); repeatable.
    #[arg(long, value_name = "NAME")]
    hostname: Vec<String>,
    /// Output file (default: standard output).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "toml")]
    format: OutputFormat,
}

#[derive(Args)]
pub struct SignArgs {
    /// The policy file to sign.
    policy: PathBuf,
    /// OpenSSH private key (ed25519, ecdsa or rsa).
    #[arg(short = 'k', long, value_name = "FILE")]
    key: PathBuf,
    /// Signature output (default: POLICY.sig, as ssh-keygen -Y sign writes).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// File holding the key's passphrase (else WELES_KEY_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The policy file.
    policy: PathBuf,
    /// The signer's OpenSSH public key (a .pub file).
    #[arg(long, value_name = "PUBKEY")]
    signer: PathBuf,
    /// Signature file (default: POLICY.sig).
    #[arg(long, value_name = "FILE")]
    signature: Option<PathBuf>,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<Outcome> {
    match cmd {
        PolicyCommand::Check(a) => check(a),
        PolicyCommand::ImportKeylime(a) => import(a),
        PolicyCommand::Generate(a) => generate_cmd(a),
        PolicyCommand::Sign(a) => sign(a),
        PolicyCommand::Push(a) => crate::tenant_cmd::push(a),
        PolicyCommand::Verify(a) => verify(a),
        PolicyCommand::HostPcrs(a) => host_pcrs(a),
    }
}

fn load(path: &Path) -> anyhow::Result<Policy> {
    Ok(Policy::load(
        &read_file(path)?,
        &path.display().to_string(),
    )?)
}

fn check(a: CheckArgs) -> anyhow::Result<Outcome> {
    let p = load(&a.policy)?;
    let keys: Vec<_> = p
        .keys
        .iter()
        .map(|k| json!({"name": k.name, "type": k.kind(), "keyid": format!("{:08x}", k.keyid)}))
        .collect();
    if a.json {
        println!(
            "{}",
            json!({
                "valid": true, "format": format_name(p.format), "version": p.version, "name": p.name,
                "paths": p.digests.len(), "buffers": p.buffers.len(), "keyrings": p.keyrings.len(),
                "excludes": p.excludes, "keys": keys, "hostnames": p.hostnames,
                "boot_aggregate": p.boot_aggregates.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                "allow_violations": p.allow_violations,
                "templates": p.templates, "digest_algorithms": p.digest_algorithms.as_ref().map(|v| v.iter().map(|a| a.name()).collect::<Vec<_>>()),
                "mode": format!("{:?}", p.mode).to_lowercase(),
                "pending_grace_ms": p.pending_grace.as_millis() as u64,
                "certificate_validity_s": p.certificate_validity.as_secs(),
            })
        );
    } else {
        println!(
            "valid {} policy, version {}{}",
            format_name(p.format),
            p.version,
            p.name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        println!("  paths             {}", p.digests.len());
        println!(
            "  buffers/keyrings  {}/{}",
            p.buffers.len(),
            p.keyrings.len()
        );
        println!(
            "  excludes          {}",
            if p.excludes.is_empty() {
                "none".into()
            } else {
                p.excludes.join("  ")
            }
        );
        println!(
            "  boot_aggregate    {}",
            if p.boot_aggregates.is_empty() {
                "any listed under digests".into()
            } else {
                p.boot_aggregates
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        for k in &p.keys {
            println!(
                "  signing key       {} ({}, keyid {:08x})",
                k.name,
                k.kind(),
                k.keyid
            );
        }
        println!(
            "  violation entries {}",
            if p.allow_violations {
                "tolerated"
            } else {
                "not tolerated"
            }
        );
        if !p.hostnames.is_empty() {
            println!("  ssh hostnames     {}", p.hostnames.join(", "));
        }
    }
    Ok(Outcome::Success)
}

#[derive(Args)]
pub struct HostPcrsArgs {
    /// The firmware event log of a boot you trust (TCG crypto-agile format).
    #[arg(long, value_name = "FILE")]
    event_log: PathBuf,
    /// The PCRs to write reference values for: a list and ranges within 0–9.
    #[arg(long, default_value = "0-7", value_name = "LIST")]
    pcrs: String,
    /// Output file (default: standard output).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// One JSON object: the values and the number of events replayed.
    #[arg(long)]
    json: bool,
}

/// "0-7", "0,2,4-5" → sorted PCR indexes within 0–9.
fn pcr_list(s: &str) -> anyhow::Result<Vec<u32>> {
    let mut out = std::collections::BTreeSet::new();
    for part in s.split(',').map(str::trim) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (
            a.trim()
                .parse()
                .with_context(|| format!("--pcrs {s}: {part:?}"))?,
            b.trim()
                .parse()
                .with_context(|| format!("--pcrs {s}: {part:?}"))?,
        );
        if a > b || b > 9 {
            bail!("--pcrs {s}: {part:?} is not within 0–9 (PCR 10 is the IMA log's)");
        }
        out.extend(a..=b);
    }
    Ok(out.into_iter().collect())
}

fn host_pcrs(a: HostPcrsArgs) -> anyhow::Result<Outcome> {
    use weles_tpm::event_log::{ALG_SHA256, EventLog};
    let pcrs = pcr_list(&a.pcrs)?;
    let bytes = read_file(&a.event_log)?;
    let log = EventLog::parse(&bytes).with_context(|| a.event_log.display().to_string())?;
    let replayed = log
        .replay(ALG_SHA256)
        .with_context(|| a.event_log.display().to_string())?;
    let values: Vec<(u32, String)> = pcrs
        .iter()
        .map(|p| {
            let v = replayed
                .get(p)
                .map(hex::encode)
                .unwrap_or_else(|| "0".repeat(64));
            (*p, format!("sha256:{v}"))
        })
        .collect();
    let text = if a.json {
        let map: serde_json::Map<String, serde_json::Value> = values
            .iter()
            .map(|(p, v)| (p.to_string(), json!(v)))
            .collect();
        format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({ "pcrs": map, "events": log.events.len() }))?
        )
    } else {
        let mut t = format!(
            "# Measured-boot reference values: {} replayed ({} events).\n[host]\npcrs = {{ ",
            a.event_log.display(),
            log.events.len()
        );
        let entries: Vec<String> = values
            .iter()
            .map(|(p, v)| format!("\"{p}\" = [\"{v}\"]"))
            .collect();
        t.push_str(&entries.join(", "));
        t.push_str(" }\n");
        t
    };
    write_output(a.output.as_deref(), &text)?;
    Ok(Outcome::Success)
}

fn write_output(output: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match output {
        Some(path) => write_atomically(path, text.as_bytes()),
        None => {
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(())
        }
    }
}

/// Writes via a temporary file and rename, so an interrupted run never leaves half a policy.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn import(a: ImportArgs) -> anyhow::Result<Outcome> {
    let bytes = read_file(&a.input)?;
    let doc = keylime::to_document(&bytes, &a.input.display().to_string(), a.policy_version)?;
    // Round-trip through the loader so the written file is known to be valid.
    let text = to_toml(&doc);
    Policy::load(text.as_bytes(), "converted policy")
        .context("the converted policy does not validate (please report)")?;
    write_output(a.output.as_deref(), &text)?;
    if let Some(out) = &a.output {
        eprintln!(
            "wrote {} ({} paths, {} excludes, {} keys)",
            out.display(),
            doc.ima.digests.len(),
            doc.ima.excludes.len(),
            doc.ima.keys.len()
        );
    }
    Ok(Outcome::Success)
}

fn regexes(list: &[String], flag: &str) -> anyhow::Result<Vec<Regex>> {
    list.iter()
        .map(|r| Regex::new(r).with_context(|| format!("{flag} {r:?}")))
        .collect()
}

fn generate_cmd(a: GenerateArgs) -> anyhow::Result<Outcome> {
    let bank = Bank::from_name(&a.algorithm).context("--algorithm")?;
    let mut doc = if let Some(root) = &a.rootfs {
        if !root.is_dir() {
            bail!("--rootfs {}: not a directory", root.display());
        }
        let rules = RootfsRules {
            include: regexes(&a.include, "--include")?,
            exclude: regexes(&a.exclude, "--exclude")?,
            all_files: a.all_files,
            ..RootfsRules::default()
        };
        let files = generate::scan_rootfs(root, &rules)?;
        let total: u64 = files.iter().map(|f| f.size).sum();
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} hashing {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(format!("{} files", files.len()));
        let threads = a
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let t0 = std::time::Instant::now();
        let hashed = generate::hash_files(&files, bank, threads, &|bytes, _| bar.inc(bytes))?;
        bar.finish_and_clear();
        eprintln!(
            "hashed {} files ({} MiB) in {:.1?} with {threads} threads",
            hashed.len(),
            total >> 20,
            t0.elapsed()
        );
        generate::document_from_files(&hashed, a.policy_version)
    } else if let Some(log_path) = &a.from_log {
        let bytes = read_file(log_path)?;
        let (_, entries) = weles_ima::log::parse_all(&bytes, Default::default())
            .with_context(|| log_path.display().to_string())?;
        let (doc, s) = generate::document_from_log(entries, a.policy_version);
        eprintln!(
            "{} entries: {} paths, {} buffers allowlisted; skipped {} violation, {} corrupt, {} unsupported entries",
            s.entries,
            s.paths,
            s.buffers,
            s.violations_skipped,
            s.corrupt_skipped,
            s.unsupported_skipped
        );
        if s.corrupt_skipped > 0 {
            eprintln!(
                "warning: {} entries had a wrong template hash: is this log really from a good run?",
                s.corrupt_skipped
            );
        }
        doc
    } else {
        bail!("give --rootfs DIR or --from-log FILE");
    };
    doc.ima.excludes = a.ignore.clone();
    doc.ssh.hostnames = a.hostname.clone();
    let text = match a.format {
        OutputFormat::Toml => {
            let text = to_toml(&doc);
            Policy::load(text.as_bytes(), "generated policy")
                .context("generated policy does not validate")?;
            text
        }
        OutputFormat::Keylime => keylime_json(&doc),
    };
    write_output(a.output.as_deref(), &text)?;
    Ok(Outcome::Success)
}

/// A Keylime runtime policy (v1) with the same allowlist (bare hex digests).
fn keylime_json(doc: &PolicyDocument) -> String {
    let bare = |m: &std::collections::BTreeMap<String, Vec<String>>| -> serde_json::Map<String, serde_json::Value> {
        m.iter()
            .map(|(k, v)| (k.clone(), json!(v.iter().map(|d| d.rsplit(':').next().unwrap_or(d)).collect::<Vec<_>>())))
            .collect()
    };
    let mut digests = bare(&doc.ima.digests);
    if !doc.ima.boot_aggregate.is_empty() {
        digests.insert(
            "boot_aggregate".into(),
            json!(
                doc.ima
                    .boot_aggregate
                    .iter()
                    .map(|d| d.rsplit(':').next().unwrap_or(d))
                    .collect::<Vec<_>>()
            ),
        );
    }
    let v = json!({
        "meta": {"version": 1, "generator": 0},
        "release": 0,
        "digests": digests,
        "excludes": doc.ima.excludes,
        "keyrings": {},
        "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": null},
        "ima-buf": bare(&doc.ima.buffers),
        "verification-keys": "",
    });
    format!("{v}\n")
}

fn passphrase(a: &SignArgs) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(f) = &a.passphrase_file {
        let mut p = read_file(f)?;
        while p.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            p.pop();
        }
        return Ok(Some(p));
    }
    Ok(std::env::var_os("WELES_KEY_PASSPHRASE").map(|p| p.into_encoded_bytes()))
}

/// The signature file of a policy: the given one, or `POLICY.sig` as `ssh-keygen -Y sign` writes.
pub(crate) fn sig_path(policy: &Path, given: Option<&Path>) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| {
        let mut p = policy.as_os_str().to_owned();
        p.push(".sig");
        PathBuf::from(p)
    })
}

fn sign(a: SignArgs) -> anyhow::Result<Outcome> {
    let policy = read_file(&a.policy)?;
    // Refuse to sign something that is not a valid policy: a signature is a promise.
    Policy::load(&policy, &a.policy.display().to_string())?;
    let key_text = read_file(&a.key)?;
    let key = signing::load_private_key(&key_text, passphrase(&a)?.as_deref())
        .with_context(|| a.key.display().to_string())?;
    let armored = signing::sign(&key, &policy)?;
    let out = sig_path(&a.policy, a.output.as_deref());
    write_atomically(&out, armored.as_bytes())?;
    eprintln!(
        "signed {} with {} key {}; signature in {}",
        a.policy.display(),
        key.algorithm(),
        key.fingerprint(Default::default()),
        out.display()
    );
    Ok(Outcome::Success)
}

fn verify(a: VerifyArgs) -> anyhow::Result<Outcome> {
    let policy_bytes = read_file(&a.policy)?;
    let signer_text = String::from_utf8_lossy(&read_file(&a.signer)?).into_owned();
    let signer =
        signing::load_public_key(&signer_text).with_context(|| a.signer.display().to_string())?;
    let sig_file = sig_path(&a.policy, a.signature.as_deref());
    let sig = read_file(&sig_file)?;
    match signing::verify(&signer, &policy_bytes, &sig) {
        Ok(()) => {
            let p = Policy::load(&policy_bytes, &a.policy.display().to_string())?;
            println!(
                "good signature by {} on {} ({}, version {})",
                signer.fingerprint(Default::default()),
                a.policy.display(),
                format_name(p.format),
                p.version
            );
            Ok(Outcome::Success)
        }
        Err(signing::SignatureError::Format(e)) => {
            bail!("{}: not an SSH signature: {e}", sig_file.display())
        }
        Err(e) => {
            println!("BAD signature on {}: {e}", a.policy.display());
            Ok(Outcome::Negative)
        }
    }
}
