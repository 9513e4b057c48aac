//! Forward-pass benchmark of all-MiniLM-L6-v2 (last_hidden_state), batch x seq shapes, median of
//! repeats after warm-up, one JSON line per (backend, shape): the same protocol as
//! scripts/bench/peers.py runs for PyTorch and ONNX Runtime.
//!
//!   cargo bench -p bertkit-model --bench forward [--features ndarray|openblas|cuda] -- [--shapes 8x128,1x32] [--repeats 11]
//!
//! Thread count: RAYON_NUM_THREADS (flex, ndarray) and OPENBLAS_NUM_THREADS.

use std::path::Path;

mod common;

use bertkit_model::checkpoint::{self, LoadOptions};
use bertkit_model::{Batch, BertConfig, Task};
use burn::tensor::backend::Backend;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let shapes: Vec<(usize, usize)> = arg("--shapes", "8x128,1x32")
        .split(',')
        .map(|s| {
            let (b, t) = s.split_once('x').expect("shape like 8x128");
            (b.parse().expect("batch"), t.parse().expect("seq"))
        })
        .collect();
    let repeats: usize = arg("--repeats", "11").parse().expect("repeats");
    let model_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/all-MiniLM-L6-v2");

    run::<bertkit_model::backend::Cpu>(
        "burn-flex",
        &Default::default(),
        &model_dir,
        &shapes,
        repeats,
    );
    #[cfg(feature = "ndarray")]
    run::<burn::backend::NdArray>(
        if cfg!(feature = "openblas") {
            "burn-ndarray+openblas"
        } else {
            "burn-ndarray"
        },
        &Default::default(),
        &model_dir,
        &shapes,
        repeats,
    );
    #[cfg(feature = "cuda")]
    run::<bertkit_model::backend::Cuda>(
        "burn-cuda",
        &bertkit_model::backend::cuda_device(0),
        &model_dir,
        &shapes,
        repeats,
    );
}

fn run<B: Backend>(
    name: &str,
    device: &B::Device,
    model_dir: &Path,
    shapes: &[(usize, usize)],
    repeats: usize,
) {
    let model = if model_dir.join("model.safetensors").exists() {
        checkpoint::load::<B>(model_dir, &LoadOptions::default(), device)
            .expect("MiniLM")
            .0
    } else {
        eprintln!(
            "{} missing (scripts/fetch-assets.sh): timing random weights of the same shape",
            model_dir.display()
        );
        let config = BertConfig::from_json(
            r#"{"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}"#,
        )
        .expect("config");
        checkpoint::init::<B>(&config, Task::Base, 0, device).expect("init")
    };
    for &(batch, seq) in shapes {
        // Random ids in [1000, 30000), all tokens real, as peers.py does.
        let mut state = 12345u64;
        let ids: Vec<(Vec<u32>, Vec<u32>)> = (0..batch)
            .map(|_| {
                let row = (0..seq)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        1000 + ((state >> 33) % 29000) as u32
                    })
                    .collect();
                (row, vec![0; seq])
            })
            .collect();
        let input = Batch::pad(&ids, 0).to_input::<B>(device);
        let forward = || {
            let out = model.bert.encode(&input);
            // Reading the result back waits for asynchronous backends.
            let _ = out.into_data();
        };
        let median = common::median_ms(2, repeats, forward);
        let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
        println!(
            "{}",
            serde_json::json!({"runtime": name, "shape": format!("{batch}x{seq}"), "median_ms": (median * 1000.0).round() / 1000.0, "threads": threads})
        );
    }
}
