//! Streaming reader of Wikipedia `pages-articles` XML dumps (MediaWiki export schema), plain or
//! bzip2-compressed (multistream dumps included).
//!
//! ```text
//! <mediawiki ...><siteinfo>...</siteinfo>
//!   <page><title>T</title><ns>0</ns><id>12</id><redirect title="..."/>?
//!     <revision>...<text xml:space="preserve">WIKITEXT</text></revision></page>
//!   ...
//! </mediawiki>
//! ```
//!
//! [`WikipediaReader`] yields one [`Document`] per article — namespace 0, neither a `<redirect>`
//! nor a text starting with `#REDIRECT` — with the raw wikitext (XML entities decoded, markup
//! still in: [`super::wikitext::clean`] runs later, in parallel) and the location
//! `page {id} '{title}'`. Memory is bounded by one page: the file is read through buffers and
//! nothing but the current page is kept.
//!
//! Errors are fatal for the file: malformed XML, a read error, a truncated or corrupt `.bz2`, or
//! the end of the file inside the document. The error's location is `byte offset N`: the offset
//! in the XML for plain files, in the compressed file for `.bz2` (as far as the decompressor had
//! read, so at most one buffer past the damage). Documents yielded before stay valid; after the
//! error the iterator ends.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_xml::events::{BytesRef, Event};
use quick_xml::Reader;

use super::{Counting, Document, InputError};

/// Whether the start of a file is a MediaWiki XML export (`<mediawiki` in its first KB).
pub fn is_wikipedia_xml(first_bytes: &[u8]) -> bool {
    let head = &first_bytes[..first_bytes.len().min(1024)];
    memchr::memmem::find(head, b"<mediawiki").is_some()
}

/// Byte offsets where a multistream `.bz2` dump can be cut into parts of at least `min_part`
/// bytes that [`WikipediaReader::open_range`] reads independently (in parallel): offsets of bz2
/// stream headers (`BZh[1-9]` + block magic) whose decompressed text starts with `<page`.
/// Wikipedia's `pages-articles-multistream` dumps hold 100 pages per stream; single-stream files
/// and streams cut inside a page (pbzip2) give no points, and the file is read whole. Reads only
/// around the candidate offsets, not the whole file.
pub fn split_points(path: &Path, min_part: u64) -> std::io::Result<Vec<u64>> {
    const MAGIC: &[u8] = b"1AY&SY"; // bz2 block header, right after "BZh" + level
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut points = Vec::new();
    let mut from = min_part.max(1);
    let mut buf = vec![0u8; 1 << 20];
    'parts: while from + min_part / 2 < len {
        // Scan forward from `from` for the next verified stream start.
        let mut at = from;
        loop {
            if at >= len {
                break 'parts;
            }
            file.seek(SeekFrom::Start(at))?;
            let n = read_full(&mut file, &mut buf)?;
            if n < 10 {
                break 'parts;
            }
            for i in memchr::memmem::find_iter(&buf[..n], MAGIC) {
                if i < 4 {
                    continue;
                }
                let head = &buf[i - 4..i];
                let offset = at + i as u64 - 4;
                if &head[..3] == b"BZh"
                    && (b'1'..=b'9').contains(&head[3])
                    && starts_with_page(path, offset)
                {
                    points.push(offset);
                    from = offset + min_part;
                    continue 'parts;
                }
            }
            // Overlap by the magic's length so a header across the chunk edge is found.
            at += (n as u64).saturating_sub(10).max(1);
        }
    }
    Ok(points)
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Whether the bz2 stream at `offset` decompresses to text starting with `<page`.
fn starts_with_page(path: &Path, offset: u64) -> bool {
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return false;
    }
    let mut decoder = bzip2::read::BzDecoder::new(BufReader::new(file));
    let mut head = [0u8; 256];
    let mut got = 0;
    while got < head.len() {
        match decoder.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let text = &head[..got];
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    text[start..].starts_with(b"<page")
}

/// Which element's text is being collected.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    None,
    Title,
    Ns,
    Id,
    Text,
}

/// The page being read.
#[derive(Default)]
struct Page {
    title: String,
    ns: String,
    id: String,
    text: String,
    redirect: bool,
}

/// Streams the articles of a Wikipedia XML dump; see the module documentation.
pub struct WikipediaReader {
    xml: Reader<BufReader<Box<dyn Read + Send>>>,
    file: Arc<PathBuf>,
    /// Bytes read from disk so far.
    disk_bytes: Arc<AtomicU64>,
    compressed: bool,
    buf: Vec<u8>,
    /// Element nesting depth (0 outside the root).
    depth: usize,
    /// Depth of the open `<page>` element, if any.
    page_depth: Option<usize>,
    field: Field,
    page: Page,
    seen_root: bool,
    done: bool,
}

impl WikipediaReader {
    /// Opens a dump, plain XML or bzip2 (recognised by its `BZh` magic). `counter`, when given,
    /// receives the bytes read from disk (for progress reporting).
    pub fn open(path: &Path, counter: Option<Arc<AtomicU64>>) -> Result<Self, InputError> {
        Self::open_range(path, counter, None)
    }

    /// Like [`WikipediaReader::open`], for the bytes `start..end` of a multistream `.bz2` dump
    /// cut at stream starts found by [`split_points`]: such a part holds whole `<page>`s, and is
    /// read as if it were wrapped in its own `<mediawiki>` root. Error offsets stay offsets in
    /// the whole file.
    pub fn open_range(
        path: &Path,
        counter: Option<Arc<AtomicU64>>,
        range: Option<(u64, u64)>,
    ) -> Result<Self, InputError> {
        let mut file =
            File::open(path).map_err(|e| InputError::new(path, "", format!("cannot open: {e}")))?;
        let mut magic = [0u8; 3];
        let got = read_full(&mut file, &mut magic)
            .map_err(|e| InputError::new(path, "", format!("cannot read: {e}")))?;
        let compressed = got == 3 && &magic == b"BZh";
        let (start, end) = range.unwrap_or((0, u64::MAX));
        if range.is_some() && !compressed {
            return Err(InputError::new(
                path,
                "",
                "only .bz2 dumps can be read in parts",
            ));
        }
        file.seek(SeekFrom::Start(start))
            .map_err(|e| InputError::new(path, "", format!("cannot read: {e}")))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        let disk_bytes = Arc::new(AtomicU64::new(start));
        // Bytes read from disk: our own count (for error offsets) and the caller's (progress,
        // possibly shared by several readers).
        let counted = Counting {
            inner: Counting {
                inner: file.take(end - start),
                counter: disk_bytes.clone(),
            },
            counter: counter.unwrap_or_default(),
        };
        let source: Box<dyn Read + Send> = if compressed {
            let pages = bzip2::read::MultiBzDecoder::new(counted);
            // A part after the first has no root start tag, one before the last no end tag.
            let open: &[u8] = if start > 0 { b"<mediawiki>" } else { b"" };
            let close: &[u8] = if end < len { b"</mediawiki>" } else { b"" };
            Box::new(open.chain(pages).chain(close))
        } else {
            Box::new(counted)
        };
        let mut xml = Reader::from_reader(BufReader::with_capacity(1 << 16, source));
        xml.config_mut().trim_text(false);
        Ok(WikipediaReader {
            xml,
            file: Arc::new(path.to_path_buf()),
            disk_bytes,
            compressed,
            buf: Vec::with_capacity(1 << 16),
            depth: 0,
            page_depth: None,
            field: Field::None,
            page: Page::default(),
            seen_root: false,
            done: false,
        })
    }

    /// A fatal error at the current position; the iterator ends after it.
    fn fail(&mut self, xml_offset: u64, message: String) -> InputError {
        self.done = true;
        let (offset, message) = if self.compressed {
            let disk = self.disk_bytes.load(Ordering::Relaxed);
            (
                disk,
                format!("{message} (at byte {xml_offset} of the decompressed XML)"),
            )
        } else {
            (xml_offset, message)
        };
        InputError::new(
            self.file.as_path(),
            format!("byte offset {offset}"),
            message,
        )
    }

    fn xml_error(&mut self, e: quick_xml::Error) -> InputError {
        match e {
            quick_xml::Error::Io(io) => {
                let at = self.xml.buffer_position();
                let message = if self.compressed {
                    format!("truncated or corrupt bz2 stream: {io}")
                } else {
                    format!("read error: {io}")
                };
                self.fail(at, message)
            }
            other => {
                let at = self.xml.error_position();
                self.fail(at, format!("malformed XML: {other}"))
            }
        }
    }

    fn append(&mut self, text: &str) {
        match self.field {
            Field::Title => self.page.title.push_str(text),
            Field::Ns => self.page.ns.push_str(text),
            Field::Id => self.page.id.push_str(text),
            Field::Text => self.page.text.push_str(text),
            Field::None => {}
        }
    }

    fn append_ref(&mut self, r: &BytesRef<'_>) -> Result<(), String> {
        if self.field == Field::None {
            return Ok(());
        }
        match r.resolve_char_ref() {
            Ok(Some(c)) => {
                let mut tmp = [0u8; 4];
                self.append(c.encode_utf8(&mut tmp));
            }
            Ok(None) => match quick_xml::escape::resolve_predefined_entity(r) {
                Some(text) => self.append(text),
                None => return Err(format!("unknown entity &{};", &**r)),
            },
            Err(e) => return Err(format!("bad character reference &{};: {e}", &**r)),
        }
        Ok(())
    }

    /// The finished page as a document, if it is an article.
    fn take_article(&mut self) -> Option<Document> {
        let page = std::mem::take(&mut self.page);
        let ns = page.ns.trim();
        let is_redirect = page.redirect
            || page
                .text
                .trim_start()
                .get(..9)
                .is_some_and(|s| s.eq_ignore_ascii_case("#redirect"));
        if !(ns.is_empty() || ns == "0") || is_redirect {
            return None;
        }
        Some(Document {
            location: format!("page {} '{}'", page.id.trim(), page.title.trim()),
            text: page.text,
            file: self.file.clone(),
            wikitext: true,
        })
    }
}

impl WikipediaReader {
    /// The root element must be `<mediawiki>`.
    fn root(&mut self, name: &str) -> Option<Result<Document, InputError>> {
        if name == "mediawiki" {
            self.seen_root = true;
            return None;
        }
        let at = self.xml.buffer_position();

        Some(Err(self.fail(
            at,
            format!("not a MediaWiki dump: root element <{name}>"),
        )))
    }

    /// Takes one XML event into account; returns what the iterator yields, if anything.
    fn handle(&mut self, event: Event<'_>) -> Option<Result<Document, InputError>> {
        match event {
            Event::Start(e) if self.depth == 0 => {
                self.depth = 1;
                return self.root(e.local_name().as_ref());
            }
            // `<mediawiki/>`: an empty dump.
            Event::Empty(e) if self.depth == 0 => return self.root(e.local_name().as_ref()),
            Event::Start(e) => {
                let name = e.local_name();
                let name = name.as_ref();
                match self.page_depth {
                    None if name == "page" => {
                        self.page_depth = Some(self.depth);
                        self.page = Page::default();
                    }
                    Some(d) if self.depth == d + 1 => {
                        self.field = match name {
                            "title" => Field::Title,
                            "ns" => Field::Ns,
                            "id" => Field::Id,
                            _ => Field::None,
                        };
                        if name == "redirect" {
                            self.page.redirect = true;
                        }
                    }
                    Some(d) if self.depth == d + 2 && name == "text" => self.field = Field::Text,
                    _ => {}
                }
                self.depth += 1;
            }
            Event::Empty(e) => {
                let at_page_level = self.page_depth.is_some_and(|d| self.depth == d + 1);
                if at_page_level && e.local_name().as_ref() == "redirect" {
                    self.page.redirect = true;
                }
            }
            Event::End(_) => {
                self.depth = self.depth.saturating_sub(1);
                self.field = Field::None;
                if self.page_depth == Some(self.depth) {
                    self.page_depth = None;
                    return self.take_article().map(Ok);
                }
            }
            Event::Text(t) => self.append(&t.xml10_content()),
            Event::CData(t) => self.append(&t.xml10_content()),
            Event::GeneralRef(r) => {
                if let Err(message) = self.append_ref(&r) {
                    let at = self.xml.buffer_position();
                    return Some(Err(self.fail(at, format!("malformed XML: {message}"))));
                }
            }
            Event::Eof => {
                self.done = true;
                if !self.seen_root || self.depth > 0 {
                    let at = self.xml.buffer_position();
                    let what = if !self.seen_root {
                        "no <mediawiki> element: not a Wikipedia XML dump"
                    } else if self.page_depth.is_some() {
                        "unexpected end of file inside a <page> (truncated file?)"
                    } else {
                        "unexpected end of file before </mediawiki> (truncated file?)"
                    };
                    return Some(Err(self.fail(at, what.to_string())));
                }
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
        None
    }
}

impl Iterator for WikipediaReader {
    type Item = Result<Document, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        // The event borrows the buffer, which is lent out of `self` meanwhile.
        let mut buf = std::mem::take(&mut self.buf);
        let mut item = None;
        while !self.done && item.is_none() {
            buf.clear();
            item = match self.xml.read_event_into(&mut buf) {
                Ok(event) => self.handle(event),
                Err(e) => Some(Err(self.xml_error(e))),
            };
        }
        self.buf = buf;
        item
    }
}
