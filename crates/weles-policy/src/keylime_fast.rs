//! A fast, strict reader for the big maps of a Keylime runtime policy.
//!
//! A generated policy is megabytes of `"path": ["hex", ...]` pairs; generic JSON deserialisation
//! spends most of its time there. This reader tokenises the top-level object itself: the three
//! digest maps (`digests`, `keyrings`, `ima-buf`) are scanned straight into [`Allowlist`]s, and
//! the small remaining members are handed, as exact byte spans, to `serde_json` for validation.
//!
//! It accepts exactly RFC 8259 JSON: strings with every escape (including surrogate pairs),
//! no control characters in strings, nesting bounded by [`MAX_DEPTH`], no trailing data, no
//! duplicate top-level keys. Errors carry the byte offset.

use std::borrow::Cow;

use crate::allowlist::Allowlist;

/// Deepest nesting accepted in the small sections (Keylime's schema needs 3).
pub const MAX_DEPTH: usize = 32;

/// A JSON syntax or schema error at a byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    pub offset: usize,
    pub message: String,
}

type Result<T> = std::result::Result<T, JsonError>;

/// The top-level members: the three maps parsed, the rest as raw spans.
pub struct TopLevel<'a> {
    pub digests: Allowlist,
    pub keyrings: Allowlist,
    pub ima_buf: Allowlist,
    /// `(key, raw JSON value, offset)` of every other member.
    pub others: Vec<(Cow<'a, str>, &'a [u8], usize)>,
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T> {
        Err(JsonError {
            offset: self.pos,
            message: message.into(),
        })
    }

    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.pos) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8, what: &str) -> Result<()> {
        self.expect_with(c, || what.to_string())
    }

    /// Like `expect`, with the description built only on failure (this runs per map entry).
    fn expect_with(&mut self, c: u8, what: impl FnOnce() -> String) -> Result<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            self.err(format!("expected {}", what()))
        }
    }

    /// A string; borrowed when it has no escapes.
    fn string(&mut self) -> Result<Cow<'a, str>> {
        self.expect(b'"', "a string")?;
        let start = self.pos;
        let rest = &self.b[start..];
        let Some(end) = memchr::memchr2(b'"', b'\\', rest) else {
            return self.err("unterminated string");
        };
        if rest[end] == b'"' {
            let raw = &rest[..end];
            if let Some(i) = raw.iter().position(|c| *c < 0x20) {
                self.pos = start + i;
                return self.err("control character in string");
            }
            let s = std::str::from_utf8(raw).map_err(|e| JsonError {
                offset: start + e.valid_up_to(),
                message: "string is not UTF-8".into(),
            })?;
            self.pos = start + end + 1;
            return Ok(Cow::Borrowed(s));
        }
        self.string_with_escapes(start).map(Cow::Owned)
    }

    fn string_with_escapes(&mut self, start: usize) -> Result<String> {
        let mut out: Vec<u8> = Vec::new();
        self.pos = start;
        loop {
            let Some(&c) = self.b.get(self.pos) else {
                return self.err("unterminated string");
            };
            self.pos += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.b.get(self.pos) else {
                        return self.err("unterminated escape");
                    };
                    self.pos += 1;
                    let simple = match e {
                        b'"' => Some(b'"'),
                        b'\\' => Some(b'\\'),
                        b'/' => Some(b'/'),
                        b'b' => Some(8),
                        b'f' => Some(12),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => None,
                        _ => return self.err("invalid escape"),
                    };
                    match simple {
                        Some(ch) => out.push(ch),
                        None => {
                            let ch = self.unicode_escape()?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                    }
                }
                c if c < 0x20 => {
                    self.pos -= 1;
                    return self.err("control character in string");
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| JsonError {
            offset: start,
            message: "string is not UTF-8".into(),
        })
    }

    fn hex4(&mut self) -> Result<u32> {
        let Some(h) = self.b.get(self.pos..self.pos + 4) else {
            return self.err("truncated \\u escape");
        };
        let v = std::str::from_utf8(h)
            .ok()
            .filter(|s| s.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|s| u32::from_str_radix(s, 16).ok());
        match v {
            Some(v) => {
                self.pos += 4;
                Ok(v)
            }
            None => self.err("invalid \\u escape"),
        }
    }

    fn unicode_escape(&mut self) -> Result<char> {
        let hi = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&hi) {
            if self.b.get(self.pos..self.pos + 2) != Some(b"\\u") {
                return self.err("unpaired surrogate");
            }
            self.pos += 2;
            let lo = self.hex4()?;
            if !(0xdc00..0xe000).contains(&lo) {
                return self.err("invalid low surrogate");
            }
            0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
        } else if (0xdc00..0xe000).contains(&hi) {
            return self.err("unpaired surrogate");
        } else {
            hi
        };
        char::from_u32(code).map_or_else(|| self.err("invalid code point"), Ok)
    }

    /// Skips any JSON value, checking its syntax (numbers and literals loosely; serde_json checks
    /// the small sections exactly afterwards).
    fn skip_value(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') => {
                self.pos += 1;
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.string()?;
                    self.expect(b':', "':'")?;
                    self.skip_value(depth + 1)?;
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some(c) if c == b'-' || c.is_ascii_digit() || c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self
                    .b
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.'))
                {
                    self.pos += 1;
                }
                if self.pos == start {
                    return self.err("expected a value");
                }
                Ok(())
            }
            _ => self.err("expected a value"),
        }
    }

    /// `{ "name": ["hex", ...], ... }` into `list`. Digests: 40–128 lowercase hex digits.
    fn digest_map(&mut self, list: &mut Allowlist, section: &str) -> Result<()> {
        self.expect_with(b'{', || format!("an object for {section:?}"))?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        let mut decoded: Vec<u8> = Vec::with_capacity(128);
        let mut lens: Vec<usize> = Vec::with_capacity(4);
        loop {
            let name = self.string()?;
            self.expect(b':', "':'")?;
            self.expect_with(b'[', || {
                format!("an array of digests for {section}[{name:?}]")
            })?;
            if self.peek() == Some(b']') {
                return self.err(format!(
                    "{section}[{name:?}] lists no digest (Keylime requires at least one)"
                ));
            }
            // Decoded digests of this name, inserted as one record.
            decoded.clear();
            lens.clear();
            let mut i = 0usize;
            loop {
                let at = self.pos;
                let d = self.string()?;
                let t = d.as_bytes();
                let start = decoded.len();
                decoded.resize(start + t.len() / 2, 0);
                let ok = (40..=128).contains(&t.len())
                    && t.len() % 2 == 0
                    && weles_ima::hexdec::decode_lower_into(t, &mut decoded[start..]);
                if !ok {
                    self.pos = at;
                    return self.err(format!(
                        "{section}[{name:?}][{i}]: {d:?} is not 40 to 128 lowercase hex digits"
                    ));
                }
                lens.push(t.len() / 2);
                i += 1;
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return self.err("expected ',' or ']'"),
                }
            }
            let mut pos = 0;
            match lens.as_slice() {
                // The common case, without building a list.
                [len] => list.insert_all(name.as_bytes(), &[(None, &decoded[..*len])]),
                _ => {
                    let parts: Vec<_> = lens
                        .iter()
                        .map(|len| {
                            pos += len;
                            (None, &decoded[pos - len..pos])
                        })
                        .collect();
                    list.insert_all(name.as_bytes(), &parts);
                }
            }
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.err("expected ',' or '}'"),
            }
        }
    }
}

/// Reads the top-level object of a Keylime runtime policy.
pub fn read(bytes: &[u8]) -> Result<TopLevel<'_>> {
    let mut s = Scanner { b: bytes, pos: 0 };
    // The digests map dominates: size the table from the input length (≈110 bytes per path).
    let mut top = TopLevel {
        digests: Allowlist::with_capacity(bytes.len() / 110),
        keyrings: Allowlist::new(),
        ima_buf: Allowlist::new(),
        others: Vec::new(),
    };
    let mut seen: Vec<String> = Vec::new();
    s.expect(b'{', "a JSON object")?;
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            let key_at = s.pos;
            let key = s.string()?;
            if seen.iter().any(|k| k == key.as_ref()) {
                s.pos = key_at;
                return s.err(format!("duplicate key {key:?}"));
            }
            seen.push(key.to_string());
            s.expect(b':', "':'")?;
            match key.as_ref() {
                "digests" => s.digest_map(&mut top.digests, "digests")?,
                "keyrings" => s.digest_map(&mut top.keyrings, "keyrings")?,
                "ima-buf" => s.digest_map(&mut top.ima_buf, "ima-buf")?,
                _ => {
                    s.ws();
                    let start = s.pos;
                    s.skip_value(1)?;
                    top.others.push((key, &bytes[start..s.pos], start));
                }
            }
            match s.peek() {
                Some(b',') => s.pos += 1,
                Some(b'}') => {
                    s.pos += 1;
                    break;
                }
                _ => return s.err("expected ',' or '}'"),
            }
        }
    }
    s.ws();
    if s.pos != bytes.len() {
        return s.err("trailing data after the JSON object");
    }
    for required in ["digests", "keyrings", "ima-buf"] {
        if !seen.iter().any(|k| k == required) {
            return Err(JsonError {
                offset: bytes.len(),
                message: format!("missing field `{required}`"),
            });
        }
    }
    Ok(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(digests: &str) -> String {
        format!(
            r#"{{"meta":{{"version":1,"generator":0}},"release":0,"digests":{digests},"excludes":[],"keyrings":{{}},"ima":{{"ignored_keyrings":[],"log_hash_alg":"sha1","dm_policy":null}},"ima-buf":{{}},"verification-keys":""}}"#
        )
    }

    #[test]
    fn reads_maps_and_escaped_keys() {
        let d = "a".repeat(64);
        let text = policy(&format!(
            r#"{{"/bin/\u00e9\"x\ud83d\ude00": ["{d}", "{d}"], "/b" : [ "{}" ] }}"#,
            "b".repeat(40)
        ));
        let top = read(text.as_bytes()).unwrap();
        assert_eq!(top.digests.len(), 2);
        assert!(top.digests.contains_name("/bin/é\"x😀".as_bytes()));
        assert_eq!(top.others.len(), 5);
    }

    #[test]
    fn refuses_malformed_input_with_offsets() {
        let d = "a".repeat(64);
        for (bad, what) in [
            (
                policy(&format!(r#"{{"/x": ["{}"]}}"#, "A".repeat(64))),
                "lowercase hex",
            ),
            (policy(r#"{"/x": []}"#), "lists no digest"),
            (policy(&format!(r#"{{"/x": ["{d}"],}}"#)), "a string"),
            (policy(&format!(r#"{{"/x\q": ["{d}"]}}"#)), "invalid escape"),
            (
                policy(&format!(r#"{{"/x\ud800": ["{d}"]}}"#)),
                "unpaired surrogate",
            ),
            (
                policy(&format!("{{\"/x\u{1}\": [\"{d}\"]}}")),
                "control character",
            ),
            (format!("{} x", policy("{}")), "trailing data"),
            (
                r#"{"digests":{},"digests":{}}"#.to_string(),
                "duplicate key",
            ),
            (
                r#"{"digests":{},"keyrings":{}}"#.to_string(),
                "missing field `ima-buf`",
            ),
            ("[".repeat(100), "a JSON object"),
            (
                format!(r#"{{"x":{}}}"#, "[".repeat(100)),
                "nesting too deep",
            ),
            (r#"{"digests":{"/x":["aa"#.to_string(), "unterminated"),
        ] {
            let e = read(bad.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("accepted: {bad}"));
            assert!(e.message.contains(what), "{bad}: {e:?}");
            assert!(e.offset <= bad.len());
        }
    }
}
