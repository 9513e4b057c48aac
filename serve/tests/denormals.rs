//! Every thread of a server flushes subnormals (`bertkit_model::denormals`), whatever the
//! floating-point setting of the thread that starts it: the HTTP runtime's workers and blocking
//! threads, the tokenizer pool and a model's worker. (The plan runtime's own pool is checked in
//! export/tests/plan.rs, where plans are built.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bertkit_model::denormals::{self, in_this_thread};
use bertkit_runtime::{Encoded, SeqOutput};
use bertkit_serve::metrics::Metrics;
use bertkit_serve::queue::{BatchSettings, Queue};
use bertkit_serve::tokenize::TokenizerPool;

#[test]
fn server_threads_flush_subnormals_whoever_starts_them() {
    if !denormals::SUPPORTED {
        return;
    }
    let starter = std::thread::spawn(|| {
        denormals::clear_in_this_thread();
        assert!(!in_this_thread());

        let rt = bertkit_serve::http_runtime().unwrap();
        let http = rt.block_on(async {
            let mut flags = Vec::new();
            for _ in 0..8 {
                flags.push(tokio::spawn(async { in_this_thread() }).await.unwrap());
                flags.push(tokio::task::spawn_blocking(in_this_thread).await.unwrap());
            }
            flags
        });

        let pool = TokenizerPool::new(2).unwrap();
        let tokenize = rt.block_on(async {
            let mut flags = Vec::new();
            for _ in 0..8 {
                flags.push(pool.run(in_this_thread).await.unwrap());
            }
            flags
        });

        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let settings = BatchSettings {
            max_batch_tokens: 1 << 10,
            max_batch_size: 4,
            max_queue_delay: Duration::ZERO,
            buckets: vec![8],
        };
        let queue = Queue::start("m", settings, Arc::new(Metrics::default()), move |b| {
            record.lock().unwrap().push(in_this_thread());
            Ok(b.iter()
                .map(|_| SeqOutput {
                    rows: 1,
                    width: 1,
                    data: vec![0.0],
                })
                .collect())
        })
        .unwrap();
        let reply = queue.push(Encoded {
            ids: vec![1; 3],
            type_ids: vec![0; 3],
        });
        reply.blocking_recv().unwrap().unwrap();
        let model = seen.lock().unwrap().clone();
        (http, tokenize, model)
    });
    let (http, tokenize, model) = starter.join().unwrap();
    assert!(http.iter().all(|&f| f), "HTTP runtime threads: {http:?}");
    assert!(
        tokenize.iter().all(|&f| f),
        "tokenizer threads: {tokenize:?}"
    );
    assert_eq!(model, [true], "model worker");
}
