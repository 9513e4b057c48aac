//! Data-parallel pretraining through the binary, ranks as real processes on this machine
//! talking over the TCP ring: 2 ranks of batch b make the updates of 1 rank of batch 2b (and of
//! 1 rank of batch b with 2 accumulation steps); a 2-rank run resumes exactly; a rank that dies
//! or never joins is named by the others within the timeout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;
use common::{bertkit, free_port, repo, run_ok};

/// Ten State of the Union speeches (1900-1909), a 1000-word vocabulary, seq 64 with NSP; and
/// a copy of BERT-tiny without dropout, so that runs split differently draw nothing different.
fn data() -> &'static (PathBuf, PathBuf) {
    static DATA: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DATA.get_or_init(|| {
        let root = tempfile::tempdir().unwrap().keep();
        let files = common::sotu_files(&["190"]);
        common::vocab_and_shards(&root, 1000, &files, &[("train", &files)]);
        let model = common::tiny_without_dropout(&root);
        (root.join("train"), model)
    })
}

/// The arguments of `bertkit pretrain` with the CPU recipe on [`data`] into `out`.
fn pretrain_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let (train, model) = data();
    let mut args = vec![
        "pretrain".to_string(),
        "--config".into(),
        repo()
            .join("configs/pretrain/cpu-tiny.toml")
            .display()
            .to_string(),
    ];
    let sets = [
        format!("data={:?}", train.display().to_string()),
        format!("model={:?}", model.display().to_string()),
        format!("out={:?}", out.display().to_string()),
        "eval.every=0".into(),
        "log.every=1".into(),
        "log.report_to=jsonl".into(),
        "distributed.timeout_s=30".into(),
        "distributed.rendezvous_timeout_s=60".into(),
    ];
    for s in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
        args.push("--set".into());
        args.push(s.to_string());
    }
    args
}

/// `bertkit launch --nproc-per-node 2 -- bertkit ARGS` on a free port; what it printed.
fn launch_two(args: &[String]) -> String {
    let port = free_port().to_string();
    run_ok(
        bertkit()
            .args([
                "launch",
                "--nproc-per-node",
                "2",
                "--master-port",
                &port,
                "--",
            ])
            .arg(env!("CARGO_BIN_EXE_bertkit"))
            .args(args),
    )
}

/// Rank `rank` of `world` as torchrun would start it.
fn rank(rank: usize, world: usize, port: u16, args: &[String]) -> Command {
    let mut c = bertkit();
    c.args(args)
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn spawn_ranks(world: usize, args: &[String]) -> Vec<Child> {
    let port = free_port();
    (0..world)
        .map(|r| rank(r, world, port, args).spawn().unwrap())
        .collect()
}

fn wait_all(children: Vec<Child>) -> Vec<Output> {
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn assert_ok(outputs: &[Output]) {
    for (r, o) in outputs.iter().enumerate() {
        assert!(
            o.status.success(),
            "rank {r} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Every tensor of `model.safetensors` in two checkpoints: the largest difference.
fn max_weight_diff(a: &Path, b: &Path) -> f32 {
    let (fa, fb) = (
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap(),
    );
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&fa).unwrap(),
        safetensors::SafeTensors::deserialize(&fb).unwrap(),
    );
    let mut names = ta.names();
    names.sort();
    assert_eq!(names.len(), tb.names().len());
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let mut max = 0f32;
    for name in names {
        let (x, y) = (ta.tensor(name).unwrap(), tb.tensor(name).unwrap());
        assert_eq!(x.shape(), y.shape(), "{name}");
        for (p, q) in floats(x.data()).iter().zip(floats(y.data())) {
            max = max.max((p - q).abs());
        }
    }
    max
}

const STEPS: &str = "schedule.steps=6";

#[test]
fn two_ranks_make_the_updates_of_one_rank_with_twice_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let final_step = |name: &str| dir.path().join(name).join("checkpoints/step-00000006");
    // 2 ranks x batch 8 (through the launcher), 1 rank x batch 16, 1 rank x 2 x batch 8.
    let two = pretrain_args(
        &dir.path().join("two"),
        &[STEPS, "batch.global=16", "batch.micro=8"],
    );
    let out = launch_two(&two);
    assert!(out.contains("[rank 0] pretrain: 6 steps"), "{out}");
    run_ok(bertkit().args(pretrain_args(
        &dir.path().join("big"),
        &[STEPS, "batch.global=16", "batch.micro=16"],
    )));
    run_ok(bertkit().args(pretrain_args(
        &dir.path().join("accum"),
        &[STEPS, "batch.global=16", "batch.micro=8"],
    )));
    let (two, big, accum) = (final_step("two"), final_step("big"), final_step("accum"));
    let d_big = max_weight_diff(&two, &big);
    let d_accum = max_weight_diff(&two, &accum);
    eprintln!("max |w| difference after 6 steps: vs batch 16 {d_big:e}, vs 2 x 8 {d_accum:e}");
    assert!(d_big <= 1e-6, "2 ranks vs 1 rank batch 16: {d_big}");
    assert!(d_accum <= 1e-6, "2 ranks vs 1 rank 2 x 8: {d_accum}");
    // The runs really trained (runs that changed nothing would also agree): the weights
    // moved between step 1 and step 6.
    let one = dir.path().join("one");
    run_ok(bertkit().args(pretrain_args(
        &one,
        &["schedule.steps=1", "batch.global=16", "batch.micro=16"],
    )));
    assert!(max_weight_diff(&two, &one.join("checkpoints/step-00000001")) > 1e-3);
    // Only rank 0 wrote logs: one record per step.
    let records = std::fs::read_to_string(dir.path().join("two/metrics.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 6, "{records}");
}

/// Gradients in buckets of one layer each (`distributed.bucket_mb=0.5`: BERT-tiny's layers are
/// 0.8 MB), all-reduced while the layers below are differentiated: 3 ranks of batch 8 make the
/// updates of 1 rank of batch 8 with 3 accumulation steps; so do 2 ranks with the overlap off
/// (against 2 x 8). bf16 on the wire (`distributed.reduce_dtype=bf16`) stays close to them
/// without being the same. Stable shapes (`batch.stable_shapes`) change no update.
#[test]
fn bucketed_overlapped_and_bf16_all_reduces_make_the_same_updates() {
    let dir = tempfile::tempdir().unwrap();
    let final_step = |name: &str| dir.path().join(name).join("checkpoints/step-00000006");
    let run = |name: &str, world: usize, extra: &[&str]| {
        let mut settings = vec![STEPS, "batch.micro=8"];
        settings.extend_from_slice(extra);
        let args = pretrain_args(&dir.path().join(name), &settings);
        if world == 1 {
            run_ok(bertkit().args(args));
        } else {
            assert_ok(&wait_all(spawn_ranks(world, &args)));
        }
    };
    run(
        "three",
        3,
        &["batch.global=24", "distributed.bucket_mb=0.5"],
    );
    run("one-3x8", 1, &["batch.global=24"]);
    run(
        "two-no-overlap",
        2,
        &["batch.global=16", "distributed.overlap=false"],
    );
    run("one-2x8", 1, &["batch.global=16"]);
    run(
        "two-bf16",
        2,
        &["batch.global=16", "distributed.reduce_dtype=\"bf16\""],
    );
    // Stable shapes (the MLM head on micro x max_predictions rows, as CUDA runs by default).
    run(
        "one-2x8-stable",
        1,
        &["batch.global=16", "batch.stable_shapes=true"],
    );
    let d3 = max_weight_diff(&final_step("three"), &final_step("one-3x8"));
    let d2 = max_weight_diff(&final_step("two-no-overlap"), &final_step("one-2x8"));
    let d_bf16 = max_weight_diff(&final_step("two-bf16"), &final_step("one-2x8"));
    eprintln!("max |w| difference after 6 steps: 3 ranks {d3:e}, 2 ranks no overlap {d2:e}, bf16 {d_bf16:e}");
    assert!(
        d3 <= 1e-6,
        "3 ranks, one-layer buckets, vs 1 rank 3 x 8: {d3}"
    );
    assert!(d2 <= 1e-6, "2 ranks without overlap vs 1 rank 2 x 8: {d2}");
    assert!(
        d_bf16 > 1e-6 && d_bf16 < 1e-2,
        "bf16 all-reduce vs f32: {d_bf16}"
    );
    let d_stable = max_weight_diff(&final_step("one-2x8-stable"), &final_step("one-2x8"));
    assert!(
        d_stable <= 1e-5,
        "stable shapes vs the masked rows only: {d_stable}"
    );
}

/// General distillation (`[distill]` with the hidden-state and attention terms, a projection
/// to the teacher's width): 2 ranks of batch 8 make the updates of 1 rank of batch 8 with 2
/// accumulation steps (the terms are averaged over the real tokens of all ranks).
#[test]
fn two_rank_distillation_makes_the_updates_of_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher");
    run_ok(bertkit().args(pretrain_args(
        &teacher,
        &["schedule.steps=2", "batch.global=16", "batch.micro=16"],
    )));
    let student = dir.path().join("student.toml");
    let config = std::fs::read_to_string(&data().1)
        .unwrap()
        .replace("hidden_size = 128", "hidden_size = 64")
        .replace("num_hidden_layers = 2", "num_hidden_layers = 1")
        .replace("intermediate_size = 512", "intermediate_size = 256");
    std::fs::write(&student, config).unwrap();
    let settings = [
        STEPS.to_string(),
        "batch.global=16".into(),
        "batch.micro=8".into(),
        format!("model={:?}", student.display().to_string()),
        format!(
            "distill.teacher={:?}",
            teacher
                .join("checkpoints/step-00000002")
                .display()
                .to_string()
        ),
        "distill.hidden=1".into(),
        "distill.attention=1".into(),
    ];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let (two, one) = (dir.path().join("two"), dir.path().join("one"));
    launch_two(&pretrain_args(&two, &settings));
    run_ok(bertkit().args(pretrain_args(&one, &settings)));
    let last = |out: &Path| out.join("checkpoints/step-00000006");
    let d = max_weight_diff(&last(&two), &last(&one));
    assert!(d <= 1e-6, "2 ranks x 8 vs 1 rank x 2 x 8: {d}");
    let series = |out: &Path, name: &str| -> Vec<f64> {
        common::jsonl(&out.join("metrics.jsonl"))
            .iter()
            .map(|r| r[name].as_f64().unwrap())
            .collect()
    };
    for name in ["loss", "layer_loss", "soft_mlm_kl"] {
        let (a, b) = (series(&two, name), series(&one, name));
        assert_eq!(a.len(), 6, "{name}");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                "{name}: {a:?} vs {b:?}"
            );
        }
        // (The 2-step teacher's MLM distributions are near uniform: its soft term is flat.)
        if name != "soft_mlm_kl" {
            assert!(a[5] < a[0], "{name} did not fall: {a:?}");
        }
    }
}

/// `bertkit launch -- bertkit finetune`: 2 ranks of batch 4 make the updates of 1 rank of batch
/// 4 with 2 accumulation steps (dropout on: rank r draws what micro-batch r draws in one
/// process), with the same evaluations; only rank 0 writes; a 2-rank run resumes from its
/// checkpoint to the same weights.
#[test]
fn two_rank_finetuning_makes_the_updates_of_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::toy_csv(dir.path(), "toy.csv", 24);
    let tiny = repo().join("tests/fixtures/hf-reference/tiny_heads/sequence_classification");
    // 24 examples, 8 a step: 3 steps an epoch, 6 in all; a checkpoint after each epoch.
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "finetune",
            "--task",
            "classify",
            "--model",
            tiny.to_str().unwrap(),
            "--train",
            data.to_str().unwrap(),
            "--validation",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "2",
            "--lr",
            "1e-3",
            "--batch-size",
            "4",
            "--logging-steps",
            "1",
            "--report-to",
            "jsonl",
            "--save-steps",
            "3",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    let two = dir.path().join("two");
    let printed = launch_two(&args(&two, &[]));
    assert!(printed.contains("[rank 0] fine-tuned 6 steps"), "{printed}");
    assert!(!printed.contains("[rank 1] fine-tuned"), "{printed}");
    let one = dir.path().join("one");
    run_ok(bertkit().args(args(&one, &["--accumulation", "2"])));
    let last = |out: &Path| out.join("checkpoints/step-00000006");
    let d = max_weight_diff(&last(&two), &last(&one));
    assert!(d <= 1e-6, "2 ranks x 4 vs 1 rank x 2 x 4: {d}");
    let first = two.join("checkpoints/step-00000003");
    assert!(
        max_weight_diff(&last(&two), &first) > 1e-3,
        "the runs did not train"
    );
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let evals = |out: &Path| json(out.join("metrics.json"))["evaluations"].clone();
    assert_eq!(evals(&two), evals(&one));
    let losses = |out: &Path| -> Vec<f64> {
        common::jsonl(&out.join("metrics.jsonl"))
            .iter()
            .filter(|r| r["split"] == "train")
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    };
    let (l2, l1) = (losses(&two), losses(&one));
    assert_eq!(l2.len(), 6);
    for (a, b) in l2.iter().zip(&l1) {
        assert!((a - b).abs() <= 1e-6, "{l2:?} vs {l1:?}");
    }

    // Resumed on 2 ranks from the epoch-1 checkpoint: the same final weights.
    let resumed = dir.path().join("resumed");
    common::copy_dir(&two, &resumed);
    std::fs::remove_dir_all(last(&resumed)).unwrap();
    launch_two(&args(&resumed, &["--resume", "auto"]));
    assert_eq!(
        std::fs::read(last(&two).join("model.safetensors")).unwrap(),
        std::fs::read(last(&resumed).join("model.safetensors")).unwrap()
    );
}

#[test]
fn a_two_rank_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [
        "schedule.steps=8",
        "batch.global=16",
        "batch.micro=4",
        "checkpoint.every=4",
        "checkpoint.keep=2",
    ];
    let a = dir.path().join("a");
    assert_ok(&wait_all(spawn_ranks(2, &pretrain_args(&a, &settings))));
    // Resume a second run from the first one's step-4 checkpoint (as after a crash there).
    let b = dir.path().join("b");
    let from = a.join("checkpoints/step-00000004");
    let to = b.join("checkpoints/step-00000004");
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(&from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
    let mut args = pretrain_args(&b, &settings);
    args.extend(["--resume".into(), "auto".into()]);
    let outputs = wait_all(spawn_ranks(2, &args));
    assert_ok(&outputs);
    assert!(String::from_utf8_lossy(&outputs[0].stdout).contains("resumed from"));
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let (x, y) = (
            std::fs::read(a.join("checkpoints/step-00000008").join(f)).unwrap(),
            std::fs::read(b.join("checkpoints/step-00000008").join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs after a 2-rank resume");
    }
}

/// `--warmup-kernels` runs the recipe's first steps (on the CPU there is nothing to cache; on
/// CUDA the kernels land in the kernel cache) and leaves `out` alone, even one with checkpoints.
/// Without a GPU backend's kernel log it runs `WARMUP_STEPS` (3) steps.
#[test]
fn warmup_kernels_runs_the_first_steps_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cache = dir.path().join("kernels");
    let args = pretrain_args(&out, &[STEPS, "batch.global=32", "batch.micro=8"]);
    let printed = run_ok(
        bertkit()
            .args(&args)
            .arg("--warmup-kernels")
            .arg("--kernel-cache")
            .arg(&cache),
    );
    assert!(
        printed.contains("warm-up: 3 optimizer step(s) of 2 micro-batch(es) of 8")
            && printed.contains(&format!("kernel cache {}", cache.display())),
        "{printed}"
    );
    assert!(!out.exists(), "the warm-up wrote into out");
    // The environment names the cache too; a run folder with checkpoints is not refused.
    run_ok(bertkit().args(pretrain_args(&out, &["schedule.steps=1"])));
    let printed = run_ok(
        bertkit()
            .args(&args)
            .arg("--warmup-kernels")
            .env("BERTKIT_KERNEL_CACHE", &cache),
    );
    assert!(
        printed.contains(&format!("kernel cache {}", cache.display())),
        "{printed}"
    );
    let checkpoints = std::fs::read_dir(out.join("checkpoints")).unwrap().count();
    assert_eq!(checkpoints, 1, "only the real run's checkpoint");
}

#[test]
fn a_killed_rank_is_named_by_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let args = pretrain_args(
        &out,
        &[
            "schedule.steps=100000",
            "checkpoint.every=0",
            "distributed.timeout_s=20",
            // One bucket per layer, all-reduced during the backward pass: the kill lands
            // between or inside buckets.
            "distributed.bucket_mb=0.5",
        ],
    );
    let mut children = spawn_ranks(2, &args);
    let start = Instant::now();
    // Wait until training is under way (rank 0 logs every step).
    loop {
        let steps = std::fs::read_to_string(out.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if steps >= 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    children[1].kill().unwrap();
    let killed = Instant::now();
    let rank0 = children.remove(0).wait_with_output().unwrap();
    let _ = children.remove(0).wait();
    let stderr = String::from_utf8_lossy(&rank0.stderr);
    assert!(!rank0.status.success());
    assert!(killed.elapsed() < Duration::from_secs(20), "{stderr}");
    assert!(
        stderr.contains("rank 1 (") && stderr.contains("exited or was killed"),
        "{stderr}"
    );
}

#[test]
fn a_rank_that_never_joins_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let args = pretrain_args(
        &dir.path().join("run"),
        &[STEPS, "distributed.rendezvous_timeout_s=2"],
    );
    // Ranks 0 and 2 of 3 start; rank 1 never does.
    let port = free_port();
    let started = Instant::now();
    let children = vec![
        rank(0, 3, port, &args).spawn().unwrap(),
        rank(2, 3, port, &args).spawn().unwrap(),
    ];
    let outputs = wait_all(children);
    assert!(started.elapsed() < Duration::from_secs(30));
    for o in &outputs {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            stderr.contains("rank 1 of 3 did not join within 2 s"),
            "{stderr}"
        );
    }
    // Nothing was written.
    assert!(!dir.path().join("run").exists());
}

#[test]
fn ranks_with_different_recipes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let port = free_port();
    let children = vec![
        rank(0, 2, port, &pretrain_args(&out, &[STEPS]))
            .spawn()
            .unwrap(),
        rank(
            1,
            2,
            port,
            &pretrain_args(&out, &[STEPS, "optimizer.lr=0.5"]),
        )
        .spawn()
        .unwrap(),
    ];
    for o in wait_all(children) {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            stderr.contains("rank 1 (") && stderr.contains("another recipe"),
            "{stderr}"
        );
    }
}
