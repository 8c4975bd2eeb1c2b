//! A minimal DER reader: just enough ASN.1 to find a certificate's public key and key
//! identifier, and the parts of a CMS SignedData that an appended module signature needs.
//!
//! It reads definite-length, single-byte-tag TLVs only, checks every length against the bytes
//! present, and never allocates. Anything else is an error, never a panic.

/// Universal and context tags used here.
pub(crate) mod tag {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    pub const CONTEXT_0: u8 = 0xa0;
    pub const CONTEXT_1: u8 = 0xa1;
    pub const CONTEXT_3: u8 = 0xa3;
}

/// Why DER bytes were refused; `offset` is relative to the start of the outermost value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DER: {what} at byte {offset}")]
pub struct DerError {
    pub what: &'static str,
    pub offset: usize,
}

/// One tag-length-value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    /// The value bytes.
    pub value: &'a [u8],
    /// Tag, length and value, as encoded.
    pub raw: &'a [u8],
    /// Offset of `raw` in the outermost input.
    pub offset: usize,
}

impl<'a> Tlv<'a> {
    /// A reader over this value's contents.
    pub fn contents(&self) -> Der<'a> {
        Der {
            buf: self.value,
            pos: 0,
            base: self.offset + (self.raw.len() - self.value.len()),
        }
    }
}

/// A cursor over a sequence of TLVs.
#[derive(Clone, Debug)]
pub(crate) struct Der<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Der<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Der {
            buf,
            pos: 0,
            base: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn err(&self, what: &'static str) -> DerError {
        DerError {
            what,
            offset: self.base + self.pos,
        }
    }

    fn peek_tag(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Reads the next TLV.
    pub fn read(&mut self) -> Result<Tlv<'a>, DerError> {
        let start = self.pos;
        let rest = &self.buf[start..];
        let (&t, after_tag) = rest
            .split_first()
            .ok_or_else(|| self.err("unexpected end"))?;
        if t & 0x1f == 0x1f {
            return Err(self.err("multi-byte tag"));
        }
        let (&first, after_len0) = after_tag
            .split_first()
            .ok_or_else(|| self.err("missing length"))?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(self.err("indefinite or oversized length"));
            }
            let bytes = after_len0
                .get(..n)
                .ok_or_else(|| self.err("truncated length"))?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        };
        let total = header
            .checked_add(len)
            .ok_or_else(|| self.err("length overflow"))?;
        if total > rest.len() {
            return Err(self.err("value runs past the end"));
        }
        self.pos = start + total;
        Ok(Tlv {
            tag: t,
            value: &rest[header..total],
            raw: &rest[..total],
            offset: self.base + start,
        })
    }

    /// Reads the next TLV, which must have `tag`.
    pub fn expect(&mut self, tag: u8, what: &'static str) -> Result<Tlv<'a>, DerError> {
        if self.peek_tag() != Some(tag) {
            return Err(self.err(what));
        }
        self.read()
    }

    /// Reads the next TLV if it has `tag`.
    pub fn optional(&mut self, tag: u8) -> Result<Option<Tlv<'a>>, DerError> {
        if self.peek_tag() == Some(tag) {
            self.read().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Encoded object identifiers (value bytes only).
pub(crate) mod oid {
    pub const SUBJECT_KEY_IDENTIFIER: &[u8] = &[0x55, 0x1d, 0x0e];
    pub const SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    pub const MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
    pub const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
    pub const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    pub const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    pub const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_values_and_refuses_bad_lengths() {
        let bytes = [0x30, 0x06, 0x02, 0x01, 0x05, 0x04, 0x01, 0xff];
        let mut d = Der::new(&bytes);
        let seq = d.expect(tag::SEQUENCE, "seq").unwrap();
        assert!(d.is_empty());
        let mut c = seq.contents();
        assert_eq!(c.expect(tag::INTEGER, "int").unwrap().value, &[5]);
        let os = c.read().unwrap();
        assert_eq!(
            (os.tag, os.value, os.offset),
            (tag::OCTET_STRING, &[0xff][..], 5)
        );
        assert!(c.read().is_err());

        for bad in [
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x1f, 0x01, 0x00],
            &[0x30],
            &[0x30, 0x02, 0x00],
        ] {
            assert!(Der::new(bad).read().is_err(), "{bad:?}");
        }
    }
}
