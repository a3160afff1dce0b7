//! Checks of params beyond their JSON types; errors are -32602 naming the parameter.

use ccd_protocol::RpcError;

pub const MAX_SETTING_VALUE: usize = 1024 * 1024;

pub fn project_name(param: &str, name: &str) -> Result<(), RpcError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let ok = (1..=64).contains(&name.len()) && ok_chars && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(RpcError::invalid_params(format!(
            "invalid params: `{param}`: `{name}` is not a valid project name (1 to 64 of letters, digits, `.`, `_`, `-`; not starting with `.` or `-`)"
        )))
    }
}

/// An existing directory, returned canonical.
pub fn dir(param: &str, path: &str) -> Result<String, RpcError> {
    let bad = |why: String| RpcError::invalid_params(format!("invalid params: `{param}`: {why}"));
    if path.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    // Relative to what? The daemon's own directory is `/`, not the client's.
    if !std::path::Path::new(path).is_absolute() {
        return Err(bad(format!("must be absolute, got `{path}`")));
    }
    let canonical = std::fs::canonicalize(path).map_err(|e| bad(format!("{path}: {e}")))?;
    if !canonical.is_dir() {
        return Err(bad(format!("{path} is not a directory")));
    }
    canonical
        .into_os_string()
        .into_string()
        .map_err(|_| bad(format!("{path} is not valid UTF-8")))
}

/// A listing's `limit`: at most this many per call, 1000 when not given.
pub fn page_limit(method: &str, limit: Option<u32>) -> Result<u32, RpcError> {
    let limit = limit.unwrap_or(1000);
    if !(1..=100_000).contains(&limit) {
        return Err(RpcError::invalid_params(format!(
            "invalid params for {method}: `limit`: must be between 1 and 100000"
        )));
    }
    Ok(limit)
}

/// Known event types only, and at least one when given (absent means all; an empty list
/// would match nothing, and `event.list` once took it to mean all).
pub fn event_types(param: &str, types: Option<&[String]>) -> Result<(), RpcError> {
    let Some(types) = types else { return Ok(()) };
    if types.is_empty() {
        return Err(RpcError::invalid_params(format!(
            "invalid params: `{param}`: name at least one event type, or leave it out for all"
        )));
    }
    match types
        .iter()
        .find(|t| !ccd_protocol::types::EVENT_TYPES.contains(&t.as_str()))
    {
        Some(t) => Err(RpcError::invalid_params(format!(
            "invalid params: `{param}`: unknown event type `{t}` (see docs/protocol.md for the list)"
        ))),
        None => Ok(()),
    }
}

/// An age (`1h`, `7d`) or an RFC 3339 time, as milliseconds since the epoch.
pub fn since(param: &str, s: &str) -> Result<i64, RpcError> {
    if let Ok(age) = humantime::parse_duration(s) {
        return Ok(
            crate::store::now_ms().saturating_sub(age.as_millis().min(i64::MAX as u128) as i64)
        );
    }
    rfc3339_ms(s).ok_or_else(|| {
        RpcError::invalid_params(format!(
            "invalid params: `{param}`: `{s}` is neither an age (1h, 7d) nor an RFC 3339 time \
             (such as 2026-11-28T09:00:00Z or 2026-11-28T10:00:00+01:00)"
        ))
    })
}

/// An RFC 3339 time (`Z` or a `±HH:MM` offset, either case of `T` and `Z`, a space for
/// `T`), as milliseconds since the epoch. humantime reads only UTC, and its lenient
/// parser ignores an offset it does not understand: the offset is taken off here.
fn rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.to_ascii_uppercase();
    // The time of day, after the date: where a zone would be.
    let time = s.split_once(['T', ' ']).map_or("", |(_, t)| t);
    let (utc, offset_min) = match s.strip_suffix('Z') {
        Some(utc) => (utc, 0),
        // No zone at all: read as UTC, as before offsets were read.
        None if !time.contains(['+', '-']) => (s.as_str(), 0),
        None => {
            let (utc, offset) = s.split_at_checked(s.len().checked_sub(6)?)?;
            let b = offset.as_bytes();
            let sign = match b[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let digits = |r: std::ops::Range<usize>| {
                b[r.clone()]
                    .iter()
                    .all(u8::is_ascii_digit)
                    .then(|| offset[r].parse::<i64>().ok())?
            };
            let (h, m) = (digits(1..3)?, digits(4..6)?);
            if b[3] != b':' || h > 23 || m > 59 {
                return None;
            }
            (utc, sign * (h * 60 + m))
        }
    };
    // A date alone, or a time without its date, is not a time.
    if !utc.contains(['T', ' ']) {
        return None;
    }
    let t = humantime::parse_rfc3339_weak(&format!("{utc}Z")).ok()?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    Some(i64::try_from(ms).ok()? - offset_min * 60_000)
}

/// Environment variable names and values the OS can take.
pub fn env(param: &str, env: &std::collections::BTreeMap<String, String>) -> Result<(), RpcError> {
    for (k, v) in env {
        let name_ok = !k.is_empty() && !k.contains('=') && !k.contains('\0');
        if !name_ok || v.contains('\0') {
            return Err(RpcError::invalid_params(format!(
                "invalid params: `{param}`: `{k}` is not a valid environment variable (no `=` or NUL in names, no NUL in values)"
            )));
        }
    }
    Ok(())
}

pub fn setting(key: &str, value: Option<&str>) -> Result<(), RpcError> {
    if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
        return Err(RpcError::invalid_params(
            "invalid params: `key`: must be 1 to 256 bytes (UTF-8) with no control characters",
        ));
    }
    if value.is_some_and(|v| v.len() > MAX_SETTING_VALUE) {
        return Err(RpcError::invalid_params(format!(
            "invalid params: `value`: longer than {MAX_SETTING_VALUE} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        for ok in ["a", "my-proj_1.x", &"a".repeat(64)] {
            assert!(project_name("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a b", "a/b", &"a".repeat(65), "é"] {
            let e = project_name("name", bad).unwrap_err();
            assert!(e.message.contains("`name`"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn dirs_must_exist() {
        let d = tempfile::tempdir().unwrap();
        let got = dir("path", d.path().to_str().unwrap()).unwrap();
        assert_eq!(
            got,
            std::fs::canonicalize(d.path()).unwrap().to_str().unwrap()
        );
        assert!(
            dir("path", "/definitely/not/here")
                .unwrap_err()
                .message
                .contains("`path`")
        );
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        assert!(
            dir("path", f.to_str().unwrap())
                .unwrap_err()
                .message
                .contains("not a directory")
        );
    }

    #[test]
    fn since_reads_ages_and_rfc3339_times_with_their_offsets() {
        let at = |s: &str| since("since", s).unwrap();
        let utc = at("2026-11-28T10:00:00Z");
        assert_eq!(utc, 1_795_860_000_000);
        assert_eq!(at("2026-11-28T10:00:00+00:00"), utc);
        assert_eq!(at("2026-11-28T11:00:00+01:00"), utc);
        assert_eq!(at("2026-11-28T05:00:00-05:00"), utc);
        assert_eq!(at("2026-11-28T10:00:00-00:00"), utc);
        assert_eq!(at("2026-11-28t10:00:00z"), utc);
        assert_eq!(at("2026-11-28 10:00:00Z"), utc);
        assert_eq!(at("2026-11-28T10:00:00"), utc, "no zone: UTC");
        assert_eq!(at("2026-11-28 10:00:00"), utc);
        assert_eq!(at("2026-11-28T12:00:00.5+02:00"), utc + 500);
        let age = at("1h");
        let now = crate::store::now_ms();
        assert!((now - 3_600_000 - 1_000..=now - 3_600_000).contains(&age));
        for bad in [
            "2026-11-28",
            "yesterday",
            "2026-11-28T10:00:00+1:00",
            "2026-11-28T10:00:00+01:60",
            "2026-11-28T10:00:00+0100",
            "+01:00",
            "",
        ] {
            let e = since("since", bad).unwrap_err();
            assert!(e.message.contains("`since`"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn event_types_are_known_and_never_an_empty_list() {
        assert!(event_types("types", None).is_ok());
        assert!(event_types("types", Some(&["turn.completed".to_string()])).is_ok());
        assert!(event_types("types", Some(&[])).is_err());
        assert!(event_types("types", Some(&["nope".to_string()])).is_err());
    }

    #[test]
    fn setting_keys_and_values() {
        assert!(setting("a.b", Some("v")).is_ok());
        assert!(setting("", None).is_err());
        assert!(setting("a\nb", None).is_err());
        assert!(setting("k", Some(&"x".repeat(MAX_SETTING_VALUE + 1))).is_err());
    }
}
