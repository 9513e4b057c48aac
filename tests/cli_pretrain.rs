//! `bertkit pretrain` through the binary, on State of the Union prose (scripts/fetch-assets.sh):
//! the loss falls; a killed run resumes to the same weights bit for bit; damaged checkpoints are
//! detected and skipped; non-finite steps are skipped and stop the run; the logs read back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;
use common::{bertkit, copy_dir, python_script, repo, run_ok};

/// SOTU speeches 1900-1929 as training data and 1930-1931 held out, tokenized with a 2000-word
/// vocabulary trained on them, at seq 64 with NSP; built once per test binary.
fn data() -> &'static (PathBuf, PathBuf) {
    static DATA: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DATA.get_or_init(|| {
        let root = tempfile::tempdir().unwrap().keep();
        let train = common::sotu_files(&["190", "191", "192"]);
        let held = common::sotu_files(&["1930", "1931"]);
        common::vocab_and_shards(
            &root,
            2000,
            &train,
            &[("train", &train), ("heldout", &held)],
        );
        (root.join("train"), root.join("heldout"))
    })
}

/// `bertkit pretrain` with the CPU recipe on [`data`] into `out`, plus `extra` overrides.
fn pretrain(out: &Path, extra: &[&str]) -> Command {
    let (train, held) = data();
    let mut c = bertkit();
    c.arg("pretrain")
        .arg("--config")
        .arg(repo().join("configs/pretrain/cpu-tiny.toml"))
        .arg("--set")
        .arg(format!("data={:?}", train.display().to_string()))
        .arg("--set")
        .arg(format!("eval_data={:?}", held.display().to_string()))
        .arg("--set")
        .arg(format!("out={:?}", out.display().to_string()));
    for e in extra {
        c.arg("--set").arg(e);
    }
    c
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn series(records: &[serde_json::Value], split: &str, name: &str) -> Vec<(u64, f64)> {
    records
        .iter()
        .filter(|r| r["split"] == split)
        .map(|r| (r["step"].as_u64().unwrap(), r[name].as_f64().unwrap()))
        .collect()
}

#[test]
fn loss_falls_on_real_text_and_logs_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    run_ok(&mut pretrain(
        &out,
        &[
            "schedule.steps=100",
            "eval.every=25",
            "log.every=5",
            "checkpoint.every=50",
        ],
    ));
    let records = metrics(&out);
    let train = series(&records, "train", "mlm_loss");
    assert_eq!(train.len(), 20);
    let mean = |v: &[(u64, f64)]| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&train[..4]), mean(&train[16..]));
    // Uniform guessing over 2000 words is ln(2000) = 7.6.
    assert!(first > 6.8, "first MLM losses {first}");
    assert!(
        last < first - 0.8,
        "MLM loss did not fall clearly: {first} -> {last}"
    );
    let eval = series(&records, "eval", "mlm_loss");
    assert_eq!(
        eval.iter().map(|e| e.0).collect::<Vec<_>>(),
        [25, 50, 75, 100]
    );
    assert!(
        eval[3].1 < eval[0].1 - 0.3,
        "held-out loss did not fall: {eval:?}"
    );
    // 100 steps of BERT-tiny reach the unigram stage (the most frequent words), far above
    // chance (1/2000).
    let acc = series(&records, "eval", "mlm_accuracy");
    assert!(acc[3].1 > 0.03, "held-out MLM accuracy {acc:?}");

    // The TensorBoard file holds the same values, read by the real tensorboard package.
    let tb_dir = out.join("tensorboard");
    let event = std::fs::read_dir(&tb_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let tb = python_script(
        "check_tensorboard.py",
        &[event.as_os_str()],
        "the tensorboard package",
    );
    for name in [
        "mlm_loss",
        "mlm_accuracy",
        "nsp_accuracy",
        "lr",
        "grad_norm",
        "sequences_per_s",
        "tokens_per_s",
        "loss_scale",
    ] {
        let want = series(&records, "train", name);
        let got = tb[format!("train/{name}")]
            .as_array()
            .unwrap_or_else(|| panic!("no train/{name}"));
        assert_eq!(got.len(), want.len(), "train/{name}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g[0].as_u64().unwrap(), w.0);
            assert_eq!(
                g[1].as_f64().unwrap() as f32,
                w.1 as f32,
                "train/{name} at {}",
                w.0
            );
        }
    }
    assert_eq!(tb["eval/mlm_loss"].as_array().unwrap().len(), 4);

    // The checkpoint is a model folder the other commands read.
    let info = run_ok(
        bertkit()
            .arg("info")
            .arg(out.join("checkpoints/step-00000100")),
    );
    assert!(info.contains("BertForPreTraining"), "{info}");
}

fn file(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap()
}

#[test]
fn killed_run_resumes_bit_for_bit_and_damaged_checkpoints_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [
        "schedule.steps=40",
        "checkpoint.every=4",
        "checkpoint.keep=3",
        "eval.every=0",
        "log.every=1",
    ];
    // Uninterrupted.
    let a = dir.path().join("a");
    run_ok(&mut pretrain(&a, &settings));
    let final_a = a.join("checkpoints/step-00000040");

    // Killed (SIGKILL) once its first checkpoint exists, then resumed.
    let b = dir.path().join("b");
    let mut child = pretrain(&b, &settings)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !b.join("checkpoints/step-00000004").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it could be killed"
    );
    let killed_at: Vec<_> = std::fs::read_dir(b.join("checkpoints")).unwrap().collect();
    assert!(
        !b.join("checkpoints/step-00000040").exists(),
        "{killed_at:?}"
    );
    let out = run_ok(pretrain(&b, &settings).args(["--resume", "auto"]));
    assert!(out.contains("resumed from"), "{out}");
    // Only complete checkpoints remain (a write the kill interrupted is cleaned up).
    for e in std::fs::read_dir(b.join("checkpoints")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(name.starts_with("step-"), "left over: {name}");
    }
    let final_b = b.join("checkpoints/step-00000040");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            file(&final_a, f) == file(&final_b, f),
            "{f} differs after kill + resume"
        );
    }
    // The metrics of the resumed run have one record per step, as the uninterrupted run's.
    let (ma, mb) = (
        series(&metrics(&a), "train", "loss"),
        series(&metrics(&b), "train", "loss"),
    );
    assert_eq!(ma, mb);

    // Damage the newest two checkpoints of a finished run: a truncated weights file and a
    // changed byte in the optimizer state. `--resume auto` names both, resumes from the third,
    // and ends with the same weights.
    let c = dir.path().join("c");
    copy_dir(&b, &c);
    let ck = c.join("checkpoints");
    let weights = ck.join("step-00000040/model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let opt = ck.join("step-00000036/optimizer.safetensors");
    let mut bytes = std::fs::read(&opt).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&opt, bytes).unwrap();
    let out = pretrain(&c, &settings)
        .args(["--resume", "auto"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipping checkpoint")
            && stderr.contains("step-00000040")
            && stderr.contains("truncated"),
        "{stderr}"
    );
    assert!(
        stderr.contains("step-00000036") && stderr.contains("sha256"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("step-00000032"));
    assert!(
        file(&final_a, "model.safetensors") == file(&ck.join("step-00000040"), "model.safetensors")
    );

    // Without --resume, an out with checkpoints is refused, and nothing in it changes.
    let out = pretrain(&c, &settings).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume auto"));
}

#[test]
fn non_finite_steps_are_skipped_then_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // An absurd learning rate overflows the weights after the first update.
    let result = pretrain(
        &out,
        &[
            "optimizer.name=\"adamw\"",
            "optimizer.lr=1e38",
            "optimizer.max_grad_norm=0",
            "schedule.name=\"constant\"",
            "schedule.warmup=0",
            "schedule.steps=20",
            "max_nonfinite_steps=3",
            "checkpoint.every=1",
            "checkpoint.keep=100",
            "eval.every=0",
            "log.every=1",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(stderr.contains("3 non-finite steps in a row"), "{stderr}");
    assert!(stderr.contains("step skipped (1 in a row"), "{stderr}");
    // Every checkpoint written holds finite weights.
    for ck in std::fs::read_dir(out.join("checkpoints")).unwrap() {
        let ck = ck.unwrap().path();
        if ck.file_name().unwrap().to_string_lossy().starts_with('.') {
            continue;
        }
        let bytes = file(&ck, "model.safetensors");
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let finite = bytes[8 + header..]
            .chunks_exact(4)
            .all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_finite());
        assert!(finite, "{} holds non-finite weights", ck.display());
    }
}

/// bf16 and fp16 (f32 master weights, casts inside the graph) follow the f32 run closely on the
/// CPU; CUDA is where they are fast (docs/PERFORMANCE.md).
#[test]
fn mixed_precision_follows_f32() {
    let dir = tempfile::tempdir().unwrap();
    let run = |precision: &str| {
        let out = dir.path().join(precision);
        run_ok(&mut pretrain(
            &out,
            &[
                &format!("precision=\"{precision}\""),
                "schedule.steps=4",
                "log.every=1",
                "eval.every=0",
                "checkpoint.every=0",
            ],
        ));
        series(&metrics(&out), "train", "loss")
    };
    let f32 = run("f32");
    for precision in ["bf16", "fp16"] {
        let other = run(precision);
        assert_eq!(other.len(), 4);
        for ((_, a), (_, b)) in f32.iter().zip(&other) {
            assert!(
                (a - b).abs() < 0.01 * a,
                "{precision}: {other:?} vs f32 {f32:?}"
            );
        }
        // Not the f32 computation under another name.
        assert!(
            f32.iter().zip(&other).any(|(a, b)| a.1 != b.1),
            "{precision} equals f32 exactly"
        );
    }
}

/// Phase 2 (`init_from`) starts from the phase-1 weights with a new optimizer and schedule.
#[test]
fn phase_two_starts_from_phase_one_weights() {
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, fresh) = (
        dir.path().join("p1"),
        dir.path().join("p2"),
        dir.path().join("fresh"),
    );
    let common = ["eval.every=0", "log.every=1", "checkpoint.every=0"];
    let with = |extra: &[&str]| -> Vec<String> {
        common.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let phase1 = with(&["schedule.steps=60"]);
    run_ok(&mut pretrain(&p1, &args(&phase1)));
    let init = format!(
        "init_from={:?}",
        p1.join("checkpoints/step-00000060").display().to_string()
    );
    let phase2 = with(&["schedule.steps=3", "optimizer.lr=1e-3", &init]);
    run_ok(&mut pretrain(&p2, &args(&phase2)));
    run_ok(&mut pretrain(
        &fresh,
        &args(&with(&["schedule.steps=3", "optimizer.lr=1e-3"])),
    ));
    let loss = |out: &Path| series(&metrics(out), "train", "mlm_loss");
    let (l1, l2, l0) = (loss(&p1), loss(&p2), loss(&fresh));
    // Phase 2's first loss continues phase 1's, far below a fresh model's.
    assert!(l2[0].1 < l0[0].1 - 0.5, "phase 2 {l2:?}, fresh {l0:?}");
    assert!(
        (l2[0].1 - l1.last().unwrap().1).abs() < 0.5,
        "phase 2 {l2:?}, phase 1 {l1:?}"
    );
    // New optimizer and schedule: 3 updates, the warmup's lr 0 at the first step.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p2.join("checkpoints/step-00000003/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["optimizer_steps"], 3);
    assert_eq!(series(&metrics(&p2), "train", "lr")[0].1, 0.0);
}

/// General distillation (a recipe's `[distill]`): a 1-layer student of half the width learns a
/// 2-layer teacher's MLM predictions, hidden states (through a projection) and attention on
/// the same shards. The terms fall, the projection is in the checkpoints, an interrupted run
/// resumes bit for bit, and teachers that do not fit are refused with a message.
#[test]
fn general_distillation_learns_from_a_teacher_and_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let teacher_run = dir.path().join("teacher");
    run_ok(&mut pretrain(
        &teacher_run,
        &["schedule.steps=60", "eval.every=0", "checkpoint.every=0"],
    ));
    let teacher = teacher_run.join("checkpoints/step-00000060");
    let tiny = std::fs::read_to_string(repo().join("configs/models/bert-tiny.toml")).unwrap();
    let student = |heads: usize| {
        let path = dir.path().join(format!("student-{heads}.toml"));
        let text = tiny
            .replace("hidden_size = 128", "hidden_size = 64")
            .replace("num_hidden_layers = 2", "num_hidden_layers = 1")
            .replace("intermediate_size = 512", "intermediate_size = 256")
            .replace(
                "num_attention_heads = 2",
                &format!("num_attention_heads = {heads}"),
            );
        std::fs::write(&path, text).unwrap();
        format!("model={:?}", path.display().to_string())
    };
    let with_teacher = |t: &Path| format!("distill.teacher={:?}", t.display().to_string());
    let settings: Vec<String> = [
        student(2),
        with_teacher(&teacher),
        "distill.hidden=1".into(),
        "distill.attention=1".into(),
        "schedule.steps=30".into(),
        "checkpoint.every=10".into(),
        "checkpoint.keep=5".into(),
        "eval.every=0".into(),
        "log.every=1".into(),
    ]
    .to_vec();
    let args: Vec<&str> = settings.iter().map(String::as_str).collect();
    let a = dir.path().join("a");
    run_ok(&mut pretrain(&a, &args));
    let records = metrics(&a);
    let mean = |s: &[(u64, f64)]| s.iter().map(|x| x.1).sum::<f64>() / s.len() as f64;
    for term in ["soft_mlm_kl", "layer_loss"] {
        let s = series(&records, "train", term);
        assert_eq!(s.len(), 30, "{term}");
        let (first, last) = (mean(&s[..5]), mean(&s[25..]));
        assert!(
            last < 0.8 * first && last > 0.0,
            "{term} did not fall: {first} -> {last}"
        );
    }
    let ckpt = a.join("checkpoints/step-00000030");
    let bytes = file(&ckpt, "model.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("distill.hidden_projection.weight")
            .unwrap()
            .shape(),
        [128, 64]
    );
    // Interrupted after step 10, resumed: the same weights and moments.
    let b = dir.path().join("b");
    copy_dir(&a, &b);
    for step in ["20", "30"] {
        std::fs::remove_dir_all(b.join(format!("checkpoints/step-000000{step}"))).unwrap();
    }
    let out = run_ok(pretrain(&b, &args).args(["--resume", "auto"]));
    assert!(out.contains("resumed from"), "{out}");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            file(&ckpt, f) == file(&b.join("checkpoints/step-00000030"), f),
            "{f} differs after the resume"
        );
    }
    // Teachers that do not fit.
    let refused = |extra: &[String], says: &str| {
        let mut all: Vec<String> = settings.clone();
        all.extend(extra.iter().cloned());
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        let o = pretrain(&dir.path().join("refused"), &args)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(says), "{extra:?}: {e}");
    };
    refused(&[student(1)], "the teacher has 2 heads, the student 1");
    let heads = repo().join("tests/fixtures/hf-reference/tiny_heads");
    refused(
        &[with_teacher(&heads.join("sequence_classification"))],
        "has no masked-LM head",
    );
    refused(
        &[with_teacher(
            &repo().join("tests/fixtures/hf-reference/tiny_pretraining"),
        )],
        "vocabulary is not the data's",
    );
    refused(
        &["distill.alpha=2".into()],
        "distill.alpha must be within 0 and 1",
    );
}

/// `bench-train --json` times each step and says where its time went (the phases are measured
/// where the step waits anyway, the optimizer is the rest), and the time to the first step.
#[test]
fn bench_train_reports_the_step_and_its_phases() {
    let out = run_ok(bertkit().current_dir(repo()).args([
        "bench-train",
        "--model",
        "configs/models/bert-tiny.toml",
        "--vocab",
        "100",
        "--batch",
        "2",
        "--seq",
        "16",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--optimizer",
        "lamb",
        "--json",
    ]));
    let r = common::last_json(&out);
    assert_eq!(r["all_reduce"], "none");
    assert_eq!(r["losses"].as_array().unwrap().len(), 4);
    assert!(
        r["kernels_compiled_per_step"].is_null(),
        "no kernel log: {r}"
    );
    let step = r["step_ms_median"].as_f64().unwrap();
    let first = r["first_step_s"].as_f64().unwrap();
    assert!(step > 0.0 && first > 0.0, "{r}");
    assert!(r["start_to_first_step_s"].as_f64().unwrap() >= first, "{r}");
    let phases = &r["phase_ms_median"];
    let part = |k: &str| {
        phases[k]
            .as_f64()
            .unwrap_or_else(|| panic!("phase {k}: {r}"))
    };
    let fb = part("forward_backward");
    assert!(fb > 0.0, "{r}");
    for k in ["all_reduce", "grad_norm", "optimizer"] {
        assert!(part(k) >= 0.0, "{k}: {r}");
    }
    // Medians of parts need not add up to the median step exactly, but each is within it.
    assert!(fb <= step * 1.5, "{r}");
}

/// `--device wgpu` in a build without the wgpu backend says how to get one.
#[cfg(not(feature = "wgpu"))]
#[test]
fn a_wgpu_device_in_a_build_without_it_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = pretrain(&dir.path().join("run"), &[])
        .args(["--device", "wgpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("built without wgpu; rebuild with `--features wgpu`"),
        "{err}"
    );
    assert!(!dir.path().join("run").exists());
}
