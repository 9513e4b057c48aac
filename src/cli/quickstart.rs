//! `bertkit quickstart`: every stage that exists, on a small corpus generated here (no downloads).
//!
//! Today: write the corpus, train a WordPiece vocabulary on it (`bertkit vocab`), prepare NSP
//! pretraining shards (`bertkit prep`), draw a dynamically masked batch from the pretraining
//! loader, pretrain a tiny BERT on them (`bertkit pretrain`, the loss falls), inspect its
//! checkpoint, embed sentences through `bertkit embed`, export it to the Hugging Face layout and
//! check the re-import gives the same outputs bit for bit, then fine-tune it on a built-in
//! classification task (`bertkit finetune`) and report its validation accuracy.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use bertkit_model::backend::DeviceSpec;
use bertkit_model::checkpoint::{self, LoadOptions};
use bertkit_model::{BertTokenizer, Task};
use bertkit_train::corpus::Format;
use bertkit_train::loader::{Loader, LoaderConfig};
use bertkit_train::prep::OnError;

use super::embed::{EmbedArgs, PoolingArg};
use super::prep::InputArgs;

/// Words the built-in corpus is made of.
const SUBJECTS: [&str; 8] = [
    "the cat",
    "a dog",
    "the old sailor",
    "my sister",
    "the whale",
    "a small bird",
    "the captain",
    "our neighbour",
];
const VERBS: [&str; 8] = [
    "watched",
    "followed",
    "painted",
    "found",
    "chased",
    "remembered",
    "carried",
    "described",
];
const OBJECTS: [&str; 8] = [
    "the red boat",
    "a quiet harbour",
    "the long road",
    "an empty house",
    "the winter sea",
    "a bright lantern",
    "the heavy net",
    "a green field",
];
const ENDINGS: [&str; 4] = ["at dawn", "in the rain", "before supper", "without a word"];

/// The training flags the fine-tuning and the distillation stages share.
const TRAINING: [&str; 11] = [
    "--epochs",
    "4",
    "--batch-size",
    "16",
    "--lr",
    "1e-3",
    "--log-every",
    "20",
    "--report-to",
    "jsonl",
    "--overwrite",
];

/// A deterministic corpus: documents of sentences separated by blank lines.
pub fn builtin_corpus() -> String {
    let mut text = String::new();
    let mut k = 0usize;
    for doc in 0..24 {
        for s in 0..6 {
            k = (k * 37 + doc * 11 + s * 5 + 3) % 2048;
            let sentence = format!(
                "{} {} {} {}.",
                SUBJECTS[k % 8],
                VERBS[(k / 8) % 8],
                OBJECTS[(k / 64) % 8],
                ENDINGS[(k / 512) % 4]
            );
            let mut chars = sentence.chars();
            if let Some(first) = chars.next() {
                text.extend(first.to_uppercase());
                text.push_str(chars.as_str());
            }
            text.push(' ');
        }
        text.push_str("\n\n");
    }
    text
}

/// The built-in classification task: sentences of the corpus's words, labelled "water" when
/// their object is on the water (boat, harbour, sea, net) and "land" otherwise; 400 of the 2048
/// sentences, in a fixed shuffled order.
pub fn builtin_task() -> Vec<(String, &'static str)> {
    let mut rows = Vec::new();
    let mut k = 7usize;
    for _ in 0..400 {
        k = (k * 1105 + 12345) % 2048;
        let object = (k / 64) % 8;
        let text = format!(
            "{} {} {} {}.",
            SUBJECTS[k % 8],
            VERBS[(k / 8) % 8],
            OBJECTS[object],
            ENDINGS[(k / 512) % 4]
        );
        let label = if matches!(object, 0 | 1 | 4 | 6) {
            "water"
        } else {
            "land"
        };
        rows.push((text, label));
    }
    rows
}

fn stage(n: usize, title: &str) {
    println!("\n[{n}] {title}");
}

pub fn run(out: &Path, device: DeviceSpec) -> Result<()> {
    let start = Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;

    stage(1, "corpus (built in)");
    let corpus = builtin_corpus();
    let corpus_path = out.join("corpus.txt");
    std::fs::write(&corpus_path, &corpus).with_context(|| format!("{}", corpus_path.display()))?;
    println!(
        "    {} documents, {} words -> {}",
        corpus
            .split("\n\n")
            .filter(|d| !d.trim().is_empty())
            .count(),
        corpus.split_whitespace().count(),
        corpus_path.display()
    );

    stage(2, "bertkit vocab (WordPiece training)");
    let vocab_dir = out.join("vocab");
    let input = InputArgs {
        input: vec![corpus_path.display().to_string()],
        format: Format::Text,
        text_field: "text".into(),
        text_column: "text".into(),
        max_line_bytes: 1 << 20,
        on_error: OnError::Fail,
    };
    super::vocab::run(&super::vocab::VocabArgs {
        input: input.clone(),
        vocab_size: 300,
        min_frequency: 1,
        lowercase: true,
        out: vocab_dir.clone(),
    })?;
    let tokenizer = BertTokenizer::from_dir(&vocab_dir)?;
    let sample = "The old sailor watched the winter sea.";
    let ids = &tokenizer.encode(&[bertkit_model::TextInput::single(sample)], None)?[0].0;
    println!("    {sample:?} -> {ids:?}");

    stage(3, "bertkit prep (NSP pairs, seq-len 64, parquet shards)");
    let data_dir = out.join("data");
    super::prep::run(&super::prep::PrepArgs {
        input,
        tokenizer: vocab_dir.clone(),
        seq_len: 64,
        nsp: true,
        short_seq_prob: 0.1,
        seed: 12345,
        out: data_dir.clone(),
        shard_size: 2048,
        num_workers: 1,
        worker_index: 0,
        threads: 0,
        quiet: true,
    })?;

    stage(
        4,
        "pretraining loader: a batch with dynamic masking (15%, 80/10/10)",
    );
    let mut loader = Loader::open(
        &data_dir,
        LoaderConfig {
            batch_size: 8,
            ..Default::default()
        },
    )?;
    let batch = loader.next_batch()?;
    let real = batch
        .inputs
        .attention_mask
        .iter()
        .filter(|&&m| m == 1)
        .count();
    let predicted = batch.mlm_labels.iter().filter(|&&l| l != -100).count();
    println!(
        "    batch of {} x {}: {predicted} of {real} tokens to predict; NSP labels {:?}",
        batch.inputs.batch_size,
        batch.inputs.seq_len,
        batch.next_sentence_label.as_deref().unwrap_or(&[])
    );
    let row: Vec<u32> = batch.inputs.input_ids[..batch.inputs.seq_len]
        .iter()
        .zip(&batch.inputs.attention_mask)
        .filter(|(_, &m)| m == 1)
        .map(|(&t, _)| t as u32)
        .collect();
    println!("    row 0: {}", tokenizer.decode(&row, false)?);

    stage(
        5,
        "bertkit pretrain: a tiny BERT (MLM + NSP), LAMB, 120 steps of 16 sequences",
    );
    let run_dir = out.join("pretrain");
    let model_toml = out.join("bert-quickstart.toml");
    std::fs::write(
        &model_toml,
        "# A tiny BERT for the quickstart (Hugging Face BertConfig field names).\n\
         hidden_size = 64\nnum_hidden_layers = 2\nnum_attention_heads = 4\n\
         intermediate_size = 128\nmax_position_embeddings = 64\n",
    )
    .with_context(|| format!("{}", model_toml.display()))?;
    let recipe = out.join("pretrain.toml");
    std::fs::write(
        &recipe,
        format!(
            "# The quickstart's pretraining recipe; see configs/pretrain/ for NVIDIA's.\n\
             model = {model:?}\ndata = {data:?}\nout = {run:?}\nseed = 42\n\n\
             [batch]\nglobal = 16\nmicro = 16\n\n\
             [optimizer]\nname = \"lamb\"\nlr = 1e-2\n\n\
             [schedule]\nname = \"poly\"\nsteps = 120\nwarmup = 0.1\n\n\
             [checkpoint]\nevery = 60\nkeep = 2\n\n\
             [eval]\nevery = 0\n\n[log]\nevery = 20\n",
            model = model_toml.display().to_string(),
            data = data_dir.display().to_string(),
            run = run_dir.display().to_string(),
        ),
    )
    .with_context(|| format!("{}", recipe.display()))?;
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir).with_context(|| format!("{}", run_dir.display()))?;
    }
    super::pretrain::run(&super::pretrain::PretrainArgs {
        config: recipe.clone(),
        set: Vec::new(),
        resume: bertkit_train::pretrain::Resume::Never,
        device: Some(device),
        warmup_kernels: false,
    })?;
    let model_dir = run_dir.join("checkpoints/step-00000120");
    println!(
        "    recipe {}; model -> {}",
        recipe.display(),
        model_dir.display()
    );

    stage(6, "bertkit info");
    super::info::run(&model_dir)?;

    stage(7, "bertkit embed (mean pooling, L2-normalized)");
    let sentences = [
        "The cat chased a small bird.",
        "A dog followed the cat in the rain.",
        "The captain carried a bright lantern at dawn.",
        "Our neighbour painted an empty house.",
    ];
    let input = out.join("sentences.jsonl");
    let mut f = std::fs::File::create(&input)?;
    for s in sentences {
        writeln!(f, "{}", serde_json::json!({ "text": s }))?;
    }
    let embed = |model: &Path, output: &Path| -> Result<Vec<Vec<f32>>> {
        super::embed::run(&EmbedArgs {
            model: model.to_path_buf(),
            input: input.clone(),
            output: output.to_path_buf(),
            pooling: PoolingArg::Mean,
            normalize: true,
            max_length: None,
            batch_size: 2,
            device,
        })?;
        read_embeddings(output)
    };
    let embeddings = embed(&model_dir, &out.join("embeddings.jsonl"))?;
    println!(
        "    {} x {} -> {}",
        embeddings.len(),
        embeddings[0].len(),
        out.join("embeddings.jsonl").display()
    );
    println!(
        "    cosine similarity (untrained model: the numbers show the pipeline, not meaning):"
    );
    for (i, a) in embeddings.iter().enumerate() {
        let row: Vec<String> = embeddings
            .iter()
            .map(|b| format!("{:6.3}", dot(a, b)))
            .collect();
        println!("      {}  {:?}", row.join(" "), sentences[i]);
    }

    stage(8, "bertkit convert --to hf, then re-import");
    let hf_dir = out.join("hf");
    super::convert::run(&super::convert::ConvertArgs {
        to: super::convert::Format::Hf,
        src: model_dir.clone(),
        out: hf_dir.clone(),
    })?;
    let (reloaded, report) = checkpoint::load::<bertkit_model::backend::Cpu>(
        &hf_dir,
        &LoadOptions::default(),
        &Default::default(),
    )?;
    ensure!(
        report.is_exact() && reloaded.task == Task::Pretraining,
        "re-import changed the model"
    );
    let again = embed(&hf_dir, &out.join("embeddings-hf.jsonl"))?;
    ensure!(
        again == embeddings,
        "embeddings differ after the Hugging Face round trip"
    );
    println!(
        "    re-imported {}: embeddings identical bit for bit",
        hf_dir.display()
    );

    stage(
        9,
        "bertkit finetune (built-in task: is the sentence about water or land?)",
    );
    let (train, validation) = (
        out.join("task-train.jsonl"),
        out.join("task-validation.jsonl"),
    );
    let rows = builtin_task();
    let split = rows.len() * 4 / 5;
    for (path, part) in [(&train, &rows[..split]), (&validation, &rows[split..])] {
        let mut f = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
        for (text, label) in part {
            writeln!(f, "{}", serde_json::json!({ "text": text, "label": label }))?;
        }
    }
    let finetuned = out.join("finetuned");
    let path = |p: &std::path::Path| p.display().to_string();
    let mut finetune_args: super::finetune::FinetuneArgs = flags(
        "finetune",
        &[
            "--task",
            "classify",
            "--max-seq-length",
            "32",
            "--model",
            &path(&model_dir),
            "--train",
            &path(&train),
            "--validation",
            &path(&validation),
            "--out",
            &path(&finetuned),
        ]
        .iter()
        .chain(&TRAINING)
        .copied()
        .collect::<Vec<_>>(),
    )?;
    finetune_args.training.device = device;
    super::finetune::finetune(&finetune_args)?;
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(finetuned.join("metrics.json"))
            .with_context(|| format!("{}", finetuned.join("metrics.json").display()))?,
    )?;
    println!(
        "    validation accuracy {:.3} on {} held-out sentences",
        metrics["best"]["accuracy"].as_f64().unwrap_or(f64::NAN),
        rows.len() - split
    );
    // Its curves without TensorBoard (`bertkit plot`), and the model card beside the weights.
    print!("    ");
    super::plot::run(&super::plot::PlotArgs {
        run: finetuned.clone(),
        out: None,
    })?;
    println!("    model card: {}", finetuned.join("README.md").display());

    stage(
        10,
        "bertkit distill (the classifier -> a student of 1 of its 2 layers: logits, hidden \
         states, attention)",
    );
    let student = out.join("distilled");
    let mut distill_args: super::distill::DistillArgs = flags(
        "distill",
        &[
            "--teacher",
            &path(&finetuned),
            "--student-layers",
            "1",
            "--hidden-weight",
            "1",
            "--attention-weight",
            "1",
            "--train",
            &path(&train),
            "--validation",
            &path(&validation),
            "--out",
            &path(&student),
        ]
        .iter()
        .chain(&TRAINING)
        .copied()
        .collect::<Vec<_>>(),
    )?;
    distill_args.training.device = device;
    super::distill::run(&distill_args)?;

    stage(
        11,
        "bertkit launch --nproc-per-node 2 -- bertkit pretrain (data parallel, TCP ring)",
    );
    // The same recipe for 20 steps on two processes of 8 sequences each.
    let exe = std::env::current_exe().context("finding this binary")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port();
    let parallel_dir = out.join("pretrain-2-ranks");
    if parallel_dir.exists() {
        std::fs::remove_dir_all(&parallel_dir)
            .with_context(|| format!("{}", parallel_dir.display()))?;
    }
    let launched = std::process::Command::new(&exe)
        .args(["launch", "--nproc-per-node", "2", "--master-port"])
        .arg(port.to_string())
        .arg("--")
        .arg(&exe)
        .args(["pretrain", "--config"])
        .arg(&recipe)
        .args(["--set", "batch.micro=8", "--set", "schedule.steps=20"])
        .args(["--set", "log.every=5", "--set"])
        .arg(format!("out={:?}", parallel_dir.display().to_string()))
        .output()
        .context("running bertkit launch")?;
    let stdout = String::from_utf8_lossy(&launched.stdout);
    if !launched.status.success() {
        bail!(
            "bertkit launch failed: {}{}",
            stdout,
            String::from_utf8_lossy(&launched.stderr)
        );
    }
    for line in stdout.lines().filter(|l| l.contains("pretrain:")) {
        println!("    {line}");
    }

    stage(
        12,
        "bertkit export (the fine-tuned classifier -> an int8 plan, checked against it)",
    );
    let plan_dir = out.join("finetuned-int8.plan");
    super::export::run(&super::export::ExportArgs {
        model: finetuned.clone(),
        out: plan_dir.clone(),
        format: super::export::ExportFormat::Plan,
        precision: bertkit_runtime::Precision::Int8,
        target: bertkit_runtime::Target::Cpu,
        max_batch: 32,
        seq_buckets: vec![32],
        calibration: Some(validation.clone()),
        pooling: None,
        normalize: None,
        max_length: Some(32),
        overwrite: true,
        allow_parity_failure: false,
        no_tune: false,
        int8_ffn_out_f32: false,
    })?;
    let runtime = bertkit_runtime::Runtime::load(&plan_dir, &Default::default())?;
    let examples = [
        "the old sailor watched the red boat at dawn.",
        "a dog followed the long road in the rain.",
    ];
    let inputs: Vec<_> = examples
        .iter()
        .map(|t| bertkit_model::TextInput::single(*t))
        .collect();
    for (text, o) in examples.iter().zip(runtime.run_texts(&inputs)?) {
        let best = (0..o.width)
            .max_by(|&a, &b| o.data[a].total_cmp(&o.data[b]))
            .unwrap_or(0);
        let label = runtime.meta.labels.get(best).cloned().unwrap_or_default();
        println!("    plan says {text:?} -> {label}");
    }

    stage(
        13,
        "bertkit serve (the plan behind HTTP, a few requests, then a drained stop)",
    );
    super::serve::demo(&plan_dir, &examples)?;

    println!(
        "\nquickstart done in {:.1} s; everything is in {}",
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// A command's flags as its command line would give them (clap's defaults for the rest).
fn flags<A: clap::Args + clap::FromArgMatches>(command: &'static str, args: &[&str]) -> Result<A> {
    let matches = A::augment_args(clap::Command::new(command))
        .try_get_matches_from(std::iter::once(command).chain(args.iter().copied()))?;
    Ok(A::from_arg_matches(&matches)?)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn read_embeddings(path: &Path) -> Result<Vec<Vec<f32>>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok(serde_json::from_value(v["embedding"].clone())?)
        })
        .collect()
}
