//! The nine GLUE tasks, read from their official TSV files (as `download_glue_data.py` writes
//! them).
//!
//! The files are tab-separated with no quoting: quote characters are literal text. Every file
//! has a header row except CoLA's `train.tsv`/`dev.tsv`, whose columns are named here
//! `source, label, original_label, sentence`. [`read_glue`] returns a [`Table`] whose columns
//! are the file's (so [`GlueTask::text`], [`GlueTask::pair`] and [`GlueTask::label`] are column
//! names), every value a JSON string.
//!
//! MNLI's four `*_parse` columns (most of its bytes) are left out of the table.
//!
//! Test files have no label column: their table's `columns` lack [`GlueTask::label`] (see
//! [`Table::has_column`]) and their rows have no label field.

use std::path::Path;

use anyhow::{anyhow, bail, Result};

use super::{check_header, each_record, Format, ReadOptions, Row, Table, TableBuilder};

/// An evaluation metric, as Hugging Face's `glue` metric reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Fraction of correct predictions.
    Accuracy,
    /// F1 of the positive class (label `1`).
    F1,
    /// Matthews correlation coefficient.
    Matthews,
    /// Pearson correlation.
    Pearson,
    /// Spearman rank correlation.
    Spearman,
}

/// A GLUE task: which columns of its TSV files hold the inputs and the label.
#[derive(Debug, Clone, PartialEq)]
pub struct GlueTask {
    /// Canonical name (`cola`, `sst2`, ...).
    pub name: &'static str,
    /// Column of the first text.
    pub text: &'static str,
    /// Column of the second text, for sentence-pair tasks.
    pub pair: Option<&'static str>,
    /// Column of the label (the score for `stsb`).
    pub label: &'static str,
    /// Whether the label is a real number (`stsb`).
    pub regression: bool,
    /// Label values as written in the files, in the order of Hugging Face's label ids; empty
    /// for `stsb`.
    pub labels: &'static [&'static str],
    /// Metrics reported for the task, as Hugging Face's `glue` metric.
    pub metrics: &'static [Metric],
}

impl GlueTask {
    /// The label id of `label` (its index in [`GlueTask::labels`]).
    pub fn label_id(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|l| *l == label)
    }

    /// The number of model outputs: the number of labels, or 1 for regression.
    pub fn num_labels(&self) -> usize {
        if self.regression {
            1
        } else {
            self.labels.len()
        }
    }
}

/// Columns of CoLA's header-less `train.tsv` and `dev.tsv`.
pub const COLA_COLUMNS: [&str; 4] = ["source", "label", "original_label", "sentence"];

const BINARY: &[&str] = &["0", "1"];
const NLI2: &[&str] = &["entailment", "not_entailment"];

static TASKS: [GlueTask; 9] = [
    GlueTask {
        name: "cola",
        text: "sentence",
        pair: None,
        label: "label",
        regression: false,
        labels: BINARY,
        metrics: &[Metric::Matthews],
    },
    GlueTask {
        name: "sst2",
        text: "sentence",
        pair: None,
        label: "label",
        regression: false,
        labels: BINARY,
        metrics: &[Metric::Accuracy],
    },
    GlueTask {
        name: "mrpc",
        text: "#1 String",
        pair: Some("#2 String"),
        label: "Quality",
        regression: false,
        labels: BINARY,
        metrics: &[Metric::Accuracy, Metric::F1],
    },
    GlueTask {
        name: "qqp",
        text: "question1",
        pair: Some("question2"),
        label: "is_duplicate",
        regression: false,
        labels: BINARY,
        metrics: &[Metric::Accuracy, Metric::F1],
    },
    GlueTask {
        name: "stsb",
        text: "sentence1",
        pair: Some("sentence2"),
        label: "score",
        regression: true,
        labels: &[],
        metrics: &[Metric::Pearson, Metric::Spearman],
    },
    GlueTask {
        name: "mnli",
        text: "sentence1",
        pair: Some("sentence2"),
        label: "gold_label",
        regression: false,
        labels: &["entailment", "neutral", "contradiction"],
        metrics: &[Metric::Accuracy],
    },
    GlueTask {
        name: "qnli",
        text: "question",
        pair: Some("sentence"),
        label: "label",
        regression: false,
        labels: NLI2,
        metrics: &[Metric::Accuracy],
    },
    GlueTask {
        name: "rte",
        text: "sentence1",
        pair: Some("sentence2"),
        label: "label",
        regression: false,
        labels: NLI2,
        metrics: &[Metric::Accuracy],
    },
    GlueTask {
        name: "wnli",
        text: "sentence1",
        pair: Some("sentence2"),
        label: "label",
        regression: false,
        labels: BINARY,
        metrics: &[Metric::Accuracy],
    },
];

/// All nine tasks.
pub fn glue_tasks() -> &'static [GlueTask] {
    &TASKS
}

/// The task called `name` (case-insensitive; `sst-2` and `sts-b` are accepted too).
pub fn glue_task(name: &str) -> Result<&'static GlueTask> {
    let key = name.to_ascii_lowercase();
    let key = match key.as_str() {
        "sst-2" => "sst2",
        "sts-b" => "stsb",
        other => other,
    };
    match TASKS.iter().find(|t| t.name == key) {
        Some(task) => Ok(task),
        None => {
            let names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
            bail!("unknown GLUE task \"{name}\" (tasks: {})", names.join(", "))
        }
    }
}

/// Reads one of `task`'s official TSV files (train, dev or test).
///
/// Rows whose field count differs from the header's, with invalid UTF-8, a label not in
/// [`GlueTask::labels`] or (`stsb`) a score that is not a number are errors (`path:line: ...`),
/// or are skipped and counted when `opts.skip_invalid`. A file lacking the text or pair column
/// is an error. `opts.format` must be unset or [`Format::Tsv`].
pub fn read_glue(path: &Path, task: &GlueTask, opts: &ReadOptions) -> Result<Table> {
    if let Some(format) = opts.format {
        if format != Format::Tsv {
            bail!(
                "{}: GLUE files are read in their official TSV layout, not as {format}; \
                 read other layouts as a generic table",
                path.display()
            );
        }
    }
    let check = |row: &Row| -> Result<(), String> {
        let Some(value) = row.value(task.label) else {
            return Ok(()); // a test file
        };
        let label = value.as_str().unwrap_or_default();
        if task.regression {
            match label.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(()),
                _ => Err(format!("{}: score {label:?} is not a number", row.location)),
            }
        } else if task.label_id(label).is_none() {
            Err(format!(
                "{}: label {label:?} is not one of {} ({})",
                row.location,
                task.labels.join(", "),
                task.name
            ))
        } else {
            Ok(())
        }
    };
    let mut builder: Option<TableBuilder> = None;
    each_record(path, b'\t', false, |line, fields| {
        if let Some(b) = &mut builder {
            return b.push_checked(line, fields, check);
        }
        let first = fields.map_err(|what| anyhow!("{}:{line}: {what}", path.display()))?;
        // CoLA train/dev have no header; its test file has `index sentence`.
        let headerless = task.name == "cola" && !first.iter().any(|f| f == task.text);
        let header: Vec<String> = if headerless {
            COLA_COLUMNS.iter().map(|c| c.to_string()).collect()
        } else {
            check_header(path, line, &first)?;
            first.clone()
        };
        for column in std::iter::once(task.text).chain(task.pair) {
            if !header.iter().any(|c| c == column) {
                bail!(
                    "{}: no column \"{column}\" for GLUE task {} (columns: {}); is this a {} file?",
                    path.display(),
                    task.name,
                    header.join(", "),
                    task.name
                );
            }
        }
        let b = builder.insert(TableBuilder::new(
            path,
            header,
            |c| !c.ends_with("_parse"),
            opts.skip_invalid,
        ));
        if headerless {
            b.push_checked(line, Ok(first), check)?;
        }
        Ok(())
    })?;
    match builder {
        Some(b) => Ok(b.finish()),
        None => bail!("{}: the file is empty", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{opts, skipping, temp_file};
    use super::*;

    #[test]
    fn task_lookup() {
        assert_eq!(glue_task("SST-2").unwrap().name, "sst2");
        assert_eq!(glue_task("sts-b").unwrap().name, "stsb");
        assert_eq!(glue_task("MNLI").unwrap().labels.len(), 3);
        let err = glue_task("squad").unwrap_err().to_string();
        assert!(
            err.contains("squad") && err.contains("cola, sst2, mrpc"),
            "{err}"
        );
        assert_eq!(glue_tasks().len(), 9);
        let stsb = glue_task("stsb").unwrap();
        assert!(stsb.regression && stsb.labels.is_empty());
        assert_eq!(stsb.num_labels(), 1);
        assert_eq!(stsb.metrics, [Metric::Pearson, Metric::Spearman]);
        assert_eq!(glue_task("cola").unwrap().metrics, [Metric::Matthews]);
        assert_eq!(
            glue_task("qqp").unwrap().metrics,
            [Metric::Accuracy, Metric::F1]
        );
        assert_eq!(
            glue_task("rte").unwrap().label_id("not_entailment"),
            Some(1)
        );
        assert_eq!(
            glue_task("mnli").unwrap().label_id("contradiction"),
            Some(2)
        );
    }

    #[test]
    fn cola_without_header() {
        let content =
            "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n\
                       gj04\t0\t*\tThey drank the pub \"dry\".\n";
        let (_d, path) = temp_file("train.tsv", content.as_bytes());
        let task = glue_task("cola").unwrap();
        let t = read_glue(&path, task, &opts()).unwrap();
        assert_eq!(t.columns, COLA_COLUMNS);
        assert_eq!(t.rows.len(), 2);
        assert_eq!(
            t.rows[0].str(task.text).unwrap(),
            "Our friends won't buy this analysis, let alone the next one we propose."
        );
        assert_eq!(t.rows[0].str(task.label).unwrap(), "1");
        assert_eq!(
            t.rows[1].str(task.text).unwrap(),
            "They drank the pub \"dry\"."
        );
        assert_eq!(t.rows[1].str(task.label).unwrap(), "0");
        assert_eq!(t.rows[1].str("original_label").unwrap(), "*");
        assert_eq!(t.rows[0].location, format!("{}:1", path.display()));
    }

    #[test]
    fn cola_test_file_has_header_and_no_label() {
        let content = "index\tsentence\r\n0\tBill whistled past the house.\r\n1\tThe car honked its way down the road.\r\n";
        let (_d, path) = temp_file("test.tsv", content.as_bytes());
        let task = glue_task("cola").unwrap();
        let t = read_glue(&path, task, &opts()).unwrap();
        assert_eq!(t.columns, ["index", "sentence"]);
        assert!(!t.has_column(task.label));
        assert_eq!(
            t.rows[1].str("sentence").unwrap(),
            "The car honked its way down the road."
        );
        assert_eq!(t.rows[1].location, format!("{}:3", path.display()));
        assert!(t.rows[0].value(task.label).is_none());
    }

    #[test]
    fn sst2() {
        let content = "sentence\tlabel\nhide new secretions from the parental units \t0\nthe greatest musicians \t1\n";
        let (_d, path) = temp_file("train.tsv", content.as_bytes());
        let task = glue_task("sst-2").unwrap();
        let t = read_glue(&path, task, &opts()).unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[1].str(task.text).unwrap(), "the greatest musicians ");
        assert_eq!(t.rows[1].str(task.label).unwrap(), "1");
    }

    #[test]
    fn mrpc_with_bom_and_literal_quotes() {
        let content = "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n\
            1\t702876\t702977\tAmrozi accused his brother , whom he called \" the witness \" , of deliberately distorting his evidence .\tReferring to him as only \" the witness \" , Amrozi accused his brother of deliberately distorting his evidence .\n\
            0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain to Safeway in 1998 for $ 2.5 billion .\tYucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for $ 1.8 billion in 1998 .\n";
        let (_d, path) = temp_file("train.tsv", content.as_bytes());
        let task = glue_task("mrpc").unwrap();
        let t = read_glue(&path, task, &opts()).unwrap();
        assert_eq!(t.columns[0], "Quality");
        assert_eq!(t.rows.len(), 2);
        let r = &t.rows[0];
        assert_eq!(
            r.str(task.text).unwrap(),
            "Amrozi accused his brother , whom he called \" the witness \" , of deliberately distorting his evidence ."
        );
        assert_eq!(
            r.str(task.pair.unwrap()).unwrap(),
            "Referring to him as only \" the witness \" , Amrozi accused his brother of deliberately distorting his evidence ."
        );
        assert_eq!(r.str(task.label).unwrap(), "1");
        assert_eq!(t.rows[1].str(task.label).unwrap(), "0");
        assert_eq!(t.rows[1].location, format!("{}:3", path.display()));
    }

    #[test]
    fn mnli_dev_matched_label_is_gold_label() {
        let header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label";
        let row1 = "0\t63735\t63735n\tslate\t( ( The ( new rights ) ) ... )\t( ( Everyone ... ) )\t(ROOT (S ...))\t(ROOT (S ...))\tThe new rights are nice enough\tEveryone really likes the newest benefits \tneutral\tentailment\tneutral\tneutral\tneutral\tneutral";
        let row2 = "1\t91383\t91383c\tgovernment\t( ( This site ) ... )\t( ( The ( Government Executive ) ) ... )\t(ROOT ...)\t(ROOT ...)\tThis site includes a list of all award winners.\tThe Government Executive articles housed on the website are not able to be searched.\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction";
        let content = format!("{header}\n{row1}\n{row2}\n");
        let (_d, path) = temp_file("dev_matched.tsv", content.as_bytes());
        let task = glue_task("mnli").unwrap();
        let t = read_glue(&path, task, &opts()).unwrap();
        assert_eq!(t.columns.len(), 12);
        assert!(!t.has_column("sentence1_parse") && t.has_column("label5"));
        assert!(t.rows[0].value("sentence2_binary_parse").is_none());
        assert_eq!(t.rows.len(), 2);
        assert_eq!(
            t.rows[0].str(task.text).unwrap(),
            "The new rights are nice enough"
        );
        assert_eq!(
            t.rows[0].str(task.pair.unwrap()).unwrap(),
            "Everyone really likes the newest benefits "
        );
        // label1 is "neutral" too, label2 differs: the label is gold_label, the last column
        assert_eq!(t.rows[0].str(task.label).unwrap(), "neutral");
        assert_eq!(t.rows[1].str(task.label).unwrap(), "contradiction");
        assert_eq!(task.label_id(t.rows[1].str(task.label).unwrap()), Some(2));

        // a row with a label outside the list
        let bad = row2.replace("\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction", "\t-\t-\t-\t-\t-\t-");
        let content = format!("{header}\n{row1}\n{bad}\n");
        let (_d2, path) = temp_file("dev_matched.tsv", content.as_bytes());
        let err = read_glue(&path, task, &opts()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:3: label \"-\" is not one of", path.display())),
            "{err}"
        );
        let t = read_glue(&path, task, &skipping()).unwrap();
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.skipped.count, 1);
    }

    #[test]
    fn stsb_scores() {
        let content = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n\
            0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n\
            1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a large flute.\tA man is playing a flute.\t3.800\n";
        let (_d, path) = temp_file("train.tsv", content.as_bytes());
        let task = glue_task("stsb").unwrap();
        let t = read_glue(&path, task, &opts()).unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!(
            t.rows[1].str(task.text).unwrap(),
            "A man is playing a large flute."
        );
        assert_eq!(
            t.rows[1].str(task.pair.unwrap()).unwrap(),
            "A man is playing a flute."
        );
        assert_eq!(t.rows[1].float(task.label).unwrap(), 3.8);
        assert_eq!(t.rows[0].float(task.label).unwrap(), 5.0);

        let bad = content.replace("3.800", "n/a");
        let (_d2, path) = temp_file("train.tsv", bad.as_bytes());
        let err = read_glue(&path, task, &opts()).unwrap_err().to_string();
        assert!(err.contains(":3: score \"n/a\" is not a number"), "{err}");
    }

    #[test]
    fn qqp_wrong_field_count() {
        let content = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n\
            133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration is enough?\t0\n\
            402555\t536040\t536041\tHow do I control my horny emotions?\n\
            360472\t364011\t490273\tWhat causes stool color to change?\tWhat can cause stool to come out as little balls?\t0\n";
        let (_d, path) = temp_file("train.tsv", content.as_bytes());
        let task = glue_task("qqp").unwrap();
        let err = read_glue(&path, task, &opts()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:3: 4 fields, expected 6", path.display())),
            "{err}"
        );
        let t = read_glue(&path, task, &skipping()).unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.skipped.count, 1);
        assert_eq!(
            t.rows[1].str(task.pair.unwrap()).unwrap(),
            "What can cause stool to come out as little balls?"
        );
        assert_eq!(t.rows[1].location, format!("{}:4", path.display()));
    }

    #[test]
    fn wrong_file_for_task() {
        let content = "sentence\tlabel\nfoo\t1\n";
        let (_d, path) = temp_file("train.tsv", content.as_bytes());
        let err = read_glue(&path, glue_task("rte").unwrap(), &opts())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no column \"sentence1\"") && err.contains("columns: sentence, label"),
            "{err}"
        );
        let err = read_glue(
            &path,
            glue_task("sst2").unwrap(),
            &ReadOptions {
                format: Some(Format::Csv),
                skip_invalid: false,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("TSV"), "{err}");
    }

    #[test]
    fn rte_and_qnli_labels() {
        let content = "index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\tnot_entailment\n";
        let (_d, path) = temp_file("dev.tsv", content.as_bytes());
        let task = glue_task("rte").unwrap();
        let t = read_glue(&path, task, &opts()).unwrap();
        assert_eq!(task.label_id(t.rows[0].str(task.label).unwrap()), Some(1));
        let content = "index\tquestion\tsentence\tlabel\n0\tWhat came into force after the new constitution was herald?\tAs of that day, the new constitution heralding the Second Republic came into force.\tentailment\n";
        let (_d, path) = temp_file("dev.tsv", content.as_bytes());
        let task = glue_task("qnli").unwrap();
        let t = read_glue(&path, task, &opts()).unwrap();
        assert_eq!(
            t.rows[0].str(task.text).unwrap(),
            "What came into force after the new constitution was herald?"
        );
        assert_eq!(task.label_id(t.rows[0].str(task.label).unwrap()), Some(0));
    }
}
