//! The CPU collectives: every rank holds a TCP connection to its successor in the ring
//! (`rank + 1 mod n`) and one from its predecessor.
//!
//! - all-reduce (sum) is the bandwidth-optimal ring: a reduce-scatter of `n` chunks then an
//!   all-gather, `2 (n-1)/n` of the buffer sent per rank; each step sends and receives at once;
//! - broadcast from rank 0 passes chunks down the ring, so it pipelines;
//! - a barrier is an all-reduce of one number.
//!
//! Every wait is bounded by the timeout. A rank that closes its connection (it exited or was
//! killed) or stays silent is named; the rank that notices passes an abort message on around
//! the ring, so every rank reports the rank that failed first rather than its own neighbour.

use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};

use super::wire::{self, Bf16, Element, Kind, ReadError};

/// Broadcast chunk size: small enough to pipeline, large enough to amortize the frame.
const BROADCAST_CHUNK: usize = 8 << 20;

/// How long a rank that timed out still listens for a diagnosis from upstream.
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

pub struct Ring {
    rank: usize,
    world_size: usize,
    /// To the successor.
    send: TcpStream,
    /// From the predecessor.
    recv: TcpStream,
    /// "rank 3 (host, pid 1234)" for each rank.
    names: Vec<String>,
    timeout: Duration,
    /// The number of the next collective; both ends of every frame must agree on it.
    seq: u64,
    /// Set once a collective failed: the ring is out of step and is not used again.
    failed: Option<String>,
    scratch_out: Vec<u8>,
    scratch_in: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Abort {
    origin: usize,
    message: String,
}

impl Ring {
    /// `send` goes to rank `rank + 1`, `recv` comes from rank `rank - 1` (mod n).
    pub fn new(
        rank: usize,
        names: Vec<String>,
        send: TcpStream,
        recv: TcpStream,
        timeout: Duration,
    ) -> Result<Ring> {
        for s in [&send, &recv] {
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            s.set_nodelay(true)?;
        }
        Ok(Ring {
            rank,
            world_size: names.len(),
            send,
            recv,
            names,
            timeout,
            seq: 0,
            failed: None,
            scratch_out: Vec::new(),
            scratch_in: Vec::new(),
        })
    }

    fn succ(&self) -> usize {
        (self.rank + 1) % self.world_size
    }

    fn pred(&self) -> usize {
        (self.rank + self.world_size - 1) % self.world_size
    }

    /// Sums `data` over all ranks, in place; every rank ends with the same values.
    pub fn all_reduce<T: Element>(&mut self, data: &mut [T]) -> Result<()> {
        self.check_usable()?;
        let n = self.world_size;
        let len = data.len();
        let bounds = |c: usize| c * len / n..(c + 1) * len / n;
        let (mut out, mut inp) = (
            std::mem::take(&mut self.scratch_out),
            std::mem::take(&mut self.scratch_in),
        );
        let result = (|| {
            // Reduce-scatter: after n-1 steps this rank holds the sum of chunk rank+1.
            for s in 0..n - 1 {
                let (sc, rc) = ((self.rank + n - s) % n, (self.rank + 2 * n - s - 1) % n);
                encode(len, &data[bounds(sc)], &mut out);
                self.exchange(Kind::Reduce, &out, &mut inp)?;
                let values = self.decode::<T>(len, bounds(rc).len(), &inp)?;
                T::add_from(values, &mut data[bounds(rc)]);
            }
            // All-gather: pass the summed chunks around.
            for s in 0..n - 1 {
                let (sc, rc) = ((self.rank + 1 + n - s) % n, (self.rank + n - s) % n);
                encode(len, &data[bounds(sc)], &mut out);
                self.exchange(Kind::Reduce, &out, &mut inp)?;
                let values = self.decode::<T>(len, bounds(rc).len(), &inp)?;
                T::get(values, &mut data[bounds(rc)]);
            }
            Ok(())
        })();
        (self.scratch_out, self.scratch_in) = (out, inp);
        self.seq += 1;
        result
    }

    /// [`Self::all_reduce`] with bf16 on the wire: each value is rounded to bf16 and every
    /// partial sum too; all ranks end with the same values.
    pub fn all_reduce_bf16(&mut self, data: &mut [f32]) -> Result<()> {
        let mut wire: Vec<Bf16> = data.iter().map(|&x| Bf16::from_f32(x)).collect();
        self.all_reduce(&mut wire)?;
        for (d, w) in data.iter_mut().zip(wire) {
            *d = w.to_f32();
        }
        Ok(())
    }

    /// Gradients summed with `dtype` on the wire.
    pub fn all_reduce_grads(&mut self, data: &mut [f32], dtype: super::ReduceDtype) -> Result<()> {
        match dtype {
            super::ReduceDtype::Fp32 => self.all_reduce(data),
            super::ReduceDtype::Bf16 => self.all_reduce_bf16(data),
        }
    }

    /// Rank 0's `data` replaces every other rank's.
    pub fn broadcast(&mut self, data: &mut Vec<u8>) -> Result<()> {
        self.check_usable()?;
        let forward = self.succ() != 0;
        let result = (|| {
            if self.rank == 0 {
                self.send_frame(Kind::Broadcast, &(data.len() as u64).to_le_bytes())?;
                for chunk in data.chunks(BROADCAST_CHUNK) {
                    self.send_frame(Kind::Broadcast, chunk)?;
                }
                return Ok(());
            }
            let mut buf = Vec::new();
            self.recv_frame(Kind::Broadcast, &mut buf)?;
            let total = <[u8; 8]>::try_from(buf.as_slice())
                .map(u64::from_le_bytes)
                .map_err(|_| self.protocol_error("a broadcast header"))?
                as usize;
            if forward {
                self.send_frame(Kind::Broadcast, &buf)?;
            }
            data.clear();
            data.reserve(total);
            while data.len() < total {
                self.recv_frame(Kind::Broadcast, &mut buf)?;
                if buf.is_empty() || data.len() + buf.len() > total {
                    return Err(self.protocol_error("a broadcast chunk"));
                }
                data.extend_from_slice(&buf);
                if forward {
                    self.send_frame(Kind::Broadcast, &buf)?;
                }
            }
            Ok(())
        })();
        self.seq += 1;
        result
    }

    /// Returns once every rank has called it.
    pub fn barrier(&mut self) -> Result<()> {
        self.all_reduce(&mut [0f32])
    }

    /// Tells the other ranks that this one gives up (they report `message` naming it), then
    /// closes the connections. Best effort: the others may be gone already.
    pub fn abort(&mut self, message: &str) {
        if self.failed.is_none() {
            let origin = self.rank;
            self.pass_abort(origin, message);
            self.failed = Some(message.to_string());
        }
        let _ = self.send.shutdown(Shutdown::Both);
        let _ = self.recv.shutdown(Shutdown::Both);
    }

    fn check_usable(&self) -> Result<()> {
        match &self.failed {
            Some(m) => Err(anyhow!("an earlier collective failed: {m}")),
            None => Ok(()),
        }
    }

    /// Sends `out` to the successor while receiving from the predecessor.
    fn exchange(&mut self, kind: Kind, out: &[u8], inp: &mut Vec<u8>) -> Result<()> {
        let seq = self.seq;
        let send = &mut self.send;
        let (written, read) = std::thread::scope(|s| {
            let writer = s.spawn(move || wire::write_frame(send, kind, seq, out));
            let read = wire::read_frame_into(&mut self.recv, inp);
            (writer.join(), read)
        });
        self.check_read(kind, read, inp)?;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.send_failed(e)),
            Err(_) => Err(self.fail(self.rank, "the sending thread panicked".into())),
        }
    }

    fn send_frame(&mut self, kind: Kind, payload: &[u8]) -> Result<()> {
        wire::write_frame(&mut self.send, kind, self.seq, payload).map_err(|e| self.send_failed(e))
    }

    fn recv_frame(&mut self, kind: Kind, buf: &mut Vec<u8>) -> Result<()> {
        let read = wire::read_frame_into(&mut self.recv, buf);
        self.check_read(kind, read, buf)
    }

    /// `payload` is the buffer the frame was read into.
    fn check_read(
        &mut self,
        want: Kind,
        read: Result<(Kind, u64), ReadError>,
        payload: &[u8],
    ) -> Result<()> {
        let pred = self.pred();
        let what = format!("{} #{}", op_name(want), self.seq);
        match read {
            Ok((kind, seq)) if kind == want && seq == self.seq => Ok(()),
            Ok((Kind::Abort, _)) => {
                let abort: Abort = serde_json::from_slice(payload).unwrap_or(Abort {
                    origin: pred,
                    message: "it gave up".into(),
                });
                let here = self.adopt(abort, &what);
                // A rank upstream may still pass on who failed first.
                Err(self.upstream_diagnosis(&what).unwrap_or(here))
            }
            Ok((kind, seq)) => Err(self.fail(
                pred,
                format!(
                    "{} is at collective #{seq} ({}) while this rank is at {what}: the ranks are \
                     not running the same steps",
                    self.names[pred],
                    op_name(kind)
                ),
            )),
            Err(ReadError::Closed) => Err(self.fail(
                pred,
                format!(
                    "{} closed its connection during {what}: it exited or was killed",
                    self.names[pred]
                ),
            )),
            Err(ReadError::TimedOut) => {
                let here = self.fail(
                    pred,
                    format!(
                        "no data from {} for {} s during {what}: it, or a rank before it in the \
                         ring, is stuck or gone (distributed.timeout_s)",
                        self.names[pred],
                        self.timeout.as_secs_f64()
                    ),
                );
                Err(self.upstream_diagnosis(&what).unwrap_or(here))
            }
            Err(e) => Err(self.fail(
                pred,
                format!("reading from {} during {what}: {e}", self.names[pred]),
            )),
        }
    }

    /// After a timeout or an abort. When one rank is stuck, every rank downstream of it times out at about
    /// the same moment, and each would name its own predecessor. Each has just told its
    /// successor whom it blames; a rank whose predecessor speaks now proves that predecessor
    /// alive, so it adopts the blame passed down (and passes it on). Listening for a grace
    /// period lets the blame of the rank right after the stuck one travel the whole chain.
    fn upstream_diagnosis(&mut self, what: &str) -> Option<anyhow::Error> {
        let grace = self.timeout.min(TIMEOUT_GRACE);
        let _ = self.recv.set_read_timeout(Some(grace));
        let deadline = std::time::Instant::now() + grace;
        let mut adopted = None;
        let mut buf = Vec::new();
        for _ in 0..self.world_size {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || self.recv.set_read_timeout(Some(left)).is_err() {
                break;
            }
            let Ok((Kind::Abort, _)) = wire::read_frame_into(&mut self.recv, &mut buf) else {
                break;
            };
            let Ok(abort) = serde_json::from_slice::<Abort>(&buf) else {
                break;
            };
            adopted = Some(self.adopt(abort, what));
        }
        adopted
    }

    /// Takes on the failure `abort` reports, and passes it on.
    fn adopt(&mut self, abort: Abort, what: &str) -> anyhow::Error {
        if self.succ() != abort.origin {
            self.pass_abort(abort.origin, &abort.message);
        }
        let message = format!(
            "{} failed: {} (during {what} here)",
            self.names[abort.origin], abort.message
        );
        self.failed = Some(message.clone());
        anyhow!(message)
    }

    fn send_failed(&mut self, e: std::io::Error) -> anyhow::Error {
        let succ = self.succ();
        let message = format!(
            "could not send to {} during collective #{}: {e} (it exited or was killed)",
            self.names[succ], self.seq
        );
        self.fail(succ, message)
    }

    fn protocol_error(&mut self, what: &str) -> anyhow::Error {
        let pred = self.pred();
        self.fail(pred, format!("{} sent an invalid {what}", self.names[pred]))
    }

    /// Records the failure, tells the successor (unless it is the one that failed), and
    /// returns the error to report here.
    fn fail(&mut self, origin: usize, message: String) -> anyhow::Error {
        if self.failed.is_none() {
            if self.succ() != origin {
                self.pass_abort(origin, &message);
            }
            self.failed = Some(message.clone());
        }
        anyhow!(message)
    }

    fn pass_abort(&mut self, origin: usize, message: &str) {
        let payload = serde_json::to_vec(&Abort {
            origin,
            message: message.to_string(),
        })
        .unwrap_or_default();
        let _ = self.send.set_write_timeout(Some(Duration::from_secs(2)));
        let _ = wire::write_frame(&mut self.send, Kind::Abort, self.seq, &payload);
    }

    fn decode<'a, T: Element>(
        &mut self,
        total: usize,
        expect: usize,
        inp: &'a [u8],
    ) -> Result<&'a [u8]> {
        let sent_total = inp
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes);
        if sent_total != Some(total as u64) || inp.len() != 8 + expect * T::SIZE {
            let pred = self.pred();
            return Err(self.fail(
                pred,
                format!(
                    "{} all-reduces {} values where this rank has {total}: the ranks do not \
                     hold the same model",
                    self.names[pred],
                    sent_total.map_or("an unknown number of".into(), |t| t.to_string())
                ),
            ));
        }
        Ok(&inp[8..])
    }
}

fn encode<T: Element>(total: usize, values: &[T], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(total as u64).to_le_bytes());
    T::put(values, out);
}

fn op_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Reduce => "all-reduce",
        Kind::Broadcast => "broadcast",
        Kind::Abort => "abort",
        _ => "setup",
    }
}
