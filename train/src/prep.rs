//! `bertkit prep`: input files -> tokenized training sequences in parquet shards + manifest.json.
//!
//! The pipeline, and why it is shaped so:
//!
//! 1. **Group** the input files, in sorted order, into *file groups* of at least `shard_size`
//!    bytes on disk (a file larger than that is a group of its own). Groups depend only on the
//!    file list and sizes, so they are known before anything is read, and are read in parallel
//!    (one reader thread per 4 tokenizer threads): a corpus of many files is never limited by
//!    one decompressing, parsing reader.
//! 2. **Read** each group's documents in order and cut them into *blocks* at the first document
//!    boundary after `shard_size` bytes of text. Block `k` of group `g` becomes shard
//!    `shard-{g:05}-{k:05}.parquet`. Blocks depend only on the input and the settings, so the
//!    shards are the same whatever the thread count, and `--num-workers W --worker-index I`
//!    (group g belongs to worker `g % W`) splits the work between machines whose union is
//!    exactly the single-machine output: each worker reads only its own groups (whole files, or
//!    byte ranges of a multistream dump cut at stream starts), and records each group's block
//!    count in a hidden `.group-GGGGG.json`, so that nobody reads another worker's input.
//! 3. **Tokenize** (all cores, rayon): blocks arrive in chunks of ~1 MB of text, so tokenizing
//!    overlaps reading even within one block; each chunk's documents are cleaned (Wikipedia
//!    markup) and split into sentences, and its sentences are tokenized in parallel; results keep
//!    the document order.
//! 4. **Build sequences** (cheap, sequential per block): NSP pairs or packed sequences (see
//!    [`crate::instances`]) with a random generator seeded by `(seed, g, k)` only.
//! 5. **Write** (one thread, overlapping tokenization): the shard goes to a hidden temporary file;
//!    a hidden `.shard-{g:05}-{k:05}.json` records its size, sha256 and counts; then the shard is
//!    renamed into place. A rerun skips every block whose record and shard agree, so an
//!    interrupted run resumes where it stopped, and a half-written shard is never visible.
//! 6. **Manifest**: when every group's record and every block's shard exist (the last worker to
//!    finish sees them), `manifest.json` is written (atomically) from the records, shards in
//!    (g, k) order. It holds no timestamps or thread counts: reruns give the same bytes. A
//!    rerun reads only the groups with a missing shard.
//!
//! Memory is bounded by a few blocks per reader plus the ones being tokenized and written,
//! independent of the corpus size.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bertkit_model::checkpoint::write_atomic;
use bertkit_model::BertTokenizer;
use rayon::prelude::*;

use crate::corpus::{self, Document, InputError, InputPart, ReadOptions};
use crate::instances::{self, Specials, TokenizedDocument};
use crate::manifest::{
    Counts, Manifest, PrepSettings, ShardInfo, TokenizerInfo, FORMAT, FORMAT_VERSION,
    MANIFEST_FILE, TOKENIZER_FILE,
};
use crate::rng::Rng;
use crate::sentences;
use crate::shards::{self, Sequence};

/// At most this many error messages are kept per shard (all are counted).
const ERROR_SAMPLES: usize = 5;
const SETTINGS_FILE: &str = ".prep-settings.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Skip the bad line, document or file; count it in the summary.
    Skip,
    /// Stop at the first bad input (shards already written stay valid).
    Fail,
}

impl std::str::FromStr for OnError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(OnError::Skip),
            "fail" => Ok(OnError::Fail),
            _ => Err(format!("unknown --on-error '{s}' (skip or fail)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PrepOptions {
    pub inputs: Vec<String>,
    pub read: ReadOptions,
    /// A folder with tokenizer.json (as written by `bertkit vocab`, or any HF BERT model).
    pub tokenizer: PathBuf,
    pub out: PathBuf,
    pub seq_len: usize,
    pub nsp: bool,
    pub seed: u64,
    pub short_seq_prob: f64,
    pub shard_size: u64,
    pub num_workers: usize,
    pub worker_index: usize,
    /// Threads for tokenization (0 = all cores).
    pub threads: usize,
    pub on_error: OnError,
    pub progress: bool,
}

impl PrepOptions {
    pub fn new(inputs: Vec<String>, tokenizer: PathBuf, out: PathBuf) -> Self {
        PrepOptions {
            inputs,
            read: ReadOptions::default(),
            tokenizer,
            out,
            seq_len: 128,
            nsp: false,
            seed: 12345,
            short_seq_prob: 0.1,
            shard_size: 16 << 20,
            num_workers: 1,
            worker_index: 0,
            threads: 0,
            on_error: OnError::Skip,
            progress: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct PrepSummary {
    /// Counts over the shards this run wrote (not the skipped, already finished ones).
    pub written: Counts,
    pub shards_written: usize,
    /// This worker's shards that were already there.
    pub shards_skipped: usize,
    /// Every worker's shards, once every file group has been read by one of them.
    pub shards_total: Option<usize>,
    /// Present when every shard exists and manifest.json was written.
    pub manifest: Option<Manifest>,
    pub seconds: f64,
    /// Bytes on disk of all the input files.
    pub input_bytes: u64,
    /// Bytes on disk this run read (its own file groups, unfinished ones only).
    pub bytes_read: u64,
}

/// Block `index` of file group `group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct BlockId {
    group: usize,
    index: usize,
}

impl BlockId {
    fn shard_name(self) -> String {
        format!("shard-{:05}-{:05}.parquet", self.group, self.index)
    }

    fn record_path(self, out: &Path) -> PathBuf {
        out.join(format!(".shard-{:05}-{:05}.json", self.group, self.index))
    }
}

/// The worker that reads file group `group`: its blocks are all that worker's, so each worker
/// reads only its own groups (files, or byte ranges of a multistream dump).
fn group_worker(group: usize, num_workers: usize) -> usize {
    group % num_workers
}

/// What a worker that read a file group records (`.group-GGGGG.json`), so that other workers
/// and reruns know its blocks without reading it: the parts it was read from and its number of
/// blocks.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct GroupRecord {
    /// Each part as `path`, `path@start-end` (a byte range), with the file's size.
    parts: Vec<String>,
    blocks: usize,
}

fn group_record_path(out: &Path, group: usize) -> PathBuf {
    out.join(format!(".group-{group:05}.json"))
}

fn part_names(parts: &[InputPart]) -> Vec<String> {
    parts
        .iter()
        .map(|p| {
            let size = std::fs::metadata(&p.path).map_or(0, |m| m.len());
            match p.range {
                Some((a, b)) => format!("{}@{a}-{b} ({size} bytes)", p.path.display()),
                None => format!("{} ({size} bytes)", p.path.display()),
            }
        })
        .collect()
}

/// The number of blocks of group `g`, when a run has read it from the same parts.
fn group_blocks(out: &Path, g: usize, parts: &[InputPart]) -> Option<usize> {
    let text = std::fs::read_to_string(group_record_path(out, g)).ok()?;
    let record: GroupRecord = serde_json::from_str(&text).ok()?;
    (record.parts == part_names(parts)).then_some(record.blocks)
}

/// The record of a block if its shard is complete (record present, shard of the recorded size).
fn finished(out: &Path, id: BlockId) -> Option<ShardInfo> {
    let text = std::fs::read_to_string(id.record_path(out)).ok()?;
    let info: ShardInfo = serde_json::from_str(&text).ok()?;
    let size = std::fs::metadata(out.join(&info.file)).ok()?.len();
    (size == info.bytes).then_some(info)
}

/// Consecutive input parts with at least `shard_size` bytes on disk per group (a bigger part
/// alone). A large multistream Wikipedia dump is first cut into parts of `4 * shard_size`
/// compressed bytes (about a dozen shards of text each), so its parts are read in parallel.
fn file_groups(files: &[PathBuf], read: &ReadOptions, shard_size: u64) -> Vec<Vec<InputPart>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0u64;
    for f in files {
        for part in corpus::parts(f, read, shard_size.saturating_mul(4)) {
            bytes += part.len();
            current.push(part);
            if bytes >= shard_size {
                groups.push(std::mem::take(&mut current));
                bytes = 0;
            }
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// A block of documents read from the input, with the input errors met while reading it.
///
/// A block travels to the tokenizers in chunks of about [`CHUNK_BYTES`], so that tokenizing
/// starts while the rest of the block is still being read; `last` marks its final chunk.
struct Block {
    id: BlockId,
    docs: Vec<Document>,
    errors: u64,
    error_samples: Vec<String>,
    last: bool,
}

/// Text per chunk sent from a reader to the tokenizers.
const CHUNK_BYTES: u64 = 1 << 20;

/// Tokenized documents of a block, ready for sequence building.
struct TokenizedBlock {
    id: BlockId,
    docs: Vec<TokenizedDocument>,
    counts: Counts,
    error_samples: Vec<String>,
}

struct Tok {
    tokenizer: BertTokenizer,
    specials: Specials,
}

fn load_tokenizer(dir: &Path) -> Result<(Tok, TokenizerInfo, Vec<u8>)> {
    let path = if dir.is_file() {
        dir.to_path_buf()
    } else {
        dir.join(TOKENIZER_FILE)
    };
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (--tokenizer wants a folder with tokenizer.json, e.g. from `bertkit vocab`)",
            path.display()
        )
    })?;
    // Padding and truncation switched off, whatever the file says.
    let tokenizer = BertTokenizer::from_tokenizer_bytes(&bytes, &path)?;
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .with_context(|| format!("{}: the vocabulary has no {t} token", path.display()))
    };
    let specials = Specials {
        cls: id("[CLS]")?,
        sep: id("[SEP]")?,
    };
    id("[MASK]")?;
    id("[PAD]")?;
    let info = TokenizerInfo {
        file: TOKENIZER_FILE.to_string(),
        sha256: bertkit_model::fs::sha256_hex(&bytes),
        vocab_size: tokenizer.vocab_size(),
    };
    Ok((
        Tok {
            tokenizer,
            specials,
        },
        info,
        bytes,
    ))
}

/// Clean, split and tokenize a block's documents. Work is spread over sentences, not documents,
/// so one long article does not leave the other cores idle at the end of a block.
fn tokenize_block(block: Block, tok: &Tok, on_error: OnError) -> Result<TokenizedBlock> {
    let texts: Vec<std::borrow::Cow<str>> =
        block.docs.par_iter().map(Document::clean_text).collect();
    let split: Vec<Vec<&str>> = texts.par_iter().map(|t| sentences::split(t)).collect();
    let flat: Vec<(usize, &str)> = split
        .iter()
        .enumerate()
        .flat_map(|(d, sents)| sents.iter().map(move |s| (d, *s)))
        .collect();
    let encoded: Vec<Result<Vec<u32>, String>> = flat
        .par_iter()
        .with_min_len(64)
        .map(|(_, s)| {
            tok.tokenizer
                .inner()
                .encode_fast(*s, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| e.to_string())
        })
        .collect();
    // Regroup by document, in order.
    let mut results: Vec<Result<(TokenizedDocument, u64), InputError>> = split
        .iter()
        .map(|s| Ok((Vec::new(), s.len() as u64)))
        .collect();
    for ((d, _), ids) in flat.iter().zip(encoded) {
        match (&mut results[*d], ids) {
            (Ok((doc, _)), Ok(ids)) => {
                if !ids.is_empty() {
                    doc.push(ids);
                }
            }
            (r @ Ok(_), Err(e)) => {
                let doc = &block.docs[*d];
                *r = Err(InputError::new(
                    doc.file.as_path(),
                    doc.location.clone(),
                    format!("tokenizer: {e}"),
                ));
            }
            (Err(_), _) => {}
        }
    }
    let mut counts = Counts {
        skipped_errors: block.errors,
        ..Default::default()
    };
    let mut error_samples = block.error_samples;
    let mut docs = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok((doc, sentences)) => {
                counts.sentences += sentences;
                if doc.is_empty() {
                    counts.empty_documents += 1;
                } else {
                    counts.documents += 1;
                    docs.push(doc);
                }
            }
            Err(e) => {
                if on_error == OnError::Fail {
                    bail!("{e}");
                }
                counts.skipped_errors += 1;
                if error_samples.len() < ERROR_SAMPLES {
                    error_samples.push(e.to_string());
                }
            }
        }
    }
    Ok(TokenizedBlock {
        id: block.id,
        docs,
        counts,
        error_samples,
    })
}

fn build_sequences(block: &TokenizedBlock, opts: &PrepOptions, sp: Specials) -> Vec<Sequence> {
    let mut out = Vec::new();
    let mut rng = Rng::derive(&[opts.seed, block.id.group as u64, block.id.index as u64]);
    for i in 0..block.docs.len() {
        if opts.nsp {
            instances::nsp_pairs(
                &block.docs,
                i,
                opts.seq_len,
                opts.short_seq_prob,
                sp,
                &mut rng,
                &mut out,
            );
        } else {
            instances::pack(&block.docs[i], opts.seq_len, sp, &mut out);
        }
    }
    out
}

/// State shared by the reader threads.
struct Readers {
    groups: Vec<Vec<InputPart>>,
    next_group: std::sync::atomic::AtomicUsize,
    /// Set when one reader fails, so the others stop too.
    abort: std::sync::atomic::AtomicBool,
    opts: PrepOptions,
    bytes_read: Arc<AtomicU64>,
    docs_read: Arc<AtomicU64>,
}

/// A reader thread: takes this worker's file groups in turn and sends their unfinished blocks;
/// a group whose record and shards are all there is not read again. Returns (group, number of
/// blocks) for each group it read.
fn read_groups(r: &Readers, tx: SyncSender<Block>) -> Result<Vec<(usize, usize)>> {
    let mut done = Vec::new();
    let opts = &r.opts;
    loop {
        let g = r.next_group.fetch_add(1, Ordering::SeqCst);
        if g >= r.groups.len() || r.abort.load(Ordering::SeqCst) {
            return Ok(done);
        }
        if group_worker(g, opts.num_workers) != opts.worker_index {
            continue;
        }
        if let Some(n) = group_blocks(&opts.out, g, &r.groups[g]) {
            let all_there =
                (0..n).all(|index| finished(&opts.out, BlockId { group: g, index }).is_some());
            if all_there {
                done.push((g, n));
                continue;
            }
        }
        let read = read_group(r, g, &tx).and_then(|n| {
            let record = GroupRecord {
                parts: part_names(&r.groups[g]),
                blocks: n,
            };
            write_atomic(
                &group_record_path(&opts.out, g),
                serde_json::to_string(&record)?.as_bytes(),
            )?;
            Ok(n)
        });
        match read {
            Ok(n) => done.push((g, n)),
            Err(e) => {
                r.abort.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
    }
}

/// Read one file group into blocks; returns the number of blocks.
fn read_group(r: &Readers, g: usize, tx: &SyncSender<Block>) -> Result<usize> {
    let opts = &r.opts;
    let wanted = |id: BlockId| finished(&opts.out, id).is_none();
    let new_block = |index: usize| Block {
        id: BlockId { group: g, index },
        docs: Vec::new(),
        errors: 0,
        error_samples: Vec::new(),
        last: false,
    };
    let mut block = new_block(0);
    let mut block_wanted = wanted(block.id);
    let mut bytes = 0u64;
    let mut chunk_bytes = 0u64;
    let report = |block: &mut Block, e: InputError| -> Result<()> {
        if opts.on_error == OnError::Fail {
            bail!("{e}\n(--on-error fail; use --on-error skip to skip bad input and count it)");
        }
        tracing::warn!("skipped: {e}");
        block.errors += 1;
        if block.error_samples.len() < ERROR_SAMPLES {
            block.error_samples.push(e.to_string());
        }
        Ok(())
    };
    let send = |block: Block| -> Result<()> {
        if tx.send(block).is_err() {
            bail!("{TOKENIZER_STOPPED}");
        }
        Ok(())
    };
    for part in &r.groups[g] {
        let docs = match corpus::open_part(part, &opts.read, Some(r.bytes_read.clone())) {
            Ok(d) => d,
            Err(e) => {
                report(&mut block, e)?;
                continue;
            }
        };
        for doc in docs {
            if r.abort.load(Ordering::Relaxed) {
                bail!("{READER_STOPPED}");
            }
            match doc {
                Ok(doc) => {
                    r.docs_read.fetch_add(1, Ordering::Relaxed);
                    bytes += doc.text.len() as u64;
                    chunk_bytes += doc.text.len() as u64;
                    if block_wanted {
                        block.docs.push(doc);
                    }
                    if bytes >= opts.shard_size {
                        let next = new_block(block.id.index + 1);
                        let mut full = std::mem::replace(&mut block, next);
                        if block_wanted {
                            full.last = true;
                            send(full)?;
                        }
                        block_wanted = wanted(block.id);
                        bytes = 0;
                        chunk_bytes = 0;
                    } else if block_wanted && chunk_bytes >= CHUNK_BYTES {
                        send(Block {
                            id: block.id,
                            docs: std::mem::take(&mut block.docs),
                            errors: std::mem::take(&mut block.errors),
                            error_samples: std::mem::take(&mut block.error_samples),
                            last: false,
                        })?;
                        chunk_bytes = 0;
                    }
                }
                Err(e) => report(&mut block, e)?,
            }
        }
    }
    // The last, partial block; a group of bad files alone gets an empty shard that records its
    // errors, so that they are counted in the manifest.
    if bytes > 0 || block.errors > 0 {
        let n = block.id.index + 1;
        if block_wanted {
            block.last = true;
            send(block)?;
        }
        Ok(n)
    } else {
        Ok(block.id.index)
    }
}

/// Check or record the settings of the output folder, so a rerun cannot mix outputs.
fn check_settings(out: &Path, settings: &PrepSettings, tokenizer: &TokenizerInfo) -> Result<()> {
    let path = out.join(SETTINGS_FILE);
    let want = serde_json::json!({ "settings": settings, "tokenizer": tokenizer });
    if let Ok(text) = std::fs::read_to_string(&path) {
        let have: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: unreadable; delete it to start over", path.display()))?;
        if have != want {
            let mut diffs = Vec::new();
            for section in ["settings", "tokenizer"] {
                if let (Some(a), Some(b)) = (have[section].as_object(), want[section].as_object()) {
                    for (k, v) in b {
                        if a.get(k) != Some(v) {
                            diffs.push(format!("{section}.{k}"));
                        }
                    }
                }
            }
            bail!(
                "{} holds a preparation with different settings ({}); use another --out or delete it",
                out.display(),
                if diffs.is_empty() { "format".to_string() } else { diffs.join(", ") }
            );
        }
        return Ok(());
    }
    write_atomic(&path, serde_json::to_string_pretty(&want)?.as_bytes())?;
    Ok(())
}

/// Delete temporary files (`.NAME.tmp-PID`) that interrupted runs left behind. Only files
/// untouched for [`STALE_TEMP_SECS`] go: workers on other machines may be writing into the same
/// folder right now, and a live writer touches its file every few seconds at most.
fn remove_stale_temporaries(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() >= STALE_TEMP_SECS);
        if name.starts_with('.') && name.contains(".tmp-") && stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

const STALE_TEMP_SECS: u64 = 600;

const TOKENIZER_STOPPED: &str = "the tokenizer stopped";
const READER_STOPPED: &str = "stopped: another reader failed";

/// A reader's error that only follows from another stage's failure.
fn is_consequence(e: &anyhow::Error) -> bool {
    let m = e.to_string();
    m == TOKENIZER_STOPPED || m == READER_STOPPED
}

/// Run the preparation. See the module documentation.
pub fn run(opts: &PrepOptions) -> Result<PrepSummary> {
    let start = Instant::now();
    if opts.seq_len < 8 {
        bail!("--seq-len {} is too short (at least 8)", opts.seq_len);
    }
    if opts.num_workers == 0 || opts.worker_index >= opts.num_workers {
        bail!(
            "--worker-index {} must be below --num-workers {}",
            opts.worker_index,
            opts.num_workers
        );
    }
    if opts.shard_size == 0 {
        bail!("--shard-size must be positive");
    }
    let files = corpus::discover(&opts.inputs)?;
    let (tok, tokenizer_info, tokenizer_bytes) = load_tokenizer(&opts.tokenizer)?;
    let settings = PrepSettings {
        seq_len: opts.seq_len,
        nsp: opts.nsp,
        seed: opts.seed,
        short_seq_prob: if opts.nsp { opts.short_seq_prob } else { 0.0 },
        shard_size: opts.shard_size,
        format: opts.read.format.to_string(),
        text_field: opts.read.text_field.clone(),
        text_column: opts.read.text_column.clone(),
        max_line_bytes: opts.read.max_line_bytes as u64,
        inputs: files.iter().map(|f| f.display().to_string()).collect(),
    };
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    check_settings(&opts.out, &settings, &tokenizer_info)?;
    remove_stale_temporaries(&opts.out);
    let tok_out = opts.out.join(TOKENIZER_FILE);
    if std::fs::read(&tok_out).ok().as_deref() != Some(&tokenizer_bytes[..]) {
        write_atomic(&tok_out, &tokenizer_bytes)?;
    }

    let input_bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bytes_read = Arc::new(AtomicU64::new(0));
    let docs_read = Arc::new(AtomicU64::new(0));
    let pool = bertkit_model::denormals::thread_pool()
        .num_threads(opts.threads)
        .build()
        .context("starting the tokenizer threads")?;

    let groups = file_groups(&files, &opts.read, opts.shard_size);
    let n_readers = (pool.current_num_threads() / 4).clamp(1, groups.len().max(1));
    let readers = Arc::new(Readers {
        groups,
        next_group: Default::default(),
        abort: Default::default(),
        opts: opts.clone(),
        bytes_read: bytes_read.clone(),
        docs_read: docs_read.clone(),
    });
    let (block_tx, block_rx) = sync_channel::<Block>(n_readers);
    let (seq_tx, seq_rx) = sync_channel::<WriteJob>(1);
    let reader_threads: Vec<_> = (0..n_readers)
        .map(|_| {
            let (r, tx) = (readers.clone(), block_tx.clone());
            std::thread::spawn(move || read_groups(&r, tx))
        })
        .collect();
    drop(block_tx);
    let writer = {
        let out = opts.out.clone();
        std::thread::spawn(move || write_shards(&out, seq_rx))
    };

    let bar = progress_bar(opts.progress, input_bytes);
    let mut tokens_done = 0u64;
    let tokenize_result: Result<()> = (|| {
        // Blocks whose chunks are still arriving (at most one per reader).
        let mut open: std::collections::HashMap<BlockId, TokenizedBlock> = Default::default();
        for chunk in block_rx.iter() {
            let last = chunk.last;
            let part = pool.install(|| tokenize_block(chunk, &tok, opts.on_error))?;
            let tokenized = match open.remove(&part.id) {
                Some(mut so_far) => {
                    so_far.docs.extend(part.docs);
                    so_far.counts.add(&part.counts);
                    let room = ERROR_SAMPLES.saturating_sub(so_far.error_samples.len());
                    so_far
                        .error_samples
                        .extend(part.error_samples.into_iter().take(room));
                    so_far
                }
                None => part,
            };
            if !last {
                open.insert(tokenized.id, tokenized);
                continue;
            }
            let seqs = build_sequences(&tokenized, opts, tok.specials);
            let mut counts = tokenized.counts.clone();
            counts.sequences = seqs.len() as u64;
            counts.tokens = seqs.iter().map(|s| s.input_ids.len() as u64).sum();
            counts.nsp_random = seqs
                .iter()
                .filter(|s| s.next_sentence_label == Some(1))
                .count() as u64;
            tokens_done += counts.tokens;
            if let Some(bar) = &bar {
                let secs = start.elapsed().as_secs_f64().max(1e-3);
                bar.set_position(bytes_read.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "{} docs, {:.0}k tokens/s",
                    docs_read.load(Ordering::Relaxed),
                    tokens_done as f64 / secs / 1e3
                ));
            }
            if seq_tx
                .send((tokenized.id, seqs, counts, tokenized.error_samples))
                .is_err()
            {
                break; // the writer failed; its error is reported below
            }
        }
        Ok(())
    })();
    drop(seq_tx);
    if tokenize_result.is_err() {
        readers.abort.store(true, Ordering::SeqCst);
    }
    drop(block_rx);
    let written = writer
        .join()
        .map_err(|_| anyhow!("the shard writer panicked"))?;
    let mut block_counts = Vec::new();
    let mut read_errors = Vec::new();
    for t in reader_threads {
        match t.join().map_err(|_| anyhow!("an input reader panicked"))? {
            Ok(c) => block_counts.extend(c),
            Err(e) => read_errors.push(e),
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    // One failure stops the other stages, which then fail with a consequence ("the tokenizer
    // stopped"); report the cause: a bad input, else a tokenizer error, else a write error.
    let (causes, consequences): (Vec<_>, Vec<_>) =
        read_errors.into_iter().partition(|e| !is_consequence(e));
    if let Some(e) = causes.into_iter().next() {
        return Err(e);
    }
    tokenize_result?;
    let written = written?;
    if let Some(e) = consequences.into_iter().next() {
        return Err(e);
    }
    // This worker's blocks, then every group's count (read here, or recorded by the worker
    // that read it): the manifest needs them all.
    let mine: usize = block_counts.iter().map(|&(_, n)| n).sum();
    let counts: Option<Vec<usize>> = readers
        .groups
        .iter()
        .enumerate()
        .map(|(g, parts)| group_blocks(&opts.out, g, parts))
        .collect();
    let all_blocks: Vec<BlockId> = counts
        .iter()
        .flatten()
        .enumerate()
        .flat_map(|(group, &n)| (0..n).map(move |index| BlockId { group, index }))
        .collect();
    if counts.is_some() && all_blocks.is_empty() {
        bail!("no documents in the input ({} file(s))", files.len());
    }
    let total = counts.is_some().then_some(all_blocks.len());

    let mut summary = PrepSummary {
        written: Counts::default(),
        shards_written: written.len(),
        shards_skipped: mine - written.len(),
        shards_total: total,
        manifest: None,
        seconds: 0.0,
        input_bytes,
        bytes_read: bytes_read.load(Ordering::Relaxed),
    };
    for info in &written {
        summary.written.add(&info.counts);
    }

    let mut infos = Vec::with_capacity(all_blocks.len());
    for &id in &all_blocks {
        match finished(&opts.out, id) {
            Some(info) => infos.push(info),
            None => break,
        }
    }
    if Some(infos.len()) == total {
        let mut counts = Counts::default();
        for i in &infos {
            counts.add(&i.counts);
        }
        let manifest = Manifest {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            settings,
            tokenizer: tokenizer_info,
            counts,
            shards: infos,
        };
        write_atomic(
            &opts.out.join(MANIFEST_FILE),
            (serde_json::to_string_pretty(&manifest)? + "\n").as_bytes(),
        )?;
        summary.manifest = Some(manifest);
    }
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

type WriteJob = (BlockId, Vec<Sequence>, Counts, Vec<String>);

fn write_shards(out: &Path, rx: Receiver<WriteJob>) -> Result<Vec<ShardInfo>> {
    let mut written = Vec::new();
    for (id, seqs, counts, errors) in rx {
        let file = id.shard_name();
        let nsp = seqs.iter().any(|s| s.next_sentence_label.is_some());
        let path = out.join(&file);
        let mut info = ShardInfo {
            file,
            sha256: String::new(),
            bytes: 0,
            counts,
            errors,
        };
        // The record goes first, then the shard's rename: a visible shard always has its
        // record, so a run killed in between redoes nothing that is visible.
        shards::write_shard_then(&path, &seqs, nsp, |bytes, sha256| {
            info.bytes = bytes;
            info.sha256 = sha256.to_string();
            write_atomic(
                &id.record_path(out),
                serde_json::to_string(&info)?.as_bytes(),
            )?;
            Ok(())
        })?;
        written.push(info);
    }
    Ok(written)
}

fn progress_bar(enabled: bool, total: u64) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(500));
    Some(bar)
}

/// Parse sizes like `32MB`, `1GiB`, `500k`, `1000000`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 32MB, 1GB, 500000)"))?;
    let mult: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("unknown size unit '{u}' in '{s}'")),
    };
    Ok((n * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("16MB"), Ok(16 << 20));
        assert_eq!(parse_size("150kB"), Ok(150 << 10));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert!(parse_size("ten").unwrap_err().contains("not a size"));
        assert!(parse_size("5 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
    }

    #[test]
    fn file_groups_close_at_the_shard_size() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = [30usize, 30, 50, 200, 10]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let p = dir.path().join(format!("{i}.txt"));
                std::fs::write(&p, vec![b'x'; n]).unwrap();
                p
            })
            .collect();
        let sizes: Vec<usize> = file_groups(&files, &ReadOptions::default(), 60)
            .iter()
            .map(Vec::len)
            .collect();
        // 30+30 closes a group; 50+200 closes one; the last file stands alone.
        assert_eq!(sizes, [2, 2, 1]);
    }
}
