//! The policy file as the tenant writes it: WELES's TOML schema (documented in `docs/policy.md`).
//!
//! This module is only the shape of the file. [`crate::Policy`] is the validated, compiled form
//! used to judge entries; [`crate::keylime`] maps Keylime's JSON onto the same compiled form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Current schema version, written as `schema = 1`.
pub const SCHEMA: u32 = 1;

/// A policy document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Schema of this file (currently 1).
    #[serde(default = "default_schema")]
    pub schema: u32,
    /// Policy version: each policy pushed for a VM must have a strictly greater version.
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "SshSection::is_empty")]
    pub ssh: SshSection,
    #[serde(default)]
    pub enforcement: EnforcementSection,
    #[serde(default)]
    pub ima: ImaSection,
    /// Only in host policies: measured-boot reference values.
    #[serde(default, skip_serializing_if = "HostSection::is_empty")]
    pub host: HostSection,
}

/// A host policy's measured-boot reference values: PCR index (0–9) → allowed SHA-256 values of
/// that PCR as the host TPM quotes it. PCR 10 is judged through the host's IMA log instead.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    #[serde(default)]
    pub pcrs: BTreeMap<String, Vec<String>>,
    /// Refuse a host that sends no firmware event log (one that does must replay to its
    /// quoted PCRs 0–7 either way).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub event_log_required: bool,
}

impl HostSection {
    fn is_empty(&self) -> bool {
        self.pcrs.is_empty() && !self.event_log_required
    }
}

impl Default for PolicyDocument {
    fn default() -> Self {
        PolicyDocument {
            schema: SCHEMA,
            version: 1,
            name: None,
            description: None,
            ssh: SshSection::default(),
            enforcement: EnforcementSection::default(),
            ima: ImaSection::default(),
            host: HostSection::default(),
        }
    }
}

fn default_schema() -> u32 {
    SCHEMA
}

/// The VM's SSH identity (used by the manager when it issues host certificates).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSection {
    /// Host names and addresses the VM's host certificate is valid for.
    #[serde(default)]
    pub hostnames: Vec<String>,
}

impl SshSection {
    fn is_empty(&self) -> bool {
        self.hostnames.is_empty()
    }
}

/// What the manager does with the verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforcementSection {
    /// `enforce`: a violation withdraws authorisation; `audit`: it is only reported.
    #[serde(default)]
    pub mode: Mode,
    /// How long the PCR may run ahead of the delivered log before the VM is `unverifiable`.
    #[serde(default = "default_grace")]
    pub pending_grace: String,
    /// Validity of SSH host certificates issued while the VM complies.
    #[serde(default = "default_validity")]
    pub certificate_validity: String,
    /// Actions on violation beyond refusing authorisations.
    #[serde(default = "default_actions")]
    pub on_violation: Vec<Action>,
}

impl Default for EnforcementSection {
    fn default() -> Self {
        EnforcementSection {
            mode: Mode::default(),
            pending_grace: default_grace(),
            certificate_validity: default_validity(),
            on_violation: default_actions(),
        }
    }
}

fn default_grace() -> String {
    "2s".into()
}
fn default_validity() -> String {
    "24h".into()
}
fn default_actions() -> Vec<Action> {
    vec![Action::Notify]
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Event on the tenant's stream and webhook.
    Notify,
    /// Ask the operator to pause the VM.
    PauseVm,
}

/// Runtime-integrity rules for the IMA log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImaSection {
    /// Templates entries may use; default: every supported template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<Vec<String>>,
    /// File-digest algorithms entries may use; default: sha1, sha256, sha384, sha512.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_algorithms: Option<Vec<String>>,
    /// Tolerate ToMToU / open-writers violation entries (default: no).
    #[serde(default)]
    pub allow_violations: bool,
    /// Allowed boot_aggregate values (`alg:hex`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_aggregate: Vec<String>,
    /// Regular expressions; a path they match (at its start) is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Keyrings whose key measurements (ima-buf) are not checked; `*` for all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_keyrings: Vec<String>,
    /// Keys whose signatures make a file acceptable without listing its digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyEntry>,
    /// Path → allowed digests.
    #[serde(default)]
    pub digests: BTreeMap<String, Vec<String>>,
    /// ima-buf name → allowed buffer digests (kexec-cmdline, critical data, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub buffers: BTreeMap<String, Vec<String>>,
    /// Keyring name → allowed digests of keys measured into it (ima-buf KEY_CHECK).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keyrings: BTreeMap<String, Vec<String>>,
}

/// A trusted IMA signing key, inline so that the policy signature covers it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// PEM `CERTIFICATE` or `PUBLIC KEY`.
    pub pem: String,
    /// Overrides the computed keyid (8 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
}
