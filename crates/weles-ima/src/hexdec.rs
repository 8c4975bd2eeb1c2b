//! Table-driven hexadecimal decoding: the hot path of reading ASCII logs and big policies.
//!
//! Branch-free per byte pair; invalid characters are detected with a flag bit accumulated over
//! the whole input, so validation costs no extra pass.

const INVALID: u8 = 0xf0;

const fn table(upper: bool) -> [u8; 256] {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        if upper {
            t[b'A' as usize + i] = 10 + i as u8;
        }
        i += 1;
    }
    t
}

static ANY_CASE: [u8; 256] = table(true);
static LOWER: [u8; 256] = table(false);

fn decode_with(lut: &[u8; 256], src: &[u8], dst: &mut [u8]) -> bool {
    if src.len() != dst.len() * 2 {
        return false;
    }
    let mut bad = 0u8;
    for (out, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
        let hi = lut[usize::from(pair[0])];
        let lo = lut[usize::from(pair[1])];
        bad |= hi | lo;
        *out = (hi << 4) | (lo & 0x0f);
    }
    bad & INVALID == 0
}

/// Decodes hex (either case) of exactly `2 * dst.len()` characters into `dst`.
pub fn decode_into(src: &[u8], dst: &mut [u8]) -> bool {
    decode_with(&ANY_CASE, src, dst)
}

/// Like [`decode_into`], accepting only lowercase digits (Keylime's digest syntax).
pub fn decode_lower_into(src: &[u8], dst: &mut [u8]) -> bool {
    decode_with(&LOWER, src, dst)
}

/// Appends the bytes `src` encodes to `out`; `false` (and `out` unchanged) if it is not hex.
pub fn decode_append(src: &[u8], out: &mut Vec<u8>) -> bool {
    if !src.len().is_multiple_of(2) {
        return false;
    }
    let start = out.len();
    out.resize(start + src.len() / 2, 0);
    if decode_into(src, &mut out[start..]) {
        true
    } else {
        out.truncate(start);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_rejects() {
        let mut d = [0u8; 3];
        assert!(decode_into(b"00aFff", &mut d));
        assert_eq!(d, [0x00, 0xaf, 0xff]);
        assert!(!decode_lower_into(b"00aFff", &mut d));
        assert!(decode_lower_into(b"00afff", &mut d));
        assert!(!decode_into(b"0g0000", &mut d));
        assert!(!decode_into(b"000", &mut d));
        let mut v = vec![1];
        assert!(!decode_append(b"zz", &mut v));
        assert_eq!(v, [1]);
        assert!(decode_append(b"0102", &mut v));
        assert_eq!(v, [1, 1, 2]);
        for b in 0..=255u8 {
            let ok = b.is_ascii_hexdigit();
            let mut one = [0u8];
            assert_eq!(decode_into(&[b, b'0'], &mut one), ok, "{b}");
        }
    }
}
