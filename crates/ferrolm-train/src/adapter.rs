//! What training trains beside a frozen base: LoRA modules on the projections, and virtual
//! tokens (prompt tuning, P-tuning); which models training covers.

pub use crate::prompt::Prompt;
use anyhow::{bail, Result};
use ferrolm_model::block::Block;
use ferrolm_model::layers::FfnLayer;
use ferrolm_model::linear::Linear;
use ferrolm_model::spec::{NormPlacement, Position, Residual, Topology};
use ferrolm_model::weights::Slot;
use ferrolm_model::Model;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The projections an adapter may target, in the order of `Adapter::index`.
pub const SLOTS: [Slot; 7] = [
    Slot::AttnQ,
    Slot::AttnK,
    Slot::AttnV,
    Slot::AttnOut,
    Slot::FfnGate,
    Slot::FfnUp,
    Slot::FfnDown,
];

/// Hugging Face's name for a projection (PEFT's `target_modules` entries).
pub fn slot_name(s: Slot) -> &'static str {
    match s {
        Slot::AttnQ => "q_proj",
        Slot::AttnK => "k_proj",
        Slot::AttnV => "v_proj",
        Slot::AttnOut => "o_proj",
        Slot::FfnGate => "gate_proj",
        Slot::FfnUp => "up_proj",
        Slot::FfnDown => "down_proj",
        _ => "?",
    }
}

/// LoRA's hyper-parameters.
#[derive(Clone, Debug)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f32,
    pub dropout: f32,
    /// `q_proj`, `v_proj`, ... (Hugging Face names).
    pub targets: Vec<String>,
}

impl LoraConfig {
    pub fn scaling(&self) -> f32 {
        self.alpha / self.r as f32
    }
}

/// One adapted projection: `A (r, in)`, `B (out, r)`.
pub struct Module {
    pub layer: usize,
    pub slot: Slot,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub d_in: usize,
    pub d_out: usize,
}

/// The trainable adapter: its modules and, per layer, which projection has which module.
pub struct Adapter {
    pub cfg: LoraConfig,
    pub mods: Vec<Module>,
    index: Vec<[Option<usize>; 7]>,
    /// Virtual tokens before every input (prompt tuning, P-tuning).
    pub prompt: Option<Prompt>,
}

/// Gradients shaped like an adapter's parameters ([`Adapter::params_mut`]'s order: `A`, `B`
/// of each LoRA module, then the prompt's tensors).
pub type Grads = Vec<Vec<f32>>;

/// Whether training covers this model; the error names what it does not cover.
pub fn check_trainable(m: &Model) -> Result<()> {
    if m.topology() != Topology::Decoder {
        bail!(
            "fine-tuning covers decoder-only models so far; this one is {:?}",
            m.topology()
        );
    }
    if !m.plain_causal() || m.has_extra_embeddings() {
        bail!("fine-tuning does not cover models with ALiBi, relative biases or learned position embeddings yet (RoPE decoders only)");
    }
    for b in m.blocks() {
        if !matches!(b.placement, NormPlacement::Pre | NormPlacement::Sandwich)
            || b.residual != Residual::Sequential
            || b.cross.is_some()
            || !matches!(b.plan.position, Position::Rope(_) | Position::None)
        {
            bail!("fine-tuning covers pre-norm (or sandwich-norm) sequential RoPE blocks; layer {} of this model is built otherwise", b.index);
        }
    }
    Ok(())
}

/// The projection `s` of block `b` (a mixture's experts take no adapter yet).
fn linear(b: &Block, s: Slot) -> Option<&dyn Linear> {
    let dense = match &b.ffn {
        FfnLayer::Dense(f) => Some(f),
        FfnLayer::Moe(_) => None,
    };
    Some(match s {
        Slot::AttnQ => b.attn.q.as_ref(),
        Slot::AttnK => b.attn.k.as_ref(),
        Slot::AttnV => b.attn.v.as_ref(),
        Slot::AttnOut => b.attn.o.as_ref(),
        Slot::FfnGate => dense?.gate.as_deref()?,
        Slot::FfnUp => dense?.up.as_ref(),
        Slot::FfnDown => dense?.down.as_ref(),
        _ => return None,
    })
}

impl Adapter {
    /// PEFT's initialisation: `A` Kaiming-uniform (bound `1/sqrt(in)`), `B` zero, so training
    /// starts from the base model.
    pub fn new(m: &Model, cfg: LoraConfig, seed: u64) -> Result<Adapter> {
        check_trainable(m)?;
        if cfg.r == 0 {
            bail!("--rank must be at least 1");
        }
        for t in &cfg.targets {
            if !SLOTS.iter().any(|&s| slot_name(s) == t) {
                bail!("--targets '{t}': expected some of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj");
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut mods = Vec::new();
        let mut index = vec![[None; 7]; m.blocks().len()];
        for (l, b) in m.blocks().iter().enumerate() {
            for (si, &s) in SLOTS.iter().enumerate() {
                if !cfg.targets.iter().any(|t| t == slot_name(s)) {
                    continue;
                }
                let Some(lin) = linear(b, s) else { continue };
                let (d_in, d_out) = (lin.in_dim(), lin.out_dim());
                let bound = 1.0 / (d_in as f32).sqrt();
                let a = (0..cfg.r * d_in)
                    .map(|_| rng.gen_range(-bound..bound))
                    .collect();
                index[l][si] = Some(mods.len());
                mods.push(Module {
                    layer: l,
                    slot: s,
                    a,
                    b: vec![0.0; d_out * cfg.r],
                    d_in,
                    d_out,
                });
            }
        }
        if mods.is_empty() {
            bail!(
                "--targets {:?} names no projection this model has",
                cfg.targets
            );
        }
        Ok(Adapter {
            cfg,
            mods,
            index,
            prompt: None,
        })
    }

    /// Prompt tuning (`hidden: None`) or P-tuning with an MLP prompt encoder of width
    /// `hidden`: `n` virtual tokens, initialised from the embeddings of random vocabulary
    /// tokens (PEFT's `SAMPLE_VOCAB`); the encoder's layers as PyTorch initialises `Linear`.
    pub fn new_prompt(m: &Model, n: usize, hidden: Option<usize>, seed: u64) -> Result<Adapter> {
        check_trainable(m)?;
        if n == 0 {
            bail!("--virtual-tokens must be at least 1");
        }
        let (emb, _) = m.token_embedding();
        let (c, vocab) = (emb.dim(), emb.n_rows());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ids: Vec<u32> = (0..n).map(|_| rng.gen_range(0..vocab as u32)).collect();
        let mut e = vec![0f32; n * c];
        emb.rows_into(&ids, &mut e)?;
        let mut uniform = |len: usize, fan_in: usize| -> Vec<f32> {
            let b = 1.0 / (fan_in as f32).sqrt();
            (0..len).map(|_| rng.gen_range(-b..b)).collect()
        };
        let (mlp, hd) = match hidden {
            None => (Vec::new(), 0),
            Some(hd) => (
                vec![
                    uniform(hd * c, c),
                    uniform(hd, c),
                    uniform(hd * hd, hd),
                    uniform(hd, hd),
                    uniform(c * hd, hd),
                    uniform(c, hd),
                ],
                hd,
            ),
        };
        let mut ad = Adapter::none(m)?;
        ad.prompt = Some(Prompt {
            n,
            c,
            emb: e,
            mlp,
            hidden: hd,
        });
        Ok(ad)
    }

    /// No adapter (full fine-tuning trains the model's own weights).
    pub fn none(m: &Model) -> Result<Adapter> {
        check_trainable(m)?;
        Ok(Adapter {
            cfg: LoraConfig {
                r: 0,
                alpha: 0.0,
                dropout: 0.0,
                targets: Vec::new(),
            },
            mods: Vec::new(),
            index: vec![[None; 7]; m.blocks().len()],
            prompt: None,
        })
    }

    pub fn zero_grads(&self) -> Grads {
        self.params().iter().map(|p| vec![0.0; p.len()]).collect()
    }

    /// Every trainable tensor, in the gradients' order.
    pub fn params(&self) -> Vec<&[f32]> {
        let mut v: Vec<&[f32]> = Vec::new();
        for m in &self.mods {
            v.push(&m.a);
            v.push(&m.b);
        }
        if let Some(p) = &self.prompt {
            v.push(&p.emb);
            v.extend(p.mlp.iter().map(|x| &x[..]));
        }
        v
    }

    pub fn params_mut(&mut self) -> Vec<&mut [f32]> {
        let mut v: Vec<&mut [f32]> = Vec::new();
        for m in &mut self.mods {
            v.push(&mut m.a);
            v.push(&mut m.b);
        }
        if let Some(p) = &mut self.prompt {
            v.push(&mut p.emb);
            v.extend(p.mlp.iter_mut().map(|x| &mut x[..]));
        }
        v
    }

    pub fn n_params(&self) -> usize {
        self.params().iter().map(|p| p.len()).sum()
    }

    pub(crate) fn module(&self, layer: usize, s: Slot) -> Option<usize> {
        let si = SLOTS.iter().position(|&x| x == s)?;
        self.index[layer][si]
    }
}
