//! `bertkit info`: what a model folder holds.

use std::path::Path;

use anyhow::Result;
use bertkit_model::backend::Cpu;
use bertkit_model::checkpoint::{self, LoadOptions};
use bertkit_model::{BertTokenizer, Task};

pub fn run(dir: &Path) -> Result<()> {
    let dir = checkpoint::model_dir(dir);
    let (model, _) = checkpoint::load::<Cpu>(&dir, &LoadOptions::default(), &Default::default())?;
    let c = &model.config;
    println!("model:       {}", dir.display());
    println!(
        "task:        {} ({})",
        model.task,
        model.task.architecture()
    );
    println!(
        "parameters:  {} ({:.1} M)",
        model.num_params(),
        model.num_params() as f64 / 1e6
    );
    println!(
        "shape:       {} layers, hidden {}, {} heads, intermediate {}, {:?}",
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.intermediate_size,
        c.hidden_act
    );
    println!(
        "positions:   {}, vocab {}, token types {}",
        c.max_position_embeddings, c.vocab_size, c.type_vocab_size
    );
    println!("heads:       {}", heads(model.task).join(", "));
    if matches!(
        model.task,
        Task::SequenceClassification | Task::TokenClassification
    ) {
        println!("labels:      {}", c.labels().join(", "));
    }
    match BertTokenizer::from_dir(&dir) {
        Ok(t) => println!(
            "tokenizer:   {} ({} tokens)",
            t.source().display(),
            t.vocab_size()
        ),
        Err(e) => println!("tokenizer:   none ({e})"),
    }
    println!("config:\n{}", c.to_json());
    Ok(())
}

fn heads(task: Task) -> Vec<&'static str> {
    let mut heads = Vec::new();
    if task.has_pooler() {
        heads.push("pooler");
    }
    if task.has_mlm() {
        heads.push("masked LM (cls.predictions)");
    }
    if task.has_nsp() {
        heads.push("next sentence (cls.seq_relationship)");
    }
    match task {
        Task::SequenceClassification => heads.push("sequence classification (classifier)"),
        Task::TokenClassification => heads.push("token classification (classifier)"),
        Task::QuestionAnswering => heads.push("question answering (qa_outputs)"),
        _ => {}
    }
    if heads.is_empty() {
        heads.push("none");
    }
    heads
}
