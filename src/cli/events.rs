//! `ccd events`: the recent event log (read directly), or live with --follow.

use std::io::Write;
use std::time::Duration;

use ccd_actors::store;
use ccd_protocol::Method;
use ccd_protocol::methods as m;
use ccd_protocol::types::{self};
use clap::Args;

use super::args::parse_duration;
use crate::client::{CallError, Client};
use crate::exit::{self, UsageError};
use crate::home::{Home, read};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing events as they happen (until Ctrl-C), across daemon restarts.
    #[arg(long, short)]
    follow: bool,
    /// Only this event type (repeatable), e.g. --type turn.completed.
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Only events newer than this (e.g. 1h, 7d).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// How many recent events to print (without --follow).
    #[arg(short = 'n', long, default_value_t = 50)]
    lines: u32,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub fn run(home: &Home, args: EventsArgs) -> anyhow::Result<u8> {
    let EventsArgs {
        follow,
        types,
        since,
        lines,
        json,
    } = args;
    if let Some(bad) = types
        .iter()
        .find(|t| !types::EVENT_TYPES.contains(&t.as_str()))
    {
        return Err(UsageError(format!(
            "unknown event type `{bad}`; known: {}",
            types::EVENT_TYPES.join(", ")
        ))
        .into());
    }
    let since_ms = since
        .map(|d| store::now_ms() - d.as_millis() as i64)
        .unwrap_or(0);
    let mut out = std::io::stdout().lock();
    if !follow {
        let events = read(home, |c| store::recent_events(c, since_ms, &types, lines))?;
        for e in &events {
            print_event(&mut out, e, json)?;
        }
        if events.is_empty() && !json {
            writeln!(out, "no events")?;
        }
        return Ok(exit::OK);
    }
    let filter = types::EventFilter {
        types: (!types.is_empty()).then_some(types),
        ..Default::default()
    };
    follow_events(home, filter, json, &mut out)
}

/// `ccd events --follow`: print events live until interrupted. When the daemon goes away (a
/// restart, a stop) it waits for it to come back, trying again with a backoff, and resumes
/// after the last event it saw (`after_seq`): each event is printed once, in order.
fn follow_events(
    home: &Home,
    filter: types::EventFilter,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    const FIRST_RETRY: Duration = Duration::from_millis(100);
    const MAX_RETRY: Duration = Duration::from_secs(2);
    // The last event seen (printed, or passed over by the daemon's filter): where to resume.
    let seen = std::cell::Cell::new(None::<u64>);
    let mut retry = FIRST_RETRY;
    let mut lost: Option<String> = None;
    loop {
        let mut client = match Client::connect(home) {
            Ok(c) => c,
            // Not running when the command starts: say so (exit 3), as every command does.
            Err(e) if lost.is_none() => return Err(e.into()),
            Err(CallError::NotRunning(_) | CallError::NoAnswer(_)) => {
                std::thread::sleep(retry);
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let filter = types::EventFilter {
            after_seq: seen.get(),
            ..filter.clone()
        };
        let mut failed = None;
        let resumed = lost.take().is_some();
        let outcome = client.follow_with(
            m::EventSubscribe::NAME,
            Some(serde_json::to_value(&filter)?),
            |result| {
                let Ok(sub) = serde_json::from_value::<types::Subscribed>(result.clone()) else {
                    return;
                };
                if resumed {
                    eprintln!(
                        "ccd: reconnected to the daemon; resuming after event {}",
                        filter.after_seq.unwrap_or(0)
                    );
                }
                match filter.after_seq {
                    // The log was started afresh (a new database): its numbers start again.
                    Some(after) if after > sub.last_seq => {
                        eprintln!(
                            "ccd: the daemon's event log restarted its numbering (now at {}); \
                             following from there",
                            sub.last_seq
                        );
                        seen.set(Some(sub.last_seq));
                    }
                    // Resuming: replayed events may still be on their way; `seen` follows them.
                    Some(_) => {}
                    // The first subscription: live events (some may have come before this
                    // answer) are all after `last_seq`, where a later resumption starts.
                    None => seen.set(Some(seen.get().unwrap_or(sub.last_seq))),
                }
            },
            |note| {
                if note.method != "event" {
                    return true;
                }
                let Ok(e) = serde_json::from_value::<types::Event>(note.params.clone()) else {
                    return true; // an event type newer than this CLI: skip it
                };
                let lagged = matches!(e.kind, types::EventKind::Lagged { .. });
                if !lagged {
                    if seen.get().is_some_and(|s| e.seq <= s) {
                        return true; // printed already
                    }
                    seen.set(Some(e.seq));
                }
                match print_event(out, &e, json) {
                    Ok(()) => true,
                    Err(err) => {
                        failed = Some(err);
                        false
                    }
                }
            },
        );
        if let Some(e) = failed {
            return Err(e);
        }
        match outcome {
            Ok(()) => return Ok(exit::OK),
            Err(CallError::NotRunning(why) | CallError::NoAnswer(why)) => {
                eprintln!("ccd: lost the daemon ({why}); waiting for it to come back…");
                lost = Some(why);
                retry = FIRST_RETRY;
            }
            // The daemon is there but cannot take the subscription now (its gateway is
            // restarting, say): try again.
            Err(CallError::Rpc(e)) if seen.get().is_some() => {
                eprintln!(
                    "ccd: {}: {}; trying again…",
                    m::EventSubscribe::NAME,
                    e.message
                );
                lost = Some(e.message);
                std::thread::sleep(MAX_RETRY);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One event: a JSON line, or `time  #seq  type  key=value ...`.
fn print_event(out: &mut impl Write, e: &types::Event, json: bool) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
    } else {
        let mut fields = String::new();
        if let serde_json::Value::Object(map) = serde_json::to_value(&e.kind)? {
            for (k, v) in map.iter().filter(|(k, _)| k.as_str() != "type") {
                if v.is_null() {
                    continue;
                }
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                fields.push_str(&format!(" {k}={v}"));
            }
        }
        writeln!(
            out,
            "{}  #{:<6} {:<18}{}",
            e.ts,
            e.seq,
            e.kind.type_name(),
            fields
        )?;
    }
    out.flush()?;
    Ok(())
}
