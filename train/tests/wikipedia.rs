//! The Wikipedia dump reader and the wikitext cleaner on the real sample dump
//! (`assets/data/wikipedia/`, fetched by `scripts/fetch-assets.sh`), on damaged copies of it, and
//! on small hand-written dumps.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use bertkit_train::corpus::wikipedia::{is_wikipedia_xml, WikipediaReader};
use bertkit_train::corpus::wikitext::clean;
use bertkit_train::corpus::{Document, InputError};

const SAMPLE: &str = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2";

/// Articles in the sample (of its 206 pages), counted independently with Python:
/// `bz2` + `xml.etree`, pages with `<ns>0</ns>`, no `<redirect>` and no text starting `#REDIRECT`.
const SAMPLE_ARTICLES: usize = 106;

const FORBIDDEN: &[&str] = &["{{", "}}", "[[", "]]", "<ref", "{|", "|}", "<!--", "&amp;"];

fn sample() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/data/wikipedia")
        .join(SAMPLE);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-assets.sh",
        path.display()
    );
    path
}

fn read_all(path: &std::path::Path) -> Vec<Result<Document, InputError>> {
    match WikipediaReader::open(path, None) {
        Ok(reader) => reader.collect(),
        Err(e) => panic!("cannot open {}: {e}", path.display()),
    }
}

fn sample_articles() -> Vec<Document> {
    read_all(&sample())
        .into_iter()
        .map(|d| d.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

#[test]
fn sample_dump_yields_its_articles() {
    let docs = sample_articles();
    assert_eq!(docs.len(), SAMPLE_ARTICLES);
    let first = &docs[0];
    assert_eq!(first.location, "page 12 'Anarchism'");
    assert!(first.wikitext);
    assert!(
        first.text.starts_with("{{Redirect2|Anarchist|"),
        "{}",
        &first.text[..80]
    );
    // XML entities are decoded, wikitext markup is not touched.
    assert!(first.text.contains("<ref>") && first.text.contains("&nbsp;"));
    for doc in &docs {
        assert!(doc.file.ends_with(SAMPLE));
        assert!(doc.location.starts_with("page "), "{}", doc.location);
        let head = doc.text.trim_start().get(..9).unwrap_or("");
        assert!(!head.eq_ignore_ascii_case("#redirect"), "{}", doc.location);
    }
}

#[test]
fn sample_dump_cleans_to_prose() {
    let docs = sample_articles();
    let mut words = 0;
    for doc in &docs {
        let text = clean(&doc.text);
        for bad in FORBIDDEN {
            assert!(
                !text.contains(bad),
                "{}: cleaned text contains {bad:?}",
                doc.location
            );
        }
        assert!(!text.contains("\n\n") && !text.starts_with('\n'));
        words += text.split_whitespace().count();
    }
    println!("{} articles, {words} words after cleaning", docs.len());
    assert!(words > 300_000, "only {words} words of prose");

    let anarchism = clean(&docs[0].text);
    assert!(
        anarchism.starts_with(
            "Anarchism is a political philosophy that advocates self-governed societies based on \
             voluntary institutions. These are often described as stateless societies, although \
             several authors have defined them more specifically as institutions based on \
             non-hierarchical free associations."
        ),
        "{}",
        &anarchism[..300]
    );
    // The non-prose sections are gone.
    assert!(!anarchism.contains("Anarchy Archives"));
}

#[test]
fn clean_throughput() {
    let docs = sample_articles();
    let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    let started = Instant::now();
    let mut out = 0;
    for doc in &docs {
        out += clean(&doc.text).len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "clean(): {:.1} MB of wikitext -> {:.1} MB of text in {secs:.3} s: {:.0} MB/s",
        bytes as f64 / 1e6,
        out as f64 / 1e6,
        bytes as f64 / 1e6 / secs
    );
}

#[test]
fn truncated_bz2_yields_documents_then_one_error() {
    let full = std::fs::read(sample()).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("truncated.xml.bz2");
    std::fs::write(&path, &full[..full.len() / 2]).unwrap_or_else(|e| panic!("{e}"));

    let items = read_all(&path);
    let docs = items.iter().filter(|i| i.is_ok()).count();
    let errors: Vec<&InputError> = items.iter().filter_map(|i| i.as_ref().err()).collect();
    assert!(docs > 0 && docs < SAMPLE_ARTICLES, "{docs} documents");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        items.last().is_some_and(|i| i.is_err()),
        "the error comes last"
    );
    let message = errors[0].to_string();
    println!("{message}");
    assert!(message.contains("truncated.xml.bz2"), "{message}");
    assert!(message.contains("byte offset"), "{message}");
    assert!(message.contains("bz2"), "{message}");
    // The offset is in the compressed file.
    assert_eq!(
        errors[0].location,
        format!("byte offset {}", full.len() / 2)
    );
}

/// A small dump with an article, a redirect (both ways), another namespace and an entity.
fn small_dump(last_page: &str) -> String {
    format!(
        r#"<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">
  <siteinfo><sitename>Wikipedia</sitename></siteinfo>
  <page><title>Alpha &amp; Omega</title><ns>0</ns><id>1</id>
    <revision><id>99</id><contributor><id>7</id></contributor>
      <text xml:space="preserve">'''Alpha''' is &lt;b&gt;first&lt;/b&gt; &amp;nbsp; [[Beta]].&#10;&#10;Line&#x32;</text></revision></page>
  <page><title>Old</title><ns>0</ns><id>2</id><redirect title="Alpha" />
    <revision><text>#REDIRECT [[Alpha]]</text></revision></page>
  <page><title>Older</title><ns>0</ns><id>3</id>
    <revision><text>#redirect [[Alpha]]</text></revision></page>
  <page><title>Wikipedia:About</title><ns>4</ns><id>4</id>
    <revision><text>Project page.</text></revision></page>
{last_page}"#
    )
}

fn write_temp(name: &str, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join(name);
    let mut file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
    file.write_all(content).unwrap_or_else(|e| panic!("{e}"));
    (dir, path)
}

#[test]
fn plain_xml_articles_only_with_entities_decoded() {
    let last = "  <page><title>Gamma</title><ns>0</ns><id>5</id>\n    \
                <revision><text>Gamma text.</text></revision></page>\n</mediawiki>\n";
    let xml = small_dump(last);
    assert!(is_wikipedia_xml(xml.as_bytes()));
    assert!(!is_wikipedia_xml(b"<html><body>no</body></html>"));
    let (_dir, path) = write_temp("small.xml", xml.as_bytes());
    let docs: Vec<Document> = read_all(&path)
        .into_iter()
        .map(|d| d.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].location, "page 1 'Alpha & Omega'");
    assert_eq!(
        docs[0].text,
        "'''Alpha''' is <b>first</b> &nbsp; [[Beta]].\n\nLine2"
    );
    assert_eq!(clean(&docs[0].text), "Alpha is first Beta.\nLine2");
    assert_eq!(docs[1].location, "page 5 'Gamma'");
    assert_eq!(docs[1].text, "Gamma text.");
}

#[test]
fn malformed_plain_xml_is_an_error_with_its_offset() {
    let bad = "  <page><title>Gamma</title><ns>0</ns><id>5</id>\n    \
               <revision><text>Gamma text.</txet></revision></page>\n</mediawiki>\n";
    let xml = small_dump(bad);
    let (_dir, path) = write_temp("bad.xml", xml.as_bytes());
    let items = read_all(&path);
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(items[0].is_ok());
    let Err(e) = &items[1] else {
        panic!("no error: {items:?}")
    };
    let message = e.to_string();
    println!("{message}");
    assert!(
        message.contains("bad.xml") && message.contains("malformed XML"),
        "{message}"
    );
    let offset = xml.find("</txet>").unwrap_or(0);
    assert_eq!(e.location, format!("byte offset {offset}"));
}

#[test]
fn plain_xml_cut_inside_a_page_is_an_error() {
    let cut = "  <page><title>Gamma</title><ns>0</ns><id>5</id>\n    <revision><text>Gam";
    let (_dir, path) = write_temp("cut.xml", small_dump(cut).as_bytes());
    let items = read_all(&path);
    assert_eq!(items.len(), 2, "{items:?}");
    let Err(e) = &items[1] else {
        panic!("no error: {items:?}")
    };
    assert!(e.to_string().contains("byte offset"), "{e}");
    assert!(e.message.contains("inside a <page>"), "{e}");
}

#[test]
fn not_a_dump_is_an_error() {
    let (_dir, path) = write_temp("other.xml", b"<html><body>hello</body></html>");
    let items = read_all(&path);
    assert_eq!(items.len(), 1);
    assert!(items[0]
        .as_ref()
        .is_err_and(|e| e.message.contains("not a MediaWiki dump")));
}
