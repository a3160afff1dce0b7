//! The JSON-RPC 2.0 envelope: ids, requests, responses, error objects, and batch parsing.
//!
//! Parsing is two-staged, as the specification describes: a line is first parsed as JSON
//! (failure: -32700), then each request object is checked for the envelope's shape
//! (failure: -32600). Params are left as raw JSON here; the method registry types them.
//!
//! A request's `id` is echoed back exactly as it was written: a number id keeps its JSON text
//! ([`RawNumber`], serde_json's `RawValue`), so `123456789012345678901234567890`, `1.50` or
//! `1e400` come back unchanged.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::{ErrorCode, RpcError};

/// A request id: a string, a number, or null, echoed back in the response.
///
/// Two ids are equal when they are written the same way: `Id::from(7)` equals the id of a
/// request that sent `7`, not one that sent `7.0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Id {
    Number(RawNumber),
    String(String),
    Null,
}

impl From<u64> for Id {
    fn from(n: u64) -> Self {
        Id::Number(n.into())
    }
}

impl From<String> for Id {
    fn from(s: String) -> Self {
        Id::String(s)
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Self {
        Id::String(s.into())
    }
}

impl From<RawNumber> for Id {
    fn from(n: RawNumber) -> Self {
        Id::Number(n)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Id::Number(n) => n.serialize(s),
            Id::String(v) => s.serialize_str(v),
            Id::Null => s.serialize_unit(),
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl<'de> Visitor<'de> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a number or null")
            }
            fn visit_unit<E>(self) -> Result<Id, E> {
                Ok(Id::Null)
            }
            fn visit_none<E>(self) -> Result<Id, E> {
                Ok(Id::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Id, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_str<E>(self, v: &str) -> Result<Id, E> {
                Ok(Id::String(v.into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Id, E> {
                Ok(Id::String(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Id, E> {
                Ok(Id::from(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Id, E> {
                Ok(Id::Number(v.into()))
            }
            fn visit_u128<E>(self, v: u128) -> Result<Id, E> {
                Ok(Id::Number(RawNumber::from_number_text(v.to_string())))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Id, E> {
                Ok(Id::Number(RawNumber::from_number_text(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Id, E> {
                serde_json::Number::from_f64(v)
                    .map(|n| Id::Number(n.into()))
                    .ok_or_else(|| E::custom("a request id must be a finite number"))
            }
        }
        d.deserialize_any(IdVisitor)
    }
}

/// A JSON number kept as its exact text, as a request wrote it (`7`, `-0`, `1.50`, `1e400`,
/// `123456789012345678901234567890`): what an [`Id`] echoes. serde_json writes it back
/// verbatim.
///
/// Always valid JSON number text: [`RawNumber::new`] checks the grammar.
#[derive(Debug, Clone)]
pub struct RawNumber(Box<RawValue>);

impl RawNumber {
    /// `text` as a number, when it is one by JSON's grammar (RFC 8259 §6), at any magnitude
    /// and precision.
    pub fn new(text: &str) -> Option<RawNumber> {
        // Valid JSON (serde_json checks it) that starts like a number is a number.
        let starts_as_number = matches!(text.as_bytes().first(), Some(b'-' | b'0'..=b'9'));
        starts_as_number
            .then(|| RawValue::from_string(text.to_owned()).ok())
            .flatten()
            .filter(|raw| raw.get().len() == text.len())
            .map(RawNumber)
    }

    /// The number's JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The number as a `u64`, when it is written as an integer that fits.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_str().parse().ok()
    }

    /// From text known to be a JSON number (the `Display` of a number type).
    fn from_number_text(text: String) -> RawNumber {
        match RawValue::from_string(text) {
            Ok(raw) => RawNumber(raw),
            // Unreachable for the number types' own `Display`; stay a valid number anyway.
            Err(_) => RawNumber(RawValue::from_string("0".into()).unwrap_or_default()),
        }
    }
}

/// Ids compare by their text: `7` and `7.0` are different ids.
impl PartialEq for RawNumber {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RawNumber {}

impl std::hash::Hash for RawNumber {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for RawNumber {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<u64> for RawNumber {
    fn from(n: u64) -> Self {
        RawNumber::from_number_text(n.to_string())
    }
}

impl From<i64> for RawNumber {
    fn from(n: i64) -> Self {
        RawNumber::from_number_text(n.to_string())
    }
}

impl From<serde_json::Number> for RawNumber {
    fn from(n: serde_json::Number) -> Self {
        RawNumber::from_number_text(n.to_string())
    }
}

impl Serialize for RawNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Id::deserialize(d)? {
            Id::Number(n) => Ok(n),
            _ => Err(de::Error::custom("expected a number")),
        }
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

/// A success response whose result is JSON text already: the server sends it as is, so a
/// result is serialized once and never built as a [`Value`]. (Serialize only; clients read a
/// [`Response`].)
#[derive(Debug, Clone, Serialize)]
pub struct RawResponse {
    jsonrpc: &'static str,
    pub result: Box<RawValue>,
    pub id: Id,
}

impl RawResponse {
    pub fn new(id: Id, result: Box<RawValue>) -> Self {
        RawResponse {
            jsonrpc: "2.0",
            result,
            id,
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

/// Most requests in one batch, by default (`ipc.max_batch_requests`).
pub const DEFAULT_MAX_BATCH: usize = 1000;

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
///
/// Any valid JSON is past the first stage, however large or precise its numbers, except
/// that numbers outside `f64`'s range (`1e400`) are refused with -32700 everywhere but in an
/// `id` (serde_json cannot hold them in a [`Value`]). A request's `id` keeps its exact text.
/// A batch holds at most `max_batch` requests; a longer one is refused whole with -32600.
pub fn parse_incoming(frame: &[u8], max_batch: usize) -> Incoming {
    // A batch is the one line that starts with `[`: parse it as an array of items.
    let parsed = if frame.trim_ascii_start().first() == Some(&b'[') {
        let mut de = serde_json::Deserializer::from_slice(frame);
        BoundedBatch(max_batch)
            .deserialize(&mut de)
            .and_then(|batch| de.end().map(|()| Frame::Batch(batch)))
    } else {
        serde_json::from_slice(frame).map(Frame::Single)
    };
    let parsed = match parsed {
        Ok(f) => f,
        Err(e) => {
            return Incoming::Invalid(Response::error(
                Id::Null,
                RpcError::new(ErrorCode::ParseError, format!("parse error: {e}")),
            ));
        }
    };
    let check = |item: Item| match item {
        Item::Object(members) => check_members(members),
        Item::Other => Err(invalid(Id::Null, "a request must be a JSON object")),
    };
    match parsed {
        Frame::Batch(batch) if batch.len == 0 => Incoming::Invalid(Response::error(
            Id::Null,
            RpcError::new(ErrorCode::InvalidRequest, "invalid request: empty batch"),
        )),
        Frame::Batch(batch) if batch.len > max_batch => Incoming::Invalid(Response::error(
            Id::Null,
            RpcError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "invalid request: a batch of {} requests is over the limit of {max_batch} \
                     (ipc.max_batch_requests); nothing in it was run",
                    batch.len
                ),
            ),
        )),
        Frame::Batch(batch) => Incoming::Batch(batch.items.into_iter().map(check).collect()),
        Frame::Single(item) => Incoming::Single(check(item)),
    }
}

/// The id written as `text`: `Err` when it is not a string, a number or null.
fn id_from_text(text: &[u8]) -> Result<Id, ()> {
    match text.first() {
        Some(b'"') => serde_json::from_slice(text).map(Id::String).map_err(drop),
        Some(b'n') if text == b"null" => Ok(Id::Null),
        _ => std::str::from_utf8(text)
            .ok()
            .and_then(RawNumber::new)
            .map(Id::Number)
            .ok_or(()),
    }
}

/// Check a request object's members.
fn check_members(members: Members) -> Result<Request, Response> {
    // The id is echoed even when something else is wrong, when it is itself valid.
    let id_is_string = members
        .id
        .as_ref()
        .is_some_and(|r| r.get().starts_with('"'));
    let id = match members.id.map(|raw| id_from_text(raw.get().as_bytes())) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(())) if id_is_string => {
            return Err(invalid(
                Id::Null,
                "`id` is a string that cannot be read (a lone UTF-16 surrogate escape such as \\ud800?)",
            ));
        }
        Some(Err(())) => {
            return Err(invalid(Id::Null, "`id` must be a string, a number or null"));
        }
    };
    let reply_id = || id.clone().unwrap_or(Id::Null);
    if members.jsonrpc != Some(true) {
        return Err(invalid(reply_id(), "`jsonrpc` must be exactly \"2.0\""));
    }
    let method = match members.method {
        Some(Some(m)) => m,
        Some(None) => return Err(invalid(reply_id(), "`method` must be a string")),
        None => return Err(invalid(reply_id(), "`method` is missing")),
    };
    let params = match members.params {
        None => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => {
            return Err(invalid(
                reply_id(),
                "`params` must be an object or an array",
            ));
        }
    };
    if let Some(extra) = members.extra {
        return Err(invalid(
            reply_id(),
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

/// A line, as the first stage of parsing reads it: each request object as its [`Members`]
/// (the `id` kept as its raw JSON text, which serde_json checks without converting, so a number
/// of any size passes), anything else checked in full and set aside.
enum Frame {
    Single(Item),
    Batch(Batch),
}

/// A batch's items, up to the limit; past it the rest are only counted (checked as JSON, not
/// kept), so that an 8 MiB line of `[1,1,1,...]` costs no more memory than the limit allows.
struct Batch {
    items: Vec<Item>,
    len: usize,
}

/// Reads a [`Batch`] keeping at most this many items.
struct BoundedBatch(usize);

impl<'de> DeserializeSeed<'de> for BoundedBatch {
    type Value = Batch;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Batch, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedBatch {
    type Value = Batch;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0));
        while items.len() < self.0 {
            match seq.next_element::<Item>()? {
                Some(item) => items.push(item),
                None => {
                    let len = items.len();
                    return Ok(Batch { items, len });
                }
            }
        }
        let mut len = items.len();
        while seq.next_element::<de::IgnoredAny>()?.is_some() {
            len += 1;
        }
        Ok(Batch { items, len })
    }
}

enum Item {
    Object(Members),
    /// Not an object (still parsed in full, so that the whole line is checked as before).
    Other,
}

/// A request object's members, read in one pass with no map and no copy of the envelope's
/// strings: the request path's first step, for every request. A member given twice counts
/// once, with its last value.
#[derive(Default)]
struct Members {
    /// Kept as its JSON text.
    id: Option<Box<RawValue>>,
    /// Whether `jsonrpc` is exactly "2.0", when present.
    jsonrpc: Option<bool>,
    /// `method`, when present: `None` when it is not a string.
    method: Option<Option<String>>,
    params: Option<Value>,
    /// The first member that has no place in a request.
    extra: Option<String>,
}

enum Key {
    Id,
    Jsonrpc,
    Method,
    Params,
    Other(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "id" => Key::Id,
                    "jsonrpc" => Key::Jsonrpc,
                    "method" => Key::Method,
                    "params" => Key::Params,
                    other => Key::Other(other.to_string()),
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The visits of a number, a boolean or null.
macro_rules! scalar_values {
    ($other:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
}

/// A member's value read as a string when it is one (`Some`), else checked in full like any
/// JSON value and dropped (`None`).
struct MaybeString(Option<String>);

impl<'de> Deserialize<'de> for MaybeString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = MaybeString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            scalar_values!(MaybeString(None));
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(MaybeString(Some(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(MaybeString(Some(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(MaybeString(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(MaybeString(None))
            }
        }
        d.deserialize_any(StrVisitor)
    }
}

fn object<'de, A: MapAccess<'de>>(mut map: A) -> Result<Item, A::Error> {
    let mut m = Members::default();
    while let Some(key) = map.next_key::<Key>()? {
        match key {
            Key::Id => m.id = Some(map.next_value()?),
            Key::Jsonrpc => {
                let MaybeString(v) = map.next_value()?;
                m.jsonrpc = Some(v.as_deref() == Some("2.0"));
            }
            Key::Method => m.method = Some(map.next_value::<MaybeString>()?.0),
            Key::Params => m.params = Some(map.next_value()?),
            Key::Other(name) => {
                // Parsed in full all the same: a bad number in it is a parse error.
                map.next_value::<Value>()?;
                m.extra.get_or_insert(name);
            }
        }
    }
    Ok(Item::Object(m))
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            scalar_values!(Item::Other);
            fn visit_str<E>(self, _: &str) -> Result<Item, E> {
                Ok(Item::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
                while seq.next_element::<Value>()?.is_some() {}
                Ok(Item::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Item, A::Error> {
                object(map)
            }
        }
        d.deserialize_any(ItemVisitor)
    }
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
    fn a_batch_over_the_limit_is_refused_whole_and_counted() {
        let ping = r#"{"jsonrpc":"2.0","id":1,"method":"system.ping"}"#;
        let batch = |n: usize| format!("[{}]", vec![ping; n].join(","));
        match parse_incoming(batch(3).as_bytes(), 3) {
            Incoming::Batch(items) => assert_eq!(items.len(), 3),
            other => panic!("{other:?}"),
        }
        match parse_incoming(batch(4).as_bytes(), 3) {
            Incoming::Invalid(r) => {
                assert_eq!((code(&r), &r.id), (-32600, &Id::Null));
                let Payload::Error(e) = &r.payload else {
                    unreachable!()
                };
                assert!(
                    e.message
                        .contains("a batch of 4 requests is over the limit of 3")
                );
            }
            other => panic!("{other:?}"),
        }
        // Items past the limit are not kept, but the line is still checked as JSON.
        let line = format!("[{}]", vec!["1"; 1_000_000].join(","));
        assert!(matches!(
            parse_incoming(line.as_bytes(), DEFAULT_MAX_BATCH),
            Incoming::Invalid(r) if code(&r) == -32600
        ));
        assert!(matches!(
            parse_incoming(format!("[{ping},1,]").as_bytes(), 1),
            Incoming::Invalid(r) if code(&r) == -32700
        ));
    }

    #[test]
    fn parse_errors_and_invalid_requests() {
        match parse_incoming(b"{nope", DEFAULT_MAX_BATCH) {
            Incoming::Invalid(r) => assert_eq!(code(&r), -32700),
            other => panic!("{other:?}"),
        }
        match parse_incoming(b"[]", DEFAULT_MAX_BATCH) {
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
            let err = single(&bad).expect_err(&bad.to_string());
            assert_eq!(code(&err), -32600, "{bad}");
        }
    }

    #[test]
    fn members_are_read_in_one_pass() {
        let message = |line: &str| match parse_incoming(line.as_bytes(), DEFAULT_MAX_BATCH) {
            Incoming::Single(Err(r)) => match r.payload {
                Payload::Error(e) => (e.code, e.message),
                Payload::Result(_) => unreachable!(),
            },
            other => panic!("{line}: {other:?}"),
        };
        // The first unknown member is named, in the order written.
        assert_eq!(
            message(r#"{"zz":1,"jsonrpc":"2.0","method":"m","aa":[1],"id":1}"#),
            (
                -32600,
                "invalid request: unknown member `zz` in request".into()
            )
        );
        // An escaped member name is its unescaped text.
        let Incoming::Single(Ok(req)) = parse_incoming(
            br#"{"jsonrpc":"2.0","meth\u006fd":"m\n","params":[],"id":"x"}"#,
            DEFAULT_MAX_BATCH,
        ) else {
            panic!("an escaped name is still `method`")
        };
        assert_eq!(
            (req.method.as_str(), req.id),
            ("m\n", Some(Id::String("x".into())))
        );
        // A member given twice counts once, with its last value.
        let Incoming::Single(Ok(req)) = parse_incoming(
            br#"{"jsonrpc":"1.0","method":5,"jsonrpc":"2.0","method":"b","id":1,"id":2}"#,
            DEFAULT_MAX_BATCH,
        ) else {
            panic!("the last values make a valid request")
        };
        assert_eq!((req.method.as_str(), req.id), ("b", Some(Id::from(2))));
        assert_eq!(
            message(r#"{"jsonrpc":["2.0"],"method":"m","id":1}"#).1,
            "invalid request: `jsonrpc` must be exactly \"2.0\""
        );
        assert_eq!(
            message(r#"{"jsonrpc":"2.0","method":{"m":null},"id":1}"#).1,
            "invalid request: `method` must be a string"
        );
        // Members the envelope does not keep are still checked in full.
        for line in [
            r#"{"jsonrpc":"2.0","method":"m","id":1,"extra":[1e400]}"#,
            r#"{"jsonrpc":[1e400],"method":"m","id":1}"#,
            r#"{"jsonrpc":"2.0","method":{"x":1e400},"id":1}"#,
        ] {
            match parse_incoming(line.as_bytes(), DEFAULT_MAX_BATCH) {
                Incoming::Invalid(r) => assert_eq!(code(&r), -32700, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_raw_response_reads_back_as_the_same_response() {
        let result = json!({"key": "k", "value": "v\n\u{e9}", "n": [1, 2.5, null]});
        let raw = |id: Id| {
            let raw = RawResponse::new(id, serde_json::value::to_raw_value(&result).unwrap());
            serde_json::to_string(&raw).unwrap()
        };
        let back: Response = serde_json::from_str(&raw(Id::from(7))).unwrap();
        assert_eq!(back, Response::result(Id::from(7), result.clone()));
        let big = id_from_text(b"123456789012345678901234567890").unwrap();
        let text = raw(big);
        assert!(
            text.ends_with(r#","id":123456789012345678901234567890}"#),
            "{text}"
        );
    }

    /// `value` sent as one line that is not a batch.
    fn single(value: &Value) -> Result<Request, Response> {
        match parse_incoming(value.to_string().as_bytes(), DEFAULT_MAX_BATCH) {
            Incoming::Single(r) => r,
            other => panic!("{value} is not a single request: {other:?}"),
        }
    }

    #[test]
    fn invalid_request_keeps_a_valid_id() {
        let err = single(&json!({"jsonrpc": "2.0", "id": "abc"})).unwrap_err();
        assert_eq!(err.id, Id::String("abc".into()));
    }

    #[test]
    fn an_unreadable_string_id_is_called_a_string() {
        let message = |frame: &[u8]| {
            let Incoming::Single(Err(resp)) = parse_incoming(frame, DEFAULT_MAX_BATCH) else {
                panic!("accepted")
            };
            let Payload::Error(e) = resp.payload else {
                panic!("no error")
            };
            assert_eq!(e.code, -32600);
            e.message
        };
        let m = message(br#"{"jsonrpc":"2.0","id":"\ud800","method":"system.ping"}"#);
        assert!(m.contains("is a string that cannot be read"), "{m}");
        let m = message(br#"{"jsonrpc":"2.0","id":true,"method":"system.ping"}"#);
        assert!(m.contains("must be a string, a number or null"), "{m}");
    }

    #[test]
    fn batch_and_notification() {
        let frame = br#"[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"b"},5]"#;
        let Incoming::Batch(items) = parse_incoming(frame, DEFAULT_MAX_BATCH) else {
            panic!("not a batch")
        };
        assert_eq!(items.len(), 3);
        assert!(!items[0].as_ref().unwrap().is_notification());
        assert!(items[1].as_ref().unwrap().is_notification());
        assert!(items[2].is_err());
    }

    /// The id of the one request in `line`, as `to_line` writes it back in a reply.
    fn echoed_id(line: &str) -> String {
        let Incoming::Single(Ok(req)) = parse_incoming(line.as_bytes(), DEFAULT_MAX_BATCH) else {
            panic!("not a valid request: {line}")
        };
        let reply = Response::result(req.id.expect("an id"), json!("pong"));
        let text = String::from_utf8(serde_json::to_vec(&reply).unwrap()).unwrap();
        let prefix = r#"{"jsonrpc":"2.0","result":"pong","id":"#;
        text.strip_prefix(prefix)
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or_else(|| panic!("unexpected reply {text}"))
            .to_string()
    }

    #[test]
    fn number_ids_are_echoed_verbatim() {
        for id in [
            "123456789012345678901234567890",
            "18446744073709551616",
            "18446744073709551615",
            "-9223372036854775809",
            "1e400",
            "-1E-400",
            "1.50",
            "0.1000000000000000000000000001",
            "-0",
            "7",
            "2.5e+3",
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","method":"system.ping","id":{id}}}"#);
            assert_eq!(echoed_id(&line), id, "{line}");
        }
        // Whitespace around it is not part of the id; strings and null come back as sent.
        assert_eq!(
            echoed_id("{ \"id\" :\t1e400 , \"jsonrpc\":\"2.0\",\"method\":\"m\"}"),
            "1e400"
        );
        assert_eq!(
            echoed_id(r#"{"jsonrpc":"2.0","method":"m","id":"a\"b\u00e9"}"#),
            r#""a\"bé""#
        );
        assert_eq!(
            echoed_id(r#"{"jsonrpc":"2.0","method":"m","id":null}"#),
            "null"
        );
        // An escaped key is still `id`; of two `id` members, the last counts.
        assert_eq!(
            echoed_id(r#"{"jsonrpc":"2.0","method":"m","\u0069d":1e999}"#),
            "1e999"
        );
        assert_eq!(
            echoed_id(r#"{"id":"first","jsonrpc":"2.0","method":"m","id":99999999999999999999}"#),
            "99999999999999999999"
        );
        // Nested objects with `id` members of their own, and strings that end in an escaped
        // backslash or hold quotes, do not confuse it.
        assert_eq!(
            echoed_id(
                r#"{"params":{"k":"a\\","id":9,"q":"\"}"},"jsonrpc":"2.0","method":"m","id":1.0e1}"#
            ),
            "1.0e1"
        );
        assert_eq!(
            echoed_id(
                r#"{"params":{"id":1,"x":[{"id":2}],"s":"\"id\":3"},"jsonrpc":"2.0","method":"m","id":4.0}"#
            ),
            "4.0"
        );
    }

    #[test]
    fn number_ids_in_batches_and_invalid_requests_are_echoed_verbatim() {
        let line = br#"[{"jsonrpc":"2.0","method":"a","id":1e400},5,{"jsonrpc":"2.0","method":"b"},{"jsonrpc":"1.0","method":"c","id":123456789012345678901234567890},[{"id":1}],{"jsonrpc":"2.0","method":"d","id":-0.0}]"#;
        let Incoming::Batch(items) = parse_incoming(line, DEFAULT_MAX_BATCH) else {
            panic!("not a batch")
        };
        let ids: Vec<Option<String>> = items
            .iter()
            .map(|item| {
                let id = match item {
                    Ok(req) => req.id.clone()?,
                    Err(resp) => resp.id.clone(),
                };
                Some(String::from_utf8(serde_json::to_vec(&id).unwrap()).unwrap())
            })
            .collect();
        let want = [
            Some("1e400"),
            Some("null"),
            None,
            Some("123456789012345678901234567890"),
            Some("null"),
            Some("-0.0"),
        ];
        assert_eq!(ids, want.map(|w| w.map(String::from)));
        assert_eq!(code(items[3].as_ref().unwrap_err()), -32600);
        // A whole batch of replies, as the daemon writes it.
        let replies: Vec<Response> = items
            .into_iter()
            .filter_map(|item| match item {
                Ok(req) => Some(Response::result(req.id?, json!(1))),
                Err(resp) => Some(resp),
            })
            .collect();
        let text = String::from_utf8(serde_json::to_vec(&replies).unwrap()).unwrap();
        assert!(text.contains(r#""result":1,"id":1e400}"#), "{text}");
        assert!(
            text.contains(r#","id":123456789012345678901234567890}"#),
            "{text}"
        );
    }

    #[test]
    fn only_invalid_json_numbers_are_refused() {
        for bad in [
            "01", "1.", ".5", "+1", "1e", "--1", "0x10", "1.e5", "NaN", "Infinity",
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","method":"m","id":{bad}}}"#);
            match parse_incoming(line.as_bytes(), DEFAULT_MAX_BATCH) {
                Incoming::Invalid(r) => assert_eq!((code(&r), &r.id), (-32700, &Id::Null)),
                other => panic!("{bad}: {other:?}"),
            }
            assert!(RawNumber::new(bad).is_none(), "{bad}");
        }
        for good in [
            "0",
            "-0",
            "1e400",
            "1E+2",
            "0.0e-0",
            "123456789012345678901234567890",
        ] {
            assert_eq!(RawNumber::new(good).unwrap().as_str(), good);
        }
        // Other id types are -32600 with id null, nested however deep.
        let deep = format!(
            r#"{{"jsonrpc":"2.0","method":"m","id":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        for line in [
            r#"{"jsonrpc":"2.0","method":"m","id":true}"#,
            r#"{"jsonrpc":"2.0","method":"m","id":{"a":1e400}}"#,
            deep.as_str(),
        ] {
            let Incoming::Single(Err(r)) = parse_incoming(line.as_bytes(), DEFAULT_MAX_BATCH)
            else {
                panic!("{line}")
            };
            assert_eq!((code(&r), &r.id), (-32600, &Id::Null));
        }
        // Outside an id, a number beyond f64 is still a parse error, as is deep nesting.
        for line in [
            r#"{"jsonrpc":"2.0","method":"m","id":1,"params":{"x":1e400}}"#.to_string(),
            r#"{"jsonrpc":"2.0","method":"m","id":1,"params":[{"x":"\ud800"}]}"#.to_string(),
            r#"{"jsonrpc":"2.0","method":"m","id":1,"params":{"\udc00":1}}"#.to_string(),
            format!("{}{}", "[".repeat(200), "]".repeat(200)),
        ] {
            match parse_incoming(line.as_bytes(), DEFAULT_MAX_BATCH) {
                Incoming::Invalid(r) => assert_eq!(code(&r), -32700),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn ids_compare_by_their_text_and_round_trip_for_clients() {
        assert_eq!(Id::from(7), Id::Number(RawNumber::new("7").unwrap()));
        assert_ne!(Id::from(7), Id::Number(RawNumber::new("7.0").unwrap()));
        // A client reading a reply gets the same id back that it sent.
        for id in [
            Id::from(0),
            Id::from(u64::MAX),
            Id::Number(RawNumber::from(-5i64)),
            Id::from("x"),
            Id::Null,
        ] {
            let text = serde_json::to_string(&Response::result(id.clone(), json!(null))).unwrap();
            assert_eq!(
                serde_json::from_str::<Response>(&text).unwrap().id,
                id,
                "{text}"
            );
        }
        // serde_json writes number ids verbatim, whatever their size.
        let big = Id::Number(RawNumber::new("123456789012345678901234567890").unwrap());
        assert_eq!(
            serde_json::to_string(&big).unwrap(),
            "123456789012345678901234567890"
        );
        let huge = Id::Number(RawNumber::new("1e400").unwrap());
        assert_eq!(serde_json::to_string(&huge).unwrap(), "1e400");
        assert_eq!(serde_json::to_value(Id::from(3)).unwrap(), json!(3));
    }

    /// Found by the `jsonrpc` fuzz target: serde_json's default float parsing is not exact
    /// (`9.7e43` was read as the next double up), so params passed on did not read back the
    /// same; the workspace enables its `float_roundtrip`.
    #[test]
    fn float_params_are_read_exactly_and_read_back_the_same() {
        let line = br#"{"jsonrpc":"2.0","method":"t","id":1,"params":[9.7e43,1104.8419866584922]}"#;
        let Incoming::Single(Ok(req)) = parse_incoming(line, DEFAULT_MAX_BATCH) else {
            panic!("not a request")
        };
        assert_eq!(req.params, Some(json!([9.7e43, 1104.8419866584922])));
        let again = serde_json::to_vec(&req).unwrap();
        let Incoming::Single(Ok(back)) = parse_incoming(&again, DEFAULT_MAX_BATCH) else {
            panic!("not a request")
        };
        assert_eq!(back, req);
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
