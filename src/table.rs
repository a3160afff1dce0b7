//! Plain-text tables for human output: left-aligned columns separated by two spaces.

use std::io::{self, Write};

pub struct Table<const N: usize> {
    headers: [&'static str; N],
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    pub fn new(headers: [&'static str; N]) -> Self {
        Table {
            headers,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: [String; N]) {
        // One line per row: newlines and tabs in a cell would break the columns; other control
        // characters are shown, not sent to the terminal.
        self.rows
            .push(cells.map(|c| terminal_safe(&c.replace(['\n', '\r', '\t'], " "))));
    }

    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        let mut widths = self.headers.map(|h| h.chars().count());
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |out: &mut dyn Write, cells: &[&str]| -> io::Result<()> {
            let mut text = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == N {
                    text.push_str(cell);
                } else {
                    text.push_str(&format!("{cell:<w$}  "));
                }
            }
            writeln!(out, "{}", text.trim_end())
        };
        line(out, &self.headers)?;
        for row in &self.rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            line(out, &cells)?;
        }
        Ok(())
    }

    /// Print the table, or `empty` when it has no rows.
    pub fn print_or_empty(&self, out: &mut impl Write, empty: &str) -> io::Result<()> {
        if self.rows.is_empty() {
            writeln!(out, "{empty}")
        } else {
            self.print(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(["NAME", "PATH"]);
        t.row(["a".into(), "/x".into()]);
        t.row(["longer\nname".into(), "/y".into()]);
        let mut out = Vec::new();
        t.print(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME         PATH\na            /x\nlonger name  /y\n"
        );
    }
}

/// "1 session", "2 sessions": a count with its noun.
pub fn count(n: impl TryInto<u64> + std::fmt::Display + Copy, noun: &str) -> String {
    let one = n.try_into().is_ok_and(|n: u64| n == 1);
    format!("{n} {noun}{}", if one { "" } else { "s" })
}

/// `value` as pretty JSON on stdout, then a newline.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).context("writing JSON")?;
    writeln!(out)?;
    Ok(())
}

/// `s` for a terminal: control characters other than newline and tab (ESC, which starts the
/// escape sequences that move the cursor, retitle the window or rewrite the clipboard; the C1
/// controls, which some terminals act on too; carriage return, backspace, ...) are shown as
/// `\u{1b}`, never sent as they are.
pub fn terminal_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// An RFC 3339 UTC time as local time for people ("2026-12-07 21:04:05"); as it is when it
/// cannot be read.
pub fn local_time(rfc3339: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => t
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => rfc3339.to_string(),
    }
}

/// `text` wrapped at `width` columns (on spaces; a longer word stands on its own line), each
/// line after `indent`.
pub fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split(' ') {
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
                out.push_str(indent);
                out.push_str(&line);
                out.push('\n');
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod text_tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(
            terminal_safe("a\u{1b}]52;c;x\u{7}b\u{9b}2J\r\n\tc"),
            "a\\u{1b}]52;c;x\\u{7}b\\u{9b}2J\\u{d}\n\tc"
        );
    }

    #[test]
    fn text_wraps_on_spaces() {
        assert_eq!(wrap("aa bb cc", 5, "> "), "> aa bb\n> cc\n");
        assert_eq!(wrap("abcdefgh x", 3, ""), "abcdefgh\nx\n");
        assert_eq!(wrap("a\nb", 10, " "), " a\n b\n");
    }

    #[test]
    fn utc_becomes_local_time() {
        let shown = local_time("2026-12-07T20:00:00.000Z");
        assert_eq!(shown.len(), "2026-12-07 20:00:00".len(), "{shown}");
        assert_eq!(local_time("not a time"), "not a time");
    }
}

/// A cost for people: cents and more to the cent, less to two significant digits ($0.0008),
/// nothing as $0.
pub fn dollars(usd: f64) -> String {
    if usd == 0.0 {
        "$0".into()
    } else if usd >= 0.01 {
        format!("${usd:.2}")
    } else {
        // Two significant digits, without trailing zeros.
        let digits = (-usd.log10().floor()).clamp(0.0, 12.0) as usize + 1;
        let text = format!("{usd:.digits$}");
        format!("${}", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod money_tests {
    use super::dollars;

    #[test]
    fn costs_read_as_people_write_them() {
        assert_eq!(dollars(0.0), "$0");
        assert_eq!(dollars(0.0008), "$0.0008");
        assert_eq!(dollars(0.000812), "$0.00081");
        assert_eq!(dollars(0.0123), "$0.01");
        assert_eq!(dollars(12.345), "$12.35");
    }
}
