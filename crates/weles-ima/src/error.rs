//! Parse errors: what is wrong, and exactly where (entry index, byte offset, field).

use std::fmt;

use crate::template::FieldError;

/// A log that does not parse. `index` and `offset` locate the entry that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("entry {index} at byte offset {offset}: {kind}")]
pub struct ParseError {
    pub index: u64,
    pub offset: u64,
    pub kind: ParseErrorKind,
}

impl ParseError {
    /// Whether more bytes could complete the entry (an incremental reader waits instead of failing).
    pub fn is_truncation(&self) -> bool {
        matches!(self.kind, ParseErrorKind::Truncated { .. })
    }
}

/// What is wrong with an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The input ends inside the entry.
    Truncated {
        field: &'static str,
        needed: u64,
        available: u64,
    },
    /// Not a TPM PCR index (0..=23): garbage, or a layout we could not detect.
    PcrOutOfRange(u32),
    /// A length field larger than the configured limit (nothing is allocated for it).
    TooLong {
        field: &'static str,
        len: u64,
        limit: u64,
    },
    /// The template name is empty or not printable ASCII.
    BadTemplateName,
    /// A field of the template data does not fit the template data length.
    FieldOverrun {
        field: &'static str,
        len: u64,
        remaining: u64,
    },
    /// Template data continues after the template's last field.
    TrailingData { bytes: u64 },
    /// A field's content is malformed.
    Field(FieldError),
    /// An ASCII line that does not have the `PCR HASH TEMPLATE FIELDS...` shape.
    AsciiSyntax { column: u64, what: String },
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseErrorKind::Truncated {
                field,
                needed,
                available,
            } => write!(
                f,
                "truncated in field {field}: needs {needed} bytes, {available} available"
            ),
            ParseErrorKind::PcrOutOfRange(p) => write!(
                f,
                "PCR index {p} is not a TPM PCR (0-23); not an IMA measurement list?"
            ),
            ParseErrorKind::TooLong { field, len, limit } => {
                write!(
                    f,
                    "field {field} claims {len} bytes, more than the limit of {limit}"
                )
            }
            ParseErrorKind::BadTemplateName => {
                write!(f, "template name is empty or not printable ASCII")
            }
            ParseErrorKind::FieldOverrun {
                field,
                len,
                remaining,
            } => write!(
                f,
                "template field {field} claims {len} bytes but only {remaining} remain in the template data"
            ),
            ParseErrorKind::TrailingData { bytes } => write!(
                f,
                "{bytes} bytes of template data follow the template's last field"
            ),
            ParseErrorKind::Field(e) => e.fmt(f),
            ParseErrorKind::AsciiSyntax { column, what } => {
                write!(f, "column {column}: {what}")
            }
        }
    }
}
