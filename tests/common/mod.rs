//! Helpers of the CLI tests that run the `bertkit` binary.
#![allow(dead_code)]

pub mod serve;

use std::path::PathBuf;
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
