//! Listing output: a readable table, one JSON object per line, or CSV for
//! spreadsheets.

use std::io::{self, Write};

use clap::ValueEnum;
use comfy_table::{Table, presets::UTF8_HORIZONTAL_ONLY};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Jsonl,
    /// Comma-separated, with a header row (RFC 4180 quoting).
    Csv,
}

enum Sink {
    /// A table needs every row to size its columns, so it prints at the end.
    Table(Table, Box<dyn Write + Send>),
    Jsonl(Box<dyn Write + Send>),
    Csv(csv::Writer<Box<dyn Write + Send>>),
}

/// Writes rows as they come (tables excepted), given as (cells, JSON
/// object): tables and CSV take the cells, JSON lines the object.
pub struct Printer {
    sink: Sink,
}

impl Printer {
    pub fn stdout(format: Format, headers: &[&str]) -> io::Result<Self> {
        Self::new(format, headers, Box::new(io::BufWriter::new(io::stdout())))
    }

    pub fn new(format: Format, headers: &[&str], out: Box<dyn Write + Send>) -> io::Result<Self> {
        let sink = match format {
            Format::Table => {
                let mut table = Table::new();
                table
                    .load_style(UTF8_HORIZONTAL_ONLY)
                    .set_header(headers.to_vec());
                Sink::Table(table, out)
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

    pub fn row(&mut self, cells: Vec<String>, json: &serde_json::Value) -> io::Result<()> {
        match &mut self.sink {
            Sink::Table(table, _) => {
                table.add_row(cells);
            }
            Sink::Jsonl(out) => {
                serde_json::to_writer(&mut *out, json)?;
                out.write_all(b"\n")?;
            }
            Sink::Csv(csv) => csv.write_record(&cells)?,
        }
        Ok(())
    }

    /// Sends what is written so far on its way, for output that follows a log.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Table(..) => Ok(()),
            Sink::Jsonl(out) => out.flush(),
            Sink::Csv(csv) => csv.flush(),
        }
    }

    pub fn finish(self) -> io::Result<()> {
        match self.sink {
            Sink::Table(table, mut out) => {
                writeln!(out, "{table}")?;
                out.flush()
            }
            Sink::Jsonl(mut out) => out.flush(),
            Sink::Csv(mut csv) => csv.flush(),
        }
    }
}

/// Treats a reader that went away (`weightgate … | head`) as the end of the
/// output rather than an error.
pub fn until_closed(result: io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Prints rows given as (table cells, JSON object).
pub fn print(format: Format, headers: &[&str], rows: impl Iterator<Item = (Vec<String>, serde_json::Value)>) {
    let result = Printer::stdout(format, headers).and_then(|mut printer| {
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
    fn tables_show_headers_and_cells() {
        let table = render(Format::Table);
        assert!(table.contains("name") && table.contains("plain") && table.contains("a, b"));
    }
}
