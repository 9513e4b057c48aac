//! The optimizers against their formulas, computed by hand in f64 on a two-parameter model:
//! LAMB as NVIDIA's fused LAMB (bias correction, no decay and no trust ratio on biases and
//! LayerNorm, global-norm clipping), AdamW as PyTorch's.

use bertkit_model::backend::Cpu;
use std::collections::{BTreeMap, HashMap};

use bertkit_train::optim::{self, Optimizer, OptimizerConfig, OptimizerKind, Updates};
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

type AD = Autodiff<Cpu>;

#[derive(Module, Debug)]
struct Toy<B: Backend> {
    weight: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
}

const W: [f64; 4] = [0.5, -1.0, 0.25, 2.0];
const B: [f64; 2] = [0.1, -0.2];

fn toy() -> Toy<AD> {
    let dev = Default::default();
    let w: Vec<f32> = W.iter().map(|&x| x as f32).collect();
    let b: Vec<f32> = B.iter().map(|&x| x as f32).collect();
    Toy {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [2, 2]), &dev)),
        bias: Param::from_tensor(Tensor::from_data(TensorData::new(b, [2]), &dev)),
    }
}

/// Gradients of `sum(weight * cw) + sum(bias * cb)`: exactly `cw` and `cb`.
fn grads(model: &Toy<AD>, cw: [f64; 4], cb: [f64; 2]) -> GradientsParams {
    let dev = Default::default();
    let cw: Vec<f32> = cw.iter().map(|&x| x as f32).collect();
    let cb: Vec<f32> = cb.iter().map(|&x| x as f32).collect();
    let loss = (model.weight.val() * Tensor::from_data(TensorData::new(cw, [2, 2]), &dev)).sum()
        + (model.bias.val() * Tensor::from_data(TensorData::new(cb, [2]), &dev)).sum();
    GradientsParams::from_grads(loss.backward(), model)
}

fn config(kind: OptimizerKind) -> OptimizerConfig {
    OptimizerConfig {
        name: kind,
        lr: 0.1,
        betas: [0.9, 0.999],
        eps: 1e-6,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        nvlamb: false,
    }
}

fn values<const D: usize>(t: Tensor<AD, D>) -> Vec<f64> {
    let data = t.into_data().to_vec::<f32>().unwrap();
    data.into_iter().map(f64::from).collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The reference: one step of LAMB/AdamW on `p` with state `(m, v)` at step `t`.
#[allow(clippy::too_many_arguments)]
fn reference(
    kind: OptimizerKind,
    p: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
    g: &[f64],
    t: i32,
    lr: f64,
    wd: f64,
) {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-6);
    let mut u = vec![0.0; p.len()];
    for i in 0..p.len() {
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        let mh = m[i] / (1.0 - b1.powi(t));
        let vh = v[i] / (1.0 - b2.powi(t));
        u[i] = mh / (vh.sqrt() + eps);
    }
    match kind {
        OptimizerKind::Lamb => {
            for i in 0..p.len() {
                u[i] += wd * p[i];
            }
            let ratio = if wd != 0.0 { norm(p) / norm(&u) } else { 1.0 };
            for i in 0..p.len() {
                p[i] -= lr * ratio * u[i];
            }
        }
        OptimizerKind::Adamw => {
            for i in 0..p.len() {
                p[i] = p[i] * (1.0 - lr * wd) - lr * u[i];
            }
        }
    }
}

fn check(kind: OptimizerKind, updates: Updates) {
    let steps: [([f64; 4], [f64; 2]); 2] = [
        ([0.3, -0.4, 1.2, 0.0], [2.0, -1.0]),
        ([-0.1, 0.2, 0.05, 0.7], [0.5, 0.25]),
    ];
    let mut model = toy();
    let mut opt = Optimizer::<Cpu>::with_updates(config(kind), updates);
    let (mut pw, mut pb) = (W.to_vec(), B.to_vec());
    let (mut mw, mut vw, mut mb, mut vb) = (vec![0.0; 4], vec![0.0; 4], vec![0.0; 2], vec![0.0; 2]);
    for (t, (cw, cb)) in steps.iter().enumerate() {
        let g = grads(&model, *cw, *cb);
        // Clipping by the global norm over both tensors.
        let global = norm(&cw.iter().chain(cb.iter()).copied().collect::<Vec<_>>());
        let direct = optim::global_grad_norm(&model, &g);
        assert!((direct - global).abs() < 1e-6, "{direct} vs {global}");
        let g = opt.gradients(&model, g);
        let measured = g.norm();
        assert!((measured - global).abs() < 1e-6, "{measured} vs {global}");
        let clip = optim::clip_factor(measured, 1.0);
        assert_eq!(clip > 1.0, global > 1.0);
        let gw: Vec<f64> = cw.iter().map(|x| x / clip).collect();
        let gb: Vec<f64> = cb.iter().map(|x| x / clip).collect();
        let lr = 0.1 * (t + 1) as f64;
        model = opt.step(lr, clip, model, g);
        reference(kind, &mut pw, &mut mw, &mut vw, &gw, t as i32 + 1, lr, 0.01);
        // The bias is excluded from weight decay (and so from LAMB's trust ratio).
        reference(kind, &mut pb, &mut mb, &mut vb, &gb, t as i32 + 1, lr, 0.0);
        let (got_w, got_b) = (values(model.weight.val()), values(model.bias.val()));
        for (g, w) in got_w.iter().zip(&pw).chain(got_b.iter().zip(&pb)) {
            assert!(
                (g - w).abs() < 2e-6,
                "{kind:?} step {}: {got_w:?} {got_b:?} vs {pw:?} {pb:?}",
                t + 1
            );
        }
    }
    // The state round-trips through the host (as a checkpoint stores it).
    let host = opt.to_host();
    assert_eq!(host.len(), 4);
    let mut restored = Optimizer::<Cpu>::with_updates(config(kind), updates);
    restored
        .load_host(opt.steps, host.clone(), &Default::default())
        .unwrap();
    assert_eq!(restored.to_host(), host);
    let mw32: Vec<f32> = mw.iter().map(|&x| x as f32).collect();
    for (a, b) in host["weight.exp_avg"].iter().zip(&mw32) {
        assert!((a - b).abs() < 1e-6);
    }
}

#[test]
fn lamb_matches_its_formula() {
    check(OptimizerKind::Lamb, Updates::PerTensor);
}

#[test]
fn adamw_matches_its_formula() {
    check(OptimizerKind::Adamw, Updates::PerTensor);
}

#[test]
fn flat_lamb_matches_its_formula() {
    check(OptimizerKind::Lamb, Updates::Flat);
}

#[test]
fn flat_adamw_matches_its_formula() {
    check(OptimizerKind::Adamw, Updates::Flat);
}

/// Made-up gradients for every parameter of `model` whose name `keep` accepts, different at
/// each step.
fn synthetic_grads<M: AutodiffModule<AD>>(
    model: &M,
    step: usize,
    keep: impl Fn(&str) -> bool,
) -> GradientsParams {
    struct Make<'a> {
        names: HashMap<ParamId, String>,
        keep: &'a dyn Fn(&str) -> bool,
        step: usize,
        grads: GradientsParams,
    }
    impl ModuleVisitor<AD> for Make<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            if !(self.keep)(&self.names[&param.id]) {
                return;
            }
            let shape = param.val().shape();
            let salt = self.grads.len() as f32 * 0.7 + self.step as f32 * 1.3;
            let values: Vec<f32> = (0..shape.num_elements())
                .map(|i| (i as f32 * 0.37 + salt).sin() * 0.05)
                .collect();
            let g =
                Tensor::<Cpu, D>::from_data(TensorData::new(values, shape), &Default::default());
            self.grads.register(param.id, g);
        }
    }
    let mut make = Make {
        names: optim::param_names(model)
            .into_iter()
            .map(|(n, id)| (id, n))
            .collect(),
        keep: &keep,
        step,
        grads: GradientsParams::new(),
    };
    model.visit(&mut make);
    make.grads
}

/// Every parameter's values by name.
fn param_values<M: AutodiffModule<AD>>(model: &M) -> BTreeMap<String, Vec<f32>> {
    struct Values {
        names: HashMap<ParamId, String>,
        out: BTreeMap<String, Vec<f32>>,
    }
    impl ModuleVisitor<AD> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            let data = param.val().into_data().to_vec::<f32>().unwrap();
            self.out.insert(self.names[&param.id].clone(), data);
        }
    }
    let mut v = Values {
        names: optim::param_names(model)
            .into_iter()
            .map(|(n, id)| (id, n))
            .collect(),
        out: BTreeMap::new(),
    };
    model.visit(&mut v);
    v.out
}

fn assert_close(what: &str, a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (name, x) in a {
        let y = &b[name];
        assert_eq!(x.len(), y.len(), "{what} {name}");
        for (i, (p, q)) in x.iter().zip(y).enumerate() {
            assert!(
                (p - q).abs() <= 1e-6 + 1e-5 * q.abs(),
                "{what}: {name}[{i}] {p} vs {q}"
            );
        }
    }
}

/// The flat update of a whole BERT equals the per-tensor update: LAMB (with and without the
/// trust ratio on the no-decay group) and AdamW, with clipping, with a step that leaves some
/// parameters without gradients (the flat layout changes and changes back), and when a flat
/// optimizer resumes from the per-tensor one's state.
#[test]
fn flat_updates_equal_per_tensor_updates_on_bert() {
    use bertkit_model::config::BertConfig;
    use bertkit_model::heads::Task;
    let bert = BertConfig {
        vocab_size: 50,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        ..BertConfig::default()
    };
    let init = || {
        bertkit_model::checkpoint::init::<AD>(&bert, Task::Pretraining, 0, &Default::default())
            .unwrap()
    };
    for (kind, nvlamb) in [
        (OptimizerKind::Lamb, false),
        (OptimizerKind::Lamb, true),
        (OptimizerKind::Adamw, false),
    ] {
        let config = OptimizerConfig {
            nvlamb,
            lr: 0.01,
            ..config(kind)
        };
        let mut per_tensor = Optimizer::<Cpu>::with_updates(config.clone(), Updates::PerTensor);
        let mut flat = Optimizer::<Cpu>::with_updates(config.clone(), Updates::Flat);
        let (mut a, mut b) = (init(), init());
        let mut resumed: Option<(Optimizer<Cpu>, bertkit_model::heads::Bert<AD>)> = None;
        for step in 0..5 {
            // Step 2: no gradients for the pooler and the NSP head.
            let keep = |name: &str| step != 2 || !(name.contains("pooler") || name.contains("nsp"));
            let clip = if step == 1 { 3.0 } else { 1.0 };
            let ga = per_tensor.gradients(&a, synthetic_grads(&a, step, keep));
            let gb = flat.gradients(&b, synthetic_grads(&b, step, keep));
            assert!(
                (ga.norm() - gb.norm()).abs() < 1e-6 * ga.norm(),
                "{kind:?} norm"
            );
            a = per_tensor.step(0.01, clip, a, ga);
            b = flat.step(0.01, clip, b, gb);
            let what = format!("{kind:?} nvlamb={nvlamb} step {step}");
            assert_close(&what, &param_values(&b), &param_values(&a));
            assert_close(&what, &flat.to_host(), &per_tensor.to_host());
            if let Some((opt, model)) = resumed.as_mut() {
                let g = opt.gradients(model, synthetic_grads(model, step, keep));
                *model = opt.step(0.01, clip, model.clone(), g);
                assert_close(
                    &format!("resumed {what}"),
                    &param_values(model),
                    &param_values(&a),
                );
            }
            if step == 2 {
                // A flat optimizer resumes from the per-tensor one's state (as a checkpoint
                // stores it), with the state of parameters outside this step's layout.
                let mut opt = Optimizer::<Cpu>::with_updates(config.clone(), Updates::Flat);
                opt.load_host(per_tensor.steps, per_tensor.to_host(), &Default::default())
                    .unwrap();
                resumed = Some((opt, a.clone()));
            }
        }
    }
}

#[test]
fn weight_decay_skips_biases_and_layer_norm() {
    assert!(optim::decays(
        "bert.encoder.layer.0.attention.self_.query.weight"
    ));
    assert!(optim::decays("bert.embeddings.word_embeddings.weight"));
    assert!(!optim::decays("bert.encoder.layer.0.output.dense.bias"));
    assert!(!optim::decays(
        "bert.encoder.layer.0.output.layer_norm.weight"
    ));
    assert!(!optim::decays("bert.embeddings.layer_norm.bias"));
    assert!(!optim::decays("mlm.bias"));
}

/// On a real BERT: the no-decay group is exactly the biases and LayerNorm parameters (as the
/// module paths name them), as in NVIDIA's and HF's recipes.
#[test]
fn bert_decay_groups() {
    use bertkit_model::config::BertConfig;
    use bertkit_model::heads::Task;
    let config = BertConfig {
        vocab_size: 50,
        hidden_size: 8,
        num_hidden_layers: 3,
        num_attention_heads: 2,
        intermediate_size: 16,
        ..BertConfig::default()
    };
    let model =
        bertkit_model::checkpoint::init::<AD>(&config, Task::Pretraining, 0, &Default::default())
            .unwrap();
    let names: Vec<String> = optim::param_names(&model)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let decay = names.iter().filter(|n| optim::decays(n)).count();
    let no_decay = names.len() - decay;
    // Per layer: q, k, v, attention output, intermediate, output weights; plus 3 embedding
    // tables, the pooler, the MLM transform and NSP weights.
    assert_eq!(decay, 6 * 3 + 6, "{names:?}");
    // Per layer: 6 biases + 2 LayerNorms x 2; embeddings LayerNorm 2; pooler, MLM transform,
    // MLM output and NSP biases; MLM transform LayerNorm 2.
    assert_eq!(no_decay, 10 * 3 + 8, "{names:?}");
    assert!(names.iter().all(|n| !n.contains("..") && !n.is_empty()));
}
