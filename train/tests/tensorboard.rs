//! The TensorBoard event writer, read back by the real `tensorboard` Python package
//! (scripts/check_tensorboard.py; scripts/test.sh installs it and sets BERTKIT_PYTHON).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use bertkit_train::tensorboard::EventWriter;

fn check_tensorboard(file: &Path) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/check_tensorboard.py");
    std::process::Command::new(common::python())
        .arg(&script)
        .arg(file)
        .output()
        .expect("running python")
}

/// {tag: [(step, value)]} as tensorboard reads it.
fn read_back(file: &Path) -> BTreeMap<String, Vec<(u64, f32)>> {
    let out = check_tensorboard(file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check_tensorboard.py failed (needs tensorboard: scripts/test.sh installs it and sets BERTKIT_PYTHON)\n{stdout}\n{stderr}"
    );
    let json: BTreeMap<String, Vec<(u64, f64)>> = serde_json::from_str(&stdout).unwrap();
    json.into_iter()
        .map(|(tag, points)| {
            // tensorboard widens each f32 to a Python float, which is exact; so is narrowing back.
            let points = points.into_iter().map(|(s, v)| (s, v as f32)).collect();
            (tag, points)
        })
        .collect()
}

type Scalars = BTreeMap<String, Vec<(u64, f32)>>;

/// Writes several tags over several steps into a new file in `dir`; returns what was written.
fn write_scalars(dir: &Path) -> (PathBuf, Scalars) {
    let tags = [
        "train/loss",
        "train/lr",
        "eval/accuracy",
        "grad_norm",
        "métrique/ü",
    ];
    let specials = [
        -2.5f32,
        1e-7,
        -1e-7,
        0.1,
        0.0,
        -0.0,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::from_bits(1), // smallest subnormal
        std::f32::consts::PI,
        -123_456.79,
    ];
    let mut w = EventWriter::create(dir).unwrap();
    let mut want = Scalars::new();
    for (i, step) in [0u64, 1, 2, 10, 300, 1 << 20, 1 << 40]
        .into_iter()
        .enumerate()
    {
        for (t, tag) in tags.iter().enumerate() {
            let value = specials[(i * tags.len() + t) % specials.len()];
            w.add_scalar(tag, value, step).unwrap();
            want.entry(tag.to_string()).or_default().push((step, value));
        }
    }
    w.flush().unwrap();
    (w.path().to_path_buf(), want)
}

#[test]
fn tensorboard_reads_back_every_scalar_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("runs/a");
    let (file, want) = write_scalars(&run);

    assert_eq!(file.parent().unwrap(), run);
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    assert!(
        name.ends_with(&format!(".{}.bertkit", std::process::id())),
        "{name}"
    );

    let got = read_back(&file);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (tag, points) in &want {
        let got = &got[tag];
        assert_eq!(got.len(), points.len(), "{tag}");
        for (&(gs, gv), &(ws, wv)) in got.iter().zip(points) {
            assert_eq!(gs, ws, "{tag}");
            assert_eq!(
                gv.to_bits(),
                wv.to_bits(),
                "{tag} at step {ws}: {gv:e} != {wv:e}"
            );
        }
    }
}

#[test]
fn an_empty_file_has_no_scalars() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    w.flush().unwrap();
    assert!(read_back(w.path()).is_empty());
}

/// The checker must notice a damaged file rather than return fewer scalars.
#[test]
fn damaged_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = write_scalars(dir.path());
    let good = std::fs::read(&file).unwrap();
    let mut damaged = Vec::new();
    // A flipped bit in the last record's data; a bad length CRC; a truncated last record.
    let mut flipped = good.clone();
    flipped[good.len() - 10] ^= 1;
    damaged.push(flipped);
    let mut bad_len_crc = good.clone();
    bad_len_crc[8] ^= 0x80;
    damaged.push(bad_len_crc);
    damaged.push(good[..good.len() - 3].to_vec());
    for (i, bytes) in damaged.into_iter().enumerate() {
        std::fs::write(&file, bytes).unwrap();
        let out = check_tensorboard(&file);
        assert!(
            !out.status.success(),
            "case {i}: accepted\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("check_tensorboard:"), "case {i}: {stderr}");
    }
}

#[test]
fn create_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, "").unwrap();
    let err = format!(
        "{:#}",
        EventWriter::create(&blocker.join("run")).err().unwrap()
    );
    assert!(err.contains(&blocker.display().to_string()), "{err}");
}
