//! The JSON-RPC 2.0 envelope: ids, requests, responses, error objects, and batch parsing.
//!
//! Parsing is two-staged, as the specification describes: a line is first parsed as any JSON
//! value (failure: -32700), then each request object is checked for the envelope's shape
//! (failure: -32600). Params are left as raw JSON here; the method registry types them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ErrorCode, RpcError};

/// A request id: a string, a number, or null, echoed back in the response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Number(serde_json::Number),
    String(String),
    Null,
}

impl From<u64> for Id {
    fn from(n: u64) -> Self {
        Id::Number(n.into())
    }
}

/// One request or notification, after the envelope checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    pub jsonrpc: &'static str,
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// `None` for a notification: the server sends no reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
}

impl Request {
    pub fn new(id: impl Into<Id>, method: impl Into<String>, params: Option<Value>) -> Self {
        Request {
            jsonrpc: "2.0",
            method: method.into(),
            params,
            id: Some(id.into()),
        }
    }

    pub fn notification(method: impl Into<String>, params: Option<Value>) -> Self {
        Request {
            jsonrpc: "2.0",
            method: method.into(),
            params,
            id: None,
        }
    }

    pub fn is_notification(&self) -> bool {
        self.id.is_none()
    }
}

/// A response: exactly one of `result` and `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub jsonrpc: String,
    #[serde(flatten)]
    pub payload: Payload,
    pub id: Id,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    #[serde(rename = "result")]
    Result(Value),
    #[serde(rename = "error")]
    Error(RpcError),
}

impl Response {
    pub fn result(id: Id, result: Value) -> Self {
        Response {
            jsonrpc: "2.0".into(),
            payload: Payload::Result(result),
            id,
        }
    }

    pub fn error(id: Id, error: RpcError) -> Self {
        Response {
            jsonrpc: "2.0".into(),
            payload: Payload::Error(error),
            id,
        }
    }

    pub fn into_result(self) -> Result<Value, RpcError> {
        match self.payload {
            Payload::Result(v) => Ok(v),
            Payload::Error(e) => Err(e),
        }
    }
}

/// A server-to-client notification (`query.event`, `event`): no id, never answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub jsonrpc: String,
    pub method: String,
    pub params: Value,
}

impl Notification {
    pub fn new(method: impl Into<String>, params: Value) -> Self {
        Notification {
            jsonrpc: "2.0".into(),
            method: method.into(),
            params,
        }
    }
}

/// What one received line holds.
#[derive(Debug)]
pub enum Incoming {
    /// One request object, or an invalid one that still gets an error reply.
    Single(Result<Request, Response>),
    /// A non-empty array: each element is answered on its own (notifications excepted).
    Batch(Vec<Result<Request, Response>>),
    /// Not JSON, or an empty batch: one error response to send back.
    Invalid(Response),
}

/// Parse one NDJSON frame into requests, per the JSON-RPC 2.0 specification.
pub fn parse_incoming(frame: &[u8]) -> Incoming {
    let value: Value = match serde_json::from_slice(frame) {
        Ok(v) => v,
        Err(e) => {
            return Incoming::Invalid(Response::error(
                Id::Null,
                RpcError::new(ErrorCode::ParseError, format!("parse error: {e}")),
            ));
        }
    };
    match value {
        Value::Array(items) if items.is_empty() => Incoming::Invalid(Response::error(
            Id::Null,
            RpcError::new(ErrorCode::InvalidRequest, "invalid request: empty batch"),
        )),
        Value::Array(items) => Incoming::Batch(items.into_iter().map(check_request).collect()),
        other => Incoming::Single(check_request(other)),
    }
}

/// Check one value against the request object's shape.
pub fn check_request(value: Value) -> Result<Request, Response> {
    let Value::Object(mut obj) = value else {
        return Err(invalid(Id::Null, "a request must be a JSON object"));
    };
    // The id is echoed even when something else is wrong, when it is itself valid.
    let id = match obj.remove("id") {
        None => None,
        Some(Value::Null) => Some(Id::Null),
        Some(Value::Number(n)) => Some(Id::Number(n)),
        Some(Value::String(s)) => Some(Id::String(s)),
        Some(_) => return Err(invalid(Id::Null, "`id` must be a string, a number or null")),
    };
    let reply_id = id.clone().unwrap_or(Id::Null);
    match obj.remove("jsonrpc") {
        Some(Value::String(v)) if v == "2.0" => {}
        _ => return Err(invalid(reply_id, "`jsonrpc` must be exactly \"2.0\"")),
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return Err(invalid(reply_id, "`method` must be a string")),
        None => return Err(invalid(reply_id, "`method` is missing")),
    };
    let params = match obj.remove("params") {
        None => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => return Err(invalid(reply_id, "`params` must be an object or an array")),
    };
    if let Some(extra) = obj.keys().next() {
        return Err(invalid(
            reply_id,
            &format!("unknown member `{extra}` in request"),
        ));
    }
    Ok(Request {
        jsonrpc: "2.0",
        method,
        params,
        id,
    })
}

fn invalid(id: Id, why: &str) -> Response {
    Response::error(
        id,
        RpcError::new(ErrorCode::InvalidRequest, format!("invalid request: {why}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(r: &Response) -> i64 {
        match &r.payload {
            Payload::Error(e) => e.code,
            Payload::Result(_) => panic!("expected an error, got {r:?}"),
        }
    }

    #[test]
    fn parse_errors_and_invalid_requests() {
        match parse_incoming(b"{nope") {
            Incoming::Invalid(r) => assert_eq!(code(&r), -32700),
            other => panic!("{other:?}"),
        }
        match parse_incoming(b"[]") {
            Incoming::Invalid(r) => assert_eq!(code(&r), -32600),
            other => panic!("{other:?}"),
        }
        for bad in [
            json!(1),
            json!({"jsonrpc": "1.0", "method": "x", "id": 1}),
            json!({"jsonrpc": "2.0", "method": 5, "id": 1}),
            json!({"jsonrpc": "2.0", "id": 1}),
            json!({"jsonrpc": "2.0", "method": "x", "params": 3, "id": 1}),
            json!({"jsonrpc": "2.0", "method": "x", "id": {"a": 1}}),
            json!({"jsonrpc": "2.0", "method": "x", "id": 1, "extra": true}),
        ] {
            let err = check_request(bad.clone()).expect_err(&bad.to_string());
            assert_eq!(code(&err), -32600, "{bad}");
        }
    }

    #[test]
    fn invalid_request_keeps_a_valid_id() {
        let err = check_request(json!({"jsonrpc": "2.0", "id": "abc"})).unwrap_err();
        assert_eq!(err.id, Id::String("abc".into()));
    }

    #[test]
    fn batch_and_notification() {
        let frame = br#"[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"b"},5]"#;
        let Incoming::Batch(items) = parse_incoming(frame) else {
            panic!("not a batch")
        };
        assert_eq!(items.len(), 3);
        assert!(!items[0].as_ref().unwrap().is_notification());
        assert!(items[1].as_ref().unwrap().is_notification());
        assert!(items[2].is_err());
    }

    #[test]
    fn response_round_trip() {
        let ok = Response::result(Id::from(7), json!("pong"));
        let text = serde_json::to_string(&ok).unwrap();
        assert_eq!(text, r#"{"jsonrpc":"2.0","result":"pong","id":7}"#);
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), ok);
        let err = Response::error(Id::Null, RpcError::new(ErrorCode::MethodNotFound, "no"));
        let text = serde_json::to_string(&err).unwrap();
        assert_eq!(
            text,
            r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"no"},"id":null}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), err);
    }
}
