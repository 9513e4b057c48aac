//! Paths of the real test assets (fetched by scripts/fetch-assets.sh, git-ignored).
#![allow(dead_code)]

use std::path::PathBuf;

pub fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets")
}

fn need(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-assets.sh first",
        path.display()
    );
    path
}

/// The real Wikipedia dump sample (.bz2).
pub fn wikipedia_dump() -> PathBuf {
    need(assets().join(
        "data/wikipedia/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    ))
}

/// The State of the Union addresses, sorted; `n` of them.
pub fn sotu(n: usize) -> Vec<PathBuf> {
    let dir = need(assets().join("data/sotu"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files.truncate(n);
    files
}

/// MiniLM's folder: a real uncased BERT WordPiece tokenizer.json.
pub fn minilm() -> PathBuf {
    need(assets().join("all-MiniLM-L6-v2"))
}

/// The Python that has pyarrow (and tensorboard): $BERTKIT_PYTHON, else python3.
pub fn python() -> String {
    std::env::var("BERTKIT_PYTHON").unwrap_or_else(|_| "python3".into())
}
