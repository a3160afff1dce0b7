//! The daemon's logging: tracing to `$CCD_HOME/logs/ccd.log` (rotated at 10 MiB, 5 files
//! kept: ccd.log.1 ... ccd.log.5) through tracing-appender's non-blocking writer, filtered by
//! `CCD_LOG` (default `info`); also to stderr when the daemon runs in the foreground.

use file_rotate::{ContentLimit, FileRotate, compression::Compression, suffix::AppendCount};
use std::io::Write;
use tracing_appender::non_blocking::WorkerGuard;

use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriter};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::home::Home;

const MAX_LOG_BYTES: usize = 10 * 1024 * 1024;
const KEEP_FILES: usize = 5;
/// Lines queued for the log-writing thread before new ones are dropped. tracing-appender's
/// default (128,000) preallocates and touches a 4 MiB queue, a fifth of the idle daemon's
/// memory; the writer thread drains the queue as fast as the file takes it, so a few thousand
/// lines absorb any burst the daemon produces.
const LOG_QUEUE_LINES: usize = 8192;

/// Install the subscriber; keep the guard alive until exit so buffered lines are written.
pub fn init(home: &Home, to_stderr: bool) -> anyhow::Result<WorkerGuard> {
    let filter = match std::env::var("CCD_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec)
            .map_err(|e| anyhow::anyhow!("invalid CCD_LOG filter `{spec}`: {e}"))?,
        _ => EnvFilter::new("info"),
    };
    let file = FileRotate::new(
        home.log_file(),
        AppendCount::new(KEEP_FILES),
        ContentLimit::BytesSurpassed(MAX_LOG_BYTES),
        Compression::None,
        None,
    );
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(LineAfterCut::new(file));
    let file_layer = fmt::layer().with_writer(OneLine(writer)).with_ansi(false);
    // Colours only on a terminal: a redirected log must not carry escape codes, and is kept
    // to one line per event like the file.
    let stderr_layer = to_stderr.then(|| {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let layer = fmt::layer().with_ansi(terminal);
        if terminal {
            layer.with_writer(BoxMakeWriter::new(std::io::stderr))
        } else {
            layer.with_writer(BoxMakeWriter::new(OneLine(std::io::stderr)))
        }
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(file_layer)
        .with(stderr_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    Ok(guard)
}

/// Writes whole lines to the log file, and when a write fails partway (the disk filled, say),
/// starts the next write on a new line, so that a cut-off line is never glued to the next one.
struct LineAfterCut<W> {
    inner: W,
    /// The file ends inside a line that a failed write left unfinished.
    cut: bool,
}

impl<W> LineAfterCut<W> {
    fn new(inner: W) -> Self {
        LineAfterCut { inner, cut: false }
    }
}

impl<W: Write> Write for LineAfterCut<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cut {
            self.inner.write_all(b"\n")?;
            self.cut = false;
        }
        let mut written = 0;
        while written < buf.len() {
            match self.inner.write(&buf[written..]) {
                Ok(0) => {
                    self.cut = written > 0;
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.cut = written > 0;
                    return Err(e);
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Keeps every event on one line of the log: a control character in what an event says (a
/// model name, a path, an error from elsewhere, all possibly a client's) is written escaped
/// (`\n`, `\r`, `\x1b`, ...), so that no client can forge a log line or put a NUL byte into
/// the file. The formatter hands each event over whole, in one write, ending with its newline.
struct OneLine<M>(M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for OneLine<M> {
    type Writer = OneLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLine(self.0.make_writer())
    }
}

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        let control = |c: u8| c.is_ascii_control() && c != b'\t';
        // A C1 control character (U+0080 to U+009F, UTF-8 `C2 80` to `C2 9F`): some terminals
        // act on U+009B as they do on `ESC [`.
        let c1 = |pair: &[u8]| pair[0] == 0xc2 && (0x80..=0x9f).contains(&pair[1]);
        if !body.iter().copied().any(control) && !body.windows(2).any(c1) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut line = Vec::with_capacity(buf.len() + 16);
        let mut rest = body;
        while let Some((&c, after)) = rest.split_first() {
            match c {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                c if control(c) => line.extend_from_slice(format!("\\x{c:02x}").as_bytes()),
                0xc2 if after.first().is_some_and(|&n| c1(&[c, n])) => {
                    line.extend_from_slice(format!("\\u{{{:x}}}", after[0]).as_bytes());
                    rest = &after[1..];
                    continue;
                }
                c => line.push(c),
            }
            rest = after;
        }
        line.extend_from_slice(&buf[body.len()..]);
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that takes `room` more bytes, then fails as a full disk does.
    struct Disk {
        bytes: Vec<u8>,
        room: usize,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::from(rustix::io::Errno::NOSPC));
            }
            let n = buf.len().min(self.room).min(4);
            self.bytes.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_cut_by_a_full_disk_is_not_glued_to_the_next() {
        let mut w = LineAfterCut::new(Disk {
            bytes: Vec::new(),
            room: 20,
        });
        w.write_all(b"first line\n").unwrap();
        assert!(w.write_all(b"second line, cut off\n").is_err());
        // Nothing at all fits: no new line for it either, and the cut is still pending.
        assert!(w.write_all(b"lost\n").is_err());
        w.inner.room = 100;
        w.write_all(b"third line\n").unwrap();
        w.write_all(b"fourth line\n").unwrap();
        assert_eq!(
            String::from_utf8(w.inner.bytes).unwrap(),
            "first line\nsecond li\nthird line\nfourth line\n"
        );
    }

    fn one_line(event: &[u8]) -> String {
        let mut out = OneLine(Vec::new());
        out.write_all(event).unwrap();
        String::from_utf8(out.0).unwrap()
    }

    #[test]
    fn an_event_stays_on_one_line() {
        assert_eq!(one_line(b"plain \t line\n"), "plain \t line\n");
        assert_eq!(
            one_line(b"key=m1\n2026-01-01 ERROR forged\r\n"),
            "key=m1\\n2026-01-01 ERROR forged\\r\n"
        );
        assert_eq!(one_line(b"a\0b\x1b[31m\x7f\n"), "a\\x00b\\x1b[31m\\x7f\n");
        // Not ASCII is not a control character: UTF-8 passes through whole...
        assert_eq!(
            one_line("é\u{2028}→\u{a0}\n".as_bytes()),
            "é\u{2028}→\u{a0}\n"
        );
        // ...except the C1 controls.
        assert_eq!(
            one_line("a\u{9b}31mb\u{85}é\u{80}\n".as_bytes()),
            "a\\u{9b}31mb\\u{85}é\\u{80}\n"
        );
        assert_eq!(
            one_line(b"no newline\nat the end"),
            "no newline\\nat the end"
        );
    }
}
