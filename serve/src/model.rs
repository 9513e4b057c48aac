//! A served plan: its runtime behind a batch queue, and the request pipeline every endpoint
//! goes through: tokenize on the pool (length limit, truncation) → queue → batch → task
//! post-processing (the same functions `bertkit predict` uses).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bertkit_model::config::ProblemType;
use bertkit_model::{TextInput, Truncate};
use bertkit_runtime::{
    check_input, Encoded, PlanMeta, PlanTask, Runtime, RuntimeOptions, SeqOutput,
};
use bertkit_tasks::data::ner::NerSentence;
use bertkit_tasks::data::squad::QaExample;
use bertkit_tasks::data::Skipped;
use bertkit_tasks::spec::{QaSpec, TagScheme, TaskSettings, TaskSpec};
use bertkit_tasks::task::{self as tasks, classify, ner, qa, Feature, Logits};
use serde_json::Value;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

use crate::error::ApiError;
use crate::http::trace;
use crate::metrics::Metrics;
use crate::queue::{BatchSettings, Queue};
use crate::tokenize::TokenizerPool;

/// How the embedding endpoints shape their vectors.
#[derive(Debug, Default, Clone)]
pub struct EmbedOptions {
    /// `None`: the server's --truncate.
    pub truncate: Option<bool>,
    pub normalize: bool,
    /// One of the plan's sentence-transformers prompts, put before each text.
    pub prompt_name: Option<String>,
    /// Keep the first N values (Matryoshka), renormalized.
    pub dimensions: Option<usize>,
}

/// What `--plan` names: a folder, optionally served under another name (`NAME=DIR`).
#[derive(Debug, Clone)]
pub struct PlanArg {
    pub name: String,
    pub dir: PathBuf,
}

impl std::str::FromStr for PlanArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, dir) = match s.split_once('=') {
            Some((n, d)) if !n.is_empty() && !n.contains('/') => (n.to_string(), PathBuf::from(d)),
            _ => {
                let dir = PathBuf::from(s);
                let stem = dir
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| format!("{s:?}: not a plan folder"))?;
                (stem, dir)
            }
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "model name {name:?}: use letters, digits, '-', '_' and '.' (NAME=DIR sets it)"
            ));
        }
        Ok(PlanArg { name, dir })
    }
}

/// How the server runs each plan.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub threads: Option<usize>,
    pub max_batch_tokens: usize,
    /// `None`: the plan's max batch.
    pub max_batch_size: Option<usize>,
    pub max_queue_delay: Duration,
    /// `None`: the plan's tokenizer max length.
    pub max_input_length: Option<usize>,
    pub truncate: bool,
}

pub struct Model {
    pub name: String,
    pub runtime: Arc<Runtime>,
    pub queue: Queue,
    pub max_input_length: usize,
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub truncate: bool,
    pub spec: Option<TaskSpec>,
    pub problem: ProblemType,
    /// The plan's tokenizer truncating longest-first to `max_input_length`.
    truncating: Arc<Tokenizer>,
    /// Every whitespace-separated word with an ASCII letter or digit is at least one token
    /// (BERT's normalizer and pre-tokenizer): see [`past_limit_prefix`].
    words_bound_tokens: bool,
    pool: Arc<TokenizerPool>,
    metrics: Arc<Metrics>,
}

/// Token ids of one input, or why it was refused.
type Encoding = std::result::Result<Encoded, ApiError>;

impl Model {
    /// Loads and checks the plan, starts its worker, and warms it up (one input per bucket).
    pub fn load(
        arg: &PlanArg,
        s: &ModelSettings,
        pool: Arc<TokenizerPool>,
        metrics: Arc<Metrics>,
    ) -> Result<Model> {
        let runtime = Arc::new(Runtime::load(
            &arg.dir,
            &RuntimeOptions {
                threads: s.threads,
                ..Default::default()
            },
        )?);
        let meta = &runtime.meta;
        let max_input_length = s.max_input_length.unwrap_or(meta.tokenizer.max_length);
        if max_input_length > meta.shape.max_position_embeddings {
            bail!(
                "--max-input-length {max_input_length} is more than {}'s {} positions",
                arg.dir.display(),
                meta.shape.max_position_embeddings
            );
        }
        let max_batch_size = s.max_batch_size.unwrap_or(meta.max_batch).max(1);
        let mut buckets = meta.seq_buckets.clone();
        buckets.sort_unstable();
        let settings = BatchSettings {
            max_batch_tokens: s.max_batch_tokens,
            max_batch_size,
            max_queue_delay: s.max_queue_delay,
            buckets,
        };
        let top = settings.bucket(max_input_length);
        if s.max_batch_tokens < top {
            bail!(
                "--max-batch-tokens {} cannot hold one input of the longest length bucket ({top} \
                 tokens for --max-input-length {max_input_length})",
                s.max_batch_tokens
            );
        }
        let spec = match &meta.task_settings {
            Some(v) => Some(
                serde_json::from_value::<TaskSpec>(v.clone())
                    .with_context(|| format!("{}: plan.json task_settings", arg.dir.display()))?,
            ),
            None => None,
        };
        // plan.json holds the HF name export wrote from the same enum.
        let problem = meta
            .problem_type
            .as_deref()
            .and_then(|p| serde_json::from_value(Value::String(p.into())).ok())
            .unwrap_or(ProblemType::SingleLabelClassification);
        let truncating = runtime
            .tokenizer()
            .truncating(Truncate::longest_first(max_input_length))?;
        let words_bound_tokens = words_bound_tokens(runtime.tokenizer().inner());
        let rt = Arc::clone(&runtime);
        let queue = Queue::start(
            &arg.name,
            settings.clone(),
            Arc::clone(&metrics),
            move |b| rt.run(b),
        )
        .context("starting the model worker")?;
        // Warm-up: one input per bucket up to the input limit, so the first requests don't pay
        // for first-touch page faults and thread start-up.
        let mut lengths: Vec<usize> = settings
            .buckets
            .iter()
            .copied()
            .filter(|&b| b < max_input_length)
            .collect();
        lengths.push(max_input_length);
        for len in lengths {
            let ids = vec![runtime.tokenizer().pad_id().max(1); len.max(1)];
            let warm = Encoded {
                type_ids: vec![0; ids.len()],
                ids,
            };
            runtime
                .run(std::slice::from_ref(&warm))
                .with_context(|| format!("warming up {} at {len} tokens", arg.dir.display()))?;
        }
        Ok(Model {
            name: arg.name.clone(),
            max_input_length,
            max_batch_size,
            max_batch_tokens: s.max_batch_tokens,
            truncate: s.truncate,
            spec,
            problem,
            truncating,
            words_bound_tokens,
            runtime,
            queue,
            pool,
            metrics,
        })
    }

    pub fn meta(&self) -> &PlanMeta {
        &self.runtime.meta
    }

    pub fn task(&self) -> PlanTask {
        self.runtime.meta.task
    }

    pub fn dir(&self) -> &Path {
        &self.runtime.dir
    }

    /// Refuses a request for an endpoint made for another task.
    pub fn expect_task(&self, tasks: &[PlanTask], endpoint: &str) -> Result<(), ApiError> {
        if tasks.contains(&self.task()) {
            return Ok(());
        }
        Err(ApiError::invalid(format!(
            "model {:?} is a {} plan; {endpoint} needs {}",
            self.name,
            self.task().name(),
            tasks
                .iter()
                .map(|t| format!("a {} plan", t.name()))
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }

    /// Tokenizes texts on the pool. Longer than the input limit → 422 unless `truncate`.
    pub async fn encode_texts(
        self: &Arc<Self>,
        inputs: Vec<TextInput>,
        truncate: Option<bool>,
    ) -> Result<Vec<Encoded>, ApiError> {
        let truncate = truncate.unwrap_or(self.truncate);
        let me = Arc::clone(self);
        self.on_pool(inputs.len(), text_chars(&inputs), move || {
            inputs
                .iter()
                .enumerate()
                .map(|(i, input)| me.encode_one(i, input, truncate))
                .collect()
        })
        .await
    }

    fn encode_one(&self, i: usize, input: &TextInput, truncate: bool) -> Encoding {
        let tokenizing =
            |e: tokenizers::Error| ApiError::invalid(format!("input {i}: tokenizing: {e}"));
        if let Some(pair) = &input.text_pair {
            return encode_pair(
                self.tokenizer(),
                &input.text,
                pair,
                self.max_input_length,
                truncate,
            )
            .map_err(|e| match e {
                PairError::TooLong(n) => self.too_long(i, n),
                PairError::Tokenizer(e) => tokenizing(e),
            });
        }
        let encode = |t: &Tokenizer, text: &str| t.encode(text, true).map_err(tokenizing);
        // A text far past the limit is settled from a prefix: refused, or truncated to the same
        // ids, without tokenizing (and holding) all of it.
        let cut = self
            .words_bound_tokens
            .then(|| past_limit_prefix(&input.text, self.max_input_length))
            .flatten();
        let e = match cut {
            Some(_) if !truncate => {
                return Err(self.too_long(i, format!("more than {}", self.max_input_length)))
            }
            Some(cut) => encode(&self.truncating, &input.text[..cut])?,
            None => {
                let e = encode(self.tokenizer(), &input.text)?;
                if e.get_ids().len() <= self.max_input_length {
                    e
                } else if !truncate {
                    return Err(self.too_long(i, e.get_ids().len()));
                } else {
                    encode(&self.truncating, &input.text)?
                }
            }
        };
        Ok(Encoded {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
        })
    }

    /// Runs `f` (tokenization, task features) on the tokenizer pool, timed as this model's
    /// tokenization of `n` inputs of `characters` characters (for the metrics and the request's
    /// trace).
    async fn on_pool<T: Send + 'static>(
        &self,
        n: usize,
        characters: usize,
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let r = self
            .pool
            .run(f)
            .await
            .ok_or_else(|| ApiError::unavailable("the server is shutting down"))?;
        let took = started.elapsed();
        self.metrics.tokenized(&self.name, took.as_secs_f64(), n);
        trace::record_tokenization(n, characters, took);
        r
    }

    /// 422 for input `i` of `tokens` tokens (a count, or "more than N").
    fn too_long(&self, i: usize, tokens: impl std::fmt::Display) -> ApiError {
        ApiError::unprocessable(
            "input_too_long",
            format!(
                "input {i} has {tokens} tokens, more than the limit of {} (--max-input-length); \
                 send shorter input, set \"truncate\": true, or start the server with --truncate",
                self.max_input_length
            ),
        )
    }

    /// Checks pre-tokenized inputs against the input limit (422) and the model (400: what the
    /// runtime itself checks).
    pub fn check_ids(&self, inputs: &[Encoded]) -> Result<(), ApiError> {
        let shape = &self.meta().shape;
        for (i, e) in inputs.iter().enumerate() {
            if e.ids.len() > self.max_input_length {
                return Err(self.too_long(i, e.ids.len()));
            }
            check_input(
                i,
                e,
                shape.vocab_size,
                shape.max_position_embeddings,
                shape.type_vocab_size,
            )
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// Queues every input and waits for all (dropping this future drops them from the queue).
    pub async fn run(&self, inputs: Vec<Encoded>) -> Result<Vec<SeqOutput>, ApiError> {
        let tokens = inputs.iter().map(|e| e.ids.len()).sum();
        let started = Instant::now();
        let receivers: Vec<_> = inputs.into_iter().map(|e| self.queue.push(e)).collect();
        let mut done = Vec::with_capacity(receivers.len());
        for rx in receivers {
            match rx.await {
                Ok(Ok(d)) => done.push(d),
                Ok(Err(e)) => return Err(ApiError::internal(format!("inference failed: {e}"))),
                Err(_) => return Err(ApiError::unavailable("the model worker has stopped")),
            }
        }
        trace::record_batches(tokens, started.elapsed(), &done);
        Ok(done.into_iter().map(|d| d.output).collect())
    }

    /// Sentence embeddings, shaped as `o` asks (prompt, Matryoshka dimensions, normalization),
    /// and the number of tokens they took.
    pub async fn embed(
        self: &Arc<Self>,
        mut inputs: Vec<TextInput>,
        o: &EmbedOptions,
    ) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
        let dimensions = self.check_dimensions(o.dimensions)?;
        if let Some(prompt) = self.prompt(o.prompt_name.as_deref())? {
            for i in &mut inputs {
                i.text.insert_str(0, prompt);
            }
        }
        let encoded = self.encode_texts(inputs, o.truncate).await?;
        let tokens = encoded.iter().map(|e| e.ids.len()).sum();
        let outputs = self.run(encoded).await?;
        let vectors = outputs
            .into_iter()
            .map(|out| self.shape_embedding(out.data, dimensions, o.normalize))
            .collect();
        Ok((vectors, tokens))
    }

    /// The prompt named (TEI's `prompt_name`), else the plan's default prompt, if any.
    pub fn prompt(&self, name: Option<&str>) -> Result<Option<&str>, ApiError> {
        let meta = self.meta();
        match name.or(meta.default_prompt_name.as_deref()) {
            None => Ok(None),
            Some(n) => meta
                .prompts
                .get(n)
                .map(|p| Some(p.as_str()))
                .ok_or_else(|| {
                    ApiError::unprocessable(
                        "unknown_prompt",
                        format!(
                            "prompt_name {n:?} is not one of model {:?}'s prompts ({}) from its \
                         config_sentence_transformers.json",
                            self.name,
                            if meta.prompts.is_empty() {
                                "it has none".to_string()
                            } else {
                                meta.prompts.keys().cloned().collect::<Vec<_>>().join(", ")
                            }
                        ),
                    )
                }),
        }
    }

    /// The dimensions to keep: 1 up to the model's hidden size.
    pub fn check_dimensions(&self, d: Option<usize>) -> Result<Option<usize>, ApiError> {
        let hidden = self.meta().shape.hidden_size;
        match d {
            Some(n) if n == 0 || n > hidden => Err(ApiError::unprocessable(
                "invalid_dimensions",
                format!(
                    "dimensions {n}: model {:?} gives {hidden}; ask for 1 to {hidden}",
                    self.name
                ),
            )),
            other => Ok(other),
        }
    }

    /// One pooled vector cut to its first `dimensions` values (Matryoshka), then L2-normalized
    /// when asked, or when the plan's vectors were unit length before the cut.
    pub fn shape_embedding(
        &self,
        mut v: Vec<f32>,
        dimensions: Option<usize>,
        normalize: bool,
    ) -> Vec<f32> {
        let cut = dimensions.is_some_and(|d| d < v.len());
        if let Some(d) = dimensions {
            v.truncate(d);
        }
        let unit_plan = self.meta().pooling.as_ref().is_some_and(|p| p.normalize);
        if normalize || (cut && unit_plan) {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        v
    }

    /// Labels and scores of each input, as `bertkit predict` writes them.
    pub async fn classify(
        self: &Arc<Self>,
        inputs: Vec<TextInput>,
        truncate: Option<bool>,
    ) -> Result<Vec<Value>, ApiError> {
        let encoded = self.encode_texts(inputs, truncate).await?;
        let outputs = self.run(encoded).await?;
        let logits = Logits::Sequence(outputs.into_iter().map(|o| o.data).collect());
        Ok(classify::predictions(
            &logits,
            &self.meta().labels,
            self.problem,
        ))
    }

    /// Tags and entities of word-split sentences, as `bertkit predict` writes them.
    pub async fn ner(
        self: &Arc<Self>,
        sentences: Vec<NerSentence>,
        truncate: Option<bool>,
    ) -> Result<Vec<Value>, ApiError> {
        let truncate = truncate.unwrap_or(self.truncate);
        // Without truncation, encode past the limit, so that a long sentence is refused below
        // rather than cut.
        let limit = if truncate {
            self.max_input_length
        } else {
            self.meta()
                .shape
                .max_position_embeddings
                .max(self.max_input_length)
                + 1
        };
        let me = Arc::clone(self);
        let (sentences, encoded) = self
            .on_pool(sentences.len(), ner_chars(&sentences), move || {
                let encoded = ner::features(
                    me.runtime.tokenizer(),
                    &sentences,
                    &me.meta().labels,
                    limit,
                    false,
                    false,
                    &mut Skipped::default(),
                )
                .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
                Ok((sentences, encoded))
            })
            .await?;
        let inputs = feature_inputs(&encoded.features);
        if let Some((i, e)) = inputs
            .iter()
            .enumerate()
            .find(|(_, e)| e.ids.len() > self.max_input_length)
        {
            return Err(self.too_long(i, e.ids.len()));
        }
        let outputs = self.run(inputs).await?;
        let logits = Logits::Tokens(
            outputs
                .into_iter()
                .map(|o| o.data.chunks(o.width.max(1)).map(<[f32]>::to_vec).collect())
                .collect(),
        );
        let scheme = match self.spec.as_ref().map(|s| &s.task) {
            Some(TaskSettings::Ner(n)) => n.scheme,
            _ => TagScheme::Iob2,
        };
        Ok(ner::predictions(
            &sentences,
            &encoded,
            &logits,
            &self.meta().labels,
            scheme,
        ))
    }

    /// The answer of each question in its context: long contexts are split into overlapping
    /// windows (the plan's doc stride) and the best span over all windows wins, as in
    /// `bertkit predict`.
    pub async fn qa(self: &Arc<Self>, examples: Vec<QaExample>) -> Result<Vec<Value>, ApiError> {
        let spec = self.qa_spec();
        let (me, s) = (Arc::clone(self), spec.clone());
        let (examples, encoded) = self
            .on_pool(examples.len(), qa_chars(&examples), move || {
                let encoded = qa::features(
                    me.runtime.tokenizer(),
                    &examples,
                    &s,
                    me.max_input_length,
                    false,
                )
                .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
                Ok((examples, encoded))
            })
            .await?;
        let outputs = self.run(feature_inputs(&encoded.features)).await?;
        let logits = Logits::Spans(
            outputs
                .into_iter()
                .map(|o| {
                    let start = o.data.iter().step_by(2).copied().collect();
                    let end = o.data.iter().skip(1).step_by(2).copied().collect();
                    (start, end)
                })
                .collect(),
        );
        Ok(qa::predictions(&examples, &encoded, &logits, &spec))
    }

    /// The QA settings the model was fine-tuned with, else run_qa's defaults.
    pub fn qa_spec(&self) -> QaSpec {
        match self.spec.as_ref().map(|s| &s.task) {
            Some(TaskSettings::Qa(q)) => q.clone(),
            _ => QaSpec::default(),
        }
    }

    /// Probabilities of one row of classification logits (softmax, sigmoid for multi-label,
    /// the value itself for regression).
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f32> {
        match self.problem {
            ProblemType::SingleLabelClassification => tasks::softmax(logits),
            ProblemType::MultiLabelClassification => {
                logits.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect()
            }
            ProblemType::Regression => logits.to_vec(),
        }
    }

    /// The plan's tokenizer without truncation.
    pub fn tokenizer(&self) -> &Tokenizer {
        self.runtime.tokenizer().inner()
    }

    /// The tokens of each input (id, text, special, type id, character span), untruncated,
    /// computed on the tokenizer pool.
    pub async fn tokens(
        self: &Arc<Self>,
        inputs: Vec<TextInput>,
        special: bool,
    ) -> Result<Vec<Value>, ApiError> {
        let me = Arc::clone(self);
        self.on_pool(inputs.len(), text_chars(&inputs), move || {
            inputs
                .iter()
                .enumerate()
                .map(|(i, input)| {
                    let e = match &input.text_pair {
                        Some(p) => me
                            .tokenizer()
                            .encode_char_offsets((input.text.as_str(), p.as_str()), special),
                        None => me
                            .tokenizer()
                            .encode_char_offsets(input.text.as_str(), special),
                    }
                    .map_err(|e| ApiError::invalid(format!("input {i}: {e}")))?;
                    Ok(Value::Array(
                        (0..e.len())
                            .map(|k| {
                                let (a, b) = e.get_offsets()[k];
                                serde_json::json!({
                                    "id": e.get_ids()[k],
                                    "text": e.get_tokens()[k],
                                    "special": e.get_special_tokens_mask()[k] == 1,
                                    "type_id": e.get_type_ids()[k],
                                    "start": a,
                                    "stop": b,
                                })
                            })
                            .collect(),
                    ))
                })
                .collect()
        })
        .await
    }
}

enum PairError {
    TooLong(usize),
    Tokenizer(tokenizers::Error),
}

/// A text pair's ids, truncated longest-first to `max` tokens when `truncate`, exactly as the
/// tokenizer's own truncation would. Not through it: its truncation keeps every cut-off window
/// of each text ("overflowing") and pairs them all up when adding the special tokens (windows of
/// one times windows of the other): one pair of 150,000 and 100,000 characters took the server
/// past 24 GB. Each text is encoded once, cut, and then given its special tokens.
fn encode_pair(
    tokenizer: &Tokenizer,
    a: &str,
    b: &str,
    max: usize,
    truncate: bool,
) -> std::result::Result<Encoded, PairError> {
    use tokenizers::{truncate_encodings, PostProcessor};
    let mut first = tokenizer.encode(a, false).map_err(PairError::Tokenizer)?;
    let mut second = tokenizer.encode(b, false).map_err(PairError::Tokenizer)?;
    second.set_type_ids(vec![1; second.len()]);
    let added = tokenizer
        .get_post_processor()
        .map_or(0, |p| p.added_tokens(true));
    let total = first.len() + second.len() + added;
    let mut second = Some(second);
    if total > max {
        if !truncate {
            return Err(PairError::TooLong(total));
        }
        let params = TruncationParams {
            max_length: max.saturating_sub(added),
            strategy: TruncationStrategy::LongestFirst,
            ..Default::default()
        };
        (first, second) =
            truncate_encodings(first, second, &params).map_err(PairError::Tokenizer)?;
        drop(first.take_overflowing());
        if let Some(s) = second.as_mut() {
            drop(s.take_overflowing());
        }
    }
    let e = tokenizer
        .post_process(first, second, true)
        .map_err(PairError::Tokenizer)?;
    Ok(Encoded {
        ids: e.get_ids().to_vec(),
        type_ids: e.get_type_ids().to_vec(),
    })
}

/// Whether a text's words bound its tokens from below: BERT's normalizer (or none) and BERT's
/// pre-tokenizer, which splits at every whitespace character and turns each piece into at least
/// one token (`[UNK]` at worst), and no added token spans whitespace. Only characters the
/// normalizer may drop (controls, accents) can make a piece vanish, and a piece holding an
/// ASCII letter or digit keeps it.
fn words_bound_tokens(t: &Tokenizer) -> bool {
    use tokenizers::{NormalizerWrapper, PreTokenizerWrapper};
    matches!(
        t.get_normalizer(),
        None | Some(NormalizerWrapper::BertNormalizer(_))
    ) && matches!(
        t.get_pre_tokenizer(),
        Some(PreTokenizerWrapper::BertPreTokenizer(_))
    ) && t
        .get_added_tokens_decoder()
        .values()
        .all(|a| !a.content.contains(char::is_whitespace))
}

/// Texts shorter than this many bytes per allowed token are tokenized whole.
const PREFIX_CHECK_BYTES_PER_TOKEN: usize = 16;

/// For a text that certainly has more than `max_tokens` tokens (special tokens included):
/// the length of a prefix, cut at a whitespace character, that has too. Under
/// [`words_bound_tokens`], the prefix's tokens are the text's first tokens, so truncating the
/// prefix gives the same ids as truncating the whole text. `None` when the text is short or
/// its words do not prove it long (it is then tokenized whole).
fn past_limit_prefix(text: &str, max_tokens: usize) -> Option<usize> {
    if text.len() <= max_tokens.saturating_mul(PREFIX_CHECK_BYTES_PER_TOKEN) {
        return None;
    }
    // More words than the limit: more tokens than the limit even before [CLS] and [SEP].
    let needed = max_tokens + 1;
    let (mut words, mut counted) = (0, false);
    for (at, c) in text.char_indices() {
        // A split for the pre-tokenizer that BERT's clean-up keeps (it deletes the control
        // characters among the whitespace: vertical tab, form feed, next line).
        if c.is_whitespace() && (!c.is_control() || matches!(c, '\t' | '\n' | '\r')) {
            if counted {
                words += 1;
                if words >= needed {
                    return Some(at);
                }
            }
            counted = false;
        } else if c.is_ascii_alphanumeric() {
            counted = true;
        }
    }
    None
}

/// The runtime's inputs of task features.
fn feature_inputs(features: &[Feature]) -> Vec<Encoded> {
    features
        .iter()
        .map(|f| Encoded {
            ids: f.input_ids.clone(),
            type_ids: f.token_type_ids.clone(),
        })
        .collect()
}

/// Characters of text inputs (pairs counted whole).
fn text_chars(inputs: &[TextInput]) -> usize {
    inputs
        .iter()
        .map(|i| i.text.chars().count() + i.text_pair.as_ref().map_or(0, |p| p.chars().count()))
        .sum()
}

fn ner_chars(sentences: &[NerSentence]) -> usize {
    sentences
        .iter()
        .flat_map(|s| &s.tokens)
        .map(|w| w.chars().count())
        .sum()
}

fn qa_chars(examples: &[QaExample]) -> usize {
    examples
        .iter()
        .map(|e| e.question.chars().count() + e.context.chars().count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bertkit_model::BertTokenizer;

    fn fixture_tokenizer() -> BertTokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "../tests/fixtures/hf-reference/tiny_heads/sequence_classification/tokenizer.json",
        );
        BertTokenizer::from_tokenizer_json(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn truncating_to(t: &BertTokenizer, max: usize) -> Arc<Tokenizer> {
        t.truncating(Truncate::longest_first(max)).unwrap()
    }

    #[test]
    fn a_long_texts_prefix_truncates_to_the_same_ids() {
        let bert = fixture_tokenizer();
        let full = bert.inner();
        assert!(words_bound_tokens(full));
        let max = 32;
        let truncating = truncating_to(&bert, max);
        // Words of every kind: punctuation splits, accents, CJK, unknown words, controls that
        // BERT's clean-up deletes (\x0b, \u{85}: not splits), tabs and newlines (splits).
        let pieces = [
            "hello,", "world", "naïve", "café", "東京", "x\x0by", "a\u{85}b", "qzxv", "e\u{301}",
            "--", "42", "[MASK]", "it's",
        ];
        let seps = [" ", "\t", "\n", "  ", "\u{3000}", "\r\n"];
        let mut text = String::new();
        let mut k = 0usize;
        while text.len() < max * PREFIX_CHECK_BYTES_PER_TOKEN * 3 {
            text.push_str(pieces[k % pieces.len()]);
            text.push_str(seps[k % seps.len()]);
            k += 7;
        }
        for start in 0..24 {
            let t = &text[text.char_indices().nth(start).unwrap().0..];
            let cut = past_limit_prefix(t, max).expect("long enough to cut");
            assert!(cut < t.len());
            let whole = truncating.encode(t, true).unwrap();
            let prefix = truncating.encode(&t[..cut], true).unwrap();
            assert_eq!(whole.get_ids(), prefix.get_ids(), "start {start}");
            assert_eq!(whole.get_ids().len(), max);
            // The prefix alone proves the text too long.
            assert!(full.encode(&t[..cut], true).unwrap().get_ids().len() > max);
        }
    }

    #[test]
    fn pairs_truncate_as_the_tokenizer_does_without_its_overflow() {
        let bert = fixture_tokenizer();
        let full = bert.inner();
        let words = ["the", "plot,", "naïve", "東京", "qzxv", "it's", "film"];
        let text = |seed: usize, n: usize| -> String {
            (0..n)
                .map(|k| words[(seed * 31 + k * 7 + k * k) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        };
        for max in [9, 16, 17, 64] {
            let truncating = truncating_to(&bert, max);
            for (n1, n2) in [
                (1, 1),
                (3, 40),
                (40, 3),
                (20, 21),
                (30, 30),
                (5, 5),
                (100, 2),
            ] {
                let (a, b) = (text(n1, n1), text(n2 + 1, n2));
                let want = truncating.encode((a.as_str(), b.as_str()), true).unwrap();
                let got = encode_pair(full, &a, &b, max, true).ok().unwrap();
                assert_eq!(got.ids, want.get_ids(), "max {max}, {n1}+{n2} words");
                assert_eq!(
                    got.type_ids,
                    want.get_type_ids(),
                    "max {max}, {n1}+{n2} words"
                );
                let whole = full.encode((a.as_str(), b.as_str()), true).unwrap();
                match encode_pair(full, &a, &b, max, false) {
                    Ok(e) => assert_eq!(e.ids, whole.get_ids()),
                    Err(PairError::TooLong(n)) => {
                        assert_eq!(n, whole.len());
                        assert!(n > max);
                    }
                    Err(PairError::Tokenizer(e)) => panic!("{e}"),
                }
            }
        }
    }

    #[test]
    fn short_or_unproven_texts_are_tokenized_whole() {
        let max = 8;
        assert_eq!(past_limit_prefix("a b c", max), None);
        // Long, but one word: its tokens are not proven.
        let one_word = "x".repeat(max * PREFIX_CHECK_BYTES_PER_TOKEN + 1);
        assert_eq!(past_limit_prefix(&one_word, max), None);
        // Long, separated only by deleted controls: one word to BERT.
        let controls = "ab\x0b".repeat(max * PREFIX_CHECK_BYTES_PER_TOKEN);
        assert_eq!(past_limit_prefix(&controls, max), None);
        // Words without ASCII letters or digits are not counted.
        let marks = "\u{301} ".repeat(max * PREFIX_CHECK_BYTES_PER_TOKEN);
        assert_eq!(past_limit_prefix(&marks, max), None);
        let words = "ab ".repeat(max * PREFIX_CHECK_BYTES_PER_TOKEN);
        assert_eq!(past_limit_prefix(&words, max), Some(3 * (max + 1) - 1));
    }
}
