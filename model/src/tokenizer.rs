//! The BERT tokenizer: a Hugging Face `tokenizer.json`, or a WordPiece `vocab.txt` (+ lower
//! casing from `tokenizer_config.json`), with single and pair encoding, truncation and padding.
//!
//! Whatever padding or truncation a `tokenizer.json` carries is switched off on load (the
//! all-MiniLM-L6-v2 one pads everything to 128); batches are padded to their longest member and
//! truncated only when asked.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{EncodeInput, Tokenizer, TruncationParams, TruncationStrategy};

use crate::bert::BertInput;
use crate::{Error, Result};

/// One example: a text, or a pair of texts (`token_type_ids` 0 then 1).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct TextInput {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_pair: Option<String>,
}

impl TextInput {
    pub fn single(text: impl Into<String>) -> Self {
        TextInput {
            text: text.into(),
            text_pair: None,
        }
    }

    pub fn pair(text: impl Into<String>, pair: impl Into<String>) -> Self {
        TextInput {
            text: text.into(),
            text_pair: Some(pair.into()),
        }
    }
}

/// How over-long inputs are cut to the maximum length (special tokens included), as in HF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// Remove tokens from the longer of the two texts first.
    LongestFirst,
    /// Remove tokens from the second text only (QA contexts).
    OnlySecond,
}

/// Encodings cut to `max_length` tokens (special tokens included) with `strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncate {
    pub max_length: usize,
    pub strategy: Truncation,
}

impl Truncate {
    pub fn longest_first(max_length: usize) -> Self {
        Truncate {
            max_length,
            strategy: Truncation::LongestFirst,
        }
    }
}

/// Token ids of a batch padded to a common length, row-major `[batch, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub input_ids: Vec<i64>,
    pub token_type_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    /// Real tokens per example.
    pub lengths: Vec<usize>,
}

impl Batch {
    /// Pads token sequences (ids, type ids) to the longest one with `pad_id`.
    pub fn pad(sequences: &[(Vec<u32>, Vec<u32>)], pad_id: u32) -> Batch {
        let seq_len = sequences
            .iter()
            .map(|(ids, _)| ids.len())
            .max()
            .unwrap_or(0);
        let n = sequences.len() * seq_len;
        let mut batch = Batch {
            batch_size: sequences.len(),
            seq_len,
            input_ids: Vec::with_capacity(n),
            token_type_ids: Vec::with_capacity(n),
            attention_mask: Vec::with_capacity(n),
            lengths: Vec::with_capacity(sequences.len()),
        };
        for (ids, types) in sequences {
            let pad = seq_len - ids.len();
            batch.input_ids.extend(ids.iter().map(|&i| i as i64));
            batch
                .input_ids
                .extend(std::iter::repeat_n(pad_id as i64, pad));
            batch.token_type_ids.extend(types.iter().map(|&i| i as i64));
            batch.token_type_ids.extend(std::iter::repeat_n(0, pad));
            batch
                .attention_mask
                .extend(std::iter::repeat_n(1, ids.len()));
            batch.attention_mask.extend(std::iter::repeat_n(0, pad));
            batch.lengths.push(ids.len());
        }
        batch
    }

    /// The batch as model input on `device`.
    pub fn to_input<B: Backend>(&self, device: &B::Device) -> BertInput<B> {
        let shape = [self.batch_size, self.seq_len];
        let t = |v: &Vec<i64>| {
            Tensor::<B, 2, Int>::from_data(TensorData::new(v.clone(), shape), device)
        };
        let spans = crate::attention::Spans::padded(&self.attention_mask, shape[0], shape[1]);
        BertInput {
            input_ids: t(&self.input_ids),
            token_type_ids: t(&self.token_type_ids),
            attention_mask: t(&self.attention_mask),
            spans: spans.map(Arc::new),
        }
    }
}

/// A BERT WordPiece tokenizer. It holds no truncation state: each encode call says how to
/// truncate.
#[derive(Clone)]
pub struct BertTokenizer {
    /// Padding and truncation off.
    inner: Tokenizer,
    pad_id: u32,
    source: PathBuf,
    /// `inner` configured for each truncation asked for so far, built once each.
    truncating: Arc<Mutex<TruncatingCache>>,
}

/// Each truncation asked for, and the tokenizer configured for it.
type TruncatingCache = Vec<(Truncate, Arc<Tokenizer>)>;

impl BertTokenizer {
    /// Loads `tokenizer.json` from `dir`, else `vocab.txt` (lower casing from
    /// `tokenizer_config.json` `do_lower_case`, default true).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.exists() {
            return Self::from_tokenizer_json(&json);
        }
        let vocab = dir.join("vocab.txt");
        if vocab.exists() {
            return Self::from_vocab(&vocab, read_do_lower_case(dir)?);
        }
        Err(Error::invalid(
            dir,
            "no tokenizer found (expected tokenizer.json or vocab.txt)",
        ))
    }

    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_tokenizer_bytes(&bytes, path)
    }

    /// A `tokenizer.json` already read from `source` (for callers that also hash or copy it).
    pub fn from_tokenizer_bytes(bytes: &[u8], source: &Path) -> Result<Self> {
        let path = source;
        let mut inner = Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::invalid(path, format!("not a valid tokenizer.json: {e}")))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::invalid(path, e.to_string()))?;
        Self::new(inner, path)
    }

    /// A BERT tokenizer from a WordPiece vocabulary, one token per line.
    pub fn from_vocab(path: &Path, lowercase: bool) -> Result<Self> {
        let file = path
            .to_str()
            .ok_or_else(|| Error::invalid(path, "path is not UTF-8"))?;
        let model = WordPiece::from_file(file)
            .unk_token("[UNK]".to_string())
            .build()
            .map_err(|e| Error::invalid(path, format!("not a valid vocab.txt: {e}")))?;
        let mut inner = bert_pipeline(model, lowercase);
        add_bert_post_processor(&mut inner).map_err(|m| Error::invalid(path, m))?;
        Self::new(inner, path)
    }

    fn new(inner: Tokenizer, source: &Path) -> Result<Self> {
        let pad_id = inner
            .token_to_id("[PAD]")
            .ok_or_else(|| Error::invalid(source, "vocabulary has no [PAD] token"))?;
        Ok(BertTokenizer {
            inner,
            pad_id,
            source: source.to_path_buf(),
            truncating: Arc::default(),
        })
    }

    /// The file it was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The Hugging Face tokenizer inside (padding and truncation off).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The Hugging Face tokenizer truncating as `truncate` says, for callers that need whole
    /// encodings (offsets, word ids); [`Self::inner`] is the one that does not truncate. Built
    /// once per setting.
    pub fn truncating(&self, truncate: Truncate) -> Result<Arc<Tokenizer>> {
        let mut cache = self
            .truncating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, t)) = cache.iter().find(|(k, _)| *k == truncate) {
            return Ok(Arc::clone(t));
        }
        let strategy = match truncate.strategy {
            Truncation::LongestFirst => TruncationStrategy::LongestFirst,
            Truncation::OnlySecond => TruncationStrategy::OnlySecond,
        };
        let mut t = self.inner.clone();
        t.with_truncation(Some(TruncationParams {
            max_length: truncate.max_length,
            strategy,
            ..Default::default()
        }))
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let t = Arc::new(t);
        cache.push((truncate, Arc::clone(&t)));
        Ok(t)
    }

    /// Token ids and type ids of each input, special tokens added, truncated as `truncate`
    /// says (`None`: not at all).
    pub fn encode(
        &self,
        inputs: &[TextInput],
        truncate: Option<Truncate>,
    ) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        let batch: Vec<EncodeInput> = inputs
            .iter()
            .map(|i| match &i.text_pair {
                Some(pair) => EncodeInput::Dual(i.text.as_str().into(), pair.as_str().into()),
                None => EncodeInput::Single(i.text.as_str().into()),
            })
            .collect();
        let truncating = truncate.map(|t| self.truncating(t)).transpose()?;
        let encodings = truncating
            .as_deref()
            .unwrap_or(&self.inner)
            .encode_batch(batch, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| (e.get_ids().to_vec(), e.get_type_ids().to_vec()))
            .collect())
    }

    /// Encodes ([`Self::encode`]) and pads to the longest input.
    pub fn batch(&self, inputs: &[TextInput], truncate: Option<Truncate>) -> Result<Batch> {
        Ok(Batch::pad(&self.encode(inputs, truncate)?, self.pad_id))
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Writes `tokenizer.json` (no padding, no truncation).
    pub fn save_json(&self, path: &Path) -> Result<()> {
        let mut plain = self.inner.clone();
        plain.with_padding(None);
        plain
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        plain
            .save(path, true)
            .map_err(|e| Error::invalid(path, e.to_string()))
    }
}

/// BERT's text pipeline around a WordPiece model: BERT normalizer (lower-casing and accent
/// stripping when `lowercase`), BERT pre-tokenizer, WordPiece decoder. Used for vocabularies read
/// from `vocab.txt` and for those `bertkit vocab` trains.
pub fn bert_pipeline(model: WordPiece, lowercase: bool) -> Tokenizer {
    let mut t = Tokenizer::new(model);
    t.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
    t.with_pre_tokenizer(Some(BertPreTokenizer));
    t.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    t
}

/// Adds `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` post-processing with the vocabulary's own ids;
/// the error names the missing token.
pub fn add_bert_post_processor(t: &mut Tokenizer) -> std::result::Result<(), String> {
    let id = |tok: &str| {
        t.token_to_id(tok)
            .ok_or_else(|| format!("vocabulary has no {tok} token"))
    };
    let (sep, cls) = (id("[SEP]")?, id("[CLS]")?);
    t.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".to_string(), sep),
        ("[CLS]".to_string(), cls),
    )));
    Ok(())
}

fn read_do_lower_case(dir: &Path) -> Result<bool> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(true);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::invalid(&path, e.to_string()))?;
    Ok(value
        .get("do_lower_case")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> BertTokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/hf-reference/tiny_pretraining");
        BertTokenizer::from_dir(&dir).unwrap()
    }

    fn lengths(tok: &BertTokenizer, input: &TextInput, cut: Option<Truncate>) -> (usize, usize) {
        let (_, types) = &tok.encode(std::slice::from_ref(input), cut).unwrap()[0];
        let second = types.iter().filter(|&&t| t == 1).count();
        (types.len() - second, second)
    }

    #[test]
    fn pair_encoding_has_type_ids_and_special_tokens() {
        let tok = tokenizer();
        let (ids, types) = &tok
            .encode(&[TextInput::pair("hello world", "good morning")], None)
            .unwrap()[0];
        let cls = tok.token_to_id("[CLS]").unwrap();
        let sep = tok.token_to_id("[SEP]").unwrap();
        assert_eq!(ids.len(), 7);
        assert_eq!((ids[0], ids[3], ids[6]), (cls, sep, sep));
        assert_eq!(types, &vec![0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(tok.decode(ids, true).unwrap(), "hello world good morning");
    }

    #[test]
    fn truncation_strategies() {
        let long = "one two three four five six seven eight nine ten";
        let pair = TextInput::pair("alpha beta", long);
        let tok = tokenizer();
        assert_eq!(
            lengths(&tok, &pair, None),
            (4, 11),
            "no truncation unless asked"
        );
        let only_second = Truncate {
            max_length: 9,
            strategy: Truncation::OnlySecond,
        };
        assert_eq!(lengths(&tok, &pair, Some(only_second)), (4, 5));
        let longest = Some(Truncate::longest_first(9));
        // 6 content tokens split evenly: [CLS] 3 [SEP] | 3 [SEP].
        let both_long = TextInput::pair(long, long);
        assert_eq!(lengths(&tok, &both_long, longest), (5, 4));
        // The short text is kept whole, the long one cut.
        assert_eq!(lengths(&tok, &pair, longest), (4, 5));
        assert_eq!(lengths(&tok, &TextInput::single(long), longest), (9, 0));
        // No state: the same tokenizer still encodes whole when not asked to cut.
        assert_eq!(lengths(&tok, &pair, None), (4, 11));
    }

    #[test]
    fn padding_to_longest() {
        let tok = tokenizer();
        let batch = tok
            .batch(
                &[TextInput::single("a b c d"), TextInput::single("a")],
                None,
            )
            .unwrap();
        assert_eq!((batch.batch_size, batch.seq_len), (2, 6));
        assert_eq!(batch.lengths, vec![6, 3]);
        assert_eq!(&batch.attention_mask[6..], &[1, 1, 1, 0, 0, 0]);
        assert_eq!(&batch.input_ids[9..], &[tok.pad_id() as i64; 3]);
    }

    #[test]
    fn missing_or_bad_tokenizer_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = BertTokenizer::from_dir(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no tokenizer found"), "{err}");
        std::fs::write(dir.path().join("tokenizer.json"), "{").unwrap();
        let err = BertTokenizer::from_dir(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("tokenizer.json") && err.contains("not a valid"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        std::fs::write(dir.path().join("vocab.txt"), "[UNK]\n[CLS]\n[SEP]\nhello\n").unwrap();
        let err = BertTokenizer::from_dir(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("vocab.txt") && err.contains("[PAD]"), "{err}");
    }
}
