//! Files written whole or not at all, and their digests. Every writer of bertkit goes through
//! here: a file is written under a hidden temporary name next to it ([`temp_path`]), flushed,
//! fsynced, and renamed into place ([`write_atomic`], [`write_atomic_with`]); an error removes the
//! temporary file and leaves what was at the path before untouched.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// This machine's name, reduced to characters safe in a file name (ASCII letters, digits, `-`,
/// `.`, `_`); `localhost` when it cannot be read.
pub fn hostname() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| {
                h.trim()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                    .collect()
            })
            .filter(|h: &String| !h.is_empty() && h != "." && h != "..")
            .unwrap_or_else(|| "localhost".into())
    })
}

/// The hidden temporary name a file is written under before its rename into place:
/// `.NAME.tmp-HOST-PID` next to it, unique among the processes writing into one folder, even on
/// several machines sharing it (a SLURM array preparing data into one folder).
pub fn temp_path(path: &Path) -> PathBuf {
    let host = hostname();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    path.with_file_name(format!(".{name}.tmp-{host}-{}", std::process::id()))
}

/// Writes `path` through `write` (given a 1 MiB buffered writer on the temporary file), then
/// flushes, fsyncs and renames it into place. An error from `write` or from any of those steps
/// removes the temporary file; the error is returned as is (callers name `path`).
pub fn write_atomic_with<T, E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<T, E>,
) -> Result<T, E> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let value = write(&mut w)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` whole or not at all ([`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Size and sha256 (hex) of a file, streamed.
pub fn file_sha256(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut digest = Sha256Stream::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        digest.update(&buf[..n]);
    }
    Ok((size, digest.hex()))
}

/// sha256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A sha256 fed piece by piece, for digests of data that is not one buffer.
#[derive(Default)]
pub struct Sha256Stream(Sha256);

impl Sha256Stream {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest as lowercase hex.
    pub fn hex(self) -> String {
        hex(&self.0.finalize())
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |w| {
            w.write_all(b"half of the new")?;
            Err::<(), _>(std::io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );

        let n = write_atomic_with(&path, |w| w.write_all(b"new").map(|_| 3)).unwrap();
        assert_eq!((n, std::fs::read(&path).unwrap()), (3, b"new".to_vec()));
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn a_write_into_a_missing_folder_fails_and_digests_match_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_atomic(&dir.path().join("no/such/file"), b"x").is_err());
        let path = dir.path().join("abc");
        write_atomic(&path, b"abc").unwrap();
        // sha256("abc"), FIPS 180-2's first example.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(file_sha256(&path).unwrap(), (3, abc.to_string()));
        assert_eq!(sha256_hex(b"abc"), abc);
        assert!(temp_path(&path)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".abc.tmp-"));
    }
}
