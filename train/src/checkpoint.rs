//! Training checkpoints, of pretraining and fine-tuning alike: everything a run needs to
//! continue exactly where it stopped.
//!
//! `OUT/checkpoints/step-NNNNNNNN/` is a bertkit model folder (config.json, model.safetensors,
//! tokenizer files, bertkit.json: usable by every other command as it is) plus
//! - `optimizer.safetensors`: the optimizer's moments under `PARAM.exp_avg` / `PARAM.exp_avg_sq`,
//!   flattened, f32;
//! - `trainer_state.json`: the run's [`State`] (pretraining: [`TrainerState`], step, optimizer
//!   steps, loss scale, counters, the loader's position, and the settings a resume must share
//!   with the run that wrote it; fine-tuning: its own, with the evaluations so far);
//! - `checksums.json`, written last: the size and sha256 of every other file.
//!
//! The folder is written under a hidden temporary name and renamed into place, so a checkpoint
//! folder either is complete or does not exist; a file damaged later (a truncated copy, a full
//! disk) fails its checksum, and `--resume auto` reports it and takes the next older one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bertkit_model::checkpoint::{self as model_ckpt, write_atomic, Layout};
use bertkit_model::heads::Bert;
use burn::tensor::backend::Backend;
use safetensors::tensor::{Dtype, TensorView};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::loader::Position;
use crate::shards::file_sha256;

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";
pub const CHECKSUM_FILE: &str = "checksums.json";
const PREFIX: &str = "step-";

/// What a kind of run keeps in `trainer_state.json`.
pub trait State: Serialize + DeserializeOwned {
    /// Optimizer steps of the run done (the checkpoint's folder is named by it).
    fn step(&self) -> u64;
    /// Updates the optimizer applied (its bias-correction `t`).
    fn optimizer_steps(&self) -> u64;
}

impl State for TrainerState {
    fn step(&self) -> u64 {
        self.step
    }
    fn optimizer_steps(&self) -> u64 {
        self.optimizer_steps
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Start fresh; refuse an `out` that already has checkpoints.
    Never,
    /// Continue from the newest valid checkpoint in `out`, else start fresh.
    Auto,
    /// Continue from this checkpoint folder.
    From(PathBuf),
}

impl std::str::FromStr for Resume {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "never" | "no" => Resume::Never,
            "auto" => Resume::Auto,
            path => Resume::From(PathBuf::from(path)),
        })
    }
}

/// The checkpoint a run starts from: `Never` refuses a run folder `out` that already has
/// checkpoints under `root`; `Auto` takes the newest that passes [`verify`] (each damaged one
/// is reported on stderr and skipped; none: a fresh start); `From` verifies the one given.
pub fn choose<S: State>(resume: &Resume, root: &Path, out: &Path) -> Result<Option<(PathBuf, S)>> {
    Ok(match resume {
        Resume::Never => {
            if let Some(last) = list(root)?.last() {
                bail!(
                    "{} already has checkpoints (newest {}); pass --resume auto to continue that \
                     run, or choose another output folder",
                    out.display(),
                    last.display()
                );
            }
            None
        }
        // The run's logger is not open yet (it needs the step to resume at): report on stderr.
        Resume::Auto => latest_valid(root, |dir, e| {
            eprintln!("skipping checkpoint {}: {e:#}", dir.display())
        })?,
        Resume::From(dir) => Some((dir.clone(), verify(dir)?)),
    })
}

/// Every rank resumes from the checkpoint rank 0 chose (`None`: a fresh start), verified
/// again by each rank.
pub fn agree<S: State>(
    chosen: Option<(PathBuf, S)>,
    group: &mut crate::distributed::ProcessGroup,
) -> Result<Option<(PathBuf, S)>> {
    if group.world_size == 1 {
        return Ok(chosen);
    }
    let mut path = chosen
        .as_ref()
        .map(|(dir, _)| dir.to_string_lossy().into_owned().into_bytes())
        .unwrap_or_default();
    group.broadcast(&mut path)?;
    if group.is_main() {
        return Ok(chosen);
    }
    if path.is_empty() {
        return Ok(None);
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&path).into_owned());
    let state = verify(&dir).with_context(|| {
        format!(
            "rank 0 resumes from {} but this rank cannot read it (is the run folder on a file \
             system every node shares?)",
            dir.display()
        )
    })?;
    Ok(Some((dir, state)))
}

/// The settings a resumed run must share with the run that wrote the checkpoint: a different
/// batch split or data would silently change what "the next batch" means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    pub micro_batch: usize,
    pub accumulation: usize,
    pub world_size: usize,
    pub seed: u64,
    /// sha256 of the data folder's manifest.json.
    pub data_manifest_sha256: String,
    /// General distillation: sha256 of the teacher's weights file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps of the run done (skipped non-finite steps included).
    pub step: u64,
    /// Updates the optimizer applied (its bias-correction `t`).
    pub optimizer_steps: u64,
    /// Where the loader continues.
    pub position: Position,
    pub loss_scale: f64,
    /// Good steps since the loss scale last changed (fp16).
    pub good_steps: u64,
    pub nonfinite_in_a_row: u32,
    pub skipped_steps: u64,
    pub sequences: u64,
    pub tokens: u64,
    pub identity: RunIdentity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FileSum {
    bytes: u64,
    sha256: String,
}

/// The folder of the checkpoint at `step`.
pub fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("{PREFIX}{step:08}"))
}

/// Writes a checkpoint of `model` and the optimizer state under `root`, then keeps the newest
/// `keep` checkpoints. Returns the new folder.
pub fn write<B: Backend, S: State>(
    root: &Path,
    model: &Bert<B>,
    tokenizer_dir: &Path,
    optimizer: &BTreeMap<String, Vec<f32>>,
    state: &S,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let dir = step_dir(root, state.step());
    let tmp = bertkit_model::fs::temp_path(&dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    model_ckpt::save(model, &tmp, Some(tokenizer_dir), Layout::Bertkit)
        .with_context(|| format!("writing the model to {}", tmp.display()))?;
    write_atomic(
        &tmp.join(OPTIMIZER_FILE),
        &optimizer_bytes(optimizer, state.optimizer_steps())?,
    )?;
    let json = serde_json::to_string_pretty(state)?;
    write_atomic(&tmp.join(STATE_FILE), json.as_bytes())?;
    let mut sums = BTreeMap::new();
    for entry in std::fs::read_dir(&tmp).with_context(|| format!("listing {}", tmp.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(name) = name.filter(|n| !n.starts_with('.') && path.is_file()) {
            let (bytes, sha256) = file_sha256(&path)?;
            sums.insert(name, FileSum { bytes, sha256 });
        }
    }
    write_atomic(
        &tmp.join(CHECKSUM_FILE),
        serde_json::to_string_pretty(&sums)?.as_bytes(),
    )?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    if let Ok(f) = std::fs::File::open(root) {
        let _ = f.sync_all();
    }
    for old in list(root)?.iter().rev().skip(keep) {
        std::fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(dir)
}

fn optimizer_bytes(tensors: &BTreeMap<String, Vec<f32>>, optimizer_steps: u64) -> Result<Vec<u8>> {
    let raw: Vec<(&String, Vec<u8>, usize)> = tensors
        .iter()
        .map(|(n, v)| (n, v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.len()))
        .collect();
    let views = raw
        .iter()
        .map(|(n, bytes, len)| {
            Ok((
                (*n).clone(),
                TensorView::new(Dtype::F32, vec![*len], bytes)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("optimizer_steps".to_string(), optimizer_steps.to_string())]);
    Ok(safetensors::serialize(views, Some(meta))?)
}

/// Loads the optimizer state of the checkpoint `dir` (its moments, `optimizer_steps` updates
/// done) and checks it names exactly the parameters of `model`.
pub fn restore_optimizer<AD: burn::tensor::backend::AutodiffBackend>(
    optimizer: &mut crate::optim::Optimizer<AD::InnerBackend>,
    dir: &Path,
    optimizer_steps: u64,
    model: &Bert<AD>,
    device: &AD::Device,
) -> Result<()> {
    optimizer.load_host(optimizer_steps, read_optimizer(dir)?, device)?;
    let names: Vec<String> = crate::optim::param_names(model)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    optimizer.check_names(&names)
}

/// The optimizer's tensors of a checkpoint folder.
pub fn read_optimizer(dir: &Path) -> Result<BTreeMap<String, Vec<f32>>> {
    let path = dir.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!(
                "{}: tensor {name} is {:?}, expected F32",
                path.display(),
                view.dtype()
            );
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, data);
    }
    Ok(out)
}

/// Checks every file of a checkpoint folder against its `checksums.json` and reads its state.
pub fn verify<S: State>(dir: &Path) -> Result<S> {
    let sums_path = dir.join(CHECKSUM_FILE);
    let text = std::fs::read_to_string(&sums_path).with_context(|| {
        format!(
            "reading {} (an incomplete checkpoint?)",
            sums_path.display()
        )
    })?;
    let sums: BTreeMap<String, FileSum> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", sums_path.display()))?;
    for required in [
        STATE_FILE,
        OPTIMIZER_FILE,
        model_ckpt::WEIGHTS_FILE,
        model_ckpt::CONFIG_FILE,
    ] {
        if !sums.contains_key(required) {
            bail!("{} does not list {required}", sums_path.display());
        }
    }
    for (name, want) in &sums {
        let path = dir.join(name);
        let (bytes, sha256) = file_sha256(&path)?;
        if bytes != want.bytes {
            bail!(
                "{} is {bytes} bytes, the checksum file says {} (truncated or damaged)",
                path.display(),
                want.bytes
            );
        }
        if sha256 != want.sha256 {
            bail!(
                "{}: sha256 does not match {}",
                path.display(),
                sums_path.display()
            );
        }
    }
    let path = dir.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Removes the temporary folders of checkpoint writes that never finished (a run killed while
/// writing); only one run writes into `root`, so any left there are dead.
pub fn remove_unfinished(root: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with(&format!(".{PREFIX}")) && n.contains(".tmp-")) {
            std::fs::remove_dir_all(&path).with_context(|| {
                format!("removing the unfinished checkpoint {}", path.display())
            })?;
        }
    }
    Ok(())
}

/// The checkpoint folders under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut dirs: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let path = entry?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|s| s.parse::<u64>().ok());
        if let (Some(step), true) = (step, path.is_dir()) {
            dirs.push((step, path));
        }
    }
    dirs.sort();
    Ok(dirs.into_iter().map(|(_, p)| p).collect())
}

/// The newest checkpoint under `root` that passes [`verify`]; each one that fails is reported
/// through `report` (and skipped).
pub fn latest_valid<S: State>(
    root: &Path,
    mut report: impl FnMut(&Path, &anyhow::Error),
) -> Result<Option<(PathBuf, S)>> {
    for dir in list(root)?.into_iter().rev() {
        match verify(&dir) {
            Ok(state) => return Ok(Some((dir, state))),
            Err(e) => report(&dir, &e),
        }
    }
    Ok(None)
}
