//! `bertkit launch` through the binary, with `sh -c` ranks: the torchrun environment, the first
//! failing rank's status and last lines, ranks killed by signals, signals forwarded to the ranks,
//! argument errors.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{bertkit, run_ok};

/// `bertkit launch ARGS -- sh -c SCRIPT`.
fn launch(args: &[&str], script: &str) -> Command {
    let mut cmd = bertkit();
    cmd.arg("launch")
        .args(args)
        .args(["--", "sh", "-c", script]);
    cmd
}

fn text(out: &Output) -> (String, String) {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (s(&out.stdout), s(&out.stderr))
}

#[test]
fn ranks_get_the_torchrun_environment() {
    let script = "echo rank=$RANK local=$LOCAL_RANK world=$WORLD_SIZE \
                  local_world=$LOCAL_WORLD_SIZE group=$GROUP_RANK addr=$MASTER_ADDR port=$MASTER_PORT";
    let args = [
        "--nproc-per-node",
        "3",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--master-port",
        "29999",
    ];
    let out = run_ok(&mut launch(&args, script));
    for (rank, local) in [(3, 0), (4, 1), (5, 2)] {
        let want = format!(
            "[rank {rank}] rank={rank} local={local} world=6 local_world=3 group=1 \
             addr=127.0.0.1 port=29999\n"
        );
        assert!(out.contains(&want), "no {want:?} in:\n{out}");
    }
    assert_eq!(out.lines().count(), 3, "{out}");
}

#[test]
fn bertkit_as_the_command_is_this_binary() {
    // `bertkit` is not on the tests' PATH; the launcher runs itself.
    let out = run_ok(bertkit().args([
        "launch",
        "--nproc-per-node",
        "1",
        "--",
        "bertkit",
        "--version",
    ]));
    assert!(out.starts_with("[rank 0] bertkit "), "{out}");
}

#[test]
fn a_failing_rank_stops_the_others_with_its_status_and_last_lines() {
    let script =
        r#"if [ "$RANK" = 1 ]; then echo line-a; echo line-b >&2; sleep 0.5; exit 7; fi; sleep 60"#;
    let start = Instant::now();
    let out = launch(&["--nproc-per-node", "3", "--grace-s", "2"], script)
        .output()
        .unwrap();
    let elapsed = start.elapsed();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(7), "{stdout}\n{stderr}");
    assert!(
        elapsed < Duration::from_secs(20),
        "took {elapsed:?}: the other ranks were not stopped"
    );
    assert!(stdout.contains("[rank 1] line-a"), "{stdout}");
    assert!(stderr.contains("[rank 1] line-b"), "{stderr}");
    let report = stderr
        .split_once("bertkit launch: rank 1 (local rank 1, pid ")
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no report of rank 1 in:\n{stderr}"));
    assert!(report.contains("exited with status 7"), "{stderr}");
    let (tail, _) = report
        .split_once("last 2 lines of rank 1:\n")
        .and_then(|(_, t)| t.split_once("bertkit launch: stopping ranks 0, 2 "))
        .unwrap_or_else(|| panic!("no tail block before `stopping ranks 0, 2` in:\n{stderr}"));
    let mut tail: Vec<&str> = tail.lines().collect();
    tail.sort();
    assert_eq!(tail, ["    line-a", "    line-b"], "{stderr}");
    // The stopped ranks are not reported as failures.
    assert!(
        !stderr.contains("bertkit launch: rank 0") && !stderr.contains("bertkit launch: rank 2"),
        "{stderr}"
    );
}

#[test]
fn a_rank_killed_by_a_signal_gives_128_plus_the_signal() {
    let script = r#"if [ "$RANK" = 0 ]; then kill -9 $$; fi; sleep 60"#;
    let start = Instant::now();
    let out = launch(&["--nproc-per-node", "2", "--grace-s", "2"], script)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(137), "{stdout}\n{stderr}");
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(stderr.contains("rank 0 (local rank 0, pid "), "{stderr}");
    assert!(
        stderr.contains("was killed by signal 9 (SIGKILL)"),
        "{stderr}"
    );
    assert!(stderr.contains("rank 0 printed nothing"), "{stderr}");
}

#[test]
fn signals_to_the_launcher_reach_the_ranks() {
    let script = r#"trap "echo got-term; exit 0" TERM; echo ready; while true; do sleep 0.1; done"#;
    let mut child = launch(&["--nproc-per-node", "2"], script)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|l: &&String| l.ends_with("] ready"))
        .count()
        < 2
    {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => seen.push(line),
            Err(e) => {
                let _ = child.kill();
                panic!("the ranks did not get ready ({e}): {seen:?}");
            }
        }
    }
    // SAFETY: a plain system call on the launcher, our child.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let start = Instant::now();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(20)) {
        seen.push(line);
    }
    let status = child.wait().unwrap();
    assert!(start.elapsed() < Duration::from_secs(20), "{seen:?}");
    // Signalled, the launcher exits as a shell would, with 128 + SIGTERM.
    assert_eq!(status.code(), Some(143), "{seen:?}");
    for rank in 0..2 {
        assert!(
            seen.contains(&format!("[rank {rank}] got-term")),
            "{seen:?}"
        );
    }
}

#[test]
fn argument_errors_are_clear() {
    let out = launch(
        &["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "2"],
        "true",
    )
    .output()
    .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--node-rank 2 is out of range for --nnodes 2"),
        "{stderr}"
    );

    let out = bertkit()
        .args(["launch", "--nproc-per-node", "2"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("COMMAND"), "{stderr}");

    let out = launch(&["--nproc-per-node", "0"], "true").output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("--nproc-per-node"),
        "{}",
        text(&out).1
    );
}

#[test]
fn a_command_that_cannot_start_is_named() {
    let out = bertkit()
        .args([
            "launch",
            "--nproc-per-node",
            "2",
            "--",
            "/nonexistent/trainer",
            "x",
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot start `/nonexistent/trainer` for rank 0"),
        "{stderr}"
    );
}
