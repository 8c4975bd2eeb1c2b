//! One measurement-list entry, decoded.
//!
//! An entry keeps the exact template-data bytes the kernel hashed (borrowed from a binary log,
//! rebuilt from an ASCII one) and, for templates we understand, the byte ranges of its fields
//! inside them. Everything a verifier needs — template digests per bank, the file digest, the
//! path, the signature — is derived from those bytes, never from a second copy that could
//! disagree.

use std::borrow::Cow;
use std::ops::Range;

use crate::digest::{Bank, Digest, HashAlgorithm};
use crate::template::{DigestType, FieldId, FileDigestField, Template};

/// The legacy `ima` template pads the name to this many bytes before hashing
/// (`IMA_EVENT_NAME_LEN_MAX + 1`).
pub const IMA_LEGACY_NAME_HASH_LEN: usize = 256;

/// The decoded fields of an entry; ranges index into [`Entry::data`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    pub digest: Option<FileDigestField>,
    /// The path or buffer name, without the kernel's terminating NUL.
    pub name: Option<Range<usize>>,
    pub sig: Option<Range<usize>>,
    pub buf: Option<Range<usize>>,
    pub modsig_digest: Option<FileDigestField>,
    pub modsig: Option<Range<usize>>,
}

/// A measurement-list entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// 0-based position in the whole log.
    pub index: u64,
    /// Byte offset of the entry in the log stream.
    pub offset: u64,
    /// The PCR the kernel extended (10 unless the IMA policy says `pcr=`).
    pub pcr: u32,
    /// The SHA-1 template hash as logged; all zeros marks a violation entry.
    pub template_hash: [u8; 20],
    /// The template name exactly as logged.
    pub template_name: Cow<'a, str>,
    /// The decoded template; `None` for a template we do not support.
    pub template: Option<Template>,
    /// Template data: for the legacy `ima` template `d[20] || u32 len || name` (the binary log
    /// layout), otherwise the `u32 len || bytes` sequence the kernel hashed.
    pub data: Cow<'a, [u8]>,
    /// Decoded fields (empty for unsupported templates).
    pub fields: Fields,
}

impl Entry<'_> {
    /// A ToMToU / open-writers violation: the kernel logs a zero template hash and extends 0xFF.
    pub fn is_violation(&self) -> bool {
        self.template_hash.iter().all(|b| *b == 0)
    }

    /// The path (or ima-buf name) as bytes; empty when the template has no name field.
    pub fn name_bytes(&self) -> &[u8] {
        self.fields.name.clone().map_or(&[][..], |r| &self.data[r])
    }

    /// The path, lossily decoded for display.
    pub fn name_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.name_bytes())
    }

    /// The file digest (algorithm, type, bytes), if the template has one.
    pub fn file_digest(&self) -> Option<(Result<HashAlgorithm, &str>, DigestType, &[u8])> {
        self.fields.digest.as_ref().map(|f| {
            (
                f.algorithm.as_ref().copied().map_err(String::as_str),
                f.kind,
                &self.data[f.bytes.clone()],
            )
        })
    }

    /// The file digest as a typed value, when its algorithm is known.
    pub fn file_digest_value(&self) -> Option<Digest> {
        let f = self.fields.digest.as_ref()?;
        Digest::new(*f.algorithm.as_ref().ok()?, &self.data[f.bytes.clone()])
    }

    /// The `security.ima` signature bytes; `None` when absent or empty.
    pub fn signature(&self) -> Option<&[u8]> {
        self.non_empty(self.fields.sig.clone())
    }

    /// The ima-buf buffer.
    pub fn buffer(&self) -> Option<&[u8]> {
        self.fields.buf.clone().map(|r| &self.data[r])
    }

    /// The appended (modsig) signature and the digest it covers.
    pub fn modsig(&self) -> Option<(&FileDigestField, &[u8])> {
        let sig = self.non_empty(self.fields.modsig.clone())?;
        Some((self.fields.modsig_digest.as_ref()?, sig))
    }

    fn non_empty(&self, r: Option<Range<usize>>) -> Option<&[u8]> {
        r.map(|r| &self.data[r]).filter(|s| !s.is_empty())
    }

    /// The template digest for `bank`: what the kernel extended into the PCR for this entry.
    ///
    /// Violations extend all-ones. Otherwise it is `H_bank(template data)`, except that the legacy
    /// `ima` template hashes `d || name zero-padded to 256 bytes`.
    pub fn template_digest(&self, bank: Bank) -> Digest {
        if self.is_violation() {
            return Digest::filled(bank.algorithm(), 0xff);
        }
        self.computed_template_digest(bank)
    }

    /// `H_bank` over the hashed form of the template data, ignoring the violation rule.
    pub fn computed_template_digest(&self, bank: Bank) -> Digest {
        match self.template {
            Some(Template::Ima) => {
                let d = &self.data[..20];
                let name = self.name_bytes();
                let mut h = bank.hasher();
                h.update(d);
                h.update(name);
                h.update(&[0u8; IMA_LEGACY_NAME_HASH_LEN][..IMA_LEGACY_NAME_HASH_LEN - name.len()]);
                h.finalize()
            }
            _ => bank.hash(&[&self.data]),
        }
    }

    /// Whether the logged SHA-1 template hash equals the one computed from the data.
    /// Always true for violation entries, whose logged hash is zero by definition.
    pub fn template_hash_ok(&self) -> bool {
        self.is_violation()
            || self.computed_template_digest(Bank::Sha1).as_bytes() == self.template_hash
    }

    /// Detaches the entry from the input buffer.
    pub fn into_owned(self) -> Entry<'static> {
        Entry {
            index: self.index,
            offset: self.offset,
            pcr: self.pcr,
            template_hash: self.template_hash,
            template_name: Cow::Owned(self.template_name.into_owned()),
            template: self.template,
            data: Cow::Owned(self.data.into_owned()),
            fields: self.fields,
        }
    }

    /// Whether the template has a field of this kind.
    pub fn has_field(&self, id: FieldId) -> bool {
        self.template.is_some_and(|t| t.fields().contains(&id))
    }
}
