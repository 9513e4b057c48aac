//! The tokenization worker pool: requests are tokenized (and their task features built) on a
//! few OS threads of their own, off the HTTP runtime and off the model's threads.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

pub struct TokenizerPool {
    tx: Mutex<mpsc::Sender<Job>>,
    workers: usize,
}

impl TokenizerPool {
    pub fn new(workers: usize) -> std::io::Result<TokenizerPool> {
        let workers = workers.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = Arc::clone(&rx);
            bertkit_model::denormals::spawn(format!("bertkit-tokenize-{i}"), move || loop {
                let job = {
                    let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
                    guard.recv()
                };
                match job {
                    Ok(job) => job(),
                    Err(_) => break,
                }
            })?;
        }
        Ok(TokenizerPool {
            tx: Mutex::new(tx),
            workers,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Runs `f` on a pool thread. `None` when the pool is gone (shutting down) or `f` panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (otx, orx) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The requester may have gone (client disconnected): nothing to do then.
            if !otx.is_closed() {
                let _ = otx.send(f());
            }
        });
        {
            let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            tx.send(job).ok()?;
        }
        orx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_pool_threads() {
        let pool = TokenizerPool::new(2).unwrap();
        let name = pool
            .run(|| std::thread::current().name().map(String::from))
            .await
            .unwrap()
            .unwrap();
        assert!(name.starts_with("bertkit-tokenize-"), "{name}");
        let mut handles = Vec::new();
        let pool = Arc::new(pool);
        for i in 0..16u64 {
            let pool = Arc::clone(&pool);
            handles.push(tokio::spawn(async move { pool.run(move || i * i).await }));
        }
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), Some((i * i) as u64));
        }
    }
}
