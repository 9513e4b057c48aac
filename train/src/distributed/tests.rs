//! The rendezvous and the ring with ranks as threads of one test process.

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn env(rank: usize, world_size: usize, port: u16) -> ProcessEnv {
    ProcessEnv {
        rank,
        world_size,
        local_rank: rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        source: "torchrun",
    }
}

fn settings(timeout_s: f64, rendezvous_timeout_s: f64) -> DistributedSettings {
    DistributedSettings {
        timeout_s,
        rendezvous_timeout_s,
        backend: CollectiveBackend::Tcp,
        ..Default::default()
    }
}

/// Runs `f(rank, group)` on `n` ranks (threads); returns each rank's result.
fn on_ranks<T: Send + 'static>(
    n: usize,
    s: DistributedSettings,
    hash: impl Fn(usize) -> String,
    f: impl Fn(usize, Result<ProcessGroup>) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let port = free_port();
    let handles: Vec<_> = (0..n)
        .map(|r| {
            let (f, s, h) = (f.clone(), s.clone(), hash(r));
            thread::spawn(move || f(r, ProcessGroup::join(&env(r, n, port), &s, &h, false)))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect()
}

#[test]
fn ring_all_reduce_broadcast_and_barrier_agree_on_every_rank() {
    let results = on_ranks(
        3,
        settings(20.0, 20.0),
        |_| "same".into(),
        |r, group| {
            let mut g = group.expect("join");
            assert_eq!((g.rank, g.world_size), (r, 3));
            let mut outs = Vec::new();
            // Lengths below, at and above the rank count, and empty.
            for len in [0usize, 1, 2, 3, 10, 1001] {
                let mut v: Vec<f32> = (0..len).map(|i| (i * 10 + r) as f32).collect();
                g.all_reduce_f32(&mut v).expect("all-reduce");
                outs.push(v);
            }
            let mut counts = vec![r as f64 + 0.5, 1e15];
            g.all_reduce_f64(&mut counts).expect("f64 all-reduce");
            g.barrier().expect("barrier");
            // 20 MB: several broadcast chunks.
            let mut big = if r == 0 {
                (0..20_000_000u32).map(|i| (i % 251) as u8).collect()
            } else {
                vec![7u8; 3]
            };
            g.broadcast(&mut big).expect("broadcast");
            let mut empty = if r == 0 { Vec::new() } else { vec![1u8] };
            g.broadcast(&mut empty).expect("empty broadcast");
            (outs, counts, big, empty)
        },
    );
    for (outs, counts, big, empty) in &results {
        for v in outs {
            let want: Vec<f32> = (0..v.len()).map(|i| (i * 30 + 3) as f32).collect();
            assert_eq!(v, &want);
        }
        assert_eq!(counts, &vec![4.5, 3e15]);
        assert_eq!(big.len(), 20_000_000);
        assert!(big.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        assert!(empty.is_empty());
    }
}

#[test]
fn a_rank_that_never_joins_is_named() {
    let port = free_port();
    let started = Instant::now();
    let ranks: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|r| {
            thread::spawn(move || {
                ProcessGroup::join(&env(r, 3, port), &settings(5.0, 1.0), "h", false)
                    .err()
                    .map(|e| format!("{e:#}"))
            })
        })
        .collect();
    let errors: Vec<String> = ranks
        .into_iter()
        .map(|h| h.join().unwrap().expect("the rendezvous must fail"))
        .collect();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        errors[0].contains("rank 2 of 3 did not join within 1 s"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("joined: rank 0"), "{}", errors[0]);
    assert!(
        errors[1].contains("refused by rank 0") && errors[1].contains("rank 2 of 3"),
        "{}",
        errors[1]
    );
}

#[test]
fn another_recipe_is_refused_naming_the_rank() {
    let errors = on_ranks(
        3,
        settings(5.0, 10.0),
        |r| {
            if r == 2 {
                "other".into()
            } else {
                "same".into()
            }
        },
        |_, g| g.err().map(|e| format!("{e:#}")),
    );
    let e0 = errors[0].as_deref().expect("rank 0 refuses");
    assert!(
        e0.contains("rank 2 (") && e0.contains("another recipe"),
        "{e0}"
    );
    assert!(errors[2]
        .as_deref()
        .is_some_and(|e| e.contains("another recipe")));
}

#[test]
fn a_rank_that_exits_is_named_by_the_others() {
    let errors = on_ranks(
        3,
        settings(30.0, 20.0),
        |_| "h".into(),
        |r, g| {
            let mut g = g.expect("join");
            let mut v = vec![1.0f32; 100];
            g.all_reduce_f32(&mut v).expect("first all-reduce");
            if r == 1 {
                drop(g); // closes its connections, as a killed process would
                return None;
            }
            let started = Instant::now();
            let e = g.all_reduce_f32(&mut v).expect_err("rank 1 is gone");
            assert!(started.elapsed() < Duration::from_secs(10));
            // Further collectives fail at once.
            assert!(g.barrier().is_err());
            Some(format!("{e:#}"))
        },
    );
    for r in [0, 2] {
        let e = errors[r].as_deref().unwrap();
        assert!(
            e.contains("rank 1 (") && e.contains("exited or was killed"),
            "rank {r}: {e}"
        );
    }
}

#[test]
fn a_silent_rank_is_named_after_the_timeout() {
    // Ranks 2, 3 and 0 all time out at about the same moment; each must still name rank 1,
    // not its own predecessor.
    let errors = on_ranks(
        4,
        settings(1.0, 20.0),
        |_| "h".into(),
        |r, g| {
            let mut g = g.expect("join");
            if r == 1 {
                // Alive but stuck: keeps its connections open and never joins the all-reduce.
                thread::sleep(Duration::from_secs(5));
                return None;
            }
            let started = Instant::now();
            let e = g
                .all_reduce_f32(&mut [1.0f32; 10])
                .expect_err("rank 1 is stuck");
            assert!(started.elapsed() < Duration::from_secs(4));
            Some(format!("{e:#}"))
        },
    );
    let e2 = errors[2].as_deref().unwrap();
    assert!(
        e2.contains("no data from rank 1 (") && e2.contains("for 1 s"),
        "{e2}"
    );
    for r in [3, 0] {
        let e = errors[r].as_deref().unwrap();
        assert!(
            e.contains("rank 1 (") && !e.contains(&format!("rank {} (", (r + 3) % 4)),
            "rank {r}: {e}"
        );
    }
}

#[test]
fn an_abort_reaches_the_others_with_its_message() {
    let errors = on_ranks(
        2,
        settings(30.0, 20.0),
        |_| "h".into(),
        |r, g| {
            let mut g = g.expect("join");
            if r == 1 {
                g.abort("data shard 7 is corrupt");
                return None;
            }
            Some(format!("{:#}", g.barrier().expect_err("rank 1 aborted")))
        },
    );
    let e = errors[0].as_deref().unwrap();
    assert!(
        e.contains("rank 1 (") && e.contains("data shard 7 is corrupt"),
        "{e}"
    );
}

#[test]
fn bf16_all_reduce_rounds_each_hop_and_every_rank_ends_equal() {
    let s = DistributedSettings {
        reduce_dtype: ReduceDtype::Bf16,
        ..settings(20.0, 20.0)
    };
    let results = on_ranks(
        3,
        s,
        |_| "bf16".into(),
        |r, g| {
            let mut g = g.expect("join");
            // Values whose f32 sums bf16 cannot hold exactly, and small integers it can.
            let mut v: Vec<f32> = (0..1001)
                .map(|i| (1.0 + i as f32 / 997.0) * (r as f32 + 1.0).sqrt())
                .collect();
            g.all_reduce_grads(&mut v).expect("bf16 all-reduce");
            let mut ints: Vec<f32> = (0..10).map(|i| (i + r) as f32).collect();
            g.all_reduce_grads(&mut ints).expect("bf16 all-reduce");
            // The statistics' all-reduce stays f32.
            let mut exact = vec![1.0f32 + 1e-6 * r as f32];
            g.all_reduce_f32(&mut exact).expect("f32 all-reduce");
            (v, ints, exact)
        },
    );
    let (v0, _, _) = &results[0];
    let mut worst = 0.0f32;
    for (v, ints, exact) in &results {
        assert_eq!(v, v0, "every rank holds the same sums");
        let want: Vec<f32> = (0..10).map(|i| (3 * i + 3) as f32).collect();
        assert_eq!(ints, &want);
        assert!((exact[0] - (3.0 + 3e-6)).abs() < 1e-6, "{}", exact[0]);
    }
    for (i, got) in v0.iter().enumerate() {
        let want: f32 = (0..3)
            .map(|r| (1.0 + i as f32 / 997.0) * (r as f32 + 1.0).sqrt())
            .sum();
        // bf16 keeps 8 significant bits: a few roundings of 2^-9 relative each.
        worst = worst.max((got - want).abs() / want);
        assert!(wire::Bf16::from_f32(*got).to_f32() == *got, "a bf16 value");
    }
    assert!(worst < 4.0 / 512.0 && worst > 0.0, "relative error {worst}");
}

#[test]
fn overlapped_buckets_come_back_summed_in_order_while_the_work_runs() {
    for overlap in [true, false] {
        let s = DistributedSettings {
            overlap,
            ..settings(20.0, 20.0)
        };
        let results = on_ranks(
            3,
            s,
            |_| "o".into(),
            move |r, g| {
                let mut g = g.expect("join");
                assert_eq!(g.overlaps(), overlap);
                let (work, buckets) = g
                    .overlapped(|sender| {
                        for len in [5usize, 0, 1000, 3] {
                            sender.send((0..len).map(|i| (i * 10 + r) as f32).collect());
                            // Work between the sends, as the backward pass of the next layer.
                            thread::sleep(Duration::from_millis(20));
                        }
                        "done"
                    })
                    .expect("overlapped all-reduce");
                (work, buckets)
            },
        );
        for (work, buckets) in results {
            assert_eq!(work, "done");
            let lens: Vec<usize> = buckets.iter().map(Vec::len).collect();
            assert_eq!(lens, [5, 0, 1000, 3], "overlap {overlap}");
            for b in &buckets {
                assert!(b.iter().enumerate().all(|(i, &v)| v == (i * 30 + 3) as f32));
            }
        }
    }
}

#[test]
fn one_process_sums_nothing_and_cpu_tensor_buckets_travel_as_host_values() {
    let single = ProcessGroup::single();
    assert!(!single.reduces() && !single.overlaps());
    let results = on_ranks(
        2,
        settings(20.0, 20.0),
        |_| "t".into(),
        |r, g| {
            let mut g = g.expect("join");
            assert!(g.reduces());
            let device = Default::default();
            let (kept, host) = g
                .overlapped(|sender| {
                    let t = burn::tensor::Tensor::<bertkit_model::backend::Cpu, 1>::from_floats(
                        [1.0 + r as f32, 10.0, 100.0 * r as f32],
                        &device,
                    );
                    sender.send_tensor(t)
                })
                .expect("overlapped all-reduce");
            (kept.is_none(), host)
        },
    );
    for (went_to_host, host) in results {
        assert!(
            went_to_host,
            "a CPU tensor has no device buffer for the collective"
        );
        assert_eq!(host, [vec![3.0, 20.0, 100.0]]);
    }
}

/// The device path's half that needs no GPU: buckets whose sums come back as tensors are sliced
/// back into every parameter's gradient, in shape, for any bucket size.
#[test]
fn tensor_sums_go_back_to_their_parameters() {
    use bertkit_model::config::BertConfig;
    use burn::module::{Module, ModuleVisitor, Param, ParamId};
    use burn::optim::GradientsParams;
    use burn::tensor::Tensor;
    type B = bertkit_model::backend::Cpu;
    type AD = burn::backend::Autodiff<B>;
    let config = BertConfig {
        vocab_size: 50,
        hidden_size: 8,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        intermediate_size: 16,
        ..BertConfig::default()
    };
    let device = Default::default();
    let model = bertkit_model::checkpoint::init::<AD>(
        &config,
        bertkit_model::heads::Task::Pretraining,
        0,
        &device,
    )
    .expect("model");
    // Each parameter's "gradient" is its own value: distinct numbers everywhere.
    struct Grads(GradientsParams, Vec<(ParamId, Vec<f32>, Vec<usize>)>);
    impl ModuleVisitor<AD> for Grads {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            let g: Tensor<B, D> = param.val().inner();
            self.1.push((
                param.id,
                bertkit_model::nn::to_host(g.clone()).data,
                g.dims().to_vec(),
            ));
            self.0.register(param.id, g);
        }
    }
    for bucket_len in [1, 100, usize::MAX] {
        let mut grads = Grads(GradientsParams::new(), Vec::new());
        model.visit(&mut grads);
        let Grads(mut g, want) = grads;
        let mut buckets = grads::Buckets::<B>::new(bucket_len);
        let mut sender = BucketSender::Scaled(3.0);
        buckets.take_final(&model, &mut g, &mut sender);
        buckets.flush(&mut sender);
        let back = buckets.unpack(&model, Vec::new()).expect("unpack");
        for (id, values, dims) in want {
            // GradientsParams::get does not check the rank: ask for the parameter's own.
            let got = match dims.len() {
                1 => back
                    .get::<B, 1>(id)
                    .map(|t| (t.dims().to_vec(), bertkit_model::nn::to_host(t).data)),
                2 => back
                    .get::<B, 2>(id)
                    .map(|t| (t.dims().to_vec(), bertkit_model::nn::to_host(t).data)),
                d => panic!("a parameter of rank {d}"),
            }
            .expect("every parameter gets its gradient back");
            assert_eq!(got.0, dims, "bucket_len {bucket_len}");
            let tripled: Vec<f32> = values.iter().map(|v| 3.0 * v).collect();
            assert_eq!(got.1, tripled, "bucket_len {bucket_len}");
        }
    }
}

#[test]
fn a_rank_that_exits_mid_bucket_is_named_and_the_work_still_ends() {
    let errors = on_ranks(
        3,
        settings(30.0, 20.0),
        |_| "m".into(),
        |r, g| {
            let mut g = g.expect("join");
            if r == 1 {
                // Takes part in the first bucket's all-reduce only, then dies.
                let mut first = vec![1.0f32; 1000];
                g.all_reduce_grads(&mut first).expect("first bucket");
                drop(g);
                return None;
            }
            let started = Instant::now();
            let mut sent = 0;
            let e = g
                .overlapped(|sender| {
                    for _ in 0..4 {
                        sender.send(vec![1.0f32; 1000]);
                        sent += 1;
                        thread::sleep(Duration::from_millis(20));
                    }
                })
                .expect_err("rank 1 is gone");
            assert!(started.elapsed() < Duration::from_secs(10));
            // The work ran to its end although the all-reduce failed at its second bucket.
            assert_eq!(sent, 4);
            assert!(g.barrier().is_err(), "the ring is not used again");
            Some(format!("{e:#}"))
        },
    );
    for r in [0, 2] {
        let e = errors[r].as_deref().unwrap();
        assert!(
            e.contains("rank 1 (") && e.contains("exited or was killed"),
            "rank {r}: {e}"
        );
    }
}
