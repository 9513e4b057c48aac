//! `bertkit launch`: start the local ranks of a data-parallel job, like `torchrun`.
//!
//! `bertkit launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P]
//! -- COMMAND ARGS...` starts N copies of COMMAND, local rank i with torchrun's environment:
//! `RANK` = R*N + i, `LOCAL_RANK` = i, `WORLD_SIZE` = M*N, `LOCAL_WORLD_SIZE` = N,
//! `GROUP_RANK` = R, `MASTER_ADDR`, `MASTER_PORT` (what `bertkit_train::distributed::env`
//! reads). A COMMAND of `bertkit` is this very binary (`std::env::current_exe`), not whatever
//! `bertkit` comes first on `PATH`. On a multi-node job every node runs its own launcher with its
//! `--node-rank` and the same master address and port.
//!
//! Each rank's stdout and stderr go to the launcher's stdout and stderr, line by line, behind
//! `[rank K] ` (K the global rank); the last `--tail-lines` lines of each rank are kept (a `\r`
//! of a progress bar ends a line there too). Ranks get no stdin.
//!
//! When a rank exits with a non-zero status or is killed by a signal, the launcher reports it
//! with its last lines, stops the other ranks (SIGTERM, then SIGKILL after `--grace-s`) and exits
//! with that rank's status (128 + the signal's number for a signal, as a shell does). Ranks that
//! end because they were stopped are not reported. SIGINT, SIGTERM and SIGHUP sent to the
//! launcher are forwarded to the ranks, which get the same grace before SIGKILL, and the
//! launcher then exits with 128 + that signal's number whatever the ranks did (as torchrun, it
//! does not report success for an interrupted job). When every rank exits 0, so does the
//! launcher.
//!
//! On unix each rank runs in its own process group, so that signals reach whatever the rank
//! started too (a shell's children), and a Ctrl-C at the terminal reaches the ranks once, through
//! the launcher; on Linux a rank also gets SIGTERM if the launcher itself dies.
//!
//! Under SLURM the launcher is optional: `srun --ntasks-per-node 8 bertkit pretrain ...` starts
//! one task per GPU and the ranks read `SLURM_PROCID`, `SLURM_NTASKS` and `SLURM_LOCALID`.
//! Alternatively one srun task per node runs `bertkit launch --nproc-per-node 8 --nnodes
//! $SLURM_NNODES --node-rank $SLURM_NODEID --master-addr <first host> -- bertkit pretrain ...`.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bertkit_train::distributed::env::DEFAULT_PORT;
use clap::Args;

#[cfg(unix)]
use libc::{SIGKILL, SIGTERM};
#[cfg(not(unix))]
const SIGTERM: i32 = 15;
#[cfg(not(unix))]
const SIGKILL: i32 = 9;

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Ranks to start on this node, usually one per GPU.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub nproc_per_node: u32,
    /// Nodes in the job; each runs its own `bertkit launch`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub nnodes: u32,
    /// This node's index, 0 to nnodes-1.
    #[arg(long, default_value_t = 0)]
    pub node_rank: u32,
    /// Address of the node that runs global rank 0.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Rendezvous port on the master node.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub master_port: u16,
    /// Seconds the ranks get between SIGTERM and SIGKILL when they are stopped.
    #[arg(long, default_value = "10", value_parser = parse_secs, value_name = "S")]
    pub grace_s: Duration,
    /// Last lines of output kept for each rank, printed when it fails.
    #[arg(long, default_value_t = 20, value_name = "K")]
    pub tail_lines: usize,
    /// What every rank runs, after `--`; a leading `bertkit` is this binary.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{e}"))
}

/// The last signal the launcher received and has not forwarded yet (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);

/// One rank's last lines of output, both streams interleaved.
type Tail = Arc<Mutex<VecDeque<String>>>;

struct Rank {
    global: u32,
    local: u32,
    child: Child,
    status: Option<ExitStatus>,
    tail: Tail,
    readers: Vec<JoinHandle<()>>,
}

/// Starts the ranks and watches them; returns the launcher's exit status.
pub fn run(args: &LaunchArgs) -> Result<u8> {
    let n = args.nproc_per_node;
    if args.node_rank >= args.nnodes {
        bail!(
            "--node-rank {} is out of range for --nnodes {} (node ranks are 0 to {})",
            args.node_rank,
            args.nnodes,
            args.nnodes - 1
        );
    }
    let world =
        (args.nnodes.checked_mul(n)).context("--nnodes times --nproc-per-node is too large")?;
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given after `--`")?;
    let program = if program == "bertkit" {
        std::env::current_exe()
            .context("finding the bertkit binary")?
            .into_os_string()
    } else {
        program.clone()
    };
    let first = args.node_rank * n;
    let shown: Vec<String> = args.command.iter().map(|a| shell_quote(a)).collect();
    eprintln!(
        "bertkit launch: starting {n} ranks (global ranks {first}-{} of {world}) on node {}: {}; \
         master {}:{}",
        first + n - 1,
        args.node_rank,
        shown.join(" "),
        args.master_addr,
        args.master_port
    );
    install_handlers()?;

    let mut job = Job {
        ranks: Vec::new(),
        grace: args.grace_s,
        deadline: None,
    };
    for local in 0..n {
        let mut cmd = Command::new(&program);
        cmd.args(rest)
            .env("RANK", (first + local).to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("GROUP_RANK", args.node_rank.to_string())
            .env("MASTER_ADDR", &args.master_addr)
            .env("MASTER_PORT", args.master_port.to_string());
        if let Err(e) = job.start(cmd, first + local, local, args.tail_lines) {
            let started = job.live_list();
            if !started.is_empty() {
                eprintln!("bertkit launch: stopping ranks {started}");
            }
            job.signal_live(SIGTERM);
            // The error to report is `e`; the stopped ranks' statuses do not matter.
            job.watch(0).ok();
            return Err(e);
        }
    }
    job.watch(args.tail_lines)
}

struct Job {
    ranks: Vec<Rank>,
    grace: Duration,
    /// When the ranks still running get SIGKILL, once they have been told to stop.
    deadline: Option<Instant>,
}

impl Job {
    fn start(&mut self, mut cmd: Command, global: u32, local: u32, keep: usize) -> Result<()> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            #[cfg(target_os = "linux")]
            // SAFETY: prctl is async-signal-safe and touches nothing of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{program}` for rank {global}"))?;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let tail: Tail = Arc::new(Mutex::new(VecDeque::with_capacity(keep)));
        self.ranks.push(Rank {
            global,
            local,
            child,
            status: None,
            tail: tail.clone(),
            readers: vec![],
        });
        let prefix = format!("[rank {global}] ");
        let readers = [
            out.map(|s| forward(s, false, prefix.clone(), tail.clone(), keep)),
            err.map(|s| forward(s, true, prefix, tail, keep)),
        ];
        for reader in readers.into_iter().flatten() {
            let handle = reader.context("starting an output thread")?;
            if let Some(rank) = self.ranks.last_mut() {
                rank.readers.push(handle);
            }
        }
        Ok(())
    }

    /// Polls the ranks until all have exited, handling the first failure and signals; returns
    /// the exit status. `keep` > 0 reports the failing rank's last lines.
    fn watch(&mut self, keep: usize) -> Result<u8> {
        // Set by the first failure or signal; when the ranks are being stopped already (one
        // could not be started), no rank is the cause.
        let mut outcome: Option<u8> = self.deadline.map(|_| 1);
        let mut killed = false;
        loop {
            let sig = PENDING.swap(0, Ordering::SeqCst);
            if sig != 0 {
                let live = self.live_list();
                if !live.is_empty() {
                    eprintln!(
                        "bertkit launch: received {}; forwarding it to ranks {live} (SIGKILL \
                         after {:?})",
                        signal_name(sig),
                        self.grace
                    );
                }
                self.signal_live(sig);
                outcome.get_or_insert(u8::try_from(128 + sig).unwrap_or(255));
            }
            for i in 0..self.ranks.len() {
                let rank = &mut self.ranks[i];
                if rank.status.is_some() {
                    continue;
                }
                let Some(status) = rank
                    .child
                    .try_wait()
                    .with_context(|| format!("waiting for rank {}", rank.global))?
                else {
                    continue;
                };
                rank.status = Some(status);
                if outcome.is_none() && !status.success() {
                    outcome = Some(self.report_failure(i, status, keep));
                }
            }
            if self.ranks.iter().all(|r| r.status.is_some()) {
                break;
            }
            if !killed && self.deadline.is_some_and(|d| Instant::now() >= d) {
                eprintln!(
                    "bertkit launch: ranks {} still running; sending SIGKILL",
                    self.live_list()
                );
                self.signal_live(SIGKILL);
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.deadline.is_some() {
            // What the stopped ranks started and left behind (it would hold their pipes open).
            // The groups' leaders are reaped, but a group id is not reused while the group lives.
            for rank in &mut self.ranks {
                send(&mut rank.child, SIGKILL);
            }
        }
        let until = Instant::now() + Duration::from_secs(2);
        for rank in &self.ranks {
            wait_readers(&rank.readers, until);
        }
        Ok(outcome.unwrap_or(0))
    }

    /// Reports rank `i`'s failure with its last lines, stops the others; returns the exit status.
    fn report_failure(&mut self, i: usize, status: ExitStatus, keep: usize) -> u8 {
        let (what, code) = describe(status);
        let rank = &mut self.ranks[i];
        // Whatever the rank left running in its group would keep its output open.
        send(&mut rank.child, SIGTERM);
        wait_readers(&rank.readers, Instant::now() + Duration::from_secs(1));
        let mut msg = format!(
            "bertkit launch: rank {} (local rank {}, pid {}) {what}\n",
            rank.global,
            rank.local,
            rank.child.id()
        );
        let tail = rank.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if keep > 0 && tail.is_empty() {
            msg += &format!("rank {} printed nothing\n", rank.global);
        } else if keep > 0 {
            msg += &format!("last {} lines of rank {}:\n", tail.len(), rank.global);
            for line in tail.iter() {
                msg += &format!("    {line}\n");
            }
        }
        drop(tail);
        let live = self.live_list();
        if !live.is_empty() {
            msg += &format!(
                "bertkit launch: stopping ranks {live} (SIGTERM, SIGKILL after {:?})\n",
                self.grace
            );
        }
        eprint!("{msg}");
        self.signal_live(SIGTERM);
        code
    }

    /// Sends `sig` to every rank still running and starts the grace period, if not started.
    fn signal_live(&mut self, sig: i32) {
        for rank in self.ranks.iter_mut().filter(|r| r.status.is_none()) {
            send(&mut rank.child, sig);
        }
        self.deadline.get_or_insert(Instant::now() + self.grace);
    }

    /// The global ranks still running: "0, 2".
    fn live_list(&self) -> String {
        let live: Vec<String> = self
            .ranks
            .iter()
            .filter(|r| r.status.is_none())
            .map(|r| r.global.to_string())
            .collect();
        live.join(", ")
    }
}

/// Forwards `stream` line by line behind `prefix` to stdout or stderr, keeping the last `keep`
/// lines in `tail`.
fn forward(
    stream: impl Read + Send + 'static,
    to_stderr: bool,
    prefix: String,
    tail: Tail,
    keep: usize,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("{prefix}output"))
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']);
                let out = format!("{prefix}{line}\n");
                // A reader that went away is no reason to stop the job.
                let _ = if to_stderr {
                    std::io::stderr().lock().write_all(out.as_bytes())
                } else {
                    std::io::stdout().lock().write_all(out.as_bytes())
                };
                if keep > 0 {
                    let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
                    for part in line.split('\r').filter(|p| !p.is_empty()) {
                        if tail.len() == keep {
                            tail.pop_front();
                        }
                        tail.push_back(part.to_string());
                    }
                }
            }
        })
}

/// Waits until `readers` have seen the end of their streams, or `until`.
fn wait_readers(readers: &[JoinHandle<()>], until: Instant) {
    while readers.iter().any(|r| !r.is_finished()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// "exited with status 3" or "was killed by signal 9 (SIGKILL)", and the exit status to pass on.
fn describe(status: ExitStatus) -> (String, u8) {
    #[cfg(unix)]
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&status) {
        let code = u8::try_from(128 + sig).unwrap_or(255);
        return (
            format!("was killed by signal {sig} ({})", signal_name(sig)),
            code,
        );
    }
    match status.code() {
        Some(code) => (
            format!("exited with status {code}"),
            u8::try_from(code).ok().filter(|&c| c != 0).unwrap_or(1),
        ),
        None => (format!("ended with {status}"), 1),
    }
}

#[cfg(unix)]
fn signal_name(sig: i32) -> String {
    let names = [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGABRT, "SIGABRT"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGTERM, "SIGTERM"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == sig)
        .map_or_else(|| format!("signal {sig}"), |(_, name)| name.to_string())
}

#[cfg(not(unix))]
fn signal_name(sig: i32) -> String {
    format!("signal {sig}")
}

#[cfg(unix)]
extern "C" fn on_signal(sig: libc::c_int) {
    PENDING.store(sig, Ordering::SeqCst);
}

/// Catches SIGINT, SIGTERM and SIGHUP into `PENDING`, for the watch loop to forward.
#[cfg(unix)]
fn install_handlers() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the action is fully initialised; the handler only stores to an atomic, which
        // is async-signal-safe. SA_RESTART keeps the output threads' reads going.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("installing the signal handlers");
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn install_handlers() -> Result<()> {
    Ok(())
}

/// Sends `sig` to the rank's process group: the rank and what it started.
#[cfg(unix)]
fn send(child: &mut Child, sig: i32) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: a plain system call; the group is the one the rank was started as leader of.
        // An error (the group is gone) needs no handling.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

#[cfg(not(unix))]
fn send(child: &mut Child, _sig: i32) {
    let _ = child.kill();
}

/// `arg` as a shell would need it, for display.
fn shell_quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
