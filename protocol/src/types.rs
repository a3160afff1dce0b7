//! Params and results of every method. These are boundary types: `Serialize`, `Deserialize`
//! and `JsonSchema`, documented field by field, since their docs become the schemas that
//! `system.describe` and `rpc.discover` publish.
//!
//! Params reject unknown fields. A field's semantic hint (datetime, path, url, text) is carried
//! in its schema as `x-hint`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    /// The actor's name, as in contract.md (`gateway`, `writer`, ...).
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// `ok` when every actor runs, `degraded` otherwise.
    pub status: String,
    pub pid: u32,
    pub version: String,
    /// When the daemon started.
    #[schemars(extend("x-hint" = "datetime"))]
    pub started_at: String,
    pub uptime_ms: u64,
    /// Whether `debug.crash` is enabled (CCD_FAULT_INJECTION=1).
    pub fault_injection: bool,
    pub actors: Vec<ActorHealth>,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShutdownResult {
    /// Always true: the daemon stops accepting, finishes in-flight requests and exits.
    pub stopping: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrashParams {
    /// The actor to panic: gateway, writer.
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
    /// 1 to 256 characters, no control characters.
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
