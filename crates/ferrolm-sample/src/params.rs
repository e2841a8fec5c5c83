//! User-facing sampling parameters, their validation, and the standard chain builder.
//!
//! Standard chain (llama.cpp's common sampler order), disabled stages omitted:
//! `logit-bias -> penalties -> top-k -> tail-free -> typical -> top-p -> min-p -> temp -> dist`.
//! With `temperature <= 0`: `logit-bias -> penalties -> greedy`.

use crate::{
    Dist, Greedy, LogitBias, MinP, Mirostat2, Penalties, PenaltyConfig, SamplerChain, TailFree,
    Temperature, TokenId, TopK, TopP, Typical,
};

/// Seed used when the caller gives none, so runs are reproducible by default.
pub const DEFAULT_SEED: u64 = 0x5EED;

/// Why a [`SamplingParams`] was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    /// A parameter is outside its valid range.
    #[error("{name} must be {expected}, got {got}")]
    OutOfRange {
        /// Field name, as in [`SamplingParams`].
        name: &'static str,
        /// The valid range, in words, e.g. `"in (0, 1]"`.
        expected: &'static str,
        /// The offending value, formatted.
        got: String,
    },
}

/// User-facing sampling parameters. Neutral values switch a stage off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `<= 0` means greedy decoding. Default 0.8.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = off. Default 40.
    pub top_k: usize,
    /// Nucleus mass in (0, 1]; 1 = off. Default 0.95.
    pub top_p: f32,
    /// Keep tokens with prob >= `min_p` * max prob, in [0, 1]; 0 = off. Default 0.05.
    pub min_p: f32,
    /// Locally typical mass in (0, 1]; 1 = off. Default 1.
    pub typical_p: f32,
    /// Tail-free `z` in (0, 1]; 1 = off. Default 1.
    pub tfs_z: f32,
    /// Repetition penalty, > 0; 1 = off. Default 1.
    pub repeat_penalty: f32,
    /// Window of recent tokens the penalties look at; 0 = off. Default 64.
    pub repeat_last_n: usize,
    /// Subtracted per occurrence in the window; 0 = off. Default 0.
    pub frequency_penalty: f32,
    /// Subtracted once if present in the window; 0 = off. Default 0.
    pub presence_penalty: f32,
    /// `(token, bias)` added to logits; `f32::NEG_INFINITY` bans a token.
    pub logit_bias: Vec<(TokenId, f32)>,
    /// RNG seed for `dist`. Default [`DEFAULT_SEED`].
    pub seed: u64,
    /// Mirostat version: 0 = off (default), 2 = Mirostat 2.0 in place of top-k/top-p/min-p/
    /// typical/tail-free and `dist` (llama.cpp's `--mirostat 2`).
    pub mirostat: u8,
    /// Mirostat's target surprise in bits (perplexity `2^tau`). Default 5.
    pub mirostat_tau: f32,
    /// Mirostat's learning rate. Default 0.1.
    pub mirostat_eta: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            typical_p: 1.0,
            tfs_z: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: DEFAULT_SEED,
            mirostat: 0,
            mirostat_tau: 5.0,
            mirostat_eta: 0.1,
        }
    }
}

fn check(
    ok: bool,
    name: &'static str,
    expected: &'static str,
    got: f32,
) -> Result<(), SampleError> {
    if ok {
        Ok(())
    } else {
        Err(SampleError::OutOfRange {
            name,
            expected,
            got: got.to_string(),
        })
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0), everything else at its default.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// True when the chain ends in argmax rather than random sampling.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Checks every field's range.
    ///
    /// # Errors
    /// [`SampleError::OutOfRange`] naming the first offending field.
    pub fn validate(&self) -> Result<(), SampleError> {
        let unit_open_closed = |x: f32| x > 0.0 && x <= 1.0; // false for NaN
        check(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "temperature",
            "a finite number >= 0",
            self.temperature,
        )?;
        check(
            unit_open_closed(self.top_p),
            "top_p",
            "in (0, 1]",
            self.top_p,
        )?;
        check(
            (0.0..=1.0).contains(&self.min_p),
            "min_p",
            "in [0, 1]",
            self.min_p,
        )?;
        check(
            unit_open_closed(self.typical_p),
            "typical_p",
            "in (0, 1]",
            self.typical_p,
        )?;
        check(
            unit_open_closed(self.tfs_z),
            "tfs_z",
            "in (0, 1]",
            self.tfs_z,
        )?;
        check(
            self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0,
            "repeat_penalty",
            "a finite number > 0",
            self.repeat_penalty,
        )?;
        check(
            self.frequency_penalty.is_finite(),
            "frequency_penalty",
            "finite",
            self.frequency_penalty,
        )?;
        check(
            self.presence_penalty.is_finite(),
            "presence_penalty",
            "finite",
            self.presence_penalty,
        )?;
        if self.mirostat != 0 && self.mirostat != 2 {
            return Err(SampleError::OutOfRange {
                name: "mirostat",
                expected: "0 (off) or 2 (Mirostat 2.0)",
                got: self.mirostat.to_string(),
            });
        }
        check(
            self.mirostat_tau.is_finite() && self.mirostat_tau > 0.0,
            "mirostat_tau",
            "a finite number > 0",
            self.mirostat_tau,
        )?;
        check(
            self.mirostat_eta.is_finite() && self.mirostat_eta > 0.0,
            "mirostat_eta",
            "a finite number > 0",
            self.mirostat_eta,
        )?;
        for &(_, bias) in &self.logit_bias {
            check(
                !bias.is_nan(),
                "logit_bias",
                "a number (+/-inf allowed)",
                bias,
            )?;
        }
        Ok(())
    }

    fn penalty_config(&self) -> PenaltyConfig {
        PenaltyConfig {
            last_n: self.repeat_last_n,
            repeat: self.repeat_penalty,
            frequency: self.frequency_penalty,
            presence: self.presence_penalty,
        }
    }

    /// Builds the standard chain, leaving out stages whose parameter is neutral.
    /// Call [`validate`](Self::validate) first: out-of-range values are not rejected here
    /// (e.g. `top_p > 1` just disables top-p).
    pub fn build_chain(&self) -> SamplerChain {
        let mut chain = if self.is_greedy() {
            SamplerChain::new(Box::new(Greedy))
        } else if self.mirostat == 2 {
            SamplerChain::new(Box::new(Mirostat2::new(
                self.mirostat_tau,
                self.mirostat_eta,
                self.seed,
            )))
        } else {
            SamplerChain::new(Box::new(Dist::new(self.seed)))
        };
        if !self.logit_bias.is_empty() {
            chain.push(Box::new(LogitBias::new(self.logit_bias.clone())));
        }
        let penalties = self.penalty_config();
        if !penalties.is_disabled() {
            chain.push(Box::new(Penalties::new(penalties)));
        }
        if self.is_greedy() {
            return chain;
        }
        if self.mirostat == 2 {
            if self.temperature != 1.0 {
                chain.push(Box::new(Temperature(self.temperature)));
            }
            return chain;
        }
        if self.top_k > 0 {
            chain.push(Box::new(TopK(self.top_k)));
        }
        if self.tfs_z < 1.0 {
            chain.push(Box::new(TailFree(self.tfs_z)));
        }
        if self.typical_p < 1.0 {
            chain.push(Box::new(Typical(self.typical_p)));
        }
        if self.top_p < 1.0 {
            chain.push(Box::new(TopP(self.top_p)));
        }
        if self.min_p > 0.0 {
            chain.push(Box::new(MinP(self.min_p)));
        }
        if self.temperature != 1.0 {
            chain.push(Box::new(Temperature(self.temperature)));
        }
        chain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_chain_order() {
        assert_eq!(
            SamplingParams::default().build_chain().describe(),
            "top-k(40) -> top-p(0.95) -> min-p(0.05) -> temp(0.8) -> dist(seed=24301)"
        );
    }

    #[test]
    fn full_chain_order() {
        let p = SamplingParams {
            temperature: 1.0,
            typical_p: 0.9,
            tfs_z: 0.95,
            repeat_penalty: 1.1,
            logit_bias: vec![(2, f32::NEG_INFINITY)],
            seed: 7,
            ..SamplingParams::default()
        };
        assert_eq!(
            p.build_chain().describe(),
            "logit-bias(1 tokens) -> penalties(last_n=64, repeat=1.1, freq=0, presence=0) \
             -> top-k(40) -> tail-free(0.95) -> typical(0.9) -> top-p(0.95) -> min-p(0.05) \
             -> dist(seed=7)"
        );
    }

    #[test]
    fn mirostat_chain() {
        let p = SamplingParams {
            mirostat: 2,
            repeat_penalty: 1.1,
            seed: 5,
            ..SamplingParams::default()
        };
        p.validate().unwrap();
        assert_eq!(
            p.build_chain().describe(),
            "penalties(last_n=64, repeat=1.1, freq=0, presence=0) -> temp(0.8) \
             -> mirostat-v2(tau=5, eta=0.1, seed=5)"
        );
        let bad = SamplingParams {
            mirostat: 1,
            ..SamplingParams::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("mirostat"));
    }

    #[test]
    fn greedy_chain() {
        assert_eq!(SamplingParams::greedy().build_chain().describe(), "greedy");
        let p = SamplingParams {
            temperature: -1.0,
            presence_penalty: 0.5,
            logit_bias: vec![(0, 1.0)],
            ..SamplingParams::default()
        };
        assert_eq!(
            p.build_chain().describe(),
            "logit-bias(1 tokens) -> penalties(last_n=64, repeat=1, freq=0, presence=0.5) -> greedy"
        );
    }

    #[test]
    fn neutral_params_leave_only_dist() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.5,
            repeat_last_n: 0,
            ..SamplingParams::default()
        };
        assert_eq!(p.build_chain().describe(), "dist(seed=24301)");
    }

    #[test]
    fn validate_messages() {
        let err = |p: SamplingParams| p.validate().unwrap_err().to_string();
        assert!(SamplingParams::default().validate().is_ok());
        assert!(SamplingParams::greedy().validate().is_ok());
        assert_eq!(
            err(SamplingParams {
                top_p: 1.5,
                ..Default::default()
            }),
            "top_p must be in (0, 1], got 1.5"
        );
        assert_eq!(
            err(SamplingParams {
                top_p: 0.0,
                ..Default::default()
            }),
            "top_p must be in (0, 1], got 0"
        );
        assert_eq!(
            err(SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            }),
            "temperature must be a finite number >= 0, got NaN"
        );
        assert_eq!(
            err(SamplingParams {
                min_p: -0.1,
                ..Default::default()
            }),
            "min_p must be in [0, 1], got -0.1"
        );
        assert_eq!(
            err(SamplingParams {
                repeat_penalty: 0.0,
                ..Default::default()
            }),
            "repeat_penalty must be a finite number > 0, got 0"
        );
        assert_eq!(
            err(SamplingParams {
                logit_bias: vec![(1, f32::NAN)],
                ..Default::default()
            }),
            "logit_bias must be a number (+/-inf allowed), got NaN"
        );
        for bad in [
            SamplingParams {
                typical_p: 2.0,
                ..Default::default()
            },
            SamplingParams {
                tfs_z: -1.0,
                ..Default::default()
            },
            SamplingParams {
                frequency_penalty: f32::INFINITY,
                ..Default::default()
            },
            SamplingParams {
                presence_penalty: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn greedy_chain_is_argmax_with_bias() {
        let mut chain = SamplingParams {
            logit_bias: vec![(2, f32::NEG_INFINITY)],
            ..SamplingParams::greedy()
        }
        .build_chain();
        assert_eq!(chain.sample(&[0.0, 1.0, 5.0]), 1);
    }
}
