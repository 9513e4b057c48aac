//! `bertkit vocab` and `bertkit prep` through the binary: a killed prep resumes to the same
//! output, and the vocabulary loads in bertkit's tokenizer from both files it writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bertkit, python_script, run_ok, sotu};

fn prep(out: &Path, tokenizer: &Path) -> Command {
    let mut c = bertkit();
    c.arg("prep")
        .arg("--input")
        .arg(sotu())
        .arg("--tokenizer")
        .arg(tokenizer)
        .arg("--out")
        .arg(out)
        .args([
            "--nsp",
            "--shard-size",
            "150kB",
            "--threads",
            "1",
            "--quiet",
        ]);
    c
}

fn shard_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with("shard-") && n.ends_with(".parquet")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn vocab_then_prep_killed_and_resumed_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let vocab = tmp.path().join("vocab");
    // A real WordPiece vocabulary from 40 addresses.
    let files: Vec<PathBuf> = {
        let mut f: Vec<_> = std::fs::read_dir(sotu())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        f.sort();
        f.truncate(40);
        f
    };
    let mut cmd = bertkit();
    cmd.args(["vocab", "--vocab-size", "3000", "--lowercase", "--out"])
        .arg(&vocab)
        .arg("--input")
        .args(&files);
    let out = run_ok(&mut cmd);
    assert!(out.contains("3000 tokens from 40 documents"), "{out}");
    for f in ["tokenizer.json", "vocab.txt", "tokenizer_config.json"] {
        assert!(vocab.join(f).exists(), "{f}");
    }
    // bertkit's own tokenizer reads both files the same way.
    let from_json = bertkit_model::tokenizer::BertTokenizer::from_dir(&vocab).unwrap();
    let from_vocab =
        bertkit_model::tokenizer::BertTokenizer::from_vocab(&vocab.join("vocab.txt"), true)
            .unwrap();
    let text = "Fellow-Citizens of the Senate, the state of the Union is strong.";
    let input = bertkit_model::tokenizer::TextInput {
        text: text.into(),
        text_pair: None,
    };
    let a = from_json
        .encode(std::slice::from_ref(&input), None)
        .unwrap();
    let b = from_vocab
        .encode(std::slice::from_ref(&input), None)
        .unwrap();
    assert_eq!(a, b);
    // Hugging Face loads the folder three ways (AutoTokenizer, BertTokenizer from vocab.txt,
    // tokenizers) with the same ids as bertkit.
    let texts = [
        text,
        "Ça va? Naïve café, 1,234.56 dollars; the WAR of 1812!",
    ];
    let mut args = vec![vocab.as_os_str()];
    args.extend(texts.iter().map(std::ffi::OsStr::new));
    let hf = python_script("check_hf_vocab.py", &args, "transformers");
    assert_eq!(hf["class"], "BertTokenizer");
    for (i, t) in texts.iter().enumerate() {
        let input = bertkit_model::tokenizer::TextInput {
            text: t.to_string(),
            text_pair: None,
        };
        let ours = from_json
            .encode(std::slice::from_ref(&input), None)
            .unwrap()[0]
            .0
            .clone();
        let theirs: Vec<u32> = serde_json::from_value(hf["ids"][i].clone()).unwrap();
        assert_eq!(ours, theirs, "{t}");
    }
    let vocab_lines = std::fs::read_to_string(vocab.join("vocab.txt")).unwrap();
    let first: Vec<&str> = vocab_lines.lines().take(5).collect();
    assert_eq!(first, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]);

    // Uninterrupted.
    let full = tmp.path().join("full");
    run_ok(&mut prep(&full, &vocab));
    let manifest = std::fs::read_to_string(full.join("manifest.json")).unwrap();
    let total = shard_count(&full);
    assert!(total >= 20, "{total} shards");

    // Killed after a few shards, then rerun.
    let cut = tmp.path().join("cut");
    let mut child = prep(&cut, &vocab)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while shard_count(&cut) < 3 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = shard_count(&cut);
    assert!(
        done >= 3 && done < total,
        "killed too late: {done} of {total}"
    );
    assert!(!cut.join("manifest.json").exists());
    // Every visible shard is complete (temporary files are hidden and named .*.tmp-PID).
    for e in std::fs::read_dir(&cut).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "parquet") {
            bertkit_train::shards::read_shard(&p).unwrap();
        }
    }
    let out = run_ok(&mut prep(&cut, &vocab));
    assert!(out.contains(&format!("{done} already done")), "{out}");
    assert_eq!(
        std::fs::read_to_string(cut.join("manifest.json")).unwrap(),
        manifest
    );
}

#[test]
fn bad_arguments_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bertkit()
        .args(["prep", "--input", "/no/such/file.txt", "--tokenizer"])
        .arg(tmp.path())
        .arg("--out")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/file.txt: no such file"), "{err}");
}

/// scripts/slurm/prep-array.sbatch as a 3-task SLURM array (its environment set as SLURM
/// would, tasks run one after another): each task reads only its own share of the input, the
/// last one writes the manifest, and the shards are byte for byte those of one `bertkit prep`.
#[test]
fn the_slurm_array_script_splits_prep_and_matches_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let tokenizer = common::repo().join("assets/all-MiniLM-L6-v2");
    let single = tmp.path().join("single");
    run_ok(&mut prep(&single, &tokenizer));
    let split = tmp.path().join("split");
    let script = common::repo().join("scripts/slurm/prep-array.sbatch");
    let mut printed = String::new();
    for task in 10..13 {
        let o = Command::new("bash")
            .arg(&script)
            .env("BERTKIT", env!("CARGO_BIN_EXE_bertkit"))
            .env("INPUT", sotu())
            .env("TOKENIZER", &tokenizer)
            .env("OUT", &split)
            .env("SHARD_SIZE", "150kB")
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .env("SLURM_ARRAY_TASK_MIN", "10")
            .env("SLURM_ARRAY_TASK_MAX", "12")
            .env("SLURM_CPUS_PER_TASK", "1")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains(&format!("task {} of 3", task - 10)), "{out}");
        assert!(out.contains("(its own file groups)"), "{out}");
        printed += &out;
    }
    assert_eq!(printed.matches("manifest.json").count(), 1, "{printed}");
    assert_eq!(
        std::fs::read(single.join("manifest.json")).unwrap(),
        std::fs::read(split.join("manifest.json")).unwrap()
    );
    assert_eq!(shard_count(&single), shard_count(&split));
}
