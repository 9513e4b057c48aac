//! Extractive question answering data: SQuAD v1.1 / v2.0 JSON, or tables in the Hugging Face
//! `datasets` squad schema.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};

use super::{
    describe, jsonl_from_bytes, label_string, read_bytes, read_table, snippet, strip_bom, Format,
    ReadOptions, Row, Skipped, Table,
};

/// A gold answer span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The answer text, as in the context.
    pub text: String,
    /// Offset of the answer in the context in characters (Unicode scalar values), as SQuAD's
    /// `answer_start` (a Python `str` index); not a byte offset.
    pub start: usize,
}

/// One question with its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaExample {
    /// `path: data[i].paragraphs[j].qas[k] (id X)` (SQuAD JSON) or the row's location.
    pub location: String,
    /// The question id (predictions are keyed by it).
    pub id: String,
    /// The article title (empty if absent).
    pub title: String,
    /// The question.
    pub question: String,
    /// The paragraph the answer is taken from.
    pub context: String,
    /// Gold answers (several in dev sets); empty when the question has no answer.
    pub answers: Vec<Answer>,
    /// Whether the question has no answer in the context (SQuAD v2.0).
    pub is_impossible: bool,
}

/// Reads question answering data.
///
/// * SQuAD JSON ([`Format::SquadJson`], `.json`): v1.1 or v2.0
///   (`{"version", "data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}`). A `.json`
///   file holding JSON lines (as `datasets.Dataset.to_json` writes) is read as JSON lines.
/// * JSON lines / parquet / CSV / TSV in the Hugging Face `datasets` squad schema: columns `id`,
///   `title` (optional), `question`, `context`, `answers` = `{"text": [...], "answer_start":
///   [...]}` (a JSON string in CSV/TSV; a list of `{"text", "answer_start"}` objects is accepted
///   too). An empty answer list means the question is impossible.
///
/// Every answer must be the context's characters at `[start, start + chars(text))`. A missing
/// id, question or context, an answer that is not in its context, or a repeated id is an error
/// naming the location, or the question is skipped and counted when `opts.skip_invalid`.
///
/// Returns the examples, what was skipped, and whether the data is SQuAD v2.0-style (version
/// `v2.0`, or any question without an answer).
pub fn read_qa(path: &Path, opts: &ReadOptions) -> Result<(Vec<QaExample>, Skipped, bool)> {
    let format = Format::detect(path, opts.format)?;
    let (examples, skipped, version2) = match format {
        Format::SquadJson => read_squad_json(path, opts.skip_invalid)?,
        Format::Conll => bail!(
            "{}: CoNLL files hold token classification data, not question answering data",
            path.display()
        ),
        _ => {
            let table = read_table(
                path,
                &ReadOptions {
                    format: Some(format),
                    skip_invalid: opts.skip_invalid,
                },
            )?;
            read_qa_table(table, opts.skip_invalid, format)?
        }
    };
    let any_impossible = examples.iter().any(|e| e.is_impossible);
    Ok((examples, skipped, version2 || any_impossible))
}

type QaRead = (Vec<QaExample>, Skipped, bool);

/// Validates and de-duplicates examples as they come.
struct Collector {
    examples: Vec<QaExample>,
    skipped: Skipped,
    ids: HashSet<String>,
    skip_invalid: bool,
}

impl Collector {
    fn new(skip_invalid: bool, skipped: Skipped) -> Self {
        Collector {
            examples: Vec::new(),
            skipped,
            ids: HashSet::new(),
            skip_invalid,
        }
    }

    fn push(&mut self, example: Result<QaExample, String>) -> Result<()> {
        let example = example.and_then(|e| {
            check_answers(&e)?;
            if self.ids.contains(&e.id) {
                return Err(format!("{}: the id {:?} is used twice", e.location, e.id));
            }
            Ok(e)
        });
        match example {
            Ok(e) => {
                self.ids.insert(e.id.clone());
                self.examples.push(e);
                Ok(())
            }
            Err(message) => self.skipped.skip_or_fail(self.skip_invalid, message),
        }
    }
}

/// Checks that every answer is found at its offset, and that impossible questions have none.
fn check_answers(e: &QaExample) -> Result<(), String> {
    if e.is_impossible && !e.answers.is_empty() {
        return Err(format!(
            "{}: is_impossible is true but the question has {} answers",
            e.location,
            e.answers.len()
        ));
    }
    if e.answers.is_empty() {
        return Ok(());
    }
    // Byte offset of every character, plus the end.
    let offsets: Vec<usize> = e
        .context
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(e.context.len()))
        .collect();
    let chars = offsets.len() - 1;
    for a in &e.answers {
        if a.start > chars {
            return Err(format!(
                "{}: answer {:?} starts at {}, beyond the context ({chars} characters)",
                e.location, a.text, a.start
            ));
        }
        let end = (a.start + a.text.chars().count()).min(chars);
        let found = &e.context[offsets[a.start]..offsets[end]];
        if found != a.text {
            return Err(format!(
                "{}: answer {:?} at {} is not in its context (context has {:?} there)",
                e.location,
                a.text,
                a.start,
                snippet(found, 80)
            ));
        }
    }
    Ok(())
}

fn read_squad_json(path: &Path, skip_invalid: bool) -> Result<QaRead> {
    let bytes = read_bytes(path)?;
    let root: Value = match serde_json::from_slice(strip_bom(&bytes)) {
        Ok(v) => v,
        Err(e) => {
            // JSON lines in a `.json` file: the first line is an object on its own.
            let first = strip_bom(&bytes)
                .split(|&b| b == b'\n')
                .map(<[u8]>::trim_ascii)
                .find(|l| !l.is_empty())
                .unwrap_or_default();
            if e.line() > 1 && matches!(serde_json::from_slice(first), Ok(Value::Object(_))) {
                let table = jsonl_from_bytes(path, &bytes, skip_invalid)?;
                return read_qa_table(table, skip_invalid, Format::Jsonl);
            }
            bail!(
                "{}:{}:{}: invalid JSON: {e}",
                path.display(),
                e.line(),
                e.column()
            );
        }
    };
    let p = path.display();
    let Value::Object(root) = root else {
        bail!(
            "{p}: expected a SQuAD JSON object with \"data\", found {}",
            describe(&root)
        );
    };
    if root.contains_key("question") && root.contains_key("context") {
        // A single JSON line in a `.json` file.
        let table = jsonl_from_bytes(path, &bytes, skip_invalid)?;
        return read_qa_table(table, skip_invalid, Format::Jsonl);
    }
    let version2 = root.get("version").and_then(Value::as_str) == Some("v2.0");
    let Some(Value::Array(data)) = root.get("data") else {
        bail!("{p}: expected a \"data\" list (SQuAD JSON)");
    };
    let mut out = Collector::new(skip_invalid, Skipped::default());
    for (i, article) in data.iter().enumerate() {
        let here = format!("{p}: data[{i}]");
        let Some(article) = article.as_object() else {
            bail!("{here}: expected an object, found {}", describe(article));
        };
        let title = match article.get("title") {
            None | Some(Value::Null) => String::new(),
            Some(v) => label_string(v)
                .ok_or_else(|| anyhow!("{here}.title: expected a string, found {}", describe(v)))?,
        };
        let Some(Value::Array(paragraphs)) = article.get("paragraphs") else {
            bail!("{here}: expected a \"paragraphs\" list");
        };
        for (j, paragraph) in paragraphs.iter().enumerate() {
            let here = format!("{here}.paragraphs[{j}]");
            let Some(paragraph) = paragraph.as_object() else {
                bail!("{here}: expected an object, found {}", describe(paragraph));
            };
            let context = match paragraph.get("context") {
                Some(Value::String(c)) => Ok(c.as_str()),
                Some(other) => Err(format!(
                    "\"context\" is not a string (found {})",
                    describe(other)
                )),
                None => Err("missing \"context\"".to_string()),
            };
            let Some(Value::Array(qas)) = paragraph.get("qas") else {
                bail!("{here}: expected a \"qas\" list");
            };
            for (k, qa) in qas.iter().enumerate() {
                let here = format!("{here}.qas[{k}]");
                let example = squad_qa(&here, qa, &title, context.clone());
                out.push(example)?;
            }
        }
    }
    Ok((out.examples, out.skipped, version2))
}

/// One `qas` entry of SQuAD JSON.
fn squad_qa(
    here: &str,
    qa: &Value,
    title: &str,
    context: Result<&str, String>,
) -> Result<QaExample, String> {
    let Some(qa) = qa.as_object() else {
        return Err(format!(
            "{here}: expected an object, found {}",
            describe(qa)
        ));
    };
    let id = match qa.get("id") {
        Some(v @ (Value::String(_) | Value::Number(_))) => label_string(v).unwrap_or_default(),
        Some(other) => {
            return Err(format!(
                "{here}: \"id\" is not a string (found {})",
                describe(other)
            ))
        }
        None => return Err(format!("{here}: missing \"id\"")),
    };
    let location = format!("{here} (id {id})");
    let context = context.map_err(|what| format!("{location}: {what}"))?;
    let question = match qa.get("question") {
        Some(Value::String(q)) => q.clone(),
        Some(other) => {
            return Err(format!(
                "{location}: \"question\" is not a string (found {})",
                describe(other)
            ))
        }
        None => return Err(format!("{location}: missing \"question\"")),
    };
    let answers = match qa.get("answers") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => parse_answers(v).map_err(|what| format!("{location}: {what}"))?,
    };
    let is_impossible = match qa.get("is_impossible") {
        None | Some(Value::Null) => answers.is_empty(),
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "{location}: \"is_impossible\" is not true or false (found {})",
                describe(other)
            ))
        }
    };
    Ok(QaExample {
        location,
        id,
        title: title.to_string(),
        question,
        context: context.to_string(),
        answers,
        is_impossible,
    })
}

/// An `answer_start` value: a non-negative integer.
fn answer_start(v: &Value) -> Result<usize, String> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            format!(
                "answer_start is not a non-negative integer (found {})",
                describe(v)
            )
        })
}

/// Answers as SQuAD writes them (a list of `{"text", "answer_start"}`) or as `datasets` does
/// (`{"text": [...], "answer_start": [...]}`).
fn parse_answers(v: &Value) -> Result<Vec<Answer>, String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let text = item
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("an answer has no \"text\" string: {item}"))?;
                let start = item
                    .get("answer_start")
                    .ok_or_else(|| format!("an answer has no \"answer_start\": {item}"))?;
                Ok(Answer {
                    text: text.to_string(),
                    start: answer_start(start)?,
                })
            })
            .collect(),
        Value::Object(columns) => answer_columns(columns),
        other => Err(format!(
            "\"answers\" is not a list or an object (found {})",
            describe(other)
        )),
    }
}

fn answer_columns(columns: &Map<String, Value>) -> Result<Vec<Answer>, String> {
    let list = |name: &str| match columns.get(name) {
        Some(Value::Array(items)) => Ok(items.as_slice()),
        Some(Value::Null) | None => Err(format!("\"answers\" has no \"{name}\" list")),
        Some(other) => Err(format!(
            "answers.{name} is not a list (found {})",
            describe(other)
        )),
    };
    let texts = list("text")?;
    let starts = list("answer_start")?;
    if texts.len() != starts.len() {
        return Err(format!(
            "answers has {} texts but {} answer_start values",
            texts.len(),
            starts.len()
        ));
    }
    texts
        .iter()
        .zip(starts)
        .map(|(text, start)| {
            let text = text.as_str().ok_or_else(|| {
                format!("an answer text is not a string (found {})", describe(text))
            })?;
            Ok(Answer {
                text: text.to_string(),
                start: answer_start(start)?,
            })
        })
        .collect()
}

/// Examples from a table in the `datasets` squad schema.
fn read_qa_table(table: Table, skip_invalid: bool, format: Format) -> Result<QaRead> {
    // Inputs to predict on may lack ids and answers: ids are then the row numbers and the
    // questions have no answers (the task code refuses that for training and evaluation).
    table.require(&["question", "context"])?;
    let text_cells = matches!(format, Format::Csv | Format::Tsv);
    let mut out = Collector::new(skip_invalid, table.skipped);
    for (i, row) in table.rows.iter().enumerate() {
        out.push(row_example(row, text_cells, i))?;
    }
    Ok((out.examples, out.skipped, false))
}

fn row_example(row: &Row, text_cells: bool, index: usize) -> Result<QaExample, String> {
    let loc = &row.location;
    let string = |column: &str| {
        row.str(column)
            .map(str::to_string)
            .map_err(|e| e.to_string())
    };
    let id = match row.value("id") {
        None | Some(Value::Null) => Ok((index + 1).to_string()),
        Some(_) => row.label("id").map_err(|e| e.to_string()),
    }
    .and_then(|id| {
        if id.is_empty() {
            Err(format!("{loc}: empty id"))
        } else {
            Ok(id)
        }
    })?;
    let title = match row.value("title") {
        None | Some(Value::Null) => String::new(),
        Some(_) => string("title")?,
    };
    let question = string("question")?;
    let context = string("context")?;
    let answers = match row.value("answers").unwrap_or(&Value::Null) {
        Value::String(cell) if text_cells => {
            let parsed: Value = serde_json::from_str(cell)
                .map_err(|e| format!("{loc}: the answers cell is not JSON: {e}"))?;
            parse_answers(&parsed)
        }
        Value::Null => Ok(Vec::new()),
        v => parse_answers(v),
    }
    .map_err(|what| format!("{loc}: {what}"))?;
    Ok(QaExample {
        location: loc.clone(),
        id,
        title,
        question,
        context,
        is_impossible: answers.is_empty(),
        answers,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{opts, skipping, temp_file, write_parquet};
    use super::*;
    use std::sync::Arc;

    const CONTEXT: &str = "Architecturally, the school has a Catholic character. Atop the Main Building's gold dome is a golden statue of the Virgin Mary. Immediately in front of the Main Building and facing it, is a copper statue of Christ with arms upraised with the legend \"Venite Ad Me Omnes\". Next to the Main Building is the Basilica of the Sacred Heart. Immediately behind the basilica is the Grotto, a Marian place of prayer and reflection. It is a replica of the grotto at Lourdes, France where the Virgin Mary reputedly appeared to Saint Bernadette Soubirous in 1858. At the end of the main drive (and in a direct line that connects through 3 statues and the Gold Dome), is a simple, modern stone statue of Mary.";

    /// SQuAD v1.1 in the layout of allennlp's fixture (a subset of the official train set).
    fn squad_v1(answer_start: u64) -> String {
        serde_json::json!({
            "data": [{
                "title": "University_of_Notre_Dame",
                "paragraphs": [{
                    "context": CONTEXT,
                    "qas": [
                        {
                            "answers": [{"answer_start": answer_start, "text": "Saint Bernadette Soubirous"}],
                            "question": "To whom did the Virgin Mary allegedly appear in 1858 in Lourdes France?",
                            "id": "5733be284776f41900661182"
                        },
                        {
                            "answers": [
                                {"answer_start": 92, "text": "a golden statue of the Virgin Mary"},
                                {"answer_start": 92, "text": "a golden statue of the Virgin Mary"}
                            ],
                            "question": "What sits on top of the Main Building at Notre Dame?",
                            "id": "5733be284776f4190066117e"
                        }
                    ]
                }]
            }],
            "version": "1.1"
        })
        .to_string()
    }

    #[test]
    fn squad_v1_json() {
        let (_d, path) = temp_file("train-v1.1.json", squad_v1(515).as_bytes());
        let (ex, skipped, v2) = read_qa(&path, &opts()).unwrap();
        assert!(!v2);
        assert_eq!(skipped.count, 0);
        assert_eq!(ex.len(), 2);
        let e = &ex[0];
        assert_eq!(e.id, "5733be284776f41900661182");
        assert_eq!(e.title, "University_of_Notre_Dame");
        assert_eq!(e.context, CONTEXT);
        assert!(!e.is_impossible);
        assert_eq!(
            e.answers,
            [Answer {
                text: "Saint Bernadette Soubirous".into(),
                start: 515
            }]
        );
        assert_eq!(
            e.location,
            format!(
                "{}: data[0].paragraphs[0].qas[0] (id 5733be284776f41900661182)",
                path.display()
            )
        );
        assert_eq!(ex[1].answers.len(), 2);
        assert_eq!(ex[1].answers[1].start, 92);
    }

    #[test]
    fn misplaced_answer_is_an_error_or_skipped() {
        let (_d, path) = temp_file("train.json", squad_v1(514).as_bytes());
        let err = read_qa(&path, &opts()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: data[0].paragraphs[0].qas[0] (id 5733be284776f41900661182): answer \
                 \"Saint Bernadette Soubirous\" at 514 is not in its context (context has \
                 \" Saint Bernadette Soubirou\" there)",
                path.display()
            )
        );
        let (ex, skipped, _) = read_qa(&path, &skipping()).unwrap();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].id, "5733be284776f4190066117e");
        assert_eq!(skipped.count, 1);

        let (_d, path) = temp_file("train.json", squad_v1(5000).as_bytes());
        let err = read_qa(&path, &opts()).unwrap_err().to_string();
        assert!(
            err.contains("starts at 5000, beyond the context (695 characters)"),
            "{err}"
        );
    }

    #[test]
    fn squad_v2_impossible_and_char_offsets() {
        // "Café" makes byte and character offsets differ by one after it.
        let json = r#"{"version": "v2.0", "data": [{"title": "Paris", "paragraphs": [
            {"context": "Le Café de Flore is in Paris. It opened in 1887.",
             "qas": [
                {"question": "When did it open?", "id": "q1",
                 "answers": [{"text": "1887", "answer_start": 43}], "is_impossible": false},
                {"question": "When did it close?", "id": "q2", "answers": [],
                 "plausible_answers": [{"text": "1887", "answer_start": 43}], "is_impossible": true}
             ]}]}]}"#;
        let (_d, path) = temp_file("dev-v2.0.json", json.as_bytes());
        let (ex, _, v2) = read_qa(&path, &opts()).unwrap();
        assert!(v2);
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].answers[0].start, 43);
        let ctx = &ex[0].context;
        assert_eq!(ctx.find("1887"), Some(44)); // the byte offset
        assert!(!ex[0].is_impossible);
        assert!(ex[1].is_impossible);
        assert!(ex[1].answers.is_empty());
        assert_eq!(ex[1].title, "Paris");

        // The byte offset is wrong.
        let bad = json.replace(
            "\"answer_start\": 43}], \"is_impossible\": false",
            "\"answer_start\": 44}], \"is_impossible\": false",
        );
        let (_d, path) = temp_file("dev-v2.0.json", bad.as_bytes());
        let err = read_qa(&path, &opts()).unwrap_err().to_string();
        assert!(
            err.contains(
                "(id q1): answer \"1887\" at 44 is not in its context (context has \"887.\" there)"
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_fields_and_duplicate_ids() {
        let json = r#"{"data": [{"title": "T", "paragraphs": [
            {"context": "abc", "qas": [
                {"id": "a", "answers": [{"text": "b", "answer_start": 1}]},
                {"id": "b", "question": "q", "answers": [{"text": "b", "answer_start": 1}]},
                {"id": "b", "question": "q2", "answers": [{"text": "c", "answer_start": 2}]}
            ]},
            {"qas": [{"id": "c", "question": "q", "answers": []}]}
        ]}]}"#;
        let (_d, path) = temp_file("x.json", json.as_bytes());
        let err = read_qa(&path, &opts()).unwrap_err().to_string();
        assert!(
            err.ends_with("data[0].paragraphs[0].qas[0] (id a): missing \"question\""),
            "{err}"
        );
        let (ex, skipped, v2) = read_qa(&path, &skipping()).unwrap();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].question, "q");
        assert!(!v2);
        assert_eq!(skipped.count, 3);
        assert!(
            skipped.first[1].contains("the id \"b\" is used twice"),
            "{:?}",
            skipped
        );
        assert!(
            skipped.first[2].contains("paragraphs[1].qas[0] (id c): missing \"context\""),
            "{:?}",
            skipped
        );
    }

    const HF_JSONL: &str = r#"{"id": "56be4db0acb8001400a502ec", "title": "Super_Bowl_50", "context": "Super Bowl 50 was an American football game. The Denver Broncos defeated the Carolina Panthers.", "question": "Who won Super Bowl 50?", "answers": {"text": ["Denver Broncos", "The Denver Broncos"], "answer_start": [49, 45]}}
{"id": "x2", "context": "Café au lait.", "question": "What?", "answers": {"text": ["au lait"], "answer_start": [5]}}
{"id": "x3", "context": "Nothing here.", "question": "Who?", "answers": {"text": [], "answer_start": []}}
"#;

    #[test]
    fn hf_schema_jsonl() {
        let (_d, path) = temp_file("train.jsonl", HF_JSONL.as_bytes());
        let (ex, _, v2) = read_qa(&path, &opts()).unwrap();
        assert!(v2);
        assert_eq!(ex.len(), 3);
        assert_eq!(
            ex[0].answers[0],
            Answer {
                text: "Denver Broncos".into(),
                start: 49
            }
        );
        assert_eq!(ex[0].answers[1].start, 45);
        assert_eq!(ex[0].title, "Super_Bowl_50");
        assert_eq!(ex[1].title, "");
        assert_eq!(ex[1].answers[0].start, 5);
        assert!(ex[2].is_impossible);
        assert_eq!(ex[2].location, format!("{}:3", path.display()));
        // the same lines in a `.json` file, as `Dataset.to_json` writes them
        let (_d, path) = temp_file("train.json", HF_JSONL.as_bytes());
        let (ex, _, _) = read_qa(&path, &opts()).unwrap();
        assert_eq!(ex.len(), 3);
        assert_eq!(ex[1].id, "x2");
    }

    #[test]
    fn hf_schema_csv_and_parquet() {
        let csv = "id,title,question,context,answers\n\
                   1,T,Who?,\"Café Flore, Paris\",\"{\"\"text\"\": [\"\"Flore\"\"], \"\"answer_start\"\": [5]}\"\n\
                   2,T,Who?,Nobody,\"{\"\"text\"\": [\"\"x\"\"], \"\"answer_start\"\": [9]}\"\n";
        let (_d, path) = temp_file("dev.csv", csv.as_bytes());
        let err = read_qa(&path, &opts()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}:3: answer \"x\" starts at 9, beyond",
                path.display()
            )),
            "{err}"
        );
        let (ex, skipped, _) = read_qa(&path, &skipping()).unwrap();
        assert_eq!(skipped.count, 1);
        assert_eq!(
            ex[0].answers,
            [Answer {
                text: "Flore".into(),
                start: 5
            }]
        );
        assert_eq!(ex[0].context, "Café Flore, Paris");

        use arrow_array::builder::{Int32Builder, ListBuilder, StringBuilder};
        use arrow_array::{ArrayRef, RecordBatch, StringArray, StructArray};
        use arrow_schema::{Field, Fields};
        let mut texts = ListBuilder::new(StringBuilder::new());
        texts.append_value([Some("au lait")]);
        texts.append_value(Vec::<Option<&str>>::new());
        let mut starts = ListBuilder::new(Int32Builder::new());
        starts.append_value([Some(5)]);
        starts.append_value(Vec::<Option<i32>>::new());
        let texts: ArrayRef = Arc::new(texts.finish());
        let starts: ArrayRef = Arc::new(starts.finish());
        let answers: ArrayRef = Arc::new(StructArray::new(
            Fields::from(vec![
                Field::new("text", texts.data_type().clone(), true),
                Field::new("answer_start", starts.data_type().clone(), true),
            ]),
            vec![texts, starts],
            None,
        ));
        let s = |v: [&str; 2]| -> ArrayRef { Arc::new(StringArray::from(v.to_vec())) };
        let batch = RecordBatch::try_from_iter(vec![
            ("id", s(["a", "b"])),
            ("title", s(["T", "T"])),
            ("context", s(["Café au lait.", "Tea."])),
            ("question", s(["What?", "Why?"])),
            ("answers", answers),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.parquet");
        write_parquet(&path, batch);
        let (ex, _, v2) = read_qa(&path, &opts()).unwrap();
        assert!(v2);
        assert_eq!(
            ex[0].answers,
            [Answer {
                text: "au lait".into(),
                start: 5
            }]
        );
        assert!(!ex[0].is_impossible);
        assert!(ex[1].is_impossible);
        assert_eq!(ex[1].location, format!("{}: row 2", path.display()));
    }

    #[test]
    fn invalid_json_names_line() {
        let (_d, path) = temp_file("x.json", b"{\"data\": [\n  {\"title\": }\n]}");
        let err = read_qa(&path, &opts()).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:2:", path.display())), "{err}");
        assert!(err.contains("invalid JSON"), "{err}");
    }
}
