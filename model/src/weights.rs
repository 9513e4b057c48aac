//! Named weights in Hugging Face layout: reading them from safetensors into modules (with one
//! error listing every missing, unexpected or mis-shaped tensor) and writing them back.
//!
//! Names are the HF names of `BertModel` (`embeddings.word_embeddings.weight`, ...) and of the heads
//! (`cls.predictions.bias`, `classifier.weight`, `qa_outputs.weight`). A checkpoint may carry the
//! base-model names with or without the `bert.` prefix; both are read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

/// How a parameter is initialized when it is not read from a checkpoint (BERT's scheme).
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// normal(0, initializer_range)
    Normal,
    Zeros,
    Ones,
}

/// A tensor on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Names that HF checkpoints may carry which are not parameters of their own.
fn is_ignorable(name: &str) -> bool {
    // A buffer, and two aliases of tensors that are read under other names (the decoder weight
    // is tied to the word embeddings; its bias is `cls.predictions.bias`).
    name == "embeddings.position_ids"
        || name == "cls.predictions.decoder.weight"
        || name == "cls.predictions.decoder.bias"
}

/// Where module constructors take their parameters from: a checkpoint, fresh initialization, or
/// both (a checkpoint with a fresh head). Every lookup is recorded so that `finish` can report
/// what was missing, mis-shaped, freshly initialized or left unused.
pub struct ParamSource {
    file: Option<PathBuf>,
    tensors: BTreeMap<String, HostTensor>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    mismatched: Vec<String>,
    fresh: Vec<String>,
    /// Names starting with one of these may be initialized fresh when absent, and may be left
    /// unused when present (a head that is swapped for another).
    flexible_prefixes: Vec<String>,
    rng: StdRng,
    init_std: f32,
}

/// What a load did besides reading parameters one to one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Parameters initialized fresh (a new head on a pretrained body).
    pub fresh: Vec<String>,
    /// Checkpoint tensors not used (a head that the chosen task does not have).
    pub unused: Vec<String>,
}

impl LoadReport {
    pub fn is_exact(&self) -> bool {
        self.fresh.is_empty() && self.unused.is_empty()
    }
}

impl ParamSource {
    /// Every parameter initialized fresh, as in BERT: normal(0, `init_std`), zero biases,
    /// LayerNorm weight 1 and bias 0. Deterministic for a seed, on every backend.
    pub fn fresh(seed: u64, init_std: f64) -> Self {
        ParamSource {
            file: None,
            tensors: BTreeMap::new(),
            used: BTreeSet::new(),
            missing: Vec::new(),
            mismatched: Vec::new(),
            fresh: Vec::new(),
            flexible_prefixes: vec![String::new()],
            rng: StdRng::seed_from_u64(seed),
            init_std: init_std as f32,
        }
    }

    /// Reads a safetensors file. Names with the `bert.` prefix are read without it; old
    /// TensorFlow-style `LayerNorm.gamma`/`beta` names are read as `weight`/`bias`.
    pub fn from_safetensors(path: &Path, seed: u64, init_std: f64) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::invalid(path, format!("not a valid safetensors file: {e}")))?;
        let mut source = ParamSource::from_file(path, seed, init_std);
        for (name, view) in st.tensors() {
            if is_ignorable(&canonical_name(&name)) {
                continue;
            }
            let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                Error::invalid(
                    path,
                    format!(
                        "tensor `{name}` has dtype {:?}; expected F32, F16, BF16 or F64",
                        view.dtype()
                    ),
                )
            })?;
            source.insert(
                &name,
                HostTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            )?;
        }
        Ok(source)
    }

    /// Reads a PyTorch `pytorch_model.bin` (zip or legacy pickle format), named as in
    /// `from_safetensors`.
    #[cfg(feature = "pytorch")]
    pub fn from_pytorch(path: &Path, seed: u64, init_std: f64) -> Result<Self> {
        let reader = burn_store::pytorch::PytorchReader::new(path)
            .map_err(|e| Error::invalid(path, format!("not a readable PyTorch checkpoint: {e}")))?;
        let mut source = ParamSource::from_file(path, seed, init_std);
        for (name, snapshot) in reader.into_tensors() {
            if is_ignorable(&canonical_name(&name)) {
                continue;
            }
            let data = snapshot
                .to_data()
                .map_err(|e| Error::invalid(path, format!("tensor `{name}`: {e:?}")))?
                .convert::<f32>();
            let shape = data.shape.to_vec();
            let data = data
                .into_vec::<f32>()
                .map_err(|e| Error::invalid(path, format!("tensor `{name}`: {e:?}")))?;
            source.insert(&name, HostTensor { shape, data })?;
        }
        Ok(source)
    }

    /// Without the `pytorch` feature (the server's build) only safetensors are read.
    #[cfg(not(feature = "pytorch"))]
    pub fn from_pytorch(path: &Path, _seed: u64, _init_std: f64) -> Result<Self> {
        Err(Error::invalid(
            path,
            "this build reads model.safetensors only (bertkit-model without its `pytorch` \
             feature); convert the folder with `bertkit convert`",
        ))
    }

    fn from_file(path: &Path, seed: u64, init_std: f64) -> Self {
        let mut source = ParamSource::fresh(seed, init_std);
        source.file = Some(path.to_path_buf());
        source.flexible_prefixes.clear();
        source
    }

    fn insert(&mut self, name: &str, tensor: HostTensor) -> Result<()> {
        let canonical = canonical_name(name);
        if self.tensors.insert(canonical.clone(), tensor).is_some() {
            let path = self.file.clone().unwrap_or_default();
            return Err(Error::invalid(
                &path,
                format!("tensor `{canonical}` appears twice (with and without the `bert.` prefix)"),
            ));
        }
        Ok(())
    }

    /// Lets parameters under `prefix` be initialized fresh when absent or of another shape, and
    /// left unused when present.
    pub fn allow_fresh(&mut self, prefix: &str) {
        self.flexible_prefixes.push(prefix.to_string());
    }

    fn is_flexible(&self, name: &str) -> bool {
        self.flexible_prefixes
            .iter()
            .any(|p| name.starts_with(p.as_str()))
    }

    /// The checkpoint's tensors under their canonical names (without `bert.`).
    pub fn tensors(&self) -> &BTreeMap<String, HostTensor> {
        &self.tensors
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Takes the tensor `name` of the given shape, or initializes it.
    pub fn take(&mut self, name: &str, shape: &[usize], init: Init) -> HostTensor {
        if let Some(t) = self.tensors.get(name) {
            self.used.insert(name.to_string());
            if t.shape == shape {
                return t.clone();
            }
            if self.is_flexible(name) {
                // A head for other labels (fine-tuning a fine-tuned model on a new task).
                self.fresh.push(format!(
                    "{name} (checkpoint has {:?}, new head {shape:?})",
                    t.shape
                ));
                return self.init(shape, init);
            }
            self.mismatched.push(format!(
                "{name}: checkpoint has {:?}, model expects {shape:?}",
                t.shape
            ));
        } else if self.is_flexible(name) {
            self.fresh.push(name.to_string());
        } else {
            self.missing.push(format!("{name} {shape:?}"));
        }
        self.init(shape, init)
    }

    fn init(&mut self, shape: &[usize], init: Init) -> HostTensor {
        let n: usize = shape.iter().product();
        let data = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal => (0..n).map(|_| self.normal() * self.init_std).collect(),
        };
        HostTensor {
            shape: shape.to_vec(),
            data,
        }
    }

    /// A standard normal sample (Box-Muller).
    fn normal(&mut self) -> f32 {
        let u1: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = self.rng.random::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// Ends the load: one error listing every problem, or a report of what was fresh or unused.
    pub fn finish(self) -> Result<LoadReport> {
        let unused: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        let (allowed_unused, unexpected): (Vec<String>, Vec<String>) =
            unused.into_iter().partition(|k| self.is_flexible(k));
        if self.missing.is_empty() && self.mismatched.is_empty() && unexpected.is_empty() {
            return Ok(LoadReport {
                fresh: if self.file.is_some() {
                    self.fresh
                } else {
                    Vec::new()
                },
                unused: allowed_unused,
            });
        }
        let file = self
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut msg = format!("{file}: the checkpoint does not match the model");
        for (title, list) in [
            ("missing", &self.missing),
            ("mis-shaped", &self.mismatched),
            ("unexpected", &unexpected),
        ] {
            if !list.is_empty() {
                msg.push_str(&format!("\n  {} {title} tensor(s):", list.len()));
                for item in list {
                    msg.push_str(&format!("\n    {item}"));
                }
            }
        }
        Err(Error::Weights(msg))
    }
}

/// `bert.x` -> `x`; `LayerNorm.gamma`/`beta` -> `LayerNorm.weight`/`bias`.
fn canonical_name(name: &str) -> String {
    let name = name.strip_prefix("bert.").unwrap_or(name);
    if let Some(base) = name.strip_suffix("LayerNorm.gamma") {
        return format!("{base}LayerNorm.weight");
    }
    if let Some(base) = name.strip_suffix("LayerNorm.beta") {
        return format!("{base}LayerNorm.bias");
    }
    name.to_string()
}

/// A safetensors float tensor's little-endian bytes (f32, f16, bf16 or f64) as f32; `None` for
/// other dtypes.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let v = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
        _ => return None,
    };
    Some(v)
}

/// Weights being written: name -> tensor, serialized as F32 safetensors.
#[derive(Default)]
pub struct ParamSink {
    pub tensors: BTreeMap<String, HostTensor>,
}

impl ParamSink {
    pub fn put(&mut self, name: &str, tensor: HostTensor) {
        self.tensors.insert(name.to_string(), tensor);
    }

    /// The safetensors bytes; `base_prefix` is prepended to every base-model name (HF writes
    /// `bert.` when a head is present, nothing for a bare `BertModel`).
    pub fn to_safetensors(
        &self,
        base_prefix: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<Vec<u8>> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let full = if is_head_name(name) {
                    name.clone()
                } else {
                    format!("{base_prefix}{name}")
                };
                let raw: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                (full, t.shape.clone(), raw)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(name, shape, raw)| {
                let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), raw)
                    .map_err(|e| Error::Weights(format!("tensor `{name}`: {e}")))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<_>>()?;
        let metadata: std::collections::HashMap<String, String> = metadata.into_iter().collect();
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| Error::Weights(format!("serializing safetensors: {e}")))
    }
}

/// Name prefixes of the task heads' parameters, which live outside the `bert.` namespace in HF
/// checkpoints (and of distillation's projection, which only a distillation's checkpoints hold).
pub const HEAD_PREFIXES: [&str; 4] = ["cls.", "classifier.", "qa_outputs.", "distill."];

pub fn is_head_name(name: &str) -> bool {
    HEAD_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical_name("bert.pooler.dense.weight"),
            "pooler.dense.weight"
        );
        assert_eq!(
            canonical_name("bert.embeddings.LayerNorm.gamma"),
            "embeddings.LayerNorm.weight"
        );
        assert_eq!(
            canonical_name("cls.predictions.bias"),
            "cls.predictions.bias"
        );
    }

    #[test]
    fn fresh_init_is_seeded_and_bert_shaped() {
        let mut a = ParamSource::fresh(7, 0.02);
        let mut b = ParamSource::fresh(7, 0.02);
        let ta = a.take("x", &[100, 100], Init::Normal);
        assert_eq!(ta, b.take("x", &[100, 100], Init::Normal));
        let n = ta.data.len() as f32;
        let mean = ta.data.iter().sum::<f32>() / n;
        let std = (ta.data.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((std - 0.02).abs() < 1e-3, "std {std}");
        assert!(a
            .take("z", &[3], Init::Zeros)
            .data
            .iter()
            .all(|v| *v == 0.0));
        assert!(a.take("o", &[3], Init::Ones).data.iter().all(|v| *v == 1.0));
        assert!(a.finish().unwrap().is_exact());
    }

    #[test]
    fn one_error_lists_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let mut sink = ParamSink::default();
        sink.put(
            "a.weight",
            HostTensor {
                shape: vec![2, 2],
                data: vec![1.0; 4],
            },
        );
        sink.put(
            "extra.weight",
            HostTensor {
                shape: vec![1],
                data: vec![1.0],
            },
        );
        std::fs::write(
            &path,
            sink.to_safetensors("bert.", BTreeMap::new()).unwrap(),
        )
        .unwrap();

        let mut src = ParamSource::from_safetensors(&path, 0, 0.02).unwrap();
        assert!(src.contains("a.weight"), "prefix stripped on read");
        src.take("a.weight", &[2, 3], Init::Normal);
        src.take("b.bias", &[2], Init::Zeros);
        let err = src.finish().unwrap_err().to_string();
        assert!(err.contains("m.safetensors"), "{err}");
        assert!(
            err.contains("1 missing") && err.contains("b.bias [2]"),
            "{err}"
        );
        assert!(
            err.contains("1 mis-shaped") && err.contains("[2, 2]"),
            "{err}"
        );
        assert!(
            err.contains("1 unexpected") && err.contains("extra.weight"),
            "{err}"
        );
    }

    #[test]
    fn flexible_prefix_allows_fresh_and_unused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let mut sink = ParamSink::default();
        sink.put(
            "a",
            HostTensor {
                shape: vec![1],
                data: vec![3.0],
            },
        );
        sink.put(
            "cls.x",
            HostTensor {
                shape: vec![1],
                data: vec![1.0],
            },
        );
        std::fs::write(&path, sink.to_safetensors("", BTreeMap::new()).unwrap()).unwrap();
        let mut src = ParamSource::from_safetensors(&path, 0, 0.02).unwrap();
        src.allow_fresh("cls.");
        src.allow_fresh("classifier.");
        assert_eq!(src.take("a", &[1], Init::Zeros).data, vec![3.0]);
        src.take("classifier.weight", &[2, 1], Init::Normal);
        let report = src.finish().unwrap();
        assert_eq!(report.fresh, vec!["classifier.weight"]);
        assert_eq!(report.unused, vec!["cls.x"]);
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"not safetensors at all").unwrap();
        let err = ParamSource::from_safetensors(&path, 0, 0.02)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("bad.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );
    }
}
