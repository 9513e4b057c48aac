//! The batch queue and the model worker.
//!
//! Tokenized inputs are queued; one dedicated thread per model forms batches and runs them:
//!
//! - a batch takes the oldest waiting input and then, in arrival order, every waiting input
//!   whose length bucket (the plan's `seq_buckets`) is not longer than the oldest one's, then
//!   longer ones while there is room, as long as `size × the batch's bucket length` (padding
//!   counted) stays within `max_batch_tokens` and the count within `max_batch_size`;
//! - when the worker is free and the waiting inputs cannot fill a batch yet, it waits until the
//!   oldest has waited `max_queue_delay` (Triton's dynamic batching), 0 = run what is there;
//! - inputs whose client went away are dropped before they are run.

use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bertkit_runtime::{Encoded, SeqOutput};
use tokio::sync::oneshot;

use crate::metrics::{BatchStats, Metrics};

/// One input's result and what it went through.
#[derive(Debug)]
pub struct Done {
    pub output: SeqOutput,
    pub queue_seconds: f64,
    pub batch_size: usize,
    /// The batch it ran in: its number in this worker, and how long it took.
    pub batch: u64,
    pub batch_seconds: f64,
}

pub type Reply = Result<Done, String>;

pub struct Entry {
    pub input: Encoded,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Reply>,
}

#[derive(Debug, Clone)]
pub struct BatchSettings {
    pub max_batch_tokens: usize,
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    /// The plan's sequence buckets, ascending.
    pub buckets: Vec<usize>,
}

impl BatchSettings {
    /// The padded length an input of `len` tokens is batched at.
    pub fn bucket(&self, len: usize) -> usize {
        self.buckets
            .iter()
            .copied()
            .find(|&b| b >= len)
            .unwrap_or(len)
    }
}

/// Which waiting inputs the next batch holds (indices into `pending`, in the order taken), and
/// the batch's length bucket (see the module docs).
fn select(pending: &VecDeque<Entry>, s: &BatchSettings) -> (Vec<usize>, usize) {
    let Some(first) = pending.front() else {
        return (Vec::new(), 0);
    };
    let mut bucket = s.bucket(first.input.ids.len());
    let max_size = s.max_batch_size.max(1);
    let mut chosen = Vec::new();
    let mut taken = vec![false; pending.len()];
    // First the inputs of the oldest one's bucket or shorter ones, in arrival order...
    for (i, e) in pending.iter().enumerate() {
        let fits = s.bucket(e.input.ids.len()) <= bucket
            && chosen.len() < max_size
            && (chosen.is_empty() || bucket * (chosen.len() + 1) <= s.max_batch_tokens);
        if fits {
            chosen.push(i);
            taken[i] = true;
        }
    }
    // ...then, while there is room, longer ones (the batch's bucket grows with them), so that
    // no input waits while the batch could hold it.
    for (i, e) in pending.iter().enumerate() {
        let grown = bucket.max(s.bucket(e.input.ids.len()));
        if !taken[i] && chosen.len() < max_size && grown * (chosen.len() + 1) <= s.max_batch_tokens
        {
            bucket = grown;
            chosen.push(i);
        }
    }
    (chosen, bucket)
}

/// The inputs of the next batch, taken out of `pending`.
pub fn take_batch(pending: &mut VecDeque<Entry>, s: &BatchSettings) -> Vec<Entry> {
    let (chosen, _) = select(pending, s);
    let mut slots: Vec<Option<Entry>> = pending.drain(..).map(Some).collect();
    let batch = chosen.iter().filter_map(|&i| slots[i].take()).collect();
    *pending = slots.into_iter().flatten().collect();
    batch
}

/// Whether the next batch is already as big as it can get: at the size limit, or with no room
/// in the token budget for one more input of its bucket.
fn full(pending: &VecDeque<Entry>, s: &BatchSettings) -> bool {
    let (chosen, bucket) = select(pending, s);
    let n = chosen.len();
    n > 0 && (n >= s.max_batch_size.max(1) || bucket * (n + 1) > s.max_batch_tokens)
}

/// The sending side of a model's queue.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<Entry>,
    model: String,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// Starts the worker thread of `model`; `run` computes a batch.
    pub fn start<F>(
        model: &str,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
        run: F,
    ) -> std::io::Result<Queue>
    where
        F: FnMut(&[Encoded]) -> anyhow::Result<Vec<SeqOutput>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let name = model.to_string();
        let m = Arc::clone(&metrics);
        bertkit_model::denormals::spawn(format!("bertkit-model-{model}"), move || {
            worker(&name, rx, settings, m, run)
        })?;
        Ok(Queue {
            tx,
            model: model.to_string(),
            metrics,
        })
    }

    /// Queues `input`; the receiver gets its result (an error when the worker is gone).
    pub fn push(&self, input: Encoded) -> oneshot::Receiver<Reply> {
        let (reply, rx) = oneshot::channel();
        self.metrics.queue_depth(&self.model, 1);
        let entry = Entry {
            input,
            enqueued: Instant::now(),
            reply,
        };
        if let Err(mpsc::SendError(e)) = self.tx.send(entry) {
            self.metrics.queue_depth(&self.model, -1);
            let _ = e.reply.send(Err("the model worker has stopped".into()));
        }
        rx
    }
}

fn worker<F>(
    model: &str,
    rx: mpsc::Receiver<Entry>,
    s: BatchSettings,
    metrics: Arc<Metrics>,
    mut run: F,
) where
    F: FnMut(&[Encoded]) -> anyhow::Result<Vec<SeqOutput>>,
{
    let mut pending: VecDeque<Entry> = VecDeque::new();
    let mut batches = 0u64;
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(e) => pending.push_back(e),
                Err(_) => return,
            }
        }
        while let Ok(e) = rx.try_recv() {
            pending.push_back(e);
        }
        if !s.max_queue_delay.is_zero() {
            while !full(&pending, &s) {
                let Some(first) = pending.front() else { break };
                let deadline = first.enqueued + s.max_queue_delay;
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(e) => pending.push_back(e),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        let before = pending.len();
        pending.retain(|e| !e.reply.is_closed());
        let dropped = before - pending.len();
        if dropped > 0 {
            metrics.cancelled(model, dropped);
            metrics.queue_depth(model, -(dropped as i64));
        }
        let batch = take_batch(&mut pending, &s);
        if batch.is_empty() {
            continue;
        }
        metrics.queue_depth(model, -(batch.len() as i64));
        let started = Instant::now();
        let queued: Vec<f64> = batch
            .iter()
            .map(|e| (started - e.enqueued).as_secs_f64())
            .collect();
        let (inputs, replies): (Vec<Encoded>, Vec<_>) =
            batch.into_iter().map(|e| (e.input, e.reply)).unzip();
        let tokens: usize = inputs.iter().map(|i| i.ids.len()).sum();
        let longest = inputs.iter().map(|i| i.ids.len()).max().unwrap_or(0);
        let result = run(&inputs);
        let stats = BatchStats {
            size: inputs.len(),
            tokens,
            padded_tokens: s.bucket(longest) * inputs.len(),
            seconds: started.elapsed().as_secs_f64(),
        };
        metrics.batch(model, stats, &queued);
        batches += 1;
        match result {
            Ok(outputs) if outputs.len() == replies.len() => {
                for ((reply, output), q) in replies.into_iter().zip(outputs).zip(queued) {
                    let _ = reply.send(Ok(Done {
                        output,
                        queue_seconds: q,
                        batch_size: stats.size,
                        batch: batches,
                        batch_seconds: stats.seconds,
                    }));
                }
            }
            Ok(outputs) => {
                let msg = format!(
                    "the model returned {} outputs for {} inputs",
                    outputs.len(),
                    replies.len()
                );
                for reply in replies {
                    let _ = reply.send(Err(msg.clone()));
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(model, "batch failed: {msg}");
                for reply in replies {
                    let _ = reply.send(Err(msg.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn entry(len: usize) -> (Entry, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        (
            Entry {
                input: Encoded {
                    ids: vec![7; len],
                    type_ids: vec![0; len],
                },
                enqueued: Instant::now(),
                reply,
            },
            rx,
        )
    }

    fn settings(tokens: usize, size: usize) -> BatchSettings {
        BatchSettings {
            max_batch_tokens: tokens,
            max_batch_size: size,
            max_queue_delay: Duration::ZERO,
            buckets: vec![32, 64, 128],
        }
    }

    fn lens(batch: &[Entry]) -> Vec<usize> {
        batch.iter().map(|e| e.input.ids.len()).collect()
    }

    #[test]
    fn batches_respect_the_padded_token_budget_and_the_oldest_bucket() {
        let mut keep = Vec::new();
        let mut pending = VecDeque::new();
        for len in [20, 100, 30, 10, 60, 25, 5] {
            let (e, rx) = entry(len);
            pending.push_back(e);
            keep.push(rx);
        }
        // Oldest is 20 tokens (bucket 32): only bucket-32 inputs join, 3 of them fit 100 tokens.
        let s = settings(100, 8);
        assert_eq!(lens(&take_batch(&mut pending, &s)), [20, 30, 10]);
        // Now the oldest is 100 (bucket 128): alone, it is over the budget but must still run.
        assert_eq!(lens(&take_batch(&mut pending, &s)), [100]);
        assert_eq!(lens(&take_batch(&mut pending, &s)), [60]);
        assert_eq!(lens(&take_batch(&mut pending, &s)), [25, 5]);
        assert!(pending.is_empty());
        // The size limit.
        for len in [3, 3, 3] {
            let (e, rx) = entry(len);
            pending.push_back(e);
            keep.push(rx);
        }
        assert_eq!(take_batch(&mut pending, &settings(1 << 20, 2)).len(), 2);
        assert_eq!(pending.len(), 1);
        pending.clear();
        // With room to spare, longer inputs join after the short ones (the bucket grows to 128).
        for len in [20, 100, 30, 60] {
            let (e, rx) = entry(len);
            pending.push_back(e);
            keep.push(rx);
        }
        assert_eq!(
            lens(&take_batch(&mut pending, &settings(3 * 128, 8))),
            [20, 30, 100]
        );
        assert_eq!(lens(&take_batch(&mut pending, &settings(3 * 128, 8))), [60]);
        // "Full" follows the same rule: a short input and longer ones filling the size limit.
        pending.clear();
        for len in [10, 100, 100, 100] {
            let (e, rx) = entry(len);
            pending.push_back(e);
            keep.push(rx);
        }
        assert!(full(&pending, &settings(1 << 20, 4)));
        assert!(!full(&pending, &settings(1 << 20, 5)));
        // No room in the budget for a fifth input of the batch's bucket (128 × 5 > 600).
        assert!(full(&pending, &settings(600, 8)));
    }

    #[test]
    fn the_worker_batches_waiting_inputs_and_drops_abandoned_ones() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let gate = Arc::new(Mutex::new(()));
        let hold = gate.lock().unwrap();
        let g = Arc::clone(&gate);
        let metrics = Arc::new(Metrics::default());
        let queue = Queue::start("m", settings(1 << 20, 64), Arc::clone(&metrics), move |b| {
            let _wait = g.lock().unwrap();
            record.lock().unwrap().push(b.len());
            Ok(b.iter()
                .map(|e| SeqOutput {
                    rows: 1,
                    width: 1,
                    data: vec![e.ids.len() as f32],
                })
                .collect())
        })
        .unwrap();
        // The first input blocks the worker; the next ones wait and go as one batch.
        let first = queue.push(Encoded {
            ids: vec![1; 4],
            type_ids: vec![0; 4],
        });
        std::thread::sleep(Duration::from_millis(50));
        let rest: Vec<_> = (0..5)
            .map(|i| {
                queue.push(Encoded {
                    ids: vec![1; 5 + i],
                    type_ids: vec![0; 5 + i],
                })
            })
            .collect();
        let abandoned = queue.push(Encoded {
            ids: vec![1; 3],
            type_ids: vec![0; 3],
        });
        drop(abandoned);
        drop(hold);
        let out = first.blocking_recv().unwrap().unwrap();
        assert_eq!(out.output.data, [4.0]);
        for (i, rx) in rest.into_iter().enumerate() {
            let d = rx.blocking_recv().unwrap().unwrap();
            assert_eq!(d.output.data, [(5 + i) as f32]);
            assert_eq!(d.batch_size, 5);
        }
        assert_eq!(*seen.lock().unwrap(), [1, 5]);
        let text = metrics.render();
        assert!(
            text.contains("bertkit_cancelled_total{model=\"m\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bertkit_queue_depth{model=\"m\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn the_queue_delay_gathers_a_fuller_batch() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let mut s = settings(1 << 20, 4);
        s.max_queue_delay = Duration::from_millis(300);
        let queue = Queue::start("m", s, Arc::new(Metrics::default()), move |b| {
            record.lock().unwrap().push(b.len());
            Ok(vec![
                SeqOutput {
                    rows: 1,
                    width: 1,
                    data: vec![0.0]
                };
                b.len()
            ])
        })
        .unwrap();
        let mut rx = Vec::new();
        for _ in 0..4 {
            rx.push(queue.push(Encoded {
                ids: vec![1; 8],
                type_ids: vec![0; 8],
            }));
            std::thread::sleep(Duration::from_millis(20));
        }
        for r in rx {
            r.blocking_recv().unwrap().unwrap();
        }
        // Four inputs 20 ms apart, a 300 ms delay: one full batch (it runs once full).
        assert_eq!(*seen.lock().unwrap(), [4]);
    }
}
