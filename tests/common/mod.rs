//! Helpers of the CLI tests that run the `bertkit` binary.
#![allow(dead_code)]

pub mod serve;

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The State of the Union addresses (scripts/fetch-assets.sh).
pub fn sotu() -> PathBuf {
    let dir = repo().join("assets/data/sotu");
    assert!(dir.exists(), "run scripts/fetch-assets.sh first");
    dir
}

/// The State of the Union addresses whose file names start with any of `prefixes` (years), in
/// order.
pub fn sotu_files(prefixes: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(sotu())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            prefixes.iter().any(|y| name.starts_with(y))
        })
        .collect();
    files.sort();
    files
}

/// A lowercase WordPiece vocabulary of `size` trained on `train` in `root/tok`, and NSP shards
/// of seq 64 in `root/NAME` for each `(NAME, files)` of `splits`.
pub fn vocab_and_shards(
    root: &Path,
    size: usize,
    train: &[PathBuf],
    splits: &[(&str, &[PathBuf])],
) {
    let tok = root.join("tok");
    run_ok(
        bertkit()
            .args([
                "vocab",
                "--vocab-size",
                &size.to_string(),
                "--lowercase",
                "--input",
            ])
            .args(train)
            .arg("--out")
            .arg(&tok),
    );
    for (name, inputs) in splits {
        run_ok(
            bertkit()
                .args(["prep", "--nsp", "--seq-len", "64", "--quiet", "--input"])
                .args(*inputs)
                .arg("--tokenizer")
                .arg(&tok)
                .arg("--out")
                .arg(root.join(name)),
        );
    }
}

/// Short two-class sentences a tiny model can fit: `(text, label, score)`, water and land in
/// turn.
pub fn toy_rows(n: usize) -> Vec<(String, &'static str, f64)> {
    let water = ["boat", "sea", "harbour", "net"];
    let land = ["field", "road", "house", "hill"];
    (0..n)
        .map(|i| {
            let (word, label, score) = if i % 2 == 0 {
                (water[i / 2 % 4], "water", 1.0 + (i % 5) as f64 * 0.25)
            } else {
                (land[i / 2 % 4], "land", -1.0 - (i % 3) as f64 * 0.5)
            };
            (format!("the cat saw the {word} at dawn"), label, score)
        })
        .collect()
}

/// `n` of [`toy_rows`] as a `text,label` CSV file `dir/name`.
pub fn toy_csv(dir: &Path, name: &str, n: usize) -> PathBuf {
    let mut csv = String::from("text,label\n");
    for (text, label, _) in toy_rows(n) {
        csv.push_str(&format!("{text},{label}\n"));
    }
    let p = dir.join(name);
    std::fs::write(&p, csv).unwrap();
    p
}

/// Copies the folder `from` to `to`, subfolders too.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

pub fn bertkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bertkit"))
}

/// Runs `scripts/SCRIPT ARGS` with $BERTKIT_PYTHON (else python3); fails the test with its
/// stderr and `needs` (the packages it imports) unless it succeeds; returns its stdout as JSON.
pub fn python_script(script: &str, args: &[&std::ffi::OsStr], needs: &str) -> serde_json::Value {
    let python = std::env::var("BERTKIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(repo().join("scripts").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed (needs {needs}: scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The JSON objects of a JSONL file.
pub fn jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `cmd`, fails the test with its output unless it succeeds, returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "bertkit failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A TCP port free on 127.0.0.1 when asked (for a rendezvous the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The last line of `out` that is a JSON object (a `--json` report after the progress lines).
pub fn last_json(out: &str) -> serde_json::Value {
    let line = out
        .lines()
        .rfind(|l| l.starts_with('{'))
        .expect("a JSON line");
    serde_json::from_str(line).unwrap()
}

/// `configs/models/bert-tiny.toml` without dropout, written as `dir/tiny-no-dropout.toml`: runs
/// that split the work differently (devices, ranks) then draw nothing different.
pub fn tiny_without_dropout(dir: &Path) -> PathBuf {
    let tiny = std::fs::read_to_string(repo().join("configs/models/bert-tiny.toml")).unwrap();
    let model = tiny.replace("_dropout_prob = 0.1", "_dropout_prob = 0.0");
    assert!(!model.contains("dropout_prob = 0.1"), "{model}");
    let path = dir.join("tiny-no-dropout.toml");
    std::fs::write(&path, model).unwrap();
    path
}
