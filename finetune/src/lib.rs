//! bertkit-finetune: fine-tuning on downstream tasks. So far: the evaluation metrics of GLUE,
//! SQuAD and CoNLL-style NER (`metrics`), matching sklearn/scipy, the official SQuAD script and
//! seqeval; the tasks, readers and the `finetune`/`eval`/`predict` commands come with their issue.

pub mod metrics;
