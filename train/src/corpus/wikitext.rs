//! MediaWiki markup to plain prose: [`clean`] turns the wikitext of one article into paragraphs of
//! text, one per line, the way WikiExtractor-style cleaners do.
//!
//! Dropped entirely: templates `{{...}}` (nested, multi-line), parser functions and parameters
//! `{{{...}}}`, tables `{| ... |}`, `[[File:]]`/`[[Image:]]`/`[[Media:]]`/`[[Category:]]` and
//! interlanguage links (captions included), `<ref>` citations, comments, the content of `<math>`,
//! `<gallery>`, `<timeline>`, `<score>`, `<syntaxhighlight>`, `<source>` and similar extension tags,
//! headings, magic words (`__TOC__`), horizontal rules, and the non-prose trailing sections ("See
//! also", "References", "External links", "Further reading", "Notes", ... from their level-2
//! heading to the next level-2 heading). Kept as text: internal links (`[[target|text]]` → `text`,
//! `[[target]]s` → `targets`), external link labels (`[http://x label]` → `label`), the inside of
//! other HTML tags, `<nowiki>`/`<pre>` content (literally), list items without their markers.
//! Bold/italic quotes are removed, HTML entities decoded, runs of whitespace collapsed, and lines
//! with no letter or digit dropped.
//!
//! The cleaner works in three linear passes, none of which backtracks:
//! 1. tags: comments, `<ref>` and other tags (searches for closing tags are memoised, so many
//!    unclosed tags cost no more than one scan);
//! 2. structure: one left-to-right scan with a stack of open templates, tables and links; a
//!    construct's output is dropped or rewritten when it closes. Unbalanced markup follows
//!    MediaWiki where that is bounded: an unclosed `{{` keeps its text; an unclosed `[[` or external
//!    link ends at the end of its line (a `[[File:` at a blank line); a closer that does not match
//!    the innermost open construct closes the nearest one of its kind;
//! 3. lines: whitespace, entities already decoded, and a final filter that guarantees the output
//!    never contains `{{`, `}}`, `[[`, `]]`, `{|`, `|}`, `<!--` or `<ref`, whatever the input.
//!
//! Limitations: templates are never expanded, so inline ones that carry text (`{{convert|5|km}}`,
//! `{{lang|fr|...}}`) leave gaps; characters U+E000..U+E010 (private use) in the input are taken
//! as ASCII punctuation (they protect `<nowiki>` content between passes).

use memchr::{memchr, memchr2, memmem};

/// Turns the wikitext of one article into clean prose, one paragraph per line (no empty lines).
pub fn clean(src: &str) -> String {
    let tagless = strip_tags(src);
    let text = strip_structure(&tagless);
    finish_lines(&text)
}

// ---------------------------------------------------------------------------------------------
// Pass 1: comments and tags.

/// What happens to a known tag and its content.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TagKind {
    /// Drop the tag and everything up to its closing tag.
    DropContent,
    /// Drop the tag, keep the content literally (no markup inside).
    Verbatim,
    /// Drop the tag, keep the content; becomes a space.
    Break,
    /// Drop the tag, keep the content.
    Plain,
}

const DROP_CONTENT_TAGS: &[&str] = &[
    "ref",
    "references",
    "math",
    "chem",
    "ce",
    "gallery",
    "timeline",
    "score",
    "syntaxhighlight",
    "source",
    "imagemap",
    "hiero",
    "graph",
    "templatedata",
    "templatestyles",
    "mapframe",
    "maplink",
    "inputbox",
    "categorytree",
    "includeonly",
    "indicator",
    "charinsert",
];

const VERBATIM_TAGS: &[&str] = &["nowiki", "pre"];

const PLAIN_TAGS: &[&str] = &[
    "abbr",
    "b",
    "bdi",
    "bdo",
    "big",
    "blockquote",
    "caption",
    "center",
    "cite",
    "code",
    "data",
    "dd",
    "del",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "font",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "ins",
    "kbd",
    "li",
    "mark",
    "noinclude",
    "ol",
    "onlyinclude",
    "p",
    "poem",
    "q",
    "rb",
    "rp",
    "rt",
    "ruby",
    "s",
    "samp",
    "section",
    "small",
    "span",
    "strike",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "time",
    "tr",
    "tt",
    "u",
    "ul",
    "var",
    "wbr",
];

fn tag_kind(name: &[u8]) -> Option<(&'static str, TagKind)> {
    let find = |list: &[&'static str]| list.iter().copied().find(|t| t.as_bytes() == name);
    if name == b"br" {
        return Some(("br", TagKind::Break));
    }
    if let Some(t) = find(DROP_CONTENT_TAGS) {
        return Some((t, TagKind::DropContent));
    }
    if let Some(t) = find(VERBATIM_TAGS) {
        return Some((t, TagKind::Verbatim));
    }
    find(PLAIN_TAGS).map(|t| (t, TagKind::Plain))
}

/// A tag found at some `<`.
struct Tag {
    name: &'static str,
    kind: TagKind,
    closing: bool,
    self_closing: bool,
    /// Byte offset just after the `>`.
    end: usize,
}

/// Longest tag (with attributes) that is recognised.
const MAX_TAG_LEN: usize = 2048;

/// Parses a known tag at `lower[lt] == b'<'` (`lower` is the ASCII-lowercased text).
fn parse_tag(lower: &[u8], lt: usize) -> Option<Tag> {
    let mut p = lt + 1;
    let closing = lower.get(p) == Some(&b'/');
    if closing {
        p += 1;
    }
    let name_start = p;
    while p < lower.len() && lower[p].is_ascii_alphanumeric() {
        p += 1;
    }
    let (name, kind) = tag_kind(&lower[name_start..p])?;
    match lower.get(p) {
        Some(b'>' | b'/') => {}
        Some(c) if c.is_ascii_whitespace() => {}
        _ => return None,
    }
    // The closing `>`, before any other `<` (so scans from different `<` never overlap).
    let limit = lower.len().min(lt + MAX_TAG_LEN);
    let gt = p + lower[p..limit]
        .iter()
        .position(|&c| c == b'>' || c == b'<')?;
    if lower[gt] != b'>' {
        return None;
    }
    Some(Tag {
        name,
        kind,
        closing,
        self_closing: lower[gt - 1] == b'/',
        end: gt + 1,
    })
}

/// Memoised "next occurrence at or after `pos`" of one needle. Queries come with non-decreasing
/// positions, so each byte of the text is scanned at most once per needle.
struct NextMatch {
    needle: Vec<u8>,
    /// Only count matches followed by a tag-name boundary (whitespace, `>`, `/`).
    tag_boundary: bool,
    /// The last search: from where, and what it found.
    cached: Option<(usize, Option<usize>)>,
}

impl NextMatch {
    fn find(&mut self, hay: &[u8], pos: usize) -> Option<usize> {
        if let Some((from, found)) = self.cached {
            if pos >= from && found.is_none_or(|f| f >= pos) {
                return found;
            }
        }
        let mut p = pos;
        let found = loop {
            if p > hay.len() {
                break None;
            }
            let Some(i) = memmem::find(&hay[p..], &self.needle) else {
                break None;
            };
            let at = p + i;
            let after = hay.get(at + self.needle.len()).copied();
            let ok = !self.tag_boundary
                || matches!(after, None | Some(b'>' | b'/'))
                || after.is_some_and(|c| c.is_ascii_whitespace());
            if ok {
                break Some(at);
            }
            p = at + 1;
        };
        self.cached = Some((pos, found));
        found
    }
}

/// The memoised searches of one pass, by needle.
#[derive(Default)]
struct Searches(Vec<NextMatch>);

impl Searches {
    fn find(&mut self, hay: &[u8], needle: &str, tag_boundary: bool, pos: usize) -> Option<usize> {
        let idx = match self
            .0
            .iter()
            .position(|m| m.needle == needle.as_bytes() && m.tag_boundary == tag_boundary)
        {
            Some(i) => i,
            None => {
                self.0.push(NextMatch {
                    needle: needle.as_bytes().to_vec(),
                    tag_boundary,
                    cached: None,
                });
                self.0.len() - 1
            }
        };
        self.0[idx].find(hay, pos)
    }
}

/// Offset of the end of the line containing `pos` (the `\n` itself is kept).
fn end_of_line(bytes: &[u8], pos: usize) -> usize {
    memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i)
}

/// Characters that mean something to pass 2, and the private-use stand-ins that protect them in
/// `<nowiki>` content until the last pass.
const PROTECTED: &[u8] = b"{}[]|'&_=*#:;-<>!";
const PROTECT_BASE: u32 = 0xE000;

fn push_protected(out: &mut String, text: &str) {
    for c in text.chars() {
        match PROTECTED.iter().position(|&p| p as char == c) {
            Some(i) => out.push(char::from_u32(PROTECT_BASE + i as u32).unwrap_or(c)),
            None => out.push(c),
        }
    }
}

fn unprotect(c: char) -> char {
    let code = c as u32;
    if (PROTECT_BASE..PROTECT_BASE + PROTECTED.len() as u32).contains(&code) {
        PROTECTED[(code - PROTECT_BASE) as usize] as char
    } else {
        c
    }
}

/// Pass 1: removes comments, `<ref>`s and drop-content tags with their content, protects
/// `<nowiki>`/`<pre>` content, and removes the other known tags (keeping what they enclose).
fn strip_tags(src: &str) -> String {
    let bytes = src.as_bytes();
    let lower = bytes.to_ascii_lowercase();
    let mut out = String::with_capacity(src.len());
    let mut searches = Searches::default();
    let mut pos = 0;
    while let Some(i) = memchr(b'<', &bytes[pos..]) {
        let lt = pos + i;
        out.push_str(&src[pos..lt]);
        if lower[lt..].starts_with(b"<!--") {
            // An unclosed comment hides the rest of its line only.
            pos = match searches.find(&lower, "-->", false, lt + 4) {
                Some(e) => e + 3,
                None => end_of_line(bytes, lt),
            };
            continue;
        }
        let Some(tag) = parse_tag(&lower, lt) else {
            out.push('<');
            pos = lt + 1;
            continue;
        };
        pos = tag.end;
        if tag.closing || tag.self_closing {
            if tag.kind == TagKind::Break {
                out.push(' ');
            }
            continue;
        }
        match tag.kind {
            TagKind::Plain => {}
            TagKind::Break => out.push(' '),
            TagKind::DropContent | TagKind::Verbatim => {
                let close = searches.find(&lower, &format!("</{}", tag.name), true, tag.end);
                let reopen = searches.find(&lower, &format!("<{}", tag.name), true, tag.end);
                match close {
                    // Closed before the same tag opens again.
                    Some(c) if reopen.is_none_or(|r| r > c) => {
                        if tag.kind == TagKind::Verbatim {
                            push_protected(&mut out, &src[tag.end..c]);
                        }
                        // Past the closing tag's `>` (if it is near; else past its name).
                        let name_end = c + 2 + tag.name.len();
                        let window = &bytes[name_end..bytes.len().min(name_end + MAX_TAG_LEN)];
                        pos = match memchr2(b'>', b'<', window) {
                            Some(g) if window[g] == b'>' => name_end + g + 1,
                            _ => name_end,
                        };
                    }
                    // Unclosed: a dropped tag takes the rest of its line, a verbatim one nothing.
                    _ => {
                        if tag.kind == TagKind::DropContent {
                            pos = end_of_line(bytes, tag.end);
                        }
                    }
                }
            }
        }
    }
    out.push_str(&src[pos..]);
    out
}

// ---------------------------------------------------------------------------------------------
// Pass 2: templates, tables, links, line markup.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Open {
    /// `{{` (width 2) or `{{{` (width 3).
    Template(usize),
    Table,
    /// `[[...]]`; `drop`: a file, category or interlanguage link, dropped whole.
    Link {
        drop: bool,
    },
    /// `[http://... label]`.
    ExtLink,
}

/// Deepest nesting followed; deeper openers are taken as text (bounds the cost of rewriting).
const MAX_DEPTH: usize = 64;

/// Level-2 sections that are not prose.
const NON_PROSE_SECTIONS: &[&str] = &[
    "see also",
    "references",
    "external links",
    "further reading",
    "notes",
    "bibliography",
    "sources",
    "citations",
    "footnotes",
    "notes and references",
    "references and notes",
    "notes and sources",
    "works cited",
    "general references",
    "general bibliography",
    "selected bibliography",
    "explanatory notes",
    "gallery",
    "external link",
    "reference",
    "related articles",
];

const URL_SCHEMES: &[&str] = &[
    "http://",
    "https://",
    "ftp://",
    "ftps://",
    "sftp://",
    "//",
    "mailto:",
    "news:",
    "irc://",
    "ircs://",
    "gopher://",
    "git://",
    "svn://",
    "telnet://",
    "nntp://",
    "urn:",
    "ssh://",
];

/// Bytes that pass 2 looks at (everything else is copied in runs).
const fn special_bytes() -> [bool; 256] {
    let mut t = [false; 256];
    let list = b"\n{}[]'&_";
    let mut i = 0;
    while i < list.len() {
        t[list[i] as usize] = true;
        i += 1;
    }
    t
}
static SPECIAL: [bool; 256] = special_bytes();

struct Structure<'a> {
    s: &'a str,
    b: &'a [u8],
    out: String,
    stack: Vec<(Open, usize)>,
    /// Output offset where a dropped (non-prose) section began.
    skip_from: Option<usize>,
    /// The line that just ended was a line of paragraph text (consecutive ones are joined).
    prev_paragraph: bool,
}

fn strip_structure(s: &str) -> String {
    let mut st = Structure {
        s,
        b: s.as_bytes(),
        out: String::with_capacity(s.len()),
        stack: Vec::new(),
        skip_from: None,
        prev_paragraph: false,
    };
    st.run();
    st.out
}

impl Structure<'_> {
    fn run(&mut self) {
        let b = self.b;
        let mut i = 0;
        let mut line_start = true;
        while i < b.len() {
            if line_start {
                line_start = false;
                i = self.line_start(i);
                continue;
            }
            let c = b[i];
            let next = b.get(i + 1).copied();
            i = match c {
                b'\n' => {
                    self.newline(i > 0 && b[i - 1] == b'\n');
                    line_start = true;
                    i + 1
                }
                b'{' if next == Some(b'{') => self.open_templates(i),
                b'}' if next == Some(b'}') => self.close_templates(i),
                b'[' if next == Some(b'[') => self.open_link(i),
                b'[' => self.open_ext_link(i),
                b']' => self.close_bracket(i),
                b'\'' if next == Some(b'\'') => self.quotes(i),
                b'&' => self.entity(i),
                b'_' if next == Some(b'_') => self.magic_word(i),
                _ => {
                    let mut j = i + 1;
                    while j < b.len() && !SPECIAL[b[j] as usize] {
                        j += 1;
                    }
                    self.out.push_str(&self.s[i..j]);
                    j
                }
            };
        }
        while let Some(top) = self.stack.pop() {
            self.resolve(top, false);
        }
        if let Some(from) = self.skip_from.take() {
            self.out.truncate(from);
        }
    }

    /// Handles what only counts at the start of a line; returns where to go on.
    fn line_start(&mut self, i: usize) -> usize {
        // A paragraph may be written on several lines: they make one line of output.
        let paragraph = self.is_paragraph_line(i);
        if paragraph && self.prev_paragraph && self.out.ends_with('\n') {
            self.out.pop();
            self.out.push(' ');
        }
        self.prev_paragraph = paragraph;
        let b = self.b;
        let eol = end_of_line(b, i);
        if b[i] == b'=' && self.heading(i, eol) {
            return eol;
        }
        let mut j = i;
        while j < eol && matches!(b[j], b' ' | b'\t') {
            j += 1;
        }
        if b[j..].starts_with(b"|}") {
            let table = self.stack.iter().rposition(|(o, _)| *o == Open::Table);
            let top_is_table = self.stack.last().is_some_and(|(o, _)| *o == Open::Table);
            if let Some(t) = table {
                if top_is_table || b.get(j + 2) != Some(&b'}') {
                    self.close_at(t);
                    return j + 2;
                }
            }
        }
        if b[j..].starts_with(b"----") {
            while j < eol && b[j] == b'-' {
                j += 1;
            }
            return j;
        }
        // List and indent markers, then maybe a table.
        let mut k = i;
        while k < eol && matches!(b[k], b'*' | b'#' | b':' | b';') {
            k += 1;
        }
        let mut t = k;
        while t < eol && matches!(b[t], b' ' | b'\t') {
            t += 1;
        }
        if b[t..].starts_with(b"{|") && self.stack.len() < MAX_DEPTH {
            self.stack.push((Open::Table, self.out.len()));
            return t + 2;
        }
        k
    }

    /// Whether the line at `i` is text of a paragraph (not a list item, table, heading, rule,
    /// preformatted line, block template or file).
    fn is_paragraph_line(&self, i: usize) -> bool {
        let b = self.b;
        if matches!(
            b[i],
            b'\n' | b'*' | b'#' | b':' | b';' | b' ' | b'\t' | b'{' | b'}' | b'|' | b'!' | b'='
        ) {
            return false;
        }
        if b[i..].starts_with(b"[[") {
            return !self.link_is_hidden(i + 2);
        }
        !b[i..].starts_with(b"----")
    }

    /// A heading line `== Title ==` is dropped; a level-1/2 heading outside any construct ends a
    /// dropped section and may start one. Returns whether the line is a heading.
    fn heading(&mut self, i: usize, eol: usize) -> bool {
        let line = self.s[i..eol].trim_end();
        let lead = line.bytes().take_while(|&c| c == b'=').count();
        let trail = line.bytes().rev().take_while(|&c| c == b'=').count();
        if !line.ends_with('=') {
            return false;
        }
        if !self.stack.is_empty() {
            return true;
        }
        let level = lead.min(trail);
        let title = if lead + trail < line.len() {
            line[lead..line.len() - trail].trim()
        } else {
            ""
        };
        if level <= 2 {
            if let Some(from) = self.skip_from.take() {
                self.out.truncate(from);
            }
            let title = title.trim_end_matches(':').trim().to_lowercase();
            if NON_PROSE_SECTIONS.contains(&title.as_str()) {
                self.skip_from = Some(self.out.len());
            }
        }
        true
    }

    /// End of line: open links end here (file links only at a blank line).
    fn newline(&mut self, blank: bool) {
        while let Some(&(open, start)) = self.stack.last() {
            match open {
                Open::ExtLink | Open::Link { drop: false } => {}
                Open::Link { drop: true } if blank => {}
                _ => break,
            }
            self.stack.pop();
            self.resolve((open, start), false);
        }
        self.out.push('\n');
    }

    fn open_templates(&mut self, i: usize) -> usize {
        let n = self.b[i..].iter().take_while(|&&c| c == b'{').count();
        let mut left = n;
        while left >= 2 {
            let w = if left == 3 { 3 } else { 2 };
            if self.stack.len() < MAX_DEPTH {
                self.stack.push((Open::Template(w), self.out.len()));
            }
            left -= w;
        }
        i + n
    }

    fn close_templates(&mut self, i: usize) -> usize {
        let n = self.b[i..].iter().take_while(|&&c| c == b'}').count();
        let mut left = n;
        while left >= 2 {
            let Some(idx) = self
                .stack
                .iter()
                .rposition(|(o, _)| matches!(o, Open::Template(_)))
            else {
                break;
            };
            let Open::Template(w) = self.stack[idx].0 else {
                break;
            };
            left -= w.min(left);
            self.close_at(idx);
        }
        for _ in 0..left {
            self.out.push('}');
        }
        i + n
    }

    fn open_link(&mut self, i: usize) -> usize {
        if self.stack.len() >= MAX_DEPTH {
            self.out.push_str("[[");
            return i + 2;
        }
        let drop = self.link_is_hidden(i + 2);
        self.stack.push((Open::Link { drop }, self.out.len()));
        i + 2
    }

    /// Whether the link whose target starts at `start` is not shown (file, category,
    /// interlanguage); its namespace prefix is looked for in a bounded window.
    fn link_is_hidden(&self, start: usize) -> bool {
        let b = self.b;
        let window = &b[start..b.len().min(start + 64)];
        let colon = window
            .iter()
            .position(|c| matches!(c, b':' | b'|' | b']' | b'[' | b'{' | b'}' | b'\n'))
            .filter(|&p| window[p] == b':');
        // Both ends are ASCII bytes, so this slice is on character boundaries.
        let prefix = colon.map_or("", |p| self.s[start..start + p].trim());
        !prefix.is_empty() && is_hidden_prefix(prefix)
    }

    fn open_ext_link(&mut self, i: usize) -> usize {
        let b = self.b;
        let rest = &b[i + 1..];
        let is_url = URL_SCHEMES.iter().any(|scheme| {
            rest.len() >= scheme.len()
                && rest[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
        });
        if !is_url || self.stack.len() >= MAX_DEPTH {
            self.out.push('[');
            return i + 1;
        }
        self.stack.push((Open::ExtLink, self.out.len()));
        let mut j = i + 1;
        while j < b.len() && !matches!(b[j], b' ' | b'\t' | b']' | b'\n') {
            j += 1;
        }
        if matches!(b.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        j
    }

    fn close_bracket(&mut self, i: usize) -> usize {
        if self.stack.last().is_some_and(|(o, _)| *o == Open::ExtLink) {
            self.close_at(self.stack.len() - 1);
            return i + 1;
        }
        if self.b.get(i + 1) == Some(&b']') {
            if let Some(idx) = self
                .stack
                .iter()
                .rposition(|(o, _)| matches!(o, Open::Link { .. }))
            {
                self.close_at(idx);
                return i + 2;
            }
        }
        self.out.push(']');
        i + 1
    }

    /// `''` italic, `'''` bold, `'''''` both: removed; extra apostrophes stay.
    fn quotes(&mut self, i: usize) -> usize {
        let n = self.b[i..].iter().take_while(|&&c| c == b'\'').count();
        let keep = match n {
            2 | 3 | 5 => 0,
            4 => 1,
            _ => n - 5,
        };
        for _ in 0..keep {
            self.out.push('\'');
        }
        i + n
    }

    fn entity(&mut self, i: usize) -> usize {
        match decode_entity(&self.b[i..]) {
            Some((text, len)) => {
                match text {
                    EntityText::Char(c) => self.out.push(c),
                    EntityText::Str(t) => self.out.push_str(t),
                }
                i + len
            }
            None => {
                self.out.push('&');
                i + 1
            }
        }
    }

    /// `__TOC__`, `__NOTOC__` and other behaviour switches are dropped.
    fn magic_word(&mut self, i: usize) -> usize {
        let b = self.b;
        let name = b[i + 2..]
            .iter()
            .take(32)
            .take_while(|c| c.is_ascii_uppercase())
            .count();
        let end = i + 2 + name;
        if name > 0 && b[end..].starts_with(b"__") {
            return end + 2;
        }
        self.out.push('_');
        i + 1
    }

    /// Closes the construct at `idx` properly; those opened inside it are left unclosed.
    fn close_at(&mut self, idx: usize) {
        while self.stack.len() > idx + 1 {
            if let Some(top) = self.stack.pop() {
                self.resolve(top, false);
            }
        }
        if let Some(top) = self.stack.pop() {
            self.resolve(top, true);
        }
    }

    /// Rewrites the output of a construct that ends, properly `closed` or not.
    fn resolve(&mut self, (open, start): (Open, usize), closed: bool) {
        match open {
            // An unclosed template or plain link shows its text (as MediaWiki does).
            Open::Template(_) | Open::Link { drop: false } | Open::ExtLink if !closed => {}
            Open::Template(_) | Open::Table | Open::Link { drop: true } => self.out.truncate(start),
            Open::ExtLink => {}
            Open::Link { drop: false } => {
                let text = link_text(self.out.get(start..).unwrap_or(""));
                self.out.truncate(start);
                self.out.push_str(&text);
            }
        }
    }
}

/// Whether `[[prefix:...]]` is not shown in the text: files, categories, interlanguage links.
fn is_hidden_prefix(prefix: &str) -> bool {
    let lower = prefix.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "file" | "image" | "media" | "category" | "simple"
    ) {
        return true;
    }
    // Language codes: "de", "nds", "zh-min-nan", "be-x-old".
    let parts_ok = prefix
        .split('-')
        .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_lowercase()));
    parts_ok && (prefix.len() <= 3 && prefix.len() >= 2 || prefix.contains('-'))
}

/// The shown text of an internal link from its (already cleaned) inside `target|text`.
fn link_text(inner: &str) -> String {
    match inner.split_once('|') {
        Some((_, text)) if !text.trim().is_empty() => text.to_string(),
        // Pipe trick: `[[Paris (France)|]]` shows "Paris".
        Some((target, _)) => {
            let t = target.trim().trim_start_matches(':');
            let t = t.split_once(':').map_or(t, |(_, rest)| rest);
            let t = match t.find(" (") {
                Some(p) if t.ends_with(')') => &t[..p],
                _ => t,
            };
            t.trim().to_string()
        }
        None => inner.trim_start().trim_start_matches(':').to_string(),
    }
}

/// Decodes an HTML entity at the start of `b` (which starts with `&`): the text and its length.
fn decode_entity(b: &[u8]) -> Option<(EntityText, usize)> {
    let semi = b.iter().take(12).position(|&c| c == b';')?;
    let body = std::str::from_utf8(&b[1..semi]).ok()?;
    let text = if let Some(num) = body.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        match char::from_u32(code)? {
            c if c.is_control() && !c.is_whitespace() => EntityText::Str(""),
            c => EntityText::Char(c),
        }
    } else {
        named_entity(body)?
    };
    Some((text, semi + 1))
}

/// A decoded entity.
enum EntityText {
    Char(char),
    Str(&'static str),
}

/// Latin-1 entities, U+00A0 to U+00FF in order.
const LATIN1: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf",
    "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro",
    "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest",
    "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute",
    "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute",
    "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute",
    "THORN", "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil",
    "egrave", "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde",
    "ograve", "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml",
];

/// Greek letter entities from U+0391 (capitals) and U+03B1 (small): "" where there is none.
const GREEK: [&str; 25] = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigmaf", "sigma", "tau", "upsilon", "phi",
    "chi", "psi", "omega",
];

fn named_entity(name: &str) -> Option<EntityText> {
    let from = |base: u32, i: usize| char::from_u32(base + i as u32).map(EntityText::Char);
    if let Some(i) = LATIN1.iter().position(|&e| e == name) {
        // Non-breaking and soft hyphen become a space and nothing.
        return match name {
            "nbsp" => Some(EntityText::Str(" ")),
            "shy" => Some(EntityText::Str("")),
            _ => from(0xA0, i),
        };
    }
    if let Some(i) = GREEK.iter().position(|&e| e == name) {
        return from(0x3B1, i);
    }
    if name != "Sigmaf" {
        let mut chars = name.chars();
        if let Some(first) = chars.next().filter(char::is_ascii_uppercase) {
            let lower = format!("{}{}", first.to_ascii_lowercase(), chars.as_str());
            if let Some(i) = GREEK.iter().position(|&e| e == lower) {
                return from(0x391, i);
            }
        }
    }
    let c = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "ensp" | "emsp" | "thinsp" | "hairsp" => ' ',
        "zwj" | "zwnj" | "lrm" | "rlm" => return Some(EntityText::Str("")),
        "ndash" => '\u{2013}',
        "mdash" => '\u{2014}',
        "minus" => '\u{2212}',
        "hellip" => '\u{2026}',
        "bull" => '\u{2022}',
        "prime" => '\u{2032}',
        "Prime" => '\u{2033}',
        "lsquo" => '\u{2018}',
        "rsquo" => '\u{2019}',
        "sbquo" => '\u{201a}',
        "ldquo" => '\u{201c}',
        "rdquo" => '\u{201d}',
        "bdquo" => '\u{201e}',
        "lsaquo" => '\u{2039}',
        "rsaquo" => '\u{203a}',
        "dagger" => '\u{2020}',
        "Dagger" => '\u{2021}',
        "permil" => '\u{2030}',
        "euro" => '\u{20ac}',
        "trade" => '\u{2122}',
        "fnof" => '\u{192}',
        "OElig" => '\u{152}',
        "oelig" => '\u{153}',
        "Scaron" => '\u{160}',
        "scaron" => '\u{161}',
        "Yuml" => '\u{178}',
        "circ" => '\u{2c6}',
        "tilde" => '\u{2dc}',
        "thetasym" => '\u{3d1}',
        "larr" => '\u{2190}',
        "uarr" => '\u{2191}',
        "rarr" => '\u{2192}',
        "darr" => '\u{2193}',
        "harr" => '\u{2194}',
        "lArr" => '\u{21d0}',
        "rArr" => '\u{21d2}',
        "hArr" => '\u{21d4}',
        "forall" => '\u{2200}',
        "part" => '\u{2202}',
        "exist" => '\u{2203}',
        "nabla" => '\u{2207}',
        "isin" => '\u{2208}',
        "notin" => '\u{2209}',
        "sum" => '\u{2211}',
        "prod" => '\u{220f}',
        "lowast" => '\u{2217}',
        "radic" => '\u{221a}',
        "prop" => '\u{221d}',
        "infin" => '\u{221e}',
        "and" => '\u{2227}',
        "or" => '\u{2228}',
        "cap" => '\u{2229}',
        "cup" => '\u{222a}',
        "int" => '\u{222b}',
        "there4" => '\u{2234}',
        "sim" => '\u{223c}',
        "cong" => '\u{2245}',
        "asymp" => '\u{2248}',
        "ne" => '\u{2260}',
        "equiv" => '\u{2261}',
        "le" => '\u{2264}',
        "ge" => '\u{2265}',
        "sub" => '\u{2282}',
        "sup" => '\u{2283}',
        "oplus" => '\u{2295}',
        "otimes" => '\u{2297}',
        "perp" => '\u{22a5}',
        "sdot" => '\u{22c5}',
        "loz" => '\u{25ca}',
        "spades" => '\u{2660}',
        "clubs" => '\u{2663}',
        "hearts" => '\u{2665}',
        "diams" => '\u{2666}',
        _ => return None,
    };
    Some(EntityText::Char(c))
}

// ---------------------------------------------------------------------------------------------
// Pass 3: lines.

/// Builds the final text line by line: whitespace collapsed, stray markup filtered out, lines
/// without a letter or digit dropped.
fn finish_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut line = String::new();
    for raw in text.split('\n') {
        line.clear();
        for c in raw.chars() {
            push_filtered(&mut line, unprotect(c));
        }
        let kept = line.trim_end();
        if kept.chars().any(char::is_alphanumeric) {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(kept);
        }
    }
    out
}

/// Appends `c` to `line` keeping it free of the markup pairs that must never appear.
/// Invariant: `line` never contains `{{ }} [[ ]] {| |} <!-- <ref`, never starts with a space and
/// never has two spaces in a row. Every change either appends one character that creates none of
/// these, or shortens the line (a prefix of a valid line is valid).
fn push_filtered(line: &mut String, c: char) {
    let last = line.chars().next_back();
    if c.is_whitespace() {
        if !matches!(last, None | Some(' ' | '(')) {
            line.push(' ');
        }
        return;
    }
    if let Some(l) = last {
        if matches!(
            (l, c),
            ('[', '[') | (']', ']') | ('{', '{') | ('}', '}') | ('{', '|') | ('|', '}')
        ) {
            line.pop();
            return;
        }
    }
    let len = line.len();
    if c == '-' && line.ends_with("<!-") {
        line.truncate(len - 3);
        return;
    }
    if (c == 'f' || c == 'F') && len >= 3 && line.as_bytes()[len - 3..].eq_ignore_ascii_case(b"<re")
    {
        line.truncate(len - 3);
        return;
    }
    if matches!(c, ',' | ';') && last == Some('(') {
        return;
    }
    if matches!(c, ',' | '.' | ';' | ')') && last == Some(' ') {
        line.pop();
        if matches!(c, ',' | ';') && line.ends_with('(') {
            return;
        }
    }
    if c == ')' {
        // An empty "()" or "(, )" left by removed templates goes.
        let trimmed = line.trim_end_matches([' ', ',', ';']);
        if trimmed.ends_with('(') {
            line.truncate(trimmed.len() - 1);
            return;
        }
    }
    line.push(c);
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(clean("Hello world."), "Hello world.");
        assert_eq!(clean("One.\n\nTwo.\n\n\nThree."), "One.\nTwo.\nThree.");
    }

    #[test]
    fn paragraphs_written_on_several_lines_are_joined() {
        assert_eq!(
            clean("One line\nand the next.\n\nTwo."),
            "One line and the next.\nTwo."
        );
        assert_eq!(
            clean("[[A]] is\n[[b|B]].\n* item\n* item two\nText."),
            "A is B.\nitem\nitem two\nText."
        );
        assert_eq!(clean("Intro.\n{{Infobox\n|a=b\n}}\nText."), "Intro.\nText.");
        assert_eq!(
            clean("Intro.\n[[File:x.jpg|thumb|c]]\nText."),
            "Intro.\nText."
        );
        assert_eq!(clean("= not a heading\nText."), "= not a heading\nText.");
    }

    #[test]
    fn templates_are_dropped() {
        assert_eq!(clean("A {{cite|x=1}} b."), "A b.");
        assert_eq!(clean("A{{outer|{{inner|y}}|z}}b"), "Ab");
        assert_eq!(
            clean(
                "{{Infobox person\n| name = X\n| born = {{birth date|1900|1|1}}\n}}\nX was a man."
            ),
            "X was a man."
        );
        assert_eq!(clean("A {{{1|default}}} b"), "A b");
        assert_eq!(
            clean("born ({{birth date|1900}}) in Paris"),
            "born in Paris"
        );
    }

    #[test]
    fn tables_are_dropped() {
        assert_eq!(
            clean("Before.\n{| class=\"wikitable\"\n|-\n! H\n|-\n| cell {{x}}\n|}\nAfter."),
            "Before.\nAfter."
        );
        assert_eq!(clean("A.\n{|\n| {{t\n|}}\n| [[x|y]]\n|}\nB."), "A.\nB.");
        assert_eq!(clean("A.\n:{|\n| x\n|}\nB."), "A.\nB.");
    }

    #[test]
    fn links() {
        assert_eq!(
            clean("A [[political philosophy]] b"),
            "A political philosophy b"
        );
        assert_eq!(
            clean("[[self-governance|self-governed]] societies"),
            "self-governed societies"
        );
        assert_eq!(clean("many [[anarchist]]s agree"), "many anarchists agree");
        assert_eq!(clean("[[Paris (France)|]] is big"), "Paris is big");
        assert_eq!(clean("see [[:Category:Cities|cities]]"), "see cities");
        assert_eq!(clean("[[a|''b'']] c"), "b c");
    }

    #[test]
    fn hidden_links_are_dropped() {
        assert_eq!(
            clean("[[File:X.jpg|thumb|A [[caption]] with [[link|links]]]]\nText."),
            "Text."
        );
        assert_eq!(clean("[[Image:Y.png|left]]Text."), "Text.");
        assert_eq!(
            clean("Text.\n[[Category:Anarchism| ]]\n[[de:Anarchismus]]"),
            "Text."
        );
        assert_eq!(clean("Text.[[zh-min-nan:Bô-chèng-hú-chú-gī]]"), "Text.");
        assert_eq!(
            clean("[[File:Z.jpg|thumb|multi\nline caption]]Text."),
            "Text."
        );
    }

    #[test]
    fn external_links() {
        assert_eq!(
            clean("See [http://example.com the site] now"),
            "See the site now"
        );
        assert_eq!(clean("See [http://example.com] now"), "See now");
        assert_eq!(clean("[https://x.org/a?b=c ''Title'']."), "Title.");
        assert_eq!(clean("a [not a link] b"), "a [not a link] b");
    }

    #[test]
    fn refs_and_comments_are_dropped() {
        assert_eq!(
            clean("Fact.<ref>Source {{cite|a}}</ref> More."),
            "Fact. More."
        );
        assert_eq!(clean("Fact.<ref name=\"a\"/> More."), "Fact. More.");
        assert_eq!(
            clean("Fact.<ref name=x>multi\nline</ref> More."),
            "Fact. More."
        );
        assert_eq!(clean("Fact.<REF>x</REF> More."), "Fact. More.");
        assert_eq!(clean("A<!-- hidden\n[[x]] -->B"), "AB");
        assert_eq!(clean("<references/>\nText."), "Text.");
    }

    #[test]
    fn tags() {
        assert_eq!(clean("a <span style=\"x\">b</span> c"), "a b c");
        assert_eq!(clean("x<sup>2</sup>"), "x2");
        assert_eq!(clean("line<br/>break"), "line break");
        assert_eq!(clean("E = <math>mc^2</math> holds"), "E = holds");
        assert_eq!(clean("<gallery>\nA.jpg|a\n</gallery>\nText."), "Text.");
        assert_eq!(
            clean("Code <syntaxhighlight lang=c>int x;</syntaxhighlight>."),
            "Code."
        );
        assert_eq!(
            clean("Use <nowiki>''quotes''</nowiki> here"),
            "Use ''quotes'' here"
        );
        assert_eq!(clean("a < b and c > d"), "a < b and c > d");
    }

    #[test]
    fn headings_and_sections() {
        assert_eq!(
            clean("Intro.\n== History ==\nPast.\n=== Early ===\nEarlier."),
            "Intro.\nPast.\nEarlier."
        );
        assert_eq!(
            clean("Body.\n== See also ==\n* [[X]]\n== References ==\n{{reflist}}\n== Legacy ==\nLives on.\n== External links ==\n* [http://a.org A]"),
            "Body.\nLives on."
        );
    }

    #[test]
    fn line_markup() {
        assert_eq!(
            clean("* one\n** two\n# three\n: four\n; term"),
            "one\ntwo\nthree\nfour\nterm"
        );
        assert_eq!(clean("A.\n----\nB."), "A.\nB.");
        assert_eq!(clean("__TOC__\nA __NOTOC__ B"), "A B");
        assert_eq!(
            clean("'''Bold''' and ''italic'' and '''''both'''''"),
            "Bold and italic and both"
        );
        assert_eq!(clean("l''''x''''"), "l'x'");
    }

    #[test]
    fn entities() {
        assert_eq!(
            clean("a&nbsp;b &ndash; c &mdash; d &quot;e&quot; &lt;f&gt; &amp; &#65;&#x42; &bogus; & x"),
            "a b \u{2013} c \u{2014} d \"e\" <f> & AB &bogus; & x"
        );
        assert_eq!(
            clean("&eta;&Psi;&sigmaf;&eacute;&Eacute;&le;&shy;&Sigmaf;"),
            "\u{3b7}\u{3a8}\u{3c2}\u{e9}\u{c9}\u{2264}&Sigmaf;"
        );
    }

    #[test]
    fn whitespace_and_punctuation_lines() {
        assert_eq!(clean("  a   b\t c  "), "a b c");
        assert_eq!(clean("A.\n  ;.,  \n()\nB."), "A.\nB.");
        assert_eq!(clean("word {{cn}}."), "word.");
        assert_eq!(
            clean("Aristotle ({{IPA|x}}; {{lang|grc|y}}, ''Aristotélēs'')"),
            "Aristotle (Aristotélēs)"
        );
    }

    #[test]
    fn unbalanced_markup_is_bounded() {
        // An unclosed template shows its text; the rest of the article survives.
        assert_eq!(
            clean("{{unclosed\nText one.\n\nText two."),
            "unclosed\nText one.\nText two."
        );
        // An unclosed link ends at its line.
        assert_eq!(clean("A [[b c\n* Next line."), "A b c\nNext line.");
        assert_eq!(clean("A [http://x b c\n\nNext."), "A b c\nNext.");
        // A closer for an outer construct closes it, inner ones left unclosed.
        assert_eq!(clean("a {{t|[[x}} b"), "a b");
        assert_eq!(clean("stray }} and ]] and |} here"), "stray and and here");
        assert_eq!(clean("<ref>unclosed ref\nNext."), "Next.");
        assert_eq!(clean("A <!-- unclosed\nB."), "A B.");
        assert_eq!(clean("[[File:x.jpg|caption\n\nText."), "Text.");
    }

    #[test]
    fn forbidden_markup_never_survives() {
        let nasty = [
            "<nowiki>{{x}} [[y]] {| |} <!-- <ref></nowiki>",
            "&#123;&#123;x&#125;&#125; &#91;&#91;y&#93;&#93; &lt;ref&gt; &lt;!--",
            "{{{{{{{{ }}}}}}]]]]]][[[[[[ {|{|{| |}|}",
            "[[[[[[a]]]]]]",
            "{{a|[[b|{{c}}]]}}}}}}",
            "<pre>[[x]]</pre>",
            "[{{x}}[ ]{{x}}] {{{x}}}{",
            "<r<ref>ef",
        ];
        for input in nasty {
            let out = clean(input);
            for bad in ["{{", "}}", "[[", "]]", "{|", "|}", "<!--", "<ref"] {
                assert!(!out.contains(bad), "{input:?} -> {out:?} contains {bad}");
            }
        }
    }

    /// Random mixtures of markup fragments and multi-byte text: no panic, nothing forbidden.
    #[test]
    fn random_markup_never_panics_nor_leaks() {
        const PIECES: &[&str] = &[
            "{{",
            "}}",
            "{{{",
            "}}}",
            "[[",
            "]]",
            "[",
            "]",
            "{|",
            "|}",
            "|",
            "\n",
            "\n\n",
            "<ref>",
            "</ref>",
            "<ref name=a/>",
            "<!--",
            "-->",
            "<nowiki>",
            "</nowiki>",
            "<math>",
            "</math>",
            "<br>",
            "<span a=\"b\">",
            "</span>",
            "== See also ==\n",
            "== H ==\n",
            "'''",
            "''",
            "&amp;",
            "&#91;",
            "&lt;ref",
            "&",
            "__TOC__",
            "File:",
            "Category:",
            "de:",
            ":",
            "*",
            "#",
            ";",
            "----",
            "[http://x.org",
            " ",
            "é",
            "日本",
            "\u{e004}",
            "(",
            ")",
            ",",
            "<",
            ">",
            "/",
            "=",
            "text",
            "Word",
            "-",
            "f",
            "re",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 60) as usize;
            let input: String = (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            let out = clean(&input);
            for bad in ["{{", "}}", "[[", "]]", "{|", "|}", "<!--", "<ref"] {
                assert!(!out.contains(bad), "{input:?} -> {out:?} contains {bad}");
            }
            assert!(!out.contains("\n\n") && !out.starts_with('\n') && !out.ends_with(' '));
        }
    }

    #[test]
    fn deep_and_long_inputs_are_linear() {
        let n = 200_000;
        let inputs = [
            "{{".repeat(n),
            "[[".repeat(n),
            "}}".repeat(n),
            "<ref>".repeat(n),
            "<ref>x</ref".repeat(n),
            "<!--".repeat(n),
            "<nowiki>".repeat(n),
            "[http://a ".repeat(n),
            "<b ".repeat(n),
            "[[a|".repeat(n) + &"]]".repeat(n),
            "{{a|".repeat(n) + &"}}".repeat(n),
            "&#1234567;&".repeat(n),
            "__A".repeat(n),
            "( , ".repeat(n) + ")",
        ];
        let started = std::time::Instant::now();
        for input in &inputs {
            let out = clean(input);
            assert!(!out.contains("{{") && !out.contains("[["));
        }
        assert!(
            started.elapsed().as_secs() < 20,
            "took {:?}",
            started.elapsed()
        );
    }
}
