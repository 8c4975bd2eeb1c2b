//! The tenant's commands against a manager: `weles manager trust|show`, `weles vm …`,
//! `weles policy push`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use weles_proto::api::{self, EventPage, Evidence, PolicyUpload, VmStatus};

use crate::trust_config::{self, TrustFile, TrustFlags};
use crate::{Outcome, read_file};
use weles_client::{self as manager_client, Connection, Signer, Trust, host_verify};

#[derive(Subcommand)]
pub enum ManagerCommand {
    /// Verify a manager's evidence for a fresh nonce and pin its keys for later commands.
    ///
    /// Checks that the evidence answers our nonce, binds the manager key M and the TLS key this
    /// connection saw, and is signed by M; then the TEE's own evidence against its vendor's
    /// chain and your reference values (SEV-SNP: --snp-*; SGX and TDX: --dcap-collateral with
    /// --sgx-* or --tdx-*), and with --host-ca the host's TPM. Evidence from the `sim` TEE
    /// backend proves nothing about the platform (no hardware) and is refused unless
    /// --allow-simulated.
    ///
    /// Example:
    ///   weles manager trust https://host:8443 --tenant acme --key ~/.ssh/id_ed25519
    Trust(Box<TrustArgs>),
    /// Show the trusted manager.
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct TrustArgs {
    /// The manager's tenant API, https://HOST:PORT.
    url: String,
    /// Your tenant name at this manager.
    #[arg(long)]
    tenant: String,
    /// Your OpenSSH private key (the public half is registered with the manager's operator).
    #[arg(long)]
    key: PathBuf,
    /// What you trust, in one file (TOML: allow_simulated, [host], [snp], [dcap], [sgx],
    /// [tdx] — docs/tenant-guide.md); the flags below add to it or replace its single values.
    #[arg(long, value_name = "FILE")]
    trust_config: Option<PathBuf>,
    /// Accept evidence from the simulated TEE (development and tests only: no protection).
    #[arg(long)]
    allow_simulated: bool,
    /// Attest the manager's host with its TPM: a CA certificate (PEM, bundles allowed, or DER)
    /// of a TPM maker you trust, at the end of the EK certificate's chain; repeatable. Needs
    /// --host-policy.
    #[arg(long, value_name = "CA_CERT")]
    host_ca: Vec<PathBuf>,
    /// An intermediate CA certificate between the EK certificate and a --host-ca (path
    /// material only: it must itself chain to a --host-ca); repeatable. The manager may send
    /// its TPM maker's intermediates too.
    #[arg(long, value_name = "CA_CERT")]
    host_ca_intermediate: Vec<PathBuf>,
    /// The host policy (TOML, as `weles policy`; `[host] pcrs` lists measured-boot reference
    /// values): the host's IMA log must comply and PCRs 0–9 match.
    #[arg(long, value_name = "POLICY")]
    host_policy: Option<PathBuf>,
    /// A manager in an SEV-SNP VM (`tsm` backend): the VCEK certificate (DER) of its chip, from
    /// AMD's key server (offline collateral; AMD's ARK and ASK are built in).
    #[arg(long, value_name = "VCEK_DER")]
    snp_vcek: Option<PathBuf>,
    /// An SEV-SNP launch measurement (96 hex digits) of a manager image you accept; repeatable.
    #[arg(long, value_name = "HEX")]
    snp_measurement: Vec<String>,
    /// A manager in an SGX enclave (`sgx`) or a TDX VM (`tsm`): Intel's collateral for its
    /// platform, one JSON file (TCB info, QE identity, their chains, CRLs; docs/tee.md).
    /// Intel's SGX Root CA is built in.
    #[arg(long, value_name = "FILE")]
    dcap_collateral: Option<PathBuf>,
    /// A TCB status accepted besides UpToDate (e.g. SWHardeningNeeded); repeatable. Revoked
    /// is never accepted.
    #[arg(long, value_name = "STATUS")]
    dcap_accept: Vec<String>,
    /// An enclave measurement (MRENCLAVE, 64 hex digits) of a manager build you accept; repeatable.
    #[arg(long, value_name = "HEX")]
    sgx_mrenclave: Vec<String>,
    /// An enclave signer (MRSIGNER, 64 hex digits) you accept; repeatable.
    #[arg(long, value_name = "HEX")]
    sgx_mrsigner: Vec<String>,
    /// A trust domain measurement (MRTD, 96 hex digits) you accept; repeatable.
    #[arg(long, value_name = "HEX")]
    tdx_mrtd: Vec<String>,
    /// A runtime measurement register that must hold a value: N=HEX (N 0–3, 96 hex digits).
    #[arg(long, value_name = "N=HEX")]
    tdx_rtmr: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum VmCommand {
    /// Your VMs and their states.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One VM: state, why, entries verified, policy version, vTPM EK certificate.
    /// Exit 0 if compliant, 1 if not.
    Status {
        vm: String,
        #[arg(long)]
        json: bool,
    },
    /// A VM's events (state changes, violations); --follow streams new ones as they happen.
    Events {
        vm: String,
        /// Start after this event number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long)]
        follow: bool,
        /// With --follow: stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct PushArgs {
    /// The policy file (TOML or Keylime JSON).
    policy: PathBuf,
    /// The VM it is for.
    #[arg(long)]
    vm: String,
    /// Its signature (default: POLICY.sig, as `weles policy sign` and `ssh-keygen -Y sign` write).
    #[arg(long)]
    signature: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn connect() -> anyhow::Result<(Trust, Connection, Signer)> {
    let trust = manager_client::load_trust()?;
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&trust.tls_spki_sha256, &mut pin)
        .context("the trust file's tls_spki_sha256")?;
    let conn = Connection::open(&trust.url, Some(pin))?;
    let signer = Signer::from_trust(&trust)?;
    Ok((trust, conn, signer))
}

pub fn manager(cmd: ManagerCommand) -> anyhow::Result<Outcome> {
    match cmd {
        ManagerCommand::Trust(a) => trust(*a),
        ManagerCommand::Show { json } => {
            let t = manager_client::load_trust()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!("manager {} (TEE {}), tenant {}", t.url, t.tee, t.tenant);
                println!("  manager key {}", t.manager_key);
                println!("  TLS key sha256 {}", t.tls_spki_sha256);
            }
            Ok(Outcome::Success)
        }
    }
}

fn trust(a: TrustArgs) -> anyhow::Result<Outcome> {
    // Everything local is read and checked before the manager is asked anything.
    let file = match &a.trust_config {
        Some(p) => TrustFile::load(p)?,
        None => TrustFile::default(),
    };
    let flags = TrustFlags {
        allow_simulated: a.allow_simulated,
        host_ca: a.host_ca,
        host_ca_intermediate: a.host_ca_intermediate,
        host_policy: a.host_policy,
        snp_vcek: a.snp_vcek,
        snp_measurement: a.snp_measurement,
        dcap_collateral: a.dcap_collateral,
        dcap_accept: a.dcap_accept,
        sgx_mrenclave: a.sgx_mrenclave,
        sgx_mrsigner: a.sgx_mrsigner,
        tdx_mrtd: a.tdx_mrtd,
        tdx_rtmr: a.tdx_rtmr,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let trusted = trust_config::resolve(file, flags, now)?;
    let (host_trust, tee) = (&trusted.host, &trusted.tee);

    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    let nonce = hex::encode(nonce);
    let mut conn = Connection::open(&a.url, None)?;
    // With host trust: a credential for the host's AK rides along with the nonce.
    let mut challenge = None;
    if host_trust.is_some() {
        let r = conn.request("GET", "/v1/host", b"", None)?;
        if r.status == 404 {
            bail!(
                "the manager does not attest its host (it has no host TPM configured); trust it \
                 without host CAs and policy, or ask its operator"
            );
        }
        let keys: api::HostKeys = manager_client::json(&r)?;
        challenge = Some(host_verify::make_challenge(&keys)?);
    }
    let body = serde_json::to_vec(&api::EvidenceRequest {
        nonce: nonce.clone(),
        credential: challenge.as_ref().map(|(c, _)| c.clone()),
    })?;
    let r = conn.request("POST", "/v1/evidence", &body, None)?;
    let ev: Evidence = manager_client::json(&r)?;
    let seen = hex::encode(conn.seen_spki);
    let tee_evidence = match manager_client::verify_evidence(&ev, &nonce, &seen, tee) {
        Ok(summary) => summary,
        Err(e) => bail!("the manager's evidence does not check out: {e}"),
    };
    let host = match (host_trust, &challenge) {
        (Some(trust), Some((_, secret))) => {
            let Some(h) = &ev.host else {
                bail!("the manager's evidence carries no host TPM evidence");
            };
            Some(host_verify::verify(
                h,
                &nonce,
                &ev.manager_key,
                secret,
                trust,
            )?)
        }
        _ => None,
    };
    if ev.tee == "sim" && !trusted.allow_simulated {
        eprintln!(
            "weles: the manager runs on the simulated TEE (`sim`): its evidence is consistent but no \
             hardware stands behind it, so it proves nothing about the platform or the manager's code. \
             Trust it only for development and tests, with --allow-simulated."
        );
        return Ok(Outcome::Negative);
    }
    // The key must be usable now, not at the first request.
    let key_text = read_file(&a.key)?;
    let pass = std::env::var_os("WELES_KEY_PASSPHRASE").map(|p| p.into_encoded_bytes());
    weles_policy::signing::load_private_key(&key_text, pass.as_deref())
        .with_context(|| a.key.display().to_string())?;
    let key = std::fs::canonicalize(&a.key).unwrap_or(a.key.clone());
    let t = Trust {
        url: a.url.trim_end_matches('/').to_owned(),
        manager_key: ev.manager_key.clone(),
        tls_spki_sha256: seen,
        tee: ev.tee.clone(),
        tenant: a.tenant,
        key,
        trusted_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64,
        host: host.as_ref().map(|h| manager_client::TrustedHost {
            ek_certificate_sha256: h.ek_certificate_sha256.clone(),
            ak_sha256: h.ak_sha256.clone(),
        }),
    };
    let path = manager_client::save_trust(&t)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "trust": t, "tee_evidence": tee_evidence, "evidence": ev })
            )?
        );
    } else {
        let sim = if ev.tee == "sim" {
            " — SIMULATED, no hardware protection"
        } else {
            ""
        };
        println!(
            "trusted manager {} (weles {}), TEE {}{sim}",
            t.url, ev.manager_version, ev.tee
        );
        println!("  manager key {}", t.manager_key);
        println!("  TEE evidence: {tee_evidence}");
        match &host {
            Some(h) => println!(
                "  host attested by its TPM: EK {}, certificate sha256 {}, AK sha256 {} (bound \
                 into the report data), banks {}, {}, {} IMA entries comply, reference PCRs {:?}",
                h.ek_kind,
                h.ek_certificate_sha256,
                h.ak_sha256,
                h.banks.join(", "),
                match h.boot_events {
                    Some(n) => format!("{n} boot events replay to PCRs 0–9"),
                    None => "no firmware event log".to_owned(),
                },
                h.ima_entries,
                h.reference_pcrs
            ),
            None if ev.host.is_some() => {
                println!("  host: TPM evidence present but not checked (no --host-ca)")
            }
            None => println!("  host: not attested"),
        }
        println!("  TLS key sha256 {}", t.tls_spki_sha256);
        println!("  pinned in {}", path.display());
    }
    Ok(Outcome::Success)
}

pub fn vm(cmd: VmCommand) -> anyhow::Result<Outcome> {
    let (_trust, mut conn, signer) = connect()?;
    match cmd {
        VmCommand::List { json } => {
            let r = conn.request("GET", "/v1/vms", b"", Some(&signer))?;
            let vms: Vec<VmStatus> = manager_client::json(&r)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vms)?);
            } else if vms.is_empty() {
                println!("no VMs");
            } else {
                for v in &vms {
                    println!("{}: {}{}", v.name, v.state, reason(&v.reason));
                }
            }
            Ok(Outcome::Success)
        }
        VmCommand::Status { vm, json } => {
            let r = conn.request("GET", &format!("/v1/vms/{vm}"), b"", Some(&signer))?;
            let v: VmStatus = manager_client::json(&r)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}: {}{}", v.name, v.state, reason(&v.reason));
                let policy = v
                    .policy_version
                    .map_or("none".into(), |p| format!("version {p}"));
                println!(
                    "  policy {policy}; {} entries verified, {} PCR 10 extends, {} boots",
                    v.entries, v.extends, v.boots
                );
                if let Some(x) = &v.violation {
                    println!(
                        "  violation: entry {} {} ({}) {}",
                        x["index"],
                        x["path"].as_str().unwrap_or(""),
                        x["reason"].as_str().unwrap_or(""),
                        x["detail"].as_str().unwrap_or("")
                    );
                }
                if let Some(n) = v.last_event {
                    println!("  last event #{n}");
                }
                match &v.host_key {
                    Some(k) => println!("  SSH host key (in the vTPM): {k}"),
                    None => println!("  SSH host key: none accepted yet"),
                }
                if !v.hostnames.is_empty() {
                    let cert = if v.host_certificate.is_some() {
                        "certified"
                    } else {
                        "not certified yet"
                    };
                    println!("  host names: {} ({cert})", v.hostnames.join(", "));
                }
            }
            Ok(if v.state == "compliant" {
                Outcome::Success
            } else {
                Outcome::Negative
            })
        }
        VmCommand::Events {
            vm,
            after,
            follow,
            count,
            json,
        } => {
            if !follow {
                let r = conn.request(
                    "GET",
                    &format!("/v1/vms/{vm}/events?after={after}&limit=1000"),
                    b"",
                    Some(&signer),
                )?;
                let page: EventPage = manager_client::json(&r)?;
                if let Some(l) = page.lost_before {
                    eprintln!("weles: events before #{l} are no longer kept");
                }
                for e in &page.events {
                    print_event(e, json);
                }
                return Ok(Outcome::Success);
            }
            let mut left = count;
            conn.events(
                &format!("/v1/vms/{vm}/events/stream?after={after}"),
                &signer,
                |kind, data| {
                    if kind == "lost" {
                        eprintln!("weles: some events were no longer kept: {data}");
                        return true;
                    }
                    if let Ok(e) = serde_json::from_str::<serde_json::Value>(data) {
                        print_event(&e, json);
                        manager_client::flush_stdout();
                    }
                    if let Some(n) = left.as_mut() {
                        *n -= 1;
                        return *n > 0;
                    }
                    true
                },
            )?;
            Ok(Outcome::Success)
        }
    }
}

fn reason(r: &str) -> String {
    if r.is_empty() {
        String::new()
    } else {
        format!(" — {r}")
    }
}

fn print_event(e: &serde_json::Value, json: bool) {
    if json {
        println!("{e}");
        return;
    }
    let seq = &e["seq"];
    let vm = e["vm"].as_str().unwrap_or("");
    match e["kind"].as_str() {
        Some("state") => println!(
            "#{seq} {vm}: {} → {}{}",
            e["from"].as_str().unwrap_or(""),
            e["to"].as_str().unwrap_or(""),
            reason(e["reason"].as_str().unwrap_or(""))
        ),
        Some("violation") => println!(
            "#{seq} {vm}: VIOLATION entry {} {} ({}){}",
            e["index"],
            e["path"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or(""),
            e["digest"]
                .as_str()
                .map(|d| format!(" {d}"))
                .unwrap_or_default()
        ),
        _ => println!("{e}"),
    }
}

pub fn push(a: PushArgs) -> anyhow::Result<Outcome> {
    let policy = String::from_utf8(read_file(&a.policy)?)
        .with_context(|| format!("{} is not UTF-8 text", a.policy.display()))?;
    weles_policy::Policy::load(policy.as_bytes(), &a.policy.display().to_string())?;
    let sig_file = crate::policy_cmd::sig_path(&a.policy, a.signature.as_deref());
    let signature = String::from_utf8(read_file(&sig_file)?)
        .with_context(|| format!("{} is not a text signature", sig_file.display()))?;
    let (_t, mut conn, signer) = connect()?;
    let body = serde_json::to_vec(&PolicyUpload { policy, signature })?;
    let r = conn.request(
        "PUT",
        &format!("/v1/vms/{}/policy", a.vm),
        &body,
        Some(&signer),
    )?;
    let v: serde_json::Value = manager_client::json(&r)?;
    if a.json {
        println!("{v}");
    } else {
        println!(
            "policy version {} is in force for VM {}",
            v["policy_version"], a.vm
        );
    }
    Ok(Outcome::Success)
}

#[derive(Subcommand)]
pub enum WebhookCommand {
    /// Have the manager POST your VMs' events to URL (http(s)://HOST[:PORT]/PATH), signed with
    /// HMAC-SHA256 under a secret you choose: header `X-Weles-Signature: sha256=<hex>`, event
    /// number in `X-Weles-Event`. Events from now on; each until your receiver answers 2xx.
    /// An https:// receiver must present a certificate for HOST that chains to --ca, or to the
    /// manager host's system roots.
    Set {
        url: String,
        /// A file holding the secret, hex, at least 16 bytes (`openssl rand -hex 32 > F`).
        #[arg(long)]
        secret_file: PathBuf,
        /// The CA certificate (PEM) that issued your https:// receiver's certificate: then only
        /// it is trusted for deliveries.
        #[arg(long, value_name = "PEM")]
        ca: Option<PathBuf>,
    },
    /// The webhook and how deliveries are going.
    Show {
        #[arg(long)]
        json: bool,
    },
    Delete,
}

pub fn webhook(cmd: WebhookCommand) -> anyhow::Result<Outcome> {
    let (_t, mut conn, signer) = connect()?;
    match cmd {
        WebhookCommand::Set {
            url,
            secret_file,
            ca,
        } => {
            let secret = String::from_utf8_lossy(&read_file(&secret_file)?)
                .trim()
                .to_owned();
            let ca = match ca {
                Some(p) => Some(String::from_utf8_lossy(&read_file(&p)?).into_owned()),
                None => None,
            };
            let body = serde_json::to_vec(&api::WebhookSet { url, secret, ca })?;
            let r = conn.request("PUT", "/v1/webhook", &body, Some(&signer))?;
            let s: api::DeliveryState = manager_client::json(&r)?;
            println!(
                "webhook {} set; events after #{} will be delivered",
                s.url, s.delivered
            );
        }
        WebhookCommand::Show { json } => {
            let r = conn.request("GET", "/v1/webhook", b"", Some(&signer))?;
            let s: api::DeliveryState = manager_client::json(&r)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("webhook {}: delivered up to #{}", s.url, s.delivered);
                if let Some(p) = s.pending {
                    println!(
                        "  #{p} pending after {} failed attempts: {}",
                        s.attempts,
                        s.last_error.as_deref().unwrap_or("")
                    );
                }
            }
        }
        WebhookCommand::Delete => {
            let r = conn.request("DELETE", "/v1/webhook", b"", Some(&signer))?;
            let _: serde_json::Value = manager_client::json(&r)?;
            println!("webhook deleted");
        }
    }
    Ok(Outcome::Success)
}

#[derive(Args)]
pub struct SshConfigArgs {
    /// The VM.
    vm: String,
    /// How often open sessions re-key (and so how soon one to a VM that stopped complying
    /// dies): an OpenSSH time like 60s or 5m.
    #[arg(long, default_value = "60s")]
    rekey: String,
    /// Write the files under $WELES_HOME/ssh (known_hosts, VM.conf) instead of printing them.
    #[arg(long)]
    write: bool,
}

/// The known_hosts line and ssh_config block that make stock OpenSSH check a VM's host
/// certificate against the tenant's CA (taken only from the manager trusted with
/// `weles manager trust`).
pub fn ssh_config(a: SshConfigArgs) -> anyhow::Result<Outcome> {
    let rekey_secs = rekey_seconds(&a.rekey)
        .with_context(|| format!("--rekey {:?}: expected a time like 60s, 5m or 1h", a.rekey))?;
    let (_t, mut conn, signer) = connect()?;
    let r = conn.request("GET", "/v1/ssh-ca", b"", Some(&signer))?;
    let ca: serde_json::Value = manager_client::json(&r)?;
    let ca = ca["public_key"]
        .as_str()
        .context("the manager sent no CA key")?
        .to_owned();
    let mut conn = Connection::open(&_t.url, Some(pin_of(&_t)?))?;
    let r = conn.request("GET", &format!("/v1/vms/{}", a.vm), b"", Some(&signer))?;
    let vm: VmStatus = manager_client::json(&r)?;
    if vm.hostnames.is_empty() {
        bail!(
            "VM {} has no host names: its policy's [ssh] hostnames is empty",
            a.vm
        );
    }
    let r = conn.request("GET", "/v1/krl", b"", Some(&signer))?;
    if r.status != 200 {
        bail!("{}", manager_client::api_error(r.status, &r.body));
    }
    let krl = r.body;
    let dir = manager_client::home()?.join("ssh");
    let known = dir.join("known_hosts");
    let revoked = dir.join("revoked_host_keys");
    let known_line = format!("@cert-authority {} {ca}", vm.hostnames.join(","));
    let block = format!(
        "# WELES: {vm} is trusted only through certificates from your SSH CA at the manager,\n\
         # and sessions re-key every {rekey} (a VM that stops complying cannot re-key); the\n\
         # keepalives make idle sessions re-key too.\n\
         Host {hosts}\n    HostKeyAlgorithms ecdsa-sha2-nistp256-cert-v01@openssh.com\n    \
         UserKnownHostsFile {known}\n    StrictHostKeyChecking yes\n    RekeyLimit default {rekey}\n    \
         ServerAliveInterval {rekey_secs}\n    RevokedHostKeys {revoked}\n",
        vm = a.vm,
        rekey = a.rekey,
        rekey_secs = rekey_secs,
        hosts = vm.hostnames.join(" "),
        known = known.display(),
        revoked = revoked.display(),
    );
    if !a.write {
        println!("# known_hosts ({}):\n{known_line}\n", known.display());
        println!(
            "# {} holds the KRL of revoked host keys (--write writes it)\n",
            revoked.display()
        );
        println!("# ssh_config:\n{block}");
        return Ok(Outcome::Success);
    }
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    // Replace this CA's line for these hosts; keep everything else.
    let old = std::fs::read_to_string(&known).unwrap_or_default();
    let mut lines: Vec<&str> = old
        .lines()
        .filter(|l| *l != known_line && !l.is_empty())
        .collect();
    lines.push(&known_line);
    std::fs::write(&known, lines.join("\n") + "\n").with_context(|| known.display().to_string())?;
    std::fs::write(&revoked, &krl).with_context(|| revoked.display().to_string())?;
    let conf = dir.join(format!("{}.conf", a.vm));
    std::fs::write(&conf, &block).with_context(|| conf.display().to_string())?;
    println!("wrote {} and {}", known.display(), conf.display());
    println!(
        "use it with: ssh -F {} {}   (or add `Include {}` to ~/.ssh/config)",
        conf.display(),
        vm.hostnames[0],
        conf.display()
    );
    Ok(Outcome::Success)
}

/// `60s`, `5m`, `1h` (or bare seconds) → seconds.
fn rekey_seconds(t: &str) -> Option<u64> {
    let (n, mult) = match t.chars().last()? {
        's' => (&t[..t.len() - 1], 1),
        'm' => (&t[..t.len() - 1], 60),
        'h' => (&t[..t.len() - 1], 3600),
        _ => (t, 1),
    };
    n.parse::<u64>().ok().filter(|n| *n > 0).map(|n| n * mult)
}

fn pin_of(t: &Trust) -> anyhow::Result<[u8; 32]> {
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&t.tls_spki_sha256, &mut pin)
        .context("the trust file's tls_spki_sha256")?;
    Ok(pin)
}
