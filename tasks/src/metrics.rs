//! Evaluation metrics for fine-tuning.
//!
//! Every function reproduces a named reference implementation; the doc comment
//! of each function cites it and states the corner-case conventions taken from
//! it. Three groups:
//!
//! * classification / regression (GLUE-style): [`accuracy`], [`f1_binary`],
//!   [`matthews_corrcoef`] (scikit-learn), [`pearson`], [`spearman`] (SciPy);
//! * extractive QA: [`normalize_answer`], [`exact_match`], [`f1_score`]
//!   (the official SQuAD v1.1 / v2.0 `evaluate` scripts);
//! * entity-level sequence labelling: [`get_entities`], [`entity_prf`]
//!   (seqeval 1.x, default — non-strict — mode).
//!
//! Only `std` is used.

use std::collections::{BTreeMap, BTreeSet, HashMap};

// ---------------------------------------------------------------------------
// Classification / regression
// ---------------------------------------------------------------------------

/// Fraction of positions where `pred[i] == gold[i]`.
///
/// Reproduces `sklearn.metrics.accuracy_score(gold, pred)` (normalize=True,
/// no sample weights). For empty input the mean is undefined and `NaN` is
/// returned (NumPy's mean of an empty array).
///
/// # Panics
/// If `pred` and `gold` have different lengths (sklearn raises `ValueError`).
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    check_len(pred.len(), gold.len());
    if pred.is_empty() {
        return f64::NAN;
    }
    let correct = pred.iter().zip(gold).filter(|(p, g)| p == g).count();
    correct as f64 / pred.len() as f64
}

/// F1 of the class `positive`, every other label counting as negative.
///
/// Reproduces `sklearn.metrics.f1_score(gold, pred, average="binary",
/// pos_label=positive, zero_division=0)`, i.e. `2·tp / (2·tp + fp + fn)`,
/// and `0.0` when that denominator is 0 (no predicted and no gold positives).
/// Unlike sklearn it does not reject inputs with more than two distinct
/// labels: anything that is not `positive` is a negative.
///
/// # Panics
/// If `pred` and `gold` have different lengths.
pub fn f1_binary(pred: &[usize], gold: &[usize], positive: usize) -> f64 {
    check_len(pred.len(), gold.len());
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for (&p, &g) in pred.iter().zip(gold) {
        match (p == positive, g == positive) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let denom = 2 * tp + fp + fn_;
    if denom == 0 {
        0.0
    } else {
        (2 * tp) as f64 / denom as f64
    }
}

/// Matthews correlation coefficient (binary and multiclass).
///
/// Reproduces `sklearn.metrics.matthews_corrcoef(gold, pred)`, which uses the
/// multiclass (Gorodkin R_K) formula on the confusion matrix `C`:
///
/// ```text
/// t_k = Σ_j C[k][j]  (gold count of k)     p_k = Σ_i C[i][k]  (predicted count of k)
/// c = trace(C)       s = n_samples
/// cov_ytyp = c·s − Σ_k t_k·p_k
/// cov_ypyp = s² − Σ_k p_k²
/// cov_ytyt = s² − Σ_k t_k²
/// mcc = cov_ytyp / sqrt(cov_ytyt · cov_ypyp)     (0.0 if cov_ytyt · cov_ypyp == 0)
/// ```
///
/// The covariances are computed exactly in integers; for two classes this is
/// the usual `(tp·tn − fp·fn) / sqrt(...)`. Empty input gives `0.0`.
///
/// # Panics
/// If `pred` and `gold` have different lengths.
pub fn matthews_corrcoef(pred: &[usize], gold: &[usize]) -> f64 {
    check_len(pred.len(), gold.len());
    let mut t_sum: HashMap<usize, i128> = HashMap::new();
    let mut p_sum: HashMap<usize, i128> = HashMap::new();
    let mut correct: i128 = 0;
    for (&p, &g) in pred.iter().zip(gold) {
        *t_sum.entry(g).or_insert(0) += 1;
        *p_sum.entry(p).or_insert(0) += 1;
        if p == g {
            correct += 1;
        }
    }
    let s = pred.len() as i128;
    let t_dot_p: i128 = t_sum
        .iter()
        .map(|(k, t)| t * p_sum.get(k).copied().unwrap_or(0))
        .sum();
    let p_dot_p: i128 = p_sum.values().map(|p| p * p).sum();
    let t_dot_t: i128 = t_sum.values().map(|t| t * t).sum();
    let cov_ytyp = correct * s - t_dot_p;
    let cov_ypyp = s * s - p_dot_p;
    let cov_ytyt = s * s - t_dot_t;
    if cov_ypyp == 0 || cov_ytyt == 0 {
        return 0.0;
    }
    cov_ytyp as f64 / (cov_ytyt as f64 * cov_ypyp as f64).sqrt()
}

/// Pearson product-moment correlation coefficient.
///
/// Reproduces the statistic of `scipy.stats.pearsonr(x, y)`:
/// `Σ(x−x̄)(y−ȳ) / (‖x−x̄‖·‖y−ȳ‖)`, clipped to `[-1, 1]`. Where SciPy returns
/// `nan` (a constant input, fewer than two points, or a `NaN` value) this
/// returns `NaN` as well.
///
/// # Panics
/// If `x` and `y` have different lengths (SciPy raises `ValueError`).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    check_len(x.len(), y.len());
    let n = x.len();
    if n < 2 {
        return f64::NAN;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (da, db) = (a - mx, b - my);
        sxy += da * db;
        sxx += da * da;
        syy += db * db;
    }
    if sxx == 0.0 || syy == 0.0 {
        // constant input: correlation undefined (SciPy warns and returns nan)
        return f64::NAN;
    }
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// Spearman rank-order correlation coefficient.
///
/// Reproduces the statistic of `scipy.stats.spearmanr(x, y)`: Pearson's r of
/// the ranks, where tied values get the average of the ranks they span
/// (`scipy.stats.rankdata(method="average")`). `NaN` in either input gives
/// `NaN` (SciPy's default `nan_policy="propagate"`); constant input gives
/// `NaN` as in [`pearson`].
///
/// # Panics
/// If `x` and `y` have different lengths.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    check_len(x.len(), y.len());
    if x.iter().chain(y).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    pearson(&rank_average(x), &rank_average(y))
}

/// 1-based ranks with ties replaced by the mean of their ranks
/// (`scipy.stats.rankdata(values, method="average")`). Inputs must not be NaN.
fn rank_average(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        // `==` (not total_cmp) so that -0.0 and 0.0 tie, as in NumPy.
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        // positions i..=j hold ranks i+1..=j+1; their mean is (i+j)/2 + 1
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

fn check_len(a: usize, b: usize) {
    assert_eq!(a, b, "metric inputs must have the same length ({a} != {b})");
}

// ---------------------------------------------------------------------------
// SQuAD
// ---------------------------------------------------------------------------

/// Normalizes an answer string exactly as `normalize_answer` of the official
/// SQuAD v1.1 and v2.0 evaluation scripts, in the script's order:
///
/// 1. `lower`: `str.lower()` (Unicode lower-casing);
/// 2. `remove_punc`: drop every character of Python's `string.punctuation`
///    (the 32 ASCII punctuation characters, `_` included), so `"U.S.A."`
///    becomes `"usa"`;
/// 3. `remove_articles`: `re.sub(r'\b(a|an|the)\b', ' ', text)`, i.e. a whole
///    word (maximal run of word characters) equal to `a`, `an` or `the` is
///    replaced by a space; `"theatre"` is kept;
/// 4. `white_space_fix`: `' '.join(text.split())`.
///
/// Word characters for step 3 are `char::is_alphanumeric() || '_'`, and the
/// whitespace of step 4 is `char::is_whitespace()` plus U+001C..U+001F; this
/// matches Python exactly for ASCII and closely (not bit-for-bit, e.g. for some
/// combining marks) for other scripts.
pub fn normalize_answer(s: &str) -> String {
    // 1. lower
    let lowered = s.to_lowercase();
    // 2. remove_punc
    let no_punc: Vec<char> = lowered
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // 3. remove_articles
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut no_articles = String::with_capacity(no_punc.len());
    let mut i = 0;
    while i < no_punc.len() {
        if is_word(no_punc[i]) {
            let start = i;
            while i < no_punc.len() && is_word(no_punc[i]) {
                i += 1;
            }
            let word: String = no_punc[start..i].iter().collect();
            if matches!(word.as_str(), "a" | "an" | "the") {
                no_articles.push(' ');
            } else {
                no_articles.push_str(&word);
            }
        } else {
            no_articles.push(no_punc[i]);
            i += 1;
        }
    }
    // 4. white_space_fix
    py_split(&no_articles).collect::<Vec<_>>().join(" ")
}

/// Python's argument-less `str.split()`.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|t| !t.is_empty())
}

/// Gold answers as the SQuAD v2.0 script uses them: answers that normalize to
/// the empty string are dropped, and if none is left the question is
/// unanswerable and the only gold answer is `""`.
fn v2_gold_answers<'a>(ground_truths: &[&'a str]) -> Vec<&'a str> {
    let golds: Vec<&str> = ground_truths
        .iter()
        .copied()
        .filter(|g| !normalize_answer(g).is_empty())
        .collect();
    if golds.is_empty() {
        vec![""]
    } else {
        golds
    }
}

/// Exact match: `1.0` if the normalized prediction equals the normalized form
/// of at least one gold answer, else `0.0`.
///
/// Reproduces `compute_exact` + `max(...)` over gold answers of the official
/// SQuAD v2.0 script (`get_raw_scores`): gold answers that normalize to `""`
/// are dropped, and when none is left (including an empty `ground_truths`
/// list) the question is a no-answer question whose only gold answer is `""`,
/// so the score is 1 iff the prediction normalizes to `""`. For answerable
/// questions whose gold answers are all non-empty after normalization this is
/// identical to the v1.1 script's `metric_max_over_ground_truths(
/// exact_match_score, ...)`.
pub fn exact_match(prediction: &str, ground_truths: &[&str]) -> f64 {
    let pred = normalize_answer(prediction);
    let golds = v2_gold_answers(ground_truths);
    if golds.iter().any(|g| normalize_answer(g) == pred) {
        1.0
    } else {
        0.0
    }
}

/// Token-level F1 between prediction and gold answer, maximised over gold
/// answers.
///
/// Reproduces `compute_f1` + `max(...)` of the official SQuAD v2.0 script:
/// tokens are `normalize_answer(s).split()`, the overlap is the size of the
/// multiset intersection (`Counter(gold) & Counter(pred)`),
/// `p = overlap/|pred|`, `r = overlap/|gold|`, `f1 = 2pr/(p+r)`, and 0 when
/// the overlap is 0. When either token list is empty the score is 1 if both
/// are empty, else 0 (`int(gold_toks == pred_toks)`). Gold answers are
/// filtered as in [`exact_match`] (an empty list means no-answer). For
/// answerable questions with non-empty normalized gold answers this equals the
/// v1.1 script's `metric_max_over_ground_truths(f1_score, ...)`.
pub fn f1_score(prediction: &str, ground_truths: &[&str]) -> f64 {
    let pred_norm = normalize_answer(prediction);
    let pred_toks: Vec<&str> = pred_norm.split(' ').filter(|t| !t.is_empty()).collect();
    v2_gold_answers(ground_truths)
        .iter()
        .map(|g| {
            let gold_norm = normalize_answer(g);
            let gold_toks: Vec<&str> = gold_norm.split(' ').filter(|t| !t.is_empty()).collect();
            token_f1(&pred_toks, &gold_toks)
        })
        .fold(0.0, f64::max)
}

fn token_f1(pred_toks: &[&str], gold_toks: &[&str]) -> f64 {
    if pred_toks.is_empty() || gold_toks.is_empty() {
        return if pred_toks == gold_toks { 1.0 } else { 0.0 };
    }
    let mut gold_counts: HashMap<&str, usize> = HashMap::new();
    for t in gold_toks {
        *gold_counts.entry(t).or_insert(0) += 1;
    }
    let mut num_same = 0usize;
    for t in pred_toks {
        if let Some(c) = gold_counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                num_same += 1;
            }
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = num_same as f64 / pred_toks.len() as f64;
    let recall = num_same as f64 / gold_toks.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

// ---------------------------------------------------------------------------
// seqeval (entity-level NER metrics)
// ---------------------------------------------------------------------------

/// Tagging scheme of the input sequences.
///
/// seqeval's default (non-strict) mode — the one behind `f1_score` and
/// `classification_report` without `mode="strict"` — decodes chunks with one
/// set of prefix-based rules (`B-`, `I-`, `E-`, `S-`, `O`) whatever the scheme,
/// and those rules already handle IOB1: an `I-X` after `O` or after a tag of
/// another type starts a chunk, and `B-X` (used by IOB1 only between two
/// adjacent entities of the same type) also starts one. Therefore, in this
/// implementation **the scheme does not change decoding**: `Iob1` and `Iob2`
/// give identical results, which is exactly seqeval's default-mode behaviour.
/// The parameter records what the data is, and leaves room for a strict mode
/// (which seqeval implements separately and which is not provided here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// IOB1: `I-X` inside (and normally at the start of) entities, `B-X` only
    /// to separate two adjacent entities of the same type.
    Iob1,
    /// IOB2 (a.k.a. BIO): every entity starts with `B-X`.
    Iob2,
}

/// Splits a tag into seqeval's `(tag, type)`: the first character and the part
/// after the first `-` of the rest (`chunk[1:].split('-', maxsplit=1)[-1] or
/// '_'`). An empty tag string is treated as `"O"` (seqeval would raise).
fn split_tag(chunk: &str) -> (char, &str) {
    let mut chars = chunk.chars();
    let Some(tag) = chars.next() else {
        return ('O', "_");
    };
    let rest = chars.as_str();
    let ty = rest.split_once('-').map_or(rest, |(_, t)| t);
    (tag, if ty.is_empty() { "_" } else { ty })
}

/// seqeval `end_of_chunk`: did a chunk end just before the current token?
fn end_of_chunk(prev_tag: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(prev_tag, 'E' | 'S')
        || (matches!(prev_tag, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
        || (prev_tag != 'O' && prev_tag != '.' && prev_type != ty)
}

/// seqeval `start_of_chunk`: does a chunk start at the current token?
fn start_of_chunk(prev_tag: char, tag: char, prev_type: &str, ty: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev_tag, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_type != ty)
}

/// Entity chunks `(type, start, end_inclusive)` of one tag sequence, in order.
///
/// Reproduces `seqeval.metrics.sequence_labeling.get_entities(seq)` (prefix
/// tags, `suffix=False`): the sequence is scanned with a trailing `"O"`
/// sentinel, starting from `prev_tag = 'O'`, `prev_type = ''`; at each token a
/// chunk is closed if `end_of_chunk(prev_tag, tag, prev_type, type)` and one
/// is opened if `start_of_chunk(...)`. The tag is the first character of the
/// string and the type the text after the first `-` (`"_"` when empty, so
/// `"O"` has type `"_"`). Consequences: `I-X` after `O` or after another type
/// starts an entity (IOB1 style), `B-PER I-LOC` is two entities, `B-PER
/// B-PER` is two entities, and an entity running to the last token is closed
/// by the sentinel. See [`Scheme`] for why the scheme does not alter decoding.
pub fn get_entities(tags: &[&str], scheme: Scheme) -> Vec<(String, usize, usize)> {
    // seqeval's default mode is scheme-independent (see `Scheme`).
    let _ = scheme;
    let mut chunks = Vec::new();
    let mut prev_tag = 'O';
    let mut prev_type = "";
    let mut begin = 0usize;
    for (i, chunk) in tags.iter().copied().chain(std::iter::once("O")).enumerate() {
        let (tag, ty) = split_tag(chunk);
        if end_of_chunk(prev_tag, tag, prev_type, ty) {
            // i >= 1 here: at i == 0 prev_tag is 'O' and prev_type is ''.
            chunks.push((prev_type.to_string(), begin, i - 1));
        }
        if start_of_chunk(prev_tag, tag, prev_type, ty) {
            begin = i;
        }
        prev_tag = tag;
        prev_type = ty;
    }
    chunks
}

/// Precision, recall and F1 of one entity type or of the micro average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrfScore {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl PrfScore {
    /// From counts, with seqeval's conventions: `precision = tp/pred`,
    /// `recall = tp/true`, 0 when the denominator is 0 (`zero_division`
    /// default), and `f1 = 2pr/(p+r)`, 0 when `p + r == 0`.
    fn from_counts(tp: usize, pred: usize, gold: usize) -> Self {
        let div = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = div(tp, pred);
        let recall = div(tp, gold);
        let denom = precision + recall;
        let f1 = if denom == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / denom
        };
        Self {
            precision,
            recall,
            f1,
        }
    }
}

/// Entity-level precision / recall / F1: micro average and per entity type.
///
/// Reproduces seqeval's default mode: `precision_score`, `recall_score`,
/// `f1_score` (micro average) and `classification_report` (per type), i.e.
/// `precision_recall_fscore_support`. As seqeval does for a list of
/// sentences, the sentences are concatenated with an `"O"` separator after
/// each one and decoded with [`get_entities`]; an entity is correct when its
/// type, start and end all match a gold entity. Per type: `tp = |gold ∩
/// pred|`, precision `tp/|pred|`, recall `tp/|gold|`; the micro average sums
/// the counts over types. Zero denominators give 0 (seqeval's default
/// `zero_division="warn"` returns 0 too). The per-type map holds every type
/// that occurs in the gold or the predicted entities (the rows of
/// `classification_report`).
///
/// # Panics
/// If the number of sentences, or the length of a sentence, differs between
/// `gold` and `pred` (seqeval raises `ValueError`).
pub fn entity_prf(
    gold: &[Vec<&str>],
    pred: &[Vec<&str>],
    scheme: Scheme,
) -> (PrfScore, BTreeMap<String, PrfScore>) {
    check_len(gold.len(), pred.len());
    for (g, p) in gold.iter().zip(pred) {
        check_len(g.len(), p.len());
    }
    let flatten = |sents: &[Vec<&str>]| -> Vec<(String, usize, usize)> {
        let flat: Vec<&str> = sents
            .iter()
            .flat_map(|s| s.iter().copied().chain(std::iter::once("O")))
            .collect();
        get_entities(&flat, scheme)
    };
    let by_type = |ents: Vec<(String, usize, usize)>| {
        let mut m: BTreeMap<String, BTreeSet<(usize, usize)>> = BTreeMap::new();
        for (ty, s, e) in ents {
            m.entry(ty).or_default().insert((s, e));
        }
        m
    };
    let gold_ents = by_type(flatten(gold));
    let pred_ents = by_type(flatten(pred));

    let empty = BTreeSet::new();
    let types: BTreeSet<&String> = gold_ents.keys().chain(pred_ents.keys()).collect();
    let mut per_type = BTreeMap::new();
    let (mut tp_all, mut pred_all, mut gold_all) = (0usize, 0usize, 0usize);
    for ty in types {
        let g = gold_ents.get(ty).unwrap_or(&empty);
        let p = pred_ents.get(ty).unwrap_or(&empty);
        let tp = g.intersection(p).count();
        tp_all += tp;
        pred_all += p.len();
        gold_all += g.len();
        per_type.insert(ty.clone(), PrfScore::from_counts(tp, p.len(), g.len()));
    }
    (PrfScore::from_counts(tp_all, pred_all, gold_all), per_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    macro_rules! assert_close {
        ($a:expr, $b:expr) => {{
            let (a, b) = ($a, $b);
            assert!(close(a, b), "{a} != {b}");
        }};
    }

    // ---- classification ----

    #[test]
    fn accuracy_basic() {
        // matches at positions 0, 1, 3 -> 3 / 5
        assert_close!(accuracy(&[0, 1, 2, 1, 0], &[0, 1, 1, 1, 2]), 0.6);
        assert!(accuracy(&[], &[]).is_nan());
    }

    #[test]
    fn f1_binary_basic() {
        // pred 1 1 0 1 0 0
        // gold 1 0 0 1 1 0
        // tp = 2 (pos 0, 3), fp = 1 (pos 1), fn = 1 (pos 4)
        // f1 = 2*2 / (2*2 + 1 + 1) = 4/6
        let pred = [1, 1, 0, 1, 0, 0];
        let gold = [1, 0, 0, 1, 1, 0];
        assert_close!(f1_binary(&pred, &gold, 1), 4.0 / 6.0);
        // positive = 0: tp = 2 (pos 2, 5), fp = 1 (pos 4), fn = 1 (pos 1) -> 4/6
        assert_close!(f1_binary(&pred, &gold, 0), 4.0 / 6.0);
        // no predicted and no gold positives -> zero_division = 0
        assert_eq!(f1_binary(&[0, 0], &[0, 0], 1), 0.0);
        // gold positives but none predicted: tp = 0 -> 0
        assert_eq!(f1_binary(&[0, 0], &[1, 0], 1), 0.0);
    }

    #[test]
    fn mcc_binary() {
        // gold 1 1 1 0 0 0 1 0
        // pred 1 0 1 0 1 0 1 0
        // tp = 3, fn = 1, fp = 1, tn = 3
        // (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (9-1)/sqrt(4^4) = 8/16
        // sklearn form: s = 8, c = 6, t = [4,4], p = [4,4]
        //   cov_ytyp = 6*8 - 32 = 16, cov_ypyp = cov_ytyt = 64 - 32 = 32 -> 16/32
        let gold = [1, 1, 1, 0, 0, 0, 1, 0];
        let pred = [1, 0, 1, 0, 1, 0, 1, 0];
        assert_close!(matthews_corrcoef(&pred, &gold), 0.5);
        // perfect and inverted predictions
        assert_close!(matthews_corrcoef(&gold, &gold), 1.0);
        let inv: Vec<usize> = gold.iter().map(|g| 1 - g).collect();
        assert_close!(matthews_corrcoef(&inv, &gold), -1.0);
        // constant prediction: cov_ypyp = 0 -> 0.0
        assert_eq!(matthews_corrcoef(&[1; 8], &gold), 0.0);
    }

    #[test]
    fn mcc_multiclass() {
        // gold 0 0 1 1 2 2
        // pred 0 1 1 1 2 0
        // s = 6, c = 4 (pos 0, 2, 3, 4), t = [2,2,2], p = [2,3,1]
        // cov_ytyp = 4*6 - (2*2 + 2*3 + 2*1) = 24 - 12 = 12
        // cov_ypyp = 36 - (4 + 9 + 1) = 22
        // cov_ytyt = 36 - (4 + 4 + 4) = 24
        // mcc = 12 / sqrt(24*22) = 12 / sqrt(528) = 0.5222329678670935
        let gold = [0, 0, 1, 1, 2, 2];
        let pred = [0, 1, 1, 1, 2, 0];
        assert_close!(matthews_corrcoef(&pred, &gold), 0.5222329678670935);
        // a predicted label absent from gold (label 7) still counts in p_sum:
        // gold 0 1, pred 7 1: s = 2, c = 1, t = {0:1,1:1}, p = {7:1,1:1}
        // cov_ytyp = 2 - 1 = 1, cov_ypyp = 4 - 2 = 2, cov_ytyt = 2 -> 1/2
        assert_close!(matthews_corrcoef(&[7, 1], &[0, 1]), 0.5);
    }

    #[test]
    fn pearson_basic() {
        // x = 1..5 (mean 3), y = 2 4 5 4 5 (mean 4)
        // dx = -2 -1 0 1 2, dy = -2 0 1 0 1
        // sxy = 4 + 0 + 0 + 0 + 2 = 6, sxx = 10, syy = 4 + 0 + 1 + 0 + 1 = 6
        // r = 6 / sqrt(60) = 0.7745966692414834
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 4.0, 5.0, 4.0, 5.0];
        assert_close!(pearson(&x, &y), 0.7745966692414834);
        // exact linear relation, negative slope
        assert_close!(pearson(&x, &[10.0, 8.0, 6.0, 4.0, 2.0]), -1.0);
        // constant input -> NaN (as scipy)
        assert!(pearson(&x, &[1.0; 5]).is_nan());
    }

    #[test]
    fn spearman_with_ties() {
        // y = 2 4 5 4 5: sorted 2 | 4 4 | 5 5 -> ranks 1 | 2.5 2.5 | 4.5 4.5
        assert_eq!(
            rank_average(&[2.0, 4.0, 5.0, 4.0, 5.0]),
            vec![1.0, 2.5, 4.5, 2.5, 4.5]
        );
        // rank(x) = 1..5 (mean 3), rank(y) = 1 2.5 4.5 2.5 4.5 (mean 3)
        // dx = -2 -1 0 1 2, dy = -2 -0.5 1.5 -0.5 1.5
        // sxy = 4 + 0.5 + 0 - 0.5 + 3 = 7, sxx = 10, syy = 4 + .25 + 2.25 + .25 + 2.25 = 9
        // rho = 7 / sqrt(90) = 0.7378647873726218
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 4.0, 5.0, 4.0, 5.0];
        assert_close!(spearman(&x, &y), 0.7378647873726218);
        // monotone but non-linear -> 1
        assert_close!(spearman(&x, &[1.0, 8.0, 27.0, 64.0, 125.0]), 1.0);
        assert!(spearman(&x, &[1.0, f64::NAN, 2.0, 3.0, 4.0]).is_nan());
    }

    // ---- SQuAD ----

    #[test]
    fn squad_normalization() {
        // lower "the  cat!" -> punc "the  cat" -> articles "   cat" -> ws "cat"
        assert_eq!(normalize_answer("The  Cat!"), "cat");
        // "an apple a day" -> " apple   day" -> "apple day"
        assert_eq!(normalize_answer("an apple, a day"), "apple day");
        assert_eq!(normalize_answer("theatre"), "theatre");
        assert_eq!(normalize_answer("U.S.A."), "usa");
        // punctuation is removed before articles: "the-end" -> "theend" (kept)
        assert_eq!(normalize_answer("The-End"), "theend");
        // '_' is in string.punctuation: "the_cat" -> "thecat"
        assert_eq!(normalize_answer("the_cat"), "thecat");
        assert_eq!(normalize_answer("  A\tan\nTHE  "), "");
        assert_eq!(normalize_answer("Ünïcode Straße"), "ünïcode straße");
    }

    #[test]
    fn squad_em_f1_multiple_ground_truths() {
        let golds = ["Eiffel Tower", "Paris"];
        let pred = "the Eiffel tower, in Paris";
        // pred tokens: eiffel tower in paris (4)
        // vs "eiffel tower": overlap 2, p = 2/4, r = 2/2, f1 = 2*.5*1/1.5 = 2/3
        // vs "paris": overlap 1, p = 1/4, r = 1, f1 = 2*.25/1.25 = 0.4
        // max = 2/3; no exact match
        assert_close!(f1_score(pred, &golds), 2.0 / 3.0);
        assert_eq!(exact_match(pred, &golds), 0.0);
        // exact match against the second gold after normalization
        assert_eq!(exact_match("the Paris.", &golds), 1.0);
        assert_close!(f1_score("the Paris.", &golds), 1.0);
        // Counter intersection counts multiplicities:
        // pred x x y, gold x y y: common {x:1, y:1} = 2, p = r = 2/3, f1 = 2/3
        assert_close!(f1_score("x x y", &["x y y"]), 2.0 / 3.0);
        // no overlap -> 0
        assert_eq!(f1_score("london", &golds), 0.0);
    }

    #[test]
    fn squad_v2_no_answer() {
        // empty gold list = unanswerable: gold is [""]
        assert_eq!(exact_match("", &[]), 1.0);
        assert_eq!(f1_score("", &[]), 1.0);
        assert_eq!(exact_match("Paris", &[]), 0.0);
        assert_eq!(f1_score("Paris", &[]), 0.0);
        // prediction normalizing to "" counts as no-answer
        assert_eq!(exact_match("The.", &[]), 1.0);
        assert_eq!(f1_score("The.", &[]), 1.0);
        // gold answers that normalize to "" are dropped; all dropped -> no-answer
        assert_eq!(f1_score("", &["", "the"]), 1.0);
        // mixed: "" is dropped, only "Paris" is left
        assert_eq!(exact_match("", &["", "Paris"]), 0.0);
        assert_eq!(f1_score("", &["", "Paris"]), 0.0);
        // answerable question, empty prediction -> 0
        assert_eq!(f1_score("", &["Paris"]), 0.0);
    }

    // ---- seqeval ----

    fn ents(v: &[(&str, usize, usize)]) -> Vec<(String, usize, usize)> {
        v.iter().map(|&(t, s, e)| (t.to_string(), s, e)).collect()
    }

    #[test]
    fn entities_edge_cases() {
        for scheme in [Scheme::Iob1, Scheme::Iob2] {
            // entity running to the end is closed by the sentinel "O"
            assert_eq!(
                get_entities(&["O", "B-PER", "I-PER"], scheme),
                ents(&[("PER", 1, 2)])
            );
            // I- after O starts an entity (IOB1 style)
            assert_eq!(
                get_entities(&["O", "I-PER", "I-PER", "O"], scheme),
                ents(&[("PER", 1, 2)])
            );
            // type change: B-PER I-LOC -> PER(0,0), LOC(1,1)
            assert_eq!(
                get_entities(&["B-PER", "I-LOC"], scheme),
                ents(&[("PER", 0, 0), ("LOC", 1, 1)])
            );
            // I-PER I-LOC -> two entities as well
            assert_eq!(
                get_entities(&["I-PER", "I-LOC", "O"], scheme),
                ents(&[("PER", 0, 0), ("LOC", 1, 1)])
            );
            // consecutive B-PER B-PER -> two entities
            assert_eq!(
                get_entities(&["B-PER", "B-PER"], scheme),
                ents(&[("PER", 0, 0), ("PER", 1, 1)])
            );
            // IOB1: B- separates adjacent same-type entities
            assert_eq!(
                get_entities(&["I-PER", "I-PER", "B-PER", "O"], scheme),
                ents(&[("PER", 0, 1), ("PER", 2, 2)])
            );
            // BIOES tags are understood too: S-PER | B-LOC E-LOC
            assert_eq!(
                get_entities(&["S-PER", "B-LOC", "E-LOC"], scheme),
                ents(&[("PER", 0, 0), ("LOC", 1, 2)])
            );
            // all O / empty
            assert!(get_entities(&["O", "O"], scheme).is_empty());
            assert!(get_entities(&[], scheme).is_empty());
        }
    }

    #[test]
    fn entity_prf_seqeval_readme_example() {
        // seqeval README: f1_score = 0.50; report MISC 0/0/0, PER 1/1/1 (seqeval 1.2.2 itself
        // printed 0.5 for it too).
        let gold = vec![
            vec!["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"],
            vec!["B-PER", "I-PER", "O"],
        ];
        let pred = vec![
            vec!["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"],
            vec!["B-PER", "I-PER", "O"],
        ];
        // gold MISC(3,5) PER(8,9); pred MISC(2,5) PER(8,9)
        // tp = 1, pred = 2, gold = 2 -> p = r = f1 = 0.5
        let (micro, per) = entity_prf(&gold, &pred, Scheme::Iob2);
        assert_close!(micro.precision, 0.5);
        assert_close!(micro.recall, 0.5);
        assert_close!(micro.f1, 0.5);
        assert_eq!(per.len(), 2);
        assert_eq!(per["MISC"].f1, 0.0);
        assert_close!(per["PER"].f1, 1.0);
    }

    #[test]
    fn entity_prf_per_type() {
        let gold = vec![vec!["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"]];
        let pred = vec![vec!["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-PER"]];
        // gold: PER(0,1) LOC(3,3) ORG(5,5); pred: PER(0,1) LOC(3,4) PER(5,5)
        // PER: tp 1, pred 2, gold 1 -> p 1/2, r 1, f1 = 2*.5/1.5 = 2/3
        // LOC: tp 0, pred 1, gold 1 -> 0, 0, 0
        // ORG: tp 0, pred 0, gold 1 -> p 0 (zero_division), r 0, f1 0
        // micro: tp 1, pred 3, gold 3 -> 1/3, 1/3, 1/3
        let (micro, per) = entity_prf(&gold, &pred, Scheme::Iob2);
        assert_close!(micro.precision, 1.0 / 3.0);
        assert_close!(micro.recall, 1.0 / 3.0);
        assert_close!(micro.f1, 1.0 / 3.0);
        assert_eq!(
            per.keys().map(String::as_str).collect::<Vec<_>>(),
            ["LOC", "ORG", "PER"]
        );
        assert_close!(per["PER"].precision, 0.5);
        assert_close!(per["PER"].recall, 1.0);
        assert_close!(per["PER"].f1, 2.0 / 3.0);
        assert_eq!(
            per["LOC"],
            PrfScore {
                precision: 0.0,
                recall: 0.0,
                f1: 0.0
            }
        );
        assert_eq!(per["ORG"].precision, 0.0);
        assert_eq!(per["ORG"].recall, 0.0);
    }

    #[test]
    fn entity_prf_empty_predictions() {
        let gold = vec![vec!["B-PER", "O"], vec!["O", "I-LOC"]];
        let pred = vec![vec!["O", "O"], vec!["O", "O"]];
        // tp 0, pred 0 -> precision 0 (zero_division), gold 2 -> recall 0, f1 0
        let (micro, per) = entity_prf(&gold, &pred, Scheme::Iob1);
        assert_eq!((micro.precision, micro.recall, micro.f1), (0.0, 0.0, 0.0));
        assert_eq!(per.len(), 2);
        // nothing anywhere -> all zeros, no rows
        let (micro, per) = entity_prf(&pred, &pred, Scheme::Iob2);
        assert_eq!((micro.precision, micro.recall, micro.f1), (0.0, 0.0, 0.0));
        assert!(per.is_empty());
    }

    #[test]
    fn entity_prf_sentence_boundary_splits_entities() {
        // an I- continuing across a sentence boundary is two entities,
        // because seqeval inserts "O" between sentences
        let gold = vec![vec!["O", "B-PER"], vec!["I-PER", "O"]];
        let pred = gold.clone();
        // gold flat: O B-PER O | I-PER O O -> PER(1,1), PER(3,3)
        let (micro, per) = entity_prf(&gold, &pred, Scheme::Iob2);
        assert_close!(micro.f1, 1.0);
        assert_close!(per["PER"].recall, 1.0);
        let pred = vec![vec!["O", "B-PER"], vec!["O", "O"]];
        // tp 1, pred 1, gold 2 -> p 1, r 1/2, f1 = 2*.5/1.5 = 2/3
        let (micro, _) = entity_prf(&gold, &pred, Scheme::Iob2);
        assert_close!(micro.precision, 1.0);
        assert_close!(micro.recall, 0.5);
        assert_close!(micro.f1, 2.0 / 3.0);
    }

    #[test]
    #[should_panic]
    fn entity_prf_length_mismatch_panics() {
        let _ = entity_prf(&[vec!["O"]], &[vec!["O", "O"]], Scheme::Iob2);
    }

    /// Values printed by the reference packages themselves (seqeval 1.2.2, scikit-learn 1.9.1,
    /// scipy 1.17.1, in a scratch venv, 2026-11-26), not by hand.
    #[test]
    fn agrees_with_the_reference_packages() {
        type Entities<'a> = &'a [(&'a str, usize, usize)];
        let cases: [(&[&str], Entities); 5] = [
            (&["O", "I-PER", "I-PER", "O"], &[("PER", 1, 2)]),
            (&["B-PER", "I-LOC"], &[("PER", 0, 0), ("LOC", 1, 1)]),
            (&["B-PER", "B-PER"], &[("PER", 0, 0), ("PER", 1, 1)]),
            (
                &["I-PER", "B-PER", "I-PER"],
                &[("PER", 0, 0), ("PER", 1, 2)],
            ),
            (&["O", "B-LOC", "I-LOC"], &[("LOC", 1, 2)]),
        ];
        for (tags, want) in cases {
            let got = get_entities(tags, Scheme::Iob2);
            let want: Vec<(String, usize, usize)> = want
                .iter()
                .map(|(t, a, b)| (t.to_string(), *a, *b))
                .collect();
            assert_eq!(got, want, "{tags:?}");
        }
        // (seqeval 1.2.2's f1_score of its README example, 0.5, is asserted in
        // entity_prf_seqeval_readme_example.)
        // sklearn.metrics.matthews_corrcoef(y_true, y_pred)
        let mcc = matthews_corrcoef(&[0, 2, 1, 0, 0, 2, 1, 1], &[0, 1, 2, 0, 1, 2, 0, 1]);
        assert!((mcc - 0.23809523809523808).abs() < 1e-12, "{mcc}");
        let rho = spearman(&[1., 2., 2., 3., 5., 5.], &[2., 1., 3., 3., 4., 6.]);
        assert!((rho - 0.8508410434878082).abs() < 1e-12, "{rho}");
        assert!((pearson(&[1., 2., 3., 4.], &[2., 1., 4., 3.]) - 0.6).abs() < 1e-12);
    }
}
