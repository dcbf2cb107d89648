//! Listing output: a readable table, or one JSON object per line for scripts.

use clap::ValueEnum;
use comfy_table::{Table, presets::UTF8_HORIZONTAL_ONLY};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Jsonl,
}

/// Prints rows given as (table cells, JSON object).
pub fn print(format: Format, headers: &[&str], rows: impl Iterator<Item = (Vec<String>, serde_json::Value)>) {
    match format {
        Format::Table => {
            let mut table = Table::new();
            table
                .load_style(UTF8_HORIZONTAL_ONLY)
                .set_header(headers.to_vec());
            for (cells, _) in rows {
                table.add_row(cells);
            }
            println!("{table}");
        }
        Format::Jsonl => {
            for (_, json) in rows {
                println!("{json}");
            }
        }
    }
}
