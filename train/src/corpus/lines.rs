//! A line reader with a length limit, line numbers and UTF-8 checking.
//!
//! `BufRead::lines` would read a 10 GB line into memory and stop at the first invalid byte; this
//! reader discards an overlong line as it streams (memory stays under the limit) and reports it,
//! reports invalid UTF-8 with the line number and byte position, and goes on with the next line.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use super::InputError;

pub struct Lines<R> {
    reader: R,
    file: Arc<PathBuf>,
    max_bytes: usize,
    line_no: u64,
    done: bool,
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R, file: Arc<PathBuf>, max_bytes: usize) -> Self {
        Lines {
            reader,
            file,
            max_bytes,
            line_no: 0,
            done: false,
        }
    }

    fn error(&self, message: String) -> InputError {
        InputError::new(
            self.file.as_path(),
            format!("line {}", self.line_no),
            message,
        )
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    /// `(line number, text without the line end)`.
    type Item = Result<(u64, String), InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut line = Vec::new();
        let mut total = 0usize;
        let mut saw_any = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    self.line_no += 1;
                    return Some(Err(self.error(format!("read error: {e}"))));
                }
            };
            if available.is_empty() {
                if !saw_any {
                    self.done = true;
                    return None;
                }
                break;
            }
            saw_any = true;
            let (chunk, found) = match memchr::memchr(b'\n', available) {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            total += chunk.len();
            if total <= self.max_bytes {
                line.extend_from_slice(chunk);
            }
            let used = found.unwrap_or(available.len());
            self.reader.consume(used);
            if found.is_some() {
                break;
            }
        }
        self.line_no += 1;
        if total > self.max_bytes {
            return Some(Err(self.error(format!(
                "line is {total} bytes, longer than the limit of {} bytes (--max-line-bytes); skipped",
                self.max_bytes
            ))));
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        match String::from_utf8(line) {
            Ok(s) => Some(Ok((self.line_no, s))),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                Some(Err(self.error(format!(
                    "invalid UTF-8 at byte {at} of the line; skipped"
                ))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], max: usize) -> Vec<Result<(u64, String), String>> {
        Lines::new(input, Arc::new(PathBuf::from("f.txt")), max)
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn numbers_limits_and_utf8() {
        let got = run(b"a\r\nbb\n\xff\xfe\nccccccc\nd", 4);
        assert_eq!(got[0], Ok((1, "a".into())));
        assert_eq!(got[1], Ok((2, "bb".into())));
        assert!(got[2]
            .as_ref()
            .unwrap_err()
            .contains("f.txt: line 3: invalid UTF-8"));
        assert!(got[3]
            .as_ref()
            .unwrap_err()
            .contains("line 4: line is 7 bytes"));
        assert_eq!(got[4], Ok((5, "d".into())));
        assert_eq!(got.len(), 5);
        assert!(run(b"", 4).is_empty());
        assert_eq!(run(b"\n", 4), vec![Ok((1, String::new()))]);
    }

    #[test]
    fn overlong_line_is_streamed_not_buffered() {
        // A line much longer than BufReader's buffer: the reader must not keep it.
        let mut data = vec![b'x'; 5_000_000];
        data.extend_from_slice(b"\nok\n");
        let reader = std::io::BufReader::with_capacity(8192, &data[..]);
        let got: Vec<_> = Lines::new(reader, Arc::new(PathBuf::from("big")), 1000).collect();
        assert!(got[0].is_err());
        assert_eq!(got[1].as_ref().unwrap(), &(2, "ok".to_string()));
    }
}
