//! `bertkit prep` on real text: Wikipedia XML and State of the Union prose.

mod common;

use std::path::{Path, PathBuf};

use bertkit_train::corpus::{self, wikitext, ReadOptions};
use bertkit_train::manifest::Manifest;
use bertkit_train::prep::{self, OnError, PrepOptions};
use bertkit_train::sentences;
use bertkit_train::shards::{file_sha256, read_shard, ShardData};
use tokenizers::Tokenizer;

fn tokenizer() -> Tokenizer {
    let mut t = Tokenizer::from_file(common::minilm().join("tokenizer.json")).unwrap();
    // MiniLM's tokenizer.json pads and truncates to 128; prep switches that off, so do we.
    t.with_truncation(None).unwrap();
    t.with_padding(None);
    t
}

fn options(inputs: &[PathBuf], out: &Path) -> PrepOptions {
    let mut o = PrepOptions::new(
        inputs.iter().map(|p| p.display().to_string()).collect(),
        common::minilm(),
        out.to_path_buf(),
    );
    // Small shards, so that a few files give several (the SOTU addresses are 8-60 kB each).
    o.shard_size = 60_000;
    o
}

fn shards(dir: &Path, m: &Manifest) -> Vec<ShardData> {
    m.shards
        .iter()
        .map(|s| read_shard(&dir.join(&s.file)).unwrap())
        .collect()
}

/// What prep should produce for a file, computed independently: each document's cleaned text,
/// split into sentences, each sentence tokenized on its own.
fn expected_tokens(files: &[PathBuf], tok: &Tokenizer) -> Vec<u32> {
    let mut all = Vec::new();
    for f in files {
        for doc in corpus::open(f, &ReadOptions::default(), None).unwrap() {
            let doc = doc.unwrap();
            let text = if doc.wikitext {
                wikitext::clean(&doc.text)
            } else {
                doc.text
            };
            for s in sentences::split(&text) {
                all.extend_from_slice(tok.encode(s, false).unwrap().get_ids());
            }
        }
    }
    all
}

#[test]
fn wikipedia_dump_to_packed_shards_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let dump = common::wikipedia_dump();
    let summary = prep::run(&options(std::slice::from_ref(&dump), dir.path())).unwrap();
    let m = summary.manifest.expect("single run writes the manifest");
    assert!(m.shards.len() >= 3, "{} shards", m.shards.len());
    assert_eq!(m.counts.documents, 106, "articles in the sample");
    let tok = tokenizer();
    let cls = tok.token_to_id("[CLS]").unwrap();
    let sep = tok.token_to_id("[SEP]").unwrap();

    // The shards, [CLS]/[SEP] removed and concatenated, are exactly the tokenized clean text.
    let mut got = Vec::new();
    let mut rows = 0;
    for s in shards(dir.path(), &m) {
        assert!(s.next_sentence_label.is_none());
        for r in 0..s.len() {
            let ids = s.input_ids(r);
            assert!(ids.len() <= 128);
            assert_eq!((ids[0], ids[ids.len() - 1]), (cls, sep));
            assert!(s.token_type_ids(r).iter().all(|&t| t == 0));
            got.extend_from_slice(&ids[1..ids.len() - 1]);
            rows += 1;
        }
    }
    assert_eq!(rows as u64, m.counts.sequences);
    let want = expected_tokens(&[dump], &tok);
    assert_eq!(got.len(), want.len());
    assert!(got == want, "shard tokens differ from the tokenized text");
    // Decoded text is prose, no markup left.
    let text = tok.decode(&got, true).unwrap();
    for bad in ["{{", "[[", "<ref", "}}", "]]", "{|"] {
        assert!(!text.contains(bad), "decoded shards contain {bad}");
    }
    assert!(text.split_whitespace().count() > 300_000);
    // Packed rows are full except at document ends: average length close to 128.
    let avg = m.counts.tokens as f64 / m.counts.sequences as f64;
    assert!(avg > 100.0, "average row length {avg}");
    // Checksums in the manifest are the files'.
    for s in &m.shards {
        let (bytes, sha) = file_sha256(&dir.path().join(&s.file)).unwrap();
        assert_eq!((bytes, sha.as_str()), (s.bytes, s.sha256.as_str()));
    }
}

#[test]
fn state_of_the_union_nsp_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let files = common::sotu(40);
    let mut o = options(&files, dir.path());
    o.nsp = true;
    let m = prep::run(&o).unwrap().manifest.unwrap();
    assert_eq!(m.counts.documents, 40);
    let tok = tokenizer();
    let (cls, sep) = (
        tok.token_to_id("[CLS]").unwrap(),
        tok.token_to_id("[SEP]").unwrap(),
    );
    let (mut random, mut total, mut short) = (0u64, 0u64, 0u64);
    for s in shards(dir.path(), &m) {
        let labels = s.next_sentence_label.clone().expect("NSP column");
        for (r, &label) in labels.iter().enumerate() {
            let ids = s.input_ids(r);
            let types = s.token_type_ids(r);
            assert!(ids.len() <= 128);
            let seps: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == sep).collect();
            assert_eq!(ids[0], cls);
            assert_eq!(seps.len(), 2, "row {r}: two [SEP]");
            assert_eq!(seps[1], ids.len() - 1);
            assert!(seps[0] >= 2 && seps[1] >= seps[0] + 2, "A and B non-empty");
            assert!(types[..=seps[0]].iter().all(|&t| t == 0));
            assert!(types[seps[0] + 1..].iter().all(|&t| t == 1));
            random += label as u64;
            total += 1;
            short += (ids.len() < 100) as u64;
        }
    }
    assert_eq!(total, m.counts.sequences);
    assert_eq!(random, m.counts.nsp_random);
    let frac = random as f64 / total as f64;
    assert!((0.45..0.6).contains(&frac), "random-next fraction {frac}");
    // short_seq_prob 0.1 chooses a shorter target for ~10% of documents; with whole documents
    // of prose most rows are near full length.
    assert!(
        (short as f64) < 0.4 * total as f64,
        "{short} short rows of {total}"
    );
}

#[test]
fn output_depends_on_seed_and_input_only() {
    let files = common::sotu(12);
    let mut manifests = Vec::new();
    for threads in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(&files, dir.path());
        o.nsp = true;
        o.threads = threads;
        let m = std::fs::read(dir.path().join("manifest.json")).ok();
        assert!(m.is_none());
        prep::run(&o).unwrap();
        manifests.push(std::fs::read_to_string(dir.path().join("manifest.json")).unwrap());
    }
    assert_eq!(
        manifests[0], manifests[1],
        "thread count changed the output"
    );
    // Another seed gives other pairs.
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&files, dir.path());
    o.nsp = true;
    o.seed = 99;
    prep::run(&o).unwrap();
    let other = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    assert_ne!(other, manifests[0]);
}

#[test]
fn workers_read_disjoint_inputs_and_their_union_is_the_single_run() {
    let files = common::sotu(12);
    let single = tempfile::tempdir().unwrap();
    let one = prep::run(&options(&files, single.path())).unwrap();
    let m1 = one.manifest.unwrap();
    assert!(m1.shards.len() >= 3);
    let split = tempfile::tempdir().unwrap();
    let mut read = 0;
    for i in 0..3 {
        let mut o = options(&files, split.path());
        o.num_workers = 3;
        o.worker_index = i;
        let s = prep::run(&o).unwrap();
        // Shard "shard-GGGGG-KKKKK.parquet" (block K of file group G) is worker G % 3's.
        let owned = m1
            .shards
            .iter()
            .filter(|s| s.file[6..11].parse::<usize>().unwrap() % 3 == i)
            .count();
        assert!(owned > 0);
        assert_eq!(s.shards_written, owned);
        // Each worker read its own files only.
        assert!(s.bytes_read > 0 && s.bytes_read < one.bytes_read, "{s:?}");
        read += s.bytes_read;
        // The last worker knows every group (the others' records) and completes the set.
        assert_eq!(s.shards_total.is_some(), i == 2, "{s:?}");
        assert_eq!(
            s.manifest.is_some(),
            i == 2,
            "only the last worker completes the set"
        );
    }
    assert_eq!(
        read, one.bytes_read,
        "the workers' reads are not a partition of the input"
    );
    assert_eq!(
        std::fs::read(single.path().join("manifest.json")).unwrap(),
        std::fs::read(split.path().join("manifest.json")).unwrap()
    );
    for s in &m1.shards {
        assert_eq!(
            std::fs::read(single.path().join(&s.file)).unwrap(),
            std::fs::read(split.path().join(&s.file)).unwrap(),
            "{}",
            s.file
        );
    }
    // A rerun of any worker reads nothing: every group is recorded and complete.
    let mut o = options(&files, split.path());
    o.num_workers = 3;
    let again = prep::run(&o).unwrap();
    assert_eq!((again.shards_written, again.bytes_read), (0, 0));
    assert!(again.manifest.is_some());
}

#[test]
fn rerun_skips_finished_shards_and_refuses_other_settings() {
    let files = common::sotu(8);
    let dir = tempfile::tempdir().unwrap();
    let first = prep::run(&options(&files, dir.path())).unwrap();
    let manifest = std::fs::read(dir.path().join("manifest.json")).unwrap();
    // Lose one shard (as if the run had been killed before it): only it is redone.
    let m = first.manifest.as_ref().unwrap();
    let victim = dir.path().join(&m.shards[1].file);
    std::fs::remove_file(&victim).unwrap();
    // A temporary file of a long-dead run is cleaned up; a fresh one (another worker may be
    // writing it right now) is left alone.
    let dead = dir
        .path()
        .join(".shard-00000-00007.parquet.tmp-otherhost-1");
    let live = dir
        .path()
        .join(".shard-00000-00008.parquet.tmp-otherhost-2");
    for p in [&dead, &live] {
        std::fs::write(p, b"partial").unwrap();
    }
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&dead)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    let again = prep::run(&options(&files, dir.path())).unwrap();
    assert!(!dead.exists() && live.exists());
    assert_eq!(again.shards_written, 1);
    assert_eq!(
        Some(again.shards_skipped),
        first.shards_total.map(|n| n - 1)
    );
    assert_eq!(
        std::fs::read(dir.path().join("manifest.json")).unwrap(),
        manifest
    );
    // Different settings into the same folder: refused, nothing touched.
    let mut o = options(&files, dir.path());
    o.seq_len = 256;
    let err = format!("{:#}", prep::run(&o).unwrap_err());
    assert!(err.contains("settings.seq_len"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("manifest.json")).unwrap(),
        manifest
    );
}

#[test]
fn pyarrow_reads_the_shards() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&common::sotu(6), dir.path());
    o.nsp = true;
    prep::run(&o).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check_shards.py");
    let out = std::process::Command::new(common::python())
        .arg(&script)
        .arg(dir.path())
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check_shards.py failed (needs pyarrow: scripts/test.sh installs it and sets BERTKIT_PYTHON)\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok:"), "{stdout}");
}

#[test]
fn bad_input_is_reported_and_skipped_or_fails() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::create_dir(&input).unwrap();
    let good = "The first document has two sentences. This is the second one.\n\nWord\n";
    std::fs::write(input.join("a_good.txt"), good).unwrap();
    std::fs::write(input.join("b_empty.txt"), "").unwrap();
    let mut bad_utf8 = b"Fine line here.\n".to_vec();
    bad_utf8.extend_from_slice(b"broken \xff\xfe bytes\nAnother fine line.\n");
    std::fs::write(input.join("c_utf8.txt"), bad_utf8).unwrap();
    std::fs::write(
        input.join("d_lines.jsonl"),
        "{\"text\": \"Good JSON line.\"}\nnot json at all\n{\"body\": \"no text field\"}\n",
    )
    .unwrap();
    let mut long = vec![b'x'; 9 << 20];
    long.extend_from_slice(b"\nAfter the long line.\n");
    std::fs::write(input.join("e_long.txt"), long).unwrap();
    let dump = std::fs::read(common::wikipedia_dump()).unwrap();
    std::fs::write(input.join("f_truncated.xml.bz2"), &dump[..dump.len() / 2]).unwrap();
    std::fs::write(input.join("g_corrupt.parquet"), b"PAR1 this is not parquet").unwrap();

    let out = dir.path().join("out");
    let o = options(std::slice::from_ref(&input), &out);
    let s = prep::run(&o).unwrap();
    let m = s.manifest.unwrap();
    // empty file, bad UTF-8 line, non-JSON line, missing field, long line, truncated bz2,
    // corrupt parquet.
    assert_eq!(m.counts.skipped_errors, 7, "{:#?}", m.shards[0].errors);
    assert!(
        m.counts.documents > 30,
        "the truncated dump's complete articles are kept: {}",
        m.counts.documents
    );
    let errors: Vec<&String> = m.shards.iter().flat_map(|s| &s.errors).collect();
    let all = errors
        .iter()
        .map(|e| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(all.contains("b_empty.txt: file is empty"), "{all}");
    assert!(all.contains("c_utf8.txt: line 2: invalid UTF-8"), "{all}");
    assert!(
        all.contains("d_lines.jsonl: line 2: not valid JSON"),
        "{all}"
    );
    // Only the first 5 messages per shard are kept; the rest are counted.
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains(".tmp-")),
        "no temporary files left: {names:?}"
    );

    // --on-error fail stops at the first problem (files are read in name order) and names it.
    let out2 = dir.path().join("out2");
    let mut o = options(&[input], &out2);
    o.on_error = OnError::Fail;
    let err = format!("{:#}", prep::run(&o).unwrap_err());
    assert!(err.contains("b_empty.txt: file is empty"), "{err}");
    assert!(!out2.join("manifest.json").exists());
}

#[test]
fn empty_input_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("blank.txt");
    std::fs::write(&f, "\n\n   \n").unwrap();
    let err = format!(
        "{:#}",
        prep::run(&options(&[f], &dir.path().join("o"))).unwrap_err()
    );
    assert!(err.contains("no documents"), "{err}");
}

#[test]
fn every_input_format_and_globs() {
    use arrow_array::{ArrayRef, Int32Array, RecordBatch, StringArray};
    use std::io::Write;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let docs = [
        "The first document is here. It has two sentences.",
        "Second document, one sentence only.",
        "A third one! With an exclamation.",
    ];
    // parquet with the text in column "body" (next to another column)
    let batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int32Array::from(vec![1, 2, 3])) as ArrayRef),
        (
            "body",
            Arc::new(StringArray::from(docs.to_vec())) as ArrayRef,
        ),
    ])
    .unwrap();
    let f = std::fs::File::create(input.join("a.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    // JSONL with field "content"
    let mut jsonl = String::new();
    for d in docs {
        jsonl += &serde_json::json!({ "content": d, "other": 1 }).to_string();
        jsonl.push('\n');
    }
    std::fs::write(input.join("b.jsonl"), &jsonl).unwrap();
    // bz2-compressed plain text
    let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    enc.write_all(docs.join("\n\n").as_bytes()).unwrap();
    std::fs::write(input.join("c.txt.bz2"), enc.finish().unwrap()).unwrap();
    std::fs::write(input.join("ignored.md"), "not matched by the glob").unwrap();

    let inputs: Vec<PathBuf> = ["*.parquet", "*.jsonl", "*.bz2"]
        .iter()
        .map(|p| input.join(p))
        .collect();
    let mut o = options(&inputs, &dir.path().join("out"));
    o.read.text_field = "content".into();
    o.read.text_column = "body".into();
    o.on_error = OnError::Fail;
    let m = prep::run(&o).unwrap().manifest.unwrap();
    assert_eq!(m.counts.documents, 9);
    assert_eq!(m.settings.inputs.len(), 3);
    let tok = tokenizer();
    let per_format: Vec<u32> = docs
        .iter()
        .flat_map(|d| sentences::split(d))
        .flat_map(|s| tok.encode(s, false).unwrap().get_ids().to_vec())
        .collect();
    let mut got = Vec::new();
    for s in shards(&dir.path().join("out"), &m) {
        for r in 0..s.len() {
            let ids = s.input_ids(r);
            got.extend_from_slice(&ids[1..ids.len() - 1]);
        }
    }
    assert_eq!(
        got,
        [per_format.clone(), per_format.clone(), per_format].concat()
    );

    // A missing column or field is named, with the columns that exist.
    let mut o = options(&inputs, &dir.path().join("out2"));
    o.on_error = OnError::Fail;
    let err = format!("{:#}", prep::run(&o).unwrap_err());
    assert!(
        err.contains("a.parquet: no column 'text' (--text-column); columns: id, body"),
        "{err}"
    );
    let mut o = options(&inputs[1..2], &dir.path().join("out3"));
    o.on_error = OnError::Fail;
    let err = format!("{:#}", prep::run(&o).unwrap_err());
    assert!(
        err.contains("b.jsonl: line 1: no field 'text' (--text-field)"),
        "{err}"
    );
}

#[test]
fn masking_statistics_on_real_wikipedia_text() {
    use bertkit_train::loader::{Loader, LoaderConfig};
    let dir = tempfile::tempdir().unwrap();
    let dump = common::wikipedia_dump();
    let m = prep::run(&options(std::slice::from_ref(&dump), dir.path()))
        .unwrap()
        .manifest
        .unwrap();
    let mut loader = Loader::open(
        dir.path(),
        LoaderConfig {
            batch_size: 64,
            seed: 7,
            ..Default::default()
        },
    )
    .unwrap();
    let info = loader.token_info().clone();
    let mask_id = info.mask_id as i64;
    let (mut candidates, mut predicted, mut as_mask, mut kept, mut random) = (0, 0, 0, 0, 0);
    let mut rows = 0u64;
    while rows < m.counts.sequences {
        let b = loader.next_batch().unwrap();
        for i in 0..b.inputs.input_ids.len() {
            if b.inputs.attention_mask[i] == 0 {
                continue;
            }
            let label = b.mlm_labels[i];
            let input = b.inputs.input_ids[i];
            if label == -100 {
                // A special token is never a prediction target.
                if !info.special[input as usize] {
                    candidates += 1;
                }
                continue;
            }
            assert!(!info.special[label as usize], "special token masked");
            candidates += 1;
            predicted += 1;
            if input == mask_id {
                as_mask += 1;
            } else if input == label {
                kept += 1;
            } else {
                random += 1;
            }
        }
        rows += b.inputs.batch_size as u64;
    }
    let frac = |a: u64, b: u64| a as f64 / b as f64;
    // Packed rows are 128 tokens with 126 candidates: round(128 * 0.15) = 19 predictions,
    // 15.1% of the candidates; shorter rows at document ends round differently.
    let p = frac(predicted, candidates);
    assert!((0.14..0.16).contains(&p), "masked fraction {p}");
    let (m80, k10, r10) = (
        frac(as_mask, predicted),
        frac(kept, predicted),
        frac(random, predicted),
    );
    assert!((m80 - 0.8).abs() < 0.01, "[MASK] {m80}");
    assert!((k10 - 0.1).abs() < 0.01, "kept {k10}");
    // A random replacement can draw the original token (1 in 30522): within the tolerance.
    assert!((r10 - 0.1).abs() < 0.01, "random {r10}");
    println!(
        "{predicted} predictions over {candidates} candidate tokens: {:.2}% masked; \
         {:.1}% [MASK] / {:.1}% random / {:.1}% kept",
        100.0 * p,
        100.0 * m80,
        100.0 * r10,
        100.0 * k10
    );
}

#[test]
fn a_write_error_is_reported_as_the_cause() {
    let files = common::sotu(20);
    let dir = tempfile::tempdir().unwrap();
    // The first shard's name is taken by a folder: its rename fails.
    std::fs::create_dir_all(dir.path().join("shard-00000-00000.parquet/x")).unwrap();
    let mut o = options(&files, dir.path());
    o.threads = 1;
    let err = format!("{:#}", prep::run(&o).unwrap_err());
    assert!(err.contains("shard-00000-00000.parquet"), "{err}");
    assert!(!err.contains("tokenizer stopped"), "{err}");
    assert!(!dir.path().join("manifest.json").exists());
}

/// The sample dump rewritten as a multistream .bz2: a header stream, streams of
/// `pages_per_stream` whole pages, a footer stream (Wikipedia's multistream layout); or, with
/// `cut_anywhere`, streams cut every 200 kB of XML regardless of pages (as pbzip2 does).
fn multistream(pages_per_stream: usize, cut_anywhere: bool) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut xml = String::new();
    bzip2::read::MultiBzDecoder::new(std::fs::File::open(common::wikipedia_dump()).unwrap())
        .read_to_string(&mut xml)
        .unwrap();
    let mut pieces: Vec<&str> = Vec::new();
    if cut_anywhere {
        let mut rest = xml.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(200_000);
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            pieces.push(&rest[..cut]);
            rest = &rest[cut..];
        }
    } else {
        let starts: Vec<usize> = xml.match_indices("  <page>").map(|(i, _)| i).collect();
        let end = xml.rfind("</mediawiki>").unwrap();
        pieces.push(&xml[..starts[0]]);
        for (k, chunk) in starts.chunks(pages_per_stream).enumerate() {
            let next = starts
                .get((k + 1) * pages_per_stream)
                .copied()
                .unwrap_or(end);
            pieces.push(&xml[chunk[0]..next]);
        }
        pieces.push(&xml[end..]);
    }
    let mut out = Vec::new();
    for p in pieces {
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
        enc.write_all(p.as_bytes()).unwrap();
        out.extend(enc.finish().unwrap());
    }
    out
}

fn packed_tokens(dir: &Path) -> (Manifest, Vec<u32>) {
    let m = Manifest::read(dir).unwrap();
    let mut got = Vec::new();
    for s in shards(dir, &m) {
        for r in 0..s.len() {
            let ids = s.input_ids(r);
            got.extend_from_slice(&ids[1..ids.len() - 1]);
        }
    }
    (m, got)
}

#[test]
fn multistream_dumps_are_read_in_parallel_parts() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let mut o = options(&[common::wikipedia_dump()], &whole);
    o.shard_size = 100_000;
    prep::run(&o).unwrap();
    let (m_whole, want) = packed_tokens(&whole);

    for (name, cut_anywhere) in [("multi.xml.bz2", false), ("pbzip2.xml.bz2", true)] {
        let path = dir.path().join(name);
        std::fs::write(&path, multistream(5, cut_anywhere)).unwrap();
        let parts = corpus::parts(&path, &ReadOptions::default(), 100_000);
        if cut_anywhere {
            assert_eq!(parts.len(), 1, "streams that cut pages are not split");
        } else {
            assert!(parts.len() >= 5, "{} parts", parts.len());
            // The parts, read one by one, give the whole file's articles in order.
            let titles = |docs: Vec<bertkit_train::corpus::Document>| -> Vec<String> {
                docs.into_iter().map(|d| d.location).collect()
            };
            let from_parts: Vec<_> = parts
                .iter()
                .flat_map(|p| {
                    corpus::open_part(p, &ReadOptions::default(), None)
                        .unwrap()
                        .map(|d| d.unwrap())
                })
                .collect();
            let from_whole: Vec<_> = corpus::open(&path, &ReadOptions::default(), None)
                .unwrap()
                .map(|d| d.unwrap())
                .collect();
            assert_eq!(titles(from_parts), titles(from_whole));
        }
        let out = dir.path().join(format!("out-{name}"));
        let mut o = options(std::slice::from_ref(&path), &out);
        o.shard_size = 100_000;
        o.on_error = OnError::Fail;
        prep::run(&o).unwrap();
        let (m, got) = packed_tokens(&out);
        assert_eq!(m.counts.documents, m_whole.counts.documents);
        assert!(
            got == want,
            "{name}: tokens differ from the single-stream dump's"
        );
        let groups: std::collections::BTreeSet<&str> =
            m.shards.iter().map(|s| &s.file[6..11]).collect();
        assert_eq!(groups.len() > 1, !cut_anywhere, "{name}: {groups:?}");
        if cut_anywhere {
            continue;
        }
        // Two workers (machines) read disjoint byte ranges of the one dump and write the same
        // shards between them.
        let split = dir.path().join(format!("workers-{name}"));
        let mut read = Vec::new();
        for i in 0..2 {
            let mut o = options(std::slice::from_ref(&path), &split);
            o.shard_size = 100_000;
            (o.num_workers, o.worker_index) = (2, i);
            read.push(prep::run(&o).unwrap().bytes_read);
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            read.iter().all(|&r| r > 0 && r < size),
            "{read:?} of {size}"
        );
        assert_eq!(read.iter().sum::<u64>(), size, "{read:?} of {size}");
        assert_eq!(
            std::fs::read(out.join("manifest.json")).unwrap(),
            std::fs::read(split.join("manifest.json")).unwrap()
        );
    }
}
