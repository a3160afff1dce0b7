//! Params and results of every method. These are boundary types: `Serialize`, `Deserialize`
//! and `JsonSchema`, documented field by field, since their docs become the schemas that
//! `system.describe` and `rpc.discover` publish.
//!
//! Params reject unknown fields. A field's semantic hint (datetime, path, url, text) is declared
//! here as `x-hint` in its schema; the published schemas carry it beside them instead
//! ([`MethodInfo::params_hints`], [`MethodInfo::result_hints`]), so that strict validators
//! accept them (`methods::published`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A closed set of words on the wire: a serde enum whose variants serialize as the given
/// strings, with `as_str` (the same strings, for text and SQL), `ALL`, `Display` and
/// `FromStr` (an [`UnknownValue`] error naming what was expected).
macro_rules! wire_words {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) { $($variant:ident = $text:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// As on the wire (and in the database).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownValue {
                        what: $what,
                        value: s.to_string(),
                        expected: &[$($text),+],
                    })
            }
        }
    };
}

/// A word that is not one of a `wire_words!` enum's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    /// What the word should have been, e.g. `session status`.
    pub what: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}

impl std::fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown {} `{}` (expected one of: {})",
            self.what,
            self.value,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownValue {}

/// No params: `{}`, `[]`, null or absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

// ---------------------------------------------------------------------------------------------
// system

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VersionInfo {
    /// The daemon's version (semver).
    pub version: String,
    /// The wire protocol's version; bumped on incompatible changes.
    pub protocol_version: u32,
    /// The database schema version (PRAGMA user_version).
    pub schema_version: u32,
}

/// The state of one supervised actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    Running,
    Restarting,
    Failed,
}

impl ActorState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorState::Running => "running",
            ActorState::Restarting => "restarting",
            ActorState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ActorHealth {
    /// The actor's name (`gateway`, `writer`, ...: docs/protocol.md lists them under
    /// `system.health`).
    pub name: String,
    pub state: ActorState,
    /// Restarts since the daemon started.
    pub restarts: u64,
    /// The message of the last panic, if any.
    pub last_panic: Option<String>,
    /// Why the actor is failed, when it is.
    pub reason: Option<String>,
    /// Time since the actor last (re)started, in milliseconds.
    pub uptime_ms: u64,
}

wire_words! {
    /// The daemon's health as a whole.
    pub enum HealthStatus ("health status") {
        Ok = "ok",
        Degraded = "degraded",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// `ok` when every actor runs, `degraded` otherwise.
    pub status: HealthStatus,
    pub pid: u32,
    pub version: String,
    /// When the daemon started.
    #[schemars(extend("x-hint" = "datetime"))]
    pub started_at: String,
    pub uptime_ms: u64,
    /// Whether `debug.crash` is enabled (CCD_FAULT_INJECTION=1).
    pub fault_injection: bool,
    pub actors: Vec<ActorHealth>,
    pub agent: AgentHealth,
    pub executor: ExecutorHealth,
    /// The HTTP API's base URL, when it serves (null when disabled or its bind failed).
    #[serde(default)]
    #[schemars(extend("x-hint" = "url"))]
    pub http: Option<String>,
    /// The HTTP API: where it was asked to bind, where it serves, or why it does not.
    #[serde(default)]
    pub http_api: HttpStatus,
    #[serde(default)]
    pub vfs: VfsStatus,
}

/// The HTTP API's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HttpStatus {
    /// `http.enabled`.
    pub enabled: bool,
    /// `http.bind`, as configured (port 0: any free port).
    pub bind: String,
    /// The base URL it serves on (the port actually bound); null when it does not serve.
    #[schemars(extend("x-hint" = "url"))]
    pub url: Option<String>,
    /// Why it does not serve: disabled, or the bind failed (e.g. the address is in use).
    pub reason: Option<String>,
}

/// The agent filesystem.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VfsStatus {
    pub enabled: bool,
    pub mounted: bool,
    #[schemars(extend("x-hint" = "path"))]
    pub mountpoint: String,
    /// Why it is not mounted.
    pub reason: Option<String>,
    /// Agent definitions that do not open (damaged rows), by name: the filesystem serves the
    /// others.
    #[serde(default)]
    pub damaged: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VfsUnseal {
    /// A `*.sealed` file (from the mount, or a copy keeping its name); absolute.
    #[schemars(extend("x-hint" = "path"))]
    pub file: String,
}

/// The agent CLI, as checked with `--version` at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentHealth {
    /// As configured (`executor.command`, `CCD_AGENT_CMD`).
    pub command: String,
    /// The program every query runs: `command` resolved once with the daemon's `PATH`; null
    /// when it was not found.
    #[serde(default)]
    #[schemars(extend("x-hint" = "path"))]
    pub path: Option<String>,
    /// Null while the check runs.
    pub available: Option<bool>,
    pub version: Option<String>,
    /// Why it is unavailable.
    pub reason: Option<String>,
}

/// The executor pool's occupancy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecutorHealth {
    pub size: usize,
    pub busy: usize,
    pub queued: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ParamInfo {
    pub name: String,
    /// JSON type(s) of the value, e.g. `string`, `integer`, `string|null`.
    #[serde(rename = "type")]
    pub ty: String,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Semantic hint: datetime, path, url, text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MethodInfo {
    pub name: String,
    pub namespace: String,
    pub description: String,
    pub params: Vec<ParamInfo>,
    /// JSON Schema of the params object.
    pub params_schema: serde_json::Value,
    /// JSON Schema of the result.
    pub result_schema: serde_json::Value,
    /// Semantic hints (datetime, path, url, text) of fields of the params, by where their
    /// schema is in `params_schema` (a JSON Pointer, e.g. `/properties/path`); absent when none.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params_hints: std::collections::BTreeMap<String, String>,
    /// The same for `result_schema` (e.g. `/properties/http`: `url`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub result_hints: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorCodeInfo {
    pub code: i64,
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Describe {
    pub methods: Vec<MethodInfo>,
    pub error_codes: Vec<ErrorCodeInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ColumnInfo {
    pub name: String,
    /// SQLite declared type.
    #[serde(rename = "type")]
    pub ty: String,
    pub nullable: bool,
    pub primary_key: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TableInfo {
    pub name: String,
    pub columns: Vec<ColumnInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DescribeModels {
    pub schema_version: u32,
    pub tables: Vec<TableInfo>,
}

/// The configuration the daemon runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigReport {
    /// Every value, by key.
    pub values: Vec<ConfigValue>,
}

/// One configuration value and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigValue {
    /// `section.key`, e.g. `executor.pool_size`.
    pub key: String,
    pub value: serde_json::Value,
    /// `default`, the config file's path, `environment (CCD_...)` or `flag (--set)`.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShutdownResult {
    /// Always true: the daemon stops accepting, finishes in-flight requests and exits.
    pub stopping: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrashParams {
    /// The actor to panic: gateway, writer, executor, executor-N.
    pub actor: String,
}

// ---------------------------------------------------------------------------------------------
// project

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Project {
    pub name: String,
    /// Absolute, canonical path of the working directory.
    #[schemars(extend("x-hint" = "path"))]
    pub path: String,
    /// Environment overrides for agent runs in this project.
    pub env: std::collections::BTreeMap<String, String>,
    #[schemars(extend("x-hint" = "datetime"))]
    pub created_at: String,
    #[schemars(extend("x-hint" = "datetime"))]
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreate {
    /// 1 to 64 characters: letters, digits, `.`, `_`, `-`; not starting with `.` or `-`.
    pub name: String,
    /// An existing directory; stored canonical (absolute, symlinks resolved).
    #[schemars(extend("x-hint" = "path"))]
    pub path: String,
    /// Environment variables set for agent runs in this project.
    #[serde(default)]
    pub env: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectUpdate {
    /// The project to change.
    pub name: String,
    /// A new working directory (must exist).
    #[serde(default)]
    #[schemars(extend("x-hint" = "path"))]
    pub path: Option<String>,
    /// A new name.
    #[serde(default)]
    pub new_name: Option<String>,
    /// Replace the environment overrides.
    #[serde(default)]
    pub env: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectName {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProjectList {
    pub projects: Vec<Project>,
}

// ---------------------------------------------------------------------------------------------
// setting

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Setting {
    pub key: String,
    #[schemars(extend("x-hint" = "text"))]
    pub value: String,
    #[schemars(extend("x-hint" = "datetime"))]
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingUpsert {
    /// 1 to 256 bytes of UTF-8, no control characters.
    pub key: String,
    /// Any text up to 1 MiB.
    #[schemars(extend("x-hint" = "text"))]
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingKey {
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SettingList {
    pub settings: Vec<Setting>,
}

// ---------------------------------------------------------------------------------------------
// backup

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Backup {
    pub id: i64,
    #[schemars(extend("x-hint" = "path"))]
    pub path: String,
    pub size_bytes: u64,
    #[schemars(extend("x-hint" = "datetime"))]
    pub created_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupCreate {
    /// Where to write the backup; default `$CCD_HOME/backups/ccd-<timestamp>.db`. Must not exist.
    #[serde(default)]
    #[schemars(extend("x-hint" = "path"))]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupId {
    pub id: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackupList {
    pub backups: Vec<Backup>,
}

// ---------------------------------------------------------------------------------------------
// query

pub use crate::stream_json::Usage;

/// Claude Code's permission modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PermissionMode {
    #[serde(rename = "default")]
    Default,
    #[serde(rename = "acceptEdits")]
    AcceptEdits,
    #[serde(rename = "plan")]
    Plan,
    #[serde(rename = "bypassPermissions")]
    BypassPermissions,
}

impl PermissionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionMode::Default => "default",
            PermissionMode::AcceptEdits => "acceptEdits",
            PermissionMode::Plan => "plan",
            PermissionMode::BypassPermissions => "bypassPermissions",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRun {
    /// The prompt, sent to the agent on stdin.
    #[schemars(extend("x-hint" = "text"))]
    pub prompt: String,
    /// Run in this project's directory, with its environment overrides.
    #[serde(default)]
    pub project: Option<String>,
    /// Run in this directory (when no project is given); default: the session's project, else
    /// the daemon's `$HOME`.
    #[serde(default)]
    #[schemars(extend("x-hint" = "path"))]
    pub cwd: Option<String>,
    /// Continue this ccd session (its agent session is resumed).
    #[serde(default)]
    pub session: Option<String>,
    /// Start a new session (the default when `session` is not given; giving both is an error).
    #[serde(default)]
    pub new_session: bool,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_turns: Option<u32>,
    #[serde(default)]
    #[schemars(extend("x-hint" = "text"))]
    pub append_system_prompt: Option<String>,
    #[serde(default)]
    pub permission_mode: Option<PermissionMode>,
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    #[serde(default)]
    pub disallowed_tools: Option<Vec<String>>,
    /// MCP configuration: a JSON string or a path.
    #[serde(default)]
    pub mcp_config: Option<String>,
    #[serde(default)]
    pub add_dirs: Option<Vec<String>>,
    /// Per-query deadline in milliseconds (default `executor.timeout_ms`, 10 minutes).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Stream every agent message as a `query.event` notification on this connection.
    #[serde(default)]
    pub stream: bool,
    /// Refuse at once with -32002 instead of waiting for the rate limiter.
    #[serde(default)]
    pub no_wait: bool,
    /// The caller's environment (`ccd query` sends its own). The variables that
    /// `executor.pass_env` names are taken from here instead of from the daemon's environment
    /// (one the caller does not have is not set at all); the rest is ignored. Absent: the
    /// agent gets the daemon's own environment. A project's `env` still applies on top.
    #[serde(default)]
    pub env: Option<std::collections::BTreeMap<String, String>>,
    /// Tags for the new session this query creates (what `session.list`'s `tag` finds); not
    /// with `session`.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueryResult {
    pub query_id: String,
    /// The ccd session this turn belongs to.
    pub session_id: String,
    /// The agent's own session id (what `--resume=` takes).
    pub agent_session_id: Option<String>,
    /// The final answer text.
    #[schemars(extend("x-hint" = "text"))]
    pub result: Option<String>,
    pub is_error: bool,
    pub usage: Usage,
    pub cost_usd: f64,
    pub duration_ms: u64,
    pub num_turns: u32,
    /// How many times the agent was run for this query.
    pub attempts: u32,
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryCancel {
    pub query_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueryCancelled {
    pub query_id: String,
    /// False when the query had already finished (or never existed).
    pub cancelled: bool,
}

wire_words! {
    /// Where a query in flight is: `waiting` (for the rate limiter, or to retry), `queued` (for
    /// a free executor, or the agent starting up), `running` (the agent has spoken).
    pub enum QueryState ("query state") {
        Waiting = "waiting",
        Queued = "queued",
        Running = "running",
    }
}

/// One query in flight, as `query.list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunningQuery {
    pub query_id: String,
    pub session_id: String,
    pub project: Option<String>,
    pub model: Option<String>,
    /// `waiting` (for the rate limiter, or to retry), `queued` (for a free executor, or the
    /// agent starting up), `running` (the agent has spoken).
    pub state: QueryState,
    #[schemars(extend("x-hint" = "datetime"))]
    pub started_at: String,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueryList {
    /// Oldest first.
    pub queries: Vec<RunningQuery>,
}

/// Params of the `query.event` server-to-client notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QueryEvent {
    pub query_id: String,
    /// One stream-json message of the agent, as the CLI printed it.
    pub event: serde_json::Value,
}

// ---------------------------------------------------------------------------------------------
// session

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionCreate {
    #[serde(default)]
    pub project: Option<String>,
    /// The directory its queries run in (when no project is given); default: decided by its
    /// first query.
    #[serde(default)]
    #[schemars(extend("x-hint" = "path"))]
    pub cwd: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Default model for the session's queries.
    #[serde(default)]
    pub model: Option<String>,
}

wire_words! {
    /// A session's state: open until closed (`session.close`) or expired (the TTL sweep).
    pub enum SessionStatus ("session status") {
        Open = "open",
        Closed = "closed",
        Expired = "expired",
    }
}

wire_words! {
    /// How a turn (one query) ended: ok, an agent error, out of time, stopped, or refused
    /// before it ran (rate limited, circuit open).
    pub enum TurnStatus ("turn status") {
        Ok = "ok",
        Error = "error",
        Timeout = "timeout",
        Cancelled = "cancelled",
        Refused = "refused",
    }
}

wire_words! {
    /// The class of an agent error, which decides retries and the breaker: `retryable`
    /// (retried; a breaker failure), `non_retryable` (not retried; not the dependency's fault,
    /// ignored by the breaker), `unavailable` (the agent could not be run; a breaker failure).
    pub enum ErrorClass ("error class") {
        Retryable = "retryable",
        NonRetryable = "non_retryable",
        Unavailable = "unavailable",
    }
}

wire_words! {
    /// Why a query failed, as `session.error` tells it: its agent error's class, or
    /// `refused` (rate limited, circuit open) when it never ran.
    pub enum SessionErrorClass ("session error class") {
        Retryable = "retryable",
        NonRetryable = "non_retryable",
        Unavailable = "unavailable",
        Refused = "refused",
    }
}

impl From<ErrorClass> for SessionErrorClass {
    fn from(c: ErrorClass) -> Self {
        match c {
            ErrorClass::Retryable => SessionErrorClass::Retryable,
            ErrorClass::NonRetryable => SessionErrorClass::NonRetryable,
            ErrorClass::Unavailable => SessionErrorClass::Unavailable,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Session {
    /// UUID v4.
    pub id: String,
    pub project: Option<String>,
    pub tags: Vec<String>,
    pub model: Option<String>,
    pub agent_session_id: Option<String>,
    /// open, closed or expired.
    pub status: SessionStatus,
    #[schemars(extend("x-hint" = "datetime"))]
    pub created_at: String,
    #[schemars(extend("x-hint" = "datetime"))]
    pub last_used_at: String,
    pub turns: u64,
    pub usage: Usage,
    pub cost_usd: f64,
    /// The directory its turns run in (Claude Code keeps a conversation per directory): set
    /// when it is created with a `cwd`, else by its first turn.
    #[serde(default)]
    #[schemars(extend("x-hint" = "path"))]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Turn {
    pub id: i64,
    pub query_id: String,
    #[schemars(extend("x-hint" = "text"))]
    pub prompt: String,
    #[schemars(extend("x-hint" = "text"))]
    pub result: Option<String>,
    /// ok, error, timeout, cancelled or refused.
    pub status: TurnStatus,
    /// The agent error's class, when `status` is error, timeout or cancelled.
    pub error_class: Option<ErrorClass>,
    pub error: Option<String>,
    pub usage: Usage,
    pub cost_usd: f64,
    pub duration_ms: u64,
    pub num_turns: u32,
    pub attempts: u32,
    pub model: Option<String>,
    #[schemars(extend("x-hint" = "datetime"))]
    pub started_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionDetail {
    pub session: Session,
    pub turns: Vec<Turn>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionId {
    pub id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionListParams {
    /// open, closed or expired.
    #[serde(default)]
    pub status: Option<SessionStatus>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    /// At most this many, newest first (default 1000, at most 100000).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Skip this many first: the next page starts at the previous one's offset plus its
    /// length (default 0).
    #[serde(default)]
    pub offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionList {
    pub sessions: Vec<Session>,
    /// More sessions match past this page (ask again with a larger `offset`).
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionCleanup {
    /// Delete closed and expired sessions (with their turns) last used more than this many
    /// seconds ago.
    pub older_than_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionCleanupResult {
    pub removed: u64,
}

// ---------------------------------------------------------------------------------------------
// limiter and breaker

/// Limits for one key; each algorithm is off at 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSpec {
    /// Token bucket: sustained admissions per second (0: off).
    pub rate_per_s: f64,
    /// Token bucket: how many may be admitted at once after a quiet spell (at least 1).
    pub burst: u32,
    /// Sliding window: at most this many admissions in any `window_ms` (0: off).
    pub window_max: u32,
    pub window_ms: u64,
    /// At most this many queries at once (0: off).
    pub concurrency: u32,
}

/// The longest time a token bucket may take to fill, in nanoseconds: about 200 years, well
/// inside the 64-bit nanoseconds the limiter counts in.
const MAX_BUCKET_FILL_NS: f64 = 200.0 * 365.25 * 86_400.0 * 1e9;
/// The longest sliding window a limit may have: a year.
const MAX_WINDOW_MS: u64 = 365 * 24 * 3600 * 1000;

impl LimitSpec {
    pub fn is_off(&self) -> bool {
        self.rate_per_s <= 0.0 && self.window_max == 0 && self.concurrency == 0
    }

    /// Check the spec; errors name each field as `{name}.field`.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        self.validate_keys(|field| format!("{name}.{field}"))
    }

    /// Check the spec; errors name each field as `key(field)` says (the configuration's
    /// `limiter.global_rate_per_s`, `limiter.configure`'s `limits.rate_per_s`).
    pub fn validate_keys(&self, key: impl Fn(&str) -> String) -> Result<(), String> {
        let (rate, burst) = (key("rate_per_s"), key("burst"));
        let (window_max, window_ms) = (key("window_max"), key("window_ms"));
        if !(self.rate_per_s.is_finite()
            && self.rate_per_s >= 0.0
            && self.rate_per_s <= 1_000_000.0)
        {
            return Err(format!("`{rate}` must be between 0 and 1000000"));
        }
        // The bucket refills one token per 1/rate seconds; a full bucket (`burst` tokens) must
        // be a time the limiter can count in 64-bit nanoseconds (about 584 years).
        if self.rate_per_s > 0.0
            && f64::from(self.burst.max(1)) * 1e9 / self.rate_per_s > MAX_BUCKET_FILL_NS
        {
            return Err(format!(
                "`{rate}` = {:?} with `{burst}` = {}: the bucket would take more than 200 years \
                 to fill; use a larger rate, a smaller burst, or 0 to turn it off",
                self.rate_per_s, self.burst
            ));
        }
        if self.window_max > 0 && self.window_ms == 0 {
            return Err(format!(
                "`{window_ms}` must be at least 1 when `{window_max}` is set"
            ));
        }
        if self.window_ms > MAX_WINDOW_MS {
            return Err(format!(
                "`{window_ms}` must be at most {MAX_WINDOW_MS} (a year)"
            ));
        }
        Ok(())
    }
}

/// The scopes a limit applies to: one global key, a key per model, a key per project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Global,
    Model,
    Project,
}

/// One limiter key's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyStatus {
    /// `global`, `model:<name>` or `project:<name>`.
    pub key: String,
    pub spec: LimitSpec,
    /// Tokens left in the bucket after the last admission (null without a bucket).
    pub available_tokens: Option<u32>,
    /// Admissions in the current sliding window.
    pub window_count: u32,
    pub in_flight: u32,
    pub waiting: u32,
    /// Times a query on this key was made to wait or refused.
    pub throttled: u64,
    pub admitted: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScopeLimits {
    pub global: LimitSpec,
    pub model: LimitSpec,
    pub project: LimitSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LimiterStatus {
    /// The limits in force per scope.
    pub limits: ScopeLimits,
    /// Every key seen so far.
    pub keys: Vec<KeyStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimiterConfigure {
    pub scope: Scope,
    /// The new limits for that scope (until the daemon restarts; config.toml holds the lasting ones).
    pub limits: LimitSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// As on the wire: `CLOSED`, `OPEN`, `HALF_OPEN`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        }
    }
}

/// One breaker's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BreakerStatus {
    /// `<agent command>|<model>`.
    pub key: String,
    pub state: BreakerState,
    /// Time left in OPEN.
    pub retry_after_ms: u64,
    pub calls_in_window: u32,
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub consecutive_failures: u32,
    pub rejected: u64,
    /// Errors of class non_retryable seen (not counted as failures).
    pub non_retryable: u64,
    pub times_opened: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BreakerList {
    pub breakers: Vec<BreakerStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerReset {
    /// The breaker to close; all when absent.
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BreakerResetResult {
    /// How many breakers were reset.
    pub reset: u64,
}

// ---------------------------------------------------------------------------------------------
// events

/// One event of the bus: a sequence number (increasing, never reused), a timestamp, and what
/// happened, tagged by `type` (e.g. `turn.completed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    pub seq: u64,
    #[schemars(extend("x-hint" = "datetime"))]
    pub ts: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Each variant carries its subject (session, project, actor or key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum EventKind {
    #[serde(rename = "session.created")]
    SessionCreated {
        session_id: String,
        project: Option<String>,
    },
    #[serde(rename = "session.closed")]
    SessionClosed { session_id: String },
    #[serde(rename = "session.error")]
    SessionError {
        session_id: String,
        query_id: String,
        project: Option<String>,
        class: SessionErrorClass,
        detail: String,
    },
    #[serde(rename = "turn.started")]
    TurnStarted {
        session_id: String,
        query_id: String,
        project: Option<String>,
        model: Option<String>,
    },
    #[serde(rename = "turn.completed")]
    TurnCompleted {
        session_id: String,
        query_id: String,
        project: Option<String>,
        model: Option<String>,
        /// ok, error, timeout, cancelled or refused.
        status: TurnStatus,
        duration_ms: u64,
        attempts: u32,
    },
    #[serde(rename = "tool.called")]
    ToolCalled {
        session_id: String,
        query_id: String,
        project: Option<String>,
        tool: String,
        tool_use_id: String,
    },
    #[serde(rename = "tool.result")]
    ToolResult {
        session_id: String,
        query_id: String,
        project: Option<String>,
        tool_use_id: String,
        is_error: bool,
    },
    #[serde(rename = "tokens.used")]
    TokensUsed {
        session_id: String,
        query_id: String,
        project: Option<String>,
        model: Option<String>,
        usage: Usage,
    },
    #[serde(rename = "cost.incurred")]
    CostIncurred {
        session_id: String,
        query_id: String,
        project: Option<String>,
        model: Option<String>,
        cost_usd: f64,
    },
    #[serde(rename = "query.retried")]
    QueryRetried {
        session_id: String,
        query_id: String,
        project: Option<String>,
        attempt: u32,
        delay_ms: u64,
        error: String,
    },
    #[serde(rename = "actor.started")]
    ActorStarted { actor: String },
    #[serde(rename = "actor.restarted")]
    ActorRestarted { actor: String, reason: String },
    #[serde(rename = "actor.failed")]
    ActorFailed { actor: String, reason: String },
    #[serde(rename = "breaker.opened")]
    BreakerOpened { key: String, reason: String },
    #[serde(rename = "breaker.half_opened")]
    BreakerHalfOpened { key: String, reason: String },
    #[serde(rename = "breaker.closed")]
    BreakerClosed { key: String, reason: String },
    #[serde(rename = "limiter.throttled")]
    LimiterThrottled {
        session_id: String,
        query_id: String,
        project: Option<String>,
        model: Option<String>,
        /// The limiter key whose limit holds the query back (`global`, `model:M`, `project:P`).
        key: String,
        retry_after_ms: u64,
    },
    #[serde(rename = "vfs.mounted")]
    VfsMounted { mountpoint: String },
    #[serde(rename = "vfs.unmounted")]
    VfsUnmounted { mountpoint: String },
    #[serde(rename = "daemon.started")]
    DaemonStarted { pid: u32, version: String },
    #[serde(rename = "daemon.stopping")]
    DaemonStopping { pid: u32 },
    /// Sent to one subscriber only: it fell behind and lost its `missed` oldest events.
    #[serde(rename = "lagged")]
    Lagged { missed: u64 },
}

/// Every event type, as `type` spells it.
pub const EVENT_TYPES: &[&str] = &[
    "session.created",
    "session.closed",
    "session.error",
    "turn.started",
    "turn.completed",
    "tool.called",
    "tool.result",
    "tokens.used",
    "cost.incurred",
    "query.retried",
    "actor.started",
    "actor.restarted",
    "actor.failed",
    "breaker.opened",
    "breaker.half_opened",
    "breaker.closed",
    "limiter.throttled",
    "vfs.mounted",
    "vfs.unmounted",
    "daemon.started",
    "daemon.stopping",
    "lagged",
];

impl EventKind {
    /// The `type` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::SessionCreated { .. } => "session.created",
            EventKind::SessionClosed { .. } => "session.closed",
            EventKind::SessionError { .. } => "session.error",
            EventKind::TurnStarted { .. } => "turn.started",
            EventKind::TurnCompleted { .. } => "turn.completed",
            EventKind::ToolCalled { .. } => "tool.called",
            EventKind::ToolResult { .. } => "tool.result",
            EventKind::TokensUsed { .. } => "tokens.used",
            EventKind::CostIncurred { .. } => "cost.incurred",
            EventKind::QueryRetried { .. } => "query.retried",
            EventKind::ActorStarted { .. } => "actor.started",
            EventKind::ActorRestarted { .. } => "actor.restarted",
            EventKind::ActorFailed { .. } => "actor.failed",
            EventKind::BreakerOpened { .. } => "breaker.opened",
            EventKind::BreakerHalfOpened { .. } => "breaker.half_opened",
            EventKind::BreakerClosed { .. } => "breaker.closed",
            EventKind::LimiterThrottled { .. } => "limiter.throttled",
            EventKind::VfsMounted { .. } => "vfs.mounted",
            EventKind::VfsUnmounted { .. } => "vfs.unmounted",
            EventKind::DaemonStarted { .. } => "daemon.started",
            EventKind::DaemonStopping { .. } => "daemon.stopping",
            EventKind::Lagged { .. } => "lagged",
        }
    }

    /// The session this event is about, if any.
    pub fn session(&self) -> Option<&str> {
        match self {
            EventKind::SessionCreated { session_id, .. }
            | EventKind::SessionClosed { session_id }
            | EventKind::SessionError { session_id, .. }
            | EventKind::TurnStarted { session_id, .. }
            | EventKind::TurnCompleted { session_id, .. }
            | EventKind::ToolCalled { session_id, .. }
            | EventKind::ToolResult { session_id, .. }
            | EventKind::TokensUsed { session_id, .. }
            | EventKind::CostIncurred { session_id, .. }
            | EventKind::QueryRetried { session_id, .. }
            | EventKind::LimiterThrottled { session_id, .. } => Some(session_id),
            _ => None,
        }
    }

    /// The project this event is about, if any.
    pub fn project(&self) -> Option<&str> {
        match self {
            EventKind::SessionCreated { project, .. }
            | EventKind::SessionError { project, .. }
            | EventKind::TurnStarted { project, .. }
            | EventKind::TurnCompleted { project, .. }
            | EventKind::ToolCalled { project, .. }
            | EventKind::ToolResult { project, .. }
            | EventKind::TokensUsed { project, .. }
            | EventKind::CostIncurred { project, .. }
            | EventKind::QueryRetried { project, .. }
            | EventKind::LimiterThrottled { project, .. } => project.as_deref(),
            _ => None,
        }
    }

    /// The actor or key this event is about, if any.
    pub fn subject(&self) -> Option<&str> {
        match self {
            EventKind::ActorStarted { actor }
            | EventKind::ActorRestarted { actor, .. }
            | EventKind::ActorFailed { actor, .. } => Some(actor),
            EventKind::BreakerOpened { key, .. }
            | EventKind::BreakerHalfOpened { key, .. }
            | EventKind::BreakerClosed { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Which events a subscription (or a listing) wants; every given filter must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Event types, e.g. `["turn.completed", "breaker.opened"]`; all when absent.
    #[serde(default)]
    pub types: Option<Vec<String>>,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    /// Subscriptions only: first replay the logged events after this sequence number (those
    /// that match), then go on live, with no event missed or repeated in between. A follower
    /// that lost its connection resumes with the last `seq` it saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
}

impl EventFilter {
    pub fn matches(&self, e: &EventKind) -> bool {
        if let EventKind::Lagged { .. } = e {
            return true;
        }
        self.types
            .as_ref()
            .is_none_or(|t| t.iter().any(|t| t == e.type_name()))
            && self
                .session
                .as_deref()
                .is_none_or(|s| e.session() == Some(s))
            && self
                .project
                .as_deref()
                .is_none_or(|p| e.project() == Some(p))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Subscribed {
    pub subscription_id: u64,
    /// The sequence number of the last event published before the subscription: live events
    /// come after it (replayed ones, with `after_seq`, up to it). Lower than a follower's
    /// `after_seq` when the log was started afresh (a new database).
    #[serde(default)]
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Unsubscribe {
    pub subscription_id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Unsubscribed {
    /// False when there was no such subscription on this connection.
    pub unsubscribed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventListParams {
    /// Only events after this sequence number.
    #[serde(default)]
    pub after_seq: Option<u64>,
    /// Only events newer than this: an age (`1h`, `7d`) or an RFC 3339 time.
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub types: Option<Vec<String>>,
    /// At most this many, oldest first (default 1000, at most 100000).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventList {
    pub events: Vec<Event>,
}

// ---------------------------------------------------------------------------------------------
// stats

/// Query statistics for one day, project and model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatsRow {
    /// UTC day, YYYY-MM-DD (empty in totals).
    pub day: String,
    /// Null for queries without a project; in totals, the project filtered on (null: all).
    pub project: Option<String>,
    /// Null when the model is not known; null in totals (all models).
    pub model: Option<String>,
    pub queries: u64,
    pub ok: u64,
    /// Failed queries by error class: retryable, non_retryable, unavailable; and timeouts,
    /// cancellations and refusals (rate limited, circuit open).
    pub errors_retryable: u64,
    pub errors_non_retryable: u64,
    pub errors_unavailable: u64,
    pub timeouts: u64,
    pub cancelled: u64,
    pub refused: u64,
    pub usage: Usage,
    pub cost_usd: f64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Stats {
    #[schemars(extend("x-hint" = "datetime"))]
    pub since: String,
    pub rows: Vec<StatsRow>,
    pub totals: StatsRow,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsParams {
    /// Queries newer than this: an age (`1h`, `7d`) or an RFC 3339 time (default `7d`).
    #[serde(default)]
    pub since: Option<String>,
    /// Only this project's queries.
    #[serde(default)]
    pub project: Option<String>,
}

/// The daemon process itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MachineStats {
    pub uptime_s: f64,
    /// Resident memory (`None` where /proc does not tell).
    pub rss_bytes: Option<u64>,
    /// User plus system CPU time.
    pub cpu_seconds: Option<f64>,
}

/// What `ccd stats` shows, plus the daemon's own uptime, memory and CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatsReport {
    pub stats: Stats,
    pub machine: MachineStats,
}

// ---------------------------------------------------------------------------------------------
// agents, orchestrator, hooks

/// A Claude Code subagent definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentDef {
    /// 1 to 64 of a-z, 0-9, `-`, `_`.
    pub name: String,
    pub description: String,
    /// Tools the agent may use.
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub model: Option<String>,
    /// The system prompt (the file's body).
    #[schemars(extend("x-hint" = "text"))]
    pub prompt: String,
    /// Other front-matter fields of a subagent file (`color`, `permissionMode`,
    /// `disallowedTools`...), each as the YAML text of its value, kept and written back as given.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentImport {
    /// A directory of subagent `.md` files, one `.md` file, or a JSON bundle
    /// `{"agents": [...]}`; absolute.
    #[schemars(extend("x-hint" = "path"))]
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentImported {
    /// Every name imported (all or none).
    pub imported: Vec<String>,
    /// Those among them that replaced an existing definition.
    pub replaced: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentSummary {
    pub name: String,
    pub description: String,
    pub tools: Vec<String>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentList {
    pub agents: Vec<AgentSummary>,
    /// Definitions that are stored but do not open (a damaged row), by name: left out of
    /// `agents` and of the agent filesystem.
    #[serde(default)]
    pub damaged: Vec<String>,
}

/// `agent.exposed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentsExposed {
    /// `{"name": {"description", "prompt", "tools"?, "model"?}}`, as Claude Code's `--agents`
    /// takes it; null when `agents.expose` offers none.
    pub agents: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentName {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentDetail {
    pub agent: AgentDef,
    /// The definition as a Claude Code subagent file.
    #[schemars(extend("x-hint" = "text"))]
    pub markdown: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentDeleted {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesSet {
    /// Orchestration rules: any JSON document.
    pub rules: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rules {
    /// Null when never set.
    pub rules: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HooksSet {
    /// Hooks: any JSON document.
    pub hooks: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Hooks {
    /// Null when never set.
    pub hooks: serde_json::Value,
}

#[cfg(test)]
mod breaker_state_tests {
    use super::BreakerState;

    #[test]
    fn breaker_states_are_named_as_on_the_wire() {
        for s in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}

#[cfg(test)]
mod wire_words_tests {
    use super::*;

    /// Each value serializes to exactly the word it always had, `as_str` and `FromStr` agree,
    /// and an unknown word is refused by name.
    fn check<T>(expected: &[&str])
    where
        T: Copy + Serialize + serde::de::DeserializeOwned + std::fmt::Debug + PartialEq,
        T: std::str::FromStr<Err = UnknownValue> + std::fmt::Display,
    {
        let all: Vec<T> = expected.iter().map(|w| w.parse().unwrap()).collect();
        for (v, w) in all.iter().zip(expected) {
            assert_eq!(serde_json::to_string(v).unwrap(), format!("\"{w}\""));
            assert_eq!(
                serde_json::from_value::<T>(serde_json::json!(w)).unwrap(),
                *v
            );
            assert_eq!(v.to_string(), *w);
        }
        let e = "nope".parse::<T>().unwrap_err();
        assert_eq!(e.value, "nope");
        assert_eq!(e.expected, expected);
        assert!(serde_json::from_value::<T>(serde_json::json!("nope")).is_err());
    }

    #[test]
    fn statuses_and_classes_are_todays_words() {
        check::<HealthStatus>(&["ok", "degraded"]);
        check::<SessionStatus>(&["open", "closed", "expired"]);
        check::<TurnStatus>(&["ok", "error", "timeout", "cancelled", "refused"]);
        check::<ErrorClass>(&["retryable", "non_retryable", "unavailable"]);
        check::<SessionErrorClass>(&["retryable", "non_retryable", "unavailable", "refused"]);
        check::<QueryState>(&["waiting", "queued", "running"]);
        assert_eq!(HealthStatus::ALL.len(), 2);
        assert_eq!(SessionStatus::ALL.len(), 3);
        assert_eq!(TurnStatus::ALL.len(), 5);
        assert_eq!(ErrorClass::ALL.len(), 3);
        assert_eq!(SessionErrorClass::ALL.len(), 4);
        for c in ErrorClass::ALL {
            assert_eq!(SessionErrorClass::from(*c).as_str(), c.as_str());
        }
    }

    #[test]
    fn the_schema_lists_the_words() {
        let s = crate::methods::schema_of::<TurnStatus>();
        assert_eq!(
            s["enum"],
            serde_json::json!(["ok", "error", "timeout", "cancelled", "refused"])
        );
        assert_eq!(s["type"], "string");
    }

    #[test]
    fn an_unknown_word_says_what_was_expected() {
        assert_eq!(
            "weird".parse::<SessionStatus>().unwrap_err().to_string(),
            "unknown session status `weird` (expected one of: open, closed, expired)"
        );
    }
}
