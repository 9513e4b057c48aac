//! A minimal TensorBoard event-file writer (scalars only), with no dependencies.
//!
//! An event file is a TFRecord file: a sequence of records, each framed as
//!
//! ```text
//! u64 LE   length of data
//! u32 LE   masked CRC-32C of the 8 length bytes
//! [u8]     data: one serialized `tensorflow.Event` protobuf
//! u32 LE   masked CRC-32C of data
//! ```
//!
//! where CRC-32C is the Castagnoli CRC and `mask(crc) = rotate_right(crc, 15) + 0xa282ead8`
//! (wrapping). The first event carries `file_version = "brain.Event:2"`; each later one carries
//! a `Summary` with one scalar. Only the protobuf fields we write are encoded, by hand:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; }
//! ```
//!
//! TensorBoard finds files named `events.out.tfevents.*` in a run's folder.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// Appends events to one new TensorBoard event file.
///
/// Records are buffered: call [`EventWriter::flush`] to make them visible to TensorBoard
/// (dropping the writer flushes too, but ignores errors).
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `dir` if needed and a new file `events.out.tfevents.{unix_secs}.{hostname}.{pid}.bertkit`
    /// in it, starting with the file_version event ("brain.Event:2"). Errors name the path;
    /// an existing file of that name is an error, never overwritten.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating TensorBoard folder {}", dir.display()))?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!(
            "events.out.tfevents.{secs}.{}.{}.bertkit",
            bertkit_model::fs::hostname(),
            std::process::id()
        );
        let path = dir.join(name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating TensorBoard event file {}", path.display()))?;
        let mut w = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        let mut event = event_header(wall_time(), 0);
        bytes_field(&mut event, 3, b"brain.Event:2");
        w.write_record(&event)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One scalar summary (simple_value) at `step`, wall_time = now.
    pub fn add_scalar(&mut self, tag: &str, value: f32, step: u64) -> Result<()> {
        let mut v = Vec::with_capacity(tag.len() + 8);
        bytes_field(&mut v, 1, tag.as_bytes());
        key(&mut v, 2, 5); // fixed32
        v.extend_from_slice(&value.to_le_bytes());
        let mut summary = Vec::with_capacity(v.len() + 2);
        bytes_field(&mut summary, 1, &v);
        let mut event = event_header(wall_time(), step);
        bytes_field(&mut event, 5, &summary);
        self.write_record(&event)
    }

    /// Flushes buffered records to the OS.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("writing TensorBoard event file {}", self.path.display()))
    }

    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut write = || -> std::io::Result<()> {
            self.out.write_all(&len)?;
            self.out.write_all(&masked_crc(&len).to_le_bytes())?;
            self.out.write_all(data)?;
            self.out.write_all(&masked_crc(data).to_le_bytes())
        };
        write().with_context(|| format!("writing TensorBoard event file {}", self.path.display()))
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The Event fields every record has: wall_time (1, double) and step (2, int64).
fn event_header(wall_time: f64, step: u64) -> Vec<u8> {
    let mut e = Vec::with_capacity(64);
    key(&mut e, 1, 1); // fixed64
    e.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut e, 2, 0); // varint
    varint(&mut e, step);
    e
}

/// A protobuf field key: field number and wire type (0 varint, 1 fixed64, 2 bytes, 5 fixed32).
fn key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire_type));
}

/// A length-delimited field (string, bytes or embedded message).
fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) lookup table.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &b| {
        CRC32C_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8)
    })
}

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn masked_crc_known_values() {
        // Values from TensorBoard's own masked_crc32c.
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc(&24u64.to_le_bytes()), 0x224b_7fa3);
    }

    #[test]
    fn varint_encoding() {
        let enc = |v| {
            let mut out = Vec::new();
            varint(&mut out, v);
            out
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(300), [0xAC, 0x02]);
        assert_eq!(
            enc(u64::MAX),
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        );
    }

    #[test]
    fn records_are_framed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(&dir.path().join("run")).unwrap();
        w.add_scalar("loss", 1.5, 7).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let mut rest = &bytes[..];
        let mut datas = Vec::new();
        while !rest.is_empty() {
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            assert_eq!(rest[8..12], masked_crc(&rest[..8]).to_le_bytes());
            let data = &rest[12..12 + len];
            assert_eq!(rest[12 + len..16 + len], masked_crc(data).to_le_bytes());
            datas.push(data);
            rest = &rest[16 + len..];
        }
        assert_eq!(datas.len(), 2);
        assert!(datas[0].ends_with(b"\x10\x00\x1a\x0dbrain.Event:2"));
        // step 7, then summary { value { tag "loss" simple_value 1.5 } }.
        let mut tail = vec![0x10, 7, 0x2a, 13, 0x0a, 11, 0x0a, 4];
        tail.extend_from_slice(b"loss");
        tail.push(0x15);
        tail.extend_from_slice(&1.5f32.to_le_bytes());
        assert!(datas[1].ends_with(&tail), "{:x?}", datas[1]);
    }
}
