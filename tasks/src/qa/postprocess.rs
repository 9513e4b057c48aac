//! Start/end logits → answer text (`utils_qa.py` `postprocess_qa_predictions`).

use super::QaFeature;

/// One n-best answer candidate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpanCandidate {
    /// `context` characters `[start_char, end_char)`; `""` for the null (no-answer) candidate.
    pub text: String,
    /// Character span in the context; `0, 0` for the null candidate.
    pub start_char: usize,
    pub end_char: usize,
    /// `start_logit + end_logit` (for the null candidate: the minimum null score).
    pub score: f32,
    /// Softmax of `score` over the n-best list (the null candidate included for SQuAD v2).
    pub probability: f32,
}

/// The answer to one example.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QaPrediction {
    /// The answer text; `""` means no answer.
    pub answer: String,
    /// Character offset of the answer in the context; `None` when `answer` is `""`.
    pub start_char: Option<usize>,
    /// `start_logit + end_logit` of the answer; `null_score` when `answer` is `""`.
    pub score: f32,
    /// The minimum over the features of `start_logits[0] + end_logits[0]` (the `[CLS]` "no answer"
    /// score); `-inf` when no feature has logits. For SQuAD v2 the answer is `""` when
    /// `null_score - score_of_best_span > null_score_diff_threshold`.
    pub null_score: f32,
    /// The n-best candidates, best first (SQuAD v2: the null candidate is always among them, so
    /// there can be `n_best_size + 1`).
    pub n_best: Vec<SpanCandidate>,
}

/// Internal candidate, with HF's separate start and end logits.
#[derive(Debug, Clone, Copy)]
struct Prelim {
    start_char: usize,
    end_char: usize,
    start_logit: f32,
    end_logit: f32,
    score: f32,
    null: bool,
}

/// Picks the answer of one example from the logits of its features, exactly as HF
/// `postprocess_qa_predictions` (`run_qa.py`):
///
/// * for each feature, every pair of the `n_best_size` highest start logits and `n_best_size`
///   highest end logits (ties: lower index first) is a candidate unless either index has no
///   context offset (question, special or padding tokens, or beyond `offsets`), `end < start`, or
///   `end - start + 1 > max_answer_length`; its score is `start_logit + end_logit`;
/// * the null score is the minimum over the features of `start_logits[0] + end_logits[0]`;
/// * candidates (plus, for `version_2`, the null one) are sorted by score (stable) and cut to
///   `n_best_size`; for `version_2` the null candidate is appended if it was cut; probabilities
///   are the softmax of the scores over that list;
/// * SQuAD v1 (`version_2 == false`): the best candidate;
///   SQuAD v2: the best candidate with non-empty text, unless
///   `null_score - start_logit - end_logit > null_score_diff_threshold`, which gives `""`.
///
/// `start_logits[i]` and `end_logits[i]` belong to `features[i]` and may be longer than it
/// (padded batches): indices past `features[i].offsets` are never chosen. All features must come
/// from the same `context`; a span is the context characters
/// `[offsets[start].0, offsets[end].1)` (clamped to the context).
///
/// Deviation: when there is no valid span at all HF inserts a fake candidate `"empty"` (score 0);
/// here the answer is `""` and `n_best` holds only what is real (nothing for v1, the null
/// candidate for v2).
///
/// # Panics
/// If `features`, `start_logits` and `end_logits` differ in length.
#[allow(clippy::too_many_arguments)]
pub fn predict_answer(
    context: &str,
    features: &[&QaFeature],
    start_logits: &[&[f32]],
    end_logits: &[&[f32]],
    n_best_size: usize,
    max_answer_length: usize,
    version_2: bool,
    null_score_diff_threshold: f32,
) -> QaPrediction {
    assert_eq!(
        features.len(),
        start_logits.len(),
        "one start-logit row per feature"
    );
    assert_eq!(
        features.len(),
        end_logits.len(),
        "one end-logit row per feature"
    );

    let mut min_null: Option<Prelim> = None;
    let mut prelim = Vec::new();
    for ((feature, &starts), &ends) in features.iter().zip(start_logits).zip(end_logits) {
        if let (Some(&s0), Some(&e0)) = (starts.first(), ends.first()) {
            let score = s0 + e0;
            if min_null.as_ref().is_none_or(|m| m.score > score) {
                min_null = Some(Prelim {
                    start_char: 0,
                    end_char: 0,
                    start_logit: s0,
                    end_logit: e0,
                    score,
                    null: true,
                });
            }
        }
        let start_indexes = top_indexes(starts, n_best_size);
        let end_indexes = top_indexes(ends, n_best_size);
        for &si in &start_indexes {
            let Some(&Some((start_char, _))) = feature.offsets.get(si) else {
                continue;
            };
            for &ei in &end_indexes {
                let Some(&Some((_, end_char))) = feature.offsets.get(ei) else {
                    continue;
                };
                if ei < si || ei - si + 1 > max_answer_length {
                    continue;
                }
                prelim.push(Prelim {
                    start_char,
                    end_char,
                    start_logit: starts[si],
                    end_logit: ends[ei],
                    score: starts[si] + ends[ei],
                    null: false,
                });
            }
        }
    }

    let null_score = min_null.map_or(f32::NEG_INFINITY, |m| m.score);
    let null = min_null.filter(|_| version_2);
    prelim.extend(null);
    // Stable, like Python's `sorted(..., reverse=True)`.
    prelim.sort_by(|a, b| b.score.total_cmp(&a.score));
    prelim.truncate(n_best_size);
    if let Some(null) = null {
        if !prelim.iter().any(|p| p.null) {
            prelim.push(null);
        }
    }

    let text = CharSlicer::new(context);
    let max = prelim
        .iter()
        .map(|p| p.score)
        .fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = prelim.iter().map(|p| (p.score - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    let n_best: Vec<SpanCandidate> = prelim
        .iter()
        .zip(&exp)
        .map(|(p, e)| SpanCandidate {
            text: text.slice(p.start_char, p.end_char).to_string(),
            start_char: p.start_char,
            end_char: p.end_char,
            score: p.score,
            probability: e / total,
        })
        .collect();

    let chosen = if version_2 {
        prelim
            .iter()
            .zip(&n_best)
            .find(|(p, c)| !p.null && !c.text.is_empty())
            .filter(|(p, _)| null_score - p.start_logit - p.end_logit <= null_score_diff_threshold)
    } else {
        prelim.iter().zip(&n_best).next()
    };
    let (answer, start_char, score) = match chosen {
        Some((p, c)) if !c.text.is_empty() => (c.text.clone(), Some(p.start_char), p.score),
        _ => (String::new(), None, null_score),
    };
    QaPrediction {
        answer,
        start_char,
        score,
        null_score,
        n_best,
    }
}

/// Indices of the `n` largest values, largest first (`np.argsort(x)[-1 : -n - 1 : -1]`; ties go
/// to the lower index).
fn top_indexes(logits: &[f32], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(n);
    idx
}

/// Slices a string by character positions (Python `context[a:b]`, clamped).
struct CharSlicer<'a> {
    text: &'a str,
    /// Byte position of every character, then the length.
    bounds: Vec<usize>,
}

impl<'a> CharSlicer<'a> {
    fn new(text: &'a str) -> Self {
        let bounds = text
            .char_indices()
            .map(|(b, _)| b)
            .chain(std::iter::once(text.len()))
            .collect();
        CharSlicer { text, bounds }
    }

    fn slice(&self, start: usize, end: usize) -> &'a str {
        let last = self.bounds.len() - 1;
        let (a, b) = (start.min(last), end.min(last));
        if a >= b {
            return "";
        }
        &self.text[self.bounds[a]..self.bounds[b]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qa::{make_features, QaSettings};

    const LOW: f32 = -10.0;

    /// A feature over `context` (split on spaces) with `q` question tokens: `[CLS] q… [SEP]
    /// words… [SEP]`.
    fn feature(context: &str, q: usize) -> QaFeature {
        let mut offsets = vec![None; q + 2];
        let mut pos = 0;
        for w in context.split(' ') {
            let n = w.chars().count();
            offsets.push(Some((pos, pos + n)));
            pos += n + 1;
        }
        offsets.push(None);
        let n = offsets.len();
        QaFeature {
            example_index: 0,
            input_ids: vec![0; n],
            token_type_ids: vec![0; n],
            offsets,
            start_position: 0,
            end_position: 0,
        }
    }

    /// Logits of length `n`, `LOW` except at the given indices.
    fn logits(n: usize, peaks: &[(usize, f32)]) -> Vec<f32> {
        let mut v = vec![LOW; n];
        for &(i, x) in peaks {
            v[i] = x;
        }
        v
    }

    fn predict(
        context: &str,
        f: &QaFeature,
        s: &[f32],
        e: &[f32],
        max_len: usize,
        v2: bool,
        threshold: f32,
    ) -> QaPrediction {
        predict_answer(context, &[f], &[s], &[e], 20, max_len, v2, threshold)
    }

    // Context tokens of "the river flows north to the sea" with 2 question tokens start at 4:
    // the=4 river=5 flows=6 north=7 to=8 the=9 sea=10, final [SEP]=11.
    const CTX: &str = "the river flows north to the sea";

    #[test]
    fn best_span_is_chosen_with_softmax_probabilities() {
        let f = feature(CTX, 2);
        let s = logits(12, &[(7, 5.0), (5, 3.0)]);
        let e = logits(12, &[(10, 4.0), (6, 2.0)]);
        let p = predict(CTX, &f, &s, &e, 30, false, 0.0);
        assert_eq!(p.answer, "north to the sea");
        assert_eq!(p.start_char, Some(16));
        assert_eq!(p.score, 9.0);
        assert_eq!(p.null_score, 2.0 * LOW);
        let top: Vec<(&str, f32)> = p.n_best[..3]
            .iter()
            .map(|c| (c.text.as_str(), c.score))
            .collect();
        // 7→10 (9), 5→10 (7), 5→6 (5); 7→6 has end < start.
        assert_eq!(
            top,
            [
                ("north to the sea", 9.0),
                ("river flows north to the sea", 7.0),
                ("river flows", 5.0)
            ]
        );
        assert_eq!((p.n_best[0].start_char, p.n_best[0].end_char), (16, 32));
        assert!(p
            .n_best
            .iter()
            .all(|c| !c.text.is_empty() && !c.text.contains("[")));
        let sum: f32 = p.n_best.iter().map(|c| c.probability).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        let ratio = p.n_best[0].probability / p.n_best[1].probability;
        assert!((ratio - 2f32.exp()).abs() < 1e-3, "{ratio}");
        assert!(p.n_best.len() <= 20);
        // n_best_size limits the list.
        let p = predict_answer(CTX, &[&f], &[&s], &[&e], 2, 30, false, 0.0);
        assert_eq!(p.n_best.len(), 2);
        assert_eq!(p.answer, "north to the sea");
    }

    #[test]
    fn max_answer_length_and_end_before_start_are_excluded() {
        let f = feature(CTX, 2);
        // Best pair 5→10 spans 6 tokens; next 5→8 spans 4.
        let s = logits(12, &[(5, 5.0)]);
        let e = logits(12, &[(10, 5.0), (8, 3.0)]);
        assert_eq!(
            predict(CTX, &f, &s, &e, 6, false, 0.0).answer,
            "river flows north to the sea"
        );
        assert_eq!(
            predict(CTX, &f, &s, &e, 5, false, 0.0).answer,
            "river flows north to"
        );
        assert_eq!(
            predict(CTX, &f, &s, &e, 4, false, 0.0).answer,
            "river flows north to"
        );
        let p = predict(CTX, &f, &s, &e, 3, false, 0.0);
        assert!(p.n_best.iter().all(|c| c.text.split(' ').count() <= 3));
        // end < start: the end peak precedes the start peak.
        let s = logits(12, &[(9, 5.0), (4, 1.0)]);
        let e = logits(12, &[(6, 5.0), (9, 0.5)]);
        let p = predict(CTX, &f, &s, &e, 30, false, 0.0);
        // 9→6 is invalid; the best valid pairs are 4→6 (6.0) and 9→9 (5.5).
        assert_eq!(p.answer, "the river flows");
        assert_eq!(p.n_best[1].text, "the");
        assert_eq!(p.n_best[1].start_char, 25);
        assert!(p.n_best.iter().all(|c| c.start_char < c.end_char));
    }

    #[test]
    fn question_and_special_tokens_are_never_chosen() {
        let f = feature(CTX, 2);
        // Highest logits on [CLS]=0, question 1..2, [SEP]=3, the final [SEP]=11 and padding.
        let mut s = logits(
            16,
            &[
                (0, 20.0),
                (1, 19.0),
                (2, 18.0),
                (3, 17.0),
                (11, 16.0),
                (14, 21.0),
            ],
        );
        let mut e = s.clone();
        s[6] = 1.0;
        e[7] = 1.0;
        let p = predict(CTX, &f, &s, &e, 30, false, 0.0);
        assert_eq!(p.answer, "flows north");
        assert!(p.n_best.iter().all(|c| c.end_char > 0));
    }

    #[test]
    fn version_2_null_threshold_both_ways() {
        let f = feature(CTX, 2);
        let s = logits(12, &[(0, 5.0), (7, 3.0)]);
        let e = logits(12, &[(0, 4.0), (7, 2.0)]);
        // null 9 vs best span 5 ("north"): diff 4.
        let p = predict(CTX, &f, &s, &e, 30, true, 0.0);
        assert_eq!(p.answer, "");
        assert_eq!((p.start_char, p.score, p.null_score), (None, 9.0, 9.0));
        assert_eq!(p.n_best[0].text, "");
        assert_eq!((p.n_best[0].start_char, p.n_best[0].end_char), (0, 0));
        assert_eq!(p.n_best[1].text, "north");
        let p = predict(CTX, &f, &s, &e, 30, true, 3.9);
        assert_eq!(p.answer, "");
        // diff == threshold: not greater, so the span is kept.
        let p = predict(CTX, &f, &s, &e, 30, true, 4.0);
        assert_eq!(
            (p.answer.as_str(), p.start_char, p.score),
            ("north", Some(16), 5.0)
        );
        // Negative threshold: even a span better than null can be refused.
        let s2 = logits(12, &[(0, 1.0), (7, 3.0)]);
        let e2 = logits(12, &[(0, 1.0), (7, 2.0)]);
        assert_eq!(predict(CTX, &f, &s2, &e2, 30, true, 0.0).answer, "north");
        assert_eq!(predict(CTX, &f, &s2, &e2, 30, true, -3.5).answer, "");
        // v1 ignores the null score.
        assert_eq!(predict(CTX, &f, &s, &e, 30, false, 0.0).answer, "north");
        assert!(predict(CTX, &f, &s, &e, 30, false, 0.0)
            .n_best
            .iter()
            .all(|c| !c.text.is_empty()));
    }

    #[test]
    fn version_2_null_is_appended_when_cut_from_the_n_best() {
        let f = feature(CTX, 2);
        let s = logits(12, &[(0, -5.0), (7, 3.0), (8, 2.0)]);
        let e = logits(12, &[(0, -5.0), (8, 3.0), (9, 2.0)]);
        let p = predict_answer(CTX, &[&f], &[&s], &[&e], 2, 30, true, 0.0);
        assert_eq!(p.n_best.len(), 3);
        assert_eq!(p.n_best[2].text, "");
        assert_eq!(p.n_best[2].score, -10.0);
        assert_eq!(p.answer, "north to");
    }

    #[test]
    fn spans_across_features_pick_the_higher_score_and_the_min_null() {
        // Two windows of the same context: tokens 0..4 and 2..7 (3 question tokens).
        let words: Vec<&str> = CTX.split(' ').collect();
        let mut f1 = feature(&words[..4].join(" "), 3);
        let mut f2 = feature(CTX, 3);
        f2.offsets.drain(5..7); // window starts at word 2 ("flows", char 10)
        f1.example_index = 4;
        f2.example_index = 4;
        assert_eq!(f2.offsets[5], Some((10, 15)));
        // f1: "river" (5+1=6 → idx 6) score 4; f2: "the sea" (idx 8..9) score 6.
        let s1 = logits(10, &[(0, 2.0), (6, 2.0)]);
        let e1 = logits(10, &[(0, 2.0), (6, 2.0)]);
        let s2 = logits(10, &[(0, 1.0), (8, 3.0)]);
        let e2 = logits(10, &[(0, 1.5), (9, 3.0)]);
        let p = predict_answer(
            CTX,
            &[&f1, &f2],
            &[&s1, &s2],
            &[&e1, &e2],
            20,
            30,
            false,
            0.0,
        );
        assert_eq!(p.answer, "the sea");
        assert_eq!(p.start_char, Some(25));
        assert_eq!(p.score, 6.0);
        assert_eq!(p.null_score, 2.5);
        assert!(p.n_best.iter().any(|c| c.text == "river" && c.score == 4.0));
        // The other way round.
        let s1 = logits(10, &[(0, 2.0), (6, 4.5)]);
        let p = predict_answer(
            CTX,
            &[&f1, &f2],
            &[&s1, &s2],
            &[&e1, &e2],
            20,
            30,
            false,
            0.0,
        );
        assert_eq!((p.answer.as_str(), p.start_char), ("river", Some(4)));
        // v2: the null score is the minimum (2.5 from f2, not 4 from f1), below the 6.5 span.
        let p = predict_answer(
            CTX,
            &[&f1, &f2],
            &[&s1, &s2],
            &[&e1, &e2],
            20,
            30,
            true,
            0.0,
        );
        assert_eq!(p.null_score, 2.5);
        assert_eq!(p.answer, "river");
    }

    #[test]
    fn no_valid_span_gives_no_answer() {
        let f = feature(CTX, 2);
        // Only special/question tokens in the top 2.
        let s = logits(12, &[(0, 5.0), (1, 4.0)]);
        let e = logits(12, &[(0, 5.0), (2, 4.0)]);
        let p = predict_answer(CTX, &[&f], &[&s], &[&e], 2, 30, false, 0.0);
        assert_eq!((p.answer.as_str(), p.start_char, p.score), ("", None, 10.0));
        assert!(p.n_best.is_empty());
        let p = predict_answer(CTX, &[&f], &[&s], &[&e], 2, 30, true, 0.0);
        assert_eq!(p.answer, "");
        assert_eq!(p.n_best.len(), 1);
        assert_eq!(p.n_best[0].probability, 1.0);
        // No features at all.
        let p = predict_answer(CTX, &[], &[], &[], 20, 30, true, 0.0);
        assert_eq!(p.answer, "");
        assert_eq!(p.null_score, f32::NEG_INFINITY);
        assert!(p.n_best.is_empty());
    }

    #[test]
    fn end_to_end_with_real_features_and_non_ascii_context() {
        let dir = tempfile::tempdir().unwrap();
        let tok = crate::qa::features::tests::tokenizer(dir.path());
        let context = "Le Café  crème est très bon. 東京 日本";
        let s = QaSettings {
            max_seq_length: 12,
            doc_stride: 3,
            max_query_length: 64,
        };
        let features = make_features(&tok, 0, "what is", context, None, &s).unwrap();
        assert!(features.len() > 1);
        // Put the peak on "crème" .. "très" in every window that has both.
        let (cs, ce) = (9, 23); // "crème est très"
        assert_eq!(
            context.chars().skip(cs).take(ce - cs).collect::<String>(),
            "crème est très"
        );
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for f in &features {
            let mut s = vec![0.0; f.offsets.len()];
            let mut e = s.clone();
            for (i, o) in f.offsets.iter().enumerate() {
                match o {
                    Some((a, _)) if *a == cs => s[i] = 5.0,
                    Some((_, b)) if *b == ce => e[i] = 5.0,
                    _ => {}
                }
            }
            starts.push(s);
            ends.push(e);
        }
        let refs: Vec<&QaFeature> = features.iter().collect();
        let s_refs: Vec<&[f32]> = starts.iter().map(Vec::as_slice).collect();
        let e_refs: Vec<&[f32]> = ends.iter().map(Vec::as_slice).collect();
        let p = predict_answer(context, &refs, &s_refs, &e_refs, 20, 30, false, 0.0);
        assert_eq!(p.answer, "crème est très");
        assert_eq!(p.start_char, Some(cs));
    }

    #[test]
    fn char_slicing_is_clamped() {
        let t = CharSlicer::new("Café");
        assert_eq!(t.slice(2, 4), "fé");
        assert_eq!(t.slice(3, 99), "é");
        assert_eq!(t.slice(3, 2), "");
        assert_eq!(t.slice(7, 9), "");
        assert_eq!(CharSlicer::new("").slice(0, 1), "");
    }
}
