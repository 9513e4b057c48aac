//! Corpus readers: every input format becomes a stream of [`Document`]s in a fixed order.
//!
//! Formats: plain text (documents separated by blank lines), JSONL (one document per line, text in
//! a field), parquet (text in a column) and Wikipedia `pages-articles` XML (plain or `.bz2`).
//! Readers never panic on bad input: a problem becomes an [`InputError`] naming the file and the
//! line or byte offset. After a recoverable error (one bad line) the reader goes on; after a fatal
//! one (a truncated `.bz2`, a corrupt parquet footer) it ends the file.

pub mod jsonl;
pub mod lines;
pub mod parquet_input;
pub mod text;
pub mod wikipedia;
pub mod wikitext;

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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

impl Document {
    /// The prose to split and tokenize: the text, with Wikipedia markup cleaned away when it
    /// has any (see [`wikitext::clean`]).
    pub fn clean_text(&self) -> std::borrow::Cow<'_, str> {
        if self.wikitext {
            std::borrow::Cow::Owned(wikitext::clean(&self.text))
        } else {
            std::borrow::Cow::Borrowed(&self.text)
        }
    }
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
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.location,
                self.message
            )
        }
    }
}

impl std::error::Error for InputError {}

/// Input formats. `Auto` decides per file by extension (after a `.bz2`), then by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Auto,
    Text,
    Jsonl,
    Parquet,
    Wikipedia,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Format::Auto,
            "text" | "txt" => Format::Text,
            "jsonl" | "json" | "ndjson" => Format::Jsonl,
            "parquet" => Format::Parquet,
            "wikipedia" | "wiki" | "xml" => Format::Wikipedia,
            _ => {
                return Err(format!(
                    "unknown format '{s}' (auto, text, jsonl, parquet, wikipedia)"
                ))
            }
        })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Auto => "auto",
            Format::Text => "text",
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
            Format::Wikipedia => "wikipedia",
        })
    }
}

/// How to read the inputs.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub format: Format,
    pub text_field: String,
    pub text_column: String,
    pub max_line_bytes: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            format: Format::Auto,
            text_field: "text".into(),
            text_column: "text".into(),
            max_line_bytes: 8 << 20,
        }
    }
}

/// Expand the command line's paths into a list of files: globs (`data/*.txt`), folders
/// (all files below them, hidden ones excepted) and plain files. Each path's expansion is
/// sorted, so the order — and therefore the output of prep — does not depend on the file system.
pub fn discover(paths: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        let before = files.len();
        if p.contains(['*', '?', '[']) {
            // Like a shell: `*` does not match hidden files.
            let options = glob::MatchOptions {
                require_literal_leading_dot: true,
                ..Default::default()
            };
            let entries = glob::glob_with(p, options)
                .map_err(|e| anyhow::anyhow!("bad pattern '{p}': {e}"))?;
            for entry in entries {
                let path = entry.map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
                if path.is_dir() {
                    walk(&path, &mut files)?;
                } else {
                    files.push(path);
                }
            }
        } else {
            let path = PathBuf::from(p);
            if path.is_dir() {
                walk(&path, &mut files)?;
            } else if path.is_file() {
                files.push(path);
            } else {
                anyhow::bail!("input {p}: no such file or folder");
            }
        }
        if files.len() == before {
            anyhow::bail!("input {p}: matches no files");
        }
        files[before..].sort();
    }
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.clone()));
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Counts the bytes read from a file (for progress and ETA).
pub struct Counting<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn is_bz2(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("bz2"))
}

/// The format of one file: the chosen one, or by extension (ignoring `.bz2`), or by content.
pub fn detect(path: &Path, chosen: Format) -> Result<Format, InputError> {
    if chosen != Format::Auto {
        return Ok(chosen);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".bz2").unwrap_or(&name);
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    Ok(match ext {
        "jsonl" | "json" | "ndjson" => Format::Jsonl,
        "parquet" => Format::Parquet,
        "xml" => Format::Wikipedia,
        _ => {
            // Sniff: a MediaWiki export starts with <mediawiki ...>.
            let mut head = Vec::new();
            let reader = open_raw(path, None)?;
            reader
                .take(4096)
                .read_to_end(&mut head)
                .map_err(|e| InputError::new(path, "", format!("cannot read: {e}")))?;
            if wikipedia::is_wikipedia_xml(&head) {
                Format::Wikipedia
            } else {
                Format::Text
            }
        }
    })
}

/// A buffered reader over a file's bytes, decompressing `.bz2` (multistream) on the fly.
fn open_raw(
    path: &Path,
    counter: Option<Arc<AtomicU64>>,
) -> Result<Box<dyn std::io::BufRead + Send>, InputError> {
    let file =
        File::open(path).map_err(|e| InputError::new(path, "", format!("cannot open: {e}")))?;
    let counted = Counting {
        inner: file,
        counter: counter.unwrap_or_default(),
    };
    Ok(if is_bz2(path) {
        Box::new(BufReader::with_capacity(
            1 << 16,
            bzip2::read::MultiBzDecoder::new(BufReader::new(counted)),
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, counted))
    })
}

pub type Documents = Box<dyn Iterator<Item = Result<Document, InputError>> + Send>;

/// A whole input file, or a part of a multistream Wikipedia `.bz2` dump (a byte range of whole
/// bz2 streams, see [`wikipedia::split_points`]) that is read on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPart {
    pub path: PathBuf,
    pub range: Option<(u64, u64)>,
}

impl InputPart {
    /// Bytes on disk.
    pub fn len(&self) -> u64 {
        match self.range {
            Some((a, b)) => b - a,
            None => std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The parts of one input file: several for a multistream Wikipedia `.bz2` larger than
/// `2 * min_part` (cut at stream starts, parts of at least `min_part` bytes), else the file.
/// Depends only on the file's bytes, so it is the same on every machine and every run.
pub fn parts(path: &Path, opts: &ReadOptions, min_part: u64) -> Vec<InputPart> {
    let whole = vec![InputPart {
        path: path.to_path_buf(),
        range: None,
    }];
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len < 2 * min_part || detect(path, opts.format).ok() != Some(Format::Wikipedia) {
        return whole;
    }
    let points = match wikipedia::split_points(path, min_part) {
        Ok(p) if !p.is_empty() => p,
        _ => return whole,
    };
    let mut bounds = vec![0];
    bounds.extend(points);
    bounds.push(len);
    bounds
        .windows(2)
        .map(|w| InputPart {
            path: path.to_path_buf(),
            range: Some((w[0], w[1])),
        })
        .collect()
}

/// Open a part of an input (see [`InputPart`]) as a stream of documents.
pub fn open_part(
    part: &InputPart,
    opts: &ReadOptions,
    counter: Option<Arc<AtomicU64>>,
) -> Result<Documents, InputError> {
    match part.range {
        None => open(&part.path, opts, counter),
        Some(range) => Ok(Box::new(wikipedia::WikipediaReader::open_range(
            &part.path,
            counter,
            Some(range),
        )?)),
    }
}

/// Open one file as a stream of documents. `counter` receives the bytes read from disk.
pub fn open(
    path: &Path,
    opts: &ReadOptions,
    counter: Option<Arc<AtomicU64>>,
) -> Result<Documents, InputError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| InputError::new(path, "", format!("cannot open: {e}")))?;
    if meta.len() == 0 {
        return Err(InputError::new(path, "", "file is empty"));
    }
    let file = Arc::new(path.to_path_buf());
    Ok(match detect(path, opts.format)? {
        Format::Text | Format::Auto => Box::new(text::TextReader::new(
            open_raw(path, counter)?,
            file,
            opts.max_line_bytes,
        )),
        Format::Jsonl => Box::new(jsonl::JsonlReader::new(
            open_raw(path, counter)?,
            file,
            &opts.text_field,
            opts.max_line_bytes,
        )),
        Format::Parquet => {
            if let Some(c) = counter {
                c.fetch_add(meta.len(), Ordering::Relaxed);
            }
            Box::new(parquet_input::ParquetReader::open(file, &opts.text_column)?)
        }
        Format::Wikipedia => Box::new(wikipedia::WikipediaReader::open(path, counter)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_sorts_expands_and_dedupes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
        for f in [
            "b.txt",
            "a.txt",
            ".hidden.txt",
            "sub/c.jsonl",
            "sub/deeper/d.txt",
        ] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let s = |p: &Path| p.display().to_string();
        let got = discover(&[s(d), s(&d.join("a.txt"))]).unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|p| p.strip_prefix(d).unwrap().display().to_string())
            .collect();
        // Folder walk sorted, hidden files skipped, a.txt not repeated.
        assert_eq!(names, ["a.txt", "b.txt", "sub/c.jsonl", "sub/deeper/d.txt"]);
        let globbed = discover(&[format!("{}/*.txt", d.display())]).unwrap();
        assert_eq!(globbed, [d.join("a.txt"), d.join("b.txt")]);
        let err = discover(&[s(&d.join("nope.txt"))]).unwrap_err().to_string();
        assert!(err.contains("nope.txt: no such file or folder"), "{err}");
        let err = discover(&[format!("{}/*.csv", d.display())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("matches no files"), "{err}");
    }

    #[test]
    fn formats_by_extension_then_content() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cases = [
            ("a.jsonl", "{}", Format::Jsonl),
            ("a.JSON", "{}", Format::Jsonl),
            ("a.parquet", "PAR1", Format::Parquet),
            ("a.xml", "<x/>", Format::Wikipedia),
            ("dump.txt", "<mediawiki xmlns=\"x\">", Format::Wikipedia),
            ("notes", "plain words", Format::Text),
        ];
        for (name, content, want) in cases {
            std::fs::write(d.join(name), content).unwrap();
            assert_eq!(detect(&d.join(name), Format::Auto).unwrap(), want, "{name}");
        }
        assert_eq!(
            detect(&d.join("notes"), Format::Jsonl).unwrap(),
            Format::Jsonl
        );
        assert!("csv"
            .parse::<Format>()
            .unwrap_err()
            .contains("unknown format"));
        assert_eq!("wikipedia".parse::<Format>().unwrap(), Format::Wikipedia);
    }
}
