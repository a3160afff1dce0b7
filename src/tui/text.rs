//! The words and numbers the dashboard shows: an event on one line, durations, counts,
//! breaker keys and limits in a few words.

use ccd_protocol::types::{Event, EventKind, LimitSpec, TurnStatus};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

/// One event on one line: time, type, then its key fields.
pub(super) fn event_line(e: &Event) -> Line<'static> {
    let time = e.ts.get(11..19).unwrap_or(&e.ts).to_string();
    let (style, fields) = describe(&e.kind);
    Line::from(vec![
        Span::styled(format!("{time} "), Style::new().fg(Color::DarkGray)),
        Span::styled(format!("#{:<6} ", e.seq), Style::new().fg(Color::DarkGray)),
        Span::styled(format!("{:<19} ", e.kind.type_name()), style),
        Span::raw(fields),
    ])
}

/// The style of an event's type, and its key fields as text.
pub(super) fn describe(kind: &EventKind) -> (Style, String) {
    let good = Style::new().fg(Color::Green);
    let bad = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
    let warn = Style::new().fg(Color::Yellow);
    let info = Style::new().fg(Color::Cyan);
    let plain = Style::new();
    let proj = |p: &Option<String>| {
        p.as_deref()
            .map(|p| format!(" project={p}"))
            .unwrap_or_default()
    };
    let model = |m: &Option<String>| {
        m.as_deref()
            .map(|m| format!(" model={m}"))
            .unwrap_or_default()
    };
    match kind {
        EventKind::SessionCreated {
            session_id,
            project,
        } => (
            info,
            format!("session={}{}", short(session_id), proj(project)),
        ),
        EventKind::SessionClosed { session_id } => {
            (plain, format!("session={}", short(session_id)))
        }
        EventKind::SessionError {
            session_id,
            query_id,
            project,
            class,
            detail,
        } => (
            bad,
            format!(
                "query={} session={}{} class={class} {detail}",
                short(query_id),
                short(session_id),
                proj(project)
            ),
        ),
        EventKind::TurnStarted {
            session_id,
            query_id,
            project,
            model: m,
        } => (
            info,
            format!(
                "query={} session={}{}{}",
                short(query_id),
                short(session_id),
                proj(project),
                model(m)
            ),
        ),
        EventKind::TurnCompleted {
            query_id,
            project,
            model: m,
            status,
            duration_ms,
            attempts,
            ..
        } => (
            if *status == TurnStatus::Ok { good } else { bad },
            format!(
                "query={} status={status} in {}{}{}{}",
                short(query_id),
                format_ms(*duration_ms),
                if *attempts > 1 {
                    format!(" attempts={attempts}")
                } else {
                    String::new()
                },
                proj(project),
                model(m)
            ),
        ),
        EventKind::ToolCalled { query_id, tool, .. } => {
            (plain, format!("query={} tool={tool}", short(query_id)))
        }
        EventKind::ToolResult {
            query_id,
            tool_use_id,
            is_error,
            ..
        } => (
            if *is_error { warn } else { plain },
            format!(
                "query={} tool_use={}{}",
                short(query_id),
                short(tool_use_id),
                if *is_error { " error" } else { "" }
            ),
        ),
        EventKind::TokensUsed {
            query_id, usage, ..
        } => (
            plain,
            format!(
                "query={} in={} out={} cache_write={} cache_read={}",
                short(query_id),
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_creation_input_tokens,
                usage.cache_read_input_tokens
            ),
        ),
        EventKind::CostIncurred {
            query_id, cost_usd, ..
        } => (
            plain,
            format!("query={} cost=${cost_usd:.4}", short(query_id)),
        ),
        EventKind::QueryRetried {
            query_id,
            attempt,
            delay_ms,
            error,
            ..
        } => (
            warn,
            format!(
                "query={} attempt={attempt} after {} {error}",
                short(query_id),
                format_ms(*delay_ms)
            ),
        ),
        EventKind::ActorStarted { actor } => (good, format!("actor={actor}")),
        EventKind::ActorRestarted { actor, reason } => (warn, format!("actor={actor} {reason}")),
        EventKind::ActorFailed { actor, reason } => (bad, format!("actor={actor} {reason}")),
        EventKind::BreakerOpened { key, reason } => (bad, format!("key={key} {reason}")),
        EventKind::BreakerHalfOpened { key, reason } => (warn, format!("key={key} {reason}")),
        EventKind::BreakerClosed { key, reason } => (good, format!("key={key} {reason}")),
        EventKind::LimiterThrottled {
            query_id,
            project,
            model: m,
            key,
            retry_after_ms,
            ..
        } => (
            warn,
            format!(
                "query={} key={key} retry_after={}{}{}",
                short(query_id),
                format_ms(*retry_after_ms),
                proj(project),
                model(m)
            ),
        ),
        EventKind::VfsMounted { mountpoint } | EventKind::VfsUnmounted { mountpoint } => {
            (plain, format!("mountpoint={mountpoint}"))
        }
        EventKind::DaemonStarted { pid, version } => (good, format!("pid={pid} version={version}")),
        EventKind::DaemonStopping { pid } => (warn, format!("pid={pid}")),
        EventKind::Lagged { missed } => (bad, format!("missed={missed} (this view fell behind)")),
    }
}

/// A breaker's key (`<agent command>|<model>`) with the command's directory left out.
pub(super) fn breaker_key(key: &str) -> String {
    match key.split_once('|') {
        Some((cmd, model)) => {
            let cmd = cmd.rsplit('/').next().unwrap_or(cmd);
            format!("{cmd}|{model}")
        }
        None => key.to_string(),
    }
}

/// The first 8 characters of an id.
pub(super) fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// 1234 as "1.2k", 5_600_000 as "5.6M".
pub(super) fn compact(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

/// A duration the way a person says it: 850ms, 12s, 5m 12s, 3h 4m, 2d 5h.
pub(super) fn format_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 if ms < 1000 => format!("{ms}ms"),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A scope's limits in a few words.
pub(super) fn spec(s: &LimitSpec) -> String {
    if s.is_off() {
        return "off".into();
    }
    let mut parts = Vec::new();
    if s.rate_per_s > 0.0 {
        parts.push(format!("{}/s burst {}", s.rate_per_s, s.burst));
    }
    if s.window_max > 0 {
        parts.push(format!("{} per {}", s.window_max, format_ms(s.window_ms)));
    }
    if s.concurrency > 0 {
        parts.push(format!("{} at once", s.concurrency));
    }
    parts.join(", ")
}
