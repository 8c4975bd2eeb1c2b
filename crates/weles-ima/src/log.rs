//! Log formats and one reader over both.

use crate::ascii::AsciiReader;
use crate::binary::{BinaryReader, ByteOrder, Limits};
use crate::entry::Entry;
use crate::error::ParseError;

/// The two forms of the measurement list the kernel exposes in securityfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// `binary_runtime_measurements`, in the given byte order.
    Binary(ByteOrder),
    /// `ascii_runtime_measurements`; lengths rebuilt in the given byte order for hashing.
    Ascii(ByteOrder),
}

impl LogFormat {
    /// Detects the format from the first bytes of a log.
    ///
    /// An ASCII list starts with a decimal PCR index, a space and 40 hex digits; a binary one with
    /// a 4-byte PCR index below 24 in either byte order. Anything else is read as a little-endian
    /// binary list, so that the parser reports exactly what is wrong with its first entry.
    pub fn detect(bytes: &[u8]) -> LogFormat {
        if looks_ascii(bytes) {
            return LogFormat::Ascii(ByteOrder::Little);
        }
        LogFormat::Binary(ByteOrder::detect(bytes).unwrap_or(ByteOrder::Little))
    }

    pub fn name(&self) -> &'static str {
        match self {
            LogFormat::Binary(ByteOrder::Little) => "binary (little-endian)",
            LogFormat::Binary(ByteOrder::Big) => "binary (big-endian)",
            LogFormat::Ascii(_) => "ascii",
        }
    }
}

fn looks_ascii(bytes: &[u8]) -> bool {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 2 || bytes.get(digits) != Some(&b' ') {
        return false;
    }
    let hash = &bytes[digits + 1..];
    hash.len() >= 41 && hash[..40].iter().all(u8::is_ascii_hexdigit) && hash[40] == b' '
}

/// Entries of a log in either format.
pub enum Reader<'a> {
    Binary(BinaryReader<'a>),
    Ascii(AsciiReader<'a>),
}

impl<'a> Reader<'a> {
    /// A reader over `input`, the part of the log starting at `base_offset` / entry `first_index`.
    /// `complete`: whether `input` runs to the end of the log (an ASCII line needs its `\n`
    /// otherwise).
    pub fn new(
        format: LogFormat,
        input: &'a [u8],
        base_offset: u64,
        first_index: u64,
        limits: Limits,
        complete: bool,
    ) -> Self {
        match format {
            LogFormat::Binary(o) => Reader::Binary(BinaryReader::new(
                input,
                o,
                base_offset,
                first_index,
                limits,
            )),
            LogFormat::Ascii(o) => Reader::Ascii(AsciiReader::new(
                input,
                o,
                base_offset,
                first_index,
                limits,
                complete,
            )),
        }
    }

    /// The next entry, `None` at the end; on error the reader stays at the failing entry.
    pub fn next_entry(&mut self) -> Option<Result<Entry<'a>, ParseError>> {
        match self {
            Reader::Binary(r) => r.next_entry(),
            Reader::Ascii(r) => r.next_entry(),
        }
    }

    /// Bytes of the input consumed by the entries returned so far.
    pub fn consumed(&self) -> usize {
        match self {
            Reader::Binary(r) => r.consumed(),
            Reader::Ascii(r) => r.consumed(),
        }
    }
}

/// Parses a complete log of either format into owned-or-borrowed entries.
pub fn parse_all(bytes: &[u8], limits: Limits) -> Result<(LogFormat, Vec<Entry<'_>>), ParseError> {
    if bytes.is_empty() {
        return Ok((LogFormat::Binary(ByteOrder::Little), Vec::new()));
    }
    let format = LogFormat::detect(bytes);
    let mut reader = Reader::new(format, bytes, 0, 0, limits, true);
    let mut out = Vec::new();
    while let Some(e) = reader.next_entry() {
        out.push(e?);
    }
    Ok((format, out))
}
