//! `bertkit prep` on a folder with symbolic link cycles and a FIFO: it ends, reads each
//! document once and says what it skipped.
#![cfg(unix)]

use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bertkit, repo};

/// Waits for `child` at most `limit`, killing it and failing the test past that; its exit
/// status, stdout and stderr.
fn wait_bounded(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String, String) {
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("bertkit prep still running after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn prep_walks_link_cycles_and_skips_a_fifo() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    // Four documents (plain text: blank-line separated).
    write(
        &input.join("a.txt"),
        "The first document has one sentence.\n\nThe second document is here.\n",
    );
    write(
        &input.join("sub/b.txt"),
        "The third document is in a folder.\n",
    );
    write(
        &outside.join("e.txt"),
        "The fourth document lives outside.\n",
    );
    symlink(".", input.join("l1")).unwrap();
    symlink(".", input.join("l2")).unwrap();
    symlink(".", input.join("self")).unwrap();
    symlink("../outside/e.txt", input.join("e1.txt")).unwrap();
    symlink("../outside/e.txt", input.join("e2.txt")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(input.join("pipe"))
        .status()
        .unwrap();
    assert!(fifo.success(), "mkfifo");

    let out = tmp.path().join("out");
    let child = bertkit()
        .arg("prep")
        .arg("--input")
        .arg(&input)
        .arg("--tokenizer")
        .arg(repo().join("tests/fixtures/hf-reference/tiny_pretraining"))
        .arg("--out")
        .arg(&out)
        .args(["--threads", "1", "--quiet"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, stdout, stderr) = wait_bounded(child, Duration::from_secs(120));
    assert!(status.success(), "bertkit prep failed:\n{stdout}\n{stderr}");

    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let inputs: Vec<String> = manifest["settings"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = ["a.txt", "e1.txt", "sub/b.txt"]
        .iter()
        .map(|f| input.join(f).display().to_string())
        .collect();
    assert_eq!(inputs, want, "{stderr}");
    assert_eq!(manifest["counts"]["documents"], 4, "{stdout}\n{stderr}");
    assert!(stdout.contains("all shards: 4 documents"), "{stdout}");

    for link in ["l1", "l2", "self"] {
        let warning = format!(
            "skipped: {}: symbolic link to '.' leads back to {}, which is being read (a cycle)",
            input.join(link).display(),
            input.display()
        );
        assert!(stderr.contains(&warning), "no '{warning}' in:\n{stderr}");
    }
    let warning = format!(
        "skipped: {}: is a FIFO (named pipe), not a regular file",
        input.join("pipe").display()
    );
    assert!(stderr.contains(&warning), "no '{warning}' in:\n{stderr}");

    // Named on the command line, the FIFO is refused for what it is, without blocking.
    let child = bertkit()
        .arg("prep")
        .arg("--input")
        .arg(input.join("pipe"))
        .arg("--tokenizer")
        .arg(repo().join("tests/fixtures/hf-reference/tiny_pretraining"))
        .arg("--out")
        .arg(tmp.path().join("out2"))
        .args(["--threads", "1", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, _, stderr) = wait_bounded(child, Duration::from_secs(120));
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "input {}: is a FIFO (named pipe), not a regular file",
            input.join("pipe").display()
        )),
        "{stderr}"
    );
}
