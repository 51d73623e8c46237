//! What read commands print, in the form `-o` asks for: an aligned table for people, JSON or
//! CSV for programs.

use std::io::Write;

use clap::{Args, ValueEnum};

use crate::values::Result;

/// The form of a read command's answer.
#[derive(Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns with a header (a record: one `field value` a line).
    #[default]
    Table,
    /// One JSON document: an array of objects for lists, an object for one thing.
    Json,
    /// A header row, then one row per item (RFC 4180).
    Csv,
}

#[derive(Args, Clone, Copy)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// One value of a table, typed so JSON keeps numbers and booleans.
#[derive(Clone, Debug)]
pub enum Cell {
    Text(String),
    Int(i64),
    Count(u64),
    Float(f64),
    Bool(bool),
    /// An amount in minor units, shown in major units (`12.50`; a JSON number, 12.5).
    Money(i64),
    /// Absent: an empty cell, JSON `null`.
    Null,
    /// A list (JSON array; `|`-separated in a cell, as load files write keywords).
    List(Vec<String>),
}

impl Cell {
    pub fn text(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Int(i) => i.to_string(),
            Cell::Count(n) => n.to_string(),
            Cell::Float(f) => f.to_string(),
            Cell::Bool(b) => (if *b { "yes" } else { "no" }).to_string(),
            Cell::Money(m) => crate::values::format_money(*m),
            Cell::Null => String::new(),
            Cell::List(l) => l.join("|"),
        }
    }

    /// The text of a CSV cell: as [`Cell::text`], but booleans as `true`/`false`, as load files
    /// read them.
    pub fn csv(&self) -> String {
        match self {
            Cell::Bool(b) => b.to_string(),
            other => other.text(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Cell::Text(s) => J::String(s.clone()),
            Cell::Int(i) => J::from(*i),
            Cell::Count(n) => J::from(*n),
            Cell::Float(f) => J::from(*f),
            Cell::Bool(b) => J::Bool(*b),
            // Exact up to 2^53 minor units; the text form in tables and CSV is exact always.
            Cell::Money(m) => J::from(*m as f64 / 100.0),
            Cell::Null => J::Null,
            Cell::List(l) => J::from(l.clone()),
        }
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_string())
    }
}
impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}
impl From<&String> for Cell {
    fn from(s: &String) -> Cell {
        Cell::Text(s.clone())
    }
}
impl From<u64> for Cell {
    fn from(n: u64) -> Cell {
        Cell::Count(n)
    }
}
impl From<u32> for Cell {
    fn from(n: u32) -> Cell {
        Cell::Count(n.into())
    }
}
impl From<i64> for Cell {
    fn from(n: i64) -> Cell {
        Cell::Int(n)
    }
}
impl From<f64> for Cell {
    fn from(f: f64) -> Cell {
        Cell::Float(f)
    }
}
impl From<bool> for Cell {
    fn from(b: bool) -> Cell {
        Cell::Bool(b)
    }
}
impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Cell {
        v.map_or(Cell::Null, Into::into)
    }
}

/// Items under named columns.
pub struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

impl Rows {
    pub fn new<S: Into<String>>(columns: impl IntoIterator<Item = S>) -> Rows {
        Rows {
            columns: columns.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// The items as JSON objects.
    pub fn json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.rows
                .iter()
                .map(|row| object(self.columns.iter().zip(row)))
                .collect(),
        )
    }

    /// Prints the items in `format`.
    pub fn print(&self, format: Format) -> Result<()> {
        match format {
            Format::Table => {
                let text: Vec<Vec<String>> = self
                    .rows
                    .iter()
                    .map(|r| r.iter().map(Cell::text).collect())
                    .collect();
                print_aligned(Some(&self.columns), &text)
            }
            Format::Json => print_json(&self.json()),
            Format::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                w.write_record(&self.columns)?;
                for row in &self.rows {
                    w.write_record(row.iter().map(Cell::csv))?;
                }
                write_out(&w.into_inner().map_err(|e| e.into_error())?)
            }
        }
    }
}

/// One thing's fields, in order.
#[derive(Default)]
pub struct Record {
    fields: Vec<(String, Cell)>,
}

impl Record {
    pub fn new() -> Record {
        Record::default()
    }

    pub fn field(mut self, name: impl Into<String>, value: impl Into<Cell>) -> Record {
        self.fields.push((name.into(), value.into()));
        self
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Cell>) {
        self.fields.push((name.into(), value.into()));
    }

    pub fn json(&self) -> serde_json::Value {
        object(self.fields.iter().map(|(n, v)| (n, v)))
    }

    /// Prints the record in `format`: `field value` lines, one JSON object, or a CSV header
    /// and one row.
    pub fn print(&self, format: Format) -> Result<()> {
        match format {
            Format::Table => {
                let text: Vec<Vec<String>> = self
                    .fields
                    .iter()
                    .map(|(n, v)| vec![n.clone(), v.text()])
                    .collect();
                print_aligned(None, &text)
            }
            Format::Json => print_json(&self.json()),
            Format::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                w.write_record(self.fields.iter().map(|(n, _)| n))?;
                w.write_record(self.fields.iter().map(|(_, v)| v.csv()))?;
                write_out(&w.into_inner().map_err(|e| e.into_error())?)
            }
        }
    }
}

fn object<'a>(fields: impl Iterator<Item = (&'a String, &'a Cell)>) -> serde_json::Value {
    serde_json::Value::Object(fields.map(|(n, v)| (n.clone(), v.json())).collect())
}

/// `value`, indented, and a newline.
pub fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    write_out(&text)
}

/// Columns padded to their widest cell, two spaces apart (the last one not padded).
fn print_aligned(header: Option<&[String]>, rows: &[Vec<String>]) -> Result<()> {
    let width = |s: &str| s.chars().count();
    let columns = header.map_or_else(|| rows.first().map_or(0, Vec::len), <[String]>::len);
    let mut widths = vec![0; columns];
    for row in header.into_iter().chain(rows.iter().map(Vec::as_slice)) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let mut text = String::new();
    for row in header.into_iter().chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', widths[i] - width(cell) + 2));
            } else {
                line.push_str(cell);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    write_out(text.as_bytes())
}

/// Writes to stdout at once (a closed pipe is an error segctl ends on quietly).
fn write_out(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_keep_their_types_in_json_and_read_plainly_in_tables() {
        let mut rows = Rows::new(["segment_id", "size", "member", "tags", "email"]);
        rows.push(vec![
            "golfers".into(),
            12u64.into(),
            true.into(),
            Cell::List(vec!["golf".into(), "ski".into()]),
            Cell::Null,
        ]);
        assert_eq!(
            rows.json(),
            serde_json::json!([{"segment_id": "golfers", "size": 12, "member": true, "tags": ["golf", "ski"], "email": null}])
        );
        assert_eq!(
            rows.rows[0].iter().map(Cell::text).collect::<Vec<_>>(),
            ["golfers", "12", "yes", "golf|ski", ""]
        );
    }
}
