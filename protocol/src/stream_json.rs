//! The Claude Code CLI's stream-json output, parsed defensively.
//!
//! One line of stdout is one message. [`parse_line`] keeps the raw JSON (it is what ccd streams
//! to clients, every field included) and adds a typed view of the parts ccd acts on. Unknown
//! message types, unknown subtypes, new fields and fields of an unexpected type never fail:
//! such a message is kept as [`AgentMessage::Unknown`] (or with the field defaulted). Only a
//! line that is not JSON at all is an error, which callers log and skip.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One parsed line: the raw message and its typed view.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub raw: Value,
    pub message: AgentMessage,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AgentMessage {
    Init(Init),
    ApiRetry(ApiRetry),
    /// Any other `system` subtype (status, compact_boundary, hooks, tasks, ...).
    System {
        subtype: String,
    },
    Assistant(Assistant),
    User(User),
    Result(ResultMessage),
    StreamEvent(Value),
    RateLimit(Value),
    /// A type ccd does not know (yet), or a known type whose shape did not fit.
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Init {
    pub session_id: String,
    pub cwd: Option<String>,
    pub model: Option<String>,
    pub tools: Vec<String>,
    #[serde(rename = "permissionMode")]
    pub permission_mode: Option<String>,
    pub claude_code_version: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiRetry {
    pub attempt: u32,
    pub max_retries: u32,
    pub retry_delay_ms: f64,
    pub error_status: Option<u16>,
    /// `authentication_failed`, `rate_limit`, `overloaded`, ...
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Assistant {
    pub message: AssistantBody,
    pub parent_tool_use_id: Option<String>,
    pub session_id: Option<String>,
    /// Set on synthetic error messages: authentication_failed, billing_error, rate_limit,
    /// invalid_request, server_error, unknown, max_output_tokens.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AssistantBody {
    pub id: Option<String>,
    pub model: Option<String>,
    pub content: Vec<ContentBlock>,
    pub stop_reason: Option<String>,
    pub usage: Option<Usage>,
}

/// A content block of an assistant or user message. Unknown block types are kept as `Other`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    ToolUse {
        #[serde(default)]
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        #[serde(default)]
        tool_use_id: String,
        #[serde(default)]
        content: Value,
        #[serde(default)]
        is_error: Option<bool>,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct User {
    pub message: UserBody,
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserBody {
    #[serde(deserialize_with = "content_blocks")]
    pub content: Vec<ContentBlock>,
}

/// User content may be a plain string (a prompt) or a list of blocks.
fn content_blocks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ContentBlock>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(text) => vec![ContentBlock::Text { text }],
        Value::Array(items) => items
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap_or(ContentBlock::Other))
            .collect(),
        _ => Vec::new(),
    })
}

/// Token usage by kind.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// Saturating: the counts come from the agent's output, which may hold any number.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_creation_input_tokens = self
            .cache_creation_input_tokens
            .saturating_add(other.cache_creation_input_tokens);
        self.cache_read_input_tokens = self
            .cache_read_input_tokens
            .saturating_add(other.cache_read_input_tokens);
    }

    pub fn total(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_creation_input_tokens)
            .saturating_add(self.cache_read_input_tokens)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResultMessage {
    pub subtype: String,
    pub is_error: bool,
    pub api_error_status: Option<u16>,
    pub duration_ms: u64,
    pub duration_api_ms: u64,
    pub num_turns: u32,
    pub result: Option<String>,
    pub stop_reason: Option<String>,
    pub session_id: Option<String>,
    pub total_cost_usd: f64,
    pub usage: Usage,
    #[serde(rename = "modelUsage")]
    pub model_usage: Value,
    pub permission_denials: Value,
    pub terminal_reason: Option<String>,
    pub errors: Value,
}

/// Parse one stdout line. `Err` only when it is not a JSON object.
pub fn parse_line(line: &[u8]) -> Result<Parsed, serde_json::Error> {
    let raw: Value = serde_json::from_slice(line)?;
    if !raw.is_object() {
        return Err(serde::de::Error::custom(
            "a stream-json message must be a JSON object",
        ));
    }
    let message = classify(&raw);
    Ok(Parsed { raw, message })
}

fn typed<T: serde::de::DeserializeOwned>(raw: &Value) -> Option<T> {
    serde_json::from_value(raw.clone()).ok()
}

fn classify(raw: &Value) -> AgentMessage {
    let kind = raw.get("type").and_then(Value::as_str).unwrap_or("");
    let typed_or_unknown = |m: Option<AgentMessage>| m.unwrap_or(AgentMessage::Unknown);
    match kind {
        "system" => {
            let subtype = raw
                .get("subtype")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            match subtype.as_str() {
                "init" => typed_or_unknown(typed(raw).map(AgentMessage::Init)),
                "api_retry" => typed_or_unknown(typed(raw).map(AgentMessage::ApiRetry)),
                _ => AgentMessage::System { subtype },
            }
        }
        "assistant" => typed_or_unknown(typed(raw).map(AgentMessage::Assistant)),
        "user" => typed_or_unknown(typed(raw).map(AgentMessage::User)),
        "result" => typed_or_unknown(typed(raw).map(AgentMessage::Result)),
        "stream_event" => {
            AgentMessage::StreamEvent(raw.get("event").cloned().unwrap_or(Value::Null))
        }
        "rate_limit_event" => {
            AgentMessage::RateLimit(raw.get("rate_limit_info").cloned().unwrap_or(Value::Null))
        }
        _ => AgentMessage::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(name: &str) -> Vec<AgentMessage> {
        let path = format!("{}/fixtures/{name}.jsonl", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| parse_line(l.as_bytes()).unwrap().message)
            .collect()
    }

    #[test]
    fn usage_from_the_agent_saturates() {
        let max = Usage {
            input_tokens: u64::MAX,
            output_tokens: 1,
            ..Default::default()
        };
        let mut u = max;
        u.add(&max);
        assert_eq!((u.input_tokens, u.output_tokens), (u64::MAX, 2));
        assert_eq!(u.total(), u64::MAX);
    }

    #[test]
    fn plain_answer_from_the_real_cli() {
        let msgs = transcript("text");
        let AgentMessage::Init(init) = &msgs[0] else {
            panic!("{:?}", msgs[0])
        };
        assert_eq!(init.session_id.len(), 36);
        assert!(init.tools.iter().any(|t| t == "Bash"));
        let AgentMessage::Assistant(a) = &msgs[1] else {
            panic!()
        };
        assert_eq!(
            a.message.content,
            vec![ContentBlock::Text {
                text: "Hello from mock".into()
            }]
        );
        let AgentMessage::Result(r) = msgs.last().unwrap() else {
            panic!()
        };
        assert!(!r.is_error);
        assert_eq!(r.result.as_deref(), Some("Hello from mock"));
        assert_eq!(r.session_id.as_deref(), Some(init.session_id.as_str()));
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (12, 5));
        assert!(r.total_cost_usd > 0.0);
        assert_eq!(r.num_turns, 1);
    }

    #[test]
    fn tool_call_and_result() {
        let msgs = transcript("tool");
        let tool = msgs.iter().find_map(|m| match m {
            AgentMessage::Assistant(a) => a.message.content.iter().find_map(|b| match b {
                ContentBlock::ToolUse { name, input, .. } => Some((name.clone(), input.clone())),
                _ => None,
            }),
            _ => None,
        });
        let (name, input) = tool.unwrap();
        assert_eq!(name, "Bash");
        assert_eq!(input["command"], "echo hi-from-tool");
        let result = msgs.iter().find_map(|m| match m {
            AgentMessage::User(u) => u.message.content.first().cloned(),
            _ => None,
        });
        let Some(ContentBlock::ToolResult {
            content, is_error, ..
        }) = result
        else {
            panic!("{result:?}")
        };
        assert_eq!(content, "hi-from-tool");
        assert_eq!(is_error, Some(false));
    }

    #[test]
    fn api_errors() {
        let msgs = transcript("400");
        let AgentMessage::Assistant(a) = &msgs[1] else {
            panic!()
        };
        assert_eq!(a.error.as_deref(), Some("unknown"));
        let AgentMessage::Result(r) = msgs.last().unwrap() else {
            panic!()
        };
        assert!(r.is_error);
        assert_eq!(r.api_error_status, Some(400));

        // Not logged in: a made-up assistant message, then an error result whose subtype is
        // still "success".
        let msgs = transcript("not_logged_in");
        let AgentMessage::Assistant(a) = &msgs[1] else {
            panic!("{:?}", msgs[1])
        };
        assert_eq!(a.error.as_deref(), Some("authentication_failed"));
        let AgentMessage::Result(r) = msgs.last().unwrap() else {
            panic!()
        };
        assert!(r.is_error);
        assert_eq!((r.subtype.as_str(), r.api_error_status), ("success", None));

        for (name, error, status) in [
            ("401", "authentication_failed", 401),
            ("529", "overloaded", 529),
        ] {
            let msgs = transcript(name);
            let AgentMessage::ApiRetry(retry) = &msgs[1] else {
                panic!("{:?}", msgs[1])
            };
            assert_eq!(
                (retry.error.as_deref(), retry.error_status, retry.attempt),
                (Some(error), Some(status), 1)
            );
        }
    }

    #[test]
    fn unknown_types_new_fields_and_odd_shapes_never_fail() {
        let cases = [
            r#"{"type":"brand_new_type","x":1}"#,
            r#"{"type":"system","subtype":"hook_started","hook":"x"}"#,
            r#"{"type":"result","subtype":"success","is_error":"not a bool"}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"image","source":{}}]},"new_field":true}"#,
            r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed"}}"#,
            r#"{"no_type":true}"#,
        ];
        let kinds: Vec<_> = cases
            .iter()
            .map(|c| parse_line(c.as_bytes()).unwrap().message)
            .collect();
        assert_eq!(kinds[0], AgentMessage::Unknown);
        assert_eq!(
            kinds[1],
            AgentMessage::System {
                subtype: "hook_started".into()
            }
        );
        assert_eq!(kinds[2], AgentMessage::Unknown);
        let AgentMessage::Assistant(a) = &kinds[3] else {
            panic!()
        };
        assert_eq!(a.message.content, vec![ContentBlock::Other]);
        assert!(matches!(kinds[4], AgentMessage::RateLimit(_)));
        assert_eq!(kinds[5], AgentMessage::Unknown);
    }

    /// Found by the `agent` fuzz target: a float in a message (read inexactly without
    /// serde_json's `float_roundtrip`) changed when the raw message was passed on and read back.
    #[test]
    fn floats_are_read_exactly_and_read_back_the_same() {
        let line = br#"{"type":"system","subtype":"api_retry","attempt":2,"retry_delay_ms":1104.8419866584922}"#;
        let parsed = parse_line(line).unwrap();
        let AgentMessage::ApiRetry(retry) = &parsed.message else {
            panic!("{:?}", parsed.message)
        };
        assert_eq!(retry.retry_delay_ms, 1104.8419866584922);
        let again = parse_line(&serde_json::to_vec(&parsed.raw).unwrap()).unwrap();
        assert_eq!(again, parsed);
    }

    #[test]
    fn truncated_and_garbled_lines_are_errors_not_panics() {
        let line = std::fs::read_to_string(format!(
            "{}/fixtures/text.jsonl",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let first = line.lines().next().unwrap();
        for cut in [1, first.len() / 2, first.len() - 1] {
            assert!(parse_line(&first.as_bytes()[..cut]).is_err());
        }
        assert!(parse_line(b"\xff\xfe").is_err());
        assert!(parse_line(b"[1,2]").is_err());
        assert!(parse_line(b"").is_err());
    }
}
