//! Fine-tuning data readers.
//!
//! [`read_table`] reads CSV, TSV, JSON lines and parquet files into a [`Table`] of [`Row`]s
//! (one JSON object per record). The task readers build on it: [`glue`] (the nine GLUE tasks
//! from their official TSV files), [`ner`] (CoNLL and tabular token classification data) and
//! [`squad`] (SQuAD JSON and the Hugging Face `datasets` squad schema).
//!
//! Every record carries a location (`path:LINE` or `path: row N`) that error messages start
//! with. Malformed records are an error, or are skipped and counted in [`Skipped`] when
//! [`ReadOptions::skip_invalid`] is set.

pub mod glue;
pub mod ner;
pub mod squad;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};

/// The `--format` values, in the order error messages list them.
pub const FORMAT_NAMES: &str = "csv, tsv, jsonl, parquet, conll, squad";

/// How many skip messages [`Skipped`] keeps.
pub const SKIPPED_KEEP: usize = 5;

/// A data file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Comma-separated values with a header row (RFC 4180 quoting).
    Csv,
    /// Tab-separated values with a header row (quoting as CSV).
    Tsv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
    /// CoNLL token-per-line files (NER).
    Conll,
    /// SQuAD v1.1 / v2.0 JSON.
    SquadJson,
}

impl Format {
    /// The format to read `path` in: `given` if set, else by extension (`.csv`, `.tsv`,
    /// `.jsonl`/`.ndjson`, `.parquet`, `.conll`/`.txt` -> CoNLL, `.json` -> SQuAD JSON).
    pub fn detect(path: &Path, given: Option<Format>) -> Result<Format> {
        if let Some(format) = given {
            return Ok(format);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        Ok(match ext.as_str() {
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "jsonl" | "ndjson" => Format::Jsonl,
            "parquet" => Format::Parquet,
            "conll" | "txt" => Format::Conll,
            "json" => Format::SquadJson,
            _ => bail!(
                "{}: cannot tell the format from the file extension; pass --format ({FORMAT_NAMES})",
                path.display()
            ),
        })
    }
}

impl FromStr for Format {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Format> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "jsonl" | "json-lines" => Format::Jsonl,
            "parquet" => Format::Parquet,
            "conll" => Format::Conll,
            "squad" => Format::SquadJson,
            _ => bail!("unknown format \"{s}\" (formats: {FORMAT_NAMES})"),
        })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
            Format::Conll => "conll",
            Format::SquadJson => "squad",
        })
    }
}

/// One record of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `path:LINE` (CSV, TSV, JSON lines; 1-based line where the record starts) or
    /// `path: row N` (parquet; 1-based).
    pub location: String,
    /// Column name -> value. CSV/TSV values are strings; parquet nulls are `Value::Null`.
    pub fields: Map<String, Value>,
}

impl Row {
    /// The value of `column`, if the record has it.
    pub fn value(&self, column: &str) -> Option<&Value> {
        self.fields.get(column)
    }

    /// The value of `column`, or an error naming the location and the record's columns.
    pub fn get(&self, column: &str) -> Result<&Value> {
        self.fields.get(column).ok_or_else(|| {
            let names: Vec<&str> = self.fields.keys().map(String::as_str).collect();
            anyhow!(
                "{}: missing column \"{column}\" (columns: {})",
                self.location,
                names.join(", ")
            )
        })
    }

    /// The string value of `column`; an error if it is missing or not a string.
    pub fn str(&self, column: &str) -> Result<&str> {
        match self.get(column)? {
            Value::String(s) => Ok(s),
            other => bail!(
                "{}: column \"{column}\" is not a string (found {})",
                self.location,
                describe(other)
            ),
        }
    }

    /// `column` as a class label string (see [`label_string`]).
    pub fn label(&self, column: &str) -> Result<String> {
        let value = self.get(column)?;
        label_string(value).ok_or_else(|| {
            anyhow!(
                "{}: column \"{column}\" is not a label (a string, integer or boolean; found {})",
                self.location,
                describe(value)
            )
        })
    }

    /// `column` as a number: a JSON number, or a string that parses as one (CSV/TSV).
    pub fn float(&self, column: &str) -> Result<f64> {
        let value = self.get(column)?;
        let parsed = match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match parsed {
            Some(x) if x.is_finite() => Ok(x),
            _ => bail!(
                "{}: column \"{column}\" is not a number (found {})",
                self.location,
                describe(value)
            ),
        }
    }
}

/// A value as a class label: strings as they are, integers as decimal (`3`), floats with no
/// fractional part as integers (`1.0` -> `1`), other floats as written, booleans as
/// `true`/`false`. `None` for null, lists and objects.
pub fn label_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                return Some(n.to_string());
            }
            let x = n.as_f64()?;
            if x.fract() == 0.0 && x.abs() < 9.0e15 {
                Some(format!("{}", x as i64))
            } else {
                Some(n.to_string())
            }
        }
        _ => None,
    }
}

/// A short description of a value for error messages.
pub(crate) fn describe(value: &Value) -> String {
    let text = match value {
        Value::Null => return "null".to_string(),
        Value::Array(a) => return format!("a list of {}", a.len()),
        Value::Object(_) => return "an object".to_string(),
        other => other.to_string(),
    };
    snippet(&text, 40)
}

/// `text` cut to at most `max` characters, with `...` when cut.
pub(crate) fn snippet(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// Records that were skipped ([`ReadOptions::skip_invalid`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// How many records were skipped.
    pub count: usize,
    /// The first few reasons (at most [`SKIPPED_KEEP`]), each starting with the location.
    pub first: Vec<String>,
}

impl Skipped {
    /// Counts one skipped record; keeps `message` if fewer than [`SKIPPED_KEEP`] are kept.
    pub fn add(&mut self, message: impl Into<String>) {
        self.count += 1;
        if self.first.len() < SKIPPED_KEEP {
            self.first.push(message.into());
        }
    }

    /// Adds the counts and messages of `other`.
    pub fn merge(&mut self, other: Skipped) {
        self.count += other.count;
        for message in other.first {
            if self.first.len() < SKIPPED_KEEP {
                self.first.push(message);
            }
        }
    }

    /// Records `message` as skipped when `skip_invalid`, else returns it as the error.
    pub fn skip_or_fail(&mut self, skip_invalid: bool, message: String) -> Result<()> {
        if skip_invalid {
            self.add(message);
            Ok(())
        } else {
            Err(anyhow!(message))
        }
    }
}

/// How to read a data file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// The format; `None` detects it from the extension ([`Format::detect`]).
    pub format: Option<Format>,
    /// Skip malformed records (counted in [`Skipped`]) instead of failing.
    pub skip_invalid: bool,
}

/// A data file read into rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The file read.
    pub path: PathBuf,
    /// Column names in file order (JSON lines: every key seen, in order of first appearance).
    pub columns: Vec<String>,
    /// The records, in file order (skipped ones left out).
    pub rows: Vec<Row>,
    /// The records left out as malformed.
    pub skipped: Skipped,
}

impl Table {
    /// Whether the table has `column`.
    pub fn has_column(&self, column: &str) -> bool {
        self.columns.iter().any(|c| c == column)
    }

    /// An error naming the file and listing the columns if any of `columns` is absent.
    pub fn require(&self, columns: &[&str]) -> Result<()> {
        for column in columns {
            if !self.has_column(column) {
                bail!(
                    "{}: missing column \"{column}\" (columns: {})",
                    self.path.display(),
                    self.columns.join(", ")
                );
            }
        }
        Ok(())
    }
}

/// Reads a CSV, TSV, JSON lines or parquet file (see the module docs).
///
/// A `.json` file (format [`Format::SquadJson`]) is read as JSON lines, or as one JSON list of
/// objects if it starts with `[`. CoNLL files are read by [`ner::read_ner`].
pub fn read_table(path: &Path, opts: &ReadOptions) -> Result<Table> {
    let format = Format::detect(path, opts.format)?;
    match format {
        Format::Csv => read_delimited(path, b',', opts.skip_invalid),
        Format::Tsv => read_delimited(path, b'\t', opts.skip_invalid),
        Format::Jsonl => read_jsonl(path, opts.skip_invalid),
        Format::SquadJson => {
            let bytes = read_bytes(path)?;
            if strip_bom(&bytes).trim_ascii_start().starts_with(b"[") {
                read_json_list(path, &bytes, opts.skip_invalid)
            } else {
                jsonl_from_bytes(path, &bytes, opts.skip_invalid)
            }
        }
        Format::Parquet => read_parquet(path),
        Format::Conll => bail!(
            "{}: CoNLL files hold token-classification data, not a table; \
             read them as NER data (or pass another --format)",
            path.display()
        ),
    }
}

/// The file's bytes; an error naming the file if it cannot be read or is empty.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if strip_bom(&bytes).trim_ascii().is_empty() {
        bail!("{}: the file is empty", path.display());
    }
    Ok(bytes)
}

/// `bytes` without a leading UTF-8 byte order mark.
pub(crate) fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// Calls `f` with every record of a delimited file: the 1-based line where it starts and its
/// fields (or why they are unreadable). `quoting` selects RFC 4180 quotes; without it quote
/// characters are literal (GLUE). Blank lines are ignored; a leading BOM is removed.
pub(crate) fn each_record(
    path: &Path,
    delimiter: u8,
    quoting: bool,
    mut f: impl FnMut(u64, Result<Vec<String>, String>) -> Result<()>,
) -> Result<()> {
    let bytes = read_bytes(path)?;
    let data = strip_bom(&bytes);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .has_headers(false)
        .flexible(true)
        .from_reader(data);
    let mut record = csv::ByteRecord::new();
    // The csv crate's line numbers lag by one after a CRLF, so lines are counted here from the
    // byte offset where each record starts (past the line ends the reader has not consumed).
    let mut counter = LineCounter::default();
    loop {
        let before = reader.position().byte();
        match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let start = record.position().map_or(before, |p| p.byte());
                let line = counter.line_at(data, start);
                let fields: Result<Vec<String>, String> = record
                    .iter()
                    .enumerate()
                    .map(|(i, field)| {
                        std::str::from_utf8(field)
                            .map(str::to_string)
                            .map_err(|_| format!("field {} is not valid UTF-8", i + 1))
                    })
                    .collect();
                f(line, fields)?;
            }
            Err(e) => {
                let start = e.position().map_or(before, |p| p.byte());
                let line = counter.line_at(data, start);
                bail!("{}:{line}: {e}", path.display());
            }
        }
    }
}

/// Turns increasing byte offsets into 1-based line numbers.
#[derive(Default)]
struct LineCounter {
    offset: usize,
    newlines: u64,
}

impl LineCounter {
    /// The line of the first byte at or after `start` that is not a line end.
    fn line_at(&mut self, data: &[u8], start: u64) -> u64 {
        let mut start = usize::try_from(start).unwrap_or(data.len()).min(data.len());
        while start < data.len() && matches!(data[start], b'\r' | b'\n') {
            start += 1;
        }
        if start > self.offset {
            self.newlines += data[self.offset..start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
            self.offset = start;
        }
        self.newlines + 1
    }
}

/// Checks header names: no duplicates.
pub(crate) fn check_header(path: &Path, line: u64, columns: &[String]) -> Result<()> {
    let mut seen = HashSet::new();
    for c in columns {
        if !seen.insert(c.as_str()) {
            bail!(
                "{}:{line}: duplicate column \"{c}\" in the header",
                path.display()
            );
        }
    }
    Ok(())
}

/// Builds a table from the records of a delimited file, checking field counts.
pub(crate) struct TableBuilder {
    table: Table,
    /// All header names (the table's columns are the kept ones).
    header: Vec<String>,
    /// Which header columns are kept.
    keep: Vec<bool>,
    skip_invalid: bool,
}

impl TableBuilder {
    /// A builder for records with the columns `header`, keeping those `keep` accepts.
    pub(crate) fn new(
        path: &Path,
        header: Vec<String>,
        keep: impl Fn(&str) -> bool,
        skip_invalid: bool,
    ) -> Self {
        let keep: Vec<bool> = header.iter().map(|c| keep(c)).collect();
        let columns = header
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(c, _)| c.clone())
            .collect();
        TableBuilder {
            table: Table {
                path: path.to_path_buf(),
                columns,
                rows: Vec::new(),
                skipped: Skipped::default(),
            },
            header,
            keep,
            skip_invalid,
        }
    }

    /// Adds a record that starts at `line`; a malformed one is an error or skipped.
    pub(crate) fn push(&mut self, line: u64, fields: Result<Vec<String>, String>) -> Result<()> {
        self.push_checked(line, fields, |_| Ok(()))
    }

    /// As [`TableBuilder::push`], also treating the row as malformed when `check` fails (its
    /// message then starts with the row's location).
    pub(crate) fn push_checked(
        &mut self,
        line: u64,
        fields: Result<Vec<String>, String>,
        check: impl Fn(&Row) -> Result<(), String>,
    ) -> Result<()> {
        let location = format!("{}:{line}", self.table.path.display());
        let problem = match fields {
            Ok(fields) if fields.len() == self.header.len() => {
                let fields: Map<String, Value> = self
                    .header
                    .iter()
                    .zip(&self.keep)
                    .zip(fields)
                    .filter(|((_, keep), _)| **keep)
                    .map(|((name, _), value)| (name.clone(), Value::String(value)))
                    .collect();
                let row = Row { location, fields };
                match check(&row) {
                    Ok(()) => {
                        self.table.rows.push(row);
                        return Ok(());
                    }
                    Err(message) => message,
                }
            }
            Ok(fields) => format!(
                "{location}: {} fields, expected {} ({})",
                fields.len(),
                self.header.len(),
                self.header.join(", ")
            ),
            Err(what) => format!("{location}: {what}"),
        };
        self.table.skipped.skip_or_fail(self.skip_invalid, problem)
    }

    /// The table built.
    pub(crate) fn finish(self) -> Table {
        self.table
    }
}

fn read_delimited(path: &Path, delimiter: u8, skip_invalid: bool) -> Result<Table> {
    let mut builder: Option<TableBuilder> = None;
    each_record(path, delimiter, true, |line, fields| match &mut builder {
        Some(b) => b.push(line, fields),
        None => {
            let header =
                fields.map_err(|what| anyhow!("{}:{line}: header: {what}", path.display()))?;
            check_header(path, line, &header)?;
            builder = Some(TableBuilder::new(path, header, |_| true, skip_invalid));
            Ok(())
        }
    })?;
    match builder {
        Some(b) => Ok(b.finish()),
        None => bail!("{}: the file is empty", path.display()),
    }
}

fn read_jsonl(path: &Path, skip_invalid: bool) -> Result<Table> {
    let bytes = read_bytes(path)?;
    jsonl_from_bytes(path, &bytes, skip_invalid)
}

/// Reads JSON lines from `bytes` (already read from `path`).
pub(crate) fn jsonl_from_bytes(path: &Path, bytes: &[u8], skip_invalid: bool) -> Result<Table> {
    let mut columns: Vec<String> = Vec::new();
    let mut known: HashSet<String> = HashSet::new();
    let mut rows = Vec::new();
    let mut skipped = Skipped::default();
    for (i, line) in strip_bom(bytes).split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let location = format!("{}:{}", path.display(), i + 1);
        let parsed = match std::str::from_utf8(line) {
            Err(_) => Err("the line is not valid UTF-8".to_string()),
            Ok(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(fields)) => Ok(fields),
                Ok(other) => Err(format!(
                    "expected a JSON object, found {}",
                    describe(&other)
                )),
                Err(e) => Err(format!("invalid JSON: {e}")),
            },
        };
        match parsed {
            Ok(fields) => {
                for key in fields.keys() {
                    if !known.contains(key) {
                        known.insert(key.clone());
                        columns.push(key.clone());
                    }
                }
                rows.push(Row { location, fields });
            }
            Err(what) => skipped.skip_or_fail(skip_invalid, format!("{location}: {what}"))?,
        }
    }
    if rows.is_empty() && skipped.count == 0 {
        bail!("{}: the file is empty", path.display());
    }
    Ok(Table {
        path: path.to_path_buf(),
        columns,
        rows,
        skipped,
    })
}

/// Reads a `.json` file holding one list of objects; locations are `path: record N`.
fn read_json_list(path: &Path, bytes: &[u8], skip_invalid: bool) -> Result<Table> {
    let value: Value = serde_json::from_slice(strip_bom(bytes))
        .map_err(|e| anyhow!("{}:{}: invalid JSON: {e}", path.display(), e.line()))?;
    let Value::Array(items) = value else {
        bail!("{}: expected a JSON list of objects", path.display());
    };
    let mut columns: Vec<String> = Vec::new();
    let mut known: HashSet<String> = HashSet::new();
    let mut rows = Vec::new();
    let mut skipped = Skipped::default();
    for (i, item) in items.into_iter().enumerate() {
        let location = format!("{}: record {}", path.display(), i + 1);
        match item {
            Value::Object(fields) => {
                for key in fields.keys() {
                    if known.insert(key.clone()) {
                        columns.push(key.clone());
                    }
                }
                rows.push(Row { location, fields });
            }
            other => skipped.skip_or_fail(
                skip_invalid,
                format!(
                    "{location}: expected a JSON object, found {}",
                    describe(&other)
                ),
            )?,
        }
    }
    Ok(Table {
        path: path.to_path_buf(),
        columns,
        rows,
        skipped,
    })
}

/// Without the `parquet` feature (the server's build): a clear refusal.
#[cfg(not(feature = "parquet"))]
fn read_parquet(path: &Path) -> Result<Table> {
    bail!(
        "{}: this build reads no parquet files (the `parquet` feature of bertkit-tasks is off)",
        path.display()
    )
}

#[cfg(feature = "parquet")]
mod parquet_table;
#[cfg(feature = "parquet")]
use parquet_table::read_parquet;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::sync::Arc;

    /// Writes `content` to a temporary file named `name`.
    pub(crate) fn temp_file(name: &str, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        let mut f = File::create(&path).expect("create");
        f.write_all(content).expect("write");
        (dir, path)
    }

    pub(super) fn opts() -> ReadOptions {
        ReadOptions::default()
    }

    pub(super) fn skipping() -> ReadOptions {
        ReadOptions {
            format: None,
            skip_invalid: true,
        }
    }

    #[test]
    fn format_from_str_display_and_detect() {
        for (s, f) in [
            ("csv", Format::Csv),
            ("TSV", Format::Tsv),
            ("jsonl", Format::Jsonl),
            ("json-lines", Format::Jsonl),
            ("parquet", Format::Parquet),
            ("conll", Format::Conll),
            ("squad", Format::SquadJson),
        ] {
            assert_eq!(s.parse::<Format>().unwrap(), f);
            assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
        }
        let err = "xml".parse::<Format>().unwrap_err().to_string();
        assert!(err.contains("xml") && err.contains("parquet"), "{err}");

        let d = |p: &str| Format::detect(Path::new(p), None).unwrap();
        assert_eq!(d("a/train.csv"), Format::Csv);
        assert_eq!(d("train.TSV"), Format::Tsv);
        assert_eq!(d("x.jsonl"), Format::Jsonl);
        assert_eq!(d("x.ndjson"), Format::Jsonl);
        assert_eq!(d("x.parquet"), Format::Parquet);
        assert_eq!(d("eng.train.conll"), Format::Conll);
        assert_eq!(d("eng.txt"), Format::Conll);
        assert_eq!(d("dev-v2.0.json"), Format::SquadJson);
        assert_eq!(
            Format::detect(Path::new("x.csv"), Some(Format::Tsv)).unwrap(),
            Format::Tsv
        );
        let err = Format::detect(Path::new("data/train.xlsx"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("data/train.xlsx"), "{err}");
        assert!(
            err.contains("--format") && err.contains("csv, tsv, jsonl"),
            "{err}"
        );
        assert!(Format::detect(Path::new("noext"), None).is_err());
    }

    #[test]
    fn csv_quoting_crlf_bom_and_locations() {
        let content = "\u{feff}text,label\r\n\"Hello, \"\"world\"\"\",1\r\n\"two\r\nlines\",0\r\n\r\nplain,2\r\n";
        let (_d, path) = temp_file("t.csv", content.as_bytes());
        let t = read_table(&path, &opts()).unwrap();
        assert_eq!(t.columns, ["text", "label"]);
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.rows[0].str("text").unwrap(), "Hello, \"world\"");
        assert_eq!(t.rows[0].str("label").unwrap(), "1");
        assert_eq!(t.rows[1].str("text").unwrap(), "two\r\nlines");
        let p = path.display();
        assert_eq!(t.rows[0].location, format!("{p}:2"));
        assert_eq!(t.rows[1].location, format!("{p}:3"));
        // the quoted field spans lines 3-4, line 5 is blank
        assert_eq!(t.rows[2].location, format!("{p}:6"));
        assert_eq!(t.rows[2].label("label").unwrap(), "2");
        assert_eq!(t.skipped, Skipped::default());
    }

    #[test]
    fn csv_wrong_field_count_errors_or_skips() {
        let content = "a,b\n1,2\n3\n4,5,6\n7,8\n";
        let (_d, path) = temp_file("t.csv", content.as_bytes());
        let err = read_table(&path, &opts()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:3: 1 fields, expected 2", path.display())),
            "{err}"
        );
        let t = read_table(&path, &skipping()).unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[1].str("a").unwrap(), "7");
        assert_eq!(t.rows[1].location, format!("{}:5", path.display()));
        assert_eq!(t.skipped.count, 2);
        assert!(
            t.skipped.first[1].contains(":4: 3 fields"),
            "{:?}",
            t.skipped
        );
    }

    #[test]
    fn tsv_with_quotes_and_invalid_utf8() {
        let mut content = b"sentence\tlabel\n\"a\tquoted\" one\t1\n".to_vec();
        content.extend_from_slice(b"bad \xff byte\t0\nok\t0\n");
        let (_d, path) = temp_file("t.tsv", &content);
        let err = read_table(&path, &opts()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{}:3:", path.display())) && err.contains("UTF-8"),
            "{err}"
        );
        let t = read_table(&path, &skipping()).unwrap();
        assert_eq!(t.rows.len(), 2);
        // csv-style quotes in TSV: the tab inside quotes is data
        assert_eq!(t.rows[0].str("sentence").unwrap(), "a\tquoted one");
        assert_eq!(t.rows[1].str("sentence").unwrap(), "ok");
        assert_eq!(t.skipped.count, 1);
    }

    #[test]
    fn duplicate_header_is_an_error() {
        let (_d, path) = temp_file("t.csv", b"a,b,a\n1,2,3\n");
        let err = read_table(&path, &opts()).unwrap_err().to_string();
        assert!(err.contains(":1: duplicate column \"a\""), "{err}");
    }

    #[test]
    fn empty_and_missing_files() {
        for name in ["e.csv", "e.tsv", "e.jsonl", "e.parquet"] {
            let (_d, path) = temp_file(name, b"");
            let err = read_table(&path, &opts()).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains("empty"), "{err}");
        }
        let (_d, path) = temp_file("blank.jsonl", b"\n  \r\n");
        assert!(read_table(&path, &opts())
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let err = read_table(Path::new("/nonexistent/dir/x.csv"), &opts())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/dir/x.csv"), "{err}");
    }

    #[test]
    fn header_only_csv_has_no_rows() {
        let (_d, path) = temp_file("h.csv", b"text,label\r\n");
        let t = read_table(&path, &opts()).unwrap();
        assert_eq!(t.columns, ["text", "label"]);
        assert!(t.rows.is_empty());
    }

    #[test]
    fn jsonl_rows_errors_and_columns() {
        let content = "{\"text\": \"a\", \"label\": 3}\r\n\n{\"text\": \"b\", \"label\": true, \"extra\": [1, 2]}\n[1, 2]\n{bad json\n{\"label\": 1.0}\n";
        let (_d, path) = temp_file("t.jsonl", content.as_bytes());
        let err = read_table(&path, &opts()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:4: expected a JSON object", path.display())),
            "{err}"
        );
        let t = read_table(&path, &skipping()).unwrap();
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.skipped.count, 2);
        assert!(
            t.skipped.first[1].contains(":5: invalid JSON"),
            "{:?}",
            t.skipped
        );
        assert_eq!(t.columns, ["label", "text", "extra"]);
        assert_eq!(t.rows[0].location, format!("{}:1", path.display()));
        assert_eq!(t.rows[1].location, format!("{}:3", path.display()));
        assert_eq!(t.rows[0].label("label").unwrap(), "3");
        assert_eq!(t.rows[1].label("label").unwrap(), "true");
        assert_eq!(t.rows[2].label("label").unwrap(), "1");
        assert_eq!(t.rows[0].str("text").unwrap(), "a");
        assert!(t.rows[1].label("extra").is_err());
        let err = t.rows[2].str("text").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}:6: missing column \"text\" (columns: label)",
                path.display()
            )
        );
        let err = t.rows[0].str("label").unwrap_err().to_string();
        assert!(err.contains("is not a string (found 3)"), "{err}");
        assert!(t.require(&["text", "extra"]).is_ok());
        let err = t.require(&["sentence"]).unwrap_err().to_string();
        assert!(err.contains("columns: label, text, extra"), "{err}");
    }

    #[test]
    fn jsonl_invalid_utf8_line() {
        let (_d, path) = temp_file("t.jsonl", b"{\"a\": \"x\"}\n{\"a\": \"\xff\"}\n");
        let err = read_table(&path, &opts()).unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn json_extension_reads_lines_or_a_list() {
        let (_d, path) = temp_file("t.json", b"{\"a\": \"x\"}\n{\"a\": \"y\"}\n");
        let t = read_table(&path, &opts()).unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[1].str("a").unwrap(), "y");
        let (_d, path) = temp_file("l.json", b"[{\"a\": \"x\"}, {\"a\": 2}]");
        let t = read_table(&path, &opts()).unwrap();
        assert_eq!(t.rows[1].label("a").unwrap(), "2");
        assert_eq!(t.rows[1].location, format!("{}: record 2", path.display()));
    }

    #[test]
    fn label_string_and_float() {
        use serde_json::json;
        assert_eq!(label_string(&json!(3)).as_deref(), Some("3"));
        assert_eq!(label_string(&json!(-1)).as_deref(), Some("-1"));
        assert_eq!(label_string(&json!("neutral")).as_deref(), Some("neutral"));
        assert_eq!(label_string(&json!(false)).as_deref(), Some("false"));
        assert_eq!(label_string(&json!(2.0)).as_deref(), Some("2"));
        assert_eq!(label_string(&json!(2.5)).as_deref(), Some("2.5"));
        assert_eq!(label_string(&json!(null)), None);
        assert_eq!(label_string(&json!([1])), None);
        let row = Row {
            location: "f:2".into(),
            fields: json!({"s": " 3.25", "n": 4, "bad": "x"})
                .as_object()
                .cloned()
                .unwrap(),
        };
        assert_eq!(row.float("s").unwrap(), 3.25);
        assert_eq!(row.float("n").unwrap(), 4.0);
        assert!(row
            .float("bad")
            .unwrap_err()
            .to_string()
            .starts_with("f:2: "));
    }

    #[test]
    fn skipped_keeps_five() {
        let mut s = Skipped::default();
        for i in 0..7 {
            s.add(format!("m{i}"));
        }
        assert_eq!(s.count, 7);
        assert_eq!(s.first, ["m0", "m1", "m2", "m3", "m4"]);
        let mut t = Skipped::default();
        t.add("x");
        t.merge(s);
        assert_eq!(t.count, 8);
        assert_eq!(t.first.len(), 5);
        assert_eq!(t.first[0], "x");
    }

    /// Writes a parquet file with strings, ints, floats, bools, lists, structs and nulls.
    pub(crate) fn write_parquet(path: &Path, batch: arrow_array::RecordBatch) {
        let file = File::create(path).expect("create");
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
    }

    #[test]
    fn parquet_values_become_json() {
        use arrow_array::builder::{ListBuilder, StringBuilder};
        use arrow_array::{
            ArrayRef, BooleanArray, Float32Array, Float64Array, Int64Array, RecordBatch,
            StringArray, StructArray,
        };
        use arrow_schema::{Field, Fields};
        use serde_json::json;

        let text: ArrayRef = Arc::new(StringArray::from(vec![Some("Café"), None, Some("b")]));
        let label: ArrayRef = Arc::new(Int64Array::from(vec![0, 2, -1]));
        let score: ArrayRef = Arc::new(Float32Array::from(vec![3.8, 0.5, f32::NAN]));
        let flag: ArrayRef = Arc::new(BooleanArray::from(vec![true, false, true]));
        let mut lb = ListBuilder::new(StringBuilder::new());
        lb.append_value([Some("EU"), Some("rejects")]);
        lb.append_value([Some("x")]);
        lb.append_null();
        let tokens: ArrayRef = Arc::new(lb.finish());
        let starts: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0]));
        let answers: ArrayRef = Arc::new(StructArray::new(
            Fields::from(vec![Field::new(
                "start",
                arrow_schema::DataType::Float64,
                true,
            )]),
            vec![starts],
            None,
        ));
        let batch = RecordBatch::try_from_iter(vec![
            ("text", text),
            ("label", label),
            ("score", score),
            ("flag", flag),
            ("tokens", tokens),
            ("answers", answers),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        write_parquet(&path, batch);

        let t = read_table(&path, &opts()).unwrap();
        assert_eq!(
            t.columns,
            ["text", "label", "score", "flag", "tokens", "answers"]
        );
        assert_eq!(t.rows.len(), 3);
        let r = &t.rows[0];
        assert_eq!(r.location, format!("{}: row 1", path.display()));
        assert_eq!(r.str("text").unwrap(), "Café");
        assert_eq!(r.label("label").unwrap(), "0");
        assert_eq!(r.value("score"), Some(&json!(3.8)));
        assert_eq!(r.value("flag"), Some(&json!(true)));
        assert_eq!(r.value("tokens"), Some(&json!(["EU", "rejects"])));
        assert_eq!(r.value("answers"), Some(&json!({"start": 1.0})));
        let r = &t.rows[1];
        assert_eq!(r.value("text"), Some(&Value::Null));
        assert!(r
            .str("text")
            .unwrap_err()
            .to_string()
            .contains("not a string (found null)"));
        assert_eq!(r.label("label").unwrap(), "2");
        let r = &t.rows[2];
        assert_eq!(r.location, format!("{}: row 3", path.display()));
        assert_eq!(r.value("score"), Some(&Value::Null));
        assert_eq!(r.value("tokens"), Some(&Value::Null));
        assert_eq!(r.label("label").unwrap(), "-1");
    }

    #[test]
    fn parquet_dictionary_column() {
        use arrow_array::{ArrayRef, DictionaryArray, RecordBatch};
        let dict: DictionaryArray<arrow_array::types::Int32Type> =
            vec!["pos", "neg", "pos"].into_iter().collect();
        let dict: ArrayRef = Arc::new(dict);
        let batch = RecordBatch::try_from_iter(vec![("label", dict)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        write_parquet(&path, batch);
        let t = read_table(&path, &opts()).unwrap();
        let labels: Vec<String> = t.rows.iter().map(|r| r.label("label").unwrap()).collect();
        assert_eq!(labels, ["pos", "neg", "pos"]);
    }

    #[test]
    fn not_a_parquet_file() {
        let (_d, path) = temp_file("x.parquet", b"text,label\n");
        let err = format!("{:#}", read_table(&path, &opts()).unwrap_err());
        assert!(err.contains("not a readable parquet file"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn conll_is_not_a_table() {
        let (_d, path) = temp_file("x.conll", b"EU B-ORG\n");
        assert!(read_table(&path, &opts()).is_err());
    }
}
