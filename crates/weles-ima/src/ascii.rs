//! `ascii_runtime_measurements`: one entry per line, `PCR TEMPLATE_HASH TEMPLATE FIELD...`.
//!
//! The ASCII list prints each field of the template separated by one space: digests as
//! `ALG:HEX` (`TYPE:ALG:HEX` for d-ngv2, bare hex for the legacy `d`), names verbatim, signatures
//! and buffers as hex (empty when absent, which leaves a trailing space). Names may contain spaces,
//! so fields before the name are split from the left and fields after it from the right.
//!
//! To verify template hashes we rebuild the exact template data the kernel hashed
//! (`u32 len || bytes` per field, in the kernel's byte order), so an ASCII entry is checked the
//! same way as a binary one.

use std::borrow::Cow;

use crate::binary::{ByteOrder, Limits, NUM_PCRS, decode_fields, template_name_str};
use crate::digest::HashAlgorithm;
use crate::entry::{Entry, Fields, IMA_LEGACY_NAME_HASH_LEN};
use crate::error::{ParseError, ParseErrorKind};
use crate::template::{FieldId, MAX_FIELDS, Template, decode_digest_field};

/// Reads entries from an ASCII measurement list.
pub struct AsciiReader<'a> {
    input: &'a [u8],
    pos: usize,
    base_offset: u64,
    next_index: u64,
    order: ByteOrder,
    limits: Limits,
    /// Whether the input is complete: then a last line without `\n` is an entry, not a fragment.
    complete: bool,
}

impl<'a> AsciiReader<'a> {
    pub fn new(
        input: &'a [u8],
        order: ByteOrder,
        base_offset: u64,
        first_index: u64,
        limits: Limits,
        complete: bool,
    ) -> Self {
        AsciiReader {
            input,
            pos: 0,
            base_offset,
            next_index: first_index,
            order,
            limits,
            complete,
        }
    }

    pub fn consumed(&self) -> usize {
        self.pos
    }

    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// The next entry; `None` at the end. On error the reader does not advance.
    pub fn next_entry(&mut self) -> Option<Result<Entry<'a>, ParseError>> {
        if self.pos >= self.input.len() {
            return None;
        }
        let rest = &self.input[self.pos..];
        let offset = self.base_offset + self.pos as u64;
        let fail = |kind| {
            Some(Err(ParseError {
                index: self.next_index,
                offset,
                kind,
            }))
        };
        let (line, advance) = match memchr::memchr(b'\n', rest) {
            Some(nl) => (&rest[..nl], nl + 1),
            None if self.complete => (rest, rest.len()),
            None => {
                let max_line = u64::from(self.limits.max_template_data) * 2 + 4096;
                return fail(if rest.len() as u64 > max_line {
                    ParseErrorKind::TooLong {
                        field: "line",
                        len: rest.len() as u64,
                        limit: max_line,
                    }
                } else {
                    ParseErrorKind::Truncated {
                        field: "line",
                        needed: rest.len() as u64 + 1,
                        available: rest.len() as u64,
                    }
                });
            }
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // The kernel never writes blank lines, and entry indices count lines.
            return fail(syntax(0, "empty line"));
        }
        match parse_line(line, self.order, self.limits) {
            Ok(mut e) => {
                e.index = self.next_index;
                e.offset = offset;
                self.pos += advance;
                self.next_index += 1;
                Some(Ok(e))
            }
            Err(kind) => fail(kind),
        }
    }
}

impl<'a> Iterator for AsciiReader<'a> {
    type Item = Result<Entry<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.next_entry()?;
        if item.is_err() {
            self.pos = self.input.len();
        }
        Some(item)
    }
}

fn syntax(column: usize, what: impl Into<String>) -> ParseErrorKind {
    ParseErrorKind::AsciiSyntax {
        column: column as u64,
        what: what.into(),
    }
}

/// Splits off the next space-separated token; returns (token, column of token, rest).
fn token(
    line: &[u8],
    col: usize,
    what: impl FnOnce() -> String,
) -> Result<(&[u8], usize, &[u8]), ParseErrorKind> {
    match memchr::memchr(b' ', line) {
        Some(sp) => Ok((&line[..sp], col, &line[sp + 1..])),
        None => Err(syntax(col + line.len(), format!("missing {}", what()))),
    }
}

fn parse_line(line: &[u8], order: ByteOrder, limits: Limits) -> Result<Entry<'_>, ParseErrorKind> {
    let (pcr_tok, _, rest) = token(line, 0, || "template hash after the PCR index".into())?;
    let pcr: u32 = std::str::from_utf8(pcr_tok)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| syntax(0, "PCR index is not a decimal number"))?;
    if pcr >= NUM_PCRS {
        return Err(ParseErrorKind::PcrOutOfRange(pcr));
    }
    let hash_col = pcr_tok.len() + 1;
    let (hash_tok, _, rest) = token(rest, hash_col, || {
        "template name after the template hash".into()
    })?;
    let mut template_hash = [0u8; 20];
    if hash_tok.len() != 40 || !crate::hexdec::decode_into(hash_tok, &mut template_hash) {
        return Err(syntax(hash_col, "template hash is not 40 hex digits"));
    }
    let name_col = hash_col + 41;
    let (name_tok, _, rest) = token(rest, name_col, || "fields after the template name".into())?;
    if name_tok.len() as u64 > u64::from(limits.max_template_name) {
        return Err(ParseErrorKind::TooLong {
            field: "template_name",
            len: name_tok.len() as u64,
            limit: limits.max_template_name.into(),
        });
    }
    let template_name = template_name_str(name_tok).ok_or(ParseErrorKind::BadTemplateName)?;
    let fields_col = name_col + name_tok.len() + 1;
    let Some(template) = Template::from_name(template_name) else {
        // We cannot rebuild data for a template we do not know; keep the line for reporting.
        return Ok(Entry {
            index: 0,
            offset: 0,
            pcr,
            template_hash,
            template_name: Cow::Borrowed(template_name),
            template: None,
            data: Cow::Owned(Vec::new()),
            fields: Fields::default(),
        });
    };
    let ids = template.fields();
    let name_pos = ids
        .iter()
        .position(|i| matches!(i, FieldId::N | FieldId::NNg));
    let (before, after) = match name_pos {
        Some(p) => (&ids[..p], &ids[p + 1..]),
        None => (ids, &[][..]),
    };
    // (field, text, column) in template order, without allocating.
    let mut texts: [(FieldId, &[u8], usize); MAX_FIELDS] = [(FieldId::Buf, &[][..], 0); MAX_FIELDS];
    let mut rest = rest;
    let mut col = fields_col;
    for (i, &id) in before.iter().enumerate() {
        let last = name_pos.is_none() && i + 1 == before.len() && after.is_empty();
        if last {
            texts[i] = (id, rest, col);
            rest = &[];
        } else {
            let (tok, c, r) = token(rest, col, || format!("field after {}", id.name()))?;
            texts[i] = (id, tok, c);
            col += tok.len() + 1;
            rest = r;
        }
    }
    for (k, &id) in after.iter().enumerate().rev() {
        match memchr::memrchr(b' ', rest) {
            Some(sp) => {
                texts[before.len() + 1 + k] = (id, &rest[sp + 1..], col + sp + 1);
                rest = &rest[..sp];
            }
            None => {
                return Err(syntax(
                    col + rest.len(),
                    format!("missing field {}", id.name()),
                ));
            }
        }
    }
    if let Some(p) = name_pos {
        texts[p] = (ids[p], rest, col);
    }
    let texts = &texts[..ids.len()];

    let mut data = Vec::with_capacity(line.len());
    if template == Template::Ima {
        // Binary-log layout: d[20] || u32 len || name (no NUL).
        let (_, d_text, d_col) = texts[0];
        if d_text.len() != 40 {
            return Err(syntax(d_col, "legacy digest d must be 40 hex digits"));
        }
        let name = texts[1].1;
        if name.len() >= IMA_LEGACY_NAME_HASH_LEN {
            return Err(ParseErrorKind::TooLong {
                field: "n",
                len: name.len() as u64,
                limit: IMA_LEGACY_NAME_HASH_LEN as u64 - 1,
            });
        }
        append_hex(&mut data, d_text, d_col, "d")?;
        data.extend_from_slice(&order.u32_bytes(name.len() as u32));
        data.extend_from_slice(name);
        let fields = Fields {
            digest: decode_digest_field(FieldId::D, &data, 0..20).map_err(ParseErrorKind::Field)?,
            name: Some(24..data.len()),
            ..Fields::default()
        };
        return Ok(entry(
            pcr,
            template_hash,
            template_name,
            template,
            data,
            fields,
        ));
    }
    // Field texts arrive in template order; emit each as `u32 len || bytes`.
    for &(id, text, c) in texts {
        let start = data.len();
        data.extend_from_slice(&[0; 4]);
        match id {
            FieldId::DNg | FieldId::DNgV2 | FieldId::DModsig => {
                encode_digest_text(&mut data, id, text, c)?
            }
            FieldId::NNg => {
                data.extend_from_slice(text);
                data.push(0);
            }
            FieldId::Sig | FieldId::Buf | FieldId::Modsig => {
                append_hex(&mut data, text, c, id.name())?;
            }
            FieldId::D | FieldId::N => return Err(ParseErrorKind::BadTemplateName),
        }
        let len = (data.len() - start - 4) as u32;
        data[start..start + 4].copy_from_slice(&order.u32_bytes(len));
    }
    if data.len() as u64 > u64::from(limits.max_template_data) {
        return Err(ParseErrorKind::TooLong {
            field: "template_data",
            len: data.len() as u64,
            limit: limits.max_template_data.into(),
        });
    }
    let fields = decode_fields(template, &data, order)?;
    Ok(entry(
        pcr,
        template_hash,
        template_name,
        template,
        data,
        fields,
    ))
}

fn entry(
    pcr: u32,
    template_hash: [u8; 20],
    template_name: &str,
    template: Template,
    data: Vec<u8>,
    fields: Fields,
) -> Entry<'_> {
    Entry {
        index: 0,
        offset: 0,
        pcr,
        template_hash,
        template_name: Cow::Borrowed(template_name),
        template: Some(template),
        data: Cow::Owned(data),
        fields,
    }
}

/// Appends the bytes of a hex field to `out`.
fn append_hex(
    out: &mut Vec<u8>,
    text: &[u8],
    col: usize,
    field: &str,
) -> Result<(), ParseErrorKind> {
    if crate::hexdec::decode_append(text, out) {
        Ok(())
    } else {
        Err(syntax(col, format!("field {field} is not hexadecimal")))
    }
}

/// `[TYPE:]ALG:HEX` → `[TYPE:]ALG:\0 || digest`; bare HEX (legacy sha1/md5) → digest only.
fn encode_digest_text(
    out: &mut Vec<u8>,
    id: FieldId,
    text: &[u8],
    col: usize,
) -> Result<(), ParseErrorKind> {
    if text.is_empty() && id == FieldId::DModsig {
        return Ok(());
    }
    match memchr::memrchr(b':', text) {
        Some(colon) => {
            let prefix = &text[..=colon];
            if !prefix.iter().all(u8::is_ascii_graphic) {
                return Err(syntax(
                    col,
                    format!("field {}: bad algorithm prefix", id.name()),
                ));
            }
            out.extend_from_slice(prefix);
            out.push(0);
            append_hex(out, &text[colon + 1..], col + colon + 1, id.name())?;
        }
        None => {
            if !matches!(text.len(), 32 | 40) {
                return Err(syntax(
                    col,
                    format!(
                        "field {}: a digest without ALG: prefix must be {} (sha1) or {} (md5) hex digits",
                        id.name(),
                        HashAlgorithm::Sha1.digest_len() * 2,
                        HashAlgorithm::Md5.digest_len() * 2
                    ),
                ));
            }
            append_hex(out, text, col, id.name())?;
        }
    }
    Ok(())
}
