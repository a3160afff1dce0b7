//! A blocking JSON-RPC client over the daemon's socket, and how a reply is judged.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

/// What counts as a successful reply.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    /// The request line itself, written back by the echo baseline.
    Echo,
    /// A JSON-RPC `result` (optionally equal to this string); an `error` is a failed request.
    Result(Option<&'static str>),
    /// A JSON-RPC `error` with this code; any other reply is a failed request.
    ErrorCode(i64),
}

/// How one request went: `Ok(Ok(()))` a success, `Ok(Err(message))` a failed request (a
/// JSON-RPC error reply or a wrong answer), `Err` a broken connection (or an agent that could
/// not be run at all).
pub(crate) type Attempt = Result<Result<(), String>>;

/// One persistent NDJSON connection.
pub(crate) struct Client {
    pub(crate) reader: BufReader<UnixStream>,
    pub(crate) writer: UnixStream,
    pub(crate) buf: String,
    pub(crate) next_id: u64,
}

/// The payload of one reply line.
pub(crate) enum Body {
    Result(Value),
    /// A JSON-RPC error: its code (when it is an integer) and `JSON-RPC error <code>: <message>`.
    Error {
        code: Option<i64>,
        msg: String,
    },
    /// Neither `result` nor `error` (for instance an echoed request).
    Other,
}

impl Client {
    pub(crate) fn connect(socket: &Path, timeout: Duration) -> Result<Client> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        stream
            .set_read_timeout(Some(timeout))
            .context("setting the socket read timeout")?;
        stream
            .set_write_timeout(Some(timeout))
            .context("setting the socket write timeout")?;
        let writer = stream.try_clone().context("cloning the socket handle")?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            buf: String::with_capacity(256),
            next_id: 1_000_000_000,
        })
    }

    /// Connects and checks that the daemon answers `system.ping` with "pong".
    pub(crate) fn connect_and_ping(socket: &Path, timeout: Duration) -> Result<Client> {
        let mut client = Client::connect(socket, timeout)?;
        let pong = client.call("system.ping", json!({}))?;
        ensure!(
            pong.as_str() == Some("pong"),
            "system.ping answered {pong} instead of \"pong\""
        );
        Ok(client)
    }

    /// Sends one request line and reads its reply, skipping server notifications. `Ok(Err)` is
    /// a JSON-RPC error reply or a result other than the expected one; `Err` means the
    /// connection is unusable (I/O error, timeout, EOF, malformed or mismatched reply).
    pub(crate) fn exchange(&mut self, line: &str, id: u64, expect: Expect) -> Attempt {
        let body = self.round_trip(line, id)?;
        judge(expect, id, body)
    }

    pub(crate) fn round_trip(&mut self, line: &str, id: u64) -> Result<Body> {
        self.writer
            .write_all(line.as_bytes())
            .map_err(io_error)
            .context("sending a request")?;
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_line(&mut self.buf)
                .map_err(io_error)
                .context("reading a reply")?;
            ensure!(
                n > 0 && self.buf.ends_with('\n'),
                "the server closed the connection"
            );
            if let Some(body) = parse_reply(&self.buf, id)? {
                return Ok(body);
            }
        }
    }

    /// A one-off call; a JSON-RPC error becomes `Err`.
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut line =
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        line.push('\n');
        match self
            .round_trip(&line, id)
            .with_context(|| format!("calling {method}"))?
        {
            Body::Result(v) => Ok(v),
            Body::Error { msg, .. } => bail!("{method} failed: {msg}"),
            Body::Other => bail!("{method}: the reply has neither `result` nor `error`"),
        }
    }
}

/// The id of `line` when it is a success reply whose result is what `expect` asks for, read
/// without building the reply's JSON tree: the load generator's own CPU time comes out of the
/// two cores the daemon runs on. `None` for anything else (an error, a notification, a null or
/// unexpected result, a malformed line), which the full parse then judges and explains.
pub(crate) fn quick_success(line: &str, expect: Expect) -> Option<u64> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Reply<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
        #[serde(borrow)]
        result: Option<&'a RawValue>,
        #[serde(borrow)]
        error: Option<&'a RawValue>,
        #[serde(borrow)]
        method: Option<&'a RawValue>,
    }
    let reply: Reply = serde_json::from_str(line).ok()?;
    if reply.error.is_some() || reply.method.is_some() {
        return None;
    }
    let (result, id) = (reply.result?, reply.id?.get().parse::<u64>().ok()?);
    match expect {
        Expect::Result(None) => Some(id),
        Expect::Result(Some(want)) => {
            (serde_json::from_str::<&str>(result.get()).ok()? == want).then_some(id)
        }
        Expect::Echo | Expect::ErrorCode(_) => None,
    }
}

/// Whether reply `body` to request `id` is what `expect` asks for: `Ok(Err)` is a JSON-RPC
/// error reply or a wrong result, `Err` a protocol violation.
pub(crate) fn judge(expect: Expect, id: u64, body: Body) -> Attempt {
    Ok(match (expect, body) {
        (Expect::Echo, Body::Other) => Ok(()),
        (Expect::Echo, _) => {
            bail!("the echo server sent something other than the request back")
        }
        (Expect::Result(_), Body::Error { msg, .. }) => Err(msg),
        (Expect::Result(None), Body::Result(_)) => Ok(()),
        (Expect::Result(Some(want)), Body::Result(v)) => {
            if v.as_str() == Some(want) {
                Ok(())
            } else {
                Err(format!(
                    "unexpected result {} (expected {want:?})",
                    clip(&v.to_string())
                ))
            }
        }
        (Expect::Result(_) | Expect::ErrorCode(_), Body::Other) => {
            bail!("reply {id} has neither `result` nor `error`")
        }
        (Expect::ErrorCode(want), Body::Error { code, msg }) => {
            if code == Some(want) {
                Ok(())
            } else {
                Err(format!("{msg} (expected error {want})"))
            }
        }
        (Expect::ErrorCode(want), Body::Result(v)) => Err(format!(
            "unexpected result {} (expected error {want})",
            clip(&v.to_string())
        )),
    })
}

/// Makes socket timeouts say so.
pub(crate) fn io_error(e: io::Error) -> anyhow::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => anyhow!("timed out ({e})"),
        _ => anyhow::Error::new(e),
    }
}

/// Parses one line from the server into its JSON object; `Ok(None)` for a server
/// notification (a `method` and no `id`).
pub(crate) fn reply_object(line: &str) -> Result<Option<serde_json::Map<String, Value>>> {
    let v: Value = serde_json::from_str(line)
        .with_context(|| format!("the reply is not JSON: {}", clip(line)))?;
    let Value::Object(obj) = v else {
        bail!("the reply is not a JSON object: {}", clip(line));
    };
    let notification = reply_id(&obj).is_none() && obj.contains_key("method");
    Ok((!notification).then_some(obj))
}

/// A reply's `id`, unless it is missing or null.
pub(crate) fn reply_id(obj: &serde_json::Map<String, Value>) -> Option<&Value> {
    obj.get("id").filter(|v| !v.is_null())
}

/// Parses one reply line for request `id`; `Ok(None)` for a server notification.
fn parse_reply(line: &str, id: u64) -> Result<Option<Body>> {
    let Some(obj) = reply_object(line)? else {
        return Ok(None);
    };
    let got = reply_id(&obj);
    let error = obj.get("error");
    match got {
        Some(v) if v.as_u64() == Some(id) => {}
        // An error that could not be tied to a request (e.g. a parse error) still answers it.
        None if error.is_some() => {}
        _ => bail!(
            "reply for request {id} has id {}: {}",
            got.map_or_else(|| "null".into(), Value::to_string),
            clip(line)
        ),
    }
    Ok(Some(reply_body(&obj)))
}

/// What a reply object carries: its error (as a message), its result, or neither.
pub(crate) fn reply_body(obj: &serde_json::Map<String, Value>) -> Body {
    if let Some(e) = obj.get("error") {
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("(no message)");
        let shown = e.get("code").map_or_else(|| "?".into(), Value::to_string);
        return Body::Error {
            code: e.get("code").and_then(Value::as_i64),
            msg: format!("JSON-RPC error {shown}: {message}"),
        };
    }
    match obj.get("result") {
        Some(r) => Body::Result(r.clone()),
        None => Body::Other,
    }
}

pub(crate) fn clip(s: &str) -> String {
    let s = s.trim_end();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_success_takes_only_plain_successes() {
        let ok = r#"{"jsonrpc":"2.0","id":7,"result":{"key":"k","value":"v"}}"#;
        assert_eq!(quick_success(ok, Expect::Result(None)), Some(7));
        let pong = r#"{"jsonrpc":"2.0","result":"pong","id":8}"#;
        assert_eq!(quick_success(pong, Expect::Result(Some("pong"))), Some(8));
        for (line, expect) in [
            // The wrong result, an error, a null result, a notification, a string id, no id,
            // an escaped string (left to the full parse), a duplicate member, not JSON.
            (pong, Expect::Result(Some("ping"))),
            (
                r#"{"jsonrpc":"2.0","id":9,"error":{"code":-32603,"message":"x"}}"#,
                Expect::Result(None),
            ),
            (
                r#"{"jsonrpc":"2.0","id":9,"result":null}"#,
                Expect::Result(None),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"event","params":{}}"#,
                Expect::Result(None),
            ),
            (
                r#"{"jsonrpc":"2.0","id":"9","result":1}"#,
                Expect::Result(None),
            ),
            (r#"{"jsonrpc":"2.0","result":1}"#, Expect::Result(None)),
            (
                r#"{"jsonrpc":"2.0","id":9,"result":"p\u006fng"}"#,
                Expect::Result(Some("pong")),
            ),
            (r#"{"id":9,"id":10,"result":1}"#, Expect::Result(None)),
            ("{nope", Expect::Result(None)),
            (ok, Expect::ErrorCode(-32601)),
        ] {
            assert_eq!(quick_success(line, expect), None, "{line}");
        }
    }
}
