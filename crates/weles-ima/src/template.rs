//! IMA templates: which fields an entry carries, and how their bytes decode.
//!
//! The kernel describes a template as a list of field identifiers (`d-ng|n-ng|sig`); the named
//! templates (`ima-ng`, `ima-sig`, ...) are aliases for such lists. A custom `ima_template_fmt`
//! shows up in the log with the format string itself as the template name, so we accept any list
//! built from the fields we understand and report anything else as unsupported.

use std::ops::Range;

use crate::digest::{HashAlgorithm, algorithm_for_bare_len};

/// Template-data field identifiers (security/integrity/ima/ima_template.c, `supported_fields`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldId {
    /// `d`: legacy 20-byte digest, no algorithm (the `ima` template).
    D,
    /// `n`: legacy name (the `ima` template).
    N,
    /// `d-ng`: `ALG ':' '\0' DIGEST`.
    DNg,
    /// `d-ngv2`: `TYPE ':' ALG ':' '\0' DIGEST`, TYPE `ima` or `verity`.
    DNgV2,
    /// `n-ng`: path including its terminating NUL.
    NNg,
    /// `sig`: the `security.ima` xattr (may be empty).
    Sig,
    /// `buf`: a measured buffer (ima-buf).
    Buf,
    /// `d-modsig`: digest of a file without its appended signature.
    DModsig,
    /// `modsig`: the appended (PKCS#7) signature.
    Modsig,
}

impl FieldId {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "d" => FieldId::D,
            "n" => FieldId::N,
            "d-ng" => FieldId::DNg,
            "d-ngv2" => FieldId::DNgV2,
            "n-ng" => FieldId::NNg,
            "sig" => FieldId::Sig,
            "buf" => FieldId::Buf,
            "d-modsig" => FieldId::DModsig,
            "modsig" => FieldId::Modsig,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            FieldId::D => "d",
            FieldId::N => "n",
            FieldId::DNg => "d-ng",
            FieldId::DNgV2 => "d-ngv2",
            FieldId::NNg => "n-ng",
            FieldId::Sig => "sig",
            FieldId::Buf => "buf",
            FieldId::DModsig => "d-modsig",
            FieldId::Modsig => "modsig",
        }
    }
}

/// The most fields a template we accept may have.
pub const MAX_FIELDS: usize = 8;

/// A template we can decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// The legacy `ima` template: `d|n`, with its own binary layout and hash rule.
    Ima,
    /// A list of fields, each `u32 len || bytes` in the template data.
    Fields { ids: [FieldId; MAX_FIELDS], len: u8 },
}

impl Template {
    /// Resolves a template name as it appears in the log. `None`: unsupported.
    pub fn from_name(name: &str) -> Option<Self> {
        use FieldId::*;
        let list: &[FieldId] = match name {
            "ima" => return Some(Template::Ima),
            "ima-ng" => &[DNg, NNg],
            "ima-sig" => &[DNg, NNg, Sig],
            "ima-buf" => &[DNg, NNg, Buf],
            "ima-ngv2" => &[DNgV2, NNg],
            "ima-sigv2" => &[DNgV2, NNg, Sig],
            "ima-modsig" => &[DNg, NNg, Sig, DModsig, Modsig],
            custom if custom.contains('|') => return Self::from_format(custom),
            _ => return None,
        };
        Self::from_ids(list)
    }

    /// A custom format string such as `d-ng|n-ng|sig`; at most one digest and one name field.
    fn from_format(fmt: &str) -> Option<Self> {
        let mut ids = Vec::new();
        for part in fmt.split('|') {
            let id = FieldId::from_name(part)?;
            // Legacy `d`/`n` only make sense inside the `ima` template's special layout.
            if matches!(id, FieldId::D | FieldId::N) || ids.contains(&id) {
                return None;
            }
            ids.push(id);
        }
        let digests = ids
            .iter()
            .filter(|i| matches!(i, FieldId::DNg | FieldId::DNgV2))
            .count();
        if digests > 1 {
            return None;
        }
        Self::from_ids(&ids)
    }

    fn from_ids(list: &[FieldId]) -> Option<Self> {
        if list.is_empty() || list.len() > MAX_FIELDS {
            return None;
        }
        let mut ids = [FieldId::Buf; MAX_FIELDS];
        ids[..list.len()].copy_from_slice(list);
        Some(Template::Fields {
            ids,
            len: list.len() as u8,
        })
    }

    /// The fields of this template, in order.
    pub fn fields(&self) -> &[FieldId] {
        match self {
            Template::Ima => &[FieldId::D, FieldId::N],
            Template::Fields { ids, len } => &ids[..usize::from(*len)],
        }
    }

    /// Whether the template carries an IMA signature field.
    pub fn has_signature(&self) -> bool {
        self.fields().contains(&FieldId::Sig)
    }
}

/// What kind of file digest a `d-ngv2` field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestType {
    /// A plain file-content digest (`ima:`; also every `d`/`d-ng` digest).
    Ima,
    /// An fs-verity file digest (`verity:`).
    Verity,
}

impl DigestType {
    pub const fn name(self) -> &'static str {
        match self {
            DigestType::Ima => "ima",
            DigestType::Verity => "verity",
        }
    }
}

/// A decoded digest field: algorithm, type and where the digest bytes lie in the template data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigestField {
    /// `Err(name)`: the kernel named an algorithm we do not know (reported, not guessed).
    pub algorithm: Result<HashAlgorithm, String>,
    pub kind: DigestType,
    pub bytes: Range<usize>,
}

/// Why a field's bytes do not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldError {
    /// The digest field has an `ALG:` prefix of a length that does not fit the algorithm.
    DigestLength {
        field: &'static str,
        alg: String,
        expected: usize,
        got: usize,
    },
    /// A `d-ngv2` prefix that is not `ima:` or `verity:`.
    DigestType { field: &'static str },
    /// A string field that is not NUL-terminated (n-ng).
    Unterminated { field: &'static str },
    /// A legacy `d` field that is not 20 bytes.
    LegacyDigestLength(usize),
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldError::DigestLength {
                field,
                alg,
                expected,
                got,
            } => write!(
                f,
                "field {field}: {alg} digest must be {expected} bytes, found {got}"
            ),
            FieldError::DigestType { field } => {
                write!(
                    f,
                    "field {field}: digest type is neither 'ima' nor 'verity'"
                )
            }
            FieldError::Unterminated { field } => {
                write!(f, "field {field}: string is not NUL-terminated")
            }
            FieldError::LegacyDigestLength(n) => {
                write!(f, "field d: legacy digest must be 20 bytes, found {n}")
            }
        }
    }
}

/// Decodes a `d-ng`/`d-ngv2`/`d-modsig` field found at `range` of `data`.
///
/// `d-ng` writes `ALG ':' '\0'` before the digest; the kernel omits the prefix only for digests it
/// printed in the legacy style, which we recognise by length (md5/sha1), as Keylime does.
pub(crate) fn decode_digest_field(
    field: FieldId,
    data: &[u8],
    range: Range<usize>,
) -> Result<Option<FileDigestField>, FieldError> {
    let bytes = &data[range.clone()];
    if bytes.is_empty() {
        // d-modsig is empty when the file has no appended signature.
        return Ok(None);
    }
    let fname = field.name();
    let Some(nul) = bytes.iter().position(|b| *b == 0).filter(|&p| {
        // The prefix is short and printable, and ends with ':' right before the NUL.
        p > 0 && p <= 48 && bytes[p - 1] == b':' && bytes[..p].iter().all(u8::is_ascii_graphic)
    }) else {
        if field == FieldId::DNgV2 {
            return Err(FieldError::DigestType { field: fname });
        }
        let algorithm = algorithm_for_bare_len(bytes.len())
            .filter(|a| matches!(a, HashAlgorithm::Md5 | HashAlgorithm::Sha1))
            .ok_or_else(|| FieldError::DigestLength {
                field: fname,
                alg: "(none)".into(),
                expected: 20,
                got: bytes.len(),
            })?;
        return Ok(Some(FileDigestField {
            algorithm: Ok(algorithm),
            kind: DigestType::Ima,
            bytes: range,
        }));
    };
    // `nul - 1` is the trailing ':'; the prefix before it is `ALG` or `TYPE:ALG`.
    let prefix = std::str::from_utf8(&bytes[..nul - 1])
        .map_err(|_| FieldError::DigestType { field: fname })?;
    let (kind, alg_name) = if field == FieldId::DNgV2 {
        match prefix.split_once(':') {
            Some(("ima", a)) => (DigestType::Ima, a),
            Some(("verity", a)) => (DigestType::Verity, a),
            _ => return Err(FieldError::DigestType { field: fname }),
        }
    } else {
        (DigestType::Ima, prefix)
    };
    let digest_range = range.start + nul + 1..range.end;
    let got = digest_range.len();
    let algorithm = match HashAlgorithm::from_name(alg_name) {
        Some(a) if a.digest_len() == got => Ok(a),
        Some(a) => {
            return Err(FieldError::DigestLength {
                field: fname,
                alg: a.name().into(),
                expected: a.digest_len(),
                got,
            });
        }
        None => Err(alg_name.to_string()),
    };
    Ok(Some(FileDigestField {
        algorithm,
        kind,
        bytes: digest_range,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_templates() {
        assert_eq!(Template::from_name("ima"), Some(Template::Ima));
        let sig = Template::from_name("ima-sig").unwrap();
        assert_eq!(sig.fields(), &[FieldId::DNg, FieldId::NNg, FieldId::Sig]);
        assert!(sig.has_signature());
        assert_eq!(Template::from_name("ima-modsig").unwrap().fields().len(), 5);
        assert_eq!(Template::from_name("evm-sig"), None);
        assert_eq!(Template::from_name(""), None);
    }

    #[test]
    fn custom_formats() {
        assert_eq!(
            Template::from_name("d-ng|n-ng|sig"),
            Template::from_name("ima-sig")
        );
        assert_eq!(Template::from_name("d-ng|n-ng|iuid"), None);
        assert_eq!(Template::from_name("d-ng|d-ngv2|n-ng"), None);
        assert_eq!(Template::from_name("d|n-ng"), None);
        assert_eq!(Template::from_name("d-ng|d-ng"), None);
    }

    #[test]
    fn digest_field_forms() {
        let mut ng = b"sha256:\0".to_vec();
        ng.extend([7u8; 32]);
        let f = decode_digest_field(FieldId::DNg, &ng, 0..ng.len())
            .unwrap()
            .unwrap();
        assert_eq!(f.algorithm, Ok(HashAlgorithm::Sha256));
        assert_eq!(f.bytes, 8..40);

        let mut v2 = b"verity:sha512:\0".to_vec();
        v2.extend([1u8; 64]);
        let f = decode_digest_field(FieldId::DNgV2, &v2, 0..v2.len())
            .unwrap()
            .unwrap();
        assert_eq!(f.kind, DigestType::Verity);
        assert_eq!(f.algorithm, Ok(HashAlgorithm::Sha512));

        let bare = [3u8; 20];
        let f = decode_digest_field(FieldId::DNg, &bare, 0..20)
            .unwrap()
            .unwrap();
        assert_eq!(f.algorithm, Ok(HashAlgorithm::Sha1));

        let mut sm3 = b"sm3:\0".to_vec();
        sm3.extend([0u8; 32]);
        let f = decode_digest_field(FieldId::DNg, &sm3, 0..sm3.len())
            .unwrap()
            .unwrap();
        assert_eq!(f.algorithm, Ok(HashAlgorithm::Sm3_256));

        let mut bad = b"sha256:\0".to_vec();
        bad.extend([0u8; 31]);
        assert!(matches!(
            decode_digest_field(FieldId::DNg, &bad, 0..bad.len()),
            Err(FieldError::DigestLength { got: 31, .. })
        ));
        let mut unknown = b"foo256:\0".to_vec();
        unknown.extend([0u8; 5]);
        let f = decode_digest_field(FieldId::DNg, &unknown, 0..unknown.len())
            .unwrap()
            .unwrap();
        assert_eq!(f.algorithm, Err("foo256".to_string()));
        assert!(
            decode_digest_field(FieldId::DNg, &[], 0..0)
                .unwrap()
                .is_none()
        );
    }
}
