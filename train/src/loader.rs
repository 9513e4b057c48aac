//! The training-side loader: batches of dynamically masked sequences from a prepared folder
//! (`manifest.json`, parquet shards, `tokenizer.json`, as written by `bertkit prep`).
//!
//! The data is one infinite, deterministic stream of rows, a function of the seed alone:
//!
//! - for epoch `e = 0, 1, 2, ...` the shards come in the order given by shuffling the manifest's
//!   shard list with `Rng::derive(&[seed, e, TAG_SHARD_ORDER])`;
//! - within a shard (manifest index `s`) the rows come in the order given by shuffling
//!   `0..rows` with `Rng::derive(&[seed, e, s, TAG_ROW_ORDER])`, so a whole shard is the shuffle
//!   buffer (with `shuffle: false` both orders are the identity);
//! - row `r` of the file of shard `s` is masked in epoch `e` with
//!   `Rng::derive(&[seed, e, s, r, TAG_MASK])` (see [`crate::masking`]): a fresh mask each epoch,
//!   whatever the batch size, rank count or resume point.
//!
//! Global batches are consecutive runs of `batch_size * world_size` rows of the stream, crossing
//! shard and epoch boundaries; rank `r` gets rows `[r * batch_size, (r + 1) * batch_size)` of each
//! one. So `n` ranks with batch `b` together see exactly the rows and masks that one rank with
//! batch `n * b` sees.
//!
//! A [`Position`] (epoch, shard in that epoch's order, row in that shard's shuffled order) names
//! where the next global batch starts; it is the same on every rank. [`Loader::seek`] jumps to a
//! position without reading anything; the next batch reads only the shard it lands in, as the
//! row counts come from the manifest. Memory holds one shard, plus the next one while it is
//! read on a background thread (`prefetch`), which changes timing only, never the data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, MANIFEST_FILE, TOKENIZER_FILE};
use crate::masking::{mask, MaskingConfig, TokenInfo, IGNORE_LABEL};
use crate::rng::Rng;
use crate::shards::{file_sha256, read_shard, ShardData};

/// Stream tag of the per-epoch shard order.
pub const TAG_SHARD_ORDER: u64 = u64::from_be_bytes(*b"shrd-ord");
/// Stream tag of the per-epoch row order within a shard.
pub const TAG_ROW_ORDER: u64 = u64::from_be_bytes(*b"row-ordr");
/// Stream tag of a row's mask.
pub const TAG_MASK: u64 = u64::from_be_bytes(*b"mlm-mask");

#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Rows per batch on this rank.
    pub batch_size: usize,
    pub rank: usize,
    pub world_size: usize,
    pub seed: u64,
    /// Shuffle shards and rows each epoch (else the manifest and file order).
    pub shuffle: bool,
    pub masking: MaskingConfig,
    /// Pad every row to this length; `None` = the manifest's `seq_len`.
    pub pad_to: Option<usize>,
    /// Check the sha256 of the tokenizer and of every shard against the manifest on open.
    pub verify: bool,
    /// Read the next shard on a background thread.
    pub prefetch: bool,
    /// Give every batch `batch_size x masking.max_predictions` prediction slots
    /// ([`Batch::prediction_slots`]): the same shapes in every step.
    pub fixed_predictions: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 32,
            rank: 0,
            world_size: 1,
            seed: 0,
            shuffle: true,
            masking: MaskingConfig::default(),
            pad_to: None,
            verify: false,
            prefetch: true,
            fixed_predictions: false,
        }
    }
}

/// Where in the stream the next global batch starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    /// Index in the epoch's shard order (not the manifest index).
    pub shard: usize,
    /// Index in that shard's shuffled row order (not the row in the file).
    pub row: usize,
}

/// One rank's batch: the model inputs (row-major `[batch_size, seq_len]`, padded with `[PAD]`;
/// `inputs.to_input(device)` makes the tensors) and the pretraining labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub inputs: bertkit_model::tokenizer::Batch,
    /// The original id where predicted, -100 elsewhere (padding included).
    pub mlm_labels: Vec<i64>,
    /// `[batch_size]`, 0 = B follows A, 1 = random; `None` for data prepared without NSP.
    pub next_sentence_label: Option<Vec<i64>>,
    /// The epoch of the global batch's first row.
    pub epoch: u64,
    /// The MLM head runs on this many rows: the masked positions, then rows of weight 0, so
    /// that every step has the same shapes (a GPU compiles and tunes its kernels once). `None`:
    /// the masked positions only. Never fewer than the masked positions.
    pub prediction_slots: Option<usize>,
}

struct ShardFile {
    path: PathBuf,
    rows: usize,
}

type Pending = (usize, JoinHandle<Result<ShardData>>);

pub struct Loader {
    cfg: LoaderConfig,
    seq_len: usize,
    nsp: bool,
    info: TokenInfo,
    manifest: Manifest,
    shards: Vec<ShardFile>,
    pos: Position,
    /// Shard orders of the last two epochs asked for.
    orders: Vec<(u64, Vec<usize>)>,
    /// The shard in memory (manifest index) and its row order for one epoch.
    data: Option<(usize, ShardData)>,
    row_order: Option<(u64, usize, Vec<usize>)>,
    pending: Option<Pending>,
    reads: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("cfg", &self.cfg)
            .field("seq_len", &self.seq_len)
            .field("shards", &self.shards.len())
            .field("position", &self.pos)
            .finish_non_exhaustive()
    }
}

impl Loader {
    /// Opens a prepared folder: reads the manifest and the tokenizer, checks that every shard
    /// exists and has the row count the manifest gives (from the parquet footer), and with
    /// `verify` the sha256 of every file.
    pub fn open(dir: &Path, cfg: LoaderConfig) -> Result<Loader> {
        if cfg.batch_size == 0 {
            bail!("loader batch_size must be at least 1");
        }
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            bail!(
                "loader rank {} is not in 0..world_size ({})",
                cfg.rank,
                cfg.world_size
            );
        }
        cfg.masking.validate()?;
        let manifest = Manifest::read(dir)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let seq_len = cfg.pad_to.unwrap_or(manifest.settings.seq_len);
        if seq_len == 0 {
            bail!(
                "loader pad_to (or seq_len in {}) is 0",
                manifest_path.display()
            );
        }
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let info = TokenInfo::from_tokenizer_file(&tokenizer_path)?;
        if cfg.verify {
            check_sha256(&tokenizer_path, &manifest.tokenizer.sha256)?;
        }

        let mut shards = Vec::with_capacity(manifest.shards.len());
        for s in &manifest.shards {
            let path = dir.join(&s.file);
            if !path.is_file() {
                bail!(
                    "shard {} listed in {} does not exist",
                    path.display(),
                    manifest_path.display()
                );
            }
            let rows = usize::try_from(s.counts.sequences)
                .with_context(|| format!("{}: too many sequences", path.display()))?;
            let in_file = footer_rows(&path)?;
            if in_file != s.counts.sequences {
                bail!(
                    "shard {} has {in_file} rows, but {} says {}",
                    path.display(),
                    manifest_path.display(),
                    s.counts.sequences
                );
            }
            shards.push(ShardFile { path, rows });
        }
        if cfg.verify {
            manifest
                .shards
                .par_iter()
                .zip(&shards)
                .try_for_each(|(s, f)| check_sha256(&f.path, &s.sha256))?;
        }
        if shards.iter().all(|s| s.rows == 0) {
            bail!(
                "the data set in {} is empty: {} lists no sequences",
                dir.display(),
                manifest_path.display()
            );
        }

        let mut loader = Loader {
            nsp: manifest.settings.nsp,
            seq_len,
            info,
            manifest,
            shards,
            pos: Position {
                epoch: 0,
                shard: 0,
                row: 0,
            },
            orders: Vec::new(),
            data: None,
            row_order: None,
            pending: None,
            reads: Arc::new(AtomicUsize::new(0)),
            cfg,
        };
        loader.pos = loader.normalize(loader.pos)?;
        Ok(loader)
    }

    /// Where the next global batch starts (the same on every rank).
    pub fn position(&self) -> Position {
        self.pos
    }

    /// Continue from `pos` (a [`Loader::position`] of a loader over the same data and seed).
    /// Reads nothing: the next batch reads the one shard it starts in.
    pub fn seek(&mut self, pos: Position) -> Result<()> {
        let n = self.shards.len();
        if pos.shard >= n {
            bail!(
                "cannot seek to shard {} of epoch {}: the data set has {n} shards",
                pos.shard,
                pos.epoch
            );
        }
        let index = self.shard_at(pos.epoch, pos.shard);
        let shard = &self.shards[index];
        if pos.row >= shard.rows {
            bail!(
                "cannot seek to row {} of shard {} of epoch {}: that is {} with {} rows",
                pos.row,
                pos.shard,
                pos.epoch,
                shard.path.display(),
                shard.rows
            );
        }
        self.pos = pos;
        Ok(())
    }

    /// This rank's part of the next global batch.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let (b, t) = (self.cfg.batch_size, self.seq_len);
        let start = self.pos;
        let mut batch = Batch {
            inputs: bertkit_model::tokenizer::Batch {
                batch_size: b,
                seq_len: t,
                input_ids: vec![self.info.pad_id as i64; b * t],
                token_type_ids: vec![0; b * t],
                attention_mask: vec![0; b * t],
                lengths: vec![0; b],
            },
            mlm_labels: vec![IGNORE_LABEL; b * t],
            next_sentence_label: self.nsp.then(|| vec![0; b]),
            epoch: start.epoch,
            prediction_slots: self
                .cfg
                .fixed_predictions
                .then_some(b * self.cfg.masking.max_predictions),
        };
        let mut p = self.skip(start, self.cfg.rank * b)?;
        for i in 0..b {
            let index = self.shard_at(p.epoch, p.shard);
            self.load(index, p)?;
            let file_row = self.file_row(p.epoch, index, p.row);
            self.fill(&mut batch, i, p.epoch, index, file_row)?;
            p = self.skip(p, 1)?;
        }
        self.pos = self.skip(p, (self.cfg.world_size - self.cfg.rank - 1) * b)?;
        Ok(batch)
    }

    pub fn token_info(&self) -> &TokenInfo {
        &self.info
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The padded length of every row.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Rows in one epoch of the whole data set (all ranks together).
    pub fn rows_per_epoch(&self) -> usize {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// How many times a shard file has been read (prefetches included), for tests and logs.
    pub fn shard_reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }

    /// The manifest index of the `k`-th shard of `epoch`.
    fn shard_at(&mut self, epoch: u64, k: usize) -> usize {
        if let Some((_, order)) = self.orders.iter().find(|(e, _)| *e == epoch) {
            return order[k];
        }
        let mut order: Vec<usize> = (0..self.shards.len()).collect();
        if self.cfg.shuffle {
            Rng::derive(&[self.cfg.seed, epoch, TAG_SHARD_ORDER]).shuffle(&mut order);
        }
        let index = order[k];
        if self.orders.len() == 2 {
            self.orders.remove(0);
        }
        self.orders.push((epoch, order));
        index
    }

    /// The first row at or after `p` (skipping past the end of shards and epochs).
    fn normalize(&mut self, mut p: Position) -> Result<Position> {
        loop {
            if p.shard >= self.shards.len() {
                p = Position {
                    epoch: p.epoch.checked_add(1).context("epoch counter overflow")?,
                    shard: 0,
                    row: 0,
                };
            }
            let index = self.shard_at(p.epoch, p.shard);
            if p.row < self.shards[index].rows {
                return Ok(p);
            }
            p.shard += 1;
            p.row = 0;
        }
    }

    /// The position `n` rows after the (normalized) position `p`; reads nothing.
    fn skip(&mut self, mut p: Position, mut n: usize) -> Result<Position> {
        while n > 0 {
            let index = self.shard_at(p.epoch, p.shard);
            let left = self.shards[index].rows - p.row;
            if n < left {
                p.row += n;
                return Ok(p);
            }
            n -= left;
            p = self.normalize(Position {
                epoch: p.epoch,
                shard: p.shard + 1,
                row: 0,
            })?;
        }
        Ok(p)
    }

    /// Makes shard `index` (at position `p`) the one in memory, then starts reading the next.
    fn load(&mut self, index: usize, p: Position) -> Result<()> {
        if matches!(&self.data, Some((i, _)) if *i == index) {
            return Ok(());
        }
        self.data = None;
        let path = &self.shards[index].path;
        let data = match self.pending.take() {
            Some((i, handle)) if i == index => handle.join().map_err(|_| {
                anyhow!(
                    "reading shard {}: the reading thread panicked",
                    path.display()
                )
            })??,
            _ => read_counted(path, &self.reads)?,
        };
        let rows = self.shards[index].rows;
        if data.len() != rows {
            bail!(
                "shard {} has {} rows, but the manifest says {rows}",
                path.display(),
                data.len()
            );
        }
        if self.nsp && data.next_sentence_label.is_none() {
            bail!(
                "shard {} has no next_sentence_label column, but the manifest says the data is NSP",
                path.display()
            );
        }
        self.data = Some((index, data));

        if self.cfg.prefetch {
            let next = self.normalize(Position {
                epoch: p.epoch,
                shard: p.shard + 1,
                row: 0,
            })?;
            let next_index = self.shard_at(next.epoch, next.shard);
            if next_index != index {
                let path = self.shards[next_index].path.clone();
                let reads = Arc::clone(&self.reads);
                // If no thread can be started, the shard is read when needed.
                self.pending = std::thread::Builder::new()
                    .name("bertkit-shard-prefetch".into())
                    .spawn(move || read_counted(&path, &reads))
                    .ok()
                    .map(|h| (next_index, h));
            }
        }
        Ok(())
    }

    /// The row in the file of shard `index` at place `k` of its order in `epoch`.
    fn file_row(&mut self, epoch: u64, index: usize, k: usize) -> usize {
        if let Some((e, i, order)) = &self.row_order {
            if *e == epoch && *i == index {
                return order[k];
            }
        }
        let mut order: Vec<usize> = (0..self.shards[index].rows).collect();
        if self.cfg.shuffle {
            Rng::derive(&[self.cfg.seed, epoch, index as u64, TAG_ROW_ORDER]).shuffle(&mut order);
        }
        let row = order[k];
        self.row_order = Some((epoch, index, order));
        row
    }

    /// Masks row `row` of the loaded shard `index` into row `i` of `batch`.
    fn fill(
        &self,
        batch: &mut Batch,
        i: usize,
        epoch: u64,
        index: usize,
        row: usize,
    ) -> Result<()> {
        let Some((_, data)) = &self.data else {
            bail!("internal error: no shard loaded");
        };
        let path = &self.shards[index].path;
        let ids = data.input_ids(row);
        let t = self.seq_len;
        if ids.len() > t {
            bail!(
                "shard {} row {row} has {} tokens, more than the {t} the loader pads to",
                path.display(),
                ids.len()
            );
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.info.vocab_size) {
            bail!(
                "shard {} row {row} has token id {bad}, outside the tokenizer's vocabulary of {}",
                path.display(),
                self.info.vocab_size
            );
        }
        let mut rng = Rng::derive(&[self.cfg.seed, epoch, index as u64, row as u64, TAG_MASK]);
        let (input, labels) = mask(ids, &self.info, &self.cfg.masking, &mut rng);
        let at = i * t;
        for (j, ((&id, &label), &tt)) in input
            .iter()
            .zip(&labels)
            .zip(data.token_type_ids(row))
            .enumerate()
        {
            batch.inputs.input_ids[at + j] = id as i64;
            batch.mlm_labels[at + j] = label;
            batch.inputs.token_type_ids[at + j] = tt as i64;
            batch.inputs.attention_mask[at + j] = 1;
        }
        batch.inputs.lengths[i] = input.len();
        if let (Some(out), Some(label)) = (
            batch.next_sentence_label.as_mut(),
            data.next_sentence_label(row),
        ) {
            out[i] = label as i64;
        }
        Ok(())
    }
}

fn read_counted(path: &Path, reads: &AtomicUsize) -> Result<ShardData> {
    reads.fetch_add(1, Ordering::Relaxed);
    read_shard(path)
}

/// The row count in a parquet file's footer (reads only the footer).
fn footer_rows(path: &Path) -> Result<u64> {
    let file =
        std::fs::File::open(path).with_context(|| format!("opening shard {}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{}: not a readable parquet file", path.display()))?;
    let rows = reader.metadata().file_metadata().num_rows();
    u64::try_from(rows).with_context(|| format!("{}: negative row count", path.display()))
}

fn check_sha256(path: &Path, want: &str) -> Result<()> {
    let (_, got) = file_sha256(path)?;
    if !got.eq_ignore_ascii_case(want) {
        bail!(
            "{}: sha256 is {got}, but the manifest says {want} (the file changed after prep)",
            path.display()
        );
    }
    Ok(())
}
