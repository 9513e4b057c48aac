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

use std::collections::{HashMap, HashSet};
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

/// Expand the command line's paths into a list of files: globs (`data/*.txt`, `data/**/*.txt`),
/// folders (all files below them, hidden ones excepted) and plain files. Each path's expansion is
/// sorted, so the order — and therefore the output of prep — does not depend on the file system.
///
/// Symbolic links are followed, safely: each real folder is walked once per path (a link back to
/// a folder being walked, a cycle, is skipped with a warning naming it), and each file is listed
/// once, under the first of its paths in that order, however many paths (links, hard links,
/// repeated arguments) reach it. FIFOs, sockets, devices and broken links are skipped with a
/// warning inside folders and globs, and are an error when named on the command line. What a path
/// is gets decided from its metadata before anything is opened (opening a FIFO blocks).
pub fn discover(paths: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    discover_noting(paths, &mut |note| match note {
        Note::Warn(m) => tracing::warn!("{m}"),
        Note::Info(m) => tracing::info!("{m}"),
    })
}

/// A message of [`discover`] about a path it skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Note {
    /// For the user to look at: a cycle, a special file, a broken link.
    Warn(String),
    /// Harmless: a folder reached again by another path.
    Info(String),
}

/// [`discover`], telling `note` what it skipped.
fn discover_noting(paths: &[String], note: &mut dyn FnMut(Note)) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<(PathBuf, FileId)> = Vec::new();
    for p in paths {
        let before = files.len();
        let mut walker = Walker {
            seen: HashMap::new(),
            ancestors: Vec::new(),
            filter: None,
            out: &mut files,
            note: &mut *note,
        };
        if p.contains(['*', '?', '[']) {
            // Like a shell: `*` does not match hidden files.
            let options = glob::MatchOptions {
                require_literal_leading_dot: true,
                ..Default::default()
            };
            let bad = |e: glob::PatternError| anyhow::anyhow!("bad pattern '{p}': {e}");
            if p.contains("**") {
                // glob's own `**` follows links to folders without remembering them: with two
                // links to `.` it would list exponentially many paths. Walk the pattern's literal
                // start instead, cycles cut, and keep what matches.
                let pattern = glob::Pattern::new(p).map_err(bad)?;
                let start = literal_start(p);
                let shown = if start.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    &start
                };
                if let Ok(Found::Dir(id)) = inspect(shown) {
                    let keep = pattern.matches_path_with(&start, options);
                    walker.filter = Some((pattern, options));
                    walker.walk(&start, id, keep)?;
                }
            } else {
                for entry in glob::glob_with(p, options).map_err(bad)? {
                    let path = entry.map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
                    match inspect(&path) {
                        Ok(Found::Dir(id)) => walker.walk(&path, id, true)?,
                        Ok(Found::File(id)) => walker.out.push((path, id)),
                        Err(why) => walker.skipped(&path, &why),
                    }
                }
            }
        } else {
            let path = PathBuf::from(p);
            match inspect(&path) {
                Ok(Found::Dir(id)) => walker.walk(&path, id, true)?,
                Ok(Found::File(id)) => walker.out.push((path, id)),
                Err(why) => anyhow::bail!("input {p}: {why}"),
            }
        }
        if files.len() == before {
            anyhow::bail!("input {p}: matches no files");
        }
        files[before..].sort_by(|a, b| a.0.cmp(&b.0));
    }
    // One path per real file: the first in the order above.
    let mut seen = HashSet::new();
    Ok(files
        .into_iter()
        .filter(|(_, id)| seen.insert(id.clone()))
        .map(|(path, _)| path)
        .collect())
}

/// The leading components of a glob pattern without wildcards (empty for `**/*.txt`).
fn literal_start(pattern: &str) -> PathBuf {
    Path::new(pattern)
        .components()
        .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
        .collect()
}

/// The identity of a real file or folder, whatever path reaches it: (device, inode) on unix.
#[cfg(unix)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// The identity of a real file or folder, whatever path reaches it: its canonical path.
#[cfg(not(unix))]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileId(PathBuf);

#[cfg(unix)]
fn file_id(_path: &Path, meta: &std::fs::Metadata) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

#[cfg(not(unix))]
fn file_id(path: &Path, _meta: &std::fs::Metadata) -> std::io::Result<FileId> {
    std::fs::canonicalize(path).map(FileId)
}

/// What an input path leads to, links followed.
enum Found {
    File(FileId),
    Dir(FileId),
}

/// What `path` leads to, from metadata only (nothing is opened: opening a FIFO blocks), or why it
/// is no input ("is a FIFO (named pipe), not a regular file", "is a broken symbolic link ...").
fn inspect(path: &Path) -> Result<Found, String> {
    let own = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("no such file or folder".into())
        }
        Err(e) => return Err(format!("cannot read its metadata: {e}")),
    };
    let meta = if own.file_type().is_symlink() {
        let target = link_target(path);
        match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "is a broken symbolic link (to '{target}', which does not exist)"
                ))
            }
            Err(e) => {
                return Err(format!(
                    "is a symbolic link to '{target}' that cannot be followed: {e}"
                ))
            }
        }
    } else {
        own
    };
    let id = || file_id(path, &meta).map_err(|e| format!("cannot resolve its real path: {e}"));
    let kind = meta.file_type();
    if kind.is_dir() {
        Ok(Found::Dir(id()?))
    } else if kind.is_file() {
        Ok(Found::File(id()?))
    } else {
        Err(special_kind(&kind).into())
    }
}

/// What a symbolic link points to, as written in it.
fn link_target(path: &Path) -> String {
    std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|e| format!("? ({e})"))
}

/// Why a path that is neither a regular file nor a folder is no input.
#[cfg(unix)]
fn special_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "is a FIFO (named pipe), not a regular file"
    } else if kind.is_socket() {
        "is a socket, not a regular file"
    } else if kind.is_block_device() {
        "is a block device, not a regular file"
    } else if kind.is_char_device() {
        "is a character device, not a regular file"
    } else {
        "is neither a regular file nor a folder"
    }
}

#[cfg(not(unix))]
fn special_kind(_kind: &std::fs::FileType) -> &'static str {
    "is neither a regular file nor a folder"
}

/// Walks the folders of one command-line path.
struct Walker<'a> {
    /// The folders walked so far, by identity, with the path they were walked at.
    seen: HashMap<FileId, PathBuf>,
    /// The folders being walked, outermost first: a path back to one of them is a cycle.
    ancestors: Vec<(FileId, PathBuf)>,
    /// For a `**` pattern: keep the files that match it or lie below a folder that does. Folders
    /// are then walked once per path, as glob would (only cycles are cut).
    filter: Option<(glob::Pattern, glob::MatchOptions)>,
    out: &'a mut Vec<(PathBuf, FileId)>,
    note: &'a mut dyn FnMut(Note),
}

impl Walker<'_> {
    fn matches(&self, path: &Path) -> bool {
        self.filter
            .as_ref()
            .is_some_and(|(pattern, options)| pattern.matches_path_with(path, *options))
    }

    fn skipped(&mut self, path: &Path, why: &str) {
        (self.note)(Note::Warn(format!("skipped: {}: {why}", path.display())));
    }

    /// Walk folder `dir` (identity `id`); `keep`: keep its files whatever the filter says.
    fn walk(&mut self, dir: &Path, id: FileId, keep: bool) -> anyhow::Result<()> {
        let shown = |p: &Path| {
            if p.as_os_str().is_empty() {
                ".".to_string()
            } else {
                p.display().to_string()
            }
        };
        if let Some((_, outer)) = self.ancestors.iter().find(|(a, _)| *a == id) {
            let how = match std::fs::symlink_metadata(dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    format!("symbolic link to '{}'", link_target(dir))
                }
                _ => "folder".to_string(),
            };
            let why = format!(
                "{how} leads back to {}, which is being read (a cycle)",
                shown(outer)
            );
            self.skipped(dir, &why);
            return Ok(());
        }
        if self.filter.is_none() {
            if let Some(first) = self.seen.get(&id) {
                (self.note)(Note::Info(format!(
                    "skipped: {}: the same folder as {}, already read",
                    dir.display(),
                    first.display()
                )));
                return Ok(());
            }
            self.seen.insert(id.clone(), dir.to_path_buf());
        }
        let listing = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(listing)
            .map_err(|e| anyhow::anyhow!("{}: {e}", shown(dir)))?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| dir.join(e.file_name()))
            .collect();
        entries.sort();
        self.ancestors.push((id, dir.to_path_buf()));
        for path in entries {
            let wanted = keep || self.matches(&path);
            match inspect(&path) {
                Ok(Found::Dir(sub)) => self.walk(&path, sub, wanted)?,
                Ok(Found::File(file)) if wanted => self.out.push((path, file)),
                Ok(Found::File(_)) => {}
                Err(why) if wanted => self.skipped(&path, &why),
                Err(_) => {}
            }
        }
        self.ancestors.pop();
        Ok(())
    }
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

    /// [`discover_noting`] in a thread, failing the test instead of hanging if it runs for a
    /// minute (a symbolic link loop); its result and its notes.
    #[cfg(unix)]
    fn discover_bounded(paths: &[PathBuf]) -> (anyhow::Result<Vec<PathBuf>>, Vec<Note>) {
        let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut notes = Vec::new();
            let result = discover_noting(&paths, &mut |n| notes.push(n));
            let _ = tx.send((result, notes));
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("discover still running after 60 s: it loops")
    }

    #[cfg(unix)]
    fn warnings(notes: &[Note]) -> Vec<&str> {
        notes
            .iter()
            .filter_map(|n| match n {
                Note::Warn(m) => Some(m.as_str()),
                Note::Info(_) => None,
            })
            .collect()
    }

    #[cfg(unix)]
    fn relative(files: &[PathBuf], base: &Path) -> Vec<String> {
        files
            .iter()
            .map(|p| p.strip_prefix(base).unwrap().display().to_string())
            .collect()
    }

    #[cfg(unix)]
    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mkfifo {}", path.display());
    }

    #[cfg(unix)]
    #[test]
    fn walk_ends_with_two_links_to_the_folder_and_reads_each_file_once() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("a.txt"), "x").unwrap();
        std::fs::write(d.join("sub/b.txt"), "x").unwrap();
        symlink(".", d.join("l1")).unwrap();
        symlink(".", d.join("l2")).unwrap();
        symlink("..", d.join("sub/up")).unwrap();
        let (files, notes) = discover_bounded(&[d.to_path_buf()]);
        assert_eq!(relative(&files.unwrap(), d), ["a.txt", "sub/b.txt"]);
        let warned = warnings(&notes);
        assert_eq!(warned.len(), 3, "{notes:?}");
        let l1 = d.join("l1").display().to_string();
        assert!(
            warned[0].contains(&format!("{l1}: symbolic link to '.' leads back to"))
                && warned[0].contains("(a cycle)"),
            "{warned:?}"
        );
        assert!(
            warned[2].contains("sub/up: symbolic link to '..'"),
            "{warned:?}"
        );
        // Also through a glob: `*` matches the links, `**` would follow them for ever.
        for pattern in ["*", "**/*.txt", "l1/**"] {
            let (files, _) = discover_bounded(&[d.join(pattern)]);
            let files = files.unwrap();
            assert_eq!(files.len(), 2, "{pattern}: {files:?}");
        }
        let (files, _) = discover_bounded(&[d.join("**/*.txt")]);
        assert_eq!(relative(&files.unwrap(), d), ["a.txt", "sub/b.txt"]);
        let (files, _) = discover_bounded(&[d.join("s*/**/*.txt")]);
        assert_eq!(relative(&files.unwrap(), d), ["sub/b.txt"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_self_link_reads_each_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.txt"), "x").unwrap();
        std::fs::write(d.join("b.txt"), "x").unwrap();
        std::os::unix::fs::symlink(".", d.join("self")).unwrap();
        let (files, notes) = discover_bounded(&[d.to_path_buf()]);
        assert_eq!(relative(&files.unwrap(), d), ["a.txt", "b.txt"]);
        let warned = warnings(&notes);
        assert_eq!(warned.len(), 1, "{notes:?}");
        assert!(
            warned[0].contains("self: symbolic link to '.'"),
            "{warned:?}"
        );
        // Named through the link: the same files, once.
        let (files, _) = discover_bounded(&[d.join("self")]);
        assert_eq!(relative(&files.unwrap(), d), ["self/a.txt", "self/b.txt"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_file_or_folder_reached_by_several_paths_is_read_once() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let (d, outside) = (dir.path().join("in"), dir.path().join("outside"));
        std::fs::create_dir_all(outside.join("shared")).unwrap();
        std::fs::create_dir(&d).unwrap();
        std::fs::write(outside.join("e.txt"), "x").unwrap();
        std::fs::write(outside.join("shared/s.txt"), "x").unwrap();
        std::fs::write(d.join("a.txt"), "x").unwrap();
        symlink("../outside/e.txt", d.join("x1.txt")).unwrap();
        symlink(outside.join("e.txt"), d.join("x2.txt")).unwrap();
        symlink("../outside/shared", d.join("f1")).unwrap();
        symlink("../outside/shared", d.join("f2")).unwrap();
        let (files, notes) = discover_bounded(std::slice::from_ref(&d));
        // The first path in sorted order stands for the file.
        assert_eq!(
            relative(&files.unwrap(), &d),
            ["a.txt", "f1/s.txt", "x1.txt"]
        );
        assert!(warnings(&notes).is_empty(), "{notes:?}");
        assert!(
            notes.contains(&Note::Info(format!(
                "skipped: {}: the same folder as {}, already read",
                d.join("f2").display(),
                d.join("f1").display()
            ))),
            "{notes:?}"
        );
        // Named again, directly or through its folder: still once, where it first came.
        let (files, _) = discover_bounded(&[d.clone(), outside.join("e.txt"), outside.clone()]);
        assert_eq!(
            files.unwrap(),
            [d.join("a.txt"), d.join("f1/s.txt"), d.join("x1.txt")]
        );
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_skipped_in_folders_and_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.txt"), "x").unwrap();
        mkfifo(&d.join("pipe"));
        std::os::unix::fs::symlink("pipe", d.join("pipe-link")).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
        // Nothing may open the FIFO: that would block, and the bounded run fail.
        let (files, notes) = discover_bounded(&[d.to_path_buf()]);
        assert_eq!(relative(&files.unwrap(), d), ["a.txt"]);
        let warned = warnings(&notes);
        let pipe = d.join("pipe").display().to_string();
        assert_eq!(
            warned,
            [
                format!("skipped: {pipe}: is a FIFO (named pipe), not a regular file"),
                format!("skipped: {pipe}-link: is a FIFO (named pipe), not a regular file"),
                format!(
                    "skipped: {}: is a socket, not a regular file",
                    d.join("sock").display()
                ),
            ]
        );
        let (files, notes) = discover_bounded(&[d.join("*")]);
        assert_eq!(relative(&files.unwrap(), d), ["a.txt"]);
        assert_eq!(warnings(&notes).len(), 3, "{notes:?}");
        // Named on the command line: an error that says what it is.
        for (path, what) in [
            (d.join("pipe"), "is a FIFO (named pipe), not a regular file"),
            (
                d.join("pipe-link"),
                "is a FIFO (named pipe), not a regular file",
            ),
            (d.join("sock"), "is a socket, not a regular file"),
            (
                PathBuf::from("/dev/null"),
                "is a character device, not a regular file",
            ),
        ] {
            let err = discover_bounded(std::slice::from_ref(&path))
                .0
                .unwrap_err()
                .to_string();
            assert_eq!(err, format!("input {}: {what}", path.display()));
        }
        // A folder of nothing but a FIFO has no input.
        std::fs::remove_file(d.join("a.txt")).unwrap();
        let err = discover_bounded(&[d.to_path_buf()]).0.unwrap_err();
        assert!(err.to_string().contains("matches no files"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn broken_and_looping_links_are_named() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.txt"), "x").unwrap();
        symlink("nowhere.txt", d.join("dangling")).unwrap();
        symlink("loopy", d.join("loopy")).unwrap();
        let (files, notes) = discover_bounded(&[d.to_path_buf()]);
        assert_eq!(relative(&files.unwrap(), d), ["a.txt"]);
        let warned = warnings(&notes);
        assert_eq!(warned.len(), 2, "{notes:?}");
        assert_eq!(
            warned[0],
            format!(
                "skipped: {}: is a broken symbolic link (to 'nowhere.txt', which does not exist)",
                d.join("dangling").display()
            )
        );
        assert!(
            warned[1].contains("loopy: is a symbolic link to 'loopy' that cannot be followed"),
            "{warned:?}"
        );
        let err = discover_bounded(&[d.join("dangling")]).0.unwrap_err();
        assert!(
            err.to_string()
                .contains("dangling: is a broken symbolic link"),
            "{err}"
        );
    }
}
