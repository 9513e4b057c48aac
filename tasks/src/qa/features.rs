//! Question + context → model features (`run_qa.py` `prepare_train_features` /
//! `prepare_validation_features`).

use anyhow::{anyhow, bail, Result};
use bertkit_model::tokenizer::BertTokenizer;

/// Special tokens per feature: `[CLS] question [SEP] context [SEP]`.
const SPECIAL_TOKENS: usize = 3;

/// Sequence lengths for [`make_features`] (HF `run_qa.py` / `run_squad.py` defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QaSettings {
    /// Most tokens per feature, special tokens included (`--max_seq_length`, 384).
    pub max_seq_length: usize,
    /// Tokens shared by two consecutive context windows (`--doc_stride`, 128). This is the
    /// tokenizers `stride` as `run_qa.py` passes it — the *overlap*, not the step: a window of `w`
    /// context tokens is followed by one starting `w - doc_stride` tokens later.
    pub doc_stride: usize,
    /// Most question tokens, special tokens excluded (`--max_query_length`, 64); longer questions
    /// are cut at the end, as `run_squad.py` does.
    pub max_query_length: usize,
}

impl Default for QaSettings {
    fn default() -> Self {
        QaSettings {
            max_seq_length: 384,
            doc_stride: 128,
            max_query_length: 64,
        }
    }
}

/// One model input: the question and one window of the context.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QaFeature {
    /// The example this window belongs to (HF `example_id` / `overflow_to_sample_mapping`).
    pub example_index: usize,
    /// `[CLS] question [SEP] context-window [SEP]`, not padded.
    pub input_ids: Vec<u32>,
    /// 0 for `[CLS] question [SEP]`, 1 for `context-window [SEP]`.
    pub token_type_ids: Vec<u32>,
    /// For each token of `input_ids`: its character span `[start, end)` in the context, `None` for
    /// question and special tokens (as `prepare_validation_features` sets them).
    pub offsets: Vec<Option<(usize, usize)>>,
    /// Token index of the answer's first token; 0 (`[CLS]`) when no answer was given or it is not
    /// entirely inside this window.
    pub start_position: usize,
    /// Token index of the answer's last token (inclusive); 0 like `start_position`.
    pub end_position: usize,
}

impl QaFeature {
    /// Index in `input_ids` of the first context token.
    pub fn context_start(&self) -> usize {
        self.offsets
            .iter()
            .position(Option::is_some)
            .unwrap_or(self.offsets.len())
    }
}

/// Builds the features of one example, as `run_qa.py` does with `truncation="only_second"`,
/// `stride=doc_stride`, `return_overflowing_tokens=True`, `return_offsets_mapping=True` (and no
/// padding; pad batches with [`bertkit_model::tokenizer::Batch::pad`]).
///
/// The question is tokenized and cut to `max_query_length` tokens. The context is tokenized once;
/// when `question + context + 3` exceeds `max_seq_length`, it is split into windows of
/// `w = max_seq_length - question_tokens - 3` tokens starting at `0, w - doc_stride,
/// 2 (w - doc_stride), …` until a window reaches its end (tokenizers `Encoding::truncate`), so
/// consecutive windows share exactly `doc_stride` tokens.
///
/// `answer` is `(start_char, end_char)` (exclusive) in `context`, in characters — SQuAD's
/// `answer_start` and `answer_start + len(text)`; `None` for unanswerable (v2) or evaluation
/// examples. Labels follow `prepare_train_features`: if the window's first context token starts at
/// or before `start_char` and its last ends at or after `end_char`, `start_position` is the last
/// token starting at or before `start_char` and `end_position` the first token (from the right
/// scan) ending at or after `end_char`; otherwise both are 0.
///
/// Errors: empty (or whitespace-only) question or context, no `[CLS]`/`[SEP]` in the vocabulary,
/// an answer span outside the context or empty, `max_seq_length` leaving no room for the context,
/// or `doc_stride` not smaller than the window when the context must be split (tokenizers
/// refuses that too).
pub fn make_features(
    tokenizer: &BertTokenizer,
    example_index: usize,
    question: &str,
    context: &str,
    answer: Option<(usize, usize)>,
    s: &QaSettings,
) -> Result<Vec<QaFeature>> {
    if question.trim().is_empty() {
        bail!("example {example_index}: the question is empty");
    }
    if context.trim().is_empty() {
        bail!("example {example_index}: the context is empty");
    }
    let cls = tokenizer
        .token_to_id("[CLS]")
        .ok_or_else(|| anyhow!("the vocabulary has no [CLS] token"))?;
    let sep = tokenizer
        .token_to_id("[SEP]")
        .ok_or_else(|| anyhow!("the vocabulary has no [SEP] token"))?;
    let n_chars = context.chars().count();
    if let Some((start, end)) = answer {
        if start >= end || end > n_chars {
            bail!(
                "example {example_index}: answer span {start}..{end} is empty or outside the \
                 context ({n_chars} characters)"
            );
        }
    }

    // Padding and truncation are off in `inner` (BertTokenizer keeps no such state).
    let tok = tokenizer.inner();
    let encode = |text: &str, what: &str| {
        tok.encode_char_offsets(text, false)
            .map_err(|e| anyhow!("example {example_index}: tokenizing the {what}: {e}"))
    };
    let q = encode(question, "question")?;
    let c = encode(context, "context")?;
    let mut q_ids = q.get_ids().to_vec();
    q_ids.truncate(s.max_query_length);
    if q_ids.is_empty() {
        bail!(
            "example {example_index}: the question has no tokens (max_query_length {})",
            s.max_query_length
        );
    }
    let (c_ids, c_offsets) = (c.get_ids(), c.get_offsets());
    if c_ids.is_empty() {
        bail!("example {example_index}: the context has no tokens");
    }

    let room = s
        .max_seq_length
        .checked_sub(q_ids.len() + SPECIAL_TOKENS)
        .filter(|&r| r > 0)
        .ok_or_else(|| {
            anyhow!(
                "example {example_index}: max_seq_length {} leaves no room for the context after \
                 {} question tokens and {SPECIAL_TOKENS} special tokens",
                s.max_seq_length,
                q_ids.len()
            )
        })?;
    let windows = windows(c_ids.len(), room, s.doc_stride)
        .map_err(|e| anyhow!("example {example_index}: {e}"))?;

    let ctx_start = q_ids.len() + 2;
    let features = windows
        .into_iter()
        .map(|(a, b)| {
            let len = ctx_start + (b - a) + 1;
            let mut input_ids = Vec::with_capacity(len);
            input_ids.push(cls);
            input_ids.extend_from_slice(&q_ids);
            input_ids.push(sep);
            input_ids.extend_from_slice(&c_ids[a..b]);
            input_ids.push(sep);
            let mut token_type_ids = vec![0; ctx_start];
            token_type_ids.resize(len, 1);
            let mut offsets = vec![None; ctx_start];
            offsets.extend(c_offsets[a..b].iter().map(|&o| Some(o)));
            offsets.push(None);
            let (start_position, end_position) = answer
                .and_then(|(sc, ec)| label(&c_offsets[a..b], sc, ec))
                .map_or((0, 0), |(s, e)| (ctx_start + s, ctx_start + e));
            QaFeature {
                example_index,
                input_ids,
                token_type_ids,
                offsets,
                start_position,
                end_position,
            }
        })
        .collect();
    Ok(features)
}

/// Token ranges `[start, stop)` of the context windows: tokenizers `Encoding::truncate(room,
/// stride, Right)` — windows of `room` tokens, each starting `room - stride` after the last,
/// until one reaches the end.
fn windows(n: usize, room: usize, stride: usize) -> Result<Vec<(usize, usize)>> {
    if n <= room {
        return Ok(vec![(0, n)]);
    }
    if stride >= room {
        bail!(
            "doc_stride {stride} must be smaller than the {room} context tokens a window holds \
             (max_seq_length minus question and special tokens)"
        );
    }
    let step = room - stride;
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let stop = (start + room).min(n);
        out.push((start, stop));
        if stop == n {
            return Ok(out);
        }
        start += step;
    }
}

/// `prepare_train_features`' labels within one window's context tokens (indices relative to the
/// window), or `None` when the answer is not entirely inside it.
///
/// HF scans the start over the whole sequence, so an answer starting in the window's last context
/// token runs into `[SEP]` (offset `(0, 0)`) and beyond; the scan here stops at the window's end,
/// giving the last context token.
fn label(offsets: &[(usize, usize)], start_char: usize, end_char: usize) -> Option<(usize, usize)> {
    let (first, last) = (offsets.first()?, offsets.last()?);
    if !(first.0 <= start_char && last.1 >= end_char) {
        return None;
    }
    // Last token starting at or before the answer start (the first qualifies).
    let mut s = 0;
    while s < offsets.len() && offsets[s].0 <= start_char {
        s += 1;
    }
    // From the right, step back while tokens end at or after the answer end (the last
    // qualifies); the answer ends in the token after the one that stopped the scan.
    let mut e = offsets.len();
    while e > 0 && offsets[e - 1].1 >= end_char {
        e -= 1;
    }
    Some((s - 1, e))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::path::Path;
    use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

    /// Every word of the test texts is a single token, except "playing" (play ##ing).
    const WORDS: &str = "the a of and in to is was what who where when which how did does \
        river city flows through north south east west sea long water old new bridge town \
        built year people live capital country cafe au lait creme tres bon est le la \
        answer question window zero one two three four five six seven eight nine ten \
        eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty \
        play ##ing hello world , . ? 日 本 東 京";

    pub(crate) fn tokenizer(dir: &Path) -> BertTokenizer {
        let mut vocab = String::from("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n");
        for w in WORDS.split_whitespace() {
            vocab.push_str(w);
            vocab.push('\n');
        }
        let path = dir.join("vocab.txt");
        std::fs::write(&path, vocab).unwrap();
        BertTokenizer::from_vocab(&path, true).unwrap()
    }

    fn settings(max_seq_length: usize, doc_stride: usize, max_query_length: usize) -> QaSettings {
        QaSettings {
            max_seq_length,
            doc_stride,
            max_query_length,
        }
    }

    /// The context text a feature's token range `[s, e]` covers.
    fn span_text(context: &str, f: &QaFeature, s: usize, e: usize) -> String {
        let (a, _) = f.offsets[s].unwrap();
        let (_, b) = f.offsets[e].unwrap();
        context.chars().skip(a).take(b - a).collect()
    }

    /// Char start/end of the first occurrence of `needle` in `hay`.
    fn char_span(hay: &str, needle: &str) -> (usize, usize) {
        let byte = hay.find(needle).unwrap();
        let start = hay[..byte].chars().count();
        (start, start + needle.chars().count())
    }

    const NUMBERS: &str = "zero one two three four five six seven eight nine ten eleven twelve \
        thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty";

    #[test]
    fn long_context_is_split_into_overlapping_windows() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tokenizer(dir.path());
        let question = "what is the old water river city";
        let context = NUMBERS; // 21 tokens
        let answer = char_span(context, "fifteen sixteen");
        // Question: 7 tokens cut to 4; window: 16 - 4 - 3 = 9 context tokens, step 9 - 4 = 5.
        let s = settings(16, 4, 4);
        let features = make_features(&tok, 7, question, context, Some(answer), &s).unwrap();
        let cls = tok.token_to_id("[CLS]").unwrap();
        let sep = tok.token_to_id("[SEP]").unwrap();
        let q_ids: Vec<u32> = ["what", "is", "the", "old"]
            .iter()
            .map(|w| tok.token_to_id(w).unwrap())
            .collect();

        // Windows start at tokens 0, 5, 10, 15 and the last reaches token 20.
        let firsts: Vec<String> = features
            .iter()
            .map(|f| {
                let c = f.context_start();
                span_text(context, f, c, c)
            })
            .collect();
        assert_eq!(firsts, ["zero", "five", "ten", "fifteen"]);
        let words: Vec<&str> = context.split_whitespace().collect();
        for (k, f) in features.iter().enumerate() {
            assert_eq!(f.example_index, 7);
            assert!(f.input_ids.len() <= s.max_seq_length);
            assert_eq!(f.input_ids.len(), f.token_type_ids.len());
            assert_eq!(f.input_ids.len(), f.offsets.len());
            // [CLS] question (truncated to max_query_length) [SEP] context [SEP]
            assert_eq!(f.input_ids[0], cls);
            assert_eq!(&f.input_ids[1..5], &q_ids[..]);
            assert_eq!(f.input_ids[5], sep);
            assert_eq!(*f.input_ids.last().unwrap(), sep);
            assert_eq!(f.context_start(), 6);
            let n_ctx = f.input_ids.len() - 7;
            assert!(f.offsets[..6].iter().all(Option::is_none));
            assert!(f.offsets.last().unwrap().is_none());
            assert!(f.token_type_ids[..6].iter().all(|&t| t == 0));
            assert!(f.token_type_ids[6..].iter().all(|&t| t == 1));
            // Offsets decode back to the context words.
            for i in 0..n_ctx {
                assert_eq!(span_text(context, f, 6 + i, 6 + i), words[5 * k + i]);
            }
        }
        let n_ctx: Vec<usize> = features.iter().map(|f| f.input_ids.len() - 7).collect();
        assert_eq!(n_ctx, [9, 9, 9, 6]);
        // Consecutive windows share exactly doc_stride tokens.
        for pair in features.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let tail = &a.input_ids[a.input_ids.len() - 1 - s.doc_stride..a.input_ids.len() - 1];
            assert_eq!(tail, &b.input_ids[6..6 + s.doc_stride]);
            let a_off = &a.offsets[a.offsets.len() - 1 - s.doc_stride..a.offsets.len() - 1];
            assert_eq!(a_off, &b.offsets[6..6 + s.doc_stride]);
            assert_ne!(a.offsets[a.offsets.len() - 2 - s.doc_stride], b.offsets[6]);
        }
        // "fifteen sixteen" (tokens 15, 16) is whole in windows 3 (10..19) and 4 (15..21) only.
        let labels: Vec<(usize, usize)> = features
            .iter()
            .map(|f| (f.start_position, f.end_position))
            .collect();
        assert_eq!(labels, [(0, 0), (0, 0), (11, 12), (6, 7)]);
        for f in &features[2..] {
            assert_eq!(
                span_text(context, f, f.start_position, f.end_position),
                "fifteen sixteen"
            );
        }

        // Without an answer every window is labelled 0/0.
        let features = make_features(&tok, 0, question, context, None, &s).unwrap();
        assert_eq!(features.len(), 4);
        assert!(features
            .iter()
            .all(|f| f.start_position == 0 && f.end_position == 0));
    }

    #[test]
    fn answer_cut_by_a_window_edge_is_labelled_only_where_whole() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tokenizer(dir.path());
        // Window 0 holds tokens 0..9 ("zero".."eight"), window 1 tokens 5..14.
        let s = settings(16, 4, 4);
        let answer = char_span(NUMBERS, "eight nine");
        let f = make_features(&tok, 0, "what", NUMBERS, Some(answer), &settings(15, 4, 4)).unwrap();
        // With a 1-token question, windows hold 11 tokens: 0..11 contains both.
        assert_eq!(
            span_text(NUMBERS, &f[0], f[0].start_position, f[0].end_position),
            "eight nine"
        );
        let f = make_features(&tok, 0, "what is the old", NUMBERS, Some(answer), &s).unwrap();
        assert_eq!((f[0].start_position, f[0].end_position), (0, 0));
        assert_eq!(
            span_text(NUMBERS, &f[1], f[1].start_position, f[1].end_position),
            "eight nine"
        );
        // An answer ending in the window's last token and starting in its first.
        let answer = char_span(NUMBERS, "zero one two three four five six seven eight");
        let f = make_features(&tok, 0, "what is the old", NUMBERS, Some(answer), &s).unwrap();
        assert_eq!((f[0].start_position, f[0].end_position), (6, 14));
        // Starting in the last context token: the scan stops at the window's end.
        let answer = char_span(NUMBERS, "eight");
        let f = make_features(&tok, 0, "what is the old", NUMBERS, Some(answer), &s).unwrap();
        assert_eq!((f[0].start_position, f[0].end_position), (14, 14));
        assert_eq!((f[1].start_position, f[1].end_position), (9, 9));
    }

    #[test]
    fn answer_inside_a_word_maps_to_its_wordpieces() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tokenizer(dir.path());
        let context = "the old river was playing";
        // "play" → play ##ing: labels cover the whole token range touching the answer.
        let answer = char_span(context, "play");
        let f = make_features(
            &tok,
            0,
            "what",
            context,
            Some(answer),
            &QaSettings::default(),
        )
        .unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].start_position, f[0].end_position), (7, 7));
        assert_eq!(f[0].offsets[7], Some((18, 22)));
        assert_eq!(f[0].offsets[8], Some((22, 25)));
        let answer = char_span(context, "laying");
        let f = make_features(
            &tok,
            0,
            "what",
            context,
            Some(answer),
            &QaSettings::default(),
        )
        .unwrap();
        assert_eq!((f[0].start_position, f[0].end_position), (7, 8));
    }

    #[test]
    fn non_ascii_and_whitespace_offsets_are_characters() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tokenizer(dir.path());
        let context = "Le  Café\tcrème\n\nest très   bon. 東京 日本";
        let answer = char_span(context, "très   bon");
        let f = make_features(
            &tok,
            0,
            "what",
            context,
            Some(answer),
            &QaSettings::default(),
        )
        .unwrap();
        assert_eq!(f.len(), 1);
        let f = &f[0];
        let spans: Vec<String> = (f.context_start()..f.offsets.len() - 1)
            .map(|i| span_text(context, f, i, i))
            .collect();
        assert_eq!(
            spans,
            ["Le", "Café", "crème", "est", "très", "bon", ".", "東", "京", "日", "本"]
        );
        assert_eq!(f.offsets[f.context_start() + 1], Some((4, 8)));
        assert_eq!(f.offsets[f.context_start() + 2], Some((9, 14)));
        // The last token: 日本 are the last two characters.
        let n = context.chars().count();
        assert_eq!(f.offsets[f.offsets.len() - 2], Some((n - 1, n)));
        assert_eq!(
            span_text(context, f, f.start_position, f.end_position),
            "très   bon"
        );
        let cafe = tok.token_to_id("cafe").unwrap();
        assert_eq!(f.input_ids[f.context_start() + 1], cafe);
        // Labels on a span starting after multi-byte characters.
        let answer = char_span(context, "日本");
        let g = make_features(
            &tok,
            0,
            "what",
            context,
            Some(answer),
            &QaSettings::default(),
        )
        .unwrap();
        let g = &g[0];
        assert_eq!(
            span_text(context, g, g.start_position, g.end_position),
            "日本"
        );
        assert_eq!(g.end_position, g.offsets.len() - 2);
    }

    #[test]
    fn windows_match_the_tokenizers_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tokenizer(dir.path());
        let question = "what is the old water river city";
        let context = format!("{NUMBERS} Café crème, 日本 {NUMBERS}");
        for &(max_len, stride, max_q) in &[(16, 4, 4), (20, 0, 3), (17, 6, 7), (64, 8, 64)] {
            let s = settings(max_len, stride, max_q);
            let ours = make_features(&tok, 0, question, &context, None, &s).unwrap();
            // The reference: tokenizers' own only_second truncation with stride, on the question
            // already cut to max_query_length tokens.
            let q: Vec<&str> = question.split_whitespace().take(max_q).collect();
            let mut reference = tok.inner().clone();
            reference
                .with_truncation(Some(TruncationParams {
                    max_length: max_len,
                    strategy: TruncationStrategy::OnlySecond,
                    stride,
                    direction: TruncationDirection::Right,
                }))
                .unwrap();
            let enc = reference
                .encode_char_offsets((q.join(" "), context.clone()), true)
                .unwrap();
            let all: Vec<_> = std::iter::once(&enc).chain(enc.get_overflowing()).collect();
            assert_eq!(ours.len(), all.len(), "{s:?}");
            for (f, e) in ours.iter().zip(all) {
                assert_eq!(f.input_ids, e.get_ids(), "{s:?}");
                assert_eq!(f.token_type_ids, e.get_type_ids(), "{s:?}");
                let expected: Vec<Option<(usize, usize)>> = e
                    .get_offsets()
                    .iter()
                    .zip(e.get_type_ids())
                    .zip(e.get_special_tokens_mask())
                    .map(|((&o, &t), &special)| (t == 1 && special == 0).then_some(o))
                    .collect();
                assert_eq!(f.offsets, expected, "{s:?}");
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tokenizer(dir.path());
        let s = QaSettings::default();
        let err = |q: &str, c: &str, a: Option<(usize, usize)>, s: &QaSettings| {
            make_features(&tok, 3, q, c, a, s).unwrap_err().to_string()
        };
        assert!(err("", "the river", None, &s).contains("question is empty"));
        assert!(err("  \n", "the river", None, &s).contains("question is empty"));
        assert!(err("what", "", None, &s).contains("context is empty"));
        assert!(err("what", "the river", Some((4, 20)), &s).contains("outside"));
        assert!(err("what", "the river", Some((4, 4)), &s).contains("empty"));
        assert!(err("what", "the river", None, &settings(4, 0, 64)).contains("no room"));
        assert!(err("what", "the river", None, &settings(384, 0, 0)).contains("no tokens"));
        // doc_stride must be smaller than the window, when windows are needed.
        let e = err("what", NUMBERS, None, &settings(10, 6, 64));
        assert!(e.contains("doc_stride 6"), "{e}");
        assert_eq!(
            make_features(&tok, 0, "what", "the river", None, &settings(10, 6, 64))
                .unwrap()
                .len(),
            1
        );
    }
}
