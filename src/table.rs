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
        // One line per row: newlines and tabs in a cell would break the columns.
        self.rows
            .push(cells.map(|c| c.replace(['\n', '\r', '\t'], " ")));
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
