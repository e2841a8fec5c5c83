//! The attention sub-layer: self-attention over the layer's cache (one sequence or many in one
//! call), cross-attention over the encoder's keys and values, and the score biases (ALiBi,
//! T5's relative buckets). Reads its behaviour from `AttentionSpec` and the layer's plan.

use crate::kv::{KvRun, LayerKv};
use crate::layers::{apply_rope, sized, trace_rows, Norm, Scratch};
use crate::linear::Linear;
use crate::profile::scope;
use crate::spec::*;
use anyhow::Result;
use candle_core::{Device, Tensor};

pub struct Attention {
    pub spec: AttentionSpec,
    pub q: Box<dyn Linear>,
    pub k: Box<dyn Linear>,
    pub v: Box<dyn Linear>,
    pub o: Box<dyn Linear>,
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
}

/// Per-call inputs shared by every layer of a stack: positions, the RoPE tables for them,
/// causality, and the stack's score biases.
pub struct StepCtx<'a> {
    pub pos: &'a [usize],
    /// `(first row, rows)` of each sequence in the call (one segment for a single sequence).
    pub segments: &'a [(usize, usize)],
    /// One `rope_tables` per distinct RoPE spec.
    pub rope: Vec<(RopeSpec, Vec<f32>)>,
    /// Queries see only earlier keys (decoders); encoders see all.
    pub causal: bool,
    /// ALiBi slopes per head (empty unless a layer uses `Position::Alibi`).
    pub alibi: &'a [f32],
    /// T5's relative-bias table `(buckets, H)` (empty unless a layer uses `Position::Relative`).
    pub relative: &'a [f32],
    /// Attention rows with the one-token (decode) arithmetic (see [`crate::Probe`]).
    pub as_decode: bool,
}

/// ALiBi slopes for `n` heads.
pub fn alibi_slopes(kind: AlibiSlopes, n: usize) -> Vec<f32> {
    match kind {
        AlibiSlopes::Bloom | AlibiSlopes::BloomScaled => {
            let p = 1usize << (usize::BITS - 1 - n.leading_zeros()); // largest power of 2 <= n
            let base = 2f64.powf(-(2f64.powf(-((p as f64).log2() - 3.0))));
            let mut v: Vec<f32> = (1..=p).map(|i| base.powi(i as i32) as f32).collect();
            if p < n {
                let extra = 2f64.powf(-(2f64.powf(-((2.0 * p as f64).log2() - 3.0))));
                let k = (n - p).min(p);
                v.extend((0..k).map(|i| extra.powi((1 + 2 * i) as i32) as f32));
            }
            v
        }
        AlibiSlopes::Mpt { max_bias } => {
            let np = n.next_power_of_two();
            let m: Vec<f32> = (1..=np)
                .map(|i| 1.0 / 2f32.powf(i as f32 * (max_bias / np as f32)))
                .collect();
            if np == n {
                m
            } else {
                m.iter()
                    .skip(1)
                    .step_by(2)
                    .chain(m.iter().step_by(2))
                    .take(n)
                    .copied()
                    .collect()
            }
        }
    }
}

/// T5's bucket for a key at `kp` seen from a query at `qp` (log-spaced beyond `buckets / 2`).
pub fn relative_bucket(spec: &RelativeSpec, qp: usize, kp: usize) -> usize {
    let rel = kp as i64 - qp as i64;
    let (mut buckets, mut ret) = (spec.buckets as i64, 0i64);
    let n = if spec.bidirectional {
        buckets /= 2;
        if rel > 0 {
            ret += buckets;
        }
        rel.abs()
    } else {
        (-rel).max(0)
    };
    let max_exact = buckets / 2;
    let v = if n < max_exact {
        n
    } else {
        // In f32 like the reference, then truncated.
        let l = ((n as f32 / max_exact as f32).ln()
            / (spec.max_distance as f32 / max_exact as f32).ln()
            * (buckets - max_exact) as f32) as i64;
        (max_exact + l).min(buckets - 1)
    };
    (ret + v) as usize
}

/// Which keys a query sees and what is added to its scores.
pub struct Mask<'a> {
    pub causal: bool,
    pub window: Option<usize>,
    pub bias: ScoreBias<'a>,
    /// Every query with the one-query (decode) arithmetic, even when several run together.
    pub as_decode: bool,
}

#[derive(Clone, Copy)]
pub enum ScoreBias<'a> {
    None,
    /// `slope[h] * (k_pos - q_pos)`.
    Alibi(&'a [f32]),
    /// `table[bucket(q_pos, k_pos) * H + h]`.
    Relative(&'a [f32], RelativeSpec),
}

impl StepCtx<'_> {
    fn tables(&self, spec: &RopeSpec) -> Option<&[f32]> {
        self.rope
            .iter()
            .find(|(s, _)| s == spec)
            .map(|(_, t)| t.as_slice())
    }
}

/// Attention of `q: (T, H, D)` over the layer's cache (which already holds this call's keys
/// and values) with llama.cpp's arithmetic: `q . k` (operands f16-rounded under
/// `KvPrecision::F16`), scaled softmax with masked entries at `-inf`, probabilities rounded like
/// the values, then `p . v`. Sums follow llama.cpp's batched order when `T >= 2` and its
/// single-row order for `T = 1`, which is where llama.cpp disagrees with itself. Heads run in
/// parallel. Returns `(T, H * D)`.
pub fn attend(
    a: &AttentionSpec,
    q: &[f32],
    kv: &LayerKv,
    q_pos: &[usize],
    mask: &Mask,
    layer: Option<usize>,
) -> Vec<f32> {
    attend_many(a, &[(q, kv, q_pos)], mask, layer)
}

/// [`attend`] for several sequences at once: `parts[i] = (q (T_i, H, D), its cache, its
/// positions)`; returns the outputs one after another `(sum T_i, H * D)`. Every (sequence,
/// head, run of queries) is one parallel task, so many short sequences (a server's decode
/// step) fill the threads in one dispatch. Each query's arithmetic is that of `attend` on its
/// own sequence.
pub fn attend_many(
    a: &AttentionSpec,
    parts: &[(&[f32], &LayerKv, &[usize])],
    mask: &Mask,
    layer: Option<usize>,
) -> Vec<f32> {
    attend_many_with(a, parts, mask, layer, FLASH_MIN_KEYS)
}

/// A layer's runs split by storage (all of one kind: an f16 cache's, or f32).
#[allow(clippy::type_complexity)]
fn by_kind<'a, X: Copy>(
    runs: &[(X, KvRun<'a>)],
) -> (Vec<(X, &'a [f32])>, Vec<(X, &'a [half::f16])>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for &(x, r) in runs {
        match r {
            KvRun::F32(s) => a.push((x, s)),
            KvRun::F16(s) => b.push((x, s)),
        }
    }
    assert!(
        a.is_empty() || b.is_empty(),
        "f16 and f32 rows in one layer"
    );
    (a, b)
}

/// `(rows, run)` pairs as the blocked path takes them, `(run, rows)`.
fn swap<'a, T>(r: &[(usize, &'a [T])]) -> Vec<(&'a [T], usize)> {
    r.iter().map(|&(n, x)| (x, n)).collect()
}

/// A prompt row that sees at least this many cached keys takes the blocked path
/// ([`ferrolm_kernels::flash`]): long prompts. Below it, and for decode rows at any length,
/// the per-key path with llama.cpp's arithmetic. The choice is per query, so a sequence gets
/// the same bits whether its prompt runs in one call or in pieces (of at least two rows).
pub const FLASH_MIN_KEYS: usize = 2048;

fn attend_many_with(
    a: &AttentionSpec,
    parts: &[(&[f32], &LayerKv, &[usize])],
    mask: &Mask,
    layer: Option<usize>,
    flash_min: usize,
) -> Vec<f32> {
    use ferrolm_kernels::flash::{Flash, KEY_BLOCK};
    use ferrolm_kernels::numerics::{dot_rows, pv_runs, softmax_row};
    use ferrolm_kernels::pool::{global, SharedOut};
    let (h, hkv, d) = (a.n_heads, a.n_kv_heads, a.head_dim);
    let stride = hkv * d;
    let n_rep = h / hkv;
    let (causal, window) = (mask.causal, mask.window);
    let visible =
        |qp: usize, kp: usize| (!causal || kp <= qp) && window.is_none_or(|w| qp.abs_diff(kp) < w);
    let scale = match a.scale_at {
        ScaleAt::Scores => a.scale,
        ScaleAt::Queries => 1.0,
    };
    // With a softcap or a bias the scale goes on the scores first; otherwise into the softmax
    // (llama.cpp's order).
    let pre_scaled = a.softcap.is_some() || !matches!(mask.bias, ScoreBias::None);
    let bias = |hh: usize, qp: usize, kp: usize| match mask.bias {
        ScoreBias::None => 0.0,
        ScoreBias::Alibi(slopes) => slopes[hh] * (kp as f32 - qp as f32),
        ScoreBias::Relative(table, spec) => table[relative_bucket(&spec, qp, kp) * h + hh],
    };
    let plain_scores = a.softcap.is_none() && matches!(mask.bias, ScoreBias::None);
    let sorted: Vec<bool> = parts
        .iter()
        .map(|p| p.1.pos.windows(2).all(|w| w[0] < w[1]))
        .collect();
    let total: usize = parts.iter().map(|p| p.2.len()).sum();
    // Probabilities are traced for single-sequence calls only.
    let tracing = crate::trace::enabled() && parts.len() == 1;
    let (t0, s0) = (parts[0].2.len(), parts[0].1.len());
    let mut out = vec![0f32; total * h * d];
    let mut probs = if tracing {
        vec![0f32; h * t0 * s0]
    } else {
        Vec::new()
    };
    let (o_ptr, p_ptr) = (SharedOut::new(&mut out), SharedOut::new(&mut probs));
    // Tasks are (sequence, head, run of queries), so few heads still fill every thread.
    // A task takes the heads of one KV group, so each key and value row it reads serves all
    // of them while in the nearest cache; with too few such tasks to fill the threads (one
    // sequence decoding), one head each.
    let threads = global().threads();
    let q_chunk = |t: usize, units: usize| t.div_ceil((threads * 4).div_ceil(units)).clamp(1, 64);
    let group_tasks: usize = parts
        .iter()
        .map(|p| p.2.len().div_ceil(q_chunk(p.2.len(), hkv)) * hkv)
        .sum();
    let span = if group_tasks >= threads * 4 { n_rep } else { 1 };
    let mut tasks: Vec<(usize, usize, usize, usize, usize)> = Vec::new(); // (part, first head, q0, q1, row0)
    let mut row0 = 0;
    for (pi, &(_, _, pos)) in parts.iter().enumerate() {
        let t = pos.len();
        let chunk = q_chunk(t, h / span);
        for h0 in (0..h).step_by(span) {
            for q0 in (0..t).step_by(chunk) {
                tasks.push((pi, h0, q0, (q0 + chunk).min(t), row0));
            }
        }
        row0 += t;
    }
    global().run(tasks.len(), |task| {
        let (pi, h0, q0, q1, row0) = tasks[task];
        // What depends on the queries only, once for the task's heads.
        let (q, kv, q_pos) = parts[pi];
        let (t, s) = (q_pos.len(), kv.len());
        let k_pos = &kv.pos;
        let batched = t >= 2 && !mask.as_decode;
        let lanes = if batched { 16 } else { 64 };
        // Visible keys of a query lie in lo..hi; with positions in slot order (every cache
        // but a rotating one mid-wrap) they are exactly lo..hi, found by bisection.
        let exact = sorted[pi];
        let range = |qp: usize| {
            if exact {
                let lo = window.map_or(0, |w| k_pos.partition_point(|&kp| kp + w <= qp));
                let hi = if causal {
                    k_pos.partition_point(|&kp| kp <= qp)
                } else {
                    window.map_or(s, |w| k_pos.partition_point(|&kp| kp < qp + w))
                };
                return (lo, hi.max(lo));
            }
            let lo = k_pos.iter().position(|&kp| visible(qp, kp)).unwrap_or(s);
            let hi = k_pos
                .iter()
                .rposition(|&kp| visible(qp, kp))
                .map_or(lo, |j| j + 1);
            (lo, hi)
        };
        let ranges: Vec<(usize, usize)> = (q0..q1).map(|ti| range(q_pos[ti])).collect();
        // Decode rows (one query, or rows run as decode steps) stay on the per-key path at
        // any length: with no other query to share a key tile, the blocked path's
        // transposes cost more than they save (depth 4096: 35 -> 54 tokens/s).
        let long: Vec<usize> = (q0..q1)
            .filter(|&ti| batched && !tracing && ranges[ti - q0].1 - ranges[ti - q0].0 >= flash_min)
            .collect();
        for hh in h0..h0 + span {
            let g = hh / n_rep;
            if !long.is_empty() {
                // The blocked path: these queries as one tile of rows against key blocks.
                let nq = long.len();
                let mut qs = vec![0f32; nq * d];
                for (i, &ti) in long.iter().enumerate() {
                    qs[i * d..(i + 1) * d].copy_from_slice(&q[(ti * h + hh) * d..][..d]);
                }
                let lo = long.iter().map(|&ti| ranges[ti - q0].0).min().unwrap_or(0);
                let hi = long.iter().map(|&ti| ranges[ti - q0].1).max().unwrap_or(0);
                let mut f = Flash::new(nq, d);
                if kv.precision == crate::kv::KvPrecision::F16 {
                    f = f.round_probabilities_f16();
                }
                for j0 in (lo / KEY_BLOCK * KEY_BLOCK..hi).step_by(KEY_BLOCK) {
                    let n = (hi - j0).min(KEY_BLOCK);
                    // The block's keys and values, one run per cache page it touches.
                    let (ks, vs): (Vec<_>, Vec<_>) = kv
                        .runs(j0, j0 + n)
                        .map(|(_, rows, k, v)| ((rows, k.from(g * d)), (rows, v.from(g * d))))
                        .unzip();
                    let (ks, vs) = (by_kind(&ks), by_kind(&vs));
                    if ks.1.is_empty() {
                        f.dots_runs(&qs, d, &swap(&ks.0), stride);
                    } else {
                        f.dots_runs(&qs, d, &swap(&ks.1), stride);
                    }
                    let sc = f.scores();
                    for (i, &ti) in long.iter().enumerate() {
                        let qp = q_pos[ti];
                        let row = &mut sc[i * KEY_BLOCK..i * KEY_BLOCK + n];
                        if exact && plain_scores {
                            // Visible exactly within lo..hi: scale it, mask the rest.
                            let (lo, hi) = ranges[ti - q0];
                            let (a0, a1) = (lo.clamp(j0, j0 + n) - j0, hi.clamp(j0, j0 + n) - j0);
                            row[..a0].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                            row[a0..a1].iter_mut().for_each(|x| *x *= scale);
                            row[a1..].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                            continue;
                        }
                        for (j, x) in row.iter_mut().enumerate() {
                            let kp = k_pos[j0 + j];
                            *x = if visible(qp, kp) {
                                let mut v = *x * scale;
                                if let Some(cap) = a.softcap {
                                    v = (v * (1.0 / cap)).tanh() * cap;
                                }
                                v + bias(hh, qp, kp)
                            } else {
                                f32::NEG_INFINITY
                            };
                        }
                    }
                    if vs.1.is_empty() {
                        f.absorb_runs(&swap(&vs.0), stride);
                    } else {
                        f.absorb_runs(&swap(&vs.1), stride);
                    }
                }
                for (i, &ti) in long.iter().enumerate() {
                    // SAFETY: (row, head) output slices belong to one task each.
                    f.finish_row(i, unsafe { o_ptr.slice(((row0 + ti) * h + hh) * d, d) });
                }
            }
            // Per-thread buffers, reused across tasks (a decode step runs thousands of tasks).
            thread_local! {
                static BUFS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
                    const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
            }
            BUFS.with(|bufs| {
                let (row, acc) = &mut *bufs.borrow_mut();
                row.resize(s, 0.0);
                for ti in q0..q1 {
                    if long.contains(&ti) {
                        continue;
                    }
                    let qp = q_pos[ti];
                    let qv = &q[(ti * h + hh) * d..(ti * h + hh + 1) * d];
                    // Whole 16-wide chunks outside lo..hi are masked, and their softmax terms are
                    // exact zeros, so only c0..c1 is computed.
                    let (lo, hi) = ranges[ti - q0];
                    let (c0, c1) = (lo / 16 * 16, hi.next_multiple_of(16).min(s));
                    if tracing {
                        row.iter_mut().for_each(|x| *x = 0.0);
                    }
                    // Raw dots for c0..c1, run by run; then the mask (and scale, softcap, bias
                    // where they come before the softmax).
                    for (j0, rows, k, _) in kv.runs(c0, c1) {
                        let out = &mut row[j0..j0 + rows];
                        match k.from(g * d) {
                            KvRun::F32(k) => dot_rows(qv, k, stride, !batched, out),
                            KvRun::F16(k) => dot_rows(qv, k, stride, !batched, out),
                        }
                    }
                    if exact && plain_scores {
                        row[c0..lo].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                        row[hi..c1].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                    } else {
                        for (x, &kp) in row[c0..c1].iter_mut().zip(&k_pos[c0..c1]) {
                            *x = if !visible(qp, kp) {
                                f32::NEG_INFINITY
                            } else if pre_scaled {
                                let mut sc = *x * scale;
                                if let Some(cap) = a.softcap {
                                    sc = (sc * (1.0 / cap)).tanh() * cap;
                                }
                                sc + bias(hh, qp, kp)
                            } else {
                                *x
                            };
                        }
                    }
                    if c1 > c0 {
                        softmax_row(&mut row[c0..c1], if pre_scaled { 1.0 } else { scale });
                    }
                    if tracing {
                        // SAFETY: (head, query) rows of `probs` belong to one task each.
                        unsafe { p_ptr.slice((hh * t + ti) * s, s) }.copy_from_slice(row);
                    }
                    kv.precision.round_slice(&mut row[c0..c1]);
                    let runs: Vec<(usize, KvRun)> = kv
                        .runs(c0, c1)
                        .map(|(j0, _, _, v)| (j0 - c0, v.from(g * d)))
                        .collect();
                    // SAFETY: (row, head) output slices belong to one task each.
                    let o = unsafe { o_ptr.slice(((row0 + ti) * h + hh) * d, d) };
                    let p = &row[c0..c1];
                    match by_kind(&runs) {
                        (r32, r16) if r16.is_empty() => {
                            pv_runs(p, &r32, stride, d, lanes, c0 % lanes, acc, o)
                        }
                        (_, r16) => pv_runs(p, &r16, stride, d, lanes, c0 % lanes, acc, o),
                    }
                }
            });
        }
    });
    if tracing {
        if let Ok(p) = Tensor::from_vec(probs, (h, t0, s0), &Device::Cpu) {
            crate::trace::trace("kq_soft_max", layer, &p);
        }
    }
    out
}

impl Attention {
    /// `s.n (T, C) -> s.h (T, C)`, reading and extending the layer's caches: the rows are the
    /// sequences of `ctx.segments` one after another, `kvs[i]` the cache of segment `i`. The
    /// projections run over all rows at once; attention runs per sequence.
    pub fn forward_rows(
        &self,
        t: usize,
        plan: &LayerPlan,
        ctx: &StepCtx,
        kvs: &mut [&mut LayerKv],
        layer: usize,
        s: &mut Scratch,
    ) -> Result<()> {
        let l = Some(layer);
        let a = &self.spec;
        let (h, hkv, d) = (a.n_heads, a.n_kv_heads, a.head_dim);
        let n = &s.n[..t * self.q.in_dim()];
        let q = sized(&mut s.q, t * h * d);
        let k = sized(&mut s.k, t * hkv * d);
        let v = sized(&mut s.v, t * hkv * d);
        {
            let _p = scope("matmul: attention q, k, v");
            self.q.forward_slice(n, q)?;
            self.k.forward_slice(n, k)?;
            self.v.forward_slice(n, v)?;
        }
        {
            let _p = scope("norms");
            if let Some(norm) = &self.q_norm {
                norm.rows_in_place(q);
            }
            if let Some(norm) = &self.k_norm {
                norm.rows_in_place(k);
            }
        }
        trace_rows("Qpre", l, q, &[t, h, d]);
        // A long-context policy positions keys when they are read (crate::longctx).
        if let (Position::Rope(spec), [kv]) = (&plan.position, &mut *kvs) {
            if kv.long.is_some() && ctx.segments.len() == 1 {
                let p = scope("attention");
                if a.scale_at == ScaleAt::Queries {
                    q.iter_mut().for_each(|x| *x *= a.scale);
                }
                let out = crate::longctx::attend_long(a, spec, q, k, v, ctx.pos, kv)?;
                drop(p);
                let c = self.o.out_dim();
                return scope("matmul: attention output")
                    .run(|| self.o.forward_slice(&out, sized(&mut s.h, t * c)));
            }
        }
        if let Position::Rope(spec) = &plan.position {
            let tables = ctx
                .tables(spec)
                .ok_or_else(|| anyhow::anyhow!("missing rope tables"))?;
            let dims = spec.dims;
            let _p = scope("rope");
            ferrolm_kernels::pool::par_rows(q, h * d, |r0, run| {
                apply_rope(spec, &tables[r0 * dims..], run, h, d)
            });
            ferrolm_kernels::pool::par_rows(k, hkv * d, |r0, run| {
                apply_rope(spec, &tables[r0 * dims..], run, hkv, d)
            });
        }
        trace_rows("Qcur", l, q, &[t, h, d]);
        trace_rows("Kcur", l, k, &[t, hkv, d]);
        trace_rows("Vcur", l, v, &[t, hkv, d]);
        let p = scope("attention");
        if a.scale_at == ScaleAt::Queries {
            q.iter_mut().for_each(|x| *x *= a.scale);
        }
        // Rounded to the cache precision as llama.cpp stores them.
        let precision = kvs
            .first()
            .map_or(crate::kv::KvPrecision::F32, |kv| kv.precision);
        precision.round_slice(q);
        precision.round_slice(k);
        precision.round_slice(v);
        let mask = Mask {
            causal: ctx.causal,
            window: plan.window,
            bias: match &plan.position {
                Position::Alibi(_) => ScoreBias::Alibi(ctx.alibi),
                Position::Relative(r) => ScoreBias::Relative(ctx.relative, *r),
                _ => ScoreBias::None,
            },
            as_decode: ctx.as_decode,
        };
        if kvs.len() != ctx.segments.len() {
            anyhow::bail!("{} caches for {} sequences", kvs.len(), ctx.segments.len());
        }
        let (qw, kw) = (h * d, hkv * d);
        for (kv, &(r0, n)) in kvs.iter_mut().zip(ctx.segments) {
            let pos = &ctx.pos[r0..r0 + n];
            kv.append(&k[r0 * kw..(r0 + n) * kw], &v[r0 * kw..(r0 + n) * kw], pos);
        }
        let parts: Vec<(&[f32], &LayerKv, &[usize])> = kvs
            .iter()
            .zip(ctx.segments)
            .map(|(kv, &(r0, n))| (&q[r0 * qw..(r0 + n) * qw], &**kv, &ctx.pos[r0..r0 + n]))
            .collect();
        let out = attend_many(a, &parts, &mask, l);
        for kv in kvs.iter_mut() {
            kv.trim();
        }
        drop(p);
        trace_rows("kqv_out", l, &out, &[t, h * d]);
        let c = self.o.out_dim();
        scope("matmul: attention output").run(|| self.o.forward_slice(&out, sized(&mut s.h, t * c)))
    }
}

impl Attention {
    /// Cross-attention: queries from `s.n (T, C)`, keys and values from the encoder (`kv`,
    /// filled once by [`Attention::cross_kv`]), nothing masked. Writes `s.h (T, C)`.
    pub fn forward_cross(
        &self,
        t: usize,
        ctx: &StepCtx,
        kv: &LayerKv,
        s: &mut Scratch,
    ) -> Result<()> {
        let a = &self.spec;
        let n = &s.n[..t * self.q.in_dim()];
        let q = sized(&mut s.q, t * a.n_heads * a.head_dim);
        scope("matmul: attention q, k, v").run(|| self.q.forward_slice(n, q))?;
        if a.scale_at == ScaleAt::Queries {
            q.iter_mut().for_each(|x| *x *= a.scale);
        }
        kv.precision.round_slice(q);
        let mask = Mask {
            causal: false,
            window: None,
            bias: ScoreBias::None,
            as_decode: false,
        };
        let out = scope("attention").run(|| attend(a, q, kv, ctx.pos, &mask, None));
        let c = self.o.out_dim();
        scope("matmul: attention output").run(|| self.o.forward_slice(&out, sized(&mut s.h, t * c)))
    }

    /// The keys and values of encoder output `enc (S, C)` for this cross-attention layer.
    pub fn cross_kv(&self, enc: &[f32], precision: crate::kv::KvPrecision) -> Result<LayerKv> {
        let a = &self.spec;
        let rows = enc.len() / self.k.in_dim();
        let mut k = vec![0f32; rows * a.n_kv_heads * a.head_dim];
        let mut v = vec![0f32; rows * a.n_kv_heads * a.head_dim];
        self.k.forward_slice(enc, &mut k)?;
        self.v.forward_slice(enc, &mut v)?;
        precision.round_slice(&mut k);
        precision.round_slice(&mut v);
        let mut kv = LayerKv {
            precision,
            k: crate::kv::KvRows::new(precision, false),
            v: crate::kv::KvRows::new(precision, false),
            ..Default::default()
        };
        kv.append(&k, &v, &(0..rows).collect::<Vec<_>>());
        Ok(kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvRows;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn spec(h: usize, hkv: usize, d: usize, softcap: Option<f32>) -> AttentionSpec {
        AttentionSpec {
            n_heads: h,
            n_kv_heads: hkv,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
            scale_at: ScaleAt::Scores,
            softcap,
            qk_norm: false,
        }
    }

    /// The blocked path against the per-key path (its slow reference) on the same inputs:
    /// GQA, causal and sliding-window masks, softcap, ALiBi, a call that starts mid-sequence.
    #[test]
    fn blocked_attention_equals_per_key_attention() {
        use crate::kv::KvPrecision;
        let (h, hkv, d) = (6, 2, 64);
        let slopes = alibi_slopes(AlibiSlopes::Bloom, h);
        for (case, (window, softcap, alibi, s, t)) in [
            (None, None, false, 700, 700),
            (None, None, false, 900, 37),
            (Some(300), None, false, 600, 64),
            (None, Some(30.0), false, 500, 9),
            (None, None, true, 400, 400),
        ]
        .into_iter()
        .enumerate()
        {
            for (precision, tol) in [(KvPrecision::F32, 2e-6), (KvPrecision::F16, 2e-3)] {
                let a = spec(h, hkv, d, softcap);
                let kv = LayerKv {
                    k: KvRows::from_values(&rand(s * hkv * d, 1 + case as u64), precision),
                    v: KvRows::from_values(&rand(s * hkv * d, 2 + case as u64), precision),
                    pos: (0..s).collect(),
                    precision,
                    ..Default::default()
                };
                let q: Vec<f32> = rand(t * h * d, 3).iter().map(|x| x * 4.0).collect();
                let pos: Vec<usize> = (s - t..s).collect();
                let mask = Mask {
                    causal: true,
                    window,
                    bias: if alibi {
                        ScoreBias::Alibi(&slopes)
                    } else {
                        ScoreBias::None
                    },
                    as_decode: false,
                };
                let parts = [(&q[..], &kv, &pos[..])];
                let blocked = attend_many_with(&a, &parts, &mask, None, 1);
                let plain = attend_many_with(&a, &parts, &mask, None, usize::MAX);
                let diff = blocked
                    .iter()
                    .zip(&plain)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(diff < tol, "case {case} {precision:?}: max |diff| {diff}");
            }
        }
    }

    /// A paged cache (shared pages, then own rows) attends to the bit as the same rows in one
    /// piece: per-key and blocked paths, decode and batched calls, GQA, windows and softcap,
    /// pages of a size that does not divide the blocked path's key blocks.
    #[test]
    fn paged_cache_attends_as_contiguous() {
        use crate::kv::KvPrecision;
        let (h, hkv, d) = (6, 2, 64);
        for (case, (window, softcap, s, t, page)) in [
            (None, None, 300, 1, 16),
            (None, None, 300, 5, 16),
            (Some(100), None, 280, 1, 48),
            (None, Some(30.0), 410, 7, 7),
        ]
        .into_iter()
        .enumerate()
        {
            let a = spec(h, hkv, d, softcap);
            let whole = LayerKv {
                k: KvRows::from_values(&rand(s * hkv * d, 10 + case as u64), KvPrecision::F16),
                v: KvRows::from_values(&rand(s * hkv * d, 20 + case as u64), KvPrecision::F16),
                pos: (0..s).collect(),
                precision: KvPrecision::F16,
                ..Default::default()
            };
            let mut paged = whole.clone();
            paged.seal(page, s * 2 / 3);
            assert!(paged.pages.len() >= 2 && paged.paged < s && paged.paged.is_multiple_of(page));
            assert_eq!(paged.runs(0, s).count(), paged.pages.len() + 1);
            let q: Vec<f32> = rand(t * h * d, 3).iter().map(|x| x * 4.0).collect();
            let pos: Vec<usize> = (s - t..s).collect();
            let mask = Mask {
                causal: true,
                window,
                bias: ScoreBias::None,
                as_decode: false,
            };
            for flash_min in [usize::MAX, 1] {
                let run = |kv: &LayerKv| {
                    attend_many_with(&a, &[(&q[..], kv, &pos[..])], &mask, None, flash_min)
                };
                let (x, y) = (run(&whole), run(&paged));
                assert!(
                    x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "case {case}, flash_min {flash_min}"
                );
            }
        }
    }
}
