//! What a tenant trusts when it trusts a manager — TPM makers, host policy, TEE collateral and
//! reference values — from `weles manager trust`'s flags and an optional reviewed file
//! (`--trust-config FILE`, TOML; paths in it are relative to the file). Everything is read and
//! checked here, before the manager is contacted: a typo fails fast and names where it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use weles_client as manager_client;
use weles_client::host_verify::HostTrust;

/// The file's shape (docs/tenant-guide.md §1).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFile {
    #[serde(default)]
    pub allow_simulated: bool,
    #[serde(default)]
    pub host: HostSection,
    #[serde(default)]
    pub snp: SnpSection,
    #[serde(default)]
    pub dcap: DcapSection,
    #[serde(default)]
    pub sgx: SgxSection,
    #[serde(default)]
    pub tdx: TdxSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    #[serde(default)]
    pub intermediates: Vec<PathBuf>,
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpSection {
    pub vcek: Option<PathBuf>,
    #[serde(default)]
    pub measurements: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcapSection {
    pub collateral: Option<PathBuf>,
    #[serde(default)]
    pub accept: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgxSection {
    #[serde(default)]
    pub mrenclave: Vec<String>,
    #[serde(default)]
    pub mrsigner: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxSection {
    #[serde(default)]
    pub mrtd: Vec<String>,
    /// RTMR index ("0"–"3") → value.
    #[serde(default)]
    pub rtmr: BTreeMap<String, String>,
}

impl TrustFile {
    /// Reads the file; relative paths become relative to its directory.
    pub fn load(path: &Path) -> anyhow::Result<TrustFile> {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let mut f: TrustFile =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        f.host.ca.iter_mut().for_each(fix);
        f.host.intermediates.iter_mut().for_each(fix);
        f.host.policy.iter_mut().for_each(fix);
        f.snp.vcek.iter_mut().for_each(fix);
        f.dcap.collateral.iter_mut().for_each(fix);
        Ok(f)
    }
}

/// The flags' part of the same (`weles manager trust --help`), merged over the file: lists
/// add up, a single value given as a flag replaces the file's.
#[derive(Debug, Default)]
pub struct TrustFlags {
    pub allow_simulated: bool,
    pub host_ca: Vec<PathBuf>,
    pub host_ca_intermediate: Vec<PathBuf>,
    pub host_policy: Option<PathBuf>,
    pub snp_vcek: Option<PathBuf>,
    pub snp_measurement: Vec<String>,
    pub dcap_collateral: Option<PathBuf>,
    pub dcap_accept: Vec<String>,
    pub sgx_mrenclave: Vec<String>,
    pub sgx_mrsigner: Vec<String>,
    pub tdx_mrtd: Vec<String>,
    pub tdx_rtmr: Vec<String>,
}

/// Everything the verification needs, read and checked.
pub struct Trusted {
    pub allow_simulated: bool,
    pub host: Option<HostTrust>,
    pub tee: manager_client::TeeTrust,
}

/// Fixed-size hex values, naming where a bad one came from.
fn hex_values<const N: usize>(values: &[String], what: &str) -> anyhow::Result<Vec<[u8; N]>> {
    values
        .iter()
        .map(|v| {
            hex::decode(v)
                .ok()
                .and_then(|b| <[u8; N]>::try_from(b).ok())
                .with_context(|| format!("{what}: {v:?} is not {} hex digits", 2 * N))
        })
        .collect()
}

fn certificates(files: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut all = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).with_context(|| f.display().to_string())?;
        all.extend(
            weles_policy::ima_keys::pem_bodies(&bytes).with_context(|| f.display().to_string())?,
        );
    }
    Ok(all)
}

/// Merges `flags` over `file` and reads every file they name. `now` is for certificate and
/// collateral validity.
pub fn resolve(file: TrustFile, flags: TrustFlags, now: u64) -> anyhow::Result<Trusted> {
    let host_ca = [file.host.ca, flags.host_ca].concat();
    let host_intermediates = [file.host.intermediates, flags.host_ca_intermediate].concat();
    let host_policy = flags.host_policy.or(file.host.policy);
    let host = match (host_ca.is_empty(), host_policy) {
        (true, None) if host_intermediates.is_empty() => None,
        (false, Some(policy)) => {
            let text = std::fs::read(&policy).with_context(|| policy.display().to_string())?;
            Some(HostTrust {
                ek_cas: certificates(&host_ca)?,
                ek_intermediates: certificates(&host_intermediates)?,
                policy: weles_policy::Policy::load(&text, &policy.display().to_string())?,
                now,
            })
        }
        (true, _) => {
            bail!("host attestation needs the TPM makers' CAs you trust (--host-ca, or [host] ca)")
        }
        (false, None) => {
            bail!("host attestation needs a host policy (--host-policy, or [host] policy)")
        }
    };

    let mut tee = manager_client::TeeTrust {
        now,
        ..Default::default()
    };
    if let Some(p) = flags.snp_vcek.or(file.snp.vcek) {
        tee.snp_vcek = Some(std::fs::read(&p).with_context(|| p.display().to_string())?);
    }
    tee.snp_measurements = hex_values(
        &[file.snp.measurements, flags.snp_measurement].concat(),
        "SNP measurement (--snp-measurement, [snp] measurements)",
    )?;
    if let Some(p) = flags.dcap_collateral.or(file.dcap.collateral) {
        let text = std::fs::read_to_string(&p).with_context(|| p.display().to_string())?;
        tee.dcap_collateral = Some(
            manager_client::dcap::Collateral::from_json(&text)
                .with_context(|| p.display().to_string())?,
        );
    }
    tee.dcap_accept = [file.dcap.accept, flags.dcap_accept].concat();
    tee.sgx_mrenclaves = hex_values(
        &[file.sgx.mrenclave, flags.sgx_mrenclave].concat(),
        "MRENCLAVE (--sgx-mrenclave, [sgx] mrenclave)",
    )?;
    tee.sgx_mrsigners = hex_values(
        &[file.sgx.mrsigner, flags.sgx_mrsigner].concat(),
        "MRSIGNER (--sgx-mrsigner, [sgx] mrsigner)",
    )?;
    tee.tdx_mrtds = hex_values(
        &[file.tdx.mrtd, flags.tdx_mrtd].concat(),
        "MRTD (--tdx-mrtd, [tdx] mrtd)",
    )?;
    let rtmrs = file
        .tdx
        .rtmr
        .into_iter()
        .map(|(n, h)| format!("{n}={h}"))
        .chain(flags.tdx_rtmr);
    for r in rtmrs {
        let parsed = r.split_once('=').and_then(|(n, h)| {
            let n: usize = n.parse().ok().filter(|n| *n < 4)?;
            Some((n, <[u8; 48]>::try_from(hex::decode(h).ok()?).ok()?))
        });
        tee.tdx_rtmrs.push(parsed.with_context(|| {
            format!("RTMR {r} (--tdx-rtmr, [tdx] rtmr): N=HEX, N 0–3, 96 hex digits")
        })?);
    }
    Ok(Trusted {
        allow_simulated: flags.allow_simulated || file.allow_simulated,
        host,
        tee,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(file: &Path) -> anyhow::Error {
        match resolve(TrustFile::load(file).unwrap(), TrustFlags::default(), 1) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_file_and_flags_merge_and_bad_values_name_themselves() {
        let dir = std::env::temp_dir().join(format!("weles-trust-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("trust.toml");
        std::fs::write(
            &file,
            format!(
                "allow_simulated = true\n[sgx]\nmrenclave = [\"{}\"]\n[tdx]\nrtmr = {{ \"2\" = \"{}\" }}\n\
                 [dcap]\naccept = [\"SWHardeningNeeded\"]\n",
                "ab".repeat(32),
                "cd".repeat(48)
            ),
        )
        .unwrap();
        let flags = TrustFlags {
            sgx_mrenclave: vec!["01".repeat(32)],
            dcap_accept: vec!["ConfigurationNeeded".into()],
            ..Default::default()
        };
        let t = resolve(TrustFile::load(&file).unwrap(), flags, 1).unwrap();
        assert!(t.allow_simulated && t.host.is_none());
        assert_eq!(t.tee.sgx_mrenclaves, [[0xab; 32], [0x01; 32]]);
        assert_eq!(t.tee.tdx_rtmrs, [(2, [0xcd; 48])]);
        assert_eq!(
            t.tee.dcap_accept,
            ["SWHardeningNeeded", "ConfigurationNeeded"]
        );

        std::fs::write(&file, "[sgx]\nmrenclave = [\"abc\"]\n").unwrap();
        let e = refused(&file);
        assert_eq!(
            e.to_string(),
            "MRENCLAVE (--sgx-mrenclave, [sgx] mrenclave): \"abc\" is not 64 hex digits"
        );
        std::fs::write(&file, "[sgx]\nmrenclav = []\n").unwrap();
        let e = format!("{:#}", TrustFile::load(&file).unwrap_err());
        assert!(e.contains("unknown field `mrenclav`"), "{e}");
        std::fs::write(&file, "[host]\npolicy = \"host.toml\"\n").unwrap();
        let e = refused(&file);
        assert!(e.to_string().contains("[host] ca"), "{e}");
        // Relative paths are the file's: a missing policy is named by its full path.
        std::fs::write(
            &file,
            "[host]\nca = [\"maker.pem\"]\npolicy = \"host.toml\"\n",
        )
        .unwrap();
        let e = refused(&file);
        assert_eq!(e.to_string(), dir.join("host.toml").display().to_string());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
