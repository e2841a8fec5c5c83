//! Long-context settings as the CLI and the server take them: a RoPE scaling chosen at run
//! time (applied to the model's layers) and a per-sequence policy (streaming with attention
//! sinks, kNN memory, ReRoPE, Self-Extend) applied to each new KV cache.

use anyhow::{bail, Context, Result};
use ferrolm_model::longctx::{FarPositions, LongCtx, MemorySpec, Streaming};
use ferrolm_model::spec::RopeScaling;
use ferrolm_model::{KvCache, Model};

/// The long-context flags, unparsed values as given.
#[derive(Clone, Debug, Default)]
pub struct LongArgs {
    /// linear | ntk | dynamic | yarn | llama3 | longrope | rerope | leaky-rerope | none
    pub rope_scaling: Option<String>,
    pub rope_factor: Option<f32>,
    pub orig_ctx: Option<usize>,
    pub rerope_window: Option<usize>,
    /// `G:W`
    pub self_extend: Option<String>,
    pub stream_window: Option<usize>,
    pub sinks: usize,
    pub memory_topk: Option<usize>,
    pub memory_chunk: usize,
    pub memory_size: usize,
    /// Comma-separated layer numbers.
    pub memory_layers: Option<String>,
}

pub const SCALINGS: &[&str] = &[
    "none",
    "linear",
    "ntk",
    "dynamic",
    "yarn",
    "llama3",
    "longrope",
    "rerope",
    "leaky-rerope",
];

impl LongArgs {
    /// Applies `--rope-scaling` (the RoPE-frequency kinds) to the model's layers.
    pub fn apply_scaling(&self, model: &mut Model) -> Result<()> {
        let Some(kind) = self.rope_scaling.as_deref() else {
            if self.rope_factor.is_some() {
                bail!(
                    "--rope-factor needs --rope-scaling (one of {})",
                    SCALINGS.join(", ")
                );
            }
            return Ok(());
        };
        let orig = self.orig_ctx.unwrap_or(model.config.context_length).max(1);
        let factor = || -> Result<f32> {
            let f = self
                .rope_factor
                .with_context(|| format!("--rope-scaling {kind} needs --rope-factor F"))?;
            if !(f.is_finite() && f > 0.0) {
                bail!("--rope-factor must be a positive number (got {f})");
            }
            Ok(f)
        };
        let scaling = match kind {
            "none" => Some(RopeScaling::None),
            "linear" => Some(RopeScaling::Linear { factor: factor()? }),
            "ntk" => None, // a base change, below
            "dynamic" => Some(RopeScaling::Dynamic {
                factor: factor()?,
                orig,
            }),
            "yarn" => Some(RopeScaling::Yarn {
                factor: factor()?,
                orig,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attn_factor: None,
                mscale: 0.0,
                mscale_all_dim: 0.0,
                truncate: true,
            }),
            "llama3" => Some(RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                orig,
            }),
            "longrope" => {
                let has = model.config.layers.iter().any(|l| {
                    matches!(&l.position, ferrolm_model::spec::Position::Rope(r) if matches!(r.scaling, RopeScaling::LongRope { .. }))
                });
                if !has {
                    bail!("--rope-scaling longrope needs per-dimension factors, which only a model's config.json gives (rope_scaling.short_factor / long_factor); this model has none");
                }
                return Ok(());
            }
            "rerope" | "leaky-rerope" => return Ok(()), // positions at attention time: policy()
            other => bail!(
                "unknown --rope-scaling '{other}'; use one of {}",
                SCALINGS.join(", ")
            ),
        };
        let ntk = if kind == "ntk" { Some(factor()?) } else { None };
        let n = model.map_rope(|r| {
            if let Some(s) = &scaling {
                r.scaling = s.clone();
            }
            if let Some(f) = ntk {
                // NTK-aware: the base grows so the lowest frequency stretches by `f`.
                let d = r.dims as f32;
                r.theta *= f.powf(d / (d - 2.0));
            }
        });
        if n == 0 {
            bail!("--rope-scaling {kind}: this model has no RoPE layers (its positions are learned, ALiBi or relative)");
        }
        Ok(())
    }

    /// The per-sequence policy the flags ask for (inactive when none is given).
    pub fn policy(&self, model: &Model) -> Result<LongCtx> {
        let orig = self.orig_ctx.unwrap_or(model.config.context_length).max(2);
        let mut far = match self.rope_scaling.as_deref() {
            Some("rerope") => Some(FarPositions::ReRope {
                window: self.rerope_window.unwrap_or(orig / 2),
            }),
            Some("leaky-rerope") => Some(FarPositions::LeakyReRope {
                window: self.rerope_window.unwrap_or(orig / 2),
                k: self
                    .rope_factor
                    .context("--rope-scaling leaky-rerope needs --rope-factor K (> 1): far distances grow by 1/K")?,
            }),
            _ => {
                if self.rerope_window.is_some() {
                    bail!("--rerope-window needs --rope-scaling rerope or leaky-rerope");
                }
                None
            }
        };
        if let Some(se) = &self.self_extend {
            if far.is_some() {
                bail!(
                    "--self-extend and --rope-scaling {} do not combine: pick one",
                    self.rope_scaling.as_deref().unwrap_or("")
                );
            }
            let (g, w) = se
                .split_once(':')
                .and_then(|(g, w)| Some((g.trim().parse().ok()?, w.trim().parse().ok()?)))
                .with_context(|| format!("--self-extend '{se}': expected G:W (group size : neighbour window), e.g. 8:1024"))?;
            far = Some(FarPositions::SelfExtend {
                group: g,
                window: w,
            });
        }
        let stream = match self.stream_window {
            Some(w) => Some(Streaming {
                sinks: self.sinks,
                window: w,
            }),
            None if self.sinks > 0 => bail!("--sinks needs --stream-window W"),
            None => None,
        };
        let memory = match self.memory_topk {
            Some(topk) => Some(MemorySpec {
                topk,
                chunk: self.memory_chunk,
                size: self.memory_size,
                layers: match &self.memory_layers {
                    None => None,
                    Some(s) => Some(
                        s.split(',')
                            .map(|x| {
                                x.trim().parse::<usize>().ok().filter(|&l| l < model.n_blocks())
                            })
                            .collect::<Option<Vec<_>>>()
                            .with_context(|| {
                                format!("--memory-layers '{s}': expected comma-separated layer numbers below {}", model.n_blocks())
                            })?,
                    ),
                },
            }),
            None => None,
        };
        let p = LongCtx {
            far,
            stream,
            memory,
        };
        check(model, &p)?;
        Ok(p)
    }

    /// Applies the policy to a fresh cache.
    pub fn apply(&self, model: &Model, kv: &mut KvCache) -> Result<()> {
        let p = self.policy(model)?;
        if p.is_active() {
            kv.set_long(p)?;
        }
        Ok(())
    }
}

/// Whether `model` can run under policy `p` (valid, and a RoPE model when active).
pub fn check(model: &Model, p: &LongCtx) -> Result<()> {
    p.validate()?;
    if p.is_active()
        && !model
            .config
            .layers
            .iter()
            .any(|l| matches!(l.position, ferrolm_model::spec::Position::Rope(_)))
    {
        bail!("streaming, memory, ReRoPE and Self-Extend need a RoPE model; this one positions tokens otherwise");
    }
    Ok(())
}

/// StreamingLLM in the memory of one context of `n_ctx`: `sinks` first tokens and a window
/// of the rest (the server's `stream` overflow policy).
pub fn streaming(sinks: usize, n_ctx: usize) -> LongCtx {
    LongCtx {
        far: None,
        stream: Some(Streaming {
            sinks,
            window: n_ctx.saturating_sub(sinks).max(1),
        }),
        memory: None,
    }
}
