//! Token classification (NER) data: CoNLL files, or tables with a tokens and a tags column.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::Value;

use super::{describe, label_string, read_bytes, read_table, Format, ReadOptions, Row, Skipped};

/// One sentence: words and their tags, one tag per word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NerSentence {
    /// `path:LINE` of the first token (CoNLL), or the row's location (tables).
    pub location: String,
    /// The words.
    pub tokens: Vec<String>,
    /// The tags (`B-PER`, `O`, ...; integer tags of tabular files as decimal strings).
    pub tags: Vec<String>,
}

/// Reads token classification data.
///
/// * CoNLL ([`Format::Conll`]): one token per line, whitespace-separated columns, the first the
///   word and the last the tag (CoNLL-2003: `word POS chunk NER`); a blank line ends a sentence;
///   `-DOCSTART-` lines are skipped. `tokens_column`/`tags_column` are not used.
/// * JSON lines / parquet: `tokens_column` and `tags_column` are lists of strings (tags may be
///   integers, turned into decimal strings). A `.json` file is read as JSON lines.
/// * CSV / TSV: the two columns are space-separated strings.
///
/// A CoNLL line with one column, a tokens/tags length mismatch, an empty sentence or an empty
/// token or tag is an error naming the location, or the sentence is skipped and counted when
/// `opts.skip_invalid`.
pub fn read_ner(
    path: &Path,
    opts: &ReadOptions,
    tokens_column: &str,
    tags_column: &str,
) -> Result<(Vec<NerSentence>, Skipped)> {
    let format = match Format::detect(path, opts.format)? {
        // `.json` from `datasets.Dataset.to_json` holds JSON lines.
        Format::SquadJson if opts.format.is_none() => Format::Jsonl,
        Format::SquadJson => bail!(
            "{}: SQuAD JSON holds question answering data, not token classification data",
            path.display()
        ),
        other => other,
    };
    if format == Format::Conll {
        return read_conll(path, opts.skip_invalid);
    }
    let table = read_table(
        path,
        &ReadOptions {
            format: Some(format),
            skip_invalid: opts.skip_invalid,
        },
    )?;
    // Inputs to predict on have no tags: a table without the tags column gives sentences
    // without tags (the task code refuses them for training and evaluation).
    let tags_column = if table.has_column(tags_column) || !table.has_column(tokens_column) {
        table.require(&[tokens_column, tags_column])?;
        Some(tags_column)
    } else {
        None
    };
    let split = matches!(format, Format::Csv | Format::Tsv);
    let mut skipped = table.skipped;
    let mut sentences = Vec::with_capacity(table.rows.len());
    for row in table.rows {
        let sentence = row_sentence(&row, tokens_column, tags_column, split)
            .and_then(|s| check_sentence(s).map_err(anyhow::Error::msg));
        match sentence {
            Ok(s) => sentences.push(s),
            Err(e) => skipped.skip_or_fail(opts.skip_invalid, e.to_string())?,
        }
    }
    Ok((sentences, skipped))
}

/// The tokens and tags of a table row.
fn row_sentence(
    row: &Row,
    tokens_column: &str,
    tags_column: Option<&str>,
    split: bool,
) -> Result<NerSentence> {
    let tokens = string_list(row, tokens_column, split, false)?;
    let tags = match tags_column {
        Some(c) => string_list(row, c, split, true)?,
        None => Vec::new(),
    };
    Ok(NerSentence {
        location: row.location.clone(),
        tokens,
        tags,
    })
}

/// A column as a list of strings: a JSON list, or (CSV/TSV) a space-separated string.
fn string_list(row: &Row, column: &str, split: bool, ints: bool) -> Result<Vec<String>> {
    let value = row.get(column)?;
    match value {
        Value::String(s) if split => Ok(s.split_whitespace().map(str::to_string).collect()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Number(_) if ints => label_string(item)
                    .ok_or_else(|| anyhow::anyhow!("{}: {column}[{i}] is not a tag", row.location)),
                other => bail!(
                    "{}: {column}[{i}] is not a string (found {})",
                    row.location,
                    describe(other)
                ),
            })
            .collect(),
        other => bail!(
            "{}: column \"{column}\" is not a list{} (found {})",
            row.location,
            if split { " or a string" } else { "" },
            describe(other)
        ),
    }
}

/// Checks a sentence: not empty, as many tags as tokens (or none), no empty token or tag.
fn check_sentence(s: NerSentence) -> Result<NerSentence, String> {
    if s.tokens.is_empty() {
        return Err(format!("{}: empty sentence", s.location));
    }
    if !s.tags.is_empty() && s.tokens.len() != s.tags.len() {
        return Err(format!(
            "{}: {} tokens but {} tags",
            s.location,
            s.tokens.len(),
            s.tags.len()
        ));
    }
    if let Some(i) = s.tokens.iter().position(|t| t.trim().is_empty()) {
        return Err(format!("{}: token {} is empty", s.location, i + 1));
    }
    if let Some(i) = s.tags.iter().position(|t| t.trim().is_empty()) {
        return Err(format!("{}: tag {} is empty", s.location, i + 1));
    }
    Ok(s)
}

/// A sentence being read from a CoNLL file.
struct Pending {
    line: usize,
    tokens: Vec<String>,
    tags: Vec<String>,
    error: Option<String>,
}

fn read_conll(path: &Path, skip_invalid: bool) -> Result<(Vec<NerSentence>, Skipped)> {
    let bytes = read_bytes(path)?;
    let mut sentences = Vec::new();
    let mut skipped = Skipped::default();
    let mut pending: Option<Pending> = None;
    let finish = |pending: &mut Option<Pending>,
                  sentences: &mut Vec<NerSentence>,
                  skipped: &mut Skipped|
     -> Result<()> {
        if let Some(p) = pending.take() {
            if let Some(message) = p.error {
                return skipped.skip_or_fail(skip_invalid, message);
            }
            sentences.push(NerSentence {
                location: format!("{}:{}", path.display(), p.line),
                tokens: p.tokens,
                tags: p.tags,
            });
        }
        Ok(())
    };
    for (i, line) in super::strip_bom(&bytes).split(|&b| b == b'\n').enumerate() {
        let number = i + 1;
        let line = match std::str::from_utf8(line) {
            Ok(line) => line,
            Err(_) => {
                let p = pending.get_or_insert_with(|| Pending {
                    line: number,
                    tokens: Vec::new(),
                    tags: Vec::new(),
                    error: None,
                });
                p.error.get_or_insert_with(|| {
                    format!("{}:{number}: the line is not valid UTF-8", path.display())
                });
                continue;
            }
        };
        let mut columns = line.split_whitespace();
        let Some(word) = columns.next() else {
            finish(&mut pending, &mut sentences, &mut skipped)?;
            continue;
        };
        if word == "-DOCSTART-" {
            finish(&mut pending, &mut sentences, &mut skipped)?;
            continue;
        }
        let p = pending.get_or_insert_with(|| Pending {
            line: number,
            tokens: Vec::new(),
            tags: Vec::new(),
            error: None,
        });
        match columns.last() {
            Some(tag) => {
                p.tokens.push(word.to_string());
                p.tags.push(tag.to_string());
            }
            None => {
                p.error.get_or_insert_with(|| {
                    format!(
                        "{}:{number}: expected a word and a tag separated by whitespace, found {:?}",
                        path.display(),
                        word
                    )
                });
            }
        }
    }
    finish(&mut pending, &mut sentences, &mut skipped)?;
    Ok((sentences, skipped))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{opts, skipping, temp_file, write_parquet};
    use super::*;
    use std::sync::Arc;

    // The first lines of allennlp's CoNLL-2003 fixture (tab-separated).
    const CONLL: &str = "-DOCSTART- -X- -X- O\n\nU.N.\tNNP\tI-NP\tI-ORG\nofficial\tNN\tI-NP\tO\nEkeus\tNNP\tI-NP\tI-PER\nheads\tVBZ\tI-VP\tO\nfor\tIN\tI-PP\tO\nBaghdad\tNNP\tI-NP\tI-LOC\n.\t.\tO\tO\n\n-DOCSTART- -X- -X- O\n\nAI2\tNNP\tI-NP\tI-ORG\nengineer\tNN\tI-NP\tO\nJoel\tNNP\tI-NP\tI-PER\nlives\tVBZ\tI-VP\tO\nin\tIN\tI-PP\tO\nSeattle\tNNP\tI-NP\tI-LOC\n.\t.\tO\tO\n";

    #[test]
    fn conll2003_fixture() {
        let (_d, path) = temp_file("conll2003.txt", CONLL.as_bytes());
        let (s, skipped) = read_ner(&path, &opts(), "tokens", "ner_tags").unwrap();
        assert_eq!(skipped.count, 0);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].tokens,
            ["U.N.", "official", "Ekeus", "heads", "for", "Baghdad", "."]
        );
        assert_eq!(s[0].tags, ["I-ORG", "O", "I-PER", "O", "O", "I-LOC", "O"]);
        assert_eq!(s[0].location, format!("{}:3", path.display()));
        assert_eq!(s[1].tokens[2], "Joel");
        assert_eq!(s[1].tags[5], "I-LOC");
        assert_eq!(s[1].location, format!("{}:13", path.display()));
    }

    #[test]
    fn conll_space_separated_crlf_no_final_blank() {
        let content = "EU B-ORG\r\nrejects O\r\n\r\n\r\nPeter B-PER\r\nBlackburn I-PER";
        let (_d, path) = temp_file("x.conll", content.as_bytes());
        let (s, _) = read_ner(&path, &opts(), "tokens", "tags").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].tokens, ["EU", "rejects"]);
        assert_eq!(s[0].tags, ["B-ORG", "O"]);
        assert_eq!(s[1].tags, ["B-PER", "I-PER"]);
        assert_eq!(s[1].location, format!("{}:5", path.display()));
    }

    #[test]
    fn conll_one_column_line() {
        let content = "EU B-ORG\nrejects\nGerman B-MISC\n\nPeter B-PER\n";
        let (_d, path) = temp_file("x.conll", content.as_bytes());
        let err = read_ner(&path, &opts(), "tokens", "tags")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&format!("{}:2: ", path.display())), "{err}");
        let (s, skipped) = read_ner(&path, &skipping(), "tokens", "tags").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].tokens, ["Peter"]);
        assert_eq!(skipped.count, 1);
        assert!(skipped.first[0].contains(":2: "), "{:?}", skipped);
    }

    #[test]
    fn jsonl_tokens_and_int_tags() {
        let content = r#"{"id": "0", "tokens": ["EU", "rejects", "German"], "ner_tags": [3, 0, 7]}
{"id": "1", "tokens": ["Peter", "Blackburn"], "ner_tags": ["B-PER", "I-PER"]}
{"id": "2", "tokens": ["a", "b"], "ner_tags": ["O"]}
{"id": "3", "tokens": [], "ner_tags": []}
{"id": "4", "tokens": ["a", " "], "ner_tags": ["O", "O"]}
"#;
        let (_d, path) = temp_file("train.jsonl", content.as_bytes());
        let err = read_ner(&path, &opts(), "tokens", "ner_tags")
            .unwrap_err()
            .to_string();
        assert_eq!(err, format!("{}:3: 2 tokens but 1 tags", path.display()));
        let (s, skipped) = read_ner(&path, &skipping(), "tokens", "ner_tags").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].tags, ["3", "0", "7"]);
        assert_eq!(s[1].tokens, ["Peter", "Blackburn"]);
        assert_eq!(s[1].location, format!("{}:2", path.display()));
        assert_eq!(skipped.count, 3);
        assert!(
            skipped.first[1].ends_with(":4: empty sentence"),
            "{:?}",
            skipped
        );
        assert!(
            skipped.first[2].ends_with(":5: token 2 is empty"),
            "{:?}",
            skipped
        );

        let err = read_ner(&path, &opts(), "words", "ner_tags")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing column \"words\""), "{err}");
    }

    #[test]
    fn csv_space_separated_columns() {
        let content =
            "tokens,tags\n\"EU rejects German\",\"B-ORG O B-MISC\"\nPeter,\"B-PER I-PER\"\n";
        let (_d, path) = temp_file("train.csv", content.as_bytes());
        let err = read_ner(&path, &opts(), "tokens", "tags")
            .unwrap_err()
            .to_string();
        assert_eq!(err, format!("{}:3: 1 tokens but 2 tags", path.display()));
        let (s, skipped) = read_ner(&path, &skipping(), "tokens", "tags").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].tokens, ["EU", "rejects", "German"]);
        assert_eq!(s[0].tags, ["B-ORG", "O", "B-MISC"]);
        assert_eq!(skipped.count, 1);
    }

    #[test]
    fn parquet_lists() {
        use arrow_array::builder::{Int64Builder, ListBuilder, StringBuilder};
        use arrow_array::{ArrayRef, RecordBatch};
        let mut tokens = ListBuilder::new(StringBuilder::new());
        tokens.append_value([Some("EU"), Some("rejects")]);
        let mut tags = ListBuilder::new(Int64Builder::new());
        tags.append_value([Some(3), Some(0)]);
        let tokens: ArrayRef = Arc::new(tokens.finish());
        let tags: ArrayRef = Arc::new(tags.finish());
        let batch =
            RecordBatch::try_from_iter(vec![("tokens", tokens), ("ner_tags", tags)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.parquet");
        write_parquet(&path, batch);
        let (s, _) = read_ner(&path, &opts(), "tokens", "ner_tags").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].tokens, ["EU", "rejects"]);
        assert_eq!(s[0].tags, ["3", "0"]);
        assert_eq!(s[0].location, format!("{}: row 1", path.display()));
    }

    #[test]
    fn json_list_of_non_strings_is_an_error() {
        let content = r#"{"tokens": ["a", 5], "tags": ["O", "O"]}"#;
        let (_d, path) = temp_file("x.jsonl", content.as_bytes());
        let err = read_ner(&path, &opts(), "tokens", "tags")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":1: tokens[1] is not a string (found 5)"),
            "{err}"
        );
    }
}
