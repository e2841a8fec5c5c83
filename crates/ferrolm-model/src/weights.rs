//! Weight loading by slot: the block asks for `(Slot, layer)` and a source maps it to a tensor
//! name through its table. GGUF names are one table for every architecture (llama.cpp's
//! `LLM_TENSOR_NAMES`); HF families will bring their own tables.

use crate::linear::{DenseLinear, Linear, QuantLinear};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
use candle_core::{Device, Tensor};
use ferrolm_format::{dequantize, GgmlType, GgufFile, TensorInfo};
use std::sync::Arc;

/// A named place for a weight in the model, independent of any file's naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    TokenEmbd,
    OutputNorm,
    Output,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOut,
    AttnQNorm,
    AttnKNorm,
    PostAttnNorm,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
    PostFfnNorm,
}

/// GGUF tensor name stem for a slot (`blk.{il}.` is prefixed for per-layer slots).
fn gguf_stem(slot: Slot) -> &'static str {
    match slot {
        Slot::TokenEmbd => "token_embd",
        Slot::OutputNorm => "output_norm",
        Slot::Output => "output",
        Slot::AttnNorm => "attn_norm",
        Slot::AttnQ => "attn_q",
        Slot::AttnK => "attn_k",
        Slot::AttnV => "attn_v",
        Slot::AttnOut => "attn_output",
        Slot::AttnQNorm => "attn_q_norm",
        Slot::AttnKNorm => "attn_k_norm",
        Slot::PostAttnNorm => "post_attention_norm",
        Slot::FfnNorm => "ffn_norm",
        Slot::FfnGate => "ffn_gate",
        Slot::FfnUp => "ffn_up",
        Slot::FfnDown => "ffn_down",
        Slot::PostFfnNorm => "post_ffw_norm",
    }
}

pub fn gguf_name(slot: Slot, layer: Option<usize>, suffix: &str) -> String {
    match layer {
        Some(il) => format!("blk.{il}.{}.{suffix}", gguf_stem(slot)),
        None => format!("{}.{suffix}", gguf_stem(slot)),
    }
}

fn candle_dtype(t: GgmlType) -> Result<GgmlDType> {
    Ok(match t {
        GgmlType::F32 => GgmlDType::F32,
        GgmlType::F16 => GgmlDType::F16,
        GgmlType::BF16 => GgmlDType::BF16,
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        GgmlType::Q8_K => GgmlDType::Q8K,
        other => bail!(
            "tensor type {} cannot be used for a matrix product",
            other.name()
        ),
    })
}

/// Token embeddings read row by row from the (possibly quantized) table, never dequantized whole.
pub struct Embedding {
    file: Arc<GgufFile>,
    info: TensorInfo,
}

impl Embedding {
    pub fn dim(&self) -> usize {
        self.info.row_len()
    }
    pub fn n_rows(&self) -> usize {
        self.info.n_rows()
    }
    /// The rows for `ids` into `out (T, C)`.
    pub fn rows_into(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        let c = self.dim();
        let row_bytes = self
            .info
            .ty
            .row_bytes(c)
            .ok_or_else(|| anyhow!("bad embedding row size"))?;
        let data = self.file.tensor_bytes(&self.info);
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= self.n_rows() {
                bail!(
                    "token id {id} is outside the vocabulary of {} tokens",
                    self.n_rows()
                );
            }
            let bytes = &data[id * row_bytes..(id + 1) * row_bytes];
            dequantize(self.info.ty, bytes, &mut out[i * c..(i + 1) * c])?;
        }
        Ok(())
    }
}

/// Weights from a GGUF file, by slot.
pub struct GgufWeights {
    file: Arc<GgufFile>,
}

impl GgufWeights {
    pub fn new(file: Arc<GgufFile>) -> Self {
        Self { file }
    }

    fn info(&self, slot: Slot, layer: Option<usize>, suffix: &str) -> Option<&TensorInfo> {
        self.file.header.tensor(&gguf_name(slot, layer, suffix))
    }

    fn required(&self, slot: Slot, layer: Option<usize>) -> Result<&TensorInfo> {
        let name = gguf_name(slot, layer, "weight");
        self.file.header.tensor(&name).ok_or_else(|| {
            anyhow!("the model file has no tensor '{name}', which this architecture needs; the file may be from an unsupported variant")
        })
    }

    pub fn has(&self, slot: Slot, layer: Option<usize>) -> bool {
        self.info(slot, layer, "weight").is_some()
    }

    fn vector_of(&self, info: &TensorInfo) -> Result<Tensor> {
        let n = info.n_elements();
        let mut out = vec![0f32; n];
        dequantize(info.ty, self.file.tensor_bytes(info), &mut out)?;
        Ok(Tensor::from_vec(out, n, &Device::Cpu)?)
    }

    /// A 1-D weight (norm scale, bias) as f32.
    pub fn vector(&self, slot: Slot, layer: Option<usize>) -> Result<Tensor> {
        let info = self.required(slot, layer)?;
        self.vector_of(info)
            .with_context(|| format!("loading '{}'", info.name))
    }

    /// A matrix `(out, in)` as a linear layer, quantized types kept quantized.
    pub fn linear(&self, slot: Slot, layer: Option<usize>) -> Result<Box<dyn Linear>> {
        let info = self.required(slot, layer)?;
        let bias = match self.info(slot, layer, "bias") {
            Some(b) => Some(self.vector_of(b)?),
            None => None,
        };
        self.linear_of(info, bias)
    }

    fn linear_of(&self, info: &TensorInfo, bias: Option<Tensor>) -> Result<Box<dyn Linear>> {
        if info.dims.len() != 2 {
            bail!(
                "tensor '{}' should be a matrix but has {} dimensions",
                info.name,
                info.dims.len()
            );
        }
        let (in_dim, out_dim) = (info.dims[0], info.dims[1]);
        let bytes = self.file.tensor_bytes(info);
        if matches!(info.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            let mut w = vec![0f32; in_dim * out_dim];
            dequantize(info.ty, bytes, &mut w)?;
            let w = Tensor::from_vec(w, (out_dim, in_dim), &Device::Cpu)?;
            return Ok(Box::new(DenseLinear::new(w, bias)));
        }
        if let Some(l) =
            crate::linear::KernelLinear::new(self.file.clone(), info.clone(), bias.clone())
        {
            return Ok(Box::new(l));
        }
        let q = qtensor_from_ggml(
            candle_dtype(info.ty)?,
            bytes,
            vec![out_dim, in_dim],
            &Device::Cpu,
        )
        .with_context(|| format!("loading '{}'", info.name))?;
        Ok(Box::new(QuantLinear::new(
            QMatMul::from_qtensor(q)?,
            bias,
            in_dim,
            out_dim,
            info.ty.name().to_string(),
        )))
    }

    pub fn embedding(&self) -> Result<Embedding> {
        let info = self.required(Slot::TokenEmbd, None)?.clone();
        if info.dims.len() != 2 {
            bail!("token embedding '{}' should be a matrix", info.name);
        }
        Ok(Embedding {
            file: self.file.clone(),
            info,
        })
    }

    /// The output head: `output.weight`, or the token embeddings when tied.
    pub fn output(&self, tied: bool) -> Result<Box<dyn Linear>> {
        let slot = if tied { Slot::TokenEmbd } else { Slot::Output };
        let info = self.required(slot, None)?;
        self.linear_of(info, None)
    }
}
