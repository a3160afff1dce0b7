//! The daemon's typed configuration, layered as docs/operations.md describes: built-in
//! defaults, then `$CCD_HOME/config.toml`, then `CCD_<SECTION>_<KEY>` environment variables.
//!
//! Each section lives with the module that owns it (the writer's in [`crate::store`], the
//! supervisor's in [`crate::supervise`], ...); this module only composes them into [`Config`],
//! loads and validates it, and explains where each value came from. Only the daemon's wiring
//! takes the whole `Config`; each subsystem takes its own section. The sections of the daemon
//! itself (`daemon`, `session`) and of the socket (`ipc`) are declared here.
//!
//! Unknown keys and wrong types are errors that name the key and where it came from; the daemon
//! refuses to start on them rather than guessing.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

pub use crate::agents::AgentsConfig;
pub use crate::eventbus::EventsConfig;
pub use crate::executor::{DEFAULT_PASS_ENV, ExecutorConfig};
pub use crate::http::HttpConfig;
pub use crate::resilience::breaker::BreakerSpec;
pub use crate::resilience::{LimiterConfig, RetryConfig};
pub use crate::server::IpcConfig;
pub use crate::store::{Synchronous, WriterConfig};
pub use crate::supervise::SupervisorConfig;
pub use crate::vfs::VfsConfig;

/// Environment variables with a `CCD_` prefix that are not config values.
const NOT_CONFIG: &[&str] = &[
    "HOME",
    "LOG",
    "FAULT_INJECTION",
    "AGENT_CMD",
    "MASTER_KEY",
    "SET",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub ipc: IpcConfig,
    pub writer: WriterConfig,
    pub supervisor: SupervisorConfig,
    pub daemon: DaemonConfig,
    pub executor: ExecutorConfig,
    pub session: SessionConfig,
    pub limiter: LimiterConfig,
    pub breaker: BreakerSpec,
    pub retry: RetryConfig,
    pub events: EventsConfig,
    pub http: HttpConfig,
    pub vfs: VfsConfig,
    pub agents: AgentsConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Open sessions unused for this long expire.
    pub ttl_s: u64,
    /// How often the expiry sweep runs.
    pub sweep_interval_s: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ttl_s: 7 * 24 * 3600,
            sweep_interval_s: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// How long a stop waits for in-flight requests before closing connections.
    pub shutdown_timeout_ms: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            shutdown_timeout_ms: 10_000,
        }
    }
}

impl Config {
    /// Load the effective configuration for `home`: defaults, `config.toml`, environment.
    pub fn load(home: &Path) -> anyhow::Result<Config> {
        Self::load_with(home, &[])
    }

    /// As [`Config::load`], with `KEY=VALUE` overrides from the command line on top.
    pub fn load_with(home: &Path, overrides: &[(String, String)]) -> anyhow::Result<Config> {
        let figment = Self::layered(home, overrides)?;
        let config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!(describe_figment_error(e, &figment, home, overrides)))
            .context("invalid configuration")?;
        config.validate().map_err(|e| {
            // Say where each value named in the message came from.
            let e = format!("{e:#}");
            let origins: Vec<String> = backticked_keys(&e)
                .filter_map(|key| {
                    let value = figment.find_value(key).ok()?;
                    let source = source_of(&figment, home, overrides, key);
                    Some(format!("`{key}` = {} from {source}", show_value(&value)))
                })
                .collect();
            if origins.is_empty() {
                anyhow::anyhow!(e)
            } else {
                anyhow::anyhow!("{e} ({})", origins.join("; "))
            }
        })?;
        Ok(config)
    }

    /// Every source in precedence order: defaults, file, environment, `CCD_AGENT_CMD`, flags.
    pub fn layered(home: &Path, overrides: &[(String, String)]) -> anyhow::Result<Figment> {
        let mut figment = Self::figment(home);
        if let Ok(cmd) = std::env::var("CCD_AGENT_CMD")
            && !cmd.is_empty()
        {
            figment = figment.merge(
                Serialized::default("executor.command", cmd).profile(figment::Profile::Default),
            );
        }
        for (key, value) in overrides {
            let Some((section, name)) = key.split_once('.') else {
                anyhow::bail!(
                    "--set {key}=...: the key must be SECTION.KEY, e.g. executor.pool_size"
                );
            };
            // The value as TOML (a number, a boolean, a quoted string), else as a plain string.
            let as_toml = format!("[{section}]\n{name} = {value}\n");
            let parsed: Result<figment::value::Dict, _> =
                Figment::from(Toml::string(&as_toml)).extract();
            figment = match parsed {
                Ok(_) => figment.merge(Toml::string(&as_toml)),
                Err(_) => figment.merge(Serialized::default(key, value.clone())),
            };
        }
        Ok(figment)
    }

    /// Every effective value with where it came from: (key, value, source).
    pub fn explain(
        home: &Path,
        overrides: &[(String, String)],
    ) -> anyhow::Result<Vec<(String, serde_json::Value, String)>> {
        let config = Self::load_with(home, overrides)?;
        let figment = Self::layered(home, overrides)?;
        let mut out = Vec::new();
        let value = serde_json::to_value(&config)?;
        for (section, fields) in value.as_object().into_iter().flatten() {
            for (name, v) in fields.as_object().into_iter().flatten() {
                let key = format!("{section}.{name}");
                let source = source_of(&figment, home, overrides, &key);
                let shown = redact(&key, v.clone());
                out.push((key, shown, source));
            }
        }
        Ok(out)
    }

    /// The layered sources, in precedence order (lowest first).
    pub fn figment(home: &Path) -> Figment {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(config_path(home)))
            .merge(
                Env::prefixed("CCD_")
                    .filter(|k| {
                        !NOT_CONFIG
                            .iter()
                            .any(|n| k.as_str().eq_ignore_ascii_case(n))
                    })
                    .map(|k| k.as_str().to_ascii_lowercase().replacen('_', ".", 1).into()),
            )
    }

    fn validate(&self) -> anyhow::Result<()> {
        let checks: [(&str, bool, &str); 18] = [
            (
                "events.subscriber_queue",
                self.events.subscriber_queue >= 1,
                "at least 1",
            ),
            (
                "events.retention_days",
                self.events.retention_days >= 1,
                "at least 1",
            ),
            (
                "executor.timeout_ms",
                (1..=24 * 3600 * 1000).contains(&self.executor.timeout_ms),
                "between 1 and 86400000",
            ),
            (
                "executor.queue_size",
                self.executor.queue_size >= 1,
                "at least 1",
            ),
            (
                "executor.pool_size",
                (1..=256).contains(&self.executor.pool_size),
                "between 1 and 256",
            ),
            (
                "executor.command",
                !self.executor.command.trim().is_empty(),
                "a command name or path",
            ),
            (
                "executor.max_line_bytes",
                self.executor.max_line_bytes >= 1024,
                "at least 1024",
            ),
            (
                "session.sweep_interval_s",
                self.session.sweep_interval_s >= 1,
                "at least 1",
            ),
            (
                "ipc.max_message_bytes",
                self.ipc.max_message_bytes >= 1024,
                "at least 1024",
            ),
            (
                "ipc.max_connections",
                self.ipc.max_connections >= 1,
                "at least 1",
            ),
            (
                "ipc.max_inflight_per_connection",
                self.ipc.max_inflight_per_connection >= 1,
                "at least 1",
            ),
            (
                "ipc.max_batch_requests",
                self.ipc.max_batch_requests >= 1,
                "at least 1",
            ),
            (
                "ipc.max_pending_reply_bytes",
                self.ipc.max_pending_reply_bytes >= 1024,
                "at least 1024",
            ),
            ("writer.max_batch", self.writer.max_batch >= 1, "at least 1"),
            (
                "http.max_connections",
                self.http.max_connections >= 2,
                "at least 2",
            ),
            (
                "http.max_event_streams",
                (1..self.http.max_connections).contains(&self.http.max_event_streams),
                "at least 1 and less than `http.max_connections`",
            ),
            (
                "supervisor.window_ms",
                self.supervisor.window_ms >= 1,
                "at least 1",
            ),
            (
                "supervisor.backoff_max_ms",
                self.supervisor.backoff_max_ms >= self.supervisor.backoff_initial_ms,
                "at least supervisor.backoff_initial_ms",
            ),
        ];
        for (key, ok, expected) in checks {
            anyhow::ensure!(ok, "invalid configuration: `{key}` must be {expected}");
        }
        for check in [
            self.limiter.validate(),
            self.breaker.validate(),
            self.retry.validate(),
            self.http.validate(),
        ] {
            check.map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        }
        Ok(())
    }
}

/// Where the effective value of `key` (`section.name`) comes from: a flag, the environment,
/// the config file, or the default.
fn source_of(figment: &Figment, home: &Path, overrides: &[(String, String)], key: &str) -> String {
    let env_name = format!("CCD_{}", key.replacen('.', "_", 1).to_uppercase());
    // A key, or (for an unknown section) any key under it.
    let names = |k: &str| k == key || k.starts_with(&format!("{key}."));
    if overrides.iter().any(|(k, _)| names(k)) {
        "flag (--set)".to_string()
    } else if key == "executor.command"
        && std::env::var("CCD_AGENT_CMD").is_ok_and(|c| !c.is_empty())
    {
        "environment (CCD_AGENT_CMD)".to_string()
    } else if std::env::var_os(&env_name).is_some() {
        format!("environment ({env_name})")
    } else if !key.contains('.')
        && let Some(name) = std::env::vars_os()
            .filter_map(|(n, _)| n.into_string().ok())
            .find(|n| n.starts_with(&format!("{env_name}_")))
    {
        format!("environment ({name})")
    } else {
        match figment.find_metadata(key) {
            Some(m) if m.name.contains("TOML") => format!("{}", config_path(home).display()),
            _ => "default".to_string(),
        }
    }
}

/// The `section.name` keys quoted in backticks in a validation message, each once.
fn backticked_keys(message: &str) -> impl Iterator<Item = &str> {
    let mut seen = Vec::new();
    message
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| k.contains('.') && !k.contains(' '))
        .filter(move |k| {
            let new = !seen.contains(k);
            seen.push(k);
            new
        })
}

fn show_value(v: &figment::value::Value) -> String {
    match v {
        figment::value::Value::String(_, s) => format!("{s:?}"),
        other => other
            .clone()
            .deserialize::<serde_json::Value>()
            .map(|j| j.to_string())
            .unwrap_or_else(|_| "?".into()),
    }
}

/// Each of figment's errors as "`section.key`: what is wrong (from where)", naming the source
/// as `ccd config show` does (the file's full path, the `CCD_*` variable or the `--set` flag)
/// rather than by figment's own provider names and source locations.
fn describe_figment_error(
    e: figment::Error,
    figment: &Figment,
    home: &Path,
    overrides: &[(String, String)],
) -> String {
    e.into_iter()
        .map(|e| {
            let mut path: Vec<&str> = e.path.iter().map(String::as_str).collect();
            if path.first() == Some(&"default") {
                path.remove(0);
            }
            if let figment::error::Kind::UnknownField(field, _) = &e.kind
                && path.last() != Some(&field.as_str())
            {
                path.push(field);
            }
            let key = path.join(".");
            let what = match &e.kind {
                figment::error::Kind::UnknownField(_, expected) => {
                    format!("unknown key (expected one of {})", expected.join(", "))
                }
                kind => kind.to_string(),
            };
            if key.is_empty() {
                what
            } else {
                let source = source_of(figment, home, overrides, &key);
                format!("`{key}`: {what} (from {source})")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Keys whose values are secrets: shown as whether they are set, never as what they are.
const SECRET_KEYS: &[&str] = &["http.token"];

/// `value` as it may be shown or sent for `key`: a secret's is `"(set)"` or `""`.
pub fn redact(key: &str, value: serde_json::Value) -> serde_json::Value {
    if !SECRET_KEYS.contains(&key) {
        return value;
    }
    match value.as_str() {
        Some("") | None => value,
        Some(_) => "(set)".into(),
    }
}

pub fn config_path(home: &Path) -> PathBuf {
    home.join("config.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // The closure's error type is figment's own (`Jail::expect_with`'s signature).
    #[allow(clippy::result_large_err)]
    fn layers_and_errors() {
        figment::Jail::expect_with(|jail| {
            let home = jail.directory().to_path_buf();
            assert_eq!(Config::load(&home).unwrap(), Config::default());

            jail.create_file(
                "config.toml",
                "[ipc]\nmax_connections = 7\n[writer]\nsynchronous = \"full\"\n",
            )?;
            jail.set_env("CCD_IPC_MAX_CONNECTIONS", "9");
            jail.set_env("CCD_HOME", "/elsewhere");
            jail.set_env("CCD_FAULT_INJECTION", "1");
            let c = Config::load(&home).unwrap();
            assert_eq!(c.ipc.max_connections, 9, "env beats the file");
            assert_eq!(c.writer.synchronous, Synchronous::Full);

            jail.set_env("CCD_SUPERVISOR_MAX_RESTARTS", "many");
            let err = format!("{:#}", Config::load(&home).unwrap_err());
            assert!(
                err.contains("`supervisor.max_restarts`: invalid type: found string \"many\"")
                    && err.contains("(from environment (CCD_SUPERVISOR_MAX_RESTARTS))"),
                "{err}"
            );

            jail.set_env("CCD_SUPERVISOR_MAX_RESTARTS", "3");
            jail.create_file("config.toml", "[ipc]\nmax_conections = 7\n")?;
            let err = format!("{:#}", Config::load(&home).unwrap_err());
            let file = config_path(&home);
            assert!(
                err.contains(
                    "`ipc.max_conections`: unknown key (expected one of max_message_bytes, "
                ) && err.contains(&format!("(from {})", file.display())),
                "{err}"
            );

            // A flag's value of the wrong type is blamed on the flag, not on a source location.
            jail.create_file("config.toml", "")?;
            let set = [("executor.pool_size".to_string(), "abc".to_string())];
            let err = format!("{:#}", Config::load_with(&home, &set).unwrap_err());
            assert!(
                err.contains("`executor.pool_size`: invalid type: found string \"abc\"")
                    && err.contains("(from flag (--set))")
                    && !err.contains(".rs:"),
                "{err}"
            );

            // A value of the right type but out of range: the message says where it was set.
            jail.create_file("config.toml", "[executor]\npool_size = 0\n")?;
            let err = format!("{:#}", Config::load(&home).unwrap_err());
            assert!(
                err.contains("`executor.pool_size` must be between 1 and 256")
                    && err.contains("`executor.pool_size` = 0 from")
                    && err.contains("config.toml"),
                "{err}"
            );
            jail.create_file("config.toml", "")?;
            jail.set_env("CCD_RETRY_FACTOR", "0.5");
            let err = format!("{:#}", Config::load(&home).unwrap_err());
            assert!(
                err.contains("`retry.factor` = 0.5 from environment (CCD_RETRY_FACTOR)"),
                "{err}"
            );
            let err = format!(
                "{:#}",
                Config::load_with(&home, &[("retry.factor".into(), "0.25".into())]).unwrap_err()
            );
            assert!(
                err.contains("`retry.factor` = 0.25 from flag (--set)"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn limiter_errors_name_the_real_key_its_value_and_source() {
        figment::Jail::expect_with(|jail| {
            let home = jail.directory().to_path_buf();
            jail.create_file(
                "config.toml",
                "[limiter]
model_rate_per_s = 2000000.0
",
            )?;
            let err = format!("{:#}", Config::load(&home).unwrap_err());
            assert!(
                err.contains("`limiter.model_rate_per_s` must be between 0 and 1000000")
                    && err.contains("`limiter.model_rate_per_s` = 2000000.0 from")
                    && err.contains("config.toml")
                    && !err.contains("limiter.model.rate_per_s"),
                "{err}"
            );
            jail.create_file("config.toml", "")?;
            let set = [
                ("limiter.global_window_max".to_string(), "3".to_string()),
                ("limiter.global_window_ms".to_string(), "0".to_string()),
            ];
            let err = format!("{:#}", Config::load_with(&home, &set).unwrap_err());
            assert!(
                err.contains(
                    "`limiter.global_window_ms` must be at least 1 when \
                     `limiter.global_window_max` is set"
                ) && err.contains("`limiter.global_window_ms` = 0 from flag (--set)"),
                "{err}"
            );

            // A burst of 0 with a rate is refused, not read as 1.
            jail.create_file(
                "config.toml",
                "[limiter]
project_rate_per_s = 5.0
project_burst = 0
",
            )?;
            let err = format!("{:#}", Config::load(&home).unwrap_err());
            assert!(
                err.contains("`limiter.project_burst` must be at least 1 when")
                    && err.contains("`limiter.project_burst` = 0 from"),
                "{err}"
            );
            // Without a rate it means nothing, and stays accepted.
            jail.create_file(
                "config.toml",
                "[limiter]
project_burst = 0
",
            )?;
            assert!(Config::load(&home).is_ok());
            Ok(())
        });
    }
}
