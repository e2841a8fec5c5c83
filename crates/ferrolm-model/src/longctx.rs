//! Long context at attention time, for any RoPE model: positions assigned when keys are read,
//! not when they are written.
//!
//! - **Far positions** (ReRoPE, Leaky ReRoPE, Self-Extend): a key closer than the window is
//!   seen at its own distance; a farther one at a compressed distance. Each cached key is kept
//!   twice (rotated at its position and at its far position), each query is rotated twice, and
//!   a score takes the pair its distance calls for: the two attention passes stitched by the
//!   distance mask, in one loop.
//! - **Streaming with attention sinks** (StreamingLLM): the cache keeps the first `sinks`
//!   tokens and the last `window`, unrotated; every call rotates them at their slots in the
//!   cache (sinks `0..S`, the window after them), so positions never pass `S + window + T`
//!   however long the stream runs, and memory stays constant.
//! - **kNN memory** (the retrieval step of Memorizing Transformers and LongMem): keys and values
//!   that leave the window go, in chunks of `C`, to a bank per layer (FIFO past a size limit).
//!   Each query, per KV head, takes the `k` chunks whose mean key best matches it (exact inner
//!   product) and attends jointly to sinks, retrieved chunks and window; retrieved keys all sit
//!   at one position just after the sinks (as InfLLM places its memory units).
//!
//! Dimension legend: `T` queries in the call, `H`/`Hkv` heads, `D` head size.

use crate::kv::LayerKv;
use crate::layers::{rope_freqs, rope_head, rope_tables_at};
use crate::spec::{AttentionSpec, RopeSpec, ScaleAt};
use anyhow::{bail, Result};
use ferrolm_kernels::flash::{Flash, KEY_BLOCK};
use ferrolm_kernels::numerics::{dot_batched, pv_accumulate, softmax_row};
use ferrolm_kernels::pool::{global, SharedOut};
use std::collections::VecDeque;
use std::sync::Arc;

/// How keys beyond a local window are positioned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FarPositions {
    /// ReRoPE: every key `window` or more positions back is seen at distance `window`.
    ReRope { window: usize },
    /// Leaky ReRoPE: beyond `window`, distances grow by `1 / k` per position.
    LeakyReRope { window: usize, k: f32 },
    /// Self-Extend: beyond `window` neighbours, positions floor-divided by `group`, shifted
    /// so the two regions meet.
    SelfExtend { group: usize, window: usize },
}

impl FarPositions {
    pub fn window(&self) -> usize {
        match *self {
            FarPositions::ReRope { window }
            | FarPositions::LeakyReRope { window, .. }
            | FarPositions::SelfExtend { window, .. } => window,
        }
    }

    /// The position a key at `j` takes when a query sees it from beyond the window.
    pub fn key(&self, j: usize) -> f32 {
        match *self {
            FarPositions::ReRope { .. } => 0.0,
            FarPositions::LeakyReRope { k, .. } => j as f32 / k,
            FarPositions::SelfExtend { group, .. } => (j / group) as f32,
        }
    }

    /// The position a query at `p` takes against far keys.
    pub fn query(&self, p: usize) -> f32 {
        match *self {
            FarPositions::ReRope { window } => window as f32,
            FarPositions::LeakyReRope { window, k } => {
                p as f32 / k + window as f32 * (1.0 - 1.0 / k)
            }
            FarPositions::SelfExtend { group, window } => {
                (p / group + window - window / group) as f32
            }
        }
    }
}

/// StreamingLLM: the first `sinks` tokens plus a rolling window of the last `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Streaming {
    pub sinks: usize,
    pub window: usize,
}

/// kNN memory over what leaves the streaming window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemorySpec {
    /// Chunks retrieved per query and KV head.
    pub topk: usize,
    /// Tokens per chunk.
    pub chunk: usize,
    /// Tokens the bank holds per layer before the oldest chunks go.
    pub size: usize,
    /// Layers with a memory (`None`: all).
    pub layers: Option<Vec<usize>>,
}

/// A sequence's long-context policy (kept in its [`crate::KvCache`]).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LongCtx {
    pub far: Option<FarPositions>,
    pub stream: Option<Streaming>,
    pub memory: Option<MemorySpec>,
}

impl LongCtx {
    pub fn is_active(&self) -> bool {
        self.far.is_some() || self.stream.is_some()
    }

    /// Checks the combination and the sizes, naming the flag at fault.
    pub fn validate(&self) -> Result<()> {
        if self.far.is_some() && self.stream.is_some() {
            bail!("ReRoPE / Self-Extend and --stream-window do not combine: pick one");
        }
        if let Some(m) = &self.memory {
            if self.stream.is_none() {
                bail!(
                    "--memory-topk needs --stream-window (the memory holds what leaves the window)"
                );
            }
            if m.topk == 0 || m.chunk == 0 {
                bail!("--memory-topk and --memory-chunk must be at least 1");
            }
            if m.size < m.chunk {
                bail!(
                    "--memory-size {} is smaller than one chunk ({})",
                    m.size,
                    m.chunk
                );
            }
        }
        if let Some(s) = &self.stream {
            if s.window == 0 {
                bail!("--stream-window must be at least 1");
            }
        }
        match self.far {
            Some(FarPositions::ReRope { window })
            | Some(FarPositions::LeakyReRope { window, .. })
                if window == 0 =>
            {
                bail!("--rerope-window must be at least 1")
            }
            Some(FarPositions::LeakyReRope { k, .. }) if k <= 1.0 => {
                bail!("leaky ReRoPE needs --rope-factor > 1 (got {k})")
            }
            Some(FarPositions::SelfExtend { group, window }) if group == 0 || window == 0 => {
                bail!("--self-extend G:W needs G >= 1 and W >= 1")
            }
            _ => Ok(()),
        }
    }

    fn has_memory(&self, layer: usize) -> bool {
        self.memory
            .as_ref()
            .is_some_and(|m| m.layers.as_ref().is_none_or(|l| l.contains(&layer)))
    }
}

/// One layer's long-context state beside its [`LayerKv`].
#[derive(Clone, Debug)]
pub struct LongLayer {
    pub policy: Arc<LongCtx>,
    /// Far positions: keys rotated at their far positions, row for row with `LayerKv::k`
    /// (which holds them rotated at their own).
    pub k_far: Vec<f32>,
    /// Streaming: how many of the cache's first slots are sinks.
    pub sinks_held: usize,
    pub memory: Option<Memory>,
}

impl LongLayer {
    pub fn new(policy: Arc<LongCtx>, layer: usize) -> Self {
        let memory = policy.has_memory(layer).then(Memory::default);
        LongLayer {
            policy,
            k_far: Vec::new(),
            sinks_held: 0,
            memory,
        }
    }
}

/// A layer's kNN memory: whole chunks, oldest first, and the partial chunk being filled.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub chunks: VecDeque<Chunk>,
    pending_k: Vec<f32>,
    pending_v: Vec<f32>,
    /// Chunks dropped from the front (FIFO) so far.
    pub evicted: usize,
}

/// `C` keys (unrotated) and values, and the mean key per KV head (what retrieval matches).
#[derive(Clone, Debug)]
pub struct Chunk {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub mean: Vec<f32>,
}

impl Memory {
    /// Tokens held in whole chunks.
    pub fn tokens(&self, chunk: usize) -> usize {
        self.chunks.len() * chunk
    }

    fn push(&mut self, k: &[f32], v: &[f32], spec: &MemorySpec, kw: usize, d: usize) {
        self.pending_k.extend_from_slice(k);
        self.pending_v.extend_from_slice(v);
        let whole = spec.chunk * kw;
        while self.pending_k.len() >= whole {
            let ck: Vec<f32> = self.pending_k.drain(..whole).collect();
            let cv: Vec<f32> = self.pending_v.drain(..whole).collect();
            let mut mean = vec![0f32; kw];
            for row in ck.chunks_exact(kw) {
                mean.iter_mut().zip(row).for_each(|(m, x)| *m += x);
            }
            mean.iter_mut().for_each(|m| *m /= spec.chunk as f32);
            let _ = d;
            self.chunks.push_back(Chunk { k: ck, v: cv, mean });
            while self.chunks.len() * spec.chunk > spec.size {
                self.chunks.pop_front();
                self.evicted += 1;
            }
        }
    }
}

/// `x: (rows, heads, D)` rotated in place, row `r` by table row `r`.
fn rotate(spec: &RopeSpec, tables: &[f32], x: &mut [f32], heads: usize, d: usize) {
    let dims = spec.dims;
    ferrolm_kernels::pool::par_rows(x, heads * d, |r0, run| {
        for (i, row) in run.chunks_exact_mut(heads * d).enumerate() {
            let t = &tables[(r0 + i) * dims..(r0 + i + 1) * dims];
            for head in row.chunks_exact_mut(d) {
                rope_head(spec, t, head);
            }
        }
    });
}

/// Attention of one sequence's call in a long-context mode. `q (T, H, D)` and `k (T, Hkv, D)`
/// come unrotated (after any q/k norm), `v (T, Hkv, D)`; `pos` are the tokens' positions in the
/// sequence. Appends the call's keys and values to `kv` (whose `long` state must be set),
/// trims it to what the policy keeps, and returns `(T, H * D)`.
pub fn attend_long(
    a: &AttentionSpec,
    rope: &RopeSpec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos: &[usize],
    kv: &mut LayerKv,
) -> Result<Vec<f32>> {
    let Some(mut state) = kv.long.take() else {
        bail!("long-context attention on a layer without long-context state");
    };
    // The policies move and re-rotate rows: shared pages become the sequence's own first.
    kv.own_pages();
    let res = if let Some(far) = state.policy.far {
        attend_far(a, rope, far, q, k, v, pos, kv, &mut state)
    } else if let Some(stream) = state.policy.stream {
        attend_stream(a, rope, stream, q, k, v, pos, kv, &mut state)
    } else {
        Err(anyhow::anyhow!("long-context state without a policy"))
    };
    kv.long = Some(state);
    res
}

/// Score multiplier and softcap for the spec (queries already scaled under `ScaleAt::Queries`).
fn score_fn(a: &AttentionSpec) -> impl Fn(f32) -> f32 + Sync + '_ {
    let scale = match a.scale_at {
        ScaleAt::Scores => a.scale,
        ScaleAt::Queries => 1.0,
    };
    move |s: f32| {
        let s = s * scale;
        match a.softcap {
            Some(cap) => (s / cap).tanh() * cap,
            None => s,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn attend_far(
    a: &AttentionSpec,
    rope: &RopeSpec,
    far: FarPositions,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos: &[usize],
    kv: &mut LayerKv,
    state: &mut LongLayer,
) -> Result<Vec<f32>> {
    let (h, hkv, d) = (a.n_heads, a.n_kv_heads, a.head_dim);
    let (t, kw) = (pos.len(), hkv * d);
    let seq_len = pos.iter().max().map_or(0, |p| p + 1);
    let (freqs, af) = rope_freqs(rope, seq_len);
    let near_t = rope_tables_at(&freqs, af, pos.iter().map(|&p| p as f32));
    let qfar_t = rope_tables_at(&freqs, af, pos.iter().map(|&p| far.query(p)));
    let kfar_t = rope_tables_at(&freqs, af, pos.iter().map(|&p| far.key(p)));
    let mut q_near = q.to_vec();
    let mut q_far = q.to_vec();
    let mut k_near = k.to_vec();
    let mut k_far = k.to_vec();
    rotate(rope, &near_t, &mut q_near, h, d);
    rotate(rope, &qfar_t, &mut q_far, h, d);
    rotate(rope, &near_t, &mut k_near, hkv, d);
    rotate(rope, &kfar_t, &mut k_far, hkv, d);
    kv.precision.round_slice(&mut k_near);
    kv.precision.round_slice(&mut k_far);
    let mut vr = v.to_vec();
    kv.precision.round_slice(&mut vr);
    kv.append(&k_near, &vr, pos);
    state.k_far.extend_from_slice(&k_far);
    let w = far.window();
    let n_rep = h / hkv;
    let score = score_fn(a);
    let mut out = vec![0f32; t * h * d];
    let o_ptr = SharedOut::new(&mut out);
    let (keys_near, keys_far, values, k_pos) = (kv.k.f32(), &state.k_far, kv.v.f32(), &kv.pos);
    // Tasks are (head, run of queries); each run meets the keys block by block, both score
    // tiles computed and stitched by the distance mask.
    let q_chunk = t
        .div_ceil((global().threads() * 4).div_ceil(h))
        .clamp(1, 64);
    let runs = t.div_ceil(q_chunk);
    let round = kv.precision == crate::kv::KvPrecision::F16;
    global().run(h * runs, |task| {
        let (hh, q0) = (task / runs, task % runs * q_chunk);
        let q1 = (q0 + q_chunk).min(t);
        let nq = q1 - q0;
        let g = hh / n_rep;
        let gather = |x: &[f32]| -> Vec<f32> {
            (q0..q1)
                .flat_map(|ti| x[(ti * h + hh) * d..][..d].iter().copied())
                .collect()
        };
        let (qn, qf) = (gather(&q_near), gather(&q_far));
        // Slots are in position order; query `ti` sees slots `0..partition_point(<= pos)`.
        let hi = k_pos.partition_point(|&kp| kp <= pos[q1 - 1]);
        let bounds: Vec<(usize, usize)> = (q0..q1)
            .map(|ti| {
                let qp = pos[ti];
                (
                    k_pos.partition_point(|&kp| kp + w <= qp),
                    k_pos.partition_point(|&kp| kp <= qp),
                )
            })
            .collect();
        let mut f = Flash::new(nq, d);
        if round {
            f = f.round_probabilities_f16();
        }
        let mut near = vec![0f32; nq * KEY_BLOCK];
        for j0 in (0..hi).step_by(KEY_BLOCK) {
            let n = (hi - j0).min(KEY_BLOCK);
            f.dots(&qn, d, &keys_near[j0 * kw + g * d..], kw, n);
            near.copy_from_slice(&f.scores()[..nq * KEY_BLOCK]);
            f.dots(&qf, d, &keys_far[j0 * kw + g * d..], kw, n);
            let sc = f.scores();
            for (i, ti) in (q0..q1).enumerate() {
                // Slots before `mid` are far from this query, `mid..end` near, the rest ahead.
                let (mid, end) = bounds[ti - q0];
                let (mid, end) = (mid.clamp(j0, j0 + n) - j0, end.clamp(j0, j0 + n) - j0);
                let row = &mut sc[i * KEY_BLOCK..i * KEY_BLOCK + n];
                row[..mid].iter_mut().for_each(|x| *x = score(*x));
                for (x, &y) in row[mid..end].iter_mut().zip(&near[i * KEY_BLOCK + mid..]) {
                    *x = score(y);
                }
                row[end..].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            }
            f.absorb(n, &values[j0 * kw + g * d..], kw);
        }
        for (i, ti) in (q0..q1).enumerate() {
            // SAFETY: each (query, head) output slice belongs to one task.
            f.finish_row(i, unsafe { o_ptr.slice((ti * h + hh) * d, d) });
        }
    });
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn attend_stream(
    a: &AttentionSpec,
    rope: &RopeSpec,
    st: Streaming,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos: &[usize],
    kv: &mut LayerKv,
    state: &mut LongLayer,
) -> Result<Vec<f32>> {
    let (h, hkv, d) = (a.n_heads, a.n_kv_heads, a.head_dim);
    let (t, kw) = (pos.len(), hkv * d);
    let n_rep = h / hkv;
    let mut kr = k.to_vec();
    let mut vr = v.to_vec();
    kv.precision.round_slice(&mut kr);
    kv.precision.round_slice(&mut vr);
    kv.append(&kr, &vr, pos);
    // Sinks are the sequence's first tokens; they never leave.
    state.sinks_held = kv.pos.iter().take_while(|&&p| p < st.sinks).count();
    let sinks = state.sinks_held;
    let memory = state.memory.as_ref().filter(|m| !m.chunks.is_empty());
    let mem_spec = state.policy.memory.clone();
    // Slots: sinks at 0..S, the memory (when there is one) at S, the rest after.
    let gap = usize::from(state.memory.is_some());
    let slot_pos = |i: usize| -> usize {
        if i < sinks {
            i
        } else {
            st.sinks + gap + (i - sinks)
        }
    };
    let s = kv.len();
    let max_slot = slot_pos(s - 1);
    let (freqs, af) = rope_freqs(rope, max_slot + 1);
    let key_t = rope_tables_at(&freqs, af, (0..s).map(|i| slot_pos(i) as f32));
    let mut keys = kv.k.f32().to_vec();
    rotate(rope, &key_t, &mut keys, hkv, d);
    let q_slots: Vec<usize> = (s - t..s).map(slot_pos).collect();
    let q_t = rope_tables_at(&freqs, af, q_slots.iter().map(|&p| p as f32));
    let mut q_rot = q.to_vec();
    rotate(rope, &q_t, &mut q_rot, h, d);
    // Against the memory (at slot position S) a query is `slot - S` away.
    let q_mem = memory.map(|_| {
        let t_mem = rope_tables_at(
            &freqs,
            af,
            q_slots.iter().map(|&p| (p - st.sinks.min(p)) as f32),
        );
        let mut x = q.to_vec();
        rotate(rope, &t_mem, &mut x, h, d);
        x
    });
    let score = score_fn(a);
    let mut out = vec![0f32; t * h * d];
    let o_ptr = SharedOut::new(&mut out);
    let (values, k_pos) = (kv.v.f32(), &kv.pos);
    let win = st.window;
    global().run(t * hkv, |task| {
        let (ti, g) = (task / hkv, task % hkv);
        let qp = pos[ti];
        let visible = |j: usize| j < sinks || (k_pos[j] <= qp && qp - k_pos[j] < win);
        // Slots 0..hi may be visible (later ones are this call's future tokens).
        let hi = k_pos.partition_point(|&kp| kp <= qp);
        let chunk = mem_spec.as_ref().map_or(0, |m| m.chunk);
        let mut row = Vec::new();
        for r in 0..n_rep {
            let hh = g * n_rep + r;
            // Retrieval for this (query, head): the chunks whose mean key scores highest, the
            // query rotated to the memory's distance (so the score is the mean attention logit
            // the chunk would get).
            let picked: Vec<usize> = match (memory, &mem_spec, &q_mem) {
                (Some(m), Some(spec), Some(qm)) => {
                    let qm = &qm[(ti * h + hh) * d..][..d];
                    let mut sc: Vec<(f32, usize)> = m
                        .chunks
                        .iter()
                        .enumerate()
                        .map(|(c, ch)| (dot_batched(qm, &ch.mean[g * d..(g + 1) * d]), c))
                        .collect();
                    let kk = spec.topk.min(sc.len());
                    if kk < sc.len() {
                        sc.select_nth_unstable_by(kk, |x, y| y.0.total_cmp(&x.0));
                    }
                    let mut p: Vec<usize> = sc[..kk].iter().map(|x| x.1).collect();
                    p.sort_unstable();
                    p
                }
                _ => Vec::new(),
            };
            row.resize(hi + picked.len() * chunk, 0.0);
            let qv = &q_rot[(ti * h + hh) * d..][..d];
            for (j, x) in row[..hi].iter_mut().enumerate() {
                *x = if visible(j) {
                    score(dot_batched(qv, &keys[j * kw + g * d..][..d]))
                } else {
                    f32::NEG_INFINITY
                };
            }
            if let (Some(m), Some(qm)) = (memory, &q_mem) {
                let qm = &qm[(ti * h + hh) * d..][..d];
                let mut x = hi;
                for &c in &picked {
                    let ch = &m.chunks[c];
                    for i in 0..chunk {
                        row[x] = score(dot_batched(qm, &ch.k[i * kw + g * d..][..d]));
                        x += 1;
                    }
                }
            }
            softmax_row(&mut row, 1.0);
            let mut acc = vec![0f32; d];
            pv_accumulate(&row[..hi], &values[g * d..], kw, d, 1, 0, &mut acc);
            if let Some(m) = memory {
                let mut x = hi;
                for &c in &picked {
                    pv_accumulate(
                        &row[x..x + chunk],
                        &m.chunks[c].v[g * d..],
                        kw,
                        d,
                        1,
                        0,
                        &mut acc,
                    );
                    x += chunk;
                }
            }
            // SAFETY: each (query, head) output slice belongs to one task.
            unsafe { o_ptr.slice((ti * h + hh) * d, d) }.copy_from_slice(&acc);
        }
    });
    // Keep the sinks and what the next query's window needs; the rest goes to the memory.
    let max = *kv.pos.last().unwrap_or(&0);
    let keep_from = (max + 2).saturating_sub(win); // next query at max+1 sees positions > max+1-win
    let first_kept = sinks
        + kv.pos[sinks..]
            .iter()
            .take_while(|&&p| p < keep_from)
            .count();
    if first_kept > sinks {
        let (a0, a1) = (sinks * kw, first_kept * kw);
        if let (Some(m), Some(spec)) = (state.memory.as_mut(), mem_spec.as_ref()) {
            m.push(&kv.k.f32()[a0..a1], &kv.v.f32()[a0..a1], spec, kw, d);
        }
        kv.k.drain(a0..a1);
        kv.v.drain(a0..a1);
        kv.pos.drain(sinks..first_kept);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_positions_meet_the_near_ones_at_the_window() {
        // At distance `window` the far distance equals the near one (continuity).
        for far in [
            FarPositions::ReRope { window: 16 },
            FarPositions::LeakyReRope { window: 16, k: 4.0 },
            FarPositions::SelfExtend {
                group: 4,
                window: 16,
            },
        ] {
            let p = 64;
            let j = p - 16;
            let dist = far.query(p) - far.key(j);
            assert!((dist - 16.0).abs() <= 1.0, "{far:?}: {dist}");
        }
        // ReRoPE clips: every far key at the window's distance.
        let r = FarPositions::ReRope { window: 8 };
        assert_eq!(r.query(1000) - r.key(3), 8.0);
        // Leaky grows by 1/k per position.
        let l = FarPositions::LeakyReRope { window: 8, k: 4.0 };
        assert_eq!(l.query(100) - l.key(0), 8.0 + (100.0 - 8.0) / 4.0);
    }

    #[test]
    fn memory_keeps_whole_chunks_and_evicts_oldest() {
        let spec = MemorySpec {
            topk: 1,
            chunk: 2,
            size: 4,
            layers: None,
        };
        let mut m = Memory::default();
        let kw = 2;
        for i in 0..7 {
            let x = [i as f32, -(i as f32)];
            m.push(&x, &x, &spec, kw, 2);
        }
        // 7 tokens: 3 whole chunks made, 1 evicted (size 4 = 2 chunks), 1 token pending.
        assert_eq!(m.chunks.len(), 2);
        assert_eq!(m.evicted, 1);
        assert_eq!(m.chunks[0].k, vec![2.0, -2.0, 3.0, -3.0]);
        assert_eq!(m.chunks[0].mean, vec![2.5, -2.5]);
    }

    #[test]
    fn validation_names_the_flag() {
        let bad = LongCtx {
            memory: Some(MemorySpec {
                topk: 2,
                chunk: 8,
                size: 64,
                layers: None,
            }),
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--stream-window"));
    }
}
