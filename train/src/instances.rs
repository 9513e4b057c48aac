//! From tokenized documents to training sequences.
//!
//! * [`nsp_pairs`]: Google BERT's `create_instances_from_document`, step for step: a target length
//!   of `seq_len - 3` (or, with probability `short_seq_prob`, a random length in
//!   `2..=seq_len - 3`, chosen once per document); sentences are gathered into a chunk until it
//!   reaches the target; a random split point makes segment A; B is the rest of the chunk, or —
//!   with probability 1/2, or always when the chunk is one sentence — text from a random sentence
//!   of another document, in which case the chunk's unused sentences are put back; the pair is
//!   truncated to fit by removing tokens from the front or back of the longer segment at random.
//!   "Another document" is drawn from the same shard's documents (Google draws from the whole
//!   corpus in memory; bounded memory needs a bounded pool).
//! * [`pack`]: without NSP, sentences of one document packed greedily into `[CLS] ... [SEP]`
//!   sequences of at most `seq_len` tokens; a sentence longer than a sequence is cut into pieces.

use crate::rng::Rng;
use crate::shards::Sequence;

/// Token ids of a document's sentences.
pub type TokenizedDocument = Vec<Vec<u32>>;

#[derive(Debug, Clone, Copy)]
pub struct Specials {
    pub cls: u32,
    pub sep: u32,
}

fn pair(a: &[u32], b: &[u32], sp: Specials, label: Option<u8>) -> Sequence {
    let mut ids = Vec::with_capacity(a.len() + b.len() + 3);
    ids.push(sp.cls);
    ids.extend_from_slice(a);
    ids.push(sp.sep);
    let mut types = vec![0u8; ids.len()];
    if label.is_some() {
        ids.extend_from_slice(b);
        ids.push(sp.sep);
        types.resize(ids.len(), 1);
    }
    Sequence {
        input_ids: ids,
        token_type_ids: types,
        next_sentence_label: label,
    }
}

/// Google's `truncate_seq_pair`.
fn truncate_pair(a: &mut Vec<u32>, b: &mut Vec<u32>, max: usize, rng: &mut Rng) {
    while a.len() + b.len() > max {
        let longer = if a.len() > b.len() { &mut *a } else { &mut *b };
        if rng.f64() < 0.5 {
            longer.remove(0);
        } else {
            longer.pop();
        }
    }
}

/// NSP sequence pairs for document `index` of `docs` (Google semantics, see the module doc).
/// Documents must be non-empty lists of non-empty sentences.
pub fn nsp_pairs(
    docs: &[TokenizedDocument],
    index: usize,
    seq_len: usize,
    short_seq_prob: f64,
    sp: Specials,
    rng: &mut Rng,
    out: &mut Vec<Sequence>,
) {
    let document = &docs[index];
    let max_num_tokens = seq_len.saturating_sub(3).max(2);
    let mut target = max_num_tokens;
    if rng.f64() < short_seq_prob {
        target = rng.range_inclusive(2, max_num_tokens);
    }
    let mut chunk: Vec<&Vec<u32>> = Vec::new();
    let mut chunk_len = 0;
    let mut i = 0;
    while i < document.len() {
        let segment = &document[i];
        chunk.push(segment);
        chunk_len += segment.len();
        if i == document.len() - 1 || chunk_len >= target {
            let a_end = if chunk.len() >= 2 {
                rng.range_inclusive(1, chunk.len() - 1)
            } else {
                1
            };
            let mut a: Vec<u32> = chunk[..a_end]
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            let mut b = Vec::new();
            let random_next = chunk.len() == 1 || rng.f64() < 0.5;
            if random_next {
                let target_b = target.saturating_sub(a.len());
                let mut other = index;
                for _ in 0..10 {
                    other = rng.below(docs.len() as u64) as usize;
                    if other != index {
                        break;
                    }
                }
                let random_doc = &docs[other];
                let start = rng.below(random_doc.len() as u64) as usize;
                for s in &random_doc[start..] {
                    b.extend_from_slice(s);
                    if b.len() >= target_b {
                        break;
                    }
                }
                // Put the unused sentences back.
                i -= chunk.len() - a_end;
            } else {
                b = chunk[a_end..]
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect();
            }
            truncate_pair(&mut a, &mut b, max_num_tokens, rng);
            if !a.is_empty() && !b.is_empty() {
                out.push(pair(&a, &b, sp, Some(random_next as u8)));
            }
            chunk.clear();
            chunk_len = 0;
        }
        i += 1;
    }
}

/// Packed `[CLS] ... [SEP]` sequences of one document (no NSP).
pub fn pack(document: &TokenizedDocument, seq_len: usize, sp: Specials, out: &mut Vec<Sequence>) {
    let max = seq_len.saturating_sub(2).max(1);
    let mut current: Vec<u32> = Vec::with_capacity(max);
    for sentence in document {
        if !current.is_empty() && current.len() + sentence.len() > max {
            out.push(pair(&current, &[], sp, None));
            current.clear();
        }
        for piece in sentence.chunks(max) {
            if current.len() + piece.len() > max {
                out.push(pair(&current, &[], sp, None));
                current.clear();
            }
            current.extend_from_slice(piece);
        }
    }
    if !current.is_empty() {
        out.push(pair(&current, &[], sp, None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP: Specials = Specials { cls: 2, sep: 3 };

    fn doc(lens: &[usize], base: u32) -> TokenizedDocument {
        let mut next = base;
        lens.iter()
            .map(|&n| {
                (0..n)
                    .map(|_| {
                        next += 1;
                        next
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn pack_keeps_every_token_in_order_within_the_limit() {
        let d = doc(&[5, 7, 30, 2, 9], 100);
        let mut out = Vec::new();
        pack(&d, 12, SP, &mut out);
        let flat: Vec<u32> = d.iter().flatten().copied().collect();
        let mut got = Vec::new();
        for s in &out {
            assert!(s.input_ids.len() <= 12);
            assert_eq!(s.input_ids[0], 2);
            assert_eq!(*s.input_ids.last().unwrap(), 3);
            assert!(s.token_type_ids.iter().all(|&t| t == 0));
            got.extend_from_slice(&s.input_ids[1..s.input_ids.len() - 1]);
        }
        assert_eq!(got, flat);
        // Sentences are not split when they fit: [5], then 7 doesn't fit after 5 (5+7 > 10).
        assert_eq!(out[0].input_ids.len(), 7);
    }

    #[test]
    fn nsp_pairs_follow_google_semantics() {
        let docs: Vec<_> = (0..50)
            .map(|d| doc(&[8, 12, 6, 20, 9, 15, 7, 11], 1000 * d))
            .collect();
        let mut rng = Rng::new(1);
        let mut out = Vec::new();
        for i in 0..docs.len() {
            nsp_pairs(&docs, i, 32, 0.1, SP, &mut rng, &mut out);
        }
        let random = out
            .iter()
            .filter(|s| s.next_sentence_label == Some(1))
            .count();
        let frac = random as f64 / out.len() as f64;
        assert!((0.4..0.65).contains(&frac), "{frac} of {}", out.len());
        for s in &out {
            assert!(s.input_ids.len() <= 32);
            let seps: Vec<usize> = (0..s.input_ids.len())
                .filter(|&i| s.input_ids[i] == 3)
                .collect();
            assert_eq!(seps.len(), 2);
            assert_eq!(seps[1], s.input_ids.len() - 1);
            assert!(seps[0] >= 2 && seps[1] > seps[0] + 1, "A and B non-empty");
            assert!(s.token_type_ids[..=seps[0]].iter().all(|&t| t == 0));
            assert!(s.token_type_ids[seps[0] + 1..].iter().all(|&t| t == 1));
            // B is from the same document (same thousand) exactly when the label is 0.
            let a_doc = s.input_ids[1] / 1000;
            let b_doc = s.input_ids[seps[0] + 1] / 1000;
            if s.next_sentence_label == Some(0) {
                assert_eq!(a_doc, b_doc);
            }
        }
        // Deterministic.
        let mut rng2 = Rng::new(1);
        let mut out2 = Vec::new();
        for i in 0..docs.len() {
            nsp_pairs(&docs, i, 32, 0.1, SP, &mut rng2, &mut out2);
        }
        assert_eq!(out, out2);
    }

    #[test]
    fn one_sentence_documents_and_a_single_document() {
        let docs = vec![doc(&[1], 0)];
        let mut out = Vec::new();
        nsp_pairs(&docs, 0, 128, 0.1, SP, &mut Rng::new(3), &mut out);
        // One sentence: forced random next, and the only "other" document is itself.
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].next_sentence_label, Some(1));
    }
}
