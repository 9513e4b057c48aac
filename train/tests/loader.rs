//! The training loader end to end, on small prepared folders built here: every row once per
//! epoch, BERT's masking statistics, determinism of masks, rank slicing, exact resume through
//! `position`/`seek` (which reads one shard), NSP pass-through, padding, and the error cases.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bertkit_train::loader::{Batch, Loader, LoaderConfig, Position, TAG_MASK};
use bertkit_train::manifest::{
    Counts, Manifest, PrepSettings, ShardInfo, TokenizerInfo, FORMAT, FORMAT_VERSION,
    MANIFEST_FILE, TOKENIZER_FILE,
};
use bertkit_train::masking::{mask, MaskingConfig, TokenInfo, IGNORE_LABEL};
use bertkit_train::rng::Rng;
use bertkit_train::shards::{file_sha256, write_shard, Sequence};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::{AddedToken, Tokenizer};

// Vocabulary: [PAD] [UNK] [CLS] [SEP] [MASK], words w0..w599, continuations ##c0..##c199.
const PAD: u32 = 0;
const CLS: u32 = 2;
const SEP: u32 = 3;
const MASK: u32 = 4;
const WORD: u32 = 5;
const WORDS: u32 = 600;
const CONT: u32 = WORD + WORDS;
const CONTS: u32 = 200;
const VOCAB: usize = (CONT + CONTS) as usize;

fn vocab(with_mask: bool) -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if !with_mask {
        v[MASK as usize] = "[NOMASK]".into();
    }
    v.extend((0..WORDS).map(|i| format!("w{i}")));
    v.extend((0..CONTS).map(|i| format!("##c{i}")));
    v
}

/// A WordPiece `tokenizer.json` with BERT's special tokens as special added tokens.
fn write_tokenizer(dir: &Path, with_mask: bool) {
    let vocab_file = dir.join("vocab.txt");
    std::fs::write(&vocab_file, vocab(with_mask).join("\n")).unwrap();
    let model = WordPiece::from_file(vocab_file.to_str().unwrap())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tok = Tokenizer::new(model);
    let specials: Vec<AddedToken> = vocab(with_mask)[..5]
        .iter()
        .map(|s| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(&specials);
    tok.save(dir.join(TOKENIZER_FILE), false).unwrap();
    std::fs::remove_file(vocab_file).unwrap();
}

/// Row `g` of the data set: `[CLS] A [SEP] B [SEP]` of length `len`, whose tokens 1 and 2 encode
/// `g`; about a third of the other tokens are `##` continuations.
fn row(g: usize, len: usize, nsp: bool) -> Sequence {
    assert!(len >= 6);
    let mut rng = Rng::derive(&[g as u64, 77]);
    let mut ids = vec![CLS, WORD + (g % 600) as u32, WORD + (g / 600) as u32];
    let sep = len / 2;
    while ids.len() < len - 1 {
        if ids.len() == sep {
            ids.push(SEP);
        } else if ids[ids.len() - 1] >= WORD && rng.below(3) == 0 {
            ids.push(CONT + rng.below(CONTS as u64) as u32);
        } else {
            ids.push(WORD + rng.below(WORDS as u64) as u32);
        }
    }
    ids.push(SEP);
    let token_type_ids = (0..len).map(|i| (i > sep) as u8).collect();
    Sequence {
        input_ids: ids,
        token_type_ids,
        next_sentence_label: nsp.then_some(g.is_multiple_of(3) as u8),
    }
}

struct Data {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// Global row ids of each shard, in file order.
    shards: Vec<Vec<usize>>,
}

/// A prepared folder with shards of the given row counts (rows numbered globally in order).
fn prepare(shard_rows: &[usize], seq_len: usize, nsp: bool, len: impl Fn(usize) -> usize) -> Data {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    write_tokenizer(&dir, true);
    let (_, tok_sha) = file_sha256(&dir.join(TOKENIZER_FILE)).unwrap();
    let mut infos = Vec::new();
    let mut shards = Vec::new();
    let mut total = Counts::default();
    let mut g = 0;
    for (i, &n) in shard_rows.iter().enumerate() {
        let ids: Vec<usize> = (g..g + n).collect();
        g += n;
        let rows: Vec<Sequence> = ids.iter().map(|&g| row(g, len(g), nsp)).collect();
        let file = format!("shard-{i:06}.parquet");
        let (bytes, sha256) = write_shard(&dir.join(&file), &rows, nsp).unwrap();
        let counts = Counts {
            documents: n as u64,
            sequences: n as u64,
            tokens: rows.iter().map(|r| r.input_ids.len() as u64).sum(),
            nsp_random: rows
                .iter()
                .filter(|r| r.next_sentence_label == Some(1))
                .count() as u64,
            ..Default::default()
        };
        total.add(&counts);
        infos.push(ShardInfo {
            file,
            sha256,
            bytes,
            counts,
            errors: vec![],
        });
        shards.push(ids);
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        settings: PrepSettings {
            seq_len,
            nsp,
            seed: 12345,
            short_seq_prob: 0.1,
            shard_size: 1 << 20,
            format: "text".into(),
            text_field: "text".into(),
            text_column: "text".into(),
            max_line_bytes: 1 << 20,
            inputs: vec!["corpus.txt".into()],
        },
        tokenizer: TokenizerInfo {
            file: TOKENIZER_FILE.into(),
            sha256: tok_sha,
            vocab_size: VOCAB,
        },
        counts: total,
        shards: infos,
    };
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
    Data {
        _tmp: tmp,
        dir,
        shards,
    }
}

fn config(batch_size: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        seed: 42,
        ..Default::default()
    }
}

/// One row of a batch, with the original tokens recovered from the labels.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    g: usize,
    len: usize,
    original: Vec<u32>,
    input: Vec<i64>,
    labels: Vec<i64>,
    types: Vec<i64>,
    attention: Vec<i64>,
    nsp: Option<i64>,
}

fn rows(b: &Batch) -> Vec<Row> {
    let t = b.inputs.seq_len;
    (0..b.inputs.batch_size)
        .map(|i| {
            let r = i * t..(i + 1) * t;
            let input = b.inputs.input_ids[r.clone()].to_vec();
            let labels = b.mlm_labels[r.clone()].to_vec();
            let original: Vec<u32> = input
                .iter()
                .zip(&labels)
                .map(|(&x, &l)| if l == IGNORE_LABEL { x } else { l } as u32)
                .collect();
            let g = (original[1] - WORD) as usize + 600 * (original[2] - WORD) as usize;
            let len = b.inputs.attention_mask[r.clone()]
                .iter()
                .filter(|&&a| a == 1)
                .count();
            Row {
                g,
                len,
                original,
                input,
                labels,
                types: b.inputs.token_type_ids[r.clone()].to_vec(),
                attention: b.inputs.attention_mask[r].to_vec(),
                nsp: b.next_sentence_label.as_ref().map(|l| l[i]),
            }
        })
        .collect()
}

fn stream(loader: &mut Loader, batches: usize) -> Vec<Row> {
    (0..batches)
        .flat_map(|_| rows(&loader.next_batch().unwrap()))
        .collect()
}

fn err(r: Result<impl std::fmt::Debug, anyhow::Error>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn token_info_from_tokenizer_json() {
    let tmp = tempfile::tempdir().unwrap();
    write_tokenizer(tmp.path(), true);
    let info = TokenInfo::from_tokenizer_file(&tmp.path().join(TOKENIZER_FILE)).unwrap();
    assert_eq!(info.vocab_size, VOCAB);
    assert_eq!((info.pad_id, info.mask_id), (PAD, MASK));
    let special: Vec<usize> = (0..VOCAB).filter(|&i| info.special[i]).collect();
    assert_eq!(special, vec![0, 1, 2, 3, 4]);
    assert!(info.continuation[CONT as usize] && !info.continuation[WORD as usize]);
    assert_eq!(
        info.continuation.iter().filter(|&&c| c).count(),
        CONTS as usize
    );

    write_tokenizer(tmp.path(), false);
    let e = err(TokenInfo::from_tokenizer_file(
        &tmp.path().join(TOKENIZER_FILE),
    ));
    assert!(e.contains("tokenizer.json") && e.contains("[MASK]"), "{e}");
}

#[test]
fn masking_statistics_over_an_epoch() {
    // 22,000 rows of 128 tokens in 3 shards.
    let data = prepare(&[8000, 8000, 6000], 128, false, |_| 128);
    for whole_word in [false, true] {
        let mut cfg = config(200);
        cfg.masking.whole_word = whole_word;
        let mut loader = Loader::open(&data.dir, cfg).unwrap();
        let all = stream(&mut loader, 110);
        let seen: HashSet<usize> = all.iter().map(|r| r.g).collect();
        assert_eq!(seen.len(), 22_000);

        let (mut candidates, mut predicted) = (0usize, 0usize);
        let (mut masked, mut kept, mut random) = (0usize, 0usize, 0usize);
        let mut split_words = 0;
        for r in &all {
            assert_eq!(r.original, row(r.g, 128, false).input_ids);
            let n = r.labels.iter().filter(|&&l| l != IGNORE_LABEL).count();
            assert!((1..=20).contains(&n), "{n}");
            for i in 0..128 {
                let special = r.original[i] < WORD;
                if special {
                    assert_eq!(
                        r.labels[i], IGNORE_LABEL,
                        "a special position was predicted"
                    );
                    assert_eq!(r.input[i], r.original[i] as i64);
                    continue;
                }
                candidates += 1;
                if r.labels[i] == IGNORE_LABEL {
                    assert_eq!(r.input[i], r.original[i] as i64);
                    continue;
                }
                predicted += 1;
                if r.input[i] == MASK as i64 {
                    masked += 1;
                } else if r.input[i] == r.labels[i] {
                    kept += 1;
                } else {
                    random += 1;
                }
                if r.original[i] >= CONT
                    && (r.labels[i] == IGNORE_LABEL) != (r.labels[i - 1] == IGNORE_LABEL)
                {
                    split_words += 1;
                }
            }
        }
        let pct = |n: usize, of: usize| 100.0 * n as f64 / of as f64;
        let rate = pct(predicted, candidates);
        assert!(
            (rate - 15.0).abs() < 1.0,
            "masked {rate}% of non-special tokens"
        );
        assert!((pct(masked, predicted) - 80.0).abs() < 2.0);
        assert!((pct(kept, predicted) - 10.0).abs() < 2.0);
        assert!((pct(random, predicted) - 10.0).abs() < 2.0);
        if whole_word {
            assert_eq!(
                split_words, 0,
                "whole words must be masked completely or not at all"
            );
        } else {
            assert!(split_words > 10_000, "{split_words}");
        }
    }

    // A binding max_predictions.
    let mut cfg = config(100);
    cfg.masking.max_predictions = 7;
    let mut loader = Loader::open(&data.dir, cfg).unwrap();
    for r in stream(&mut loader, 20) {
        assert_eq!(r.labels.iter().filter(|&&l| l != IGNORE_LABEL).count(), 7);
    }
}

#[test]
fn every_row_once_per_epoch_shard_as_shuffle_buffer() {
    // An empty shard in the middle must simply be skipped.
    let data = prepare(&[50, 30, 0, 45], 32, false, |g| 10 + g % 20);
    let mut loader = Loader::open(&data.dir, config(5)).unwrap();
    assert_eq!(loader.rows_per_epoch(), 125);
    let shard_of = |g: usize| data.shards.iter().position(|s| s.contains(&g)).unwrap();
    let mut epochs = Vec::new();
    for e in 0..3 {
        let mut order = Vec::new();
        for _ in 0..25 {
            let b = loader.next_batch().unwrap();
            assert_eq!(b.epoch, e);
            order.extend(rows(&b).iter().map(|r| r.g));
        }
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..125).collect::<Vec<_>>(), "epoch {e}");
        assert_ne!(order, sorted, "not shuffled");
        // Each shard is read as one block: 3 non-empty shards, 2 changes of shard.
        let changes = order
            .windows(2)
            .filter(|w| shard_of(w[0]) != shard_of(w[1]))
            .count();
        assert_eq!(changes, 2, "{order:?}");
        epochs.push(order);
    }
    assert_ne!(epochs[0], epochs[1]);
    assert_ne!(epochs[1], epochs[2]);

    let mut cfg = config(5);
    cfg.shuffle = false;
    let mut loader = Loader::open(&data.dir, cfg).unwrap();
    let order: Vec<usize> = stream(&mut loader, 50).iter().map(|r| r.g).collect();
    let once: Vec<usize> = (0..125).collect();
    assert_eq!(order, [once.clone(), once].concat());
}

#[test]
fn masks_are_per_seed_epoch_shard_row() {
    let data = prepare(&[40, 35], 32, false, |g| 10 + g % 20);
    // The mask of a row does not depend on the batch size (i.e. where batches split).
    let mut a = Loader::open(&data.dir, config(7)).unwrap();
    let mut b = Loader::open(&data.dir, config(3)).unwrap();
    let sa = stream(&mut a, 30); // 210 rows: 2.8 epochs
    let sb = stream(&mut b, 70);
    assert_eq!(sa, sb);

    // The documented formula: Rng::derive(&[seed, epoch, shard, row in file, TAG_MASK]).
    let mut cfg = config(5);
    cfg.shuffle = false;
    let info = TokenInfo::from_tokenizer_file(&data.dir.join(TOKENIZER_FILE)).unwrap();
    let mut loader = Loader::open(&data.dir, cfg).unwrap();
    let s = stream(&mut loader, 30); // exactly 2 epochs
    for (k, r) in s.iter().enumerate() {
        let (epoch, g) = ((k / 75) as u64, k % 75);
        assert_eq!(r.g, g);
        let (shard, file_row) = if g < 40 { (0, g) } else { (1, g - 40) };
        let ids = row(g, 10 + g % 20, false).input_ids;
        let mut rng = Rng::derive(&[42, epoch, shard, file_row as u64, TAG_MASK]);
        let (input, labels) = mask(&ids, &info, &MaskingConfig::default(), &mut rng);
        let input: Vec<i64> = input.iter().map(|&x| x as i64).collect();
        assert_eq!(r.input[..ids.len()], input[..]);
        assert_eq!(r.labels[..ids.len()], labels[..]);
    }
    // A fresh mask each epoch.
    let differ = (0..75).filter(|&g| s[g].labels != s[g + 75].labels).count();
    assert!(
        differ > 65,
        "only {differ} of 75 rows changed mask between epochs"
    );

    // Another seed: other masks.
    let mut cfg = config(5);
    cfg.shuffle = false;
    cfg.seed = 43;
    let mut other = Loader::open(&data.dir, cfg).unwrap();
    let o = stream(&mut other, 15);
    let differ = (0..75).filter(|&g| s[g].labels != o[g].labels).count();
    assert!(differ > 65, "{differ}");
}

#[test]
fn ranks_together_see_what_one_rank_sees() {
    let data = prepare(&[50, 30, 0, 45], 32, true, |g| 10 + g % 20);
    for (world, b) in [(2, 3), (3, 2), (4, 5)] {
        let mut single = Loader::open(&data.dir, config(world * b)).unwrap();
        let mut ranks: Vec<Loader> = (0..world)
            .map(|rank| {
                let mut cfg = config(b);
                cfg.rank = rank;
                cfg.world_size = world;
                Loader::open(&data.dir, cfg).unwrap()
            })
            .collect();
        // 40 global batches cross several shard and epoch boundaries.
        for _ in 0..40 {
            let whole = single.next_batch().unwrap();
            let parts: Vec<Batch> = ranks.iter_mut().map(|l| l.next_batch().unwrap()).collect();
            for p in &parts {
                assert_eq!(p.inputs.batch_size, b);
                assert_eq!(p.epoch, whole.epoch);
            }
            let cat = |f: fn(&Batch) -> Vec<i64>| parts.iter().flat_map(f).collect::<Vec<i64>>();
            assert_eq!(cat(|p| p.inputs.input_ids.clone()), whole.inputs.input_ids);
            assert_eq!(cat(|p| p.mlm_labels.clone()), whole.mlm_labels);
            assert_eq!(
                cat(|p| p.inputs.token_type_ids.clone()),
                whole.inputs.token_type_ids
            );
            assert_eq!(
                cat(|p| p.inputs.attention_mask.clone()),
                whole.inputs.attention_mask
            );
            let nsp = cat(|p| p.next_sentence_label.clone().unwrap());
            assert_eq!(Some(nsp), whole.next_sentence_label);
            for l in &ranks {
                assert_eq!(l.position(), single.position());
            }
        }
    }
}

#[test]
fn resume_from_a_saved_position_is_exact() {
    let data = prepare(&[50, 30, 0, 45], 32, false, |g| 10 + g % 20);
    for (rank, world) in [(0, 1), (1, 2)] {
        let cfg = LoaderConfig {
            rank,
            world_size: world,
            ..config(8)
        };
        let mut loader = Loader::open(&data.dir, cfg.clone()).unwrap();
        let mut positions = Vec::new();
        let mut batches = Vec::new();
        for _ in 0..60 {
            positions.push(loader.position());
            batches.push(loader.next_batch().unwrap());
        }
        positions.push(loader.position());
        // Batches that straddle a shard boundary and an epoch boundary.
        let shard_cross = (0..60)
            .find(|&k| {
                let (a, b) = (positions[k], positions[k + 1]);
                a.epoch == b.epoch && a.shard != b.shard && b.row != 0
            })
            .unwrap();
        let epoch_cross = (0..60)
            .find(|&k| positions[k].epoch != positions[k + 1].epoch && positions[k + 1].row != 0)
            .unwrap();
        for k in [0, 1, shard_cross, epoch_cross, epoch_cross + 1, 50] {
            let saved = serde_json::to_string(&positions[k]).unwrap();
            let mut resumed = Loader::open(&data.dir, cfg.clone()).unwrap();
            resumed.seek(serde_json::from_str(&saved).unwrap()).unwrap();
            for j in k..(k + 8).min(60) {
                assert_eq!(
                    resumed.next_batch().unwrap(),
                    batches[j],
                    "resumed at {k}, batch {j}"
                );
                assert_eq!(resumed.position(), positions[j + 1]);
            }
        }
    }
}

#[test]
fn seek_reads_only_the_shard_it_lands_in() {
    // 8 shards of 20 rows; batches of 4: 40 batches an epoch, 5 per shard.
    let data = prepare(&[20; 8], 32, false, |g| 10 + g % 20);
    let cfg = LoaderConfig {
        prefetch: false,
        ..config(4)
    };
    let target = Position {
        epoch: 5,
        shard: 7,
        row: 0,
    };
    let mut full = Loader::open(&data.dir, cfg.clone()).unwrap();
    for _ in 0..5 * 40 + 35 {
        full.next_batch().unwrap();
    }
    assert_eq!(full.position(), target);
    let want = full.next_batch().unwrap();
    assert!(full.shard_reads() > 40);

    let mut resumed = Loader::open(&data.dir, cfg.clone()).unwrap();
    resumed.seek(target).unwrap();
    assert_eq!(resumed.shard_reads(), 0);
    assert_eq!(resumed.next_batch().unwrap(), want);
    assert_eq!(resumed.shard_reads(), 1);

    // Out of range.
    let e = err(resumed.seek(Position { shard: 8, ..target }));
    assert!(e.contains("8 shards"), "{e}");
    let e = err(resumed.seek(Position { row: 20, ..target }));
    assert!(e.contains("row 20") && e.contains(".parquet"), "{e}");

    // Prefetching changes nothing but timing.
    let mut a = Loader::open(&data.dir, cfg).unwrap();
    let mut b = Loader::open(&data.dir, config(4)).unwrap();
    for _ in 0..100 {
        assert_eq!(a.next_batch().unwrap(), b.next_batch().unwrap());
    }
}

#[test]
fn nsp_labels_types_and_padding() {
    let data = prepare(&[30, 20], 32, true, |g| 10 + g % 20);
    for (pad_to, t) in [(None, 32), (Some(40), 40)] {
        let cfg = LoaderConfig {
            pad_to,
            ..config(10)
        };
        let mut loader = Loader::open(&data.dir, cfg).unwrap();
        assert_eq!(loader.seq_len(), t);
        for r in stream(&mut loader, 10) {
            let want = row(r.g, 10 + r.g % 20, true);
            let len = want.input_ids.len();
            assert_eq!(r.len, len);
            assert_eq!(r.original[..len], want.input_ids[..]);
            assert!(r.original[len..].iter().all(|&x| x == PAD));
            assert!(r.labels[len..].iter().all(|&l| l == IGNORE_LABEL));
            assert!(r.attention[..len].iter().all(|&a| a == 1));
            assert!(r.attention[len..].iter().all(|&a| a == 0));
            let types: Vec<i64> = want.token_type_ids.iter().map(|&x| x as i64).collect();
            assert_eq!(r.types[..len], types[..]);
            assert!(r.types[len..].iter().all(|&x| x == 0));
            assert_eq!(r.nsp, Some(want.next_sentence_label.unwrap() as i64));
        }
    }
    let plain = prepare(&[10], 32, false, |_| 32);
    let mut loader = Loader::open(&plain.dir, config(4)).unwrap();
    assert_eq!(loader.next_batch().unwrap().next_sentence_label, None);
}

/// Stable shapes: every batch has `batch x max_predictions` prediction rows, the masked
/// positions first (weight 1), then padding (weight 0); without, the masked positions only.
#[test]
fn fixed_prediction_slots_give_every_batch_the_same_rows() {
    use bertkit_train::pretrain::objective::Predictions;
    let data = prepare(&[30, 20], 32, true, |g| 10 + g % 20);
    let masking = MaskingConfig {
        max_predictions: 5,
        ..Default::default()
    };
    let fixed = LoaderConfig {
        fixed_predictions: true,
        masking: masking.clone(),
        ..config(6)
    };
    let plain = LoaderConfig {
        masking,
        ..config(6)
    };
    let (mut a, mut b) = (
        Loader::open(&data.dir, fixed).unwrap(),
        Loader::open(&data.dir, plain).unwrap(),
    );
    let mut counts = HashSet::new();
    for _ in 0..12 {
        let (x, y) = (a.next_batch().unwrap(), b.next_batch().unwrap());
        assert_eq!(x.prediction_slots, Some(30));
        assert_eq!(y.prediction_slots, None);
        assert_eq!(x.mlm_labels, y.mlm_labels, "the same masks");
        let (px, py) = (Predictions::of(&x), Predictions::of(&y));
        let real = py.positions.len();
        counts.insert(real);
        assert!(real > 0 && real <= 30);
        assert_eq!(px.positions.len(), 30);
        assert_eq!(px.positions[..real], py.positions[..]);
        assert_eq!(px.labels[..real], py.labels[..]);
        let w = px.weights.unwrap();
        assert!(w[..real].iter().all(|&v| v == 1.0) && w[real..].iter().all(|&v| v == 0.0));
        assert_eq!(py.weights, None);
    }
    assert!(counts.len() > 1, "the masked counts vary: {counts:?}");
}

#[test]
fn errors_name_the_file() {
    // A shard listed in the manifest is missing.
    let data = prepare(&[10, 10], 32, false, |_| 20);
    std::fs::remove_file(data.dir.join("shard-000001.parquet")).unwrap();
    let e = err(Loader::open(&data.dir, config(4)));
    assert!(
        e.contains("shard-000001.parquet") && e.contains("does not exist"),
        "{e}"
    );

    // A shard with another row count than the manifest says.
    let data = prepare(&[10, 10], 32, false, |_| 20);
    let rows: Vec<Sequence> = (0..9).map(|g| row(g, 20, false)).collect();
    write_shard(&data.dir.join("shard-000001.parquet"), &rows, false).unwrap();
    let e = err(Loader::open(&data.dir, config(4)));
    assert!(
        e.contains("shard-000001.parquet") && e.contains("9 rows"),
        "{e}"
    );

    // Same row count, other content: only `verify` notices.
    let data = prepare(&[10, 10], 32, false, |_| 20);
    let rows: Vec<Sequence> = (100..110).map(|g| row(g, 20, false)).collect();
    write_shard(&data.dir.join("shard-000000.parquet"), &rows, false).unwrap();
    Loader::open(&data.dir, config(4)).unwrap();
    let verify = LoaderConfig {
        verify: true,
        ..config(4)
    };
    let e = err(Loader::open(&data.dir, verify));
    assert!(
        e.contains("shard-000000.parquet") && e.contains("sha256"),
        "{e}"
    );

    // A row longer than the padded length.
    let data = prepare(&[10, 10], 32, false, |g| 10 + g);
    let cfg = LoaderConfig {
        pad_to: Some(16),
        shuffle: false,
        ..config(4)
    };
    let mut loader = Loader::open(&data.dir, cfg).unwrap();
    loader.next_batch().unwrap(); // rows 0..4: 10..13 tokens
    let e = err(loader.next_batch()); // row 6 has 16, row 7 has 17
    assert!(
        e.contains("shard-000000.parquet") && e.contains("row 7") && e.contains("17 tokens"),
        "{e}"
    );

    // An empty data set.
    let data = prepare(&[0, 0], 32, false, |_| 20);
    let e = err(Loader::open(&data.dir, config(4)));
    assert!(e.contains("empty"), "{e}");

    // A tokenizer without [MASK].
    let data = prepare(&[10], 32, false, |_| 20);
    write_tokenizer(&data.dir, false);
    let e = err(Loader::open(&data.dir, config(4)));
    assert!(e.contains("tokenizer.json") && e.contains("[MASK]"), "{e}");

    // NSP data whose shard lacks the label column.
    let data = prepare(&[10], 32, false, |_| 20);
    let path = data.dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"nsp\": false", "\"nsp\": true")).unwrap();
    let mut loader = Loader::open(&data.dir, config(4)).unwrap();
    let e = err(loader.next_batch());
    assert!(
        e.contains("shard-000000.parquet") && e.contains("next_sentence_label"),
        "{e}"
    );

    // Bad settings.
    let data = prepare(&[10], 32, false, |_| 20);
    let bad = LoaderConfig {
        rank: 2,
        world_size: 2,
        ..config(4)
    };
    assert!(err(Loader::open(&data.dir, bad)).contains("rank 2"));
    assert!(err(Loader::open(&data.dir, config(0))).contains("batch_size"));
}
