//! Corpus readers: every input format becomes a stream of [`Document`]s in a fixed order.
//!
//! Formats: plain text (documents separated by blank lines), JSONL (one document per line, text in
//! a field), parquet (text in a column) and Wikipedia `pages-articles` XML (plain or `.bz2`).
//! Readers never panic on bad input: a problem becomes an [`InputError`] naming the file and the
//! line or byte offset. After a recoverable error (one bad line) the reader goes on; after a fatal
//! one (a truncated `.bz2`, a corrupt parquet footer) it ends the file.

pub mod wikipedia;
pub mod wikitext;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// One document of raw text, with where it came from (for error messages).
#[derive(Debug, Clone)]
pub struct Document {
    pub text: String,
    /// The file it was read from.
    pub file: Arc<PathBuf>,
    /// Where in the file: "line 12", "row 40", "page 'Anarchism' at byte 1234".
    pub location: String,
    /// The text is Wikipedia markup that still has to be cleaned (see [`wikitext::clean`]).
    pub wikitext: bool,
}

/// A problem with the input, located precisely enough for a user to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub file: PathBuf,
    /// "line 12", "byte offset 5120", "row group 3", or "" when the whole file is concerned.
    pub location: String,
    pub message: String,
}

impl InputError {
    pub fn new(
        file: impl Into<PathBuf>,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        InputError {
            file: file.into(),
            location: location.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.location, self.message)
        }
    }
}

impl std::error::Error for InputError {}
