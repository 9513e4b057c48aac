//! ONNX export of a BERT model folder (Hugging Face or bertkit checkpoint).
//!
//! The graph is written out op by op as Hugging Face's eager `BertModel` computes it (opset 17,
//! IR version 8, float32), with free `batch` and `sequence` dimensions:
//! - inputs `input_ids`, `attention_mask`, `token_type_ids`: int64 `[batch, sequence]`;
//! - embeddings: word + token type + position (`Range(0, sequence)`), `LayerNormalization`;
//! - the additive attention mask `(1 - mask) * f32::MIN`, `[batch, 1, 1, sequence]`, as HF adds it;
//! - per layer: Q/K/V projections, `softmax(QKᵀ/√d + mask)·V` per head, the output projection,
//!   residual and LayerNorm, the feed-forward block (exact GELU via `Erf`, tanh GELU, or ReLU);
//! - outputs named as Hugging Face optimum names them: `last_hidden_state` and `pooler_output`
//!   (base), `logits` (sequence and token classification), `start_logits`/`end_logits`
//!   (question answering).
//!
//! Linear weights are stored transposed to `[in, out]` (named `{hf name}.weight.T`) so each
//! projection is one `MatMul`; everything else keeps its Hugging Face name. The weights are
//! `raw_data` inside the one file (no external data), which protobuf limits to 2 GiB.

pub mod proto;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bertkit_model::backend::Cpu;
use bertkit_model::checkpoint;
use bertkit_model::weights::{HostTensor, ParamSink};
use bertkit_model::{BertConfig, HiddenAct, LoadOptions, Task};

use proto::{Attr, DataType, Dim, Graph, Model, Node, Tensor, TensorData, ValueInfo};

/// The ONNX operator set the graph uses (`LayerNormalization` needs 17).
pub const OPSET: i64 = 17;
/// The ONNX IR version of the file (the one of opset 17, ONNX 1.12).
pub const IR_VERSION: i64 = 8;
/// The largest protobuf message: ONNX files beyond it need external data, not supported here.
pub const MAX_BYTES: u64 = i32::MAX as u64;

/// The tasks an ONNX model can be exported for.
pub const SUPPORTED_TASKS: [Task; 4] = [
    Task::Base,
    Task::SequenceClassification,
    Task::TokenClassification,
    Task::QuestionAnswering,
];

/// What `export_onnx` wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxSummary {
    pub path: PathBuf,
    /// The graph outputs, in order.
    pub outputs: Vec<String>,
    pub opset: i64,
    /// The size of the file.
    pub bytes: u64,
    pub num_nodes: usize,
}

/// Exports the model in `model_dir` (its saved task) to the ONNX file `out`, written atomically
/// (a temporary file in the same folder, then a rename).
pub fn export_onnx(model_dir: &Path, out: &Path) -> Result<OnnxSummary> {
    let dir = checkpoint::model_dir(model_dir);
    let (_, task) = checkpoint::read_config(&dir)?;
    check_task(task).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let (model, _report) =
        checkpoint::load::<Cpu>(&dir, &LoadOptions::default(), &Default::default())
            .with_context(|| format!("loading {}", dir.display()))?;
    let mut sink = ParamSink::default();
    model.save(&mut sink);
    let (config, task) = (model.config.clone(), model.task);
    drop(model);

    let onnx = build_model(&config, task, sink.tensors)?;
    let bytes = onnx.encoded_len();
    check_size(bytes)?;
    let written = write_atomic(out, &onnx)?;
    if written != bytes {
        bail!(
            "{}: wrote {written} bytes, expected {bytes} (an encoder bug)",
            out.display()
        );
    }
    Ok(OnnxSummary {
        path: out.to_path_buf(),
        outputs: onnx.graph.outputs.iter().map(|o| o.name.clone()).collect(),
        opset: OPSET,
        bytes,
        num_nodes: onnx.graph.nodes.len(),
    })
}

fn check_task(task: Task) -> Result<()> {
    if SUPPORTED_TASKS.contains(&task) {
        Ok(())
    } else {
        Err(unsupported(task))
    }
}

fn unsupported(task: Task) -> anyhow::Error {
    let names: Vec<_> = SUPPORTED_TASKS.iter().map(|t| t.name()).collect();
    anyhow!(
        "ONNX export supports {}; this model is {} ({})",
        names.join(", "),
        task.name(),
        task.architecture()
    )
}

fn check_size(bytes: u64) -> Result<()> {
    if bytes > MAX_BYTES {
        bail!(
            "the ONNX model would be {bytes} bytes ({:.2} GiB); a single ONNX file is limited to \
             2 GiB and external data is not supported",
            bytes as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}

/// Writes `model` to `path` whole or not at all (`bertkit_model::fs`); every error names `path`.
fn write_atomic(path: &Path, model: &Model) -> Result<u64> {
    bertkit_model::fs::write_atomic_with(path, |w| model.write(w))
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}

/// Builds the ONNX model from the parameters of `Bert::save` (HF names without `bert.`).
pub fn build_model(
    config: &BertConfig,
    task: Task,
    tensors: BTreeMap<String, HostTensor>,
) -> Result<Model> {
    check_task(task)?;
    let mut g = Builder::new(tensors);
    let h = config.hidden_size as i64;
    let heads = config.num_attention_heads as i64;
    let head_dim = config.head_dim() as i64;
    let eps = config.layer_norm_eps as f32;

    let ids = ValueInfo {
        name: String::new(),
        elem_type: DataType::Int64,
        dims: vec![Dim::Param("batch".into()), Dim::Param("sequence".into())],
    };
    g.graph.inputs = ["input_ids", "attention_mask", "token_type_ids"]
        .iter()
        .map(|n| ValueInfo {
            name: n.to_string(),
            ..ids.clone()
        })
        .collect();

    // Embeddings: word + token type + position, LayerNorm.
    let word = g.param("embeddings.word_embeddings.weight")?;
    let types = g.param("embeddings.token_type_embeddings.weight")?;
    let positions = g.param("embeddings.position_embeddings.weight")?;
    let zero = g.const_i64("/const/zero", &[], &[0]);
    let one = g.const_i64("/const/one", &[], &[1]);
    let shape = g.op("Shape", "/embeddings/Shape", &["input_ids"], vec![]);
    let seq_len = g.op(
        "Gather",
        "/embeddings/Gather_seq_len",
        &[&shape, &one],
        vec![("axis", Attr::Int(0))],
    );
    let position_ids = g.op(
        "Range",
        "/embeddings/Range",
        &[&zero, &seq_len, &one],
        vec![],
    );
    let word_emb = g.op(
        "Gather",
        "/embeddings/word_embeddings/Gather",
        &[&word, "input_ids"],
        vec![],
    );
    let type_emb = g.op(
        "Gather",
        "/embeddings/token_type_embeddings/Gather",
        &[&types, "token_type_ids"],
        vec![],
    );
    let pos_emb = g.op(
        "Gather",
        "/embeddings/position_embeddings/Gather",
        &[&positions, &position_ids],
        vec![],
    );
    let x = g.op("Add", "/embeddings/Add", &[&word_emb, &type_emb], vec![]);
    let x = g.op("Add", "/embeddings/Add_1", &[&x, &pos_emb], vec![]);
    let mut x = g.layer_norm("/embeddings/LayerNorm", "embeddings.LayerNorm", &x, eps)?;

    // The additive mask, [batch, 1, 1, sequence]: 0 for tokens, f32::MIN for padding (HF's
    // `(1 - mask) * torch.finfo(float32).min`).
    let one_f = g.const_f32("/const/one_f", 1.0);
    let min_f = g.const_f32("/const/f32_min", f32::MIN);
    let mask = g.op(
        "Cast",
        "/mask/Cast",
        &["attention_mask"],
        vec![("to", Attr::Int(DataType::Float as i64))],
    );
    let mask = g.op("Sub", "/mask/Sub", &[&one_f, &mask], vec![]);
    let mask = g.op("Mul", "/mask/Mul", &[&mask, &min_f], vec![]);
    let axes = g.const_i64("/const/mask_axes", &[2], &[1, 2]);
    let mask = g.op("Unsqueeze", "/mask/Unsqueeze", &[&mask, &axes], vec![]);

    let split_shape = g.const_i64("/const/split_heads_shape", &[4], &[0, 0, heads, head_dim]);
    let merge_shape = g.const_i64("/const/merge_heads_shape", &[3], &[0, 0, h]);
    let scale = g.const_f32("/const/attention_scale", 1.0 / (head_dim as f32).sqrt());
    let half = g.const_f32("/const/half", 0.5);
    let sqrt2 = g.const_f32("/const/sqrt2", std::f32::consts::SQRT_2);
    let gelu_consts = (config.hidden_act == HiddenAct::GeluTanh).then(|| {
        (
            g.const_f32("/const/gelu_cubic", 0.044715),
            g.const_f32("/const/sqrt_2_over_pi", (2.0 / std::f32::consts::PI).sqrt()),
        )
    });

    for i in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        let n = format!("/encoder/layer.{i}");
        // Self-attention.
        let sa = format!("{p}.attention.self");
        let sn = format!("{n}/attention/self");
        let heads_of = |g: &mut Builder, which: &str, perm: &[i64]| -> Result<String> {
            let y = g.linear(&format!("{sn}/{which}"), &format!("{sa}.{which}"), &x)?;
            let y = g.op(
                "Reshape",
                &format!("{sn}/{which}/Reshape"),
                &[&y, &split_shape],
                vec![],
            );
            Ok(g.op(
                "Transpose",
                &format!("{sn}/{which}/Transpose"),
                &[&y],
                vec![("perm", Attr::Ints(perm.to_vec()))],
            ))
        };
        // q, v: [b, heads, s, d]; k: [b, heads, d, s].
        let q = heads_of(&mut g, "query", &[0, 2, 1, 3])?;
        let k = heads_of(&mut g, "key", &[0, 2, 3, 1])?;
        let v = heads_of(&mut g, "value", &[0, 2, 1, 3])?;
        let scores = g.op("MatMul", &format!("{sn}/MatMul"), &[&q, &k], vec![]);
        let scores = g.op("Mul", &format!("{sn}/Mul"), &[&scores, &scale], vec![]);
        let scores = g.op("Add", &format!("{sn}/Add"), &[&scores, &mask], vec![]);
        let probs = g.op(
            "Softmax",
            &format!("{sn}/Softmax"),
            &[&scores],
            vec![("axis", Attr::Int(-1))],
        );
        let ctx = g.op("MatMul", &format!("{sn}/MatMul_1"), &[&probs, &v], vec![]);
        let ctx = g.op(
            "Transpose",
            &format!("{sn}/Transpose"),
            &[&ctx],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let ctx = g.op(
            "Reshape",
            &format!("{sn}/Reshape"),
            &[&ctx, &merge_shape],
            vec![],
        );
        let attn = g.residual_block(
            &format!("{n}/attention/output"),
            &format!("{p}.attention.output"),
            &ctx,
            &x,
            eps,
        )?;

        // Feed-forward.
        let inter = g.linear(
            &format!("{n}/intermediate/dense"),
            &format!("{p}.intermediate.dense"),
            &attn,
        )?;
        let an = format!("{n}/intermediate/act");
        let inter = match config.hidden_act {
            // x * 0.5 * (1 + erf(x / √2))
            HiddenAct::Gelu => {
                let y = g.op("Div", &format!("{an}/Div"), &[&inter, &sqrt2], vec![]);
                let y = g.op("Erf", &format!("{an}/Erf"), &[&y], vec![]);
                let y = g.op("Add", &format!("{an}/Add"), &[&y, &one_f], vec![]);
                let y = g.op("Mul", &format!("{an}/Mul"), &[&inter, &y], vec![]);
                g.op("Mul", &format!("{an}/Mul_1"), &[&y, &half], vec![])
            }
            // 0.5 * x * (1 + tanh(√(2/π) * (x + 0.044715 * x³)))
            HiddenAct::GeluTanh => {
                let (cubic, sqrt_2_pi) = gelu_consts
                    .clone()
                    .ok_or_else(|| anyhow!("tanh GELU constants missing"))?;
                let x2 = g.op("Mul", &format!("{an}/Mul"), &[&inter, &inter], vec![]);
                let x3 = g.op("Mul", &format!("{an}/Mul_1"), &[&x2, &inter], vec![]);
                let y = g.op("Mul", &format!("{an}/Mul_2"), &[&x3, &cubic], vec![]);
                let y = g.op("Add", &format!("{an}/Add"), &[&inter, &y], vec![]);
                let y = g.op("Mul", &format!("{an}/Mul_3"), &[&y, &sqrt_2_pi], vec![]);
                let y = g.op("Tanh", &format!("{an}/Tanh"), &[&y], vec![]);
                let y = g.op("Add", &format!("{an}/Add_1"), &[&y, &one_f], vec![]);
                let y = g.op("Mul", &format!("{an}/Mul_4"), &[&inter, &y], vec![]);
                g.op("Mul", &format!("{an}/Mul_5"), &[&y, &half], vec![])
            }
            HiddenAct::Relu => g.op("Relu", &format!("{an}/Relu"), &[&inter], vec![]),
        };
        x = g.residual_block(
            &format!("{n}/output"),
            &format!("{p}.output"),
            &inter,
            &attn,
            eps,
        )?;
    }

    let batch = || Dim::Param("batch".into());
    let sequence = || Dim::Param("sequence".into());
    let fixed = |n: i64| Dim::Value(n);
    let pooler = |g: &mut Builder, hidden: &str| -> Result<String> {
        let cls = g.op(
            "Gather",
            "/pooler/Gather",
            &[hidden, &zero],
            vec![("axis", Attr::Int(1))],
        );
        let y = g.linear("/pooler/dense", "pooler.dense", &cls)?;
        Ok(g.op("Tanh", "/pooler/Tanh", &[&y], vec![]))
    };
    match task {
        Task::Base => {
            g.output(&x, "last_hidden_state", vec![batch(), sequence(), fixed(h)]);
            if g.has("pooler.dense.weight") {
                let pooled = pooler(&mut g, "last_hidden_state")?;
                g.output(&pooled, "pooler_output", vec![batch(), fixed(h)]);
            }
        }
        Task::SequenceClassification => {
            let pooled = pooler(&mut g, &x)?;
            let logits = g.linear("/classifier", "classifier", &pooled)?;
            let labels = g.out_features("classifier")?;
            g.output(&logits, "logits", vec![batch(), fixed(labels)]);
        }
        Task::TokenClassification => {
            let logits = g.linear("/classifier", "classifier", &x)?;
            let labels = g.out_features("classifier")?;
            g.output(&logits, "logits", vec![batch(), sequence(), fixed(labels)]);
        }
        Task::QuestionAnswering => {
            let logits = g.linear("/qa_outputs", "qa_outputs", &x)?;
            for (index, name) in [(0i64, "start_logits"), (1, "end_logits")] {
                let idx = g.const_i64(&format!("/const/{name}_index"), &[], &[index]);
                let y = g.op(
                    "Gather",
                    &format!("/qa_outputs/Gather_{name}"),
                    &[&logits, &idx],
                    vec![("axis", Attr::Int(2))],
                );
                g.output(&y, name, vec![batch(), sequence()]);
            }
        }
        other => return Err(unsupported(other)),
    }

    let mut metadata = vec![("task".to_string(), task.name().to_string())];
    if matches!(
        task,
        Task::SequenceClassification | Task::TokenClassification
    ) {
        let labels = serde_json::to_string(&config.labels())?;
        metadata.push(("labels".to_string(), labels));
    }
    let version = env!("CARGO_PKG_VERSION");
    g.graph.name = task.architecture().to_string();
    Ok(Model {
        ir_version: IR_VERSION,
        opset_imports: vec![(String::new(), OPSET)],
        producer_name: "bertkit".into(),
        producer_version: version.into(),
        doc_string: format!(
            "{} ({} layers, hidden {}) exported by bertkit {version}",
            task.architecture(),
            config.num_hidden_layers,
            config.hidden_size
        ),
        graph: g.graph,
        metadata_props: metadata,
    })
}

/// Builds the graph node by node, taking parameters out of the model's tensors.
struct Builder {
    graph: Graph,
    params: BTreeMap<String, HostTensor>,
}

impl Builder {
    fn new(params: BTreeMap<String, HostTensor>) -> Self {
        Builder {
            graph: Graph::default(),
            params,
        }
    }

    fn has(&self, name: &str) -> bool {
        self.params.contains_key(name)
    }

    fn take(&mut self, name: &str) -> Result<HostTensor> {
        self.params
            .remove(name)
            .ok_or_else(|| anyhow!("the model has no parameter `{name}`"))
    }

    fn initializer(&mut self, name: String, shape: &[usize], data: Vec<f32>) -> String {
        let dims = shape.iter().map(|&d| d as i64).collect();
        self.graph
            .initializers
            .push(Tensor::new(name.clone(), dims, TensorData::F32(data)));
        name
    }

    /// A parameter as an initializer under its HF name.
    fn param(&mut self, name: &str) -> Result<String> {
        let t = self.take(name)?;
        Ok(self.initializer(name.to_string(), &t.shape, t.data))
    }

    fn const_i64(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        self.graph.initializers.push(Tensor::new(
            name,
            dims.to_vec(),
            TensorData::I64(values.to_vec()),
        ));
        name.to_string()
    }

    /// A float scalar.
    fn const_f32(&mut self, name: &str, value: f32) -> String {
        self.graph
            .initializers
            .push(Tensor::new(name, vec![], TensorData::F32(vec![value])));
        name.to_string()
    }

    /// Adds a node with one output, named `{name}_output_0`; returns the output.
    fn op(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) -> String {
        let output = format!("{name}_output_0");
        self.graph.nodes.push(Node {
            op_type: op_type.into(),
            name: name.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![output.clone()],
            attributes: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        });
        output
    }

    /// `x W^T + b` for the HF linear `param` (`weight` `[out, in]`), as MatMul with the weight
    /// transposed to `[in, out]`, then Add.
    fn linear(&mut self, name: &str, param: &str, x: &str) -> Result<String> {
        let w = self.take(&format!("{param}.weight"))?;
        let [rows, cols] = w.shape[..] else {
            bail!(
                "parameter `{param}.weight` has shape {:?}; expected 2 dims",
                w.shape
            );
        };
        let mut t = vec![0.0f32; w.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = w.data[r * cols + c];
            }
        }
        drop(w);
        let wt = self.initializer(format!("{param}.weight.T"), &[cols, rows], t);
        let b = self.param(&format!("{param}.bias"))?;
        let y = self.op("MatMul", &format!("{name}/MatMul"), &[x, &wt], vec![]);
        Ok(self.op("Add", &format!("{name}/Add"), &[&y, &b], vec![]))
    }

    /// The number of outputs of the linear `param`, from its bias.
    fn out_features(&self, param: &str) -> Result<i64> {
        self.graph
            .initializers
            .iter()
            .find(|t| t.name == format!("{param}.bias"))
            .and_then(|t| t.dims.first().copied())
            .ok_or_else(|| anyhow!("the model has no parameter `{param}.bias`"))
    }

    fn layer_norm(&mut self, name: &str, param: &str, x: &str, eps: f32) -> Result<String> {
        let w = self.param(&format!("{param}.weight"))?;
        let b = self.param(&format!("{param}.bias"))?;
        Ok(self.op(
            "LayerNormalization",
            name,
            &[x, &w, &b],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        ))
    }

    /// `LayerNorm(dense(x) + residual)` (`attention.output` and `output`).
    fn residual_block(
        &mut self,
        name: &str,
        param: &str,
        x: &str,
        residual: &str,
        eps: f32,
    ) -> Result<String> {
        let y = self.linear(&format!("{name}/dense"), &format!("{param}.dense"), x)?;
        let y = self.op("Add", &format!("{name}/Add"), &[&y, residual], vec![]);
        self.layer_norm(
            &format!("{name}/LayerNorm"),
            &format!("{param}.LayerNorm"),
            &y,
            eps,
        )
    }

    /// Renames the tensor `value` to the graph output `name`.
    fn output(&mut self, value: &str, name: &str, dims: Vec<Dim>) {
        for node in &mut self.graph.nodes {
            for io in node.inputs.iter_mut().chain(node.outputs.iter_mut()) {
                if io == value {
                    *io = name.to_string();
                }
            }
        }
        self.graph.outputs.push(ValueInfo {
            name: name.to_string(),
            elem_type: DataType::Float,
            dims,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limit_is_two_gib() {
        assert!(check_size(1_300_000_000).is_ok());
        assert!(check_size(MAX_BYTES).is_ok());
        let err = check_size(MAX_BYTES + 1).unwrap_err().to_string();
        assert!(
            err.contains("2 GiB") && err.contains("external data"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_tasks_are_named() {
        for task in [Task::Pretraining, Task::MaskedLm, Task::NextSentence] {
            let err = check_task(task).unwrap_err().to_string();
            assert!(err.contains(task.name()), "{err}");
            assert!(
                err.contains("sequence-classification, token-classification"),
                "{err}"
            );
        }
        for task in SUPPORTED_TASKS {
            assert!(check_task(task).is_ok());
        }
    }

    /// A fresh tiny model gives a graph whose node inputs are all defined, with every parameter
    /// used (none left over).
    #[test]
    fn graph_is_closed_and_uses_every_parameter() {
        for act in ["gelu", "gelu_new", "relu"] {
            for task in SUPPORTED_TASKS {
                let config = BertConfig::from_json(&format!(
                    r#"{{"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 2,
                        "num_attention_heads": 2, "intermediate_size": 16,
                        "max_position_embeddings": 16, "hidden_act": "{act}", "num_labels": 3}}"#
                ))
                .unwrap();
                let model = checkpoint::init::<Cpu>(&config, task, 0, &Default::default()).unwrap();
                let mut sink = ParamSink::default();
                model.save(&mut sink);
                let n_params = sink.tensors.len();
                let onnx = build_model(&config, task, sink.tensors).unwrap();
                let g = &onnx.graph;
                let mut defined: std::collections::HashSet<&str> =
                    g.inputs.iter().map(|i| i.name.as_str()).collect();
                defined.extend(g.initializers.iter().map(|t| t.name.as_str()));
                assert!(g.initializers.iter().all(|t| t.is_consistent()));
                let params = g
                    .initializers
                    .iter()
                    .filter(|t| !t.name.starts_with("/const/"))
                    .count();
                assert_eq!(params, n_params, "{task} {act}: every parameter once");
                for node in &g.nodes {
                    for i in &node.inputs {
                        assert!(defined.contains(i.as_str()), "{}: undefined {i}", node.name);
                    }
                    for o in &node.outputs {
                        assert!(defined.insert(o.as_str()), "{o} defined twice");
                    }
                }
                for o in &g.outputs {
                    assert!(
                        defined.contains(o.name.as_str()),
                        "output {} undefined",
                        o.name
                    );
                }
                assert_eq!(onnx.to_bytes().len() as u64, onnx.encoded_len());
            }
        }
    }
}
