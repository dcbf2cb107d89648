//! Listing output: a readable table, one JSON object per line, or CSV for
//! spreadsheets.
//!
//! What the portal stores came from outside (URLs, e-mail addresses, user
//! agents), so text meant for a terminal has its control characters escaped,
//! and CSV cells that a spreadsheet would run as a formula are neutralised.
//! JSON lines stay exact: JSON escapes control characters itself.

use std::{
    borrow::Cow,
    io::{self, Write},
};

use clap::ValueEnum;
use comfy_table::{ColumnConstraint, ContentArrangement, Table, presets::UTF8_HORIZONTAL_ONLY};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Table,
    Jsonl,
    /// Comma-separated, with a header row (RFC 4180 quoting).
    Csv,
}

/// How a listing prints: its format and, for a table, whether it fits the
/// terminal or shows everything.
#[derive(clap::Args, Clone, Copy, Debug)]
pub(crate) struct Listing {
    #[arg(long = "format", value_enum, default_value_t = Format::Table)]
    pub(crate) kind: Format,
    /// Show every column in full, however wide the table gets. Otherwise a
    /// table fits the terminal (or `COLUMNS`): the least useful columns go
    /// first, then long cells wrap.
    #[arg(long)]
    pub(crate) wide: bool,
}

impl From<Format> for Listing {
    fn from(kind: Format) -> Self {
        Self { kind, wide: false }
    }
}

impl Listing {
    /// The width a table must fit: `COLUMNS` when set, else the terminal's
    /// when standard output is one; none with `--wide` or into a pipe, so
    /// that `grep` and files get every column.
    fn width(self) -> Option<u16> {
        if self.wide || self.kind != Format::Table {
            return None;
        }
        if let Some(columns) = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse::<u16>().ok())
        {
            return (columns > 0).then_some(columns);
        }
        let probe = Table::new();
        if probe.is_tty() { probe.width() } else { None }
    }
}

enum Sink {
    /// A table needs every row to size its columns, so it prints at the end.
    Table {
        table: Table,
        out: Box<dyn Write + Send>,
        /// The width to fit, if any.
        width: Option<u16>,
        /// Columns that may be left out to fit, the first to go first.
        optional: Vec<usize>,
        /// Columns whose cells never wrap (ids, timestamps).
        unbroken: Vec<usize>,
    },
    Jsonl(Box<dyn Write + Send>),
    Csv(csv::Writer<Box<dyn Write + Send>>),
}

/// Writes rows as they come (tables excepted), given as (cells, JSON
/// object): tables and CSV take the cells, JSON lines the object.
pub(crate) struct Printer {
    sink: Sink,
}

impl Printer {
    pub(crate) fn stdout(listing: impl Into<Listing>, headers: &[&str]) -> io::Result<Self> {
        let listing = listing.into();
        Self::new(listing, headers, Box::new(io::BufWriter::new(io::stdout())))
    }

    pub(crate) fn new(
        listing: impl Into<Listing>,
        headers: &[&str],
        out: Box<dyn Write + Send>,
    ) -> io::Result<Self> {
        let listing = listing.into();
        let sink = match listing.kind {
            Format::Table => {
                let mut table = Table::new();
                table
                    .load_style(UTF8_HORIZONTAL_ONLY)
                    .set_header(headers.to_vec());
                Sink::Table {
                    table,
                    out,
                    width: listing.width(),
                    optional: Vec::new(),
                    unbroken: Vec::new(),
                }
            }
            Format::Jsonl => Sink::Jsonl(out),
            Format::Csv => {
                let mut csv = csv::Writer::from_writer(out);
                csv.write_record(headers)?;
                Sink::Csv(csv)
            }
        };
        Ok(Self { sink })
    }

    /// Names the columns a table leaves out when it does not fit its width,
    /// the first named going first. The others stay and wrap.
    pub(crate) fn optional(mut self, headers: &[&str]) -> Self {
        if let Sink::Table { table, optional, .. } = &mut self.sink {
            *optional = positions(table, headers);
        }
        self
    }

    /// Names the columns whose cells stay whole when a table fits its
    /// width: ids and timestamps that an operator copies or reads at a glance.
    pub(crate) fn unbroken(mut self, headers: &[&str]) -> Self {
        if let Sink::Table { table, unbroken, .. } = &mut self.sink {
            *unbroken = positions(table, headers);
        }
        self
    }

    /// Sets a width to fit, as `COLUMNS` or a terminal would.
    #[cfg(test)]
    fn fit(mut self, columns: u16) -> Self {
        if let Sink::Table { width, .. } = &mut self.sink {
            *width = Some(columns);
        }
        self
    }

    pub(crate) fn row(&mut self, cells: Vec<String>, json: &serde_json::Value) -> io::Result<()> {
        match &mut self.sink {
            Sink::Table { table, .. } => {
                table.add_row(cells.iter().map(|c| for_terminal(c).into_owned()));
            }
            Sink::Jsonl(out) => {
                serde_json::to_writer(&mut *out, json)?;
                out.write_all(b"\n")?;
            }
            Sink::Csv(csv) => csv.write_record(cells.iter().map(|c| for_spreadsheet(c).into_owned()))?,
        }
        Ok(())
    }

    /// Sends what is written so far on its way, for output that follows a log.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Table { .. } => Ok(()),
            Sink::Jsonl(out) => out.flush(),
            Sink::Csv(csv) => csv.flush(),
        }
    }

    pub(crate) fn finish(self) -> io::Result<()> {
        match self.sink {
            Sink::Table {
                mut table,
                mut out,
                width,
                optional,
                unbroken,
            } => {
                if let Some(width) = width {
                    fit(&mut table, width, &optional, &unbroken);
                }
                writeln!(out, "{table}")?;
                out.flush()
            }
            Sink::Jsonl(mut out) => out.flush(),
            Sink::Csv(mut csv) => csv.flush(),
        }
    }
}

/// Where the columns called `headers` are in `table`.
fn positions(table: &Table, headers: &[&str]) -> Vec<usize> {
    let names: Vec<String> = table
        .header()
        .map(|h| h.cell_iter().map(|c| c.content()).collect())
        .unwrap_or_default();
    headers
        .iter()
        .filter_map(|h| names.iter().position(|n| n == h))
        .collect()
}

/// Makes `table` at most `width` columns wide: leaves out optional columns,
/// in their order, while the table is wider than that, then lets the cells
/// of the rest wrap, except the unbroken ones.
fn fit(table: &mut Table, width: u16, optional: &[usize], unbroken: &[usize]) {
    let natural = table.column_max_content_widths();
    let shown = |hidden: usize| -> usize {
        // Each shown column is its widest cell plus one space either side,
        // and one column of separator between neighbours.
        let visible: Vec<usize> = (0..natural.len())
            .filter(|i| !optional[..hidden].contains(i))
            .map(|i| usize::from(natural[i]) + 2)
            .collect();
        visible.iter().sum::<usize>() + visible.len().saturating_sub(1)
    };
    let mut hidden = 0;
    while hidden < optional.len() && shown(hidden) > usize::from(width) {
        hidden += 1;
    }
    for &column in &optional[..hidden] {
        if let Some(c) = table.column_mut(column) {
            c.set_constraint(ColumnConstraint::Hidden);
        }
    }
    for &column in unbroken.iter().filter(|c| !optional[..hidden].contains(c)) {
        if let Some(c) = table.column_mut(column) {
            c.set_constraint(ColumnConstraint::ContentWidth);
        }
    }
    table
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width);
}

/// Whether a terminal could act on `c` rather than show it: C0 and C1
/// controls (escape sequences start with ESC or CSI) and the marks that
/// reorder text on screen (bidirectional overrides and isolates).
fn is_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every control character written as a visible escape
/// (`\x1b`, `\u{202e}`), so that printing it cannot move the cursor, rewrite
/// the screen, set the window title or reorder what the operator reads.
pub(crate) fn for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !is_control(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// `cell` made safe for a spreadsheet: a cell that starts like a formula
/// (`=`, `+`, `-`, `@`, or a tab or carriage return before one) gets a
/// leading `'`, which spreadsheets read as "this is text" and do not show.
pub(crate) fn for_spreadsheet(cell: &str) -> Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

/// Treats a reader that went away (`weightgate … | head`) as the end of the
/// output rather than an error.
pub(crate) fn until_closed(result: io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// The columns of a listing, and how its table fits a terminal.
pub(crate) struct Columns<'a> {
    pub(crate) headers: &'a [&'a str],
    /// Left out, first to last, while the table is too wide.
    pub(crate) optional: &'a [&'a str],
    /// Never wrapped.
    pub(crate) unbroken: &'a [&'a str],
}

/// Prints rows given as (table cells, JSON object).
pub(crate) fn print(
    listing: Listing,
    columns: &Columns<'_>,
    rows: impl Iterator<Item = (Vec<String>, serde_json::Value)>,
) {
    let result = Printer::stdout(listing, columns.headers).and_then(|printer| {
        let mut printer = printer.optional(columns.optional).unbroken(columns.unbroken);
        for (cells, json) in rows {
            printer.row(cells, &json)?;
        }
        printer.finish()
    });
    if let Err(err) = until_closed(result) {
        eprintln!("error: cannot write the listing: {err:#}");
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        sync::{Arc, Mutex},
    };

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn render(format: Format) -> String {
        let out = Shared::default();
        let mut printer = Printer::new(format, &["name", "note"], Box::new(out.clone())).unwrap();
        printer
            .row(
                vec!["a, b".into(), "say \"hi\"\nthere".into()],
                &serde_json::json!({"name": "a, b"}),
            )
            .unwrap();
        printer
            .row(
                vec!["plain".into(), String::new()],
                &serde_json::json!({"name": "plain"}),
            )
            .unwrap();
        printer.finish().unwrap();
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn csv_quotes_commas_quotes_and_newlines() {
        assert_eq!(
            render(Format::Csv),
            "name,note\n\"a, b\",\"say \"\"hi\"\"\nthere\"\nplain,\n"
        );
    }

    #[test]
    fn jsonl_writes_one_object_per_line() {
        assert_eq!(
            render(Format::Jsonl),
            "{\"name\":\"a, b\"}\n{\"name\":\"plain\"}\n"
        );
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(for_terminal("plain text"), "plain text");
        assert_eq!(
            for_terminal("a\x1b]0;pwned\x07b\x1b[2J"),
            "a\\x1b]0;pwned\\x07b\\x1b[2J"
        );
        assert_eq!(for_terminal("line\r\nnext\tcol"), "line\\r\\nnext\\tcol");
        assert_eq!(for_terminal("csi \u{9b}2J del \u{7f}"), "csi \\x9b2J del \\x7f");
        assert_eq!(for_terminal("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(for_terminal("ünïcødé ok"), "ünïcødé ok");
    }

    #[test]
    fn formula_cells_are_neutralised_for_spreadsheets() {
        for formula in [
            "=HYPERLINK(\"http://x\")",
            "+1+1",
            "-2+3",
            "@SUM(A1)",
            "\t=1",
            "\r=1",
        ] {
            assert_eq!(for_spreadsheet(formula), format!("'{formula}"));
        }
        for text in ["curl/8.5", "a=b", "42", ""] {
            assert_eq!(for_spreadsheet(text), text);
        }
    }

    #[test]
    fn tables_escape_and_csv_neutralises_but_json_stays_exact() {
        let out = Shared::default();
        let mut printer = Printer::new(Format::Table, &["agent"], Box::new(out.clone())).unwrap();
        printer
            .row(vec!["\x1b[2Jevil".into()], &serde_json::json!({}))
            .unwrap();
        printer.finish().unwrap();
        let table = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            !table.contains('\x1b') && table.contains("\\x1b[2Jevil"),
            "{table}"
        );

        let out = Shared::default();
        let mut printer = Printer::new(Format::Csv, &["agent"], Box::new(out.clone())).unwrap();
        printer
            .row(vec!["=cmd|' /C calc'!A0".into()], &serde_json::json!({}))
            .unwrap();
        printer.finish().unwrap();
        let csv = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(csv, "agent\n'=cmd|' /C calc'!A0\n");

        let out = Shared::default();
        let mut printer = Printer::new(Format::Jsonl, &["agent"], Box::new(out.clone())).unwrap();
        printer
            .row(vec![], &serde_json::json!({"agent": "\x1b[2J=x"}))
            .unwrap();
        printer.finish().unwrap();
        let json = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let back: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(back["agent"], "\x1b[2J=x");
    }

    fn wide_table(fit: Option<u16>) -> String {
        let out = Shared::default();
        let mut printer = Printer::new(
            Format::Table,
            &["seq", "action", "note", "agent"],
            Box::new(out.clone()),
        )
        .unwrap()
        .optional(&["agent", "nowhere"])
        .unbroken(&["seq", "action"]);
        if let Some(columns) = fit {
            printer = printer.fit(columns);
        }
        for seq in 1..=3 {
            printer
                .row(
                    vec![
                        seq.to_string(),
                        "file.fetch.unbroken".into(),
                        "a reason long enough to need wrapping on a narrow terminal".into(),
                        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36".into(),
                    ],
                    &serde_json::json!({}),
                )
                .unwrap();
        }
        printer.finish().unwrap();
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_table_fits_the_width_it_is_given() {
        let width = |table: &str| table.lines().map(|l| l.chars().count()).max().unwrap();
        let wide = wide_table(None);
        assert!(width(&wide) > 120, "{wide}");
        assert!(wide.contains("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"));

        for columns in [80, 60, 50] {
            let narrow = wide_table(Some(columns));
            assert!(width(&narrow) <= usize::from(columns), "at {columns}:\n{narrow}");
            // The optional column went; the others stay, wrapped if need be.
            assert!(
                !narrow.contains("agent") && !narrow.contains("Mozilla"),
                "{narrow}"
            );
            assert!(narrow.contains("wrapping"), "{narrow}");
            // An unbroken column stays whole.
            assert!(narrow.contains("file.fetch.unbroken"), "{narrow}");
        }
        // What fits keeps every column.
        let roomy = wide_table(Some(width(&wide) as u16));
        assert!(roomy.contains("agent") && roomy.contains("Mozilla"), "{roomy}");
    }

    #[test]
    fn tables_show_headers_and_cells() {
        let table = render(Format::Table);
        assert!(table.contains("name") && table.contains("plain") && table.contains("a, b"));
    }
}
