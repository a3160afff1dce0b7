//! `ccd batch`: many prompts through the executor pool, with progress, Ctrl-C cancellation
//! and --resume; results as JSONL.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use ccd_protocol::methods as m;
use ccd_protocol::types::{self};
use ccd_protocol::{ErrorCode, Method};
use clap::Args;
use serde_json::{Value, json};

use crate::client::{CallError, Client};
use crate::exit::{self, UsageError};
use crate::home::Home;
use crate::table::count;

use super::query::QueryOpts;

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// One prompt per line, or JSONL objects with `prompt` and any query.run option; `-`
    /// reads standard input. Blank lines and lines starting with `#` are skipped.
    file: PathBuf,
    /// How many prompts run at once (1 to 256).
    #[arg(long, short, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Write results (JSONL) here instead of stdout. Never the input file; a file that
    /// exists and is not empty only with --force (overwrite it) or --resume (add to it).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Overwrite the --output file if it exists.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Carry on an earlier run into the --output file: skip every prompt that already has a
    /// result there (a record with status `ok` for its line and the same prompt), run the rest
    /// (failed, cancelled, never run, or changed since) and append their records.
    #[arg(long, requires = "output")]
    resume: bool,
    /// Tag every session the batch creates, for `ccd session list --tag T` (repeatable; a
    /// line that continues a `session` keeps that session's tags).
    #[arg(long = "tag", value_name = "T")]
    tags: Vec<String>,
    #[command(flatten)]
    opts: QueryOpts,
}

/// `ccd batch --help`'s epilogue: the records and the summary.
pub const BATCH_HELP: &str = "\
Each prompt's record is one JSON line: {\"line\": N (its line in FILE), \"prompt\", \"status\",
\"ok\", \"result\" (query.run's result) or \"error\" (the JSON-RPC error)}. status is
`ok`, `failed`, or `cancelled` (Ctrl-C, or `ccd cancel`; counted as not run). The summary on
stderr counts them: N ok, N failed, N not run (never started or cancelled), N skipped (--resume).
Exit: 0 all ok; 5 any failed or cancelled; 1 interrupted (Ctrl-C); 2 usage errors.

Examples:
  ccd batch prompts.txt -c 8 -o results.jsonl --tag nightly
  ccd batch prompts.txt -o results.jsonl --resume    # after Ctrl-C or failures: only the rest";

struct Item {
    line: usize,
    params: types::QueryRun,
}

fn load_batch(args: &BatchArgs) -> anyhow::Result<Vec<Item>> {
    let input: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("opening {}", args.file.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut base = args.opts.params(String::new(), false)?;
    base.tags = (!args.tags.is_empty()).then(|| args.tags.clone());
    let mut items = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", args.file.display()))?;
        let n = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut params = base.clone();
        if trimmed.starts_with('{') {
            let mut obj: serde_json::Map<String, Value> =
                serde_json::from_str(trimmed).map_err(|e| {
                    UsageError(format!(
                        "{}:{n}: not a JSON object: {e}",
                        args.file.display()
                    ))
                })?;
            // The line's options win over the command line's.
            let mut fields = serde_json::to_value(&params)?
                .as_object()
                .cloned()
                .unwrap_or_default();
            // A line that names a project, or a session (which runs where its conversation
            // is), does not run in the current directory.
            if (obj.contains_key("project") || obj.contains_key("session"))
                && args.opts.cwd.is_none()
            {
                fields.remove("cwd");
            }
            // --tag tags the sessions the batch creates; one a line continues keeps its own.
            if obj.contains_key("session") {
                fields.remove("tags");
            }
            fields.append(&mut obj);
            params = serde_json::from_value(Value::Object(fields))
                .map_err(|e| UsageError(format!("{}:{n}: {e}", args.file.display())))?;
            // A line's `cwd` is the user's, relative to where `ccd batch` runs; the daemon takes
            // only absolute paths.
            if let Some(cwd) = &params.cwd {
                let abs = std::path::absolute(cwd).with_context(|| format!("resolving {cwd}"))?;
                params.cwd = Some(abs.to_string_lossy().into_owned());
            }
        } else {
            params.prompt = trimmed.to_string();
        }
        params.stream = true;
        items.push(Item { line: n, params });
    }
    Ok(items)
}

/// What `--output` may be: never the input file, and a file that already holds results only
/// with --force or --resume. With --resume, the results it holds: the line and prompt of each
/// `ok` record.
fn check_output(args: &BatchArgs, out: &std::path::Path) -> anyhow::Result<HashSet<(u64, String)>> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
    };
    // A device or a pipe (/dev/null, /dev/stdout) is written to as it is: nothing in it to lose.
    if !meta.is_file() {
        return Ok(HashSet::new());
    }
    let input = if args.file.as_os_str() == "-" {
        std::path::Path::new("/dev/stdin")
    } else {
        args.file.as_path()
    };
    if let Ok(input_meta) = std::fs::metadata(input)
        && (input_meta.dev(), input_meta.ino()) == (meta.dev(), meta.ino())
    {
        return Err(UsageError(format!(
            "--output {} is the input file{}: the results would replace the prompts; give \
             another -o FILE",
            out.display(),
            if args.file.as_os_str() == "-" {
                " (standard input)".to_string()
            } else {
                format!(" {}", args.file.display())
            }
        ))
        .into());
    }
    if meta.len() == 0 || args.force {
        return Ok(HashSet::new());
    }
    if !args.resume {
        return Err(UsageError(format!(
            "--output {} exists: give --force to overwrite it, --resume to run only the prompts \
             it has no result for (and add theirs to it), or another -o FILE",
            out.display()
        ))
        .into());
    }
    let file = std::fs::File::open(out).with_context(|| format!("opening {}", out.display()))?;
    let mut done = HashSet::new();
    let mut unreadable = 0usize;
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.with_context(|| format!("reading {}", out.display()))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(record) = serde_json::from_slice::<Value>(&line) else {
            unreadable += 1;
            continue;
        };
        // Records written before `status` existed say it with `ok` alone.
        let ok = match record.get("status") {
            Some(status) => status == "ok",
            None => record["ok"] == true,
        };
        if let (true, Some(n), Some(prompt)) =
            (ok, record["line"].as_u64(), record["prompt"].as_str())
        {
            done.insert((n, prompt.to_string()));
        }
    }
    if unreadable > 0 {
        eprintln!(
            "--resume: {} of {} are not JSON records; ignored",
            count(unreadable, "line"),
            out.display()
        );
    }
    Ok(done)
}

pub fn run(home: &Home, autostart: bool, args: BatchArgs) -> anyhow::Result<u8> {
    let done = match &args.output {
        Some(out) => check_output(&args, out)?,
        None => HashSet::new(),
    };
    let mut items = load_batch(&args)?;
    if items.is_empty() {
        anyhow::bail!("{} has no prompts", args.file.display());
    }
    let total = items.len();
    items.retain(|i| !done.contains(&(i.line as u64, i.params.prompt.clone())));
    let skipped = total - items.len();
    if let (true, Some(out)) = (args.resume, &args.output) {
        eprintln!(
            "--resume: {} of {} already {} a result in {}: skipped",
            skipped,
            count(total, "prompt"),
            if skipped == 1 { "has" } else { "have" },
            out.display()
        );
    }
    if items.is_empty() {
        eprintln!("batch: nothing to run, {skipped} skipped");
        return Ok(exit::OK);
    }
    let concurrency = usize::from(args.concurrency);
    // Fail early, before any thread starts, when the daemon cannot be reached.
    drop(crate::daemon::connect_or_start(home, autostart)?);

    let mut sink: Box<dyn Write + Send> = match &args.output {
        Some(p) if args.resume => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?;
            // A record cut short (the batch was killed while writing it) ends its line, so that
            // the next one starts on a line of its own.
            if ends_without_newline(&mut file)? {
                file.write_all(b"\n")
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            Box::new(std::io::BufWriter::new(file))
        }
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    };
    let bar = indicatif::ProgressBar::new(items.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let interrupted = Arc::new(AtomicBool::new(false));
    let live: Arc<Mutex<Live>> = Arc::default();
    {
        let (interrupted, live, home) = (interrupted.clone(), live.clone(), home.clone());
        ctrlc::set_handler(move || {
            interrupted.store(true, Ordering::SeqCst);
            // Cancel what runs; finished results are already written. A worker whose query
            // has no id here yet (queued, waiting for the limiter, or an agent that has printed
            // nothing) hangs up, which cancels it on the daemon's side; a query with an id is
            // cancelled by id, so that its record says -32008.
            let ids: Vec<String> = match live.lock() {
                Ok(live) => {
                    for fd in live.idle_sockets.values() {
                        if let Ok(fd) = fd.try_clone() {
                            let _ = std::os::unix::net::UnixStream::from(fd)
                                .shutdown(std::net::Shutdown::Both);
                        }
                    }
                    live.ids.iter().cloned().collect()
                }
                Err(_) => Vec::new(),
            };
            if let Ok(mut c) = Client::connect(&home) {
                for id in ids {
                    let _ = c.call::<m::QueryCancel>(&types::QueryCancel { query_id: id });
                }
            }
        })
        .context("installing the Ctrl-C handler")?;
    }

    let next = AtomicUsize::new(0);
    let counts = Counts::default();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::scope(|s| -> anyhow::Result<()> {
        for worker in 0..concurrency.min(items.len()) {
            let tx = tx.clone();
            let (items, next, interrupted, live, counts) =
                (&items, &next, &interrupted, &live, &counts);
            s.spawn(move || {
                let mut client: Option<Client> = None;
                loop {
                    if interrupted.load(Ordering::SeqCst) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { return };
                    let record = run_one(home, &mut client, item, worker, live, interrupted);
                    let Some(record) = record else { return };
                    match record["status"].as_str() {
                        Some(STATUS_OK) => &counts.ok,
                        Some(STATUS_CANCELLED) => &counts.cancelled,
                        _ => &counts.failed,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    if tx.send(record).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for record in rx {
            writeln!(sink, "{record}").context("writing results")?;
            sink.flush().ok();
            bar.inc(1);
            bar.set_message(counts.summary(0, 0));
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let (ok, failed, cancelled) = counts.get();
    let never_started = items.len() - ok - failed - cancelled;
    eprintln!("batch: {}", counts.summary(never_started, skipped));
    // the exit codes: an interrupted batch did not do its job (1), whatever finished.
    Ok(if interrupted.load(Ordering::SeqCst) {
        exit::ERROR
    } else if failed > 0 || cancelled > 0 {
        exit::AGENT_FAILED
    } else {
        exit::OK
    })
}

/// Whether `file` is not empty and its last byte is not a newline.
fn ends_without_newline(file: &mut std::fs::File) -> anyhow::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// A record's `status`: its query answered; failed (any error but a cancellation); or was
/// cancelled (Ctrl-C, `ccd cancel`), which counts as not run and runs again with --resume.
const STATUS_OK: &str = "ok";
const STATUS_FAILED: &str = "failed";
const STATUS_CANCELLED: &str = "cancelled";

/// How the batch's prompts ended, as the workers count them.
#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    failed: AtomicUsize,
    cancelled: AtomicUsize,
}

impl Counts {
    fn get(&self) -> (usize, usize, usize) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.cancelled.load(Ordering::Relaxed),
        )
    }

    /// "N ok, N failed[, N not run (N cancelled)][, N skipped]": cancelled prompts did not run,
    /// like those that never started.
    fn summary(&self, never_started: usize, skipped: usize) -> String {
        let (ok, failed, cancelled) = self.get();
        let mut s = format!("{ok} ok, {failed} failed");
        let not_run = never_started + cancelled;
        if not_run > 0 {
            s.push_str(&format!(", {not_run} not run"));
            if cancelled > 0 {
                s.push_str(&format!(" ({cancelled} cancelled)"));
            }
        }
        if skipped > 0 {
            s.push_str(&format!(
                ", {skipped} skipped (a result already in the output)"
            ));
        }
        s
    }
}

/// What a batch's Ctrl-C handler cancels: the ids of the queries known to run, and the
/// connections of the workers whose query has no id yet (or that are between queries).
#[derive(Default)]
struct Live {
    ids: HashSet<String>,
    idle_sockets: HashMap<usize, OwnedFd>,
}

/// Run one prompt on this worker's connection; returns its JSONL record.
/// `None` when a Ctrl-C came before the prompt was sent.
fn run_one(
    home: &Home,
    client: &mut Option<Client>,
    item: &Item,
    worker: usize,
    live: &Mutex<Live>,
    interrupted: &AtomicBool,
) -> Option<Value> {
    let mut query_id: Option<String> = None;
    // The worker's connection while its query has an id (cancelled by id, not by hanging up).
    let mut socket: Option<OwnedFd> = None;
    let conn = match client {
        Some(c) => Ok(c),
        None => Client::connect(home).map(|c| {
            // Registered for a Ctrl-C to hang up; one that came before did not see it.
            if let (Some(fd), Ok(mut live)) = (c.socket(), live.lock()) {
                live.idle_sockets.insert(worker, fd);
            }
            client.insert(c)
        }),
    };
    if interrupted.load(Ordering::SeqCst) {
        return None;
    }
    let outcome = conn.and_then(|c| {
        let params = serde_json::to_value(&item.params).map_err(|e| CallError::Other(e.into()))?;
        c.call_streaming(m::QueryRun::NAME, Some(params), |note| {
            if query_id.is_none()
                && let Some(id) = note.params.get("query_id").and_then(Value::as_str)
            {
                query_id = Some(id.to_string());
                if let Ok(mut live) = live.lock() {
                    live.ids.insert(id.to_string());
                    socket = live.idle_sockets.remove(&worker);
                }
            }
        })
    });
    if let (Some(id), Ok(mut live)) = (&query_id, live.lock()) {
        live.ids.remove(id);
        if let Some(fd) = socket {
            live.idle_sockets.insert(worker, fd);
        }
    }
    Some(match outcome {
        Ok(result) => json!({
            "line": item.line,
            "prompt": item.params.prompt,
            "status": STATUS_OK,
            "ok": true,
            "result": result,
        }),
        Err(e) => {
            if !matches!(e, CallError::Rpc(_)) {
                // Reconnect for the next prompt; the old connection is not Ctrl-C's to close.
                *client = None;
                if let Ok(mut live) = live.lock() {
                    live.idle_sockets.remove(&worker);
                }
            }
            let (status, error) = match e {
                CallError::Rpc(e) if e.kind() == Some(ErrorCode::Cancelled) => (
                    STATUS_CANCELLED,
                    serde_json::to_value(e).unwrap_or_default(),
                ),
                CallError::Rpc(e) => (STATUS_FAILED, serde_json::to_value(e).unwrap_or_default()),
                // Ctrl-C hung up on this query: that is what ended it.
                _ if interrupted.load(Ordering::SeqCst) => (
                    STATUS_CANCELLED,
                    json!({ "message": "interrupted (Ctrl-C): the batch hung up, which cancelled the query" }),
                ),
                other => (STATUS_FAILED, json!({ "message": other.to_string() })),
            };
            json!({
                "line": item.line,
                "prompt": item.params.prompt,
                "status": status,
                "ok": false,
                "error": error,
            })
        }
    })
}
