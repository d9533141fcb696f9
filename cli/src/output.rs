//! What the commands print: JSON (what scripts read: the API's `result`, as it always was)
//! or tables for people. By default tables when stdout is a terminal, JSON otherwise;
//! `--output json|table` or `EDGECAP_OUTPUT` chooses.

use std::io::{IsTerminal as _, Write as _};

use clap::ValueEnum;
use serde_json::Value;

use crate::failure;

/// `--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    // The API's JSON, pretty-printed (the default when stdout is not a terminal).
    Json,
    // Tables for people (the default on a terminal).
    Table,
}

/// The id of the `--output` argument (`capture download` and `merge` have an `--output` file
/// of their own, with another id).
pub const FORMAT_ARG: &str = "format";

/// The `--output FORMAT` argument, added to every command that prints what the API answered.
pub fn format_arg() -> clap::Arg {
    clap::Arg::new(FORMAT_ARG)
        .long("output")
        .value_name("FORMAT")
        .value_parser(clap::builder::EnumValueParser::<Format>::new())
        .help("json or table [env: EDGECAP_OUTPUT] [default: table on a terminal, json otherwise]")
}

/// How the command's results are printed.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub format: Format,
    /// Asked for (`--output` or `EDGECAP_OUTPUT`) rather than the terminal default.
    pub chosen: bool,
}

impl Output {
    /// From the `--output` flag, else `EDGECAP_OUTPUT`, else whether stdout is a terminal.
    pub fn resolve(flag: Option<Format>) -> anyhow::Result<Self> {
        if let Some(format) = flag {
            return Ok(Self { format, chosen: true });
        }
        match std::env::var("EDGECAP_OUTPUT") {
            Ok(v) if !v.is_empty() => match Format::from_str(&v, true) {
                Ok(format) => Ok(Self { format, chosen: true }),
                Err(_) => Err(failure::usage(format!("EDGECAP_OUTPUT: {v:?} is not json or table"))),
            },
            _ => {
                let tty = std::io::stdout().is_terminal();
                Ok(Self { format: if tty { Format::Table } else { Format::Json }, chosen: false })
            }
        }
    }

    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// Scripts written before `--output` existed: JSON by default, and a capture that ended
    /// `failed` still exits 0. Any explicit choice, or a terminal, gets the exit codes.
    pub fn legacy(&self) -> bool {
        !self.chosen && self.format == Format::Json
    }

    /// `value` as JSON, or else `table` prints it.
    pub fn show(&self, value: &Value, table: impl FnOnce(&Value) -> String) {
        if self.json() {
            emit(&json(value));
        } else {
            emit(&table(value));
        }
    }
}

/// Pretty JSON, as the CLI always printed it.
pub fn json(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// Prints `text` (and a line break) on stdout. A closed pipe (`edgecap capture list | head`)
/// ends the program quietly.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let written = out.write_all(text.as_bytes()).and_then(|()| {
        if !text.ends_with('\n') {
            out.write_all(b"\n")?;
        }
        out.flush()
    });
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(failure::OK);
        }
        eprintln!("edgecap: write to stdout: {e}");
        std::process::exit(failure::FAILURE);
    }
}

/// A table: a header line, then rows (and section headings between groups of rows); each
/// column as wide as its widest cell, numbers aligned to the right.
#[derive(Default)]
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Row>,
    indent: usize,
}

enum Row {
    Cells(Vec<String>),
    Heading(String),
}

impl Table {
    /// Columns by header; a header ending in `>` is right-aligned (the `>` is not shown).
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.trim_end_matches('>')).collect(),
            right: headers.iter().map(|h| h.ends_with('>')).collect(),
            ..Self::default()
        }
    }

    /// Rows are indented under headings by this many spaces.
    pub fn indent(mut self, n: usize) -> Self {
        self.indent = n;
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(Row::Cells(cells));
    }

    pub fn heading(&mut self, text: String) {
        self.rows.push(Row::Heading(text));
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            if let Row::Cells(cells) = row {
                for (w, cell) in widths.iter_mut().zip(cells) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let pad = " ".repeat(self.indent);
        let line = |cells: &[String]| {
            let mut out = pad.clone();
            for (i, cell) in cells.iter().enumerate() {
                let width = widths.get(i).copied().unwrap_or(0);
                if self.right.get(i).copied().unwrap_or(false) {
                    out.push_str(&format!("{cell:>width$}  "));
                } else {
                    out.push_str(&format!("{cell:<width$}  "));
                }
            }
            out.trim_end().to_string()
        };
        let mut out = vec![line(&self.headers.iter().map(|h| h.to_string()).collect::<Vec<_>>())];
        for row in &self.rows {
            match row {
                Row::Cells(cells) => out.push(line(cells)),
                Row::Heading(text) => out.push(text.clone()),
            }
        }
        out.join("\n")
    }
}

/// `key  value` lines, the values aligned; pairs with an empty value are left out.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k:<width$}  {v}")).collect::<Vec<_>>().join("\n")
}

/// A JSON value as a cell: strings as they are, arrays joined with `, `, null empty.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        other => other.to_string(),
    }
}

/// A count with thousands separators: `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A size in bytes for people: `512 B`, `1.5 KiB`, `20.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A duration for people: `42s`, `5m 12s`, `3h 04m`, `2d 03h`.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// An RFC 3339 time in the API's JSON; `None` when it is missing or not one.
pub fn instant(v: &Value) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

/// An RFC 3339 time as `2025-01-02 03:04:05Z` (no fractions), or as it is if it is not one.
pub fn time(v: &Value) -> String {
    match instant(v) {
        Some(t) => {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        None => v.as_str().unwrap_or_default().to_string(),
    }
}

/// Seconds from an RFC 3339 time to now (0 if it is not one, or in the future).
pub fn seconds_since(v: &Value) -> u64 {
    instant(v).map_or(0, |t| (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0).unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_sizes_and_tables_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(312), "5m 12s");
        assert_eq!(time(&Value::from("2025-01-02T03:04:05.123456Z")), "2025-01-02 03:04:05Z");
        let mut t = Table::new(&["ID", "PACKETS>"]);
        t.row(vec!["abc".into(), "7".into()]);
        t.row(vec!["a".into(), "1,000".into()]);
        assert_eq!(t.render(), "ID   PACKETS\nabc        7\na      1,000");
        assert_eq!(
            fields(&[("id", "x".into()), ("skipped", String::new()), ("status", "ok".into())]),
            "id      x\nstatus  ok"
        );
    }
}
