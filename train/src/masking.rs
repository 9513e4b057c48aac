//! Dynamic masking for the masked-LM objective, with the semantics of Google BERT's
//! `create_masked_lm_predictions` (google-research/bert, `create_pretraining_data.py`).
//!
//! For one sequence (special tokens included, no padding):
//!
//! 1. Candidates are every position whose token is not special (`[CLS]`, `[SEP]`, `[PAD]`,
//!    `[UNK]`, `[MASK]` and any added token marked special). With whole-word masking a `##`
//!    token joins the group of the candidate right before it; otherwise each candidate is its
//!    own group.
//! 2. The groups are shuffled. `num_to_predict = min(max_predictions, max(1, round(len *
//!    mask_prob)))`, where `len` counts the special tokens too and `round` is Python's (half to
//!    even), exactly as Google computes it.
//! 3. Groups are taken in shuffled order; a group that would make the total exceed
//!    `num_to_predict` is skipped (so whole words are masked completely or not at all).
//! 4. Each chosen position becomes `[MASK]` with probability `mask_token_prob` (0.8); otherwise
//!    it keeps its token with probability `keep / (1 - mask_token_prob)` (Google: 0.5), otherwise
//!    it becomes a random id drawn uniformly from the whole vocabulary `[0, vocab_size)`, special
//!    tokens included, as Google does (so about 10% kept, 10% random, a random id can equal the
//!    original).
//!
//! Two deliberate differences from Google: all special tokens are excluded (Google excludes only
//! `[CLS]` and `[SEP]`), and a `##` token only joins a group that ends right before it (Google
//! would join a `##` token following `[SEP]` to the last word before the `[SEP]`). A `mask_prob`
//! of 0 masks nothing (Google would still mask one token).
//!
//! Every random draw comes from the caller's [`Rng`], in a fixed order (the group shuffle, then
//! per chosen position one draw for `[MASK]`, and if not masked one for keep-vs-random and one
//! for the random id), so a mask is a pure function of the sequence and the generator state.

use std::path::Path;

use anyhow::{anyhow, bail, Result};

use crate::rng::Rng;

/// The label of a position that is not predicted (PyTorch's `ignore_index`).
pub const IGNORE_LABEL: i64 = -100;

/// BERT's special tokens, always treated as special when the vocabulary has them.
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// What masking needs to know about the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Ids are `0..vocab_size` (largest id + 1).
    pub vocab_size: usize,
    pub mask_id: u32,
    pub pad_id: u32,
    /// By id: never a masking candidate.
    pub special: Vec<bool>,
    /// By id: the token starts with `##` (a word continuation).
    pub continuation: Vec<bool>,
}

impl TokenInfo {
    /// From a Hugging Face `tokenizer.json`: special = the added tokens marked special, plus
    /// [`SPECIAL_TOKENS`] where present. Errors name the file when it cannot be loaded or has no
    /// `[MASK]` or `[PAD]`.
    pub fn from_tokenizer_file(path: &Path) -> Result<TokenInfo> {
        let tok = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))?;
        let vocab = tok.get_vocab(true);
        let size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let mut names = vec![None; size];
        for (token, &id) in &vocab {
            names[id as usize] = Some(token.as_str());
        }
        let extra: Vec<u32> = tok
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        Self::build(&names, &extra).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// From a vocabulary list where the token at index `i` has id `i` (as in `vocab.txt`);
    /// special = [`SPECIAL_TOKENS`] where present.
    pub fn from_vocab<S: AsRef<str>>(tokens: &[S]) -> Result<TokenInfo> {
        let names: Vec<Option<&str>> = tokens.iter().map(|t| Some(t.as_ref())).collect();
        Self::build(&names, &[])
    }

    fn build(names: &[Option<&str>], extra_special: &[u32]) -> Result<TokenInfo> {
        let find = |want: &str| names.iter().position(|n| *n == Some(want));
        let Some(mask_id) = find("[MASK]") else {
            bail!("the vocabulary has no [MASK] token");
        };
        let Some(pad_id) = find("[PAD]") else {
            bail!("the vocabulary has no [PAD] token");
        };
        let mut special: Vec<bool> = names
            .iter()
            .map(|n| n.is_some_and(|n| SPECIAL_TOKENS.contains(&n)))
            .collect();
        for &id in extra_special {
            if let Some(s) = special.get_mut(id as usize) {
                *s = true;
            }
        }
        let continuation = names
            .iter()
            .map(|n| n.is_some_and(|n| n.starts_with("##") && n.len() > 2))
            .collect();
        Ok(TokenInfo {
            vocab_size: names.len(),
            mask_id: mask_id as u32,
            pad_id: pad_id as u32,
            special,
            continuation,
        })
    }

    fn is_special(&self, id: u32) -> bool {
        // Ids outside the vocabulary are never candidates (the loader rejects them anyway).
        self.special.get(id as usize).copied().unwrap_or(true)
    }

    fn is_continuation(&self, id: u32) -> bool {
        self.continuation.get(id as usize).copied().unwrap_or(false)
    }
}

/// Masking settings; the defaults are BERT's.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskingConfig {
    /// Share of the sequence (special tokens included) to predict.
    pub mask_prob: f64,
    /// At most this many predictions per sequence.
    pub max_predictions: usize,
    /// Mask whole words (a word and its `##` continuations) together.
    pub whole_word: bool,
    /// Of the chosen positions: replaced by `[MASK]`.
    pub mask_token_prob: f64,
    /// Of the chosen positions: replaced by a random token (the rest keep their token).
    pub random_token_prob: f64,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            mask_prob: 0.15,
            max_predictions: 20,
            whole_word: false,
            mask_token_prob: 0.8,
            random_token_prob: 0.1,
        }
    }
}

impl MaskingConfig {
    /// Checks that the probabilities are probabilities.
    pub fn validate(&self) -> Result<()> {
        for (name, p) in [
            ("mask_prob", self.mask_prob),
            ("mask_token_prob", self.mask_token_prob),
            ("random_token_prob", self.random_token_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("masking {name} is {p}, expected a probability in [0, 1]");
            }
        }
        if self.mask_token_prob + self.random_token_prob > 1.0 + 1e-12 {
            bail!(
                "masking mask_token_prob + random_token_prob is {} (> 1)",
                self.mask_token_prob + self.random_token_prob
            );
        }
        Ok(())
    }
}

/// How many positions Google predicts in a sequence of `len` tokens (special tokens included).
pub fn num_to_predict(len: usize, cfg: &MaskingConfig) -> usize {
    if cfg.mask_prob <= 0.0 {
        return 0;
    }
    // Python's round(): half to even.
    let n = (len as f64 * cfg.mask_prob).round_ties_even() as usize;
    cfg.max_predictions.min(n.max(1))
}

/// Masks one sequence; returns the model input and the labels (the original id where predicted,
/// [`IGNORE_LABEL`] elsewhere). See the module documentation for the rules.
pub fn mask(
    ids: &[u32],
    info: &TokenInfo,
    cfg: &MaskingConfig,
    rng: &mut Rng,
) -> (Vec<u32>, Vec<i64>) {
    let mut input = ids.to_vec();
    let mut labels = vec![IGNORE_LABEL; ids.len()];

    // Candidate groups as (start, end) position ranges.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        if info.is_special(id) {
            continue;
        }
        match groups.last_mut() {
            Some(last) if cfg.whole_word && last.1 == i && info.is_continuation(id) => {
                last.1 = i + 1
            }
            _ => groups.push((i, i + 1)),
        }
    }
    if groups.is_empty() {
        return (input, labels);
    }
    rng.shuffle(&mut groups);

    let target = num_to_predict(ids.len(), cfg);
    // Share of the non-[MASK] cases that keep the token (Google: 0.1 / 0.2 = 0.5).
    let rest = 1.0 - cfg.mask_token_prob;
    let keep_share = if rest > 0.0 {
        ((rest - cfg.random_token_prob) / rest).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let mut predicted = 0;
    for (start, end) in groups {
        if predicted >= target {
            break;
        }
        if predicted + (end - start) > target {
            continue;
        }
        for i in start..end {
            predicted += 1;
            labels[i] = ids[i] as i64;
            if rng.f64() < cfg.mask_token_prob {
                input[i] = info.mask_id;
            } else if rng.f64() < keep_share {
                // Keep the original token.
            } else {
                input[i] = rng.below(info.vocab_size as u64) as u32;
            }
        }
    }
    (input, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Specials at 0..5, words `w*` at 5..805, continuations `##c*` at 805..1005.
    fn vocab() -> Vec<String> {
        let mut v: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
        v.extend((0..800).map(|i| format!("w{i}")));
        v.extend((0..200).map(|i| format!("##c{i}")));
        v
    }
    const CLS: u32 = 2;
    const SEP: u32 = 3;
    const WORD: u32 = 5;
    const CONT: u32 = 805;

    /// `[CLS] tokens [SEP] tokens [SEP]` of length `len`, about a third of words continued.
    fn sequence(rng: &mut Rng, len: usize, continuations: bool) -> Vec<u32> {
        let mut ids = vec![CLS];
        while ids.len() < len - 1 {
            if ids.len() == len / 2 {
                ids.push(SEP);
            } else if continuations && ids[ids.len() - 1] >= WORD && rng.below(3) == 0 {
                ids.push(CONT + rng.below(200) as u32);
            } else {
                ids.push(WORD + rng.below(800) as u32);
            }
        }
        ids.push(SEP);
        ids
    }

    fn info() -> TokenInfo {
        TokenInfo::from_vocab(&vocab()).unwrap()
    }

    #[test]
    fn token_info_from_vocab() {
        let info = info();
        assert_eq!(info.vocab_size, 1005);
        assert_eq!((info.pad_id, info.mask_id), (0, 4));
        assert_eq!(info.special.iter().filter(|&&s| s).count(), 5);
        assert!(info.continuation[CONT as usize] && !info.continuation[WORD as usize]);
        let err = TokenInfo::from_vocab(&["[PAD]", "a"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[MASK]"), "{err}");
        let err = TokenInfo::from_vocab(&["[MASK]", "a"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[PAD]"), "{err}");
    }

    #[test]
    fn num_to_predict_rounds_like_python() {
        let cfg = MaskingConfig::default();
        // Python: round(1.5) == 2, round(4.5) == 4, round(7.5) == 8 (half to even).
        assert_eq!(num_to_predict(10, &cfg), 2);
        assert_eq!(num_to_predict(30, &cfg), 4);
        assert_eq!(num_to_predict(50, &cfg), 8);
        assert_eq!(num_to_predict(3, &cfg), 1); // at least one
        assert_eq!(num_to_predict(512, &cfg), 20); // capped
        let none = MaskingConfig {
            mask_prob: 0.0,
            ..cfg
        };
        assert_eq!(num_to_predict(100, &none), 0);
    }

    #[test]
    fn exact_count_and_never_special() {
        let info = info();
        let cfg = MaskingConfig::default();
        let mut gen = Rng::new(1);
        for len in [5, 10, 30, 50, 128, 512] {
            for _ in 0..200 {
                let ids = sequence(&mut gen, len, false);
                let (input, labels) = mask(&ids, &info, &cfg, &mut gen);
                let n = labels.iter().filter(|&&l| l != IGNORE_LABEL).count();
                assert_eq!(n, num_to_predict(len, &cfg).min(len - 3), "len {len}");
                for i in 0..len {
                    if info.special[ids[i] as usize] {
                        assert_eq!((input[i], labels[i]), (ids[i], IGNORE_LABEL));
                    } else if labels[i] == IGNORE_LABEL {
                        assert_eq!(input[i], ids[i]);
                    } else {
                        assert_eq!(labels[i], ids[i] as i64);
                    }
                }
            }
        }
    }

    #[test]
    fn split_is_80_10_10() {
        let info = info();
        let cfg = MaskingConfig::default();
        let mut gen = Rng::new(2);
        let (mut masked, mut kept, mut random, mut total) = (0usize, 0usize, 0usize, 0usize);
        for _ in 0..20_000 {
            let ids = sequence(&mut gen, 128, false);
            let (input, labels) = mask(&ids, &info, &cfg, &mut gen);
            for i in 0..ids.len() {
                if labels[i] == IGNORE_LABEL {
                    continue;
                }
                total += 1;
                if input[i] == info.mask_id {
                    masked += 1;
                } else if input[i] == ids[i] {
                    kept += 1;
                } else {
                    random += 1;
                }
            }
        }
        let pct = |n: usize| 100.0 * n as f64 / total as f64;
        assert!((pct(masked) - 80.0).abs() < 1.0, "{}", pct(masked));
        assert!((pct(kept) - 10.0).abs() < 1.0, "{}", pct(kept));
        assert!((pct(random) - 10.0).abs() < 1.0, "{}", pct(random));
    }

    #[test]
    fn whole_words_masked_together() {
        let info = info();
        let mut gen = Rng::new(3);
        for whole_word in [true, false] {
            let cfg = MaskingConfig {
                whole_word,
                ..Default::default()
            };
            let mut split_words = 0;
            let mut predictions = 0;
            for _ in 0..2_000 {
                let ids = sequence(&mut gen, 128, true);
                let (_, labels) = mask(&ids, &info, &cfg, &mut gen);
                let n = labels.iter().filter(|&&l| l != IGNORE_LABEL).count();
                assert!(n <= num_to_predict(128, &cfg));
                predictions += n;
                for i in 1..ids.len() {
                    if info.continuation[ids[i] as usize]
                        && (labels[i] == IGNORE_LABEL) != (labels[i - 1] == IGNORE_LABEL)
                    {
                        split_words += 1;
                    }
                }
            }
            if whole_word {
                assert_eq!(split_words, 0);
                // Skipped groups rarely leave the target unmet.
                assert!(predictions as f64 > 0.95 * 2_000.0 * 19.0, "{predictions}");
            } else {
                assert!(split_words > 1_000, "{split_words}");
            }
        }
    }

    #[test]
    fn max_predictions_respected_and_no_candidates() {
        let info = info();
        let cfg = MaskingConfig {
            max_predictions: 5,
            ..Default::default()
        };
        let mut gen = Rng::new(4);
        for _ in 0..100 {
            let ids = sequence(&mut gen, 128, true);
            let (_, labels) = mask(&ids, &info, &cfg, &mut gen);
            assert_eq!(labels.iter().filter(|&&l| l != IGNORE_LABEL).count(), 5);
        }
        let ids = [CLS, SEP, 1, SEP, 0, 0];
        let (input, labels) = mask(&ids, &info, &cfg, &mut gen);
        assert_eq!(input, ids);
        assert!(labels.iter().all(|&l| l == IGNORE_LABEL));
    }

    #[test]
    fn same_rng_same_mask() {
        let info = info();
        let cfg = MaskingConfig::default();
        let ids = sequence(&mut Rng::new(5), 128, true);
        let a = mask(&ids, &info, &cfg, &mut Rng::derive(&[1, 2, 3]));
        assert_eq!(a, mask(&ids, &info, &cfg, &mut Rng::derive(&[1, 2, 3])));
        assert_ne!(a, mask(&ids, &info, &cfg, &mut Rng::derive(&[1, 2, 4])));
    }

    #[test]
    fn invalid_config() {
        let bad = MaskingConfig {
            mask_token_prob: 0.95,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("random_token_prob"));
        let bad = MaskingConfig {
            mask_prob: 1.5,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mask_prob"));
        MaskingConfig::default().validate().unwrap();
    }
}
