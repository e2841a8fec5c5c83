//! Weight loading by slot: the model builder asks for a [`Key`] (slot, layer, expert, stack)
//! and a [`WeightSource`] maps it to a tensor through its table. GGUF names are one table for
//! every architecture (llama.cpp's `LLM_TENSOR_NAMES`); each HF family brings its own table
//! ([`HfTable`], in its `arch/` file), read by [`HfWeights`].

use crate::linear::{DenseLinear, Linear, QuantLinear};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
use candle_core::{Device, Tensor};
use ferrolm_format::{dequantize, GgmlType, GgufFile, TensorInfo};
use std::sync::Arc;

/// A named place for a weight in the model, independent of any file's naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    /// Learned absolute positions.
    PosEmbd,
    /// Token-type (segment) embeddings.
    TypeEmbd,
    /// The norm over the summed embeddings.
    EmbedNorm,
    /// Fused q, k, v (split at load by the table's [`QkvLayout`]).
    AttnQkv,
    /// The relative-position bias table (first layer of a stack).
    RelBias,
    CrossNorm,
    CrossQ,
    CrossK,
    CrossV,
    CrossOut,
    /// MoE router `(experts, C)`.
    FfnRouter,
    /// Expert `E`'s projections (`{E}` in HF names).
    ExpGate,
    ExpUp,
    ExpDown,
    /// The shared expert and its `(1, C)` gate.
    ShGate,
    ShUp,
    ShDown,
    ShExpGate,
    /// A bias added to the logits (BART's `final_logits_bias`, a `(1, V)` buffer).
    LogitsBias,
}

/// Where a weight sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub slot: Slot,
    pub layer: Option<usize>,
    pub expert: Option<usize>,
    /// In the encoder stack of an encoder-decoder model.
    pub encoder: bool,
}

impl Key {
    pub fn global(slot: Slot) -> Key {
        Key {
            slot,
            layer: None,
            expert: None,
            encoder: false,
        }
    }
    pub fn layer(slot: Slot, il: usize) -> Key {
        Key {
            layer: Some(il),
            ..Key::global(slot)
        }
    }
    pub fn expert(self, e: usize) -> Key {
        Key {
            expert: Some(e),
            ..self
        }
    }
    pub fn enc(self, encoder: bool) -> Key {
        Key { encoder, ..self }
    }
}

/// What the model builder needs from a weight file.
pub trait WeightSource {
    fn has(&self, k: Key) -> bool;
    /// A norm scale as f32 (with the family's load-time fix-ups).
    fn vector(&self, k: Key) -> Result<Vec<f32>>;
    /// Any weight's values as stored (row-major f32), for tables read whole.
    fn raw(&self, k: Key) -> Result<Vec<f32>>;
    /// The bias beside a weight, if the file has one.
    fn bias(&self, k: Key) -> Result<Option<Vec<f32>>>;
    /// A matrix `(out, in)` as a linear layer (with its bias when present).
    fn linear(&self, k: Key) -> Result<Box<dyn Linear>>;
    /// A table read row by row (token, position, type embeddings).
    fn embedding(&self, k: Key) -> Result<Embedding>;
    /// Norm weights are stored as `w - 1` (Gemma's HF checkpoints): add one at load.
    fn norm_plus_one(&self) -> bool {
        false
    }
    /// The tensor name behind a key, for messages.
    fn describe(&self, k: Key) -> String;
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
        Slot::PosEmbd => "position_embd",
        Slot::TypeEmbd => "token_types",
        Slot::EmbedNorm => "token_embd_norm",
        Slot::AttnQkv => "attn_qkv",
        Slot::FfnRouter => "ffn_gate_inp",
        Slot::ShGate => "ffn_gate_shexp",
        Slot::ShUp => "ffn_up_shexp",
        Slot::ShDown => "ffn_down_shexp",
        Slot::ShExpGate => "ffn_gate_inp_shexp",
        Slot::CrossNorm => "cross_attn_norm",
        Slot::CrossQ => "cross_attn_q",
        Slot::CrossK => "cross_attn_k",
        Slot::CrossV => "cross_attn_v",
        Slot::CrossOut => "cross_attn_o",
        Slot::RelBias => "attn_rel_b",
        Slot::ExpGate => "ffn_gate_exp",
        Slot::ExpUp => "ffn_up_exp",
        Slot::ExpDown => "ffn_down_exp",
        Slot::LogitsBias => "logits_bias",
    }
}

/// The GGUF name of a key: llama.cpp's names (`blk.{L}.attn_q.weight`, `enc.` before the
/// encoder's), and `blk.{L}.ffn_gate_exp.{E}` for one expert (ferrolm's own: llama.cpp stacks
/// experts in one 3-D tensor).
pub fn gguf_key_name(k: Key, suffix: &str) -> String {
    let stem = gguf_stem(k.slot);
    let base = match (k.layer, k.expert) {
        (Some(l), Some(e)) => format!("blk.{l}.{stem}.{e}"),
        (Some(l), None) => format!("blk.{l}.{stem}"),
        (None, _) => stem.to_string(),
    };
    let enc = if k.encoder { "enc." } else { "" };
    format!("{enc}{base}.{suffix}")
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

/// An embedding table read row by row: in place from a (possibly quantized) GGUF tensor, never
/// dequantized whole, or a dense f32 table.
pub enum Embedding {
    Gguf {
        file: Arc<GgufFile>,
        info: TensorInfo,
    },
    Dense {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
}

impl Embedding {
    pub fn dim(&self) -> usize {
        match self {
            Embedding::Gguf { info, .. } => info.row_len(),
            Embedding::Dense { cols, .. } => *cols,
        }
    }
    pub fn n_rows(&self) -> usize {
        match self {
            Embedding::Gguf { info, .. } => info.n_rows(),
            Embedding::Dense { rows, .. } => *rows,
        }
    }
    /// The rows for `ids` into `out (T, C)`; `add` sums into `out` instead of overwriting.
    pub fn rows_into(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        self.rows_op(ids, out, false)
    }
    pub fn add_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        self.rows_op(ids, out, true)
    }
    /// The table as mutable dense f32, widened first if it is stored in GGUF blocks (full
    /// fine-tuning updates its rows in place).
    pub fn dense_mut(&mut self) -> Result<&mut [f32]> {
        if let Embedding::Gguf { .. } = self {
            let (rows, cols) = (self.n_rows(), self.dim());
            let ids: Vec<u32> = (0..rows as u32).collect();
            let mut data = vec![0f32; rows * cols];
            self.rows_into(&ids, &mut data)?;
            *self = Embedding::Dense { rows, cols, data };
        }
        match self {
            Embedding::Dense { data, .. } => Ok(data),
            Embedding::Gguf { .. } => unreachable!(),
        }
    }
    fn rows_op(&self, ids: &[u32], out: &mut [f32], add: bool) -> Result<()> {
        let c = self.dim();
        let mut tmp = vec![0f32; if add { c } else { 0 }];
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= self.n_rows() {
                bail!(
                    "id {id} is outside the embedding table of {} rows",
                    self.n_rows()
                );
            }
            let dst = &mut out[i * c..(i + 1) * c];
            let row: &mut [f32] = if add { &mut tmp } else { dst };
            match self {
                Embedding::Gguf { file, info } => {
                    let row_bytes = info
                        .ty
                        .row_bytes(c)
                        .ok_or_else(|| anyhow!("bad embedding row size"))?;
                    let bytes = &file.tensor_bytes(info)[id * row_bytes..(id + 1) * row_bytes];
                    dequantize(info.ty, bytes, row)?;
                }
                Embedding::Dense { data, .. } => row.copy_from_slice(&data[id * c..(id + 1) * c]),
            }
            if add {
                out[i * c..(i + 1) * c]
                    .iter_mut()
                    .zip(&tmp)
                    .for_each(|(o, t)| *o += t);
            }
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

    fn info(&self, k: Key, suffix: &str) -> Option<&TensorInfo> {
        self.file.header.tensor(&gguf_key_name(k, suffix))
    }

    fn required(&self, k: Key) -> Result<&TensorInfo> {
        let name = gguf_key_name(k, "weight");
        self.file.header.tensor(&name).ok_or_else(|| {
            anyhow!("the model file has no tensor '{name}', which this architecture needs; the file may be from an unsupported variant")
        })
    }

    fn vector_of(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let mut out = vec![0f32; info.n_elements()];
        dequantize(info.ty, self.file.tensor_bytes(info), &mut out)
            .with_context(|| format!("loading '{}'", info.name))?;
        Ok(out)
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
}

impl WeightSource for GgufWeights {
    fn has(&self, k: Key) -> bool {
        self.info(k, "weight").is_some()
    }
    fn vector(&self, k: Key) -> Result<Vec<f32>> {
        self.vector_of(self.required(k)?)
    }
    fn raw(&self, k: Key) -> Result<Vec<f32>> {
        self.vector_of(self.required(k)?)
    }
    fn bias(&self, k: Key) -> Result<Option<Vec<f32>>> {
        self.info(k, "bias").map(|b| self.vector_of(b)).transpose()
    }
    fn linear(&self, k: Key) -> Result<Box<dyn Linear>> {
        let info = self.required(k)?;
        let bias = self
            .bias(k)?
            .map(|b| Tensor::from_vec(b.clone(), b.len(), &Device::Cpu))
            .transpose()?;
        self.linear_of(info, bias)
    }
    fn describe(&self, k: Key) -> String {
        gguf_key_name(k, "weight")
    }
    fn embedding(&self, k: Key) -> Result<Embedding> {
        let info = self.required(k)?.clone();
        if info.dims.len() != 2 {
            bail!("embedding '{}' should be a matrix", info.name);
        }
        Ok(Embedding::Gguf {
            file: self.file.clone(),
            info,
        })
    }
}

/// How a fused `(q; k; v)` projection orders its output rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvLayout {
    /// All q rows, then k, then v (GPT-2, MPT, GPT-BigCode, multi-query Falcon).
    Concat,
    /// Per head `(q_h, k_h, v_h)` (GPT-NeoX, BLOOM, Falcon without GQA).
    PerHead,
    /// Per KV group: its `H / Hkv` query heads, then its k and v (Falcon's new decoder).
    Grouped,
}

/// Rows of the fused matrix that hold q, k and v, in order.
pub fn qkv_rows(layout: QkvLayout, h: usize, hkv: usize, d: usize) -> [Vec<usize>; 3] {
    let span = |start: usize| start..start + d;
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    match layout {
        QkvLayout::Concat => {
            q.extend(0..h * d);
            k.extend(h * d..(h + hkv) * d);
            v.extend((h + hkv) * d..(h + 2 * hkv) * d);
        }
        QkvLayout::PerHead => {
            for hh in 0..h {
                q.extend(span(hh * 3 * d));
                k.extend(span((hh * 3 + 1) * d));
                v.extend(span((hh * 3 + 2) * d));
            }
        }
        QkvLayout::Grouped => {
            let rep = h / hkv;
            for g in 0..hkv {
                let base = g * (rep + 2) * d;
                for j in 0..rep {
                    q.extend(span(base + j * d));
                }
                k.extend(span(base + rep * d));
                v.extend(span(base + (rep + 1) * d));
            }
        }
    }
    [q, k, v]
}

/// A Hugging Face family's tensor names: module paths with `{L}` (layer) and `{E}` (expert);
/// `.weight` / `.bias` are appended. A slot that is absent from the table is absent from the
/// family. `encoder` holds the encoder stack's names of encoder-decoder models.
#[derive(Debug)]
pub struct HfTable {
    pub names: &'static [(Slot, &'static str)],
    /// Names shared with a related family, looked up after `names` (which may override them).
    pub also: &'static [(Slot, &'static str)],
    pub encoder: &'static [(Slot, &'static str)],
    pub qkv: QkvLayout,
    /// Matrices stored `(in, out)` (GPT-2's Conv1D), transposed at load.
    pub transposed: bool,
    /// Norm scales stored as `w - 1` (Gemma).
    pub norm_plus_one: bool,
}

impl HfTable {
    pub const fn new(names: &'static [(Slot, &'static str)]) -> HfTable {
        HfTable {
            names,
            also: &[],
            encoder: &[],
            qkv: QkvLayout::Concat,
            transposed: false,
            norm_plus_one: false,
        }
    }
}

/// A projection's `(out, in, row-major weights, bias)`.
pub type DenseParts = (usize, usize, Vec<f32>, Option<Vec<f32>>);

/// Weights from a Hugging Face directory (safetensors), named by the family's [`HfTable`].
pub struct HfWeights {
    dir: ferrolm_format::hf::HfDir,
    table: &'static HfTable,
    /// `(H, Hkv, D)`, for splitting fused q/k/v.
    heads: (usize, usize, usize),
}

impl HfWeights {
    pub fn new(
        dir: ferrolm_format::hf::HfDir,
        table: &'static HfTable,
        heads: (usize, usize, usize),
    ) -> Self {
        Self { dir, table, heads }
    }

    /// The module path for `k`, or `None` when the family has no such weight.
    fn path(&self, k: Key) -> Option<String> {
        let names: &[&[(Slot, &str)]] = if k.encoder {
            &[self.table.encoder]
        } else {
            &[self.table.names, self.table.also]
        };
        let (_, t) = names
            .iter()
            .flat_map(|n| n.iter())
            .find(|(s, _)| *s == k.slot)?;
        let mut p = t.to_string();
        if let Some(il) = k.layer {
            p = p.replace("{L}", &il.to_string());
        }
        if let Some(e) = k.expert {
            p = p.replace("{E}", &e.to_string());
        }
        Some(p)
    }

    /// A tensor by name: exact, or under a prefix the file adds or lacks (`model.`, `bert.`, ...).
    fn find(&self, name: &str) -> Option<ferrolm_format::hf::HfTensor<'_>> {
        if let Some(t) = self.dir.tensor(name) {
            return Some(t);
        }
        if let Some((_, rest)) = name.split_once('.') {
            if let Some(t) = self.dir.tensor(rest) {
                return Some(t);
            }
        }
        let suffix = format!(".{name}");
        let mut hits = self
            .dir
            .tensor_names()
            .into_iter()
            .filter(|n| n.ends_with(&suffix));
        match (hits.next(), hits.next()) {
            (Some(one), None) => self.dir.tensor(one),
            _ => None,
        }
    }

    /// `path.suffix` for the first of the path's `|`-separated alternatives that the file has
    /// (a bare `path` for weights stored without a suffix, like BART's `final_logits_bias`).
    fn tensor(&self, k: Key, suffix: &str) -> Option<ferrolm_format::hf::HfTensor<'_>> {
        let p = self.path(k)?;
        p.split('|').find_map(|p| {
            self.find(&format!("{p}.{suffix}")).or_else(|| {
                if suffix == "weight" {
                    self.find(p)
                } else {
                    None
                }
            })
        })
    }

    fn required(&self, k: Key) -> Result<ferrolm_format::hf::HfTensor<'_>> {
        match self.path(k) {
            None => bail!("internal: the family's tensor table has no entry for {:?}", k.slot),
            Some(p) => self.tensor(k, "weight").ok_or_else(|| {
                anyhow!("the model directory has no tensor '{p}.weight', which this architecture needs (checkpoint incomplete or of another variant)")
            }),
        }
    }

    /// A matrix as `(out, in, row-major f32)`, transposed when the family stores `(in, out)`.
    fn matrix(&self, k: Key) -> Result<(usize, usize, Vec<f32>)> {
        let t = self.required(k)?;
        if t.shape.len() != 2 {
            bail!(
                "tensor '{}' should be a matrix but has shape {:?}",
                t.name,
                t.shape
            );
        }
        let data = t.to_f32();
        let (r, c) = (t.shape[0], t.shape[1]);
        if self.table.transposed && k.slot != Slot::TokenEmbd && k.slot != Slot::PosEmbd {
            let mut out = vec![0f32; r * c];
            for i in 0..r {
                for j in 0..c {
                    out[j * r + i] = data[i * c + j];
                }
            }
            Ok((c, r, out))
        } else {
            Ok((r, c, data))
        }
    }

    fn dense(
        w: Vec<f32>,
        out: usize,
        inp: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Box<dyn Linear>> {
        if let Some(b) = &bias {
            if b.len() != out {
                bail!("a bias of {} values for a matrix of {out} rows", b.len());
            }
        }
        let w = Tensor::from_vec(w, (out, inp), &Device::Cpu)?;
        let b = bias
            .map(|b| Tensor::from_vec(b, out, &Device::Cpu))
            .transpose()?;
        Ok(Box::new(DenseLinear::new(w, b)))
    }

    /// A projection as `(out, in, row-major weights, bias)`: fused q/k/v split, `(in, out)`
    /// storage transposed. What [`WeightSource::linear`] builds on, and what `convert` writes.
    pub fn dense_parts(&self, k: Key) -> Result<DenseParts> {
        if matches!(k.slot, Slot::AttnQ | Slot::AttnK | Slot::AttnV) && self.path(k).is_none() {
            return self.split_fused(k);
        }
        let (out, inp, w) = self.matrix(k)?;
        let bias = if k.slot == Slot::TokenEmbd {
            None
        } else {
            self.bias(k)?
        };
        Ok((out, inp, w, bias))
    }

    /// q, k or v cut from the fused projection.
    fn split_fused(&self, k: Key) -> Result<DenseParts> {
        let fused = Key {
            slot: Slot::AttnQkv,
            ..k
        };
        let (rows, cols, w) = self.matrix(fused)?;
        let (h, hkv, d) = self.heads;
        let [q, kk, v] = qkv_rows(self.table.qkv, h, hkv, d);
        if rows != (h + 2 * hkv) * d {
            bail!(
                "fused q/k/v projection has {rows} rows; {h} heads and {hkv} KV heads of {d} need {}",
                (h + 2 * hkv) * d
            );
        }
        let pick = match k.slot {
            Slot::AttnQ => q,
            Slot::AttnK => kk,
            _ => v,
        };
        let mut out = Vec::with_capacity(pick.len() * cols);
        for &r in &pick {
            out.extend_from_slice(&w[r * cols..(r + 1) * cols]);
        }
        let bias = match self.bias(fused)? {
            Some(b) if b.len() != rows => bail!(
                "tensor '{}' has a bias of {} values for {rows} rows",
                self.describe(fused),
                b.len()
            ),
            b => b.map(|b| pick.iter().map(|&r| b[r]).collect()),
        };
        Ok((pick.len(), cols, out, bias))
    }
}

impl WeightSource for HfWeights {
    fn has(&self, k: Key) -> bool {
        self.tensor(k, "weight").is_some()
            || (matches!(k.slot, Slot::AttnQ | Slot::AttnK | Slot::AttnV)
                && self.path(k).is_none()
                && self.has(Key {
                    slot: Slot::AttnQkv,
                    ..k
                }))
    }
    fn raw(&self, k: Key) -> Result<Vec<f32>> {
        Ok(self.required(k)?.to_f32())
    }
    fn vector(&self, k: Key) -> Result<Vec<f32>> {
        let t = self.required(k)?;
        let mut v = t.to_f32();
        if self.table.norm_plus_one {
            v.iter_mut().for_each(|x| *x += 1.0);
        }
        Ok(v)
    }
    fn bias(&self, k: Key) -> Result<Option<Vec<f32>>> {
        Ok(self.tensor(k, "bias").map(|t| t.to_f32()))
    }
    fn linear(&self, k: Key) -> Result<Box<dyn Linear>> {
        let (out, inp, w, bias) = self.dense_parts(k)?;
        Self::dense(w, out, inp, bias)
    }
    fn embedding(&self, k: Key) -> Result<Embedding> {
        let t = self.required(k)?;
        if t.shape.len() != 2 {
            bail!(
                "embedding '{}' should be a matrix, found shape {:?}",
                t.name,
                t.shape
            );
        }
        Ok(Embedding::Dense {
            rows: t.shape[0],
            cols: t.shape[1],
            data: t.to_f32(),
        })
    }
    fn norm_plus_one(&self) -> bool {
        self.table.norm_plus_one
    }
    fn describe(&self, k: Key) -> String {
        match self.path(k) {
            Some(p) => format!("{}.weight", p.split('|').next().unwrap_or("")),
            None if matches!(k.slot, Slot::AttnQ | Slot::AttnK | Slot::AttnV) => {
                self.describe(Key {
                    slot: Slot::AttnQkv,
                    ..k
                })
            }
            None => format!("{:?}", k.slot),
        }
    }
}

/// How the model builder used a weight (see [`Recorder`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Vector,
    Raw,
    Bias,
    Linear,
    Embedding,
}

/// A weight source that logs every weight the builder asks for: `convert` builds the model
/// once through it, then writes exactly those weights.
pub struct Recorder<'a> {
    pub inner: &'a dyn WeightSource,
    pub log: std::cell::RefCell<Vec<(Key, Use)>>,
}

impl<'a> Recorder<'a> {
    pub fn new(inner: &'a dyn WeightSource) -> Self {
        Self {
            inner,
            log: Default::default(),
        }
    }
    fn note(&self, k: Key, u: Use) {
        let mut log = self.log.borrow_mut();
        if !log.contains(&(k, u)) {
            log.push((k, u));
        }
    }
}

impl WeightSource for Recorder<'_> {
    fn has(&self, k: Key) -> bool {
        self.inner.has(k)
    }
    fn vector(&self, k: Key) -> Result<Vec<f32>> {
        self.note(k, Use::Vector);
        self.inner.vector(k)
    }
    fn raw(&self, k: Key) -> Result<Vec<f32>> {
        self.note(k, Use::Raw);
        self.inner.raw(k)
    }
    fn bias(&self, k: Key) -> Result<Option<Vec<f32>>> {
        self.note(k, Use::Bias);
        self.inner.bias(k)
    }
    fn linear(&self, k: Key) -> Result<Box<dyn Linear>> {
        self.note(k, Use::Linear);
        self.inner.linear(k)
    }
    fn embedding(&self, k: Key) -> Result<Embedding> {
        self.note(k, Use::Embedding);
        self.inner.embedding(k)
    }
    fn norm_plus_one(&self) -> bool {
        self.inner.norm_plus_one()
    }
    fn describe(&self, k: Key) -> String {
        self.inner.describe(k)
    }
}
