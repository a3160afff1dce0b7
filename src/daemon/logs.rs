//! `ccd daemon logs`: the daemon's log, its last lines and, with --follow, what is appended.

use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::home::Home;

/// Print the last `n` lines of the log, then with `follow` keep printing what is appended
/// (across rotations) until interrupted.
pub fn logs(home: &Home, n: usize, follow: bool) -> anyhow::Result<()> {
    let path = home.log_file();
    if !path.exists() && !follow {
        bail!("no log yet at {}", path.display());
    }
    let mut out = std::io::stdout().lock();
    // Following starts exactly where the tail ended, so nothing appended in between is lost.
    let (lines, mut pos) = tail(&path, n, follow).unwrap_or_default();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    let mut buf = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(mut file) = std::fs::File::open(&path) else {
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < pos {
            pos = 0; // rotated: the file is new
        }
        if len == pos {
            continue;
        }
        file.seek(SeekFrom::Start(pos))?;
        buf.clear();
        file.read_to_end(&mut buf)?;
        pos += buf.len() as u64;
        out.write_all(&buf)?;
        out.flush()?;
    }
}

/// The last `n` lines of a file (reads at most the last 4 MiB). Never fails on what the file
/// holds: bytes that are not UTF-8 (a line cut off mid-character when the disk filled, or
/// garbage) are shown as U+FFFD, a line without its end is shown as it is, and when the read
/// starts inside the file its first, partial line is dropped.
pub fn tail_lines(path: &std::path::Path, n: usize) -> anyhow::Result<Vec<String>> {
    tail(path, n, false).map(|(lines, _)| lines)
}

/// [`tail_lines`], and the offset where following should go on. With `whole_lines`, a last
/// line still being written is left for the follower (which prints it once, as it grows).
fn tail(path: &std::path::Path, n: usize, whole_lines: bool) -> anyhow::Result<(Vec<String>, u64)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(4 * 1024 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    BufReader::new(file).read_to_end(&mut bytes).ok();
    if whole_lines {
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(keep);
    }
    let end = start + bytes.len() as u64;
    Ok((last_lines(&bytes, n, start > 0), end))
}

/// The last `n` lines of `bytes`, read lossily; `mid_file`: `bytes` may begin inside a line,
/// which is then left out.
fn last_lines(bytes: &[u8], n: usize, mid_file: bool) -> Vec<String> {
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        lines.pop();
    }
    if mid_file && !lines.is_empty() {
        lines.remove(0);
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| String::from_utf8_lossy(l.strip_suffix(b"\r").unwrap_or(l)).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn a_cut_or_garbled_line_is_shown_not_fatal() {
        let log = b"one\ntwo cut \xe2\x82 off\xff\xfethree\nfour\n";
        assert_eq!(
            last_lines(log, 10, false),
            ["one", "two cut \u{fffd} off\u{fffd}\u{fffd}three", "four"]
        );
        assert_eq!(last_lines(log, 1, false), ["four"]);
        // No newline at the end: the last line as it is.
        assert_eq!(last_lines(b"a\nb", 5, false), ["a", "b"]);
        // Read from inside the file: its first, partial line is dropped.
        assert_eq!(last_lines(b"tail of a line\nb\n", 5, true), ["b"]);
        assert!(last_lines(b"", 5, false).is_empty());
    }
}
