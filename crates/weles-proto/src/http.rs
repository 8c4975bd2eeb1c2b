//! The small, strict HTTP/1.1 subset the tenant API speaks (`docs/api.md` §1), both ends.
//!
//! Deliberately narrow, because the server parses requests from anyone who can reach its port:
//! a request head of at most 16 KiB and 64 header lines, a body only by `Content-Length` (at most
//! 1 MiB), no `Transfer-Encoding`, no continuation lines. Anything else is refused with a status
//! code before a byte of body is read or allocated. Responses carry `Content-Length`, except
//! server-sent event streams, which end when the connection does.

use std::io::{self, BufRead, Read, Write};

/// Most bytes of a request or response head (request line + headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines.
pub const MAX_HEADERS: usize = 64;
/// Most bytes of a request body (what the manager accepts from anyone).
pub const MAX_BODY: usize = 1 << 20;
/// Most bytes of a response body (what a tenant accepts from the manager it pinned): evidence
/// carries the host's IMA log, up to 64 MiB before base64.
pub const MAX_RESPONSE_BODY: usize = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the connection closed in the middle of a message")]
    Truncated,
    #[error("{0}")]
    Malformed(String),
    #[error("the head exceeds {MAX_HEAD} bytes or {MAX_HEADERS} header lines")]
    HeadTooLarge,
    #[error("a body of {0} bytes exceeds {1}")]
    BodyTooLarge(u64, usize),
    #[error("{0} is not supported")]
    Unsupported(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl HttpError {
    /// The status a server answers with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge(..) => 413,
            HttpError::Unsupported(_) => 501,
            _ => 400,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query string (after `?`), possibly empty.
    pub query: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The path with its query, as the client sent it (and signed it).
    pub fn target(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }

    /// A query parameter's value (no percent-decoding: our parameters are numbers).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Header lines, names in lower case.
pub type Headers = Vec<(String, String)>;

/// Reads the head: the first line and the header lines, within the limits.
fn read_head(r: &mut impl BufRead) -> Result<Option<(String, Headers)>, HttpError> {
    let mut total = 0usize;
    let mut first: Option<String> = None;
    let mut headers = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .take((MAX_HEAD - total + 1) as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return if first.is_none() && total == 0 {
                Ok(None)
            } else {
                Err(HttpError::Truncated)
            };
        }
        total += n;
        if total > MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        if line.last() != Some(&b'\n') {
            return Err(HttpError::Truncated);
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let line = String::from_utf8(line)
            .map_err(|_| HttpError::Malformed("a head line is not UTF-8".into()))?;
        if first.is_none() {
            if line.is_empty() {
                continue; // tolerated: a stray CRLF between messages
            }
            first = Some(line);
            continue;
        }
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            return Err(HttpError::Malformed(
                "continuation lines are not allowed".into(),
            ));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HttpError::Malformed(format!("header line without ':': {line:.40}")))?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(HttpError::Malformed(format!("bad header name {name:.40}")));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        if headers.len() > MAX_HEADERS {
            return Err(HttpError::HeadTooLarge);
        }
    }
    Ok(first.map(|f| (f, headers)))
}

fn read_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
    max: usize,
) -> Result<Vec<u8>, HttpError> {
    if let Some(te) = header(headers, "transfer-encoding") {
        return Err(HttpError::Unsupported(format!(
            "Transfer-Encoding: {te:.40}"
        )));
    }
    let len = match header(headers, "content-length") {
        None => 0,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| HttpError::Malformed(format!("Content-Length {v:.40}")))?,
    };
    if len > max as u64 {
        return Err(HttpError::BodyTooLarge(len, max));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => HttpError::Truncated,
        _ => HttpError::Io(e),
    })?;
    Ok(body)
}

/// Reads one request; `Ok(None)` when the connection closed between requests.
pub fn read_request(r: &mut impl BufRead) -> Result<Option<Request>, HttpError> {
    let Some((line, headers)) = read_head(r)? else {
        return Ok(None);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(format!("request line {line:.60}")));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Unsupported(format!("{version:.20}")));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed(format!("method {method:.20}")));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(HttpError::Malformed(format!("request target {target:.60}")));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let body = read_body(r, &headers, MAX_BODY)?;
    Ok(Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body,
    }))
}

/// Reads a response's status and headers (the body follows).
pub fn read_response_head(r: &mut impl BufRead) -> Result<(u16, Vec<(String, String)>), HttpError> {
    let (line, headers) = read_head(r)?.ok_or(HttpError::Truncated)?;
    let mut parts = line.splitn(3, ' ');
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| HttpError::Malformed(format!("status line {line:.60}")))?,
        _ => return Err(HttpError::Malformed(format!("status line {line:.60}"))),
    };
    Ok((status, headers))
}

/// Reads the body that follows a response head (by its `Content-Length`).
pub fn read_response_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
) -> Result<Vec<u8>, HttpError> {
    read_body(r, headers, MAX_RESPONSE_BODY)
}

/// Reads a whole response (with `Content-Length`).
pub fn read_response(r: &mut impl BufRead) -> Result<Response, HttpError> {
    let (status, headers) = read_response_head(r)?;
    let body = read_body(r, &headers, MAX_RESPONSE_BODY)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        _ => "",
    }
}

/// Writes a response with a body.
pub fn write_response(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n",
        reason(status),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

/// Writes a request. `headers` are added as given; `Host` and `Content-Length` always.
pub fn write_request(
    w: &mut impl Write,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

/// Fuzz entry point: a request parser fed arbitrary bytes never panics or over-allocates.
pub fn fuzz_request(data: &[u8]) {
    let mut r = io::BufReader::new(data);
    while let Ok(Some(req)) = read_request(&mut r) {
        let _ = req.query_param("after");
        let _ = req.target();
    }
    let mut r = io::BufReader::new(data);
    let _ = read_response(&mut r);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(bytes: &[u8]) -> Result<Option<Request>, HttpError> {
        read_request(&mut io::BufReader::new(bytes))
    }

    #[test]
    fn requests_parse_within_limits() {
        let r = req(b"PUT /v1/vms/a/policy?x=1&after=7 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Weles-Tenant: acme\r\n\r\nabcEXTRA")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("PUT", "/v1/vms/a/policy")
        );
        assert_eq!(r.query_param("after"), Some("7"));
        assert_eq!(r.target(), "/v1/vms/a/policy?x=1&after=7");
        assert_eq!(r.header("x-weles-tenant"), Some("acme"));
        assert_eq!(r.body, b"abc");
        assert!(req(b"").unwrap().is_none());

        let codes = |b: &[u8]| req(b).unwrap_err().status();
        assert_eq!(
            codes(b"GET / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            codes(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
        assert_eq!(codes(b"GET / HTTP/2\r\n\r\n"), 501);
        assert_eq!(codes(b"GET / HTTP/1.1\r\n folded\r\n\r\n"), 400);
        assert_eq!(codes(b"GET nopath HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(codes(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"), 400);
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(65));
        assert_eq!(codes(many.as_bytes()), 431);
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(codes(long.as_bytes()), 431);
    }

    #[test]
    fn responses_round_trip() {
        let mut out = Vec::new();
        write_response(&mut out, 404, "application/json", b"{}").unwrap();
        let r = read_response(&mut io::BufReader::new(&out[..])).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"{}"[..]));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let mut out = Vec::new();
        write_request(
            &mut out,
            "GET",
            "h",
            "/v1/vms",
            &[("X-A".into(), "1".into())],
            b"",
        )
        .unwrap();
        let q = req(&out).unwrap().unwrap();
        assert_eq!((q.path.as_str(), q.header("x-a")), ("/v1/vms", Some("1")));
    }
}
