//! The whole network's backward pass against finite differences: the loss's gradient with
//! respect to LoRA parameters on every projection, on tiny Hugging Face fixtures that cover the
//! block variants training supports (LLaMA: pre-norm, SwiGLU, GQA; Gemma 2: sandwich norms,
//! GeGLU, softcapped attention and logits, sliding windows; Qwen 3: q/k norms). A gradient
//! reaches A only through B and every earlier layer, so this checks every component's backward
//! as composed in the model.

#![allow(clippy::needless_range_loop)]

use ferrolm_format::hf::HfDir;
use ferrolm_model::Model;
use ferrolm_train::net::{run, Adapter, LoraConfig};
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
    for name in ["llama", "gemma2", "qwen3"] {
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
        for mi in 0..ad.mods.len() {
            for which in 0..2 {
                let n = if which == 0 {
                    ad.mods[mi].a.len()
                } else {
                    ad.mods[mi].b.len()
                };
                for j in [0, n / 3, n - 1] {
                    let eps = 1e-2f32;
                    fn get(ad: &mut Adapter, mi: usize, which: usize, j: usize) -> &mut f32 {
                        if which == 0 {
                            &mut ad.mods[mi].a[j]
                        } else {
                            &mut ad.mods[mi].b[j]
                        }
                    }
                    let x0 = *get(&mut ad, mi, which, j);
                    *get(&mut ad, mi, which, j) = x0 + eps;
                    let lp = loss(&m, &ad, &targets);
                    *get(&mut ad, mi, which, j) = x0 - eps;
                    let lm = loss(&m, &ad, &targets);
                    *get(&mut ad, mi, which, j) = x0;
                    let num = (lp - lm) / (2.0 * eps as f64);
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
        println!("{name}: {checked} LoRA parameters, worst relative error {worst:.1e}");
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
