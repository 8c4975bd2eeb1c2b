//! Writing measurement lists in the kernel's layouts.
//!
//! Used to build test vectors and fuzzing seeds, to convert a binary list to its ASCII form, and
//! to replay a captured log (a guest simulator writes entries and extends the same digests).

use sha1::{Digest as _, Sha1};

use crate::binary::ByteOrder;
use crate::digest::HashAlgorithm;
use crate::entry::{Entry, IMA_LEGACY_NAME_HASH_LEN};
use crate::template::{FieldId, Template};

/// `d-ng`: `ALG ':' '\0' || digest`.
pub fn d_ng(alg: HashAlgorithm, digest: &[u8]) -> Vec<u8> {
    let mut v = format!("{}:", alg.name()).into_bytes();
    v.push(0);
    v.extend_from_slice(digest);
    v
}

/// `d-ngv2`: `TYPE ':' ALG ':' '\0' || digest`, TYPE `ima` or `verity`.
pub fn d_ngv2(kind: &str, alg: HashAlgorithm, digest: &[u8]) -> Vec<u8> {
    let mut v = format!("{kind}:{}:", alg.name()).into_bytes();
    v.push(0);
    v.extend_from_slice(digest);
    v
}

/// `n-ng`: the path and its terminating NUL.
pub fn n_ng(path: &[u8]) -> Vec<u8> {
    let mut v = path.to_vec();
    v.push(0);
    v
}

/// Template data: each field as `u32 len || bytes`.
pub fn template_data(order: ByteOrder, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(&order.u32_bytes(f.len() as u32));
        out.extend_from_slice(f);
    }
    out
}

/// Appends a binary entry of a field-list template. The template hash is SHA-1 of `data`, or
/// zero for a violation entry.
pub fn binary_entry(
    out: &mut Vec<u8>,
    order: ByteOrder,
    pcr: u32,
    template: &str,
    data: &[u8],
    violation: bool,
) {
    let hash: [u8; 20] = if violation {
        [0; 20]
    } else {
        Sha1::digest(data).into()
    };
    binary_entry_with_hash(out, order, pcr, template, data, hash);
}

/// Appends a binary entry with an explicit template hash (e.g. a forged one, for tests).
pub fn binary_entry_with_hash(
    out: &mut Vec<u8>,
    order: ByteOrder,
    pcr: u32,
    template: &str,
    data: &[u8],
    hash: [u8; 20],
) {
    out.extend_from_slice(&order.u32_bytes(pcr));
    out.extend_from_slice(&hash);
    out.extend_from_slice(&order.u32_bytes(template.len() as u32));
    out.extend_from_slice(template.as_bytes());
    out.extend_from_slice(&order.u32_bytes(data.len() as u32));
    out.extend_from_slice(data);
}

/// Appends a legacy `ima` template entry: `d[20] || u32 len || name`, hashed as
/// `SHA-1(d || name zero-padded to 256 bytes)`. `name` must be shorter than 256 bytes.
pub fn binary_legacy_entry(
    out: &mut Vec<u8>,
    order: ByteOrder,
    pcr: u32,
    digest: &[u8; 20],
    name: &[u8],
    violation: bool,
) {
    let hash: [u8; 20] = if violation {
        [0; 20]
    } else {
        let mut h = Sha1::new();
        h.update(digest);
        h.update(name);
        h.update(
            &[0u8; IMA_LEGACY_NAME_HASH_LEN][..IMA_LEGACY_NAME_HASH_LEN.saturating_sub(name.len())],
        );
        h.finalize().into()
    };
    out.extend_from_slice(&order.u32_bytes(pcr));
    out.extend_from_slice(&hash);
    out.extend_from_slice(&order.u32_bytes(3));
    out.extend_from_slice(b"ima");
    out.extend_from_slice(digest);
    out.extend_from_slice(&order.u32_bytes(name.len() as u32));
    out.extend_from_slice(name);
}

/// The entry as the kernel prints it in `ascii_runtime_measurements` (without the newline).
/// `None` for a template we cannot decode.
pub fn ascii_line(entry: &Entry<'_>, order: ByteOrder) -> Option<String> {
    let mut line = format!(
        "{} {} {}",
        entry.pcr,
        hex::encode(entry.template_hash),
        entry.template_name
    );
    let template = entry.template?;
    if template == Template::Ima {
        line.push(' ');
        line.push_str(&hex::encode(&entry.data[..20]));
        line.push(' ');
        line.push_str(&String::from_utf8_lossy(entry.name_bytes()));
        return Some(line);
    }
    let data = &entry.data;
    let mut pos = 0usize;
    for &id in template.fields() {
        let len = order.u32(data.get(pos..pos + 4)?.try_into().ok()?) as usize;
        let field = data.get(pos + 4..pos + 4 + len)?;
        pos += 4 + len;
        line.push(' ');
        match id {
            FieldId::DNg | FieldId::DNgV2 | FieldId::DModsig => {
                match field.iter().position(|b| *b == 0) {
                    Some(nul) if nul > 0 && field[nul - 1] == b':' => {
                        line.push_str(&String::from_utf8_lossy(&field[..nul]));
                        line.push_str(&hex::encode(&field[nul + 1..]));
                    }
                    _ => line.push_str(&hex::encode(field)),
                }
            }
            FieldId::NNg => line.push_str(&String::from_utf8_lossy(
                field.strip_suffix(&[0]).unwrap_or(field),
            )),
            FieldId::N => line.push_str(&String::from_utf8_lossy(field)),
            FieldId::D | FieldId::Sig | FieldId::Buf | FieldId::Modsig => {
                line.push_str(&hex::encode(field))
            }
        }
    }
    Some(line)
}
