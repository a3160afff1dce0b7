//! NDJSON framing: one JSON text per `\n`-terminated line, with a hard limit on a line's size.
//!
//! The decoder yields raw frames (no UTF-8 or JSON check; the envelope parser does that) and
//! never buffers more than the limit: a longer line is an error, after which the caller is
//! expected to answer -32600 and close the connection.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The default limit on one message, in bytes (8 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct NdjsonCodec {
    max_len: usize,
    /// How far the current buffer has been searched for `\n` already.
    scanned: usize,
}

#[derive(Debug)]
pub enum FrameError {
    TooLong { limit: usize },
    Io(std::io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLong { limit } => {
                write!(f, "message over the size limit of {limit} bytes")
            }
            FrameError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

impl NdjsonCodec {
    pub fn new(max_len: usize) -> Self {
        NdjsonCodec {
            max_len,
            scanned: 0,
        }
    }
}

impl Default for NdjsonCodec {
    fn default() -> Self {
        NdjsonCodec::new(DEFAULT_MAX_MESSAGE_BYTES)
    }
}

impl Decoder for NdjsonCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            let Some(pos) = buf[self.scanned..].iter().position(|b| *b == b'\n') else {
                self.scanned = buf.len();
                // One byte of slack: the `\r` of a `\r\n` not yet complete.
                if buf.len() > self.max_len + 1 {
                    return Err(FrameError::TooLong {
                        limit: self.max_len,
                    });
                }
                return Ok(None);
            };
            let end = self.scanned + pos;
            self.scanned = 0;
            // The limit is on the message: a line ending `\r\n` is as long as one ending `\n`.
            let content = if end > 0 && buf[end - 1] == b'\r' {
                end - 1
            } else {
                end
            };
            if content > self.max_len {
                return Err(FrameError::TooLong {
                    limit: self.max_len,
                });
            }
            let mut line = buf.split_to(end + 1).freeze();
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines are keep-alives, not messages
            }
            return Ok(Some(line));
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        // A last line without its `\n` still counts, as with `lines()`, and has the same
        // limit: `decode` allowed one byte of slack for a `\r` that no `\n` will follow now.
        self.scanned = 0;
        if buf.len() > self.max_len {
            return Err(FrameError::TooLong {
                limit: self.max_len,
            });
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            buf.clear();
            return Ok(None);
        }
        let line = buf.split().freeze();
        Ok(Some(line))
    }
}

impl Encoder<Bytes> for NdjsonCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.reserve(item.len() + 1);
        dst.extend_from_slice(&item);
        dst.extend_from_slice(b"\n");
        Ok(())
    }
}

/// Serialize a value as one NDJSON line (with its `\n`); number ids are written verbatim.
pub fn to_line<T: serde::Serialize>(value: &T) -> Bytes {
    let mut out = serde_json::to_vec(value).unwrap_or_else(|e| {
        // Serializing our own protocol types cannot fail (no maps with non-string keys);
        // if it ever does, answer with an internal error rather than a broken line.
        format!(r#"{{"jsonrpc":"2.0","error":{{"code":-32603,"message":"could not encode reply: {e}"}},"id":null}}"#)
            .into_bytes()
    });
    out.push(b'\n');
    // The vector grew by doubling: a reply of 61 kB could sit in 122 kB (the `\n`, or the
    // `"id"` after a long result, doubling a vector sized to the result), held for as long as
    // the reply waits to be written. Large leftovers are given back (in place, for large
    // allocations); small replies are left as they are.
    if out.capacity() - out.len() >= SHRINK_SLACK {
        out.shrink_to_fit();
    }
    Bytes::from(out)
}

/// Unused capacity from which [`to_line`] shrinks a reply's buffer.
const SHRINK_SLACK: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(codec: &mut NdjsonCodec, input: &[u8]) -> Vec<Result<Bytes, String>> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => out.push(Ok(f)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn splits_lines_and_skips_blank_ones() {
        let mut c = NdjsonCodec::new(100);
        let got = frames(&mut c, b"{\"a\":1}\n\n  \r\n{\"b\":2}\r\n{\"c\"");
        assert_eq!(
            got,
            vec![Ok(Bytes::from("{\"a\":1}")), Ok(Bytes::from("{\"b\":2}"))]
        );
    }

    #[test]
    fn partial_lines_are_resumed() {
        let mut c = NdjsonCodec::new(100);
        let mut buf = BytesMut::from(&b"{\"a\""[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b":1}\n");
        assert_eq!(c.decode(&mut buf).unwrap(), Some(Bytes::from("{\"a\":1}")));
    }

    #[test]
    fn over_the_limit_is_an_error_with_or_without_newline() {
        let mut c = NdjsonCodec::new(8);
        let got = frames(&mut c, b"0123456789\n");
        assert_eq!(
            got,
            vec![Err("message over the size limit of 8 bytes".into())]
        );
        let mut c = NdjsonCodec::new(8);
        let got = frames(&mut c, b"0123456789");
        assert_eq!(got.len(), 1);
        assert!(got[0].is_err());
        // exactly at the limit is fine, with either line ending
        let mut c = NdjsonCodec::new(8);
        assert_eq!(
            frames(&mut c, b"01234567\n"),
            vec![Ok(Bytes::from("01234567"))]
        );
        let mut c = NdjsonCodec::new(8);
        assert_eq!(
            frames(&mut c, b"01234567\r\n"),
            vec![Ok(Bytes::from("01234567"))]
        );
        let mut c = NdjsonCodec::new(8);
        assert!(frames(&mut c, b"012345678\r\n")[0].is_err());
    }

    #[test]
    fn eof_yields_the_unterminated_last_line() {
        let mut c = NdjsonCodec::new(100);
        let mut buf = BytesMut::from(&b"{\"x\":1}"[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert_eq!(
            c.decode_eof(&mut buf).unwrap(),
            Some(Bytes::from("{\"x\":1}"))
        );
        assert!(c.decode_eof(&mut buf).unwrap().is_none());
    }

    /// Found by the `codec` fuzz target: at the end of the stream, a last line one byte over
    /// the limit (the slack `decode` keeps for a `\r\n` in progress) was yielded as a frame.
    #[test]
    fn the_unterminated_last_line_has_the_same_limit() {
        for tail in [&b"012345678"[..], b"0123\r5678", b"         "] {
            let mut c = NdjsonCodec::new(8);
            let mut buf = BytesMut::from(tail);
            assert!(c.decode(&mut buf).unwrap().is_none());
            assert!(
                matches!(
                    c.decode_eof(&mut buf),
                    Err(FrameError::TooLong { limit: 8 })
                ),
                "{tail:?}"
            );
        }
        let mut c = NdjsonCodec::new(8);
        let mut buf = BytesMut::from(&b"01234567"[..]);
        assert_eq!(
            c.decode_eof(&mut buf).unwrap(),
            Some(Bytes::from("01234567"))
        );
    }
}
