//! The linear layer is the extension point: dense, GGUF-quantized (and later LoRA-wrapped)
//! matrices sit behind one trait, so the block never names a concrete kind.

use anyhow::Result;
use candle_core::quantized::QMatMul;
use candle_core::{Module, Tensor};

/// `y = x W^T (+ b)` for `x: (.., in)` and `y: (.., out)`.
pub trait Linear: Send + Sync {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// `y (rows, out) = x (rows, in) W^T (+ b)` on plain row-major buffers (the block's path).
    /// The default goes through `forward`; kernel-backed layers write `y` directly.
    fn forward_slice(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        let rows = x.len() / self.in_dim();
        let t = Tensor::from_slice(x, (rows, self.in_dim()), &candle_core::Device::Cpu)?;
        let out: Vec<f32> = self.forward(&t)?.flatten_all()?.to_vec1()?;
        y.copy_from_slice(&out);
        Ok(())
    }
    fn in_dim(&self) -> usize;
    fn out_dim(&self) -> usize;
    /// A short label for `info` and profiles, e.g. `Q4_K` or `F32`.
    fn kind(&self) -> String;
    /// The bias added after the product, if any (for conversions).
    fn bias_values(&self) -> Result<Option<Vec<f32>>> {
        Ok(None)
    }
    /// Rows `r0..r1` of the weight `(out, in)` widened to f32 into `out ((r1 - r0), in)`:
    /// training reads a frozen matrix this way, a tile at a time (a quantized matrix is never
    /// dequantized whole).
    fn weight_rows(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        let _ = (r0, r1, out);
        anyhow::bail!(
            "training through {} matrices is not supported yet; convert or quantize the model to a GGUF block type (q8_0, q4_k, ...) or f32/f16",
            self.kind()
        )
    }
    /// The weight `(out, in)` and bias as mutable f32 (full fine-tuning updates them in
    /// place); `None` for layers not stored as dense f32 (widen them first).
    fn params_mut(&mut self) -> Option<(&mut [f32], Option<&mut [f32]>)> {
        None
    }
    /// `dx (rows, in) += dy (rows, out) · W`: the input gradient through the frozen matrix,
    /// 64 weight rows at a time.
    fn backward_input(&self, dy: &[f32], dx: &mut [f32]) -> Result<()> {
        let (i, o) = (self.in_dim(), self.out_dim());
        let rows = dy.len() / o;
        const TILE: usize = 64;
        let mut w = vec![0f32; TILE * i];
        for r0 in (0..o).step_by(TILE) {
            let r1 = (r0 + TILE).min(o);
            self.weight_rows(r0, r1, &mut w[..(r1 - r0) * i])?;
            // dx += dy[:, r0..r1] · W[r0..r1, :]
            let n = r1 - r0;
            crate::dense::mm(
                rows,
                n,
                i,
                crate::dense::View::rows(&dy[r0..], o),
                crate::dense::View::rows(&w[..n * i], i),
                dx,
                i,
                true,
            );
        }
        Ok(())
    }
}

thread_local! {
    /// The row counts of the sequences in the current batched call on this thread.
    static SEQUENCE_ROWS: std::cell::RefCell<Option<Vec<usize>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` (a batched forward pass on this thread, rows of several sequences one after
/// another) telling the products each sequence's row count. The K-quant kernels' summation
/// order depends on a call's row count (llama.cpp's); with this, a sequence's rows get the
/// orders, and so the bits, they get in a call of their own.
pub fn with_sequence_rows<T>(lens: Vec<usize>, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Vec<usize>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            SEQUENCE_ROWS.with(|r| *r.borrow_mut() = self.0.take());
        }
    }
    let prev = SEQUENCE_ROWS.with(|r| r.borrow_mut().replace(lens));
    let _reset = Reset(prev);
    f()
}

/// The row counts [`with_sequence_rows`] set for the current call on this thread.
pub(crate) fn sequence_rows() -> Option<Vec<usize>> {
    SEQUENCE_ROWS.with(|r| r.borrow().clone())
}

/// A weight matrix kept in a GGUF block format; products quantize the activations to the
/// matching dot-product type, as llama.cpp does.
pub struct QuantLinear {
    w: QMatMul,
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
    kind: String,
}

impl QuantLinear {
    pub fn new(
        w: QMatMul,
        bias: Option<Tensor>,
        in_dim: usize,
        out_dim: usize,
        kind: String,
    ) -> Self {
        Self {
            w,
            bias,
            in_dim,
            out_dim,
            kind,
        }
    }
}

impl Linear for QuantLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.w.forward(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
    fn in_dim(&self) -> usize {
        self.in_dim
    }
    fn out_dim(&self) -> usize {
        self.out_dim
    }
    fn kind(&self) -> String {
        self.kind.clone()
    }
}

/// A dense f32 matrix `(out, in)`.
pub struct DenseLinear {
    w: Tensor,
    bias: Option<Tensor>,
}

impl DenseLinear {
    pub fn new(w: Tensor, bias: Option<Tensor>) -> Self {
        Self { w, bias }
    }
}

impl Linear for DenseLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.broadcast_matmul(&self.w.t()?)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
    fn in_dim(&self) -> usize {
        self.w.dims()[1]
    }
    fn out_dim(&self) -> usize {
        self.w.dims()[0]
    }
    fn kind(&self) -> String {
        format!("{:?}", self.w.dtype()).to_uppercase()
    }
    fn bias_values(&self) -> Result<Option<Vec<f32>>> {
        Ok(match &self.bias {
            Some(b) => Some(
                b.flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?,
            ),
            None => None,
        })
    }
    fn weight_rows(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        let t = self
            .w
            .narrow(0, r0, r1 - r0)?
            .to_dtype(candle_core::DType::F32)?;
        out.copy_from_slice(&t.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}

/// A GGUF block-format matrix read in place from the mapped file, multiplied by our own
/// kernels (`ferrolm-kernels`), with activations quantized as llama.cpp does.
pub struct KernelLinear {
    file: std::sync::Arc<ferrolm_format::GgufFile>,
    info: ferrolm_format::TensorInfo,
    kind: KernelKind,
    bias_rows: Option<Vec<f32>>,
}

#[derive(Clone, Copy, Debug)]
enum KernelKind {
    /// 32-value blocks with Q8 activations.
    Block(ferrolm_kernels::QuantKind),
    /// 256-value K-quant super-blocks with Q8_K activations.
    K(ferrolm_kernels::kquant::KQuantKind),
}

impl KernelLinear {
    /// `None` when our kernels do not cover this tensor type.
    pub fn new(
        file: std::sync::Arc<ferrolm_format::GgufFile>,
        info: ferrolm_format::TensorInfo,
        bias: Option<Tensor>,
    ) -> Option<Self> {
        use ferrolm_format::GgmlType;
        use ferrolm_kernels::kquant::KQuantKind;
        use ferrolm_kernels::QuantKind;
        let kind = match info.ty {
            GgmlType::Q4_0 => KernelKind::Block(QuantKind::Q4_0),
            GgmlType::Q4_1 => KernelKind::Block(QuantKind::Q4_1),
            GgmlType::Q5_0 => KernelKind::Block(QuantKind::Q5_0),
            GgmlType::Q5_1 => KernelKind::Block(QuantKind::Q5_1),
            GgmlType::Q8_0 => KernelKind::Block(QuantKind::Q8_0),
            GgmlType::Q4_K => KernelKind::K(KQuantKind::Q4K),
            GgmlType::Q6_K => KernelKind::K(KQuantKind::Q6K),
            _ => return None,
        };
        let bias_rows = match &bias {
            Some(b) => Some(b.flatten_all().ok()?.to_vec1::<f32>().ok()?),
            None => None,
        };
        Some(Self {
            file,
            info,
            kind,
            bias_rows,
        })
    }
}

impl Linear for KernelLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = self.info.dims[1];
        let mut dims = x.dims().to_vec();
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut y = vec![0f32; xs.len() / self.info.dims[0] * n];
        self.forward_slice(&xs, &mut y)?;
        *dims.last_mut().unwrap() = n;
        Ok(Tensor::from_vec(y, dims, x.device())?)
    }
    fn forward_slice(&self, xs: &[f32], y: &mut [f32]) -> Result<()> {
        let (k, n) = (self.info.dims[0], self.info.dims[1]);
        let w = self.file.tensor_bytes(&self.info);
        match self.kind {
            KernelKind::Block(kind) => ferrolm_kernels::matmul(kind, w, n, k, xs, y),
            KernelKind::K(kind) => {
                use ferrolm_kernels::kquant::{matmul, matmul_ordered, order_for};
                let m = xs.len() / k;
                match sequence_rows().filter(|l| l.iter().sum::<usize>() == m) {
                    // A batched step: each sequence's rows in the orders they get alone.
                    Some(lens) => {
                        let mut seg = Vec::with_capacity(m);
                        for &l in &lens {
                            seg.extend((0..l).map(|i| (l, i)));
                        }
                        matmul_ordered(kind, w, n, k, xs, y, |i| {
                            order_for(kind, n, seg[i].0, seg[i].1)
                        })
                    }
                    None => matmul(kind, w, n, k, xs, y),
                }
            }
        }
        if let Some(b) = &self.bias_rows {
            for row in y.chunks_exact_mut(n) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
        Ok(())
    }
    fn in_dim(&self) -> usize {
        self.info.dims[0]
    }
    fn out_dim(&self) -> usize {
        self.info.dims[1]
    }
    fn kind(&self) -> String {
        self.info.ty.name().to_string()
    }
    fn bias_values(&self) -> Result<Option<Vec<f32>>> {
        Ok(self.bias_rows.clone())
    }
    fn weight_rows(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        let row_bytes = self.info.row_bytes();
        let w = self.file.tensor_bytes(&self.info);
        ferrolm_format::dequant::dequantize(self.info.ty, &w[r0 * row_bytes..r1 * row_bytes], out)?;
        Ok(())
    }
}

/// A dense f32 matrix on plain buffers (a frozen base widened for full-precision training or
/// LoRA: `Model::widen_to_f32`).
pub struct F32Linear {
    w: Vec<f32>,
    bias: Option<Vec<f32>>,
    in_dim: usize,
    out_dim: usize,
}

impl F32Linear {
    /// The same layer as `l`, its weight widened to f32 (read 64 rows at a time).
    pub fn widen(l: &dyn Linear) -> Result<F32Linear> {
        let (i, o) = (l.in_dim(), l.out_dim());
        let mut w = vec![0f32; i * o];
        for r0 in (0..o).step_by(64) {
            let r1 = (r0 + 64).min(o);
            l.weight_rows(r0, r1, &mut w[r0 * i..r1 * i])?;
        }
        Ok(F32Linear {
            w,
            bias: l.bias_values()?,
            in_dim: i,
            out_dim: o,
        })
    }
}

impl Linear for F32Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut y = vec![0f32; xs.len() / self.in_dim * self.out_dim];
        self.forward_slice(&xs, &mut y)?;
        if let Some(l) = dims.last_mut() {
            *l = self.out_dim;
        }
        Ok(Tensor::from_vec(y, dims, x.device())?)
    }
    fn forward_slice(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        use crate::dense::{mm, View};
        let rows = x.len() / self.in_dim;
        mm(
            rows,
            self.in_dim,
            self.out_dim,
            View::rows(x, self.in_dim),
            View::t(&self.w, self.in_dim),
            y,
            self.out_dim,
            false,
        );
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.out_dim) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
        Ok(())
    }
    fn in_dim(&self) -> usize {
        self.in_dim
    }
    fn out_dim(&self) -> usize {
        self.out_dim
    }
    fn kind(&self) -> String {
        "F32".into()
    }
    fn bias_values(&self) -> Result<Option<Vec<f32>>> {
        Ok(self.bias.clone())
    }
    fn weight_rows(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(&self.w[r0 * self.in_dim..r1 * self.in_dim]);
        Ok(())
    }
    fn params_mut(&mut self) -> Option<(&mut [f32], Option<&mut [f32]>)> {
        Some((&mut self.w, self.bias.as_deref_mut()))
    }
}
