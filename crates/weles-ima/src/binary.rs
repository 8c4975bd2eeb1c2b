//! `binary_runtime_measurements`: the kernel's binary measurement list.
//!
//! Layout of one entry (security/integrity/ima/ima_fs.c, `ima_measurements_show`), integers in
//! the kernel's native byte order, or little-endian when `ima_canonical_fmt` is set:
//!
//! ```text
//! u32 pcr | u8[20] template_hash | u32 name_len | name
//!   ima:    u8[20] d | u32 n_len | n            (no template-data length, n without NUL)
//!   others: u32 data_len | data = (u32 field_len | field)*
//! ```
//!
//! Every length is checked against the bytes actually present before it is used, so a length
//! field of 4 GiB costs nothing: the reader never allocates; entries borrow from the input.

use std::borrow::Cow;

use crate::entry::{Entry, Fields, IMA_LEGACY_NAME_HASH_LEN};
use crate::error::{ParseError, ParseErrorKind};
use crate::template::{FieldError, FieldId, Template, decode_digest_field};

/// Byte order of the integers in a binary log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// Little-endian: x86, arm64, and every log written with `ima_canonical_fmt`.
    Little,
    /// Big-endian native layout (s390x, ppc64 BE) without `ima_canonical_fmt`.
    Big,
}

impl ByteOrder {
    pub(crate) fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            ByteOrder::Little => u32::from_le_bytes(b),
            ByteOrder::Big => u32::from_be_bytes(b),
        }
    }

    pub(crate) fn u32_bytes(self, v: u32) -> [u8; 4] {
        match self {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        }
    }

    /// Detects the byte order from the first entry's PCR index, which must be below 24.
    pub fn detect(bytes: &[u8]) -> Option<ByteOrder> {
        let first: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
        if u32::from_le_bytes(first) < NUM_PCRS {
            Some(ByteOrder::Little)
        } else if u32::from_be_bytes(first) < NUM_PCRS {
            Some(ByteOrder::Big)
        } else {
            None
        }
    }
}

/// Number of PCRs of a TPM 2.0 PC client.
pub const NUM_PCRS: u32 = 24;

/// Size limits that keep a hostile log from costing unbounded time or memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest template name (the kernel's are at most a few dozen bytes).
    pub max_template_name: u32,
    /// Largest template data of one entry (ima-buf and modsig entries are the big ones).
    pub max_template_data: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_template_name: 255,
            max_template_data: 1 << 20,
        }
    }
}

/// Reads entries from a binary measurement list.
pub struct BinaryReader<'a> {
    input: &'a [u8],
    pos: usize,
    base_offset: u64,
    next_index: u64,
    order: ByteOrder,
    limits: Limits,
}

impl<'a> BinaryReader<'a> {
    /// A reader over `input`, which starts at stream offset `base_offset` with entry `first_index`.
    pub fn new(
        input: &'a [u8],
        order: ByteOrder,
        base_offset: u64,
        first_index: u64,
        limits: Limits,
    ) -> Self {
        BinaryReader {
            input,
            pos: 0,
            base_offset,
            next_index: first_index,
            order,
            limits,
        }
    }

    /// Bytes of `input` consumed by the entries returned so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    /// The index the next entry will get.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// The next entry; `None` at a clean end of input.
    ///
    /// On error the reader does not advance, so a truncated tail can be retried with more bytes.
    pub fn next_entry(&mut self) -> Option<Result<Entry<'a>, ParseError>> {
        if self.pos >= self.input.len() {
            return None;
        }
        let start = self.pos;
        let mut cur = Cursor {
            bytes: &self.input[start..],
            pos: 0,
            order: self.order,
        };
        let result = parse_entry(
            &mut cur,
            self.limits,
            self.next_index,
            self.base_offset + start as u64,
        );
        if result.is_ok() {
            self.pos = start + cur.pos;
            self.next_index += 1;
        }
        Some(result)
    }
}

impl<'a> Iterator for BinaryReader<'a> {
    type Item = Result<Entry<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.next_entry()?;
        if item.is_err() {
            // Stop after an error: the reader cannot resynchronise inside a corrupt entry.
            self.pos = self.input.len();
        }
        Some(item)
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    order: ByteOrder,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, field: &'static str) -> Result<&'a [u8], ParseErrorKind> {
        let available = (self.bytes.len() - self.pos) as u64;
        if n > available {
            return Err(ParseErrorKind::Truncated {
                field,
                needed: n,
                available,
            });
        }
        let n = n as usize; // n <= available <= usize::MAX
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ParseErrorKind> {
        let b = self.take(4, field)?;
        Ok(self.order.u32([b[0], b[1], b[2], b[3]]))
    }
}

fn parse_entry<'a>(
    cur: &mut Cursor<'a>,
    limits: Limits,
    index: u64,
    offset: u64,
) -> Result<Entry<'a>, ParseError> {
    let err = |kind| ParseError {
        index,
        offset,
        kind,
    };
    let pcr = cur.u32("pcr").map_err(err)?;
    if pcr >= NUM_PCRS {
        return Err(err(ParseErrorKind::PcrOutOfRange(pcr)));
    }
    let mut template_hash = [0u8; 20];
    template_hash.copy_from_slice(cur.take(20, "template_hash").map_err(err)?);
    let name_len = cur.u32("template_name_len").map_err(err)?;
    if name_len > limits.max_template_name {
        return Err(err(ParseErrorKind::TooLong {
            field: "template_name_len",
            len: name_len.into(),
            limit: limits.max_template_name.into(),
        }));
    }
    let name_bytes = cur.take(name_len.into(), "template_name").map_err(err)?;
    let template_name =
        template_name_str(name_bytes).ok_or_else(|| err(ParseErrorKind::BadTemplateName))?;
    let template = Template::from_name(template_name);

    let (data, fields) = if template == Some(Template::Ima) {
        let data_start = cur.pos;
        cur.take(20, "d").map_err(err)?;
        let n_len = cur.u32("n_len").map_err(err)?;
        // The legacy template hashes the name padded to 256 bytes (with at least one NUL).
        let max = IMA_LEGACY_NAME_HASH_LEN as u32 - 1;
        if n_len > max {
            return Err(err(ParseErrorKind::TooLong {
                field: "n",
                len: n_len.into(),
                limit: max.into(),
            }));
        }
        cur.take(n_len.into(), "n").map_err(err)?;
        let data = &cur.bytes[data_start..cur.pos];
        let fields = Fields {
            digest: decode_digest_field(FieldId::D, data, 0..20)
                .map_err(|e| err(ParseErrorKind::Field(e)))?,
            name: Some(24..data.len()),
            ..Fields::default()
        };
        (data, fields)
    } else {
        let data_len = cur.u32("template_data_len").map_err(err)?;
        if data_len > limits.max_template_data {
            return Err(err(ParseErrorKind::TooLong {
                field: "template_data_len",
                len: data_len.into(),
                limit: limits.max_template_data.into(),
            }));
        }
        let data = cur.take(data_len.into(), "template_data").map_err(err)?;
        let fields = match template {
            Some(t) => decode_fields(t, data, cur.order).map_err(err)?,
            None => Fields::default(),
        };
        (data, fields)
    };
    Ok(Entry {
        index,
        offset,
        pcr,
        template_hash,
        template_name: Cow::Borrowed(template_name),
        template,
        data: Cow::Borrowed(data),
        fields,
    })
}

/// Template names are short printable ASCII (named templates or `d-ng|n-ng` format strings).
pub(crate) fn template_name_str(bytes: &[u8]) -> Option<&str> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// Splits template data into the template's `u32 len || bytes` fields and decodes them.
pub(crate) fn decode_fields(
    template: Template,
    data: &[u8],
    order: ByteOrder,
) -> Result<Fields, ParseErrorKind> {
    let mut fields = Fields::default();
    let mut pos = 0usize;
    for &id in template.fields() {
        let remaining = (data.len() - pos) as u64;
        if remaining < 4 {
            return Err(ParseErrorKind::FieldOverrun {
                field: id.name(),
                len: 4,
                remaining,
            });
        }
        let len = u64::from(order.u32([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]));
        pos += 4;
        let remaining = remaining - 4;
        if len > remaining {
            return Err(ParseErrorKind::FieldOverrun {
                field: id.name(),
                len,
                remaining,
            });
        }
        let range = pos..pos + len as usize;
        pos = range.end;
        match id {
            FieldId::DNg | FieldId::DNgV2 => {
                fields.digest =
                    decode_digest_field(id, data, range).map_err(ParseErrorKind::Field)?;
            }
            FieldId::DModsig => {
                fields.modsig_digest =
                    decode_digest_field(id, data, range).map_err(ParseErrorKind::Field)?;
            }
            FieldId::NNg => {
                // n-ng includes the terminating NUL; the name is what precedes it.
                if range.is_empty() || data[range.end - 1] != 0 {
                    return Err(ParseErrorKind::Field(FieldError::Unterminated {
                        field: id.name(),
                    }));
                }
                fields.name = Some(range.start..range.end - 1);
            }
            FieldId::Sig => fields.sig = Some(range),
            FieldId::Buf => fields.buf = Some(range),
            FieldId::Modsig => fields.modsig = Some(range),
            // Template::from_name never puts legacy fields in a field list.
            FieldId::D | FieldId::N => return Err(ParseErrorKind::BadTemplateName),
        }
    }
    if pos != data.len() {
        return Err(ParseErrorKind::TrailingData {
            bytes: (data.len() - pos) as u64,
        });
    }
    Ok(fields)
}
