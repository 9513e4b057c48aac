//! Frames on the rendezvous and ring connections: a fixed header (magic, kind, collective
//! sequence number, payload length) and the payload. Every read and write runs under the
//! socket's timeout, so a silent peer becomes an error instead of a hang.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

/// "BKDP": bertkit data parallel.
const MAGIC: u32 = 0x424b_4450;
const HEADER: usize = 4 + 1 + 8 + 8;
/// Larger payloads are refused (a stray client on the port, or a corrupt stream).
const MAX_PAYLOAD: u64 = 1 << 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A rank introduces itself to rank 0 (JSON).
    Hello = 1,
    /// Rank 0's answer: who is where, and the shared payload (JSON).
    Table = 2,
    /// Rank 0 refuses the job (UTF-8 message).
    Refused = 3,
    /// A ring handshake: the sender's rank (8 bytes).
    Ring = 4,
    /// Part of an all-reduce.
    Reduce = 5,
    /// Part of a broadcast.
    Broadcast = 6,
    /// A rank gave up; the payload is JSON `{"origin": rank, "message": ...}`, passed on
    /// around the ring so every rank names the rank that failed first.
    Abort = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Table,
            3 => Kind::Refused,
            4 => Kind::Ring,
            5 => Kind::Reduce,
            6 => Kind::Broadcast,
            7 => Kind::Abort,
            _ => return None,
        })
    }
}

pub struct Frame {
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// Why a read failed: the peer went away, went quiet, or sent something that is not ours.
#[derive(Debug)]
pub enum ReadError {
    Closed,
    TimedOut,
    Invalid(String),
    Io(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed => write!(f, "the connection was closed"),
            ReadError::TimedOut => write!(f, "timed out"),
            ReadError::Invalid(m) => write!(f, "invalid data: {m}"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

fn classify(e: std::io::Error) -> ReadError {
    match e.kind() {
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe => ReadError::Closed,
        ErrorKind::WouldBlock | ErrorKind::TimedOut => ReadError::TimedOut,
        _ => ReadError::Io(e),
    }
}

pub fn write_frame(
    stream: &mut TcpStream,
    kind: Kind,
    seq: u64,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4] = kind as u8;
    header[5..13].copy_from_slice(&seq.to_le_bytes());
    header[13..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    stream.write_all(&header)?;
    stream.write_all(payload)?;
    stream.flush()
}

/// Reads one frame; the payload goes into `buf` (reused between calls).
pub fn read_frame_into(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(Kind, u64), ReadError> {
    let mut header = [0u8; HEADER];
    stream.read_exact(&mut header).map_err(classify)?;
    let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    if u32::from_le_bytes([header[0], header[1], header[2], header[3]]) != MAGIC {
        return Err(ReadError::Invalid("not a bertkit frame".into()));
    }
    let kind = Kind::from_u8(header[4])
        .ok_or_else(|| ReadError::Invalid(format!("unknown frame kind {}", header[4])))?;
    let seq = le64(&header[5..13]);
    let len = le64(&header[13..]);
    if len > MAX_PAYLOAD {
        return Err(ReadError::Invalid(format!("payload of {len} bytes")));
    }
    buf.resize(len as usize, 0);
    stream.read_exact(buf).map_err(classify)?;
    Ok((kind, seq))
}

pub fn read_frame(stream: &mut TcpStream) -> Result<Frame, ReadError> {
    let mut payload = Vec::new();
    let (kind, _) = read_frame_into(stream, &mut payload)?;
    Ok(Frame { kind, payload })
}

/// Numbers the ring adds: little-endian on the wire.
pub trait Element: Copy + std::ops::AddAssign + Send + Sync + 'static {
    const SIZE: usize;
    /// Appends `values` to `out`.
    fn put(values: &[Self], out: &mut Vec<u8>);
    fn get(bytes: &[u8], out: &mut [Self]);
    /// Adds the values in `bytes` into `out`.
    fn add_from(bytes: &[u8], out: &mut [Self]);
}

macro_rules! element {
    ($t:ty, $n:expr) => {
        impl Element for $t {
            const SIZE: usize = $n;
            fn put(values: &[Self], out: &mut Vec<u8>) {
                out.reserve(values.len() * $n);
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            fn get(bytes: &[u8], out: &mut [Self]) {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact($n)) {
                    *o = <$t>::from_le_bytes(b.try_into().unwrap_or([0; $n]));
                }
            }
            fn add_from(bytes: &[u8], out: &mut [Self]) {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact($n)) {
                    *o += <$t>::from_le_bytes(b.try_into().unwrap_or([0; $n]));
                }
            }
        }
    };
}
element!(f32, 4);
element!(f64, 8);

/// bfloat16 on the wire: the upper half of an f32, rounded to nearest (ties to even). Adding two
/// adds their f32 values and rounds the sum again, as a bf16 all-reduce does at every hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bf16(pub u16);

impl Bf16 {
    pub fn from_f32(x: f32) -> Bf16 {
        let bits = x.to_bits();
        if x.is_nan() {
            // Keep it a NaN (a quiet one) whatever its payload.
            return Bf16((bits >> 16) as u16 | 0x40);
        }
        let round = 0x7fff + ((bits >> 16) & 1);
        Bf16((bits.wrapping_add(round) >> 16) as u16)
    }

    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

impl std::ops::AddAssign for Bf16 {
    fn add_assign(&mut self, other: Bf16) {
        *self = Bf16::from_f32(self.to_f32() + other.to_f32());
    }
}

impl Element for Bf16 {
    const SIZE: usize = 2;
    fn put(values: &[Self], out: &mut Vec<u8>) {
        out.reserve(values.len() * 2);
        for v in values {
            out.extend_from_slice(&v.0.to_le_bytes());
        }
    }
    fn get(bytes: &[u8], out: &mut [Self]) {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = Bf16(u16::from_le_bytes([b[0], b[1]]));
        }
    }
    fn add_from(bytes: &[u8], out: &mut [Self]) {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o += Bf16(u16::from_le_bytes([b[0], b[1]]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Bf16;

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_specials() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(Bf16::from_f32(1.0 + 3.0 / 256.0).to_f32(), 1.0 + 1.0 / 64.0);
        // Just above halfway rounds up.
        assert_eq!(
            Bf16::from_f32(1.0 + 1.0 / 256.0 + 1.0 / 65536.0).to_f32(),
            1.0 + 1.0 / 128.0
        );
        assert_eq!(Bf16::from_f32(-2.5).to_f32(), -2.5);
        assert_eq!(Bf16::from_f32(f32::INFINITY).to_f32(), f32::INFINITY);
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        // The largest f32 overflows to infinity, as rounding says.
        assert_eq!(Bf16::from_f32(f32::MAX).to_f32(), f32::INFINITY);
        let mut a = Bf16::from_f32(1.0);
        a += Bf16::from_f32(1.0 / 512.0);
        assert_eq!(a.to_f32(), 1.0, "the sum is rounded to bf16 again");
    }
}
