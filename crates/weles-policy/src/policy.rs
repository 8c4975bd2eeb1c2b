//! The compiled policy and its judgement of IMA entries.

use std::time::Duration;

use regex::bytes::Regex;
use weles_ima::template::{DigestType, FieldId};
use weles_ima::verify::{Appraise, Finding, Reason};
use weles_ima::{Digest, Entry, HashAlgorithm};

use crate::allowlist::{Allowlist, Lookup};
use crate::document::{Action, Mode, PolicyDocument};
use crate::error::PolicyError;
use crate::ima_keys::{SignatureCheck, TrustedKey, check_modsig, check_xattr_signature};

/// Templates this verifier can judge.
pub const SUPPORTED_TEMPLATES: [&str; 7] = [
    "ima",
    "ima-ng",
    "ima-sig",
    "ima-buf",
    "ima-ngv2",
    "ima-sigv2",
    "ima-modsig",
];

/// The name of the first entry of every IMA log.
pub const BOOT_AGGREGATE: &[u8] = b"boot_aggregate";

/// Where a policy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyFormat {
    Toml,
    /// Keylime runtime policy JSON (v1).
    Keylime,
}

/// A validated policy, ready to judge entries.
#[derive(Debug)]
pub struct Policy {
    pub format: PolicyFormat,
    pub version: u64,
    pub name: Option<String>,
    pub hostnames: Vec<String>,
    pub mode: Mode,
    pub pending_grace: Duration,
    pub certificate_validity: Duration,
    pub on_violation: Vec<Action>,
    pub digests: Allowlist,
    pub buffers: Allowlist,
    pub keyrings: Allowlist,
    pub boot_aggregates: Vec<Digest>,
    pub excludes: Vec<String>,
    excludes_regex: Option<Regex>,
    pub ignored_keyrings: Vec<String>,
    pub keys: Vec<TrustedKey>,
    /// `None`: every supported template.
    pub templates: Option<Vec<String>>,
    /// `None`: any algorithm (Keylime's behaviour, for imported policies).
    pub digest_algorithms: Option<Vec<HashAlgorithm>>,
    pub allow_violations: bool,
    /// Host policies: PCR index (0–9) → allowed SHA-256 values (`[host] pcrs`).
    pub host_pcrs: std::collections::BTreeMap<u32, Vec<Digest>>,
    /// Host policies: a firmware event log must come with the evidence (`[host]
    /// event_log_required`).
    pub host_event_log_required: bool,
}

/// Default allowed file-digest algorithms of a WELES policy (md5 only when listed).
pub const DEFAULT_DIGEST_ALGORITHMS: [HashAlgorithm; 4] = [
    HashAlgorithm::Sha1,
    HashAlgorithm::Sha256,
    HashAlgorithm::Sha384,
    HashAlgorithm::Sha512,
];

impl Policy {
    /// An empty policy shell (nothing allowed) of the given format.
    pub(crate) fn empty(format: PolicyFormat) -> Self {
        Policy {
            format,
            version: 0,
            name: None,
            hostnames: Vec::new(),
            mode: Mode::Enforce,
            pending_grace: Duration::from_secs(2),
            certificate_validity: Duration::from_secs(24 * 3600),
            on_violation: vec![Action::Notify],
            digests: Allowlist::new(),
            buffers: Allowlist::new(),
            keyrings: Allowlist::new(),
            boot_aggregates: Vec::new(),
            excludes: Vec::new(),
            excludes_regex: None,
            ignored_keyrings: Vec::new(),
            keys: Vec::new(),
            templates: None,
            digest_algorithms: Some(DEFAULT_DIGEST_ALGORITHMS.to_vec()),
            allow_violations: false,
            host_pcrs: std::collections::BTreeMap::new(),
            host_event_log_required: false,
        }
    }

    /// Loads a policy file of either format: Keylime JSON (starts with `{`) or WELES TOML.
    /// `source` names the file in errors.
    pub fn load(bytes: &[u8], source: &str) -> Result<Self, PolicyError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'{') {
            crate::keylime::load(bytes, source)
        } else {
            let text = std::str::from_utf8(bytes).map_err(|e| {
                PolicyError::new(
                    source,
                    format!("byte {}", e.valid_up_to()),
                    "policy is not UTF-8 text",
                )
            })?;
            let doc: PolicyDocument =
                toml::from_str(text).map_err(|e| PolicyError::toml(source, text, &e))?;
            Self::from_document(&doc, source)
        }
    }

    /// Validates and compiles a TOML document.
    pub fn from_document(doc: &PolicyDocument, source: &str) -> Result<Self, PolicyError> {
        let err = |loc: &str, msg: String| PolicyError::new(source, loc, msg);
        if doc.schema != crate::document::SCHEMA {
            return Err(err(
                "schema",
                format!(
                    "unsupported schema {} (this build reads schema 1)",
                    doc.schema
                ),
            ));
        }
        if doc.version == 0 {
            return Err(err("version", "must be at least 1".into()));
        }
        let mut p = Policy::empty(PolicyFormat::Toml);
        p.version = doc.version;
        p.name = doc.name.clone();
        for (i, h) in doc.ssh.hostnames.iter().enumerate() {
            if h.is_empty()
                || h.chars()
                    .any(|c| c.is_whitespace() || c == ',' || c.is_control())
            {
                return Err(err(
                    &format!("ssh.hostnames[{i}]"),
                    format!("{h:?} is not a host name"),
                ));
            }
        }
        p.hostnames = doc.ssh.hostnames.clone();
        let e = &doc.enforcement;
        p.mode = e.mode;
        p.pending_grace =
            parse_duration(&e.pending_grace).map_err(|m| err("enforcement.pending_grace", m))?;
        p.certificate_validity = parse_duration(&e.certificate_validity)
            .map_err(|m| err("enforcement.certificate_validity", m))?;
        p.on_violation = e.on_violation.clone();

        let ima = &doc.ima;
        if let Some(t) = &ima.templates {
            for (i, name) in t.iter().enumerate() {
                if weles_ima::template::Template::from_name(name).is_none() {
                    return Err(err(
                        &format!("ima.templates[{i}]"),
                        format!("unknown template {name:?}"),
                    ));
                }
            }
            p.templates = Some(t.clone());
        }
        if let Some(algs) = &ima.digest_algorithms {
            let mut v = Vec::new();
            for (i, a) in algs.iter().enumerate() {
                v.push(HashAlgorithm::from_name(a).ok_or_else(|| {
                    err(
                        &format!("ima.digest_algorithms[{i}]"),
                        format!("unknown algorithm {a:?}"),
                    )
                })?);
            }
            p.digest_algorithms = Some(v);
        }
        p.allow_violations = ima.allow_violations;
        for (i, b) in ima.boot_aggregate.iter().enumerate() {
            p.boot_aggregates.push(
                Digest::parse(b)
                    .map_err(|e| err(&format!("ima.boot_aggregate[{i}]"), e.to_string()))?,
            );
        }
        p.set_excludes(&ima.excludes)
            .map_err(|(i, m)| err(&format!("ima.excludes[{i}]"), m))?;
        p.ignored_keyrings = ima.ignored_keyrings.clone();
        for (i, k) in ima.keys.iter().enumerate() {
            let loc = format!("ima.keys[{i}]");
            let name = k.name.clone().unwrap_or_else(|| format!("key {i}"));
            let mut key = TrustedKey::from_pem(&name, &k.pem)
                .map_err(|e| err(&format!("{loc}.pem"), e.to_string()))?;
            if let Some(id) = &k.keyid {
                let id = u32::from_str_radix(id.trim_start_matches("0x"), 16).map_err(|_| {
                    err(
                        &format!("{loc}.keyid"),
                        format!("{id:?} is not 8 hex digits"),
                    )
                })?;
                key = key.with_keyid(id);
            }
            p.keys.push(key);
        }
        p.host_event_log_required = doc.host.event_log_required;
        for (index, values) in &doc.host.pcrs {
            let loc = format!("host.pcrs.{index:?}");
            let pcr: u32 = index.parse().ok().filter(|i| *i <= 9).ok_or_else(|| {
                err(
                    &loc,
                    "PCR index must be 0–9 (PCR 10 is the IMA log's)".into(),
                )
            })?;
            let mut v = Vec::new();
            for (i, d) in values.iter().enumerate() {
                let d = Digest::parse(d).map_err(|e| err(&format!("{loc}[{i}]"), e.to_string()))?;
                if d.algorithm() != HashAlgorithm::Sha256 {
                    return Err(err(
                        &format!("{loc}[{i}]"),
                        "host PCR values are SHA-256 (the bank the quote covers)".into(),
                    ));
                }
                v.push(d);
            }
            p.host_pcrs.insert(pcr, v);
        }
        fill(&mut p.digests, &ima.digests, "ima.digests", source)?;
        fill(&mut p.buffers, &ima.buffers, "ima.buffers", source)?;
        fill(&mut p.keyrings, &ima.keyrings, "ima.keyrings", source)?;
        Ok(p)
    }

    /// Compiles exclude rules; on error returns the index of the bad rule.
    pub(crate) fn set_excludes(&mut self, rules: &[String]) -> Result<(), (usize, String)> {
        for (i, r) in rules.iter().enumerate() {
            Regex::new(r).map_err(|e| (i, format!("not a valid regular expression: {e}")))?;
        }
        self.excludes = rules.to_vec();
        self.excludes_regex = if rules.is_empty() {
            None
        } else {
            // Python's re.match semantics, as Keylime: each rule anchored at the start of the path.
            let combined = rules
                .iter()
                .map(|r| format!("(?:{r})"))
                .collect::<Vec<_>>()
                .join("|");
            Some(Regex::new(&format!("^(?:{combined})")).map_err(|e| (0, e.to_string()))?)
        };
        Ok(())
    }

    /// Whether an exclude rule matches `path`.
    pub fn is_excluded(&self, path: &[u8]) -> bool {
        self.excludes_regex
            .as_ref()
            .is_some_and(|r| r.is_match(path))
    }

    fn algorithm_allowed(&self, alg: HashAlgorithm) -> bool {
        self.digest_algorithms
            .as_ref()
            .is_none_or(|v| v.contains(&alg))
    }

    fn template_allowed(&self, name: &str) -> bool {
        self.templates
            .as_ref()
            .is_none_or(|v| v.iter().any(|t| t == name))
    }

    /// Checks the entry's signatures; `None` if it carries none (or no keys are trusted).
    fn signature_check(
        &self,
        entry: &Entry<'_>,
        alg: HashAlgorithm,
        digest: &[u8],
        kind: DigestType,
    ) -> Option<SignatureCheck> {
        if self.keys.is_empty() {
            return None;
        }
        if let Some(sig) = entry.signature() {
            let c = check_xattr_signature(&self.keys, sig, alg, digest, kind == DigestType::Verity);
            if matches!(c, SignatureCheck::Valid(_)) {
                return Some(c);
            }
            // An appended signature may still vouch for the file.
            if let Some(m) = self.modsig_check(entry) {
                return Some(m);
            }
            return Some(c);
        }
        self.modsig_check(entry)
    }

    fn modsig_check(&self, entry: &Entry<'_>) -> Option<SignatureCheck> {
        let (field, pkcs7) = entry.modsig()?;
        let Ok(alg) = field.algorithm.as_ref() else {
            return Some(SignatureCheck::Invalid(
                "d-modsig uses an unknown algorithm".into(),
            ));
        };
        Some(check_modsig(
            &self.keys,
            pkcs7,
            *alg,
            &entry.data[field.bytes.clone()],
        ))
    }

    fn lookup_detail(
        list: &Allowlist,
        name: &[u8],
        what: &str,
        shown: &ShownName<'_, '_>,
        digest: &DigestText<'_>,
    ) -> Finding {
        let allowed = list.digests_of(name);
        Finding::new(
            Reason::DigestMismatch,
            format!(
                "{what} {shown} has digest {digest}; the policy allows {}",
                allowed.join(", ")
            ),
        )
    }
}

fn fill(
    list: &mut Allowlist,
    map: &std::collections::BTreeMap<String, Vec<String>>,
    key: &str,
    source: &str,
) -> Result<(), PolicyError> {
    for (path, digests) in map {
        if digests.is_empty() {
            return Err(PolicyError::new(
                source,
                format!("{key}.{path:?}"),
                "lists no digest (remove the path or add one)",
            ));
        }
        for (i, d) in digests.iter().enumerate() {
            let parsed = Digest::parse(d).map_err(|e| {
                PolicyError::new(source, format!("{key}.{path:?}[{i}]"), e.to_string())
            })?;
            list.insert_digest(path.as_bytes(), &parsed);
        }
    }
    Ok(())
}

/// An entry's path, decoded for messages on demand.
struct ShownName<'a, 'e>(&'a Entry<'e>);

impl std::fmt::Display for ShownName<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.name_lossy())
    }
}

/// `alg:hex` of a digest, formatted on demand.
struct DigestText<'a>(HashAlgorithm, &'a [u8]);

impl std::fmt::Display for DigestText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.0, hex::encode(self.1))
    }
}

/// Parses `500ms`, `2s`, `10m`, `24h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 2s, 10m, 24h or 7d"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        _ => {
            return Err(format!(
                "{text:?} is not a duration like 500ms, 2s, 10m, 24h or 7d"
            ));
        }
    };
    Ok(Duration::from_millis(ms))
}

impl Appraise for Policy {
    fn appraise(&self, entry: &Entry<'_>) -> Result<(), Finding> {
        let name = entry.name_bytes();
        if !self.template_allowed(&entry.template_name) {
            return Err(Finding::new(
                Reason::UnsupportedTemplate,
                format!(
                    "template {} is not allowed by the policy",
                    entry.template_name
                ),
            ));
        }
        if entry.is_violation() {
            return if self.allow_violations {
                Ok(())
            } else {
                Err(Finding::new(
                    Reason::ViolationEntry,
                    "IMA violation entry (ToMToU or open writers): the file changed while measured, so its \
                     content is unknown; set ima.allow_violations to tolerate",
                ))
            };
        }
        let Some((alg, kind, digest)) = entry.file_digest() else {
            return Err(Finding::new(
                Reason::UnsupportedTemplate,
                "entry has no file digest",
            ));
        };
        let alg = match alg {
            Ok(a) => a,
            Err(unknown) => {
                return Err(Finding::new(
                    Reason::UnsupportedTemplate,
                    format!("file digest algorithm {unknown:?} is not one the kernel defines"),
                ));
            }
        };
        // Formatted only when an entry fails: this runs for every entry of every log.
        let shown = ShownName(entry);
        let digest_text = DigestText(alg, digest);
        if !self.algorithm_allowed(alg) {
            return Err(Finding::new(
                Reason::DigestMismatch,
                format!("{shown}: file digest algorithm {alg} is not allowed by the policy"),
            ));
        }

        if entry.has_field(FieldId::Buf) {
            return self.appraise_buffer(entry, alg, digest, &shown, &digest_text);
        }

        if name == BOOT_AGGREGATE && !self.boot_aggregates.is_empty() {
            return if self
                .boot_aggregates
                .iter()
                .any(|b| b.algorithm() == alg && b.as_bytes() == digest)
            {
                Ok(())
            } else {
                Err(Finding::new(
                    Reason::DigestMismatch,
                    format!(
                        "boot_aggregate {digest_text} is not one of the allowed values ({})",
                        self.boot_aggregates
                            .iter()
                            .map(Digest::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            };
        }
        // Any of a listed digest, an exclude rule or a trusted signature lets the entry pass. The
        // cheap hash lookup goes first; regexes and signature cryptography run only for entries
        // it does not already allow (the verdict is the same in any order).
        let lookup = self.digests.lookup(name, Some(alg), digest);
        if lookup == Lookup::Allowed || self.is_excluded(name) {
            return Ok(());
        }
        match (self.signature_check(entry, alg, digest, kind), lookup) {
            (Some(SignatureCheck::Valid(_)), _) => Ok(()),
            (Some(SignatureCheck::Invalid(why)), _) => Err(Finding::new(
                Reason::BadSignature,
                format!("{shown}: {why}, and its digest {digest_text} is not listed"),
            )),
            (None, Lookup::OtherDigests) => Err(Self::lookup_detail(
                &self.digests,
                name,
                "file",
                &shown,
                &digest_text,
            )),
            (None, _) => Err(Finding::new(
                Reason::NotInPolicy,
                format!("{shown} ({digest_text}) is not in the policy"),
            )),
        }
    }
}

impl Policy {
    fn appraise_buffer(
        &self,
        entry: &Entry<'_>,
        alg: HashAlgorithm,
        digest: &[u8],
        shown: &ShownName<'_, '_>,
        digest_text: &DigestText<'_>,
    ) -> Result<(), Finding> {
        let name = entry.name_bytes();
        // The logged digest must be the buffer's: otherwise the entry claims content it lacks.
        if let (Some(bank), Some(buf)) = (alg.bank(), entry.buffer())
            && bank.hash(&[buf]).as_bytes() != digest
        {
            return Err(Finding::new(
                Reason::DigestMismatch,
                format!(
                    "ima-buf {shown}: digest {digest_text} is not the {alg} of the logged buffer"
                ),
            ));
        }
        if self.is_excluded(name) {
            return Ok(());
        }
        if self.keyrings.contains_name(name)
            || self
                .ignored_keyrings
                .iter()
                .any(|k| k == "*" || k.as_bytes() == name)
        {
            if self
                .ignored_keyrings
                .iter()
                .any(|k| k == "*" || k.as_bytes() == name)
            {
                return Ok(());
            }
            return match self.keyrings.lookup(name, Some(alg), digest) {
                Lookup::Allowed => Ok(()),
                _ => Err(Self::lookup_detail(
                    &self.keyrings,
                    name,
                    "key measured into keyring",
                    shown,
                    digest_text,
                )),
            };
        }
        match self.buffers.lookup(name, Some(alg), digest) {
            Lookup::Allowed => Ok(()),
            Lookup::OtherDigests => Err(Self::lookup_detail(
                &self.buffers,
                name,
                "buffer",
                shown,
                digest_text,
            )),
            Lookup::NotListed => Err(Finding::new(
                Reason::NotInPolicy,
                format!("ima-buf {shown} ({digest_text}) is not in the policy"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
