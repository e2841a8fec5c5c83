//! The whole network's backward pass against finite differences: the loss's gradient with
//! respect to LoRA parameters on every projection, on tiny Hugging Face fixtures that cover the
//! block variants training supports (LLaMA: pre-norm, SwiGLU, GQA; Gemma 2: sandwich norms,
//! GeGLU, softcapped attention and logits, sliding windows; Qwen 3: q/k norms; Mixtral and
//! Qwen2-MoE: top-k routing, renormalised or not, and a gated shared expert). A gradient
//! reaches A only through B and every earlier layer, so this checks every component's backward
//! as composed in the model.

#![allow(clippy::needless_range_loop)]

use ferrolm_format::hf::HfDir;
use ferrolm_model::weights::Slot;
use ferrolm_model::Model;
use ferrolm_train::full::{tensor_mut, FullAdam, Lomo};
use ferrolm_train::net::{run, run_full, Adapter, LoraConfig, TensorId};
use std::path::Path;

fn fixture(name: &str) -> Model {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/hf")
        .join(name);
    Model::from_hf(HfDir::open(&dir).unwrap()).unwrap()
}

const IDS: [u32; 10] = [74, 70, 125, 117, 13, 51, 53, 105, 86, 106];

fn loss(m: &Model, ad: &Adapter, targets: &[Option<u32>]) -> f64 {
    run(m, ad, &IDS, targets, 1.0, None, None).unwrap().0
}

#[test]
fn lora_gradients_match_finite_differences() {
    // Mixtral and Qwen2-MoE: the adapters on attention, their gradients through the experts,
    // the routing and (Qwen2-MoE) the shared expert of every later layer.
    for name in ["llama", "gemma2", "qwen3", "mixtral", "qwen2_moe"] {
        let m = fixture(name);
        let cfg = LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            targets: [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ]
            .map(String::from)
            .to_vec(),
        };
        let mut ad = Adapter::new(&m, cfg, 7).unwrap();
        // B starts at zero; give it values so A's gradient is not trivially zero.
        for (i, md) in ad.mods.iter_mut().enumerate() {
            for (j, b) in md.b.iter_mut().enumerate() {
                *b = (((i * 31 + j * 17) % 13) as f32 - 6.0) * 0.02;
            }
        }
        // Loss on the second half only (positions 4.. predict the next id).
        let targets: Vec<Option<u32>> = (0..IDS.len())
            .map(|i| (i >= 4 && i + 1 < IDS.len()).then(|| IDS[i + 1]))
            .collect();
        let mut g = ad.zero_grads();
        run(&m, &ad, &IDS, &targets, 1.0, Some(&mut g), None).unwrap();
        let mut worst = 0f64;
        let mut checked = 0;
        let (moe, mut flips) = (name.contains("moe") || name == "mixtral", 0);
        for mi in 0..ad.mods.len() {
            for which in 0..2 {
                let n = if which == 0 {
                    ad.mods[mi].a.len()
                } else {
                    ad.mods[mi].b.len()
                };
                for j in [0, n / 3, n - 1] {
                    fn get(ad: &mut Adapter, mi: usize, which: usize, j: usize) -> &mut f32 {
                        if which == 0 {
                            &mut ad.mods[mi].a[j]
                        } else {
                            &mut ad.mods[mi].b[j]
                        }
                    }
                    let x0 = *get(&mut ad, mi, which, j);
                    let mut diff = |eps: f32| {
                        *get(&mut ad, mi, which, j) = x0 + eps;
                        let lp = loss(&m, &ad, &targets);
                        *get(&mut ad, mi, which, j) = x0 - eps;
                        let lm = loss(&m, &ad, &targets);
                        *get(&mut ad, mi, which, j) = x0;
                        (lp - lm) / (2.0 * eps as f64)
                    };
                    let num = diff(1e-2);
                    // A mixture's top-k choice is piecewise constant: a step across a flip
                    // jumps the loss, and is no derivative (the half step disagrees wildly).
                    if moe && (num - diff(5e-3)).abs() > 1.0 {
                        flips += 1;
                        continue;
                    }
                    let ana = g[2 * mi + which][j] as f64;
                    let err = (num - ana).abs() / (num.abs().max(ana.abs()).max(1e-2));
                    worst = worst.max(err);
                    checked += 1;
                    assert!(
                        err < 2e-2,
                        "{name}: module {mi} ({:?} layer {}) {} [{j}]: analytic {ana:.6} numeric {num:.6}",
                        ad.mods[mi].slot,
                        ad.mods[mi].layer,
                        ["A", "B"][which]
                    );
                }
            }
        }
        println!("{name}: {checked} LoRA parameters, worst relative error {worst:.1e}; {flips} steps crossed a routing flip");
        assert!(flips * 10 <= checked, "{name}: {flips} flips in {checked}");
    }
}

/// Prompt tuning and P-tuning: the virtual tokens' (and the prompt encoder's) gradients
/// against finite differences, on LLaMA and on Gemma 2 (whose embedding scale the virtual
/// tokens pass through too).
#[test]
fn prompt_gradients_match_finite_differences() {
    for name in ["llama", "gemma2"] {
        let m = fixture(name);
        for hidden in [None, Some(16)] {
            let mut ad = Adapter::new_prompt(&m, 3, hidden, 6).unwrap();
            let targets: Vec<Option<u32>> = (0..IDS.len())
                .map(|i| (i + 1 < IDS.len()).then(|| IDS[i + 1]))
                .collect();
            let mut g = ad.zero_grads();
            run(&m, &ad, &IDS, &targets, 1.0, Some(&mut g), None).unwrap();
            let mut worst = 0f64;
            let n_tensors = g.len();
            // P-tuning: the encoder's last layer (`W3`, `b3`), which no ReLU follows, so a
            // finite step cannot cross a kink; the layers before it are checked on their own
            // (`net::tests::prompt_encoder_backward_matches_finite_differences`).
            let checked: Vec<usize> = if hidden.is_some() {
                vec![5, 6]
            } else {
                vec![0]
            };
            for &ti in &checked {
                let n = g[ti].len();
                for j in [0, n / 2, n - 1] {
                    // The loss curves sharply along a virtual token's coordinates (at 1e-2 the
                    // central difference is still a few percent off), and the encoder's ReLUs
                    // have kinks: small steps.
                    let eps = 3e-3f32;
                    let x0 = ad.params_mut()[ti][j];
                    ad.params_mut()[ti][j] = x0 + eps;
                    let lp = loss(&m, &ad, &targets);
                    ad.params_mut()[ti][j] = x0 - eps;
                    let lm = loss(&m, &ad, &targets);
                    ad.params_mut()[ti][j] = x0;
                    let num = (lp - lm) / (2.0 * eps as f64);
                    let ana = g[ti][j] as f64;
                    // The f32 loss's own rounding (~1e-5) limits small gradients: errors are
                    // relative to at least 0.05.
                    let err = (num - ana).abs() / num.abs().max(ana.abs()).max(5e-2);
                    worst = worst.max(err);
                    assert!(
                        err < 3e-2,
                        "{name} {hidden:?} tensor {ti}[{j}]: analytic {ana:.6} numeric {num:.6}"
                    );
                }
            }
            println!(
                "{name} {}: {n_tensors} tensors, worst relative error {worst:.1e}",
                if hidden.is_some() {
                    "P-tuning"
                } else {
                    "prompt tuning"
                }
            );
        }
    }
}

fn widened(name: &str) -> Model {
    let mut m = fixture(name);
    m.widen_to_f32().unwrap();
    m
}

fn next_token_targets() -> Vec<Option<u32>> {
    (0..IDS.len())
        .map(|i| (i + 1 < IDS.len()).then(|| IDS[i + 1]))
        .collect()
}

/// The whole gradient of one sequence (no update).
fn whole_gradient(m: &mut Model, targets: &[Option<u32>]) -> Vec<(TensorId, Vec<f32>)> {
    let mut cap = FullAdam::new(0.0, m.config.tied_embeddings);
    run_full(m, &IDS, targets, 1.0, &mut cap).unwrap();
    let mut g: Vec<(TensorId, Vec<f32>)> =
        cap.grads().iter().map(|(k, v)| (*k, v.clone())).collect();
    g.sort_by_key(|((k, b), _)| (k.layer, k.slot as usize, k.expert, *b));
    g
}

/// Full fine-tuning: the gradient of every tensor of the model (projections and their biases,
/// every norm's scale, the embedding, the head, tied or not) against finite differences.
#[test]
fn full_gradients_match_finite_differences() {
    for name in [
        "llama",
        "llama-tied",
        "gemma2",
        "qwen2",
        "qwen3",
        "mixtral",
        "qwen2_moe",
    ] {
        let mut m = widened(name);
        let targets = next_token_targets();
        let grads = whole_gradient(&mut m, &targets);
        let none = Adapter::none(&m).unwrap();
        let c = m.config.hidden;
        let (mut worst, mut checked) = (0f64, 0);
        for (id, g) in &grads {
            let n = g.len();
            let top = (0..n)
                .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
                .unwrap();
            let coords = if id.0.slot == Slot::TokenEmbd {
                vec![top, IDS[3] as usize * c + 5]
            } else {
                vec![top, n / 2, n - 1]
            };
            for j in coords {
                let set = |m: &mut Model, d: f32| {
                    for t in tensor_mut(m, *id).unwrap() {
                        t[j] += d;
                    }
                };
                // Central differences at h and h/2, extrapolated (Richardson): the embedding
                // of Gemma 2 (scaled by 8 on the way in, and the tied head) curves too sharply
                // for one step.
                let mut diff = |h: f32| {
                    set(&mut m, h);
                    let lp = loss(&m, &none, &targets);
                    set(&mut m, -2.0 * h);
                    let lm = loss(&m, &none, &targets);
                    set(&mut m, h);
                    (lp - lm) / (2.0 * h as f64)
                };
                let (d1, d2) = (diff(1e-2), diff(5e-3));
                let num = (4.0 * d2 - d1) / 3.0;
                let ana = g[j] as f64;
                // The f32 forward's noise (~1e-6 in the loss) swamps differences far below the
                // tensor's largest gradient: errors are relative to at least a tenth of it.
                let floor = (0.1 * g[top].abs() as f64).max(1e-2);
                let err = (num - ana).abs() / (num.abs().max(ana.abs()).max(floor));
                worst = worst.max(err);
                checked += 1;
                assert!(
                    err < 2e-2,
                    "{name}: {id:?} [{j}]: analytic {ana:.6} numeric {num:.6}"
                );
            }
        }
        println!(
            "{name}: full fine-tuning, {} tensors, {checked} coordinates, worst relative error {worst:.1e}",
            grads.len()
        );
    }
}

/// LOMO's update inside the backward pass equals SGD with the whole gradient computed first:
/// updating a block once its backward is done changes no gradient still to come.
#[test]
fn lomo_equals_sgd_on_the_whole_gradient() {
    for name in ["llama", "llama-tied"] {
        let targets = next_token_targets();
        let lr = 0.05;
        let mut a = widened(name);
        let mut lomo = Lomo {
            lr,
            tied: a.config.tied_embeddings,
            peak_grad: 0,
        };
        run_full(&mut a, &IDS, &targets, 1.0, &mut lomo).unwrap();
        let mut b = widened(name);
        let grads = whole_gradient(&mut b, &targets);
        let total: usize = grads.iter().map(|(_, g)| g.len()).sum();
        for (id, g) in &grads {
            for t in tensor_mut(&mut b, *id).unwrap() {
                t.iter_mut().zip(g).for_each(|(w, g)| *w -= lr * g);
            }
        }
        let mut worst = 0f32;
        for (id, _) in &grads {
            let ta: Vec<Vec<f32>> = tensor_mut(&mut a, *id)
                .unwrap()
                .into_iter()
                .map(|t| t.to_vec())
                .collect();
            let tb = tensor_mut(&mut b, *id).unwrap();
            for (x, y) in ta.iter().zip(tb) {
                for (p, q) in x.iter().zip(y.iter()) {
                    worst = worst.max((p - q).abs());
                }
            }
        }
        println!(
            "{name}: LOMO vs SGD after one step: max |Δw| {worst:.1e}; LOMO held at most {} of {total} gradient values at once",
            lomo.peak_grad
        );
        assert!(worst < 1e-6, "{name}: {worst}");
        assert!(lomo.peak_grad < total / 2, "{} of {total}", lomo.peak_grad);
        // And the step lowered the loss.
        let none = Adapter::none(&a).unwrap();
        let before = loss(&widened(name), &none, &targets);
        assert!(loss(&a, &none, &targets) < before);
    }
}

/// Training's forward pass equals the inference block's on every fixture training covers
/// (the mixtures included): the loss from `run` against the log-softmax of `Model::forward`.
#[test]
fn training_forward_equals_inference() {
    use ferrolm_model::model::log_softmax_at;
    use ferrolm_model::{KvPrecision, Logits};
    for name in ["llama", "gemma2", "qwen2", "qwen3", "mixtral", "qwen2_moe"] {
        let m = fixture(name);
        let targets = next_token_targets();
        let ours = loss(&m, &Adapter::none(&m).unwrap(), &targets);
        let mut kv = m.new_cache_with(IDS.len(), KvPrecision::F32);
        let logits: Vec<f32> = m
            .forward(&IDS, &mut kv, Logits::All)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let v = logits.len() / IDS.len();
        let reference: f64 = (0..IDS.len() - 1)
            .map(|i| -log_softmax_at(&logits[i * v..(i + 1) * v], IDS[i + 1] as usize))
            .sum();
        let d = (ours - reference).abs() / reference;
        println!("{name}: training loss {ours:.6}, inference {reference:.6} (relative {d:.1e})");
        assert!(d < 1e-5, "{name}: {ours} vs {reference}");
    }
}
