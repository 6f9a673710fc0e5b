//! A minimal HTTP/1.1 response reader shared by the Envoy admin client and the
//! probe client.
//!
//! Both need to see exactly what came back on the wire (a status line, a reset,
//! nothing at all), which a full HTTP client library hides behind its own error
//! types and retries. So requests are written by hand with `Connection: close`
//! and the response is read here: head, then a body delimited by
//! `Content-Length`, chunked transfer encoding, or the end of the stream.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{Instant, timeout_at};

/// Responses larger than this are refused, so a misbehaving peer cannot make a
/// test allocate without bound. A large mesh's `/config_dump` is a few MB.
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The status line and headers of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub status: u16,
    /// Header names as sent (case preserved), in arrival order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn is_chunked(&self) -> bool {
        self.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding")
                && v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("chunked"))
        })
    }

    fn content_length(&self) -> Result<Option<usize>, String> {
        match self.header("content-length") {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| format!("invalid content-length {v:?}")),
        }
    }

    /// 1xx, 204 and 304 responses carry no body whatever the headers say.
    fn has_no_body(&self) -> bool {
        (100..200).contains(&self.status) || self.status == 204 || self.status == 304
    }
}

/// How reading a response ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Head and body are complete.
    Complete,
    /// The peer closed the stream (FIN) before the response was complete.
    Eof,
    /// A read failed, typically `ConnectionReset`.
    Io(io::Error),
    /// The deadline passed first.
    Deadline,
    /// The bytes received are not an HTTP/1.x response.
    Malformed(String),
}

/// Everything learned from reading one response.
#[derive(Debug)]
pub(crate) struct Received {
    /// The status code, as soon as a complete status line arrived (even if the
    /// headers after it did not).
    pub status: Option<u16>,
    /// The full head, when the blank line ending it arrived.
    pub head: Option<Head>,
    /// The full body, when it arrived completely.
    pub body: Option<Vec<u8>>,
    pub end: End,
    /// Number of bytes received in total, for diagnostics.
    pub received: usize,
}

/// Reads one response from `reader` until it is complete, the stream ends or
/// fails, or `deadline` passes. Never returns an error: every way of ending is
/// described in [`Received::end`] so callers can classify it.
pub(crate) async fn read_response<R>(reader: &mut R, deadline: Instant) -> Received
where
    R: AsyncRead + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut head: Option<(Head, usize)> = None;
    let end = loop {
        if head.is_none() {
            match parse_head(&buf) {
                Ok(Some(parsed)) => head = Some(parsed),
                Ok(None) => {}
                Err(reason) => break End::Malformed(reason),
            }
        }
        if let Some((h, len)) = &head {
            match body_if_complete(h, &buf[*len..], false) {
                Ok(Some(_)) => break End::Complete,
                Ok(None) => {}
                Err(reason) => break End::Malformed(reason),
            }
        }
        if buf.len() > MAX_RESPONSE_BYTES {
            break End::Malformed(format!("response exceeds {MAX_RESPONSE_BYTES} bytes"));
        }
        buf.reserve(8192);
        match timeout_at(deadline, reader.read_buf(&mut buf)).await {
            Err(_elapsed) => break End::Deadline,
            Ok(Ok(0)) => break End::Eof,
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => break End::Io(e),
        }
    };

    let status = head
        .as_ref()
        .map(|(h, _)| h.status)
        .or_else(|| parse_status_line(&buf));
    let body = head.as_ref().and_then(|(h, len)| {
        // A body delimited by the end of the stream is complete at EOF.
        let eof = matches!(end, End::Eof);
        body_if_complete(h, &buf[*len..], eof).ok().flatten()
    });
    let end = match end {
        // An EOF-delimited body that is now complete is a complete response.
        End::Eof if body.is_some() => End::Complete,
        other => other,
    };
    Received {
        status,
        head: head.map(|(h, _)| h),
        body,
        end,
        received: buf.len(),
    }
}

/// Parses the status line alone, if a full first line has arrived and looks
/// like `HTTP/1.x NNN ...`.
pub(crate) fn parse_status_line(buf: &[u8]) -> Option<u16> {
    let line_end = find(buf, b"\r\n")?;
    let line = std::str::from_utf8(&buf[..line_end]).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Parses the head once the blank line ending it has arrived. Returns the head
/// and its length in bytes, `Ok(None)` when more bytes are needed, or an error
/// when the bytes cannot be an HTTP/1.x response.
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    // Reject non-HTTP bytes early (for example a TLS alert) rather than
    // waiting for a blank line that will never come.
    let prefix = &buf[..buf.len().min(5)];
    if !b"HTTP/".starts_with(prefix) {
        return Err(format!(
            "not an HTTP/1.x response: starts with {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(16)])
        ));
    }
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(&buf[..head_end + 2])
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed header line {line:?}"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Some((Head { status, headers }, head_end + 4)))
}

/// Returns the decoded body when all of it is in `rest` (the bytes after the
/// head). `eof` says the stream has ended, which completes a body that has
/// neither a length nor chunked encoding.
fn body_if_complete(head: &Head, rest: &[u8], eof: bool) -> Result<Option<Vec<u8>>, String> {
    if head.has_no_body() {
        return Ok(Some(Vec::new()));
    }
    if head.is_chunked() {
        return decode_chunked(rest);
    }
    match head.content_length()? {
        Some(len) if rest.len() >= len => Ok(Some(rest[..len].to_vec())),
        Some(_) => Ok(None),
        None if eof => Ok(Some(rest.to_vec())),
        None => Ok(None),
    }
}

/// Decodes a chunked body: `Ok(None)` while incomplete, an error when the
/// framing is wrong. Chunk extensions and trailers are skipped.
pub(crate) fn decode_chunked(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..line_end])
            .map_err(|_| "chunk size line is not UTF-8".to_string())?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("invalid chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let Some(end) = find(rest, b"\r\n") else {
                    return Ok(None);
                };
                if end == 0 {
                    return Ok(Some(out));
                }
                rest = &rest[end + 2..];
            }
        }
        let needed = size
            .checked_add(2)
            .ok_or_else(|| format!("chunk size {size} overflows"))?;
        if rest.len() < needed {
            return Ok(None);
        }
        if &rest[size..needed] != b"\r\n" {
            return Err("chunk data not followed by CRLF".to_string());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[needed..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn read_all(bytes: &[u8]) -> Received {
        let mut reader = bytes;
        read_response(&mut reader, Instant::now() + Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn content_length_body_is_read_exactly() {
        let got = read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").await;
        assert!(matches!(got.end, End::Complete), "{:?}", got.end);
        assert_eq!(got.status, Some(200));
        assert_eq!(got.body.as_deref(), Some(&b"ok"[..]));
    }

    #[tokio::test]
    async fn chunked_body_is_decoded_with_extensions_and_trailers() {
        let got = read_all(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              4;ext=1\r\nLIVE\r\n1\r\n\n\r\n0\r\nx-trailer: y\r\n\r\n",
        )
        .await;
        assert!(matches!(got.end, End::Complete), "{:?}", got.end);
        assert_eq!(got.body.as_deref(), Some(&b"LIVE\n"[..]));
    }

    #[tokio::test]
    async fn eof_completes_a_body_without_length() {
        let got = read_all(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nhello").await;
        assert!(matches!(got.end, End::Complete), "{:?}", got.end);
        assert_eq!(got.body.as_deref(), Some(&b"hello"[..]));
    }

    #[tokio::test]
    async fn truncated_body_reports_status_but_no_body() {
        let got =
            read_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 10\r\n\r\nabc").await;
        assert!(matches!(got.end, End::Eof), "{:?}", got.end);
        assert_eq!(got.status, Some(503));
        assert_eq!(got.body, None);
    }

    #[tokio::test]
    async fn status_line_without_headers_still_gives_status() {
        let got = read_all(b"HTTP/1.1 404 Not Found\r\nconte").await;
        assert!(matches!(got.end, End::Eof), "{:?}", got.end);
        assert_eq!(got.status, Some(404));
        assert!(got.head.is_none());
    }

    #[tokio::test]
    async fn non_http_bytes_are_malformed() {
        let got = read_all(b"\x15\x03\x01\x00\x02\x02\x46").await;
        assert!(matches!(got.end, End::Malformed(_)), "{:?}", got.end);
        assert_eq!(got.status, None);
    }

    #[test]
    fn incomplete_chunked_body_waits_for_more() {
        assert_eq!(decode_chunked(b"5\r\nab"), Ok(None));
        assert_eq!(decode_chunked(b"2\r\nab\r\n0\r\n"), Ok(None));
        assert!(decode_chunked(b"zz\r\n").is_err());
    }
}
