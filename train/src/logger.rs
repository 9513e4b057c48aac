//! Where a training run reports: `metrics.jsonl` (one JSON object per record), TensorBoard
//! event files (`tensorboard/`), and a progress bar (or plain lines when not on a terminal).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::tensorboard::EventWriter;

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// Where a run's metrics go (HF's `report_to`): `metrics.jsonl`, TensorBoard event files, both
/// or neither. Written `jsonl,tensorboard`, `all` or `none`; the same default (both) for
/// pretraining and fine-tuning. Lines on stderr and the progress bar are always there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportTo {
    pub jsonl: bool,
    pub tensorboard: bool,
}

impl Default for ReportTo {
    fn default() -> Self {
        ReportTo {
            jsonl: true,
            tensorboard: true,
        }
    }
}

impl std::str::FromStr for ReportTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut r = ReportTo {
            jsonl: false,
            tensorboard: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "jsonl" => r.jsonl = true,
                "tensorboard" => r.tensorboard = true,
                "all" => r = ReportTo::default(),
                "none" => {}
                _ => {
                    return Err(format!(
                        "unknown report target {part:?}; expected tensorboard, jsonl, all or none \
                         (comma-separated)"
                    ))
                }
            }
        }
        Ok(r)
    }
}

impl std::fmt::Display for ReportTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (self.jsonl, self.tensorboard) {
            (true, true) => "jsonl,tensorboard",
            (true, false) => "jsonl",
            (false, true) => "tensorboard",
            (false, false) => "none",
        })
    }
}

impl serde::Serialize for ReportTo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ReportTo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

pub struct Logger {
    /// Reports nothing (ranks other than 0).
    silent: bool,
    jsonl: Option<(std::io::BufWriter<std::fs::File>, PathBuf)>,
    tensorboard: Option<EventWriter>,
    bar: ProgressBar,
}

impl Logger {
    /// Opens the run's logs in `out`. Records of steps after `start_step` (written by a run
    /// that was interrupted after its last checkpoint) are dropped from `metrics.jsonl`, so the
    /// file describes the run that the weights come from.
    pub fn open(
        out: &Path,
        report: ReportTo,
        total_steps: u64,
        start_step: u64,
        show_bar: bool,
    ) -> Result<Logger> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let jsonl_path = out.join(METRICS_FILE);
        if jsonl_path.exists() && report.jsonl {
            let text = std::fs::read_to_string(&jsonl_path)
                .with_context(|| format!("reading {}", jsonl_path.display()))?;
            let kept: String = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s <= start_step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            bertkit_model::checkpoint::write_atomic(&jsonl_path, kept.as_bytes())?;
        }
        let jsonl = if report.jsonl {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&jsonl_path)
                .with_context(|| format!("opening {}", jsonl_path.display()))?;
            Some((std::io::BufWriter::new(file), jsonl_path))
        } else {
            None
        };
        let tensorboard = if report.tensorboard {
            Some(EventWriter::create(&out.join(TENSORBOARD_DIR))?)
        } else {
            None
        };
        let bar = if show_bar {
            ProgressBar::with_draw_target(Some(total_steps), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} step {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(start_step);
        bar.reset_eta();
        bar.enable_steady_tick(Duration::from_millis(500));
        Ok(Logger {
            silent: false,
            jsonl,
            tensorboard,
            bar,
        })
    }

    /// A logger that writes and prints nothing: data-parallel ranks other than 0.
    pub fn silent() -> Logger {
        Logger {
            silent: true,
            jsonl: None,
            tensorboard: None,
            bar: ProgressBar::hidden(),
        }
    }

    /// One record: `{"step": S, "split": "train", NAME: VALUE, ...}` in metrics.jsonl and
    /// `SPLIT/NAME` scalars in TensorBoard.
    pub fn record(&mut self, step: u64, split: &str, values: &[(&str, f64)]) -> Result<()> {
        if self.silent {
            return Ok(());
        }
        let mut obj = serde_json::Map::new();
        obj.insert("step".into(), step.into());
        obj.insert("split".into(), split.into());
        for (name, v) in values {
            let json = serde_json::Number::from_f64(*v)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|| serde_json::Value::String(v.to_string()));
            obj.insert((*name).into(), json);
            if let Some(tb) = &mut self.tensorboard {
                tb.add_scalar(&format!("{split}/{name}"), *v as f32, step)?;
            }
        }
        if let Some((jsonl, jsonl_path)) = &mut self.jsonl {
            writeln!(jsonl, "{}", serde_json::Value::Object(obj))
                .and_then(|_| jsonl.flush())
                .with_context(|| format!("writing {}", jsonl_path.display()))?;
        }
        if let Some(tb) = &mut self.tensorboard {
            tb.flush()?;
        }
        Ok(())
    }

    pub fn progress(&self, step: u64, message: String) {
        self.bar.set_position(step);
        self.bar.set_message(message);
    }

    /// A line above the progress bar (stderr).
    pub fn println(&self, line: impl AsRef<str>) {
        if self.silent {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            self.bar.println(line.as_ref());
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_to_parses_lists_and_refuses_typos() {
        let p = |s: &str| s.parse::<ReportTo>();
        assert_eq!(p("all"), Ok(ReportTo::default()));
        assert_eq!(p("tensorboard,jsonl"), Ok(ReportTo::default()));
        assert_eq!(
            p("jsonl").map(|r| (r.jsonl, r.tensorboard)),
            Ok((true, false))
        );
        assert_eq!(p("none").map(|r| r.to_string()).as_deref(), Ok("none"));
        assert!(p("wandb")
            .unwrap_err()
            .contains("tensorboard, jsonl, all or none"));
    }

    #[test]
    fn report_to_none_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let none = ReportTo {
            jsonl: false,
            tensorboard: false,
        };
        let mut logger = Logger::open(dir.path(), none, 10, 0, false).unwrap();
        logger.record(1, "train", &[("loss", 1.0)]).unwrap();
        assert!(!dir.path().join(METRICS_FILE).exists());
        assert!(!dir.path().join(TENSORBOARD_DIR).exists());
    }
}
