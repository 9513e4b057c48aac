//! Helpers of the CLI tests that run the `bertkit` binary.
#![allow(dead_code)]

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

pub fn bertkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bertkit"))
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
