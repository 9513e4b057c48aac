//! Plain text: documents separated by blank lines; every other line is part of the document.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use super::lines::Lines;
use super::{Document, InputError};

/// A document longer than this is cut into pieces of about this size (at a line end), so one
/// file without blank lines cannot make a document that does not fit in memory.
pub const MAX_DOCUMENT_BYTES: usize = 32 << 20;

pub struct TextReader<R> {
    lines: Lines<R>,
    file: Arc<PathBuf>,
    pending_error: Option<InputError>,
    done: bool,
}

impl<R: BufRead> TextReader<R> {
    pub fn new(reader: R, file: Arc<PathBuf>, max_line_bytes: usize) -> Self {
        TextReader {
            lines: Lines::new(reader, file.clone(), max_line_bytes),
            file,
            pending_error: None,
            done: false,
        }
    }
}

impl<R: BufRead> Iterator for TextReader<R> {
    type Item = Result<Document, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_error.take() {
            return Some(Err(e));
        }
        if self.done {
            return None;
        }
        let mut text = String::new();
        let mut first_line = 0;
        loop {
            match self.lines.next() {
                None => {
                    self.done = true;
                    break;
                }
                Some(Err(e)) => {
                    // Report the bad line after the document it interrupts (or now, if none).
                    if text.is_empty() {
                        return Some(Err(e));
                    }
                    self.pending_error = Some(e);
                    break;
                }
                Some(Ok((no, line))) => {
                    if line.trim().is_empty() {
                        if text.is_empty() {
                            continue;
                        }
                        break;
                    }
                    if text.is_empty() {
                        first_line = no;
                    } else {
                        text.push('\n');
                    }
                    text.push_str(&line);
                    if text.len() >= MAX_DOCUMENT_BYTES {
                        break;
                    }
                }
            }
        }
        if text.is_empty() {
            return self.pending_error.take().map(Err);
        }
        Some(Ok(Document {
            text,
            file: self.file.clone(),
            location: format!("line {first_line}"),
            wikitext: false,
        }))
    }
}
