//! Every method, declared once: a typed marker with its name, description, params and result.
//!
//! The registry built from these markers is the source of `system.describe`, `rpc.discover`
//! and docs/protocol.md (a test ties the three together). The daemon's router dispatches on
//! the same markers, so a method cannot be served without being described.

use schemars::{JsonSchema, generate::SchemaSettings};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use crate::error::{ErrorCode, RpcError};
use crate::types::{self, ErrorCodeInfo, MethodInfo, ParamInfo};

/// A method of the protocol: a type-level marker.
pub trait Method: 'static {
    const NAME: &'static str;
    const DESCRIPTION: &'static str;
    type Params: DeserializeOwned + Serialize + JsonSchema + Send + 'static;
    type Result: DeserializeOwned + Serialize + JsonSchema + Send + 'static;
    /// The JSON schema of [`Self::Params`], generated once (`params_schema!` in an impl).
    fn params_schema() -> &'static Value;
}

/// The body of [`Method::params_schema`]: a schema generated on first use and kept (a static
/// per impl, so each method has its own).
macro_rules! params_schema {
    () => {
        fn params_schema() -> &'static ::serde_json::Value {
            static SCHEMA: ::std::sync::OnceLock<::serde_json::Value> =
                ::std::sync::OnceLock::new();
            SCHEMA.get_or_init($crate::methods::schema_of::<Self::Params>)
        }
    };
}

macro_rules! methods {
    ($( #[doc = $doc:literal] $ty:ident = $name:literal, $params:ty => $result:ty; )*) => {
        $(
            #[doc = $doc]
            pub enum $ty {}
            impl Method for $ty {
                const NAME: &'static str = $name;
                const DESCRIPTION: &'static str = $doc;
                type Params = $params;
                type Result = $result;
                params_schema!();
            }
        )*
        /// Every method's info, in declaration order. `debug.*` only when `include_debug`.
        pub fn registry(include_debug: bool) -> Vec<MethodInfo> {
            let mut all = vec![$( method_info::<$ty>(), )*];
            all.retain(|m| include_debug || m.namespace != "debug");
            all
        }
        /// Every method name, debug ones included.
        pub const ALL_METHODS: &[&str] = &[$( $name, )*];
    };
}

methods! {
    /// Answer "pong": the cheapest round trip.
    SystemPing = "system.ping", types::NoParams => String;
    /// The daemon's version, protocol version and schema version.
    SystemVersion = "system.version", types::NoParams => types::VersionInfo;
    /// Per-actor health: state (running, restarting, failed), restarts, last panic, uptime.
    SystemHealth = "system.health", types::NoParams => types::Health;
    /// Every method with its params (types, required flags, hints) and every error code.
    SystemDescribe = "system.describe", types::NoParams => types::Describe;
    /// The database's tables and columns, with types and hints.
    SystemDescribeModels = "system.describe_models", types::NoParams => types::DescribeModels;
    /// The configuration the daemon runs with: every value and where it came from.
    SystemConfig = "system.config", types::NoParams => types::ConfigReport;
    /// Stop the daemon gracefully: stop accepting, finish in-flight requests, flush the writer.
    SystemShutdown = "system.shutdown", types::NoParams => types::ShutdownResult;
    /// This API as an OpenRPC 1.x document.
    RpcDiscover = "rpc.discover", types::NoParams => Value;
    /// Make the named actor panic inside its own handler (only with CCD_FAULT_INJECTION=1).
    DebugCrash = "debug.crash", types::CrashParams => Value;
    /// Register a project: a named working directory that must exist.
    ProjectCreate = "project.create", types::ProjectCreate => types::Project;
    /// Change a project's path or name.
    ProjectUpdate = "project.update", types::ProjectUpdate => types::Project;
    /// Remove a project; returns what was removed.
    ProjectDelete = "project.delete", types::ProjectName => types::Project;
    /// Every project, by name.
    ProjectGetAll = "project.get_all", types::NoParams => types::ProjectList;
    /// Set a setting (insert or replace).
    SettingUpsert = "setting.upsert", types::SettingUpsert => types::Setting;
    /// One setting by key.
    SettingGet = "setting.get", types::SettingKey => types::Setting;
    /// Remove a setting; returns what was removed.
    SettingDelete = "setting.delete", types::SettingKey => types::Setting;
    /// Every setting, by key.
    SettingList = "setting.list", types::NoParams => types::SettingList;
    /// Copy the database with SQLite's online backup API while the daemon keeps serving.
    BackupCreate = "backup.create", types::BackupCreate => types::Backup;
    /// Every recorded backup, newest first.
    BackupList = "backup.list", types::NoParams => types::BackupList;
    /// Delete a backup's file and its record; returns what was removed.
    BackupDelete = "backup.delete", types::BackupId => types::Backup;
    /// Run a prompt with the agent CLI through the executor pool; with `stream`, every agent message arrives as a `query.event` notification first.
    QueryRun = "query.run", types::QueryRun => types::QueryResult;
    /// Cancel a running or queued query: its agent process group is terminated.
    QueryCancel = "query.cancel", types::QueryCancel => types::QueryCancelled;
    /// The queries running, queued or waiting for the rate limiter, oldest first.
    QueryList = "query.list", types::NoParams => types::QueryList;
    /// Create an empty session; queries continue it with `session`.
    SessionCreate = "session.create", types::SessionCreate => types::Session;
    /// One session with its turns.
    SessionGet = "session.get", types::SessionId => types::SessionDetail;
    /// Sessions, newest first, optionally filtered by status, tag or project.
    SessionList = "session.list", types::SessionListParams => types::SessionList;
    /// Close a session: it takes no more queries.
    SessionClose = "session.close", types::SessionId => types::Session;
    /// Delete a session and its turns, whatever its state (not while a query runs in it).
    SessionDelete = "session.delete", types::SessionId => types::Session;
    /// Delete closed and expired sessions older than the given age.
    SessionCleanup = "session.cleanup", types::SessionCleanup => types::SessionCleanupResult;
    /// The rate limits in force and every key's tokens, window, in-flight, waiting and throttled counts.
    LimiterStatus = "limiter.status", types::NoParams => types::LimiterStatus;
    /// Change one scope's limits at run time.
    LimiterConfigure = "limiter.configure", types::LimiterConfigure => types::LimiterStatus;
    /// Every circuit breaker's state and counts.
    BreakerStatus = "breaker.status", types::NoParams => types::BreakerList;
    /// Close a breaker (or all), forgetting its history.
    BreakerReset = "breaker.reset", types::BreakerReset => types::BreakerResetResult;
    /// Stream matching events as `event` notifications on this connection until unsubscribed or disconnected.
    EventSubscribe = "event.subscribe", types::EventFilter => types::Subscribed;
    /// End a subscription of this connection.
    EventUnsubscribe = "event.unsubscribe", types::Unsubscribe => types::Unsubscribed;
    /// Events from the persisted log, oldest first.
    EventList = "event.list", types::EventListParams => types::EventList;
    /// Queries, errors by class, tokens by kind and cost, by day, project and model (as `ccd stats`), plus the daemon's uptime, RSS and CPU.
    StatsGet = "stats.get", types::StatsParams => types::StatsReport;
    /// Import agent definitions (a directory of subagent .md files or a JSON bundle), sealed at rest; all or nothing.
    AgentImport = "agent.import", types::AgentImport => types::AgentImported;
    /// Every agent definition: name, description, tools, model.
    AgentList = "agent.list", types::NoParams => types::AgentList;
    /// One agent definition, with its subagent file.
    AgentGet = "agent.get", types::AgentName => types::AgentDetail;
    /// Remove an agent definition.
    AgentDelete = "agent.delete", types::AgentName => types::AgentDeleted;
    /// The definitions agent runs are offered (agents.expose), as Claude Code's --agents takes them.
    AgentExposed = "agent.exposed", types::NoParams => types::AgentsExposed;
    /// Set the orchestration rules (sealed at rest).
    OrchestratorSetRules = "orchestrator.set_rules", types::RulesSet => types::Rules;
    /// The orchestration rules (null when never set).
    OrchestratorGetRules = "orchestrator.get_rules", types::NoParams => types::Rules;
    /// Set the hooks (sealed at rest).
    HooksSet = "hooks.set", types::HooksSet => types::Hooks;
    /// The hooks (null when never set).
    HooksGet = "hooks.get", types::NoParams => types::Hooks;
    /// Whether the agent filesystem is mounted, where, and if not, why.
    VfsStatus = "vfs.status", types::NoParams => types::VfsStatus;
    /// Open a `*.sealed` file of this boot's agent filesystem and return its JSON.
    VfsUnseal = "vfs.unseal", types::VfsUnseal => Value;
}

fn generator() -> schemars::SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator()
}

/// The JSON schema of `T` as this protocol publishes it (subschemas inline, accepted by strict
/// validators: see [`published`]).
pub fn schema_of<T: JsonSchema>() -> Value {
    published(generator().into_root_schema_for::<T>().to_value()).0
}

/// Semantic hints by JSON Pointer into a schema (`/properties/http` → `url`).
pub type Hints = BTreeMap<String, String>;

/// A schema as generated, made what strict validators (Ajv in its default strict mode) accept,
/// with its hints taken out: schemars' integer widths (`format: uint32`, `int64`, `uint`...)
/// become `minimum`/`maximum`, float widths (`double`, `float`) are dropped (a JSON number has
/// no width), and each `x-hint` is removed from the schema and returned by where it was, to be
/// published beside it. Values that are data, not schemas (`enum`, `const`, `default`,
/// `examples`), are left as they are.
pub fn published(mut schema: Value) -> (Value, Hints) {
    fn walk(v: &mut Value, at: &mut String, hints: &mut Hints) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(hint)) = m.remove("x-hint") {
                    hints.insert(at.clone(), hint);
                }
                let format = m.get("format").and_then(Value::as_str).map(str::to_owned);
                match format.as_deref() {
                    Some("double" | "float") => {
                        m.remove("format");
                    }
                    Some(f) => {
                        if let Some((min, max)) = integer_bounds(f) {
                            m.remove("format");
                            m.entry("minimum").or_insert(min);
                            m.entry("maximum").or_insert(max);
                        }
                    }
                    None => {}
                }
                for (key, sub) in m.iter_mut() {
                    if matches!(key.as_str(), "enum" | "const" | "default" | "examples") {
                        continue;
                    }
                    let len = at.len();
                    at.push('/');
                    at.push_str(&key.replace('~', "~0").replace('/', "~1"));
                    walk(sub, at, hints);
                    at.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, sub) in items.iter_mut().enumerate() {
                    let len = at.len();
                    at.push_str(&format!("/{i}"));
                    walk(sub, at, hints);
                    at.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut hints = Hints::new();
    walk(&mut schema, &mut String::new(), &mut hints);
    (schema, hints)
}

/// The range of one of schemars' integer formats (`uint8` ... `int64`, `uint`/`int` for
/// usize/isize, 64 bits wide on the targets ccd builds for).
fn integer_bounds(format: &str) -> Option<(Value, Value)> {
    Some(match format {
        "uint8" => (json!(0), json!(u8::MAX)),
        "uint16" => (json!(0), json!(u16::MAX)),
        "uint32" => (json!(0), json!(u32::MAX)),
        "uint64" | "uint" => (json!(0), json!(u64::MAX)),
        "int8" => (json!(i8::MIN), json!(i8::MAX)),
        "int16" => (json!(i16::MIN), json!(i16::MAX)),
        "int32" => (json!(i32::MIN), json!(i32::MAX)),
        "int64" | "int" => (json!(i64::MIN), json!(i64::MAX)),
        _ => return None,
    })
}

/// Build the description of one method from its marker.
pub fn method_info<M: Method>() -> MethodInfo {
    let params_schema = M::params_schema().clone();
    let (_, params_hints) = published(generator().into_root_schema_for::<M::Params>().to_value());
    let (result_schema, result_hints) =
        published(generator().into_root_schema_for::<M::Result>().to_value());
    let required: Vec<&str> = params_schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let params = params_schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(name, schema)| ParamInfo {
                    name: name.clone(),
                    ty: type_name(schema),
                    required: required.contains(&name.as_str()),
                    description: schema
                        .get("description")
                        .and_then(Value::as_str)
                        .map(String::from),
                    hint: params_hints.get(&property_pointer(name)).cloned(),
                })
                .collect()
        })
        .unwrap_or_default();
    let namespace = M::NAME.split('.').next().unwrap_or(M::NAME).to_string();
    MethodInfo {
        name: M::NAME.to_string(),
        namespace,
        description: M::DESCRIPTION.trim().to_string(),
        params,
        params_schema,
        result_schema,
        params_hints,
        result_hints,
    }
}

/// Where the schema of the top-level property `name` is in an object's schema.
fn property_pointer(name: &str) -> String {
    format!("/properties/{}", name.replace('~', "~0").replace('/', "~1"))
}

fn type_name(schema: &Value) -> String {
    match schema.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("|"),
        _ if schema.get("enum").is_some() => "string".into(),
        _ => "any".into(),
    }
}

/// The table of error codes, for `system.describe`.
pub fn error_codes() -> Vec<ErrorCodeInfo> {
    ErrorCode::ALL
        .iter()
        .map(|c| ErrorCodeInfo {
            code: c.code(),
            name: c.name().into(),
            description: c.description().into(),
        })
        .collect()
}

/// Type a request's params for method `M`: -32602 naming the parameter when they don't fit.
///
/// Absent, null and `[]` mean "no params" (an empty object); other arrays are refused, since
/// ccd's methods take their params by name.
pub fn parse_params<M: Method>(params: Option<Value>) -> Result<M::Params, RpcError> {
    let params = match params {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(Value::Array(a)) if a.is_empty() => Value::Object(Default::default()),
        Some(Value::Array(_)) => {
            return Err(RpcError::invalid_params(format!(
                "invalid params for {}: params must be an object (by name), not an array",
                M::NAME
            )));
        }
        Some(v) => v,
    };
    if contains_array(&params)
        && let Err(param) = arrays_only_for_lists(&params, M::params_schema())
    {
        return Err(RpcError::invalid_params(format!(
            "invalid params for {}: `{param}`: expected an object (fields by name), not an array",
            M::NAME
        ))
        .with_data(json!({ "param": param })));
    }
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner().to_string();
        let param = param_path(e.path(), &path, &inner);
        let msg = if path == "." {
            format!("invalid params for {}: {inner}", M::NAME)
        } else {
            format!("invalid params for {}: `{path}`: {inner}", M::NAME)
        };
        RpcError::invalid_params(msg).with_data(json!({ "param": param }))
    })
}

/// Whether `value` holds an array anywhere: only then can [`arrays_only_for_lists`] refuse it,
/// and most params (flat objects of scalars) skip its walk of the schema.
fn contains_array(value: &Value) -> bool {
    match value {
        Value::Array(_) => true,
        Value::Object(fields) => fields.values().any(contains_array),
        _ => false,
    }
}

/// Refuse an array wherever the schema expects an object, at any depth: serde's derived
/// `Deserialize` of a struct also takes its fields in order from an array, so
/// `{"limits": [1, 2]}` would be read as `{"limits": {"rate_per_s": 1, "burst": 2}}`. On a
/// refusal, returns where, as `data.param` names it (`limits`, `list[0].inner`).
fn arrays_only_for_lists(value: &Value, schema: &Value) -> Result<(), String> {
    fn walk(value: &Value, schema: &Value, path: &mut String) -> Result<(), ()> {
        let schema = single_alternative(schema);
        match value {
            Value::Array(items) => {
                if expects_object(schema) {
                    return Err(());
                }
                let Some(item) = schema.get("items") else {
                    return Ok(());
                };
                for (i, v) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(v, item, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Object(fields) => {
                for (key, v) in fields {
                    let field = schema
                        .get("properties")
                        .and_then(|p| p.get(key))
                        .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                    let Some(field) = field else { continue };
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                    walk(v, field, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    fn types(schema: &Value) -> Vec<&str> {
        match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
    fn is_null(schema: &Value) -> bool {
        types(schema) == ["null"]
    }
    fn alternatives(schema: &Value) -> Option<&Vec<Value>> {
        schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Value::as_array)
    }
    /// `Option<T>`'s `anyOf: [T, null]` is T; any other schema is itself.
    fn single_alternative(schema: &Value) -> &Value {
        match alternatives(schema).map(|a| a.iter().filter(|s| !is_null(s)).collect::<Vec<_>>()) {
            Some(not_null) if not_null.len() == 1 => not_null[0],
            _ => schema,
        }
    }
    /// An object and never an array: a struct or a map (also one of several such, or null).
    fn expects_object(schema: &Value) -> bool {
        let t = types(schema);
        if !t.is_empty() {
            return t.contains(&"object") && !t.contains(&"array");
        }
        alternatives(schema).is_some_and(|alts| {
            alts.iter().any(expects_object) && alts.iter().all(|a| is_null(a) || expects_object(a))
        })
    }
    let mut path = String::new();
    walk(value, schema, &mut path).map_err(|()| path)
}

/// The param at fault, as a path naming each field once (`key`, `limits.burst`, `types[0]`),
/// for `error.data.param`. serde reports a missing field at the object that lacks it (the
/// path ends at that object), and an unknown field at the field itself (the path already ends
/// with its name, as serde_path_to_error records the key before serde refuses it).
fn param_path(path: &serde_path_to_error::Path, at: &str, inner: &str) -> String {
    let named = |prefix: &str| {
        inner
            .strip_prefix(prefix)
            .and_then(|r| r.split('`').next())
            .map(String::from)
    };
    let last_is = |field: &str| match path.iter().next_back() {
        Some(serde_path_to_error::Segment::Map { key }) => key == field,
        _ => false,
    };
    let join = |field: &str| {
        if at == "." {
            field.to_string()
        } else {
            format!("{at}.{field}")
        }
    };
    if let Some(field) = named("missing field `") {
        join(&field)
    } else if let Some(field) = named("unknown field `")
        && !last_is(&field)
    {
        join(&field)
    } else {
        at.to_string()
    }
}

/// This API as an OpenRPC 1.3 document.
pub fn openrpc_document(methods: &[MethodInfo], version: &str) -> Value {
    let methods: Vec<Value> = methods
        .iter()
        .map(|m| {
            let required: Vec<&str> = m
                .params_schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let params: Vec<Value> = m
                .params_schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|props| {
                    props
                        .iter()
                        .map(|(name, schema)| {
                            let mut d = json!({
                                "name": name,
                                "required": required.contains(&name.as_str()),
                                "schema": schema,
                            });
                            if let Some(desc) = schema.get("description") {
                                d["description"] = desc.clone();
                            }
                            // This param's hints, by where they are in its own schema.
                            let at = property_pointer(name);
                            let hints: Hints = m
                                .params_hints
                                .iter()
                                .filter_map(|(ptr, hint)| {
                                    let rest = ptr.strip_prefix(&at)?;
                                    (rest.is_empty() || rest.starts_with('/'))
                                        .then(|| (rest.to_string(), hint.clone()))
                                })
                                .collect();
                            if !hints.is_empty() {
                                d["x-hints"] = json!(hints);
                            }
                            d
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut result =
                json!({ "name": format!("{}.result", m.name), "schema": m.result_schema });
            if !m.result_hints.is_empty() {
                result["x-hints"] = json!(m.result_hints);
            }
            json!({
                "name": m.name,
                "summary": m.description,
                "tags": [{ "name": m.namespace }],
                "paramStructure": "by-name",
                "params": params,
                "result": result,
            })
        })
        .collect();
    json!({
        "openrpc": "1.3.2",
        "info": {
            "title": "ccd",
            "version": version,
            "description": "ccd daemon API: JSON-RPC 2.0, one JSON text per line, over $CCD_HOME/ccd.sock",
        },
        "servers": [{ "name": "ccd", "url": "unix:$CCD_HOME/ccd.sock" }],
        "methods": methods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_array_anywhere_in_the_params_is_found() {
        assert!(!contains_array(
            &json!({"key": "k", "value": "[1]", "n": 2})
        ));
        assert!(!contains_array(&json!({"a": {"b": {"c": null}}})));
        assert!(contains_array(&json!({"a": {"b": [1]}})));
        assert!(contains_array(&json!({"a": 1, "b": []})));
        assert!(contains_array(&json!([])));
    }

    #[test]
    fn every_method_has_a_description_and_a_schema() {
        let all = registry(true);
        assert_eq!(all.len(), ALL_METHODS.len());
        for m in &all {
            assert!(!m.description.is_empty(), "{}", m.name);
            assert_eq!(m.params_schema["type"], "object", "{}", m.name);
        }
        assert!(registry(false).iter().all(|m| m.namespace != "debug"));
    }

    #[test]
    fn params_describe_types_required_and_hints() {
        let info = method_info::<ProjectCreate>();
        let path = info.params.iter().find(|p| p.name == "path").unwrap();
        assert_eq!(
            (path.ty.as_str(), path.required, path.hint.as_deref()),
            ("string", true, Some("path"))
        );
        let info = method_info::<BackupCreate>();
        let path = info.params.iter().find(|p| p.name == "path").unwrap();
        assert!(!path.required);
        assert_eq!(path.ty, "string|null");
    }

    #[test]
    fn invalid_params_name_the_parameter() {
        let err = parse_params::<ProjectCreate>(Some(json!({"name": 5, "path": "/"}))).unwrap_err();
        assert_eq!(err.code, -32602);
        assert!(err.message.contains("`name`"), "{}", err.message);
        let err = parse_params::<ProjectCreate>(Some(json!({"name": "a"}))).unwrap_err();
        assert_eq!(err.data.as_ref().unwrap()["param"], "path");
        assert!(
            err.message.contains("missing field `path`"),
            "{}",
            err.message
        );
        let err = parse_params::<SystemPing>(Some(json!({"x": 1}))).unwrap_err();
        assert!(err.message.contains("unknown field `x`"), "{}", err.message);
        let err = parse_params::<SettingGet>(Some(json!(["a"]))).unwrap_err();
        assert!(err.message.contains("by name"), "{}", err.message);
        assert!(parse_params::<SystemPing>(None).is_ok());
        assert!(parse_params::<SystemPing>(Some(json!([]))).is_ok());
    }

    /// A method with nested params, to check the paths of `data.param`.
    enum Nested {}
    #[derive(Debug, serde::Serialize, serde::Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        outer: Inner,
        #[serde(default)]
        list: Option<Vec<Inner>>,
    }
    #[derive(Debug, serde::Serialize, serde::Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        inner: u32,
    }
    impl Method for Nested {
        const NAME: &'static str = "test.nested";
        const DESCRIPTION: &'static str = "nested params";
        type Params = Outer;
        type Result = Value;
        params_schema!();
    }

    fn param_of<M: Method>(params: Value) -> String {
        let Err(err) = parse_params::<M>(Some(params.clone())) else {
            panic!("{params} was accepted")
        };
        assert_eq!(err.code, -32602);
        err.data.as_ref().unwrap()["param"]
            .as_str()
            .unwrap_or_else(|| panic!("{params}: {err:?}"))
            .to_string()
    }

    #[test]
    fn data_param_names_the_field_path_once() {
        // Unknown fields.
        let upsert = json!({"key": "k", "value": "v", "zzz": 1});
        assert_eq!(param_of::<SettingUpsert>(upsert), "zzz");
        assert_eq!(param_of::<SystemPing>(json!({"x": 1})), "x");
        let limits = json!({"scope": "global", "limits": {"zzz": 1}});
        assert_eq!(param_of::<LimiterConfigure>(limits), "limits.zzz");
        let nested = json!({"outer": {"inner": 1, "zzz": 2}});
        assert_eq!(param_of::<Nested>(nested), "outer.zzz");
        let same_name = json!({"outer": {"inner": 1, "outer": 2}});
        assert_eq!(param_of::<Nested>(same_name), "outer.outer");
        // Missing fields.
        assert_eq!(param_of::<ProjectCreate>(json!({"name": "a"})), "path");
        assert_eq!(param_of::<SettingGet>(json!({})), "key");
        assert_eq!(param_of::<Nested>(json!({})), "outer");
        assert_eq!(param_of::<Nested>(json!({"outer": {}})), "outer.inner");
        let in_list = json!({"outer": {"inner": 1}, "list": [{"inner": 1}, {}]});
        assert_eq!(param_of::<Nested>(in_list), "list[1].inner");
        // Wrong types.
        assert_eq!(
            param_of::<ProjectCreate>(json!({"name": 5, "path": "/"})),
            "name"
        );
        let wrong = json!({"outer": {"inner": "x"}});
        assert_eq!(param_of::<Nested>(wrong), "outer.inner");
        let wrong = json!({"scope": "global", "limits": {"burst": -1}});
        assert_eq!(param_of::<LimiterConfigure>(wrong), "limits.burst");
        // A struct's fields given in order, as an array: refused wherever it is nested.
        assert_eq!(param_of::<Nested>(json!({"outer": [1]})), "outer");
        let in_list = json!({"outer": {"inner": 1}, "list": [{"inner": 1}, [2]]});
        assert_eq!(param_of::<Nested>(in_list), "list[1]");
        let limits = json!({"scope": "global", "limits": [1, 2, 3, 4, 5]});
        assert_eq!(param_of::<LimiterConfigure>(limits), "limits");
        let err = parse_params::<LimiterConfigure>(Some(json!({"scope": "global", "limits": [1]})));
        let err = err.unwrap_err();
        assert!(
            err.message.contains("`limits`: expected an object"),
            "{}",
            err.message
        );
        // Lists stay lists.
        let list = json!({"outer": {"inner": 1}, "list": [{"inner": 2}]});
        assert!(parse_params::<Nested>(Some(list)).is_ok());
        let types = json!({"types": ["query.started"]});
        assert!(parse_params::<EventSubscribe>(Some(types)).is_ok());
        // The message names the same place.
        let err = parse_params::<Nested>(Some(json!({"outer": {}}))).unwrap_err();
        assert!(
            err.message.contains("`outer`: missing field `inner`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn url_valued_fields_carry_the_url_hint() {
        let health = method_info::<SystemHealth>();
        assert_eq!(health.result_hints["/properties/http"], "url");
        assert_eq!(
            health.result_schema["properties"]["http"]["type"],
            json!(["string", "null"])
        );
        // Every hint is one of the documented ones, each is used, and each names a schema.
        let mut seen = std::collections::BTreeSet::new();
        for m in registry(true) {
            for (schema, hints) in [
                (&m.params_schema, &m.params_hints),
                (&m.result_schema, &m.result_hints),
            ] {
                for (at, hint) in hints {
                    assert!(
                        schema.pointer(at).is_some_and(Value::is_object),
                        "{}: {at}",
                        m.name
                    );
                    seen.insert(hint.clone());
                }
            }
            for p in &m.params {
                assert_eq!(
                    p.hint.as_ref(),
                    m.params_hints.get(&property_pointer(&p.name))
                );
            }
        }
        let documented = ["datetime", "path", "text", "url"];
        assert_eq!(seen, documented.map(String::from).into_iter().collect());
    }

    /// What Ajv's strict mode refuses, none of which a published schema may hold (the
    /// integration test `protocol::every_published_schema_passes_a_strict_validator` runs Ajv
    /// itself): keywords it does not know (`x-hint`) and formats it does not know.
    #[test]
    fn published_schemas_hold_no_hint_and_no_format() {
        fn check(v: &Value, at: &str, name: &str) {
            match v {
                Value::Object(m) => {
                    assert!(!m.contains_key("x-hint"), "{name}: x-hint at {at}");
                    assert!(
                        !m.contains_key("format"),
                        "{name}: format {:?} at {at}",
                        m["format"]
                    );
                    for (k, sub) in m {
                        if !matches!(k.as_str(), "enum" | "const" | "default" | "examples") {
                            check(sub, &format!("{at}/{k}"), name);
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|s| check(s, at, name)),
                _ => {}
            }
        }
        for m in registry(true) {
            check(&m.params_schema, "", &m.name);
            check(&m.result_schema, "", &m.name);
        }
        let doc = openrpc_document(&registry(true), "0.0.0");
        for m in doc["methods"].as_array().unwrap() {
            let name = m["name"].as_str().unwrap();
            check(&m["result"]["schema"], "", name);
            for p in m["params"].as_array().unwrap() {
                check(&p["schema"], "", name);
            }
        }
    }

    #[test]
    fn integer_widths_become_bounds() {
        #[derive(JsonSchema)]
        #[allow(dead_code)]
        struct Widths {
            a: u32,
            b: u64,
            c: i64,
            d: usize,
            e: f64,
            #[schemars(extend("x-hint" = "path"))]
            f: Option<String>,
        }
        let (schema, hints) = published(generator().into_root_schema_for::<Widths>().to_value());
        let p = &schema["properties"];
        assert_eq!(
            (&p["a"]["minimum"], &p["a"]["maximum"]),
            (&json!(0), &json!(u32::MAX))
        );
        assert_eq!(p["b"]["maximum"], json!(u64::MAX));
        assert_eq!(
            (&p["c"]["minimum"], &p["c"]["maximum"]),
            (&json!(i64::MIN), &json!(i64::MAX))
        );
        assert_eq!(p["d"]["maximum"], json!(u64::MAX));
        assert_eq!(p["e"], json!({"type": "number"}));
        assert_eq!(
            hints,
            Hints::from([("/properties/f".into(), "path".into())])
        );
        assert!(p["f"].get("x-hint").is_none());
    }

    #[test]
    fn openrpc_document_is_well_formed() {
        let doc = openrpc_document(&registry(false), "0.0.0");
        assert!(doc["openrpc"].as_str().unwrap().starts_with("1."));
        let methods = doc["methods"].as_array().unwrap();
        let mut names = std::collections::HashSet::new();
        for m in methods {
            assert!(names.insert(m["name"].as_str().unwrap().to_string()));
            assert!(m["result"]["schema"].is_object());
            for p in m["params"].as_array().unwrap() {
                assert!(p["name"].is_string() && p["schema"].is_object());
            }
        }
        // Hints travel beside the schemas, as OpenRPC specification extensions.
        let named = |n: &str| methods.iter().find(|m| m["name"] == n).unwrap().clone();
        assert_eq!(
            named("system.health")["result"]["x-hints"]["/properties/http"],
            "url"
        );
        let create = named("project.create");
        let path = create["params"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "path")
            .unwrap()
            .clone();
        assert_eq!(path["x-hints"][""], "path", "{path}");
    }
}
