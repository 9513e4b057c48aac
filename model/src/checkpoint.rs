//! Model folders: reading Hugging Face folders and bertkit checkpoints, writing both.
//!
//! # The bertkit checkpoint format (version 1)
//! A checkpoint is a folder in Hugging Face layout plus one file of our own:
//! - `config.json`: the HF `BertConfig`, `architectures` naming the task's HF class;
//! - `model.safetensors`: every parameter as F32 under its HF name (base-model names with the
//!   `bert.` prefix when a head is present, without it for a bare `BertModel`; the MLM decoder is
//!   tied to `bert.embeddings.word_embeddings.weight` and not stored);
//! - the tokenizer files (`tokenizer.json` and/or `vocab.txt`, `tokenizer_config.json`, ...);
//! - `bertkit.json`: `{"format": "bertkit-checkpoint", "format_version": 1, "task": ...,
//!   "bertkit_version": ...}`; later stages add their state (training step, ...) beside it.
//!
//! So `transformers` loads a bertkit checkpoint as it is; `convert --to hf` writes the same
//! folder without `bertkit.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::config::BertConfig;
use crate::heads::{Bert, Task};
use crate::weights::{LoadReport, ParamSink, ParamSource};
use crate::{Error, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const PYTORCH_WEIGHTS_FILE: &str = "pytorch_model.bin";
pub const METADATA_FILE: &str = "bertkit.json";
/// Tokenizer files copied along with a model, when present.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// `bertkit.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: String,
    pub format_version: u32,
    pub task: Task,
    pub bertkit_version: String,
    /// State written by other stages (training step, data position, ...), kept as is.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl CheckpointMeta {
    pub fn new(task: Task) -> Self {
        CheckpointMeta {
            format: "bertkit-checkpoint".into(),
            format_version: 1,
            task,
            bertkit_version: env!("CARGO_PKG_VERSION").into(),
            extra: BTreeMap::new(),
        }
    }
}

/// How to read a model folder.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The task to build; by default the one the folder was saved for (`bertkit.json`, else
    /// `config.json` `architectures`, else the bare `BertModel`).
    pub task: Option<Task>,
    /// Let head (and pooler) parameters be initialized fresh when absent and dropped when the
    /// task has no use for them, as when fine-tuning a pretrained body. Reported, never silent.
    /// Such a load starts a new run, so a distillation checkpoint's projection is left out
    /// ([`Bert::without_distillation`]); a resume loads exactly.
    pub allow_head_mismatch: bool,
    /// Seed of the initialization of fresh parameters.
    pub seed: u64,
}

/// A folder given directly, the folder of a file inside it, or, for a name that is no path
/// here (`sentence-transformers/all-MiniLM-L6-v2`), its snapshot in the local Hugging Face hub
/// cache ([`crate::hub`]; offline).
pub fn model_dir(path: &Path) -> PathBuf {
    if path.is_file() {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else if path.exists() {
        path.to_path_buf()
    } else {
        path.to_str()
            .and_then(crate::hub::snapshot)
            .unwrap_or_else(|| path.to_path_buf())
    }
}

/// Reads `config.json`, and the task the folder was saved for.
pub fn read_config(dir: &Path) -> Result<(BertConfig, Task)> {
    let dir = &model_dir(dir);
    if !dir.exists() {
        let name = dir.to_string_lossy();
        let hint = match (crate::hub::is_repo_id(&name), crate::hub::cache_dir()) {
            (true, Some(cache)) => format!(
                "no such model folder, and no model of that name in the Hugging Face cache ({} \
                 not found; download it with `huggingface-cli download {name}`, or set HF_HOME \
                 or HF_HUB_CACHE)",
                crate::hub::repo_dir(&cache, &name).display()
            ),
            _ => "no such model folder".to_string(),
        };
        return Err(Error::invalid(dir, hint));
    }
    let config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
    let meta_path = dir.join(METADATA_FILE);
    if meta_path.exists() {
        let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
        let meta: CheckpointMeta =
            serde_json::from_str(&text).map_err(|e| Error::invalid(&meta_path, e.to_string()))?;
        return Ok((config, meta.task));
    }
    let task = match config.architectures.as_deref() {
        Some([first, ..]) => Task::from_architecture(first).ok_or_else(|| {
            Error::invalid(
                &dir.join(CONFIG_FILE),
                format!("architecture {first:?} is not a BERT architecture bertkit knows"),
            )
        })?,
        _ => Task::Base,
    };
    Ok((config, task))
}

/// Loads a model folder (HF or bertkit) onto `device`.
pub fn load<B: Backend>(
    path: &Path,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<(Bert<B>, LoadReport)> {
    let dir = model_dir(path);
    let (config, saved_task) = read_config(&dir)?;
    load_with_config(
        &dir,
        config,
        options.task.unwrap_or(saved_task),
        options,
        device,
    )
}

/// Loads the weights of the model folder `dir` into a model built from `config` for `task`
/// (a fine-tuning run sets the labels of a new head in `config` first).
pub fn load_with_config<B: Backend>(
    dir: &Path,
    config: BertConfig,
    task: Task,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<(Bert<B>, LoadReport)> {
    let dir = model_dir(dir);
    let safetensors = dir.join(WEIGHTS_FILE);
    let pytorch = dir.join(PYTORCH_WEIGHTS_FILE);
    let mut src = if safetensors.exists() {
        ParamSource::from_safetensors(&safetensors, options.seed, config.initializer_range)?
    } else if pytorch.exists() {
        ParamSource::from_pytorch(&pytorch, options.seed, config.initializer_range)?
    } else {
        return Err(Error::invalid(
            &dir,
            format!("no weights found (expected {WEIGHTS_FILE} or {PYTORCH_WEIGHTS_FILE})"),
        ));
    };
    if options.allow_head_mismatch {
        src.allow_fresh("pooler.");
        for prefix in crate::weights::HEAD_PREFIXES {
            src.allow_fresh(prefix);
        }
    }
    let model = Bert::load(&mut src, &config, task, device);
    let report = src.finish()?;
    let model = if options.allow_head_mismatch {
        model.without_distillation()
    } else {
        model
    };
    Ok((model, report))
}

/// A model with fresh BERT initialization (seeded), for pretraining from scratch.
pub fn init<B: Backend>(
    config: &BertConfig,
    task: Task,
    seed: u64,
    device: &B::Device,
) -> Result<Bert<B>> {
    config.validate().map_err(Error::Other)?;
    let mut src = ParamSource::fresh(seed, config.initializer_range);
    let model = Bert::load(&mut src, config, task, device);
    src.finish()?;
    Ok(model)
}

/// What to write besides the weights and config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A bertkit checkpoint: HF layout plus `bertkit.json`.
    Bertkit,
    /// A plain Hugging Face folder.
    HuggingFace,
}

/// Writes a model folder: `model.safetensors`, `config.json`, the tokenizer files found in
/// `tokenizer_dir`, and `bertkit.json` for the bertkit layout. Each file is written to a
/// temporary name and renamed, so an interrupted save never leaves a half-written file.
pub fn save<B: Backend>(
    model: &Bert<B>,
    out: &Path,
    tokenizer_dir: Option<&Path>,
    layout: Layout,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut sink = ParamSink::default();
    model.save(&mut sink);
    let prefix = if model.task == Task::Base {
        ""
    } else {
        "bert."
    };
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_atomic(
        &out.join(WEIGHTS_FILE),
        &sink.to_safetensors(prefix, metadata)?,
    )?;

    let mut config = model.config.clone();
    config.architectures = Some(vec![model.task.architecture().to_string()]);
    config.save(&out.join(CONFIG_FILE))?;

    if let Some(tok_dir) = tokenizer_dir {
        copy_tokenizer_files(tok_dir, out, &config)?;
        if model.task == Task::Base {
            copy_sentence_transformers_files(tok_dir, out)?;
        }
    }
    let meta_path = out.join(METADATA_FILE);
    match layout {
        Layout::Bertkit => {
            let meta = serde_json::to_string_pretty(&CheckpointMeta::new(model.task))
                .map_err(|e| Error::Other(e.to_string()))?;
            write_atomic(&meta_path, meta.as_bytes())?;
        }
        Layout::HuggingFace => {
            if meta_path.exists() {
                std::fs::remove_file(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
            }
        }
    }
    Ok(())
}

/// Copies the tokenizer files of `from` into `to`; writes a `tokenizer_config.json` HF can read
/// when `from` has none.
pub fn copy_tokenizer_files(from: &Path, to: &Path, config: &BertConfig) -> Result<()> {
    let mut copied = 0;
    for name in TOKENIZER_FILES {
        copied += copy_file_if_present(&from.join(name), &to.join(name))?;
    }
    if copied == 0 && !to.join("tokenizer.json").exists() && !to.join("vocab.txt").exists() {
        return Err(Error::invalid(
            from,
            "no tokenizer files (tokenizer.json or vocab.txt) to copy",
        ));
    }
    let tok_config = to.join("tokenizer_config.json");
    if !tok_config.exists() {
        let value = serde_json::json!({
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": true,
            "model_max_length": config.max_position_embeddings,
            "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "cls_token": "[CLS]", "mask_token": "[MASK]",
        });
        let text = serde_json::to_string_pretty(&value).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&tok_config, text.as_bytes())?;
    }
    Ok(())
}

/// sentence-transformers' files beside the weights: how to pool and normalize, the prompts.
pub const SENTENCE_TRANSFORMERS_FILES: [&str; 3] = [
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

/// Copies sentence-transformers' files of `from` into `to`, byte for byte: the three files of
/// [`SENTENCE_TRANSFORMERS_FILES`] and the module folders `modules.json` names (`1_Pooling/`,
/// `2_Normalize/`, ...), so a converted embedding model pools and normalizes as the original
/// did. A module path that leaves the folder is an error naming `modules.json`. Returns the
/// files copied.
pub fn copy_sentence_transformers_files(from: &Path, to: &Path) -> Result<usize> {
    let mut copied = 0;
    for name in SENTENCE_TRANSFORMERS_FILES {
        copied += copy_file_if_present(&from.join(name), &to.join(name))?;
    }
    let modules_path = from.join("modules.json");
    if !modules_path.is_file() {
        return Ok(copied);
    }
    let text = std::fs::read_to_string(&modules_path).map_err(|e| Error::io(&modules_path, e))?;
    let modules: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(&modules_path, format!("not a JSON list of modules: {e}")))?;
    for (i, module) in modules.iter().enumerate() {
        let rel = module.get("path").and_then(|p| p.as_str()).unwrap_or("");
        if rel.is_empty() {
            continue; // the transformer itself, at the folder's root
        }
        let rel_path = Path::new(rel);
        if !rel_path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::invalid(
                &modules_path,
                format!("module {i}: path {rel:?} is not a folder inside the model folder"),
            ));
        }
        copied += copy_tree(&from.join(rel_path), &to.join(rel_path))?;
    }
    Ok(copied)
}

/// Copies `src` to `dst` (whole or not at all) when `src` is a file other than `dst`.
fn copy_file_if_present(src: &Path, dst: &Path) -> Result<usize> {
    if !src.is_file() || src == dst {
        return Ok(0);
    }
    let bytes = std::fs::read(src).map_err(|e| Error::io(src, e))?;
    write_atomic(dst, &bytes)?;
    Ok(1)
}

/// Copies the files of the folder `src` (recursively) into `dst`; nothing when `src` is absent.
fn copy_tree(src: &Path, dst: &Path) -> Result<usize> {
    if !src.is_dir() {
        return Ok(0);
    }
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    let mut copied = 0;
    for entry in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let path = entry.map_err(|e| Error::io(src, e))?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        if path.is_dir() {
            copied += copy_tree(&path, &dst.join(name))?;
        } else {
            copied += copy_file_if_present(&path, &dst.join(name))?;
        }
    }
    Ok(copied)
}

/// Writes `bytes` to `path` whole or not at all (`crate::fs`); errors name `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fs::write_atomic(path, bytes).map_err(|e| Error::io(path, e))
}
