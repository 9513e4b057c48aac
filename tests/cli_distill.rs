//! `bertkit distill` end to end on a tiny teacher fine-tuned on toy sentences: a fresh student
//! learns the teacher's labels from its soft targets alone; a student of the teacher's own
//! layers with unlabelled text is a normal model folder (eval, export) with the teacher beside
//! it in metrics.json; an interrupted run resumes bit for bit; bad configurations are refused
//! with a message. NER and QA teachers (MiniLM fine-tuned on the CoNLL and SQuAD fixtures)
//! teach 3-layer students. A student of half the teacher's width learns its hidden states and
//! attention through a projection. (The loss terms against their definitions:
//! train/src/distill.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{bertkit, jsonl, repo, run_ok};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const FIXTURES: &str = "tests/fixtures/hf-reference/tiny_heads";

/// Toy two-class sentences (`start..start + n`): water words are one class, land words the other.
fn toy_rows(start: usize, n: usize) -> Vec<(String, &'static str)> {
    let water = ["boat", "sea", "harbour", "net"];
    let land = ["field", "road", "house", "hill"];
    (start..start + n)
        .map(|i| {
            let (word, label) = if i % 2 == 0 {
                (water[i / 2 % 4], "water")
            } else {
                (land[i / 2 % 4], "land")
            };
            (format!("the cat saw the {word} at dawn"), label)
        })
        .collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// The data and a teacher (the 2-layer tiny classifier fine-tuned on it to accuracy 1), made
/// once for every test.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for (name, start, n) in [("train.csv", 0, 64), ("val.csv", 64, 16)] {
            let mut csv = String::from("text,label\n");
            for (t, l) in toy_rows(start, n) {
                csv.push_str(&format!("{t},{l}\n"));
            }
            std::fs::write(root.join(name), csv).unwrap();
        }
        let mut text = String::from("text\n");
        for (t, _) in toy_rows(100, 32) {
            text.push_str(&format!("{t}\n"));
        }
        std::fs::write(root.join("unlabelled.csv"), text).unwrap();
        let tiny = repo().join(FIXTURES).join("sequence_classification");
        run_ok(bertkit().args([
            "finetune",
            "--task",
            "classify",
            "--model",
            s(&tiny),
            "--train",
            s(&root.join("train.csv")),
            "--validation",
            s(&root.join("val.csv")),
            "--out",
            s(&root.join("teacher")),
            "--epochs",
            "20",
            "--batch-size",
            "8",
            "--lr",
            "3e-3",
            "--max-seq-length",
            "32",
            "--report-to",
            "none",
        ]));
        let m = json(&root.join("teacher/metrics.json"));
        assert_eq!(m["best"]["accuracy"], 1.0, "the teacher did not fit: {m}");
        // A 1-layer config of the same width and vocabulary, for a fresh student.
        let mut config = json(&tiny.join("config.json"));
        config["num_hidden_layers"] = 1.into();
        std::fs::write(root.join("student.json"), config.to_string()).unwrap();
        // Half the width (a projection to the teacher's), the same 4 heads; and one of 2 heads.
        config["hidden_size"] = 16.into();
        config["intermediate_size"] = 32.into();
        std::fs::write(root.join("narrow.json"), config.to_string()).unwrap();
        config["num_attention_heads"] = 2.into();
        std::fs::write(root.join("two_heads.json"), config.to_string()).unwrap();
        Setup { _dir: dir, root }
    })
}

fn distill_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let st = setup();
    let mut v: Vec<String> = [
        "distill",
        "--teacher",
        s(&st.path("teacher")),
        "--train",
        s(&st.path("train.csv")),
        "--validation",
        s(&st.path("val.csv")),
        "--out",
        s(out),
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    v.extend(extra.iter().map(|a| a.to_string()));
    v
}

fn distill(out: &Path, extra: &[&str]) -> String {
    run_ok(bertkit().args(distill_args(out, extra)))
}

fn fails(out: &Path, extra: &[&str]) -> String {
    let o = bertkit().args(distill_args(out, extra)).output().unwrap();
    assert!(!o.status.success(), "expected a failure: {extra:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_fresh_student_learns_the_teachers_labels_from_soft_targets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fresh");
    // alpha 1: the labels' cross entropy weighs nothing; only the teacher teaches.
    let config = setup().path("student.json");
    distill(
        &out,
        &[
            "--student-config",
            s(&config),
            "--alpha",
            "1",
            "--epochs",
            "20",
        ],
    );
    let m = json(&out.join("metrics.json"));
    let evals = m["evaluations"].as_array().unwrap();
    let first = evals[0]["accuracy"].as_f64().unwrap();
    assert!(
        first <= 0.75,
        "a fresh student should start near chance: {m}"
    );
    assert_eq!(m["best"]["accuracy"], 1.0, "{m}");
    assert_eq!(m["student"]["layers"], 1);
    assert_eq!(m["teacher"]["layers"], 2);
    assert_eq!(m["teacher"]["validation"]["accuracy"], 1.0);
}

#[test]
fn a_student_of_the_teachers_layers_is_a_normal_model_folder() {
    let st = setup();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("student");
    let printed = distill(
        &out,
        &[
            "--student-layers",
            "1",
            "--unlabelled",
            s(&st.path("unlabelled.csv")),
            "--epochs",
            "2",
        ],
    );
    assert!(printed.contains("and 32 unlabelled"), "{printed}");
    let m = json(&out.join("metrics.json"));
    assert_eq!(m["distillation"]["unlabelled_examples"], 32);
    assert_eq!(m["distillation"]["train_examples"], 64);
    assert_eq!(
        (
            m["student"]["layers"].clone(),
            m["teacher"]["layers"].clone()
        ),
        (1.into(), 2.into())
    );
    assert!(
        m["student"]["parameters"].as_u64() < m["teacher"]["parameters"].as_u64(),
        "{m}"
    );
    // Both fp32 plans timed on this machine (the tiny model reads 64 positions at most).
    let lat = &m["plan_latency"];
    for who in ["teacher", "student"] {
        for shape in ["1x32_ms", "32x64_ms"] {
            assert!(
                lat[who][shape].as_f64().unwrap() > 0.0,
                "{who} {shape}: {m}"
            );
        }
    }
    assert_eq!(lat["student_speedup"].as_array().unwrap().len(), 2, "{m}");
    assert!(!out.join("plans-timed").exists());
    // Started from the teacher's top layer, it is right from the first evaluation.
    assert_eq!(m["evaluations"][0]["accuracy"], 1.0, "{m}");
    let config = json(&out.join("config.json"));
    assert_eq!(config["num_hidden_layers"], 1);
    assert_eq!(
        config["id2label"],
        json(&st.path("teacher/config.json"))["id2label"]
    );
    for f in ["finetune.json", "tokenizer.json", "README.md"] {
        assert!(out.join(f).exists(), "{f}");
    }
    // eval and export take it as any fine-tuned folder.
    let said =
        run_ok(bertkit().args(["eval", "--model", s(&out), "--data", s(&st.path("val.csv"))]));
    let said: Value = serde_json::from_str(&said).unwrap();
    assert_eq!(
        (said["accuracy"].clone(), said["examples"].clone()),
        (1.0.into(), 16.into())
    );
    run_ok(bertkit().args([
        "export",
        "--model",
        s(&out),
        "--out",
        s(&dir.path().join("student.plan")),
        "--no-tune",
        "--seq-buckets",
        "16,32",
        "--max-length",
        "32",
    ]));
    assert!(dir.path().join("student.plan/plan.json").exists());
}

#[test]
fn an_interrupted_distillation_resumes_bit_for_bit() {
    resumes_bit_for_bit(&["--student-layers", "1"]);
}

/// With the intermediate-layer terms and the projection (its weights and moments in the
/// checkpoints).
#[test]
fn an_interrupted_layer_distillation_resumes_bit_for_bit() {
    let narrow = setup().path("narrow.json");
    resumes_bit_for_bit(&[
        "--student-config",
        s(&narrow),
        "--hidden-weight",
        "1",
        "--attention-weight",
        "0.5",
    ]);
}

fn resumes_bit_for_bit(student: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    // 64 examples in batches of 8: 8 steps an epoch, 16 in all; checkpoints at 4, 8, 12, 16.
    let mut extra = student.to_vec();
    extra.extend([
        "--epochs",
        "2",
        "--save-steps",
        "4",
        "--save-total-limit",
        "10",
        "--logging-steps",
        "1",
    ]);
    distill(&a, &extra);
    let b = dir.path().join("b");
    common::copy_dir(&a, &b);
    for step in ["08", "12", "16"] {
        std::fs::remove_dir_all(b.join(format!("checkpoints/step-000000{step}"))).unwrap();
    }
    let mut resume = extra.to_vec();
    resume.extend(["--resume", "auto"]);
    let o = bertkit().args(distill_args(&b, &resume)).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("(step 4)"), "{stderr}");
    for file in [
        "model.safetensors",
        "checkpoints/step-00000016/optimizer.safetensors",
    ] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file} differs after the resume"
        );
    }
    let losses = |out: &Path| -> Vec<(u64, f64)> {
        jsonl(&out.join("metrics.jsonl"))
            .iter()
            .filter(|r| r["split"] == "train")
            .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(losses(&a), losses(&b));
    assert_eq!(losses(&a).len(), 16);
    // Other soft targets (another temperature changes no target; another teacher would):
    // here, other data cannot continue the checkpoints.
    let mut other = resume.clone();
    other.extend(["--max-train-examples", "32"]);
    let err = fails(&b, &other);
    assert!(err.contains("resume with the same data"), "{err}");
}

/// TinyBERT's two stages: a student of half the teacher's width learns the teacher's hidden
/// states (through a projection) and attention alone, then its predictions.
#[test]
fn a_narrower_student_learns_the_teachers_layers_through_a_projection() {
    let dir = tempfile::tempdir().unwrap();
    let layers = dir.path().join("layers");
    let narrow = setup().path("narrow.json");
    distill(
        &layers,
        &[
            "--student-config",
            s(&narrow),
            "--prediction-weight",
            "0",
            "--hidden-weight",
            "1",
            "--attention-weight",
            "1",
            "--epochs",
            "10",
            "--logging-steps",
            "1",
            "--save-steps",
            "40",
            "--no-plan-latency",
        ],
    );
    let m = json(&layers.join("metrics.json"));
    let d = &m["distillation"];
    assert_eq!(d["hidden_projection"], 32, "{m}");
    // The student's one layer learns from the teacher's top layer.
    assert_eq!(d["layer_map"], serde_json::json!([1]), "{m}");
    let losses: Vec<f64> = jsonl(&layers.join("metrics.jsonl"))
        .iter()
        .filter(|r| r["split"] == "train")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(
        last < 0.5 * first,
        "the intermediate terms did not fall: {first} -> {last}"
    );
    // The projection is trained and checkpointed, but the model folder is a normal one.
    // Each tensor's name and number of elements:
    let tensors = |path: &Path| -> Vec<(String, usize)> {
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().iter().product()))
            .collect()
    };
    let folder = tensors(&layers.join("model.safetensors"));
    assert!(!folder.iter().any(|(n, _)| n.contains("distill")));
    let last_ckpt = std::fs::read_dir(layers.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let in_ckpt = tensors(&last_ckpt.join("model.safetensors"));
    assert!(
        in_ckpt
            .iter()
            .any(|(n, _)| n == "distill.hidden_projection.weight"),
        "{in_ckpt:?}"
    );
    // The parameters reported are the model folder's (the projection not counted).
    let elements: usize = folder.iter().map(|(_, e)| e).sum();
    assert_eq!(m["student"]["parameters"], elements, "{m}");
    // Stage two: the predictions, from the soft targets alone.
    let out = dir.path().join("student");
    distill(
        &out,
        &[
            "--student",
            s(&layers),
            "--alpha",
            "1",
            "--epochs",
            "20",
            "--no-plan-latency",
        ],
    );
    let m = json(&out.join("metrics.json"));
    assert_eq!(m["best"]["accuracy"], 1.0, "{m}");
    assert_eq!(json(&out.join("config.json"))["hidden_size"], 16);
}

#[test]
fn bad_configurations_are_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let refused = |extra: &[&str], says: &str| {
        let e = fails(&out, extra);
        assert!(e.contains(says), "{extra:?}: expected {says:?} in {e}");
    };
    refused(&[], "choose the student");
    refused(&["--student-layers", "3"], "the teacher has 2 layers");
    refused(&["--student-layers", "0,5"], "5 is not one");
    refused(&["--student-layers", "1", "--alpha", "1.5"], "--alpha");
    refused(
        &["--student-layers", "1", "--temperature", "0"],
        "--temperature",
    );
    refused(
        &["--student-layers", "1", "--prediction-weight", "0"],
        "every loss term is off",
    );
    refused(
        &["--student-layers", "1", "--hidden-weight=-1"],
        "--hidden-weight must be",
    );
    refused(
        &[
            "--student-layers",
            "1",
            "--hidden-weight",
            "1",
            "--gradient-checkpointing",
        ],
        "drop --gradient-checkpointing",
    );
    // Attention distributions compare head to head.
    let two_heads = setup().path("two_heads.json");
    refused(
        &["--student-config", s(&two_heads), "--attention-weight", "1"],
        "the teacher has 4 heads, the student 2",
    );
    // A student that cannot read the teacher's token ids.
    let small = dir.path().join("small.json");
    let mut config = json(&setup().path("student.json"));
    config["vocab_size"] = 1000.into();
    std::fs::write(&small, config.to_string()).unwrap();
    refused(
        &["--student-config", s(&small)],
        "vocabulary of 1000 tokens",
    );
    // A multi-label teacher (the tiny classifier, as `bertkit finetune` leaves one).
    let multi = dir.path().join("multi");
    common::copy_dir(
        &repo().join(FIXTURES).join("sequence_classification"),
        &multi,
    );
    let mut config = json(&multi.join("config.json"));
    config["problem_type"] = "multi_label_classification".into();
    std::fs::write(multi.join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        multi.join("finetune.json"),
        r#"{"task": "classify", "max_seq_length": 32, "classify": {"glue": null,
            "text_column": "text", "text_pair_column": null, "label_column": "label",
            "problem_type": "multi_label_classification", "label_separator": ","}}"#,
    )
    .unwrap();
    let mut args = distill_args(&out, &["--student-layers", "1"]);
    let at = args.iter().position(|a| a == "--teacher").unwrap();
    args[at + 1] = s(&multi).to_string();
    let o = bertkit().args(&args).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(e.contains("MultiLabelClassification classifier"), "{e}");
    assert!(!out.exists(), "a refused run wrote {}", out.display());
}

#[test]
fn ner_and_qa_teachers_teach_students_of_three_of_their_layers() {
    let minilm = repo().join("assets/all-MiniLM-L6-v2");
    assert!(minilm.exists(), "run scripts/fetch-assets.sh first");
    let dir = tempfile::tempdir().unwrap();
    let conll = repo().join("assets/data/ner/conll2003_fixture.txt");
    let squad = repo().join("assets/data/qa/squad_v1_fixture.json");
    let runs: [(&str, &Path, &[&str], &str); 2] = [
        (
            "ner",
            &conll,
            &["--epochs", "20", "--batch-size", "2", "--lr", "5e-4"],
            "f1",
        ),
        (
            "qa",
            &squad,
            &["--epochs", "15", "--batch-size", "4", "--lr", "3e-4"],
            "exact_match",
        ),
    ];
    for (task, data, training, metric) in runs {
        let teacher = dir.path().join(task);
        let mut args = vec!["finetune", "--task", task, "--model", s(&minilm)];
        args.extend([
            "--train",
            s(data),
            "--validation",
            s(data),
            "--out",
            s(&teacher),
        ]);
        args.extend(training);
        args.extend(["--warmup-ratio", "0", "--report-to", "none"]);
        if task == "ner" {
            args.extend(["--tag-scheme", "iob1"]);
        } else {
            args.extend(["--max-seq-length", "128", "--doc-stride", "32"]);
        }
        run_ok(bertkit().args(&args));
        let student = dir.path().join(format!("{task}-student"));
        let mut args = vec!["distill", "--teacher", s(&teacher), "--student-layers", "3"];
        args.extend([
            "--train",
            s(data),
            "--validation",
            s(data),
            "--out",
            s(&student),
        ]);
        args.extend(training);
        args.extend([
            "--warmup-ratio",
            "0",
            "--report-to",
            "none",
            "--no-plan-latency",
        ]);
        run_ok(bertkit().args(&args));
        let m = json(&student.join("metrics.json"));
        assert_eq!(m["task"], task, "{m}");
        assert_eq!(
            (
                m["student"]["layers"].clone(),
                m["teacher"]["layers"].clone()
            ),
            (3.into(), 6.into())
        );
        let best = m["best"][metric].as_f64().unwrap();
        let teacher_score = m["teacher"]["validation"][metric].as_f64().unwrap();
        assert!(
            best >= 0.8 * teacher_score,
            "{task}: student {best} vs teacher {teacher_score}: {m}"
        );
        let config = json(&student.join("config.json"));
        let arch = if task == "ner" {
            "BertForTokenClassification"
        } else {
            "BertForQuestionAnswering"
        };
        assert_eq!(config["architectures"][0], arch);
        assert_eq!(config["num_hidden_layers"], 3);
    }
}
