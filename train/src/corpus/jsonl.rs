//! JSONL: one JSON object per line, the document's text in a string field (`--text-field`).

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use super::lines::Lines;
use super::{Document, InputError};

pub struct JsonlReader<R> {
    lines: Lines<R>,
    file: Arc<PathBuf>,
    field: String,
}

impl<R: BufRead> JsonlReader<R> {
    pub fn new(reader: R, file: Arc<PathBuf>, field: &str, max_line_bytes: usize) -> Self {
        JsonlReader {
            lines: Lines::new(reader, file.clone(), max_line_bytes),
            file,
            field: field.to_string(),
        }
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = Result<Document, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (no, line) = match self.lines.next()? {
                Ok(l) => l,
                Err(e) => return Some(Err(e)),
            };
            if line.trim().is_empty() {
                continue;
            }
            let err = |m: String| {
                Some(Err(InputError::new(
                    self.file.as_path(),
                    format!("line {no}"),
                    m,
                )))
            };
            let value: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => return err(format!("not valid JSON: {e}")),
            };
            let Some(obj) = value.as_object() else {
                return err("expected a JSON object".to_string());
            };
            let text = match obj.get(&self.field) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) => continue,
                Some(other) => {
                    return err(format!(
                        "field '{}' is not a string (found {})",
                        self.field,
                        kind(other)
                    ))
                }
                None => {
                    let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
                    keys.truncate(10);
                    return err(format!(
                        "no field '{}' (--text-field); fields here: {}",
                        self.field,
                        keys.join(", ")
                    ));
                }
            };
            return Some(Ok(Document {
                text,
                file: self.file.clone(),
                location: format!("line {no}"),
                wikitext: false,
            }));
        }
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
