//! What the commands' arguments are parsed with, beyond clap's own: `--set`, `--env`,
//! durations and timeouts; and the flags several commands share.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// What `--help` says of `--set`, wherever it is taken.
pub const SET_HELP: &str = "Override a config value (repeatable), e.g. --set executor.pool_size=8. \
    A VALUE of @FILE is read from FILE, @- from stdin (one trailing newline dropped; @@ for a \
    value that starts with @): for secrets such as http.token, which on the command line any \
    local user could read with ps.";

/// A `--set SECTION.KEY=VALUE` config override. Whether the key exists is the configuration's
/// to say (as for config.toml and the environment); its shape is a usage error here. A value
/// `@FILE` is read from FILE (`@-`: stdin), so that a secret need not be on the command line,
/// which every local user can read; `@@...` is a value that starts with `@`.
pub fn parse_set(s: &str) -> Result<(String, String), String> {
    let (key, value) = parse_env(s)?;
    let word = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match key.split_once('.') {
        Some((section, name)) if word(section) && word(name) => {
            let value = set_value(&key, value)?;
            Ok((key, value))
        }
        _ => Err(format!(
            "`{key}` is not SECTION.KEY: give e.g. executor.pool_size=8 (`ccd config show` lists the keys)"
        )),
    }
}

/// A `--set` value as given, or read from the file (or stdin) that `@FILE` (`@-`) names.
fn set_value(key: &str, value: String) -> Result<String, String> {
    let Some(source) = value.strip_prefix('@') else {
        return Ok(value);
    };
    if source.starts_with('@') {
        return Ok(source.to_string());
    }
    let text = if source == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| format!("{key}=@-: reading stdin: {e}"))?;
        text
    } else if source.is_empty() {
        return Err(format!(
            "{key}=@: give @FILE or @- (stdin), or @@ for a value that starts with @"
        ));
    } else {
        std::fs::read_to_string(source).map_err(|e| format!("{key}=@{source}: {e}"))?
    };
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

/// A `--timeout`: a duration (`30s`, `500ms`, `2m`) or a bare number of seconds; never zero.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(24 * 3600);
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{e}: give a duration (30s, 500ms, 2m) or a number of seconds"))?,
    };
    if d.is_zero() {
        return Err("a timeout must be longer than zero".into());
    }
    if d > MAX {
        return Err("a timeout is at most 24h (86400 seconds)".into());
    }
    Ok(d)
}

/// An age or a span of time, as `--since`/`--older-than` take it.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{e}: give a duration such as 90s, 10m, 12h, 7d or 2w (units ms, s, m, h, d, w)")
    })
}

/// `dir` as an absolute path (relative to the current directory), as the daemon wants it.
pub fn absolute(dir: &std::path::Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    Ok(abs.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn set_values_may_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret=x\n").unwrap();
        let arg = format!("http.token=@{}", file.display());
        assert_eq!(
            super::parse_set(&arg).unwrap(),
            ("http.token".to_string(), "s3cret=x".to_string())
        );
        // Only one trailing newline is dropped; `@@` is a literal `@`.
        std::fs::write(&file, "two\n\n").unwrap();
        assert_eq!(super::parse_set(&arg).unwrap().1, "two\n");
        assert_eq!(super::parse_set("a.b=@@x").unwrap().1, "@x");
        assert_eq!(super::parse_set("a.b=x@y").unwrap().1, "x@y");
        let err = super::parse_set("a.b=@/no/such/file").unwrap_err();
        assert!(err.contains("a.b=@/no/such/file"), "{err}");
        assert!(super::parse_set("a.b=@").is_err());
    }
}
