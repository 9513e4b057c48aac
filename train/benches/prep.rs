//! Prep throughput against the raw tokenizer, on the same text and the same cores.
//!
//! `cargo bench -p bertkit-train --bench prep -- INPUT... [--tokenizer DIR] [--threads 1,2]`
//! (scripts/bench/prep.sh runs it on the State of the Union texts and adds peak-memory runs.)
//!
//! For each thread count N:
//! * peer: the tokenizers crate alone — `Tokenizer::encode_batch_fast` on every sentence of the
//!   corpus (read, cleaned and split beforehand, untimed), in a rayon pool of N threads;
//! * bertkit: `prep::run` end to end — read, clean, split, tokenize, build NSP pairs, write
//!   parquet shards and the manifest — with N tokenizer threads.
//!
//! Both rates are the corpus's sentence tokens divided by the wall time, so they compare the
//! time to do the same work.

use std::path::PathBuf;
use std::time::Instant;

use bertkit_train::corpus::{self, ReadOptions};
use bertkit_train::prep::{self, PrepOptions};
use bertkit_train::sentences;
use tokenizers::Tokenizer;

fn main() {
    let mut inputs = Vec::new();
    let mut tokenizer_dir = PathBuf::from("assets/all-MiniLM-L6-v2");
    let mut threads = vec![1usize, 2];
    let mut repeats = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--tokenizer" => tokenizer_dir = PathBuf::from(args.next().expect("--tokenizer DIR")),
            "--threads" => {
                threads = args
                    .next()
                    .expect("--threads 1,2")
                    .split(',')
                    .map(|t| t.parse().expect("thread count"))
                    .collect()
            }
            "--repeats" => repeats = args.next().expect("--repeats N").parse().expect("N"),
            _ => inputs.push(a),
        }
    }
    if inputs.is_empty() {
        inputs.push("assets/data/sotu".into());
    }
    // cargo bench runs in the crate folder; accept paths relative to the workspace root.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let fix = |p: &str| {
        let pb = PathBuf::from(p);
        if pb.exists() {
            pb
        } else {
            root.join(p)
        }
    };
    let inputs: Vec<String> = inputs
        .iter()
        .map(|p| fix(p).display().to_string())
        .collect();
    let tokenizer_dir = fix(&tokenizer_dir.display().to_string());

    // The peer's input: every sentence, prepared untimed.
    let files = corpus::discover(&inputs).expect("inputs");
    let mut sents: Vec<String> = Vec::new();
    let mut bytes = 0usize;
    for f in &files {
        for doc in corpus::open(f, &ReadOptions::default(), None).expect("open") {
            let doc = doc.expect("document");
            bytes += doc.text.len();
            let text = doc.clean_text();
            sents.extend(sentences::split(&text).into_iter().map(String::from));
        }
    }
    // The reader alone (one thread: decompress, parse, no cleaning): the pipeline's serial part.
    let t = Instant::now();
    let mut raw = 0usize;
    for f in &files {
        for doc in corpus::open(f, &ReadOptions::default(), None).expect("open") {
            raw += doc.expect("document").text.len();
        }
    }
    let reader_mb_s = raw as f64 / 1e6 / t.elapsed().as_secs_f64();
    // Multistream dumps are cut into parts that readers decompress in parallel (prep runs one
    // reader per 4 tokenizer threads); here, the reading rate over the parts with N threads.
    let read_opts = ReadOptions::default();
    let parts: Vec<corpus::InputPart> = files
        .iter()
        .flat_map(|f| corpus::parts(f, &read_opts, 4 << 20))
        .collect();
    let mut tok = Tokenizer::from_file(tokenizer_dir.join("tokenizer.json")).expect("tokenizer");
    tok.with_truncation(None).expect("truncation");
    tok.with_padding(None);
    println!(
        "input: {} files, {:.1} MB of text, {} sentences; tokenizer {}",
        files.len(),
        bytes as f64 / 1e6,
        sents.len(),
        tokenizer_dir.display()
    );
    println!("reader alone (1 thread): {reader_mb_s:.1} MB/s of document text");
    if parts.len() > files.len() {
        for &n in &threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .expect("pool");
            let t = Instant::now();
            let bytes: usize = pool.install(|| {
                use rayon::prelude::*;
                parts
                    .par_iter()
                    .map(|p| {
                        corpus::open_part(p, &read_opts, None)
                            .expect("open")
                            .map(|d| d.expect("document").text.len())
                            .sum::<usize>()
                    })
                    .sum()
            });
            println!(
                "reader over {} multistream parts, {n} thread(s): {:.1} MB/s of document text",
                parts.len(),
                bytes as f64 / 1e6 / t.elapsed().as_secs_f64()
            );
        }
    }
    println!("| threads | tokenizers encode_batch_fast (tokens/s, median of {repeats}) | bertkit prep end to end (tokens/s, median of {repeats}) | ratio |");
    println!("|---|---|---|---|");
    for &n in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .expect("pool");
        // Alternate peer and bertkit within each round, so machine drift hits both alike.
        let (mut peer, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            let t = Instant::now();
            let encs = pool.install(|| {
                tok.encode_batch_fast(sents.iter().map(|s| s.as_str()).collect::<Vec<_>>(), false)
                    .expect("encode")
            });
            let secs = t.elapsed().as_secs_f64();
            let tokens: usize = encs.iter().map(|e| e.get_ids().len()).sum();
            drop(encs);
            peer.push(tokens as f64 / secs);

            let dir = tempfile::tempdir().expect("tempdir");
            let mut o = PrepOptions::new(inputs.clone(), tokenizer_dir.clone(), dir.path().into());
            o.nsp = true;
            o.threads = n;
            let t = Instant::now();
            let s = prep::run(&o).expect("prep");
            let secs = t.elapsed().as_secs_f64();
            assert!(s.manifest.is_some());
            // The same token count as the peer's: the corpus's sentence tokens (rows add
            // [CLS]/[SEP] and NSP truncation drops some, so the manifest's count differs a little).
            ours.push(tokens as f64 / secs);
        }
        let (best_peer, best_prep) = (median(&mut peer), median(&mut ours));
        println!(
            "| {n} | {:.0} | {:.0} | {:.2} |",
            best_peer,
            best_prep,
            best_prep / best_peer
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
