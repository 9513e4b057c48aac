//! Plans against Hugging Face transformers' outputs (tests/fixtures/hf-reference), at every
//! precision; refused plans (tampered, truncated, wrong target, newer format); bad options.

use std::path::{Path, PathBuf};

use bertkit_export::plan::{export_plan, PlanOptions};
use bertkit_runtime::plan::{PlanMeta, PlanTask, Precision, Target};
use bertkit_runtime::{Encoded, Runtime, RuntimeOptions};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(path: &str) -> PathBuf {
    repo().join("tests/fixtures/hf-reference").join(path)
}

fn options(model: &Path, out: &Path, precision: Precision) -> PlanOptions {
    PlanOptions {
        model: model.to_path_buf(),
        out: out.to_path_buf(),
        precision,
        target: Target::Cpu,
        max_batch: 3,
        seq_buckets: vec![32, 64, 128],
        calibration: None,
        pooling: None,
        normalize: None,
        max_length: None,
        overwrite: false,
        allow_parity_failure: false,
        tune: false,
        int8_ffn_out_f32: false,
    }
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// The reference file's inputs, without their padding.
fn inputs(reference: &Value) -> Vec<Encoded> {
    let ids = matrix(&reference["input_ids"]);
    let types = matrix(&reference["token_type_ids"]);
    let mask = matrix(&reference["attention_mask"]);
    ids.iter()
        .zip(&types)
        .zip(&mask)
        .map(|((i, t), m)| {
            let len = m.iter().filter(|&&v| v > 0.0).count();
            Encoded {
                ids: i[..len].iter().map(|&v| v as u32).collect(),
                type_ids: t[..len].iter().map(|&v| v as u32).collect(),
            }
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn tiny_head_plans_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for (name, task) in [
        ("sequence_classification", PlanTask::SequenceClassification),
        ("token_classification", PlanTask::TokenClassification),
        ("question_answering", PlanTask::QuestionAnswering),
    ] {
        let model = fixture(&format!("tiny_heads/{name}"));
        let reference = json(&model.join("reference_outputs.json"));
        for precision in [Precision::Fp32, Precision::Int8] {
            let out = dir.path().join(format!("{name}-{precision}.plan"));
            let e = export_plan(&options(&model, &out, precision)).unwrap();
            assert_eq!(e.meta.task, task);
            let parity = e.meta.parity.as_ref().unwrap();
            assert!(parity.passed, "{name} {precision}: {parity:?}");
            let rt = Runtime::load(&out, &RuntimeOptions::default()).unwrap();
            let batch = inputs(&reference);
            let got = rt.run(&batch).unwrap();
            // fp32: transformers' outputs within 1e-4; int8: the tiny random models'
            // logits are ~0.1, so within 2e-2.
            let tol = if precision == Precision::Fp32 {
                1e-4
            } else {
                2e-2
            };
            for (i, (g, e)) in got.iter().zip(&batch).enumerate() {
                let len = e.ids.len();
                let want: Vec<f64> = match task {
                    PlanTask::SequenceClassification => matrix(&reference["logits"])[i].clone(),
                    PlanTask::TokenClassification => reference["logits"][i]
                        .as_array()
                        .unwrap()
                        .iter()
                        .take(len)
                        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                        .collect(),
                    _ => {
                        let s = &matrix(&reference["start_logits"])[i];
                        let en = &matrix(&reference["end_logits"])[i];
                        (0..len).flat_map(|p| [s[p], en[p]]).collect()
                    }
                };
                assert_eq!(g.data.len(), want.len(), "{name} row {i}");
                let d = max_diff(&g.data, &want);
                assert!(d <= tol, "{name} {precision} row {i}: max diff {d}");
            }
        }
    }
}

#[test]
fn minilm_embedding_plans_match_transformers_at_every_precision() {
    let model = repo().join("assets/all-MiniLM-L6-v2");
    assert!(model.exists(), "run scripts/fetch-assets.sh first");
    let reference = json(&fixture("minilm_reference.json"));
    let want = matrix(&reference["mean_pooled_normalized"]);
    let batch = inputs(&reference);
    let dir = tempfile::tempdir().unwrap();
    for (precision, max_abs, min_cos) in [
        (Precision::Fp32, 1e-4, 0.999_999),
        (Precision::Fp16, 2e-4, 0.99999),
        (Precision::Bf16, 2e-3, 0.9999),
        (Precision::Int8, 3e-2, 0.995),
    ] {
        let out = dir.path().join(format!("minilm-{precision}.plan"));
        let e = export_plan(&options(&model, &out, precision)).unwrap();
        // sentence-transformers' settings were read from the folder.
        let pooling = e.meta.pooling.clone().unwrap();
        assert!(pooling.normalize);
        assert_eq!(e.meta.tokenizer.max_length, 256);
        let rt = Runtime::load(&out, &RuntimeOptions::default()).unwrap();
        let got = rt.run(&batch).unwrap();
        for (g, w) in got.iter().zip(&want) {
            let d = max_diff(&g.data, w);
            let cos: f64 = g.data.iter().zip(w).map(|(a, b)| *a as f64 * b).sum();
            eprintln!("{precision}: max diff {d:.3e} cosine {cos:.6}");
            assert!(d <= max_abs, "{precision}: max diff {d}");
            assert!(cos >= min_cos, "{precision}: cosine {cos}");
        }
        // Tokenizing in the runtime gives the reference's ids.
        let texts: Vec<bertkit_model::TextInput> = reference["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| match v {
                Value::Array(p) => {
                    bertkit_model::TextInput::pair(p[0].as_str().unwrap(), p[1].as_str().unwrap())
                }
                v => bertkit_model::TextInput::single(v.as_str().unwrap()),
            })
            .collect();
        assert_eq!(rt.encode(&texts).unwrap(), batch);
    }
}

fn tiny_plan(dir: &Path) -> PathBuf {
    let out = dir.join("tiny.plan");
    export_plan(&options(
        &fixture("tiny_heads/sequence_classification"),
        &out,
        Precision::Fp32,
    ))
    .unwrap();
    out
}

/// The threads that compute a plan flush subnormals (`bertkit_model::denormals`), even when
/// the thread that loads the plan does not.
#[test]
fn the_runtime_threads_flush_subnormals() {
    use bertkit_model::denormals;
    if !denormals::SUPPORTED {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plan = tiny_plan(dir.path());
    let flags = std::thread::spawn(move || {
        denormals::clear_in_this_thread();
        let rt = Runtime::load(
            &plan,
            &RuntimeOptions {
                threads: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
        rt.on_each_thread(denormals::in_this_thread)
    })
    .join()
    .unwrap();
    assert_eq!(flags, [true; 3]);
}

fn load_err(plan: &Path) -> String {
    match Runtime::load(plan, &RuntimeOptions::default()) {
        Ok(_) => panic!("{} loaded", plan.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// Rewrites plan.json through `edit` and re-signs it, as someone editing by hand with care.
fn resign(plan: &Path, edit: impl Fn(&mut Value)) {
    let path = plan.join("plan.json");
    let mut v = json(&path);
    edit(&mut v);
    let text = serde_json::to_string_pretty(&v).unwrap();
    std::fs::write(&path, &text).unwrap();
    let digest = bertkit_runtime::plan::sha256_hex(text.as_bytes());
    std::fs::write(
        plan.join("plan.json.sha256"),
        format!("{digest}  plan.json\n"),
    )
    .unwrap();
}

#[test]
fn tampered_truncated_or_foreign_plans_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plan = tiny_plan(dir.path());
    Runtime::load(&plan, &RuntimeOptions::default()).unwrap();
    let weights = plan.join("weights.safetensors");
    let original = std::fs::read(&weights).unwrap();

    // One flipped byte in the weights.
    let mut bytes = original.clone();
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    let e = load_err(&plan);
    assert!(
        e.contains("weights.safetensors") && e.contains("sha256"),
        "{e}"
    );

    // Truncated.
    std::fs::write(&weights, &original[..original.len() / 2]).unwrap();
    let e = load_err(&plan);
    assert!(e.contains("truncated"), "{e}");
    std::fs::write(&weights, &original).unwrap();

    // plan.json edited (a label renamed) without its digest.
    let meta_path = plan.join("plan.json");
    let meta = std::fs::read_to_string(&meta_path).unwrap();
    std::fs::write(&meta_path, meta.replace("LABEL_1", "LABEL_X")).unwrap();
    let e = load_err(&plan);
    assert!(e.contains("plan.json") && e.contains("modified"), "{e}");
    std::fs::write(&meta_path, &meta).unwrap();
    Runtime::load(&plan, &RuntimeOptions::default()).unwrap();

    // Built for another target.
    resign(&plan, |v| v["target"] = "cuda".into());
    let e = load_err(&plan);
    assert!(
        e.contains("built for cuda") && e.contains("--target cpu"),
        "{e}"
    );

    // A newer format.
    resign(&plan, |v| v["format_version"] = 99.into());
    let e = load_err(&plan);
    assert!(e.contains("format version 99"), "{e}");

    // A file missing.
    resign(&plan, |v| v["format_version"] = 1.into());
    std::fs::remove_file(plan.join("tokenizer.json")).unwrap();
    let e = load_err(&plan);
    assert!(e.contains("tokenizer.json") && e.contains("missing"), "{e}");
    assert!(load_err(&dir.path().join("nothing.plan")).contains("not a plan folder"));
}

#[test]
fn export_refuses_to_overwrite_and_bad_models_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plan = tiny_plan(dir.path());
    let before = std::fs::read(plan.join("plan.json")).unwrap();
    let again = options(
        &fixture("tiny_heads/sequence_classification"),
        &plan,
        Precision::Int8,
    );
    let e = export_plan(&again).err().unwrap().to_string();
    assert!(
        e.contains("already exists") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(std::fs::read(plan.join("plan.json")).unwrap(), before);
    // With --overwrite the new plan replaces the old one.
    let e = export_plan(&PlanOptions {
        overwrite: true,
        ..again
    })
    .unwrap();
    assert_eq!(e.meta.precision, Precision::Int8);
    assert_eq!(PlanMeta::read(&plan).unwrap().precision, Precision::Int8);

    // A pretraining checkpoint is not a servable task; nothing is left behind.
    let out = dir.path().join("pretraining.plan");
    let e = export_plan(&options(
        &fixture("tiny_pretraining"),
        &out,
        Precision::Fp32,
    ))
    .err()
    .unwrap();
    assert!(format!("{e:#}").contains("cannot be exported"), "{e:#}");
    assert!(!out.exists());
    // A cuda plan: int8 is CPU-only; without CUDA in this build its parity cannot run, so it
    // is not written.
    let model = fixture("tiny_heads/sequence_classification");
    let cuda = |precision| {
        let e = export_plan(&PlanOptions {
            target: Target::Cuda,
            ..options(&model, &dir.path().join("gpu.plan"), precision)
        });
        format!("{:#}", e.err().unwrap())
    };
    assert!(cuda(Precision::Int8).contains("int8 plans run on the CPU only"));
    if !cfg!(feature = "cuda") {
        let e = cuda(Precision::Bf16);
        assert!(e.contains("built without CUDA"), "{e}");
    }
    assert!(!dir.path().join("gpu.plan").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_batch_over_the_limit_runs_in_slices_and_bad_ids_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let plan = tiny_plan(dir.path());
    let rt = Runtime::load(&plan, &RuntimeOptions::default()).unwrap();
    let texts: Vec<_> = (0..7)
        .map(|i| bertkit_model::TextInput::single(format!("sentence number {i} is here")))
        .collect();
    let all = rt.run_texts(&texts).unwrap();
    // max_batch is 3: the same outputs one by one.
    for (i, t) in texts.iter().enumerate() {
        let one = rt.run_texts(std::slice::from_ref(t)).unwrap();
        assert!(
            max_diff(
                &one[0].data,
                &all[i].data.iter().map(|&v| v as f64).collect::<Vec<_>>()
            ) < 1e-6
        );
    }
    let bad = Encoded {
        ids: vec![1, 999_999],
        type_ids: vec![0, 0],
    };
    let e = format!("{:#}", rt.run(&[bad]).err().unwrap());
    assert!(e.contains("token id 999999"), "{e}");
}

/// The burn executor (how CUDA plans run) on the CPU backend, against the CPU executor on the
/// same plans: f32 compute within 1e-4; fp16 compute (what fp16 plans compute in on a GPU)
/// within 2e-3 of it (2.9e-4 seen).
#[test]
fn the_burn_encoder_computes_what_the_cpu_executor_does() {
    use bertkit_runtime::burn_encoder::BurnEncoder;
    use burn::backend::Flex;
    use burn::tensor::DType;
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(PathBuf, Value)> = [
        "sequence_classification",
        "token_classification",
        "question_answering",
    ]
    .iter()
    .map(|name| {
        let model = fixture(&format!("tiny_heads/{name}"));
        let reference = json(&model.join("reference_outputs.json"));
        (model, reference)
    })
    .collect();
    let minilm = repo().join("assets/all-MiniLM-L6-v2");
    assert!(minilm.exists(), "run scripts/fetch-assets.sh first");
    cases.push((minilm, json(&fixture("minilm_reference.json"))));
    for (model, reference) in cases {
        for precision in [Precision::Fp32, Precision::Fp16] {
            let name = model.file_name().unwrap().to_string_lossy().into_owned();
            let out = dir.path().join(format!("{name}-{precision}.plan"));
            export_plan(&options(&model, &out, precision)).unwrap();
            let rt = Runtime::load(&out, &RuntimeOptions::default()).unwrap();
            let batch = inputs(&reference);
            let want = rt.run(&batch).unwrap();
            let meta = PlanMeta::read(&out).unwrap();
            let bytes = std::fs::read(out.join("weights.safetensors")).unwrap();
            let device = Default::default();
            let encoder = |dtype| {
                BurnEncoder::<Flex>::load(&meta, &bytes, "weights", &device, dtype).unwrap()
            };
            let (f32_encoder, half_encoder) = (encoder(DType::F32), encoder(DType::F16));
            for (encoder_out, tol) in [
                (f32_encoder.forward(&batch).unwrap(), 1e-4),
                (half_encoder.forward(&batch).unwrap(), 2e-3),
            ] {
                assert_eq!(encoder_out.len(), want.len());
                for (i, (g, w)) in encoder_out.iter().zip(&want).enumerate() {
                    assert_eq!((g.rows, g.width), (w.rows, w.width), "{name} row {i}");
                    let want64: Vec<f64> = w.data.iter().map(|&x| f64::from(x)).collect();
                    let d = max_diff(&g.data, &want64);
                    assert!(d <= tol, "{name} {precision} row {i}: max diff {d} > {tol}");
                }
            }
        }
    }
}
