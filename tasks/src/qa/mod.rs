//! Extractive question answering (SQuAD v1.1 / v2.0): feature building and answer
//! post-processing, reproducing Hugging Face `transformers` `examples/pytorch/question-answering`:
//!
//! * [`make_features`] — `run_qa.py` `prepare_train_features` / `prepare_validation_features`:
//!   `[CLS] question [SEP] context-window [SEP]`, "only_second" truncation with overflowing
//!   windows that overlap by [`QaSettings::doc_stride`] tokens (the tokenizers `stride`), character
//!   offsets for the context tokens, and start/end token labels (`0`/`0` = `[CLS]` when the answer
//!   is not entirely inside the window). As in the legacy `run_squad.py`, the question is first cut
//!   to [`QaSettings::max_query_length`] tokens.
//! * [`predict_answer`] — `utils_qa.py` `postprocess_qa_predictions`: n-best start/end indices
//!   per feature, span filtering, minimum null score over the features, SQuAD v2 null threshold.
//!
//! All offsets are **character** offsets (Python string indices), never byte offsets.

mod features;
mod postprocess;

pub use features::{make_features, QaFeature, QaSettings};
pub use postprocess::{predict_answer, QaPrediction, SpanCandidate};
