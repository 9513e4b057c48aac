//! The TCP rendezvous on MASTER_ADDR:MASTER_PORT. Rank 0 listens; every other rank connects
//! (retrying until rank 0 is up) and says who it is: rank, world size, a hash of its recipe and
//! bertkit version, its host and pid, and the port of its ring listener. Rank 0 checks them as
//! they arrive: a wrong world size, a duplicate rank or another recipe fails the job at once,
//! naming the rank; ranks that have not joined when the timeout expires are named. Then rank 0
//! sends everyone the table of members and a payload of its own (the NCCL unique id), and the
//! ranks connect their ring.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::env::ProcessEnv;
use super::ring::Ring;
use super::wire::{self, Kind, ReadError};

/// What a rank tells rank 0.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub rank: usize,
    pub world_size: usize,
    pub config_hash: String,
    pub host: String,
    pub pid: u32,
    /// Where its ring listener is, as rank 0 saw the connection come from.
    pub addr: String,
    pub ring_port: u16,
}

impl Member {
    pub fn name(&self) -> String {
        format!("rank {} ({}, pid {})", self.rank, self.host, self.pid)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Table {
    members: Vec<Member>,
    payload: Vec<u8>,
}

/// The outcome: every member, rank 0's payload, and the connected ring (none for one rank).
pub struct Joined {
    pub members: Vec<Member>,
    pub payload: Vec<u8>,
    pub ring: Option<Ring>,
}

/// Joins the job. `payload` is called on rank 0 only; its bytes reach every rank.
pub fn join(
    env: &ProcessEnv,
    config_hash: &str,
    rendezvous_timeout: Duration,
    collective_timeout: Duration,
    payload: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Joined> {
    let me = Member {
        rank: env.rank,
        world_size: env.world_size,
        config_hash: config_hash.to_string(),
        host: bertkit_model::fs::hostname().to_string(),
        pid: std::process::id(),
        addr: env.master_addr.clone(),
        ring_port: 0,
    };
    if env.world_size == 1 {
        return Ok(Joined {
            members: vec![me],
            payload: payload()?,
            ring: None,
        });
    }
    let deadline = Instant::now() + rendezvous_timeout;
    let bind_ip = bind_ip(&env.master_addr);
    let ring_listener = TcpListener::bind((bind_ip, 0)).context("opening the ring listener")?;
    let me = Member {
        ring_port: ring_listener.local_addr()?.port(),
        ..me
    };
    let table = if env.rank == 0 {
        serve(env, me, bind_ip, deadline, rendezvous_timeout, payload)?
    } else {
        ask(env, me, deadline, rendezvous_timeout)?
    };
    let ring = connect_ring(
        env,
        &table.members,
        ring_listener,
        deadline,
        collective_timeout,
    )?;
    Ok(Joined {
        members: table.members,
        payload: table.payload,
        ring: Some(ring),
    })
}

/// Rank 0: wait for everyone, check them, answer.
fn serve(
    env: &ProcessEnv,
    me: Member,
    bind_ip: IpAddr,
    deadline: Instant,
    timeout: Duration,
    payload: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Table> {
    let at = format!("{}:{}", env.master_addr, env.master_port);
    let listener = TcpListener::bind((bind_ip, env.master_port)).with_context(|| {
        format!(
            "rendezvous: rank 0 cannot listen on port {} (MASTER_PORT); another job may be \
             using it",
            env.master_port
        )
    })?;
    listener.set_nonblocking(true)?;
    let n = env.world_size;
    let mut joined: Vec<Option<(Member, TcpStream)>> = (0..n).map(|_| None).collect();
    let mut members: Vec<Option<Member>> = vec![None; n];
    members[0] = Some(me.clone());
    let refuse = |joined: &mut Vec<Option<(Member, TcpStream)>>, message: String| {
        for (_, stream) in joined.iter_mut().flatten() {
            let _ = wire::write_frame(stream, Kind::Refused, 0, message.as_bytes());
        }
        anyhow::anyhow!(message)
    };
    while members.iter().any(Option::is_none) {
        let (mut stream, peer) = match listener.accept() {
            Ok(conn) => conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (0..n)
                        .filter(|&r| members[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    let present: Vec<String> = members.iter().flatten().map(Member::name).collect();
                    return Err(refuse(
                        &mut joined,
                        format!(
                            "rendezvous at {at}: rank{} {} of {n} did not join within {} s \
                             (distributed.rendezvous_timeout_s); joined: {}",
                            if missing.len() > 1 { "s" } else { "" },
                            missing.join(", "),
                            timeout.as_secs_f64(),
                            present.join(", ")
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e).context("rendezvous: accepting a connection"),
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        // Anything that does not say hello properly is a stray client: ignore it.
        let Ok(frame) = wire::read_frame(&mut stream) else {
            continue;
        };
        let Ok(mut m) = serde_json::from_slice::<Member>(&frame.payload) else {
            continue;
        };
        if frame.kind != Kind::Hello {
            continue;
        }
        m.addr = peer.ip().to_string();
        let problem = if m.world_size != n {
            Some(format!(
                "{} says the world size is {} but rank 0 has {n}",
                m.name(),
                m.world_size
            ))
        } else if m.rank == 0 || m.rank >= n {
            Some(format!("{} is not a rank of 1..{n}", m.name()))
        } else if let Some(other) = &members[m.rank] {
            Some(format!(
                "two processes claim rank {}: {} and {} (check RANK/SLURM_PROCID)",
                m.rank,
                other.name(),
                m.name()
            ))
        } else if m.config_hash != me.config_hash {
            Some(format!(
                "{} runs another recipe or bertkit version than rank 0 (config hash {} vs {}): \
                 every rank must run the same command",
                m.name(),
                short(&m.config_hash),
                short(&me.config_hash)
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            let _ = wire::write_frame(&mut stream, Kind::Refused, 0, p.as_bytes());
            return Err(refuse(&mut joined, format!("rendezvous at {at}: {p}")));
        }
        members[m.rank] = Some(m.clone());
        let rank = m.rank;
        joined[rank] = Some((m, stream));
    }
    let table = Table {
        members: members.into_iter().flatten().collect(),
        payload: payload()?,
    };
    let bytes = serde_json::to_vec(&table)?;
    for (m, stream) in joined.iter_mut().flatten() {
        wire::write_frame(stream, Kind::Table, 0, &bytes)
            .with_context(|| format!("rendezvous: sending the member table to {}", m.name()))?;
    }
    Ok(table)
}

/// Other ranks: reach rank 0, say hello, wait for the table.
fn ask(env: &ProcessEnv, me: Member, deadline: Instant, timeout: Duration) -> Result<Table> {
    let at = format!("{}:{}", env.master_addr, env.master_port);
    let addr = resolve(&env.master_addr, env.master_port)?;
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) => {
                if Instant::now() >= deadline {
                    bail!(
                        "rendezvous: could not reach rank 0 at {at} within {} s \
                         (distributed.rendezvous_timeout_s): {e}. Is rank 0 running, and are \
                         MASTER_ADDR/MASTER_PORT right?",
                        timeout.as_secs_f64()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    wire::write_frame(&mut stream, Kind::Hello, 0, &serde_json::to_vec(&me)?)
        .with_context(|| format!("rendezvous: saying hello to rank 0 at {at}"))?;
    // Rank 0 answers when everyone is there or its own timeout expires; it may have started
    // later than this rank, so wait one timeout more than ours.
    let wait = deadline.saturating_duration_since(Instant::now()) + timeout;
    stream.set_read_timeout(Some(wait.max(Duration::from_secs(1))))?;
    let frame = wire::read_frame(&mut stream).map_err(|e| match e {
        ReadError::TimedOut => anyhow::anyhow!(
            "rendezvous: rank 0 at {at} did not answer within {} s",
            wait.as_secs_f64()
        ),
        e => anyhow::anyhow!("rendezvous: rank 0 at {at}: {e}"),
    })?;
    match frame.kind {
        Kind::Table => {
            let table: Table = serde_json::from_slice(&frame.payload)
                .with_context(|| format!("rendezvous: rank 0 at {at} sent an invalid table"))?;
            if table.members.len() != env.world_size
                || table.members.iter().enumerate().any(|(i, m)| m.rank != i)
            {
                bail!("rendezvous: rank 0 at {at} sent an invalid table");
            }
            Ok(table)
        }
        Kind::Refused => bail!(
            "rendezvous refused by rank 0: {}",
            String::from_utf8_lossy(&frame.payload)
        ),
        _ => bail!("rendezvous: rank 0 at {at} sent an unexpected frame"),
    }
}

/// Connect to the successor, accept the predecessor.
fn connect_ring(
    env: &ProcessEnv,
    members: &[Member],
    listener: TcpListener,
    deadline: Instant,
    timeout: Duration,
) -> Result<Ring> {
    let n = members.len();
    let (rank, succ, pred) = (env.rank, (env.rank + 1) % n, (env.rank + n - 1) % n);
    let names: Vec<String> = members.iter().map(Member::name).collect();
    let deadline = deadline.max(Instant::now() + Duration::from_secs(30));
    let target = resolve(&members[succ].addr, members[succ].ring_port)?;
    // Connecting and accepting at once: a ring of blocking connects could wait in a circle.
    let connector = std::thread::spawn(move || -> Result<TcpStream> {
        loop {
            match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                Ok(mut s) => {
                    s.set_write_timeout(Some(Duration::from_secs(10)))?;
                    wire::write_frame(&mut s, Kind::Ring, 0, &(rank as u64).to_le_bytes())?;
                    return Ok(s);
                }
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    listener.set_nonblocking(true)?;
    let recv = loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                match wire::read_frame(&mut s) {
                    Ok(f) if f.kind == Kind::Ring && f.payload == (pred as u64).to_le_bytes() => {
                        break s
                    }
                    _ => continue,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    bail!(
                        "ring setup: {} did not connect to this rank in time",
                        names[pred]
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).context("ring setup: accepting the predecessor"),
        }
    };
    let send = connector
        .join()
        .map_err(|_| anyhow::anyhow!("ring setup: the connecting thread panicked"))?
        .with_context(|| format!("ring setup: connecting to {}", names[succ]))?;
    Ring::new(rank, names, send, recv, timeout)
}

/// Loopback when the job is on this machine only; otherwise every interface.
fn bind_ip(master_addr: &str) -> IpAddr {
    let loopback = master_addr == "localhost"
        || master_addr
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if loopback {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}:{port}"))?
        .next()
        .with_context(|| format!("{host}:{port} resolves to no address"))
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
