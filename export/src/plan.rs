//! `bertkit export` (plan format): a model folder -> a plan folder the runtime loads.
//!
//! What it does to the network (each listed in plan.json `optimizations`):
//! - Q, K and V projections fused into one `[hidden, 3·hidden]` matrix multiply;
//! - the attention scale `1/sqrt(head_dim)` folded into the query weights and bias;
//! - linear weights stored `[out, in]`, each output channel contiguous (the runtime packs f32
//!   weights into panels at load for its one, batch-invariant kernel), for int8 quantized per
//!   output channel to 8 bits, all four projections of every layer as ONNX Runtime's
//!   `quantize_dynamic` does (or all but the FFN output projection, `int8_ffn_out_f32`);
//! - fp16/bf16: weights and embeddings stored in half precision (the CPU computes in f32);
//! - padding-free execution (the runtime packs the sequences of a batch).
//!
//! Then it runs the plan on sample inputs against the fp32 checkpoint (parity), tunes threads
//! and the int8 kernel on this machine, and writes everything atomically: the plan appears
//! complete under its name or not at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bertkit_model::backend::Cpu;
use bertkit_model::weights::{HostTensor, ParamSink};
use bertkit_model::{Bert, BertTokenizer, LoadOptions, Task};
use bertkit_runtime::cpu::matmul::quantize_weight;
use bertkit_runtime::plan::{
    self, names, Head, PlanMeta, PlanTask, Pooling, PoolingMode, Precision, Shape, Target,
    TokenizerSettings,
};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::parity;
use crate::tune;

#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub model: PathBuf,
    pub out: PathBuf,
    pub precision: Precision,
    pub target: Target,
    pub max_batch: usize,
    pub seq_buckets: Vec<usize>,
    /// Sample inputs for the parity check (text lines, `text<TAB>pair` lines, or JSONL with
    /// `text`/`text_pair`); built-in sentences otherwise.
    pub calibration: Option<PathBuf>,
    /// Embedding plans: pooling and normalization (default: the sentence-transformers
    /// settings in the model folder, else mean pooling without normalization).
    pub pooling: Option<PoolingMode>,
    pub normalize: Option<bool>,
    /// Truncation length (default: sentence-transformers' max_seq_length, else the largest
    /// bucket, at most the model's position count).
    pub max_length: Option<usize>,
    pub overwrite: bool,
    /// Write the plan even if parity is outside the tolerance (recorded in plan.json).
    pub allow_parity_failure: bool,
    /// Measure threads and kernels on this machine (else all cores, the int8 kernel).
    pub tune: bool,
    /// int8 plans: keep the FFN output projection in f32. Its input (GELU outputs) has the
    /// widest range; f32 there is more accurate and slower.
    pub int8_ffn_out_f32: bool,
}

/// The plan written, and the checkpoint outputs parity was measured against.
pub struct Exported {
    pub meta: PlanMeta,
    pub dir: PathBuf,
}

fn plan_task(task: Task) -> Result<PlanTask> {
    PlanTask::for_model(task).with_context(|| {
        format!(
            "a {task} model cannot be exported to a plan; plans serve base (embedding), \
             sequence-classification, token-classification and question-answering models"
        )
    })
}

/// sentence-transformers' pooling and normalization, when the folder has them.
fn sentence_transformers_pooling(dir: &Path) -> (Option<PoolingMode>, Option<bool>) {
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
    };
    let pooling = read("1_Pooling/config.json").and_then(|v| {
        if v["pooling_mode_cls_token"].as_bool() == Some(true) {
            Some(PoolingMode::Cls)
        } else if v["pooling_mode_mean_tokens"].as_bool() == Some(true) {
            Some(PoolingMode::Mean)
        } else {
            None
        }
    });
    let normalize = read("modules.json").map(|v| {
        v.as_array().is_some_and(|m| {
            m.iter()
                .any(|e| e["type"].as_str() == Some("sentence_transformers.models.Normalize"))
        })
    });
    (pooling, normalize)
}

/// sentence-transformers' prompts and default prompt name (`config_sentence_transformers.json`;
/// none when the file is absent). A prompt that is not text is an error naming the file.
type Prompts = (BTreeMap<String, String>, Option<String>);

fn sentence_transformers_prompts(dir: &Path) -> Result<Prompts> {
    let path = dir.join("config_sentence_transformers.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Default::default());
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let mut prompts = BTreeMap::new();
    if let Some(map) = v.get("prompts").and_then(serde_json::Value::as_object) {
        for (name, p) in map {
            let p = p
                .as_str()
                .with_context(|| format!("{}: prompts.{name} is not a string", path.display()))?;
            prompts.insert(name.clone(), p.to_string());
        }
    }
    let default = v
        .get("default_prompt_name")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    if let Some(d) = default.as_ref().filter(|d| !prompts.contains_key(*d)) {
        bail!(
            "{}: default_prompt_name {d:?} is not one of its prompts",
            path.display()
        );
    }
    Ok((prompts, default))
}

/// Writes the plan folder `options.out`.
pub fn export_plan(options: &PlanOptions) -> Result<Exported> {
    let o = options;
    if o.out.exists() && !o.overwrite {
        bail!(
            "{} already exists; pass --overwrite to replace it",
            o.out.display()
        );
    }
    if o.target == Target::Cuda && o.precision == Precision::Int8 {
        bail!("--target cuda: int8 plans run on the CPU only; use fp16, bf16 or fp32 on a GPU");
    }
    if o.max_batch == 0 {
        bail!("--max-batch must be at least 1");
    }
    let device = Default::default();
    let (model, _report) =
        bertkit_model::checkpoint::load::<Cpu>(&o.model, &LoadOptions::default(), &device)
            .with_context(|| format!("loading {}", o.model.display()))?;
    let task = plan_task(model.task)?;
    let config = model.config.clone();
    let dir = bertkit_model::checkpoint::model_dir(&o.model);
    let mut buckets = o.seq_buckets.clone();
    buckets.sort_unstable();
    buckets.dedup();
    if buckets.first() == Some(&0) {
        bail!("--seq-buckets: a bucket of 0 tokens");
    }
    buckets.retain(|&b| b <= config.max_position_embeddings);
    if buckets.is_empty() {
        buckets.push(config.max_position_embeddings);
    }
    let st_max = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(dir.join("sentence_bert_config.json")).unwrap_or_default(),
    )
    .ok()
    .and_then(|v| v["max_seq_length"].as_u64())
    .map(|v| v as usize);
    let max_length = o
        .max_length
        .or(st_max)
        .unwrap_or(*buckets.last().unwrap_or(&512))
        .min(config.max_position_embeddings);
    let (st_pool, st_norm) = sentence_transformers_pooling(&dir);
    let (prompts, default_prompt_name) = sentence_transformers_prompts(&dir)?;
    let pooling = (task == PlanTask::Embedding).then(|| Pooling {
        mode: o.pooling.or(st_pool).unwrap_or(PoolingMode::Mean),
        normalize: o.normalize.or(st_norm).unwrap_or(false),
    });
    let tokenizer = BertTokenizer::from_dir(&dir)
        .with_context(|| format!("reading the tokenizer of {}", dir.display()))?;
    let lowercase = tokenizer_lowercases(&tokenizer);
    let settings_path = dir.join("finetune.json");
    let task_settings = if settings_path.exists() {
        let text = std::fs::read_to_string(&settings_path)
            .with_context(|| format!("reading {}", settings_path.display()))?;
        Some(
            serde_json::from_str::<serde_json::Value>(&text)
                .with_context(|| format!("{}: not JSON", settings_path.display()))?,
        )
    } else {
        None
    };

    // Build into a temp folder next to the destination, then rename.
    let parent = o
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = o
        .out
        .file_name()
        .with_context(|| format!("{}: not a folder name", o.out.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| -> Result<PlanMeta> {
        let mut sink = ParamSink::default();
        model.save(&mut sink);
        let weights = runtime_weights(&sink.tensors, &model, o.precision, o.int8_ffn_out_f32)?;
        let bytes = safetensors_bytes(&weights)?;
        plan::write_atomic(&tmp.join(plan::WEIGHTS_FILE), &bytes)?;
        tokenizer
            .save_json(&tmp.join(plan::TOKENIZER_FILE))
            .with_context(|| format!("writing {}", tmp.join(plan::TOKENIZER_FILE).display()))?;
        let mut files = BTreeMap::new();
        for f in [plan::WEIGHTS_FILE, plan::TOKENIZER_FILE] {
            files.insert(f.to_string(), plan::digest_file(&tmp.join(f))?);
        }
        let head = match task {
            PlanTask::Embedding => None,
            PlanTask::SequenceClassification => Some(Head {
                module: "classifier".into(),
                num_outputs: config.num_labels(),
                pooler: true,
            }),
            PlanTask::TokenClassification => Some(Head {
                module: "classifier".into(),
                num_outputs: config.num_labels(),
                pooler: false,
            }),
            PlanTask::QuestionAnswering => Some(Head {
                module: "qa_outputs".into(),
                num_outputs: 2,
                pooler: false,
            }),
        };
        let mut meta = PlanMeta {
            format: plan::FORMAT.into(),
            format_version: plan::FORMAT_VERSION,
            bertkit_version: env!("CARGO_PKG_VERSION").into(),
            task,
            architecture: model.task.architecture().into(),
            shape: Shape {
                vocab_size: config.vocab_size,
                hidden_size: config.hidden_size,
                num_hidden_layers: config.num_hidden_layers,
                num_attention_heads: config.num_attention_heads,
                intermediate_size: config.intermediate_size,
                hidden_act: config.hidden_act,
                max_position_embeddings: config.max_position_embeddings,
                type_vocab_size: config.type_vocab_size,
                layer_norm_eps: config.layer_norm_eps,
            },
            hf_config: serde_json::from_str(&config.to_json())?,
            head,
            labels: if matches!(
                task,
                PlanTask::SequenceClassification | PlanTask::TokenClassification
            ) {
                config.labels()
            } else {
                Vec::new()
            },
            problem_type: config
                .problem_type
                .map(|p| serde_json::to_value(p).ok())
                .and_then(|v| v.and_then(|v| v.as_str().map(String::from))),
            pooling,
            tokenizer: TokenizerSettings {
                file: plan::TOKENIZER_FILE.into(),
                max_length,
                truncation: "longest_first".into(),
                lowercase,
            },
            precision: o.precision,
            compute: match (o.precision, o.int8_ffn_out_f32) {
                (Precision::Int8, false) => "int8 (u8 x i8 -> i32) for the QKV, attention \
                                             output, FFN input and FFN output projections; \
                                             f32 elsewhere"
                    .into(),
                (Precision::Int8, true) => "int8 (u8 x i8 -> i32) for the QKV, attention \
                                            output and FFN input projections; f32 elsewhere"
                    .into(),
                _ => "f32".into(),
            },
            target: o.target,
            max_batch: o.max_batch,
            seq_buckets: buckets.clone(),
            execution: "padding-free".into(),
            optimizations: optimizations(o.precision, o.int8_ffn_out_f32),
            files,
            parity: None,
            tuning: None,
            source: o.model.display().to_string(),
            task_settings,
            prompts,
            default_prompt_name,
        };
        meta.write(&tmp)?;
        // Tune first: parity then runs with the settings the plan will be served with. (The
        // GPU encoder has no threads or kernel variants to choose from.)
        if o.tune && o.target == Target::Cpu {
            meta.tuning = Some(tune::tune(&tmp, &meta)?);
            meta.write(&tmp)?;
        }
        let samples = parity::samples(o.calibration.as_deref(), task)?;
        let report = parity::check(&model, &tmp, &meta, &samples)?;
        let passed = report.passed;
        meta.parity = Some(bertkit_runtime::plan::Parity {
            overridden: !passed && o.allow_parity_failure,
            ..report
        });
        meta.write(&tmp)?;
        if !passed && !o.allow_parity_failure {
            let p = meta
                .parity
                .as_ref()
                .map(parity::describe)
                .unwrap_or_default();
            bail!(
                "parity check failed for {} ({p}); nothing was written. Pass \
                 --allow-parity-failure to write the plan anyway (recorded in plan.json)",
                o.precision
            );
        }
        // The plan must load as written.
        PlanMeta::read(&tmp)?;
        Ok(meta)
    })();
    let meta = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    replace_dir(&tmp, &o.out)?;
    Ok(Exported {
        meta,
        dir: o.out.clone(),
    })
}

/// Moves `tmp` to `out`, replacing an existing `out` only once the new one is in place.
fn replace_dir(tmp: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        let old = tmp.with_extension("old");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
        if let Err(e) = std::fs::rename(tmp, out) {
            let _ = std::fs::rename(&old, out);
            return Err(e).with_context(|| format!("writing {}", out.display()));
        }
        let _ = std::fs::remove_dir_all(&old);
        return Ok(());
    }
    std::fs::rename(tmp, out).with_context(|| format!("writing {}", out.display()))
}

fn tokenizer_lowercases(t: &BertTokenizer) -> bool {
    t.inner()
        .get_normalizer()
        .and_then(|n| serde_json::to_value(n).ok())
        .map(|v| v.to_string().contains("\"lowercase\":true"))
        .unwrap_or(false)
}

fn optimizations(p: Precision, ffn_out_f32: bool) -> Vec<String> {
    let mut v = vec![
        "fused-qkv-projection".to_string(),
        "attention-scale-folded-into-query".into(),
        "bias-and-residual-accumulated-by-matmul".into(),
        "padding-free-packed-sequences".into(),
    ];
    v.push(match p {
        Precision::Int8 if ffn_out_f32 => {
            "int8-per-channel-weights-[out,in]-dynamic-activation-scales-(ffn-output-in-f32)".into()
        }
        Precision::Int8 => "int8-per-channel-weights-[out,in]-dynamic-activation-scales".into(),
        _ => "weights-[out,in]-packed-at-load-for-one-batch-invariant-kernel".into(),
    });
    match p {
        Precision::Fp16 => v.push("fp16-weight-storage".into()),
        Precision::Bf16 => v.push("bf16-weight-storage".into()),
        _ => {}
    }
    v
}

/// A tensor to write: its dtype, shape and little-endian bytes.
pub struct OutTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

fn float_tensor(data: &[f32], shape: Vec<usize>, precision: Precision) -> OutTensor {
    let (dtype, bytes) = match precision {
        Precision::Fp16 => (
            Dtype::F16,
            data.iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        Precision::Bf16 => (
            Dtype::BF16,
            data.iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        _ => (
            Dtype::F32,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    };
    OutTensor {
        dtype,
        shape,
        bytes,
    }
}

fn f32_tensor(data: &[f32], shape: Vec<usize>) -> OutTensor {
    float_tensor(data, shape, Precision::Fp32)
}

/// Adds `name.w`/`name.b` (and `.scale` for int8) from an `[out, in]` weight.
fn put_linear(
    out: &mut BTreeMap<String, OutTensor>,
    name: &str,
    w_out_in: &[f32],
    bias: &[f32],
    n: usize,
    k: usize,
    precision: Precision,
) {
    match precision {
        Precision::Int8 => {
            let (q, scale) = quantize_weight(w_out_in, n, k);
            out.insert(
                format!("{name}.w"),
                OutTensor {
                    dtype: Dtype::I8,
                    shape: vec![n, k],
                    bytes: q.iter().map(|&v| v as u8).collect(),
                },
            );
            out.insert(format!("{name}.scale"), f32_tensor(&scale, vec![n]));
        }
        p => {
            out.insert(format!("{name}.w"), float_tensor(w_out_in, vec![n, k], p));
        }
    }
    out.insert(format!("{name}.b"), f32_tensor(bias, vec![n]));
}

fn runtime_weights(
    src: &BTreeMap<String, HostTensor>,
    model: &Bert<Cpu>,
    precision: Precision,
    ffn_out_f32: bool,
) -> Result<BTreeMap<String, OutTensor>> {
    let c = &model.config;
    let (h, inter) = (c.hidden_size, c.intermediate_size);
    let get = |name: &str| -> Result<&HostTensor> {
        src.get(name)
            .with_context(|| format!("the model has no parameter {name}"))
    };
    // Embeddings stay f32 in int8 plans (only the linear layers are quantized).
    let emb_precision = match precision {
        Precision::Int8 => Precision::Fp32,
        p => p,
    };
    let mut out = BTreeMap::new();
    for (to, from) in [
        (names::WORD, "embeddings.word_embeddings.weight"),
        (names::POSITION, "embeddings.position_embeddings.weight"),
        (names::TOKEN_TYPE, "embeddings.token_type_embeddings.weight"),
    ] {
        let t = get(from)?;
        out.insert(
            to.to_string(),
            float_tensor(&t.data, t.shape.clone(), emb_precision),
        );
    }
    let put_ln = |out: &mut BTreeMap<String, OutTensor>, to: &str, from: &str| -> Result<()> {
        out.insert(
            format!("{to}.gamma"),
            f32_tensor(&get(&format!("{from}.weight"))?.data, vec![h]),
        );
        out.insert(
            format!("{to}.beta"),
            f32_tensor(&get(&format!("{from}.bias"))?.data, vec![h]),
        );
        Ok(())
    };
    put_ln(&mut out, names::EMB_LN, "embeddings.LayerNorm")?;
    let scale = 1.0 / (c.head_dim() as f32).sqrt();
    for l in 0..c.num_hidden_layers {
        let p = |s: &str| format!("encoder.layer.{l}.{s}");
        let mut qkv_w = Vec::with_capacity(3 * h * h);
        let mut qkv_b = Vec::with_capacity(3 * h);
        for (part, factor) in [("query", scale), ("key", 1.0), ("value", 1.0)] {
            let w = get(&p(&format!("attention.self.{part}.weight")))?;
            let b = get(&p(&format!("attention.self.{part}.bias")))?;
            qkv_w.extend(w.data.iter().map(|v| v * factor));
            qkv_b.extend(b.data.iter().map(|v| v * factor));
        }
        put_linear(
            &mut out,
            &names::layer(l, "qkv"),
            &qkv_w,
            &qkv_b,
            3 * h,
            h,
            precision,
        );
        for (to, from, n, k) in [
            ("attn_out", "attention.output.dense", h, h),
            ("ffn_in", "intermediate.dense", inter, h),
            ("ffn_out", "output.dense", h, inter),
        ] {
            let w = get(&p(&format!("{from}.weight")))?;
            let b = get(&p(&format!("{from}.bias")))?;
            // The FFN output projection's input (GELU outputs) has the widest range; f32 there
            // on request (docs/PERFORMANCE.md has both variants' accuracy and speed).
            let p = match (precision, to) {
                (Precision::Int8, "ffn_out") if ffn_out_f32 => Precision::Fp32,
                (p, _) => p,
            };
            put_linear(&mut out, &names::layer(l, to), &w.data, &b.data, n, k, p);
        }
        put_ln(
            &mut out,
            &names::layer(l, "attn_ln"),
            &p("attention.output.LayerNorm"),
        )?;
        put_ln(&mut out, &names::layer(l, "ffn_ln"), &p("output.LayerNorm"))?;
    }
    // Heads stay f32: they are small, and they decide the labels.
    let head_from = match model.task {
        Task::SequenceClassification | Task::TokenClassification => Some("classifier"),
        Task::QuestionAnswering => Some("qa_outputs"),
        _ => None,
    };
    if model.task == Task::SequenceClassification {
        let w = get("pooler.dense.weight")?;
        let b = get("pooler.dense.bias")?;
        put_linear(
            &mut out,
            names::POOLER,
            &w.data,
            &b.data,
            h,
            h,
            Precision::Fp32,
        );
    }
    if let Some(from) = head_from {
        let w = get(&format!("{from}.weight"))?;
        let b = get(&format!("{from}.bias"))?;
        let n = b.data.len();
        put_linear(
            &mut out,
            names::HEAD,
            &w.data,
            &b.data,
            n,
            h,
            Precision::Fp32,
        );
    }
    Ok(out)
}

fn safetensors_bytes(tensors: &BTreeMap<String, OutTensor>) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes)?,
            ))
        })
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "bertkit-plan-weights".to_string());
    Ok(safetensors::serialize(views, Some(meta))?)
}
