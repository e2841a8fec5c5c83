//! Weight quantization into ggml's block formats, byte for byte equal to ggml's reference
//! quantizers: what `ggml_quantize_chunk(type, x, dst, 0, nrows, n_per_row, NULL)` writes (with
//! no importance matrix ggml runs `quantize_row_*_ref` for every type here).
//!
//! Written to read like ggml/src/ggml-quants.c: the same helpers (`nearest_int`,
//! `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`), the same float operations in the
//! same order and grouping, no fused multiply-add. Two C behaviours are reproduced on purpose:
//! f32 -> f16 rounding is ggml's `GGML_FP32_TO_FP16` (round to nearest even, NaN -> 0x7E00),
//! and C's float -> small-integer casts go through a 32-bit truncation that yields `i32::MIN`
//! for NaN and out-of-range values (x86's `cvttss2si`), then keep the low bits. ggml-base is
//! built for baseline x86-64, so its arithmetic is plain IEEE f32; a build whose compiler
//! contracts to FMA can differ in rare last-bit ties.
//!
//! Layouts are those of [`crate::dequant`]. quant_tests.rs bounds the quantize -> dequantize
//! error of every type; tests/quant_golden.rs compares every type's bytes with ggml's.
//!
//! Speed, single thread: F16..Q8_0 well under a second per 100M values; the K-quants 2-8 s
//! (their scale searches), about ggml's own speed. Blocks are independent, so callers can split
//! a tensor's rows across threads.

use crate::dequant::{k4_scale_min, q3_k_scales};
use crate::error::FormatError;
use crate::types::{GgmlType, QK_K};

/// Whether [`quantize`] can write type `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || block_kernel(ty).is_some()
}

/// Quantizes `x` (whole rows; `x.len()` a multiple of the type's block size) into `ty`'s blocks.
///
/// F32, F16 and BF16 are plain conversions (ggml's rounding). The bytes equal ggml's
/// `ggml_quantize_chunk` without an importance matrix. Blocks are independent, so rows can be
/// quantized together or one at a time with the same result.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>, FormatError> {
    let n_bytes = output_len(ty, x.len())?;
    let mut out = vec![0u8; n_bytes];
    quantize_into(ty, x, &mut out)?;
    Ok(out)
}

/// As [`quantize`], into `out`, which must be exactly `ty.row_bytes(x.len())` long.
pub fn quantize_into(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), FormatError> {
    let n_bytes = output_len(ty, x.len())?;
    if out.len() != n_bytes {
        return Err(FormatError::Quantize {
            ty,
            problem: format!(
                "{} elements take {n_bytes} bytes, but the output buffer has {}",
                x.len(),
                out.len()
            ),
        });
    }
    match ty {
        GgmlType::F32 => {
            for (v, o) in x.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (&v, o) in x.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&fp32_to_fp16(v).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (&v, o) in x.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&fp32_to_bf16(v).to_le_bytes());
            }
        }
        _ => {
            // output_len has checked that the type has a kernel.
            let Some(block_fn) = block_kernel(ty) else {
                unreachable!("output_len accepted {ty} without a kernel")
            };
            let blocks = x.chunks_exact(ty.block_size());
            for (xb, b) in blocks.zip(out.chunks_exact_mut(ty.type_size())) {
                block_fn(xb, b);
            }
        }
    }
    Ok(())
}

/// The output size for `n` elements of `ty`, or why they cannot be quantized.
fn output_len(ty: GgmlType, n: usize) -> Result<usize, FormatError> {
    let problem = |problem: String| FormatError::Quantize { ty, problem };
    if !can_quantize(ty) {
        let names: Vec<&str> = GgmlType::all()
            .filter(|&t| can_quantize(t))
            .map(|t| t.name())
            .collect();
        return Err(problem(format!(
            "ferrolm has no quantizer for this type (it writes {})",
            names.join(", ")
        )));
    }
    ty.row_bytes(n).ok_or_else(|| {
        problem(format!(
            "{n} elements is not a multiple of the block size {}",
            ty.block_size()
        ))
    })
}

/// Quantizes one block: `block_size` values in, `type_size` bytes out (every byte written).
type BlockFn = fn(&[f32], &mut [u8]);

fn block_kernel(ty: GgmlType) -> Option<BlockFn> {
    Some(match ty {
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q2_K => q2_k,
        GgmlType::Q3_K => q3_k,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        _ => return None,
    })
}

// ---- Scalar helpers, as ggml-impl.h and ggml-quants.c define them ----

/// Groups whose largest magnitude is below this quantize to zero (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `ggml_compute_fp32_to_fp16`: round to nearest even, overflow to infinity, every NaN
/// to the quiet NaN 0x7E00 (with the sign).
pub(crate) fn fp32_to_fp16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xFF00_0000).max(0x7100_0000);
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    let magnitude = if shl1_w > 0xFF00_0000 {
        0x7E00
    } else {
        nonsign
    };
    ((sign >> 16) | magnitude) as u16
}

/// ggml's `ggml_compute_fp32_to_bf16`: round to nearest even; NaN kept, forced quiet.
fn fp32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if u & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7FFF + ((u >> 16) & 1)) >> 16) as u16
}

/// Stores `v` as an f16 at byte `at` and returns the stored value widened back to f32 (what ggml
/// reads with `GGML_FP16_TO_FP32(y->d)`).
fn store_f16(b: &mut [u8], at: usize, v: f32) -> f32 {
    let bits = fp32_to_fp16(v);
    b[at..at + 2].copy_from_slice(&bits.to_le_bytes());
    half::f16::from_bits(bits).to_f32()
}

/// ggml's `nearest_int`: round to nearest even through the float adder (valid for
/// |f| <= 2^22; outside that, the same garbage as ggml, never a panic).
fn nearest_int(f: f32) -> i32 {
    let val = f + 12_582_912.0;
    (val.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// C's float -> int conversion as x86 does it (`cvttss2si`): truncation toward zero, and
/// `i32::MIN` for NaN or out-of-range values. ggml's `(int8_t)f` and `(uint8_t)f` keep the low
/// byte of this.
fn trunc_i32(f: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&f) {
        f as i32
    } else {
        i32::MIN
    }
}

/// `1/d`, or 0 when `d` is zero (ggml's `d ? 1.0f/d : 0.0f`).
fn recip_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// (largest magnitude, the value that has it); the first wins ties; NaNs are skipped.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// (min, max) as ggml's Q4_1/Q5_1 scan them (NaNs skipped).
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

// ---- 32-element blocks ----

/// Q4_0 `d | qs[16]`: d = -max/8 (max: the value of largest magnitude), q = x/d + 8.
fn q4_0(x: &[f32], b: &mut [u8]) {
    let (_, max) = signed_absmax(x);
    let d = max / -8.0;
    let id = recip_or_zero(d);
    store_f16(b, 0, d);
    for j in 0..16 {
        let q0 = (trunc_i32(x[j] * id + 8.5) as i8).min(15) as u8;
        let q1 = (trunc_i32(x[j + 16] * id + 8.5) as i8).min(15) as u8;
        b[2 + j] = q0 | (q1 << 4);
    }
}

/// Q4_1 `d m | qs[16]`: m = min, d = (max - min)/15, q = (x - m)/d.
fn q4_1(x: &[f32], b: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = recip_or_zero(d);
    store_f16(b, 0, d);
    store_f16(b, 2, min);
    for j in 0..16 {
        let q0 = (trunc_i32((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let q1 = (trunc_i32((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        b[4 + j] = q0 | (q1 << 4);
    }
}

/// Writes 32 five-bit values as Q5_0/Q5_1 store them: `qh[4]` (bit j = fifth bit of value j)
/// then `qs[16]` (value j in the low nibble of byte j, value j+16 in the high one).
fn pack_q5(q: &[u8; 32], b: &mut [u8]) {
    let mut qh = 0u32;
    for j in 0..16 {
        let (q0, q1) = (q[j], q[j + 16]);
        b[4 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
        qh |= u32::from((q0 & 0x10) >> 4) << j;
        qh |= u32::from((q1 & 0x10) >> 4) << (j + 16);
    }
    b[0..4].copy_from_slice(&qh.to_le_bytes());
}

/// Q5_0 `d | qh[4] | qs[16]`: d = -max/16, q = x/d + 16.
fn q5_0(x: &[f32], b: &mut [u8]) {
    let (_, max) = signed_absmax(x);
    let d = max / -16.0;
    let id = recip_or_zero(d);
    store_f16(b, 0, d);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (trunc_i32(v * id + 16.5) as i8).min(31) as u8;
    }
    pack_q5(&q, &mut b[2..22]);
}

/// Q5_1 `d m | qh[4] | qs[16]`: m = min, d = (max - min)/31, q = (x - m)/d.
fn q5_1(x: &[f32], b: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = recip_or_zero(d);
    store_f16(b, 0, d);
    store_f16(b, 2, min);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = trunc_i32((v - min) * id + 0.5) as u8;
    }
    pack_q5(&q, &mut b[4..24]);
}

/// Q8_0 `d | qs[32]`: d = amax/127, q = round(x/d).
fn q8_0(x: &[f32], b: &mut [u8]) {
    let mut amax = 0.0f32;
    for &v in x {
        // ggml's MAX(amax, fabsf(v)): a NaN is kept only until the next value.
        amax = if amax > v.abs() { amax } else { v.abs() };
    }
    let d = amax / 127.0;
    let id = recip_or_zero(d);
    store_f16(b, 0, d);
    for (q, &v) in b[2..34].iter_mut().zip(x) {
        *q = trunc_i32((v * id).round()) as u8;
    }
}

// ---- Group quantizers of the K-quants ----

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights (weights x²):
/// symmetric quants in `0..2*nmax` (stored offset by `nmax`), trying 18 scales around
/// `-nmax/max` and keeping the best weighted least-squares fit. Returns the scale.
fn make_qx_quants(x: &[f32], nmax: i32, out: &mut [u8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = quant(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, out: &mut [u8]| {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (quant(iscale, v) + nmax) as u8;
        }
    };
    let iscale = -(nmax as f32) / max;
    let (sumlx, suml2) = sums(iscale);
    fill(iscale, out);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, out);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse`: symmetric quants in `-nmax..nmax` (stored offset by
/// `nmax`), refined one element at a time for up to 5 passes. Returns the scale.
fn make_q3_quants(x: &[f32], nmax: i32, out: &mut [u8]) -> f32 {
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut l = [0i32; 16];
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (li, &v) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        sumlx += w * v * *li as f32;
        suml2 += w * *li as f32 * *li as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let mut slx = sumlx - w * v * *li as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * *li as f32 * *li as f32;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *li {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (o, &li) in out.iter_mut().zip(&l) {
        *o = (li + nmax) as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The search of `make_qkx2_quants`: candidate inverse scales
/// `(nmax + rmin + rdelta*is) / (max - min)` for `is` in `0..=nstep`; the error of a candidate
/// sums `w*|diff|` (`use_mad`) or `w*diff²`.
struct ScaleSearch {
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
}

const Q2_K_SEARCH: ScaleSearch = ScaleSearch {
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: true,
};
const Q4_K_SEARCH: ScaleSearch = ScaleSearch {
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    use_mad: false,
};
const Q5_K_SEARCH: ScaleSearch = ScaleSearch {
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

/// ggml's `make_qkx2_quants`: asymmetric quants `l` in `0..=nmax` with x ≈ scale*l - the_min,
/// the_min >= 0, fitted by weighted least squares over `search`'s candidate scales (at most
/// 32 values). Returns (scale, the_min).
fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    search: &ScaleSearch,
    out: &mut [u8],
) -> (f32, f32) {
    let n = x.len();
    // Same lengths for all three slices, so the loops below need no bounds checks.
    let (weights, out) = (&weights[..n], &mut out[..n]);
    let aux = &mut [0u8; 32][..n];
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        out.fill(0);
        return (0.0, -min);
    }
    let error = |diff: f32| {
        if search.use_mad {
            diff.abs()
        } else {
            diff * diff
        }
    };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        out[i] = l as u8;
        best_error += weights[i] * error(scale * out[i] as f32 + min - x[i]);
    }
    if search.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=search.nstep {
        iscale = (search.rmin + search.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                cur_error += weights[i] * error(this_scale * aux[i] as f32 + this_min - x[i]);
            }
            if cur_error < best_error {
                out.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Packs 256 two-bit values as Q2_K/Q3_K store them: in each half of 128, byte l holds values
/// l, l+32, l+64, l+96 at bits 0, 2, 4, 6.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for half in 0..2 {
        let l = &l[128 * half..128 * half + 128];
        for i in 0..32 {
            qs[32 * half + i] = l[i] | (l[i + 32] << 2) | (l[i + 64] << 4) | (l[i + 96] << 6);
        }
    }
}

// ---- K-quant super-blocks of 256 ----

/// Q2_K `scales[16] | qs[64] | d dmin`: 16 groups of 16 fitted by `make_qkx2_quants`
/// (weights |x|), their scales and mins quantized to 4 bits, then the values re-quantized.
fn q2_k(x: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0.0f32; 16], [0.0f32; 16]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let mut weights = [0.0f32; 16];
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = v.abs();
        }
        let ls = &mut l[16 * j..16 * j + 16];
        (scales[j], mins[j]) = make_qkx2_quants(xs, &weights, 3, &Q2_K_SEARCH, ls);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let d = if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for j in 0..16 {
            b[j] = nearest_int(iscale * scales[j]) as u8;
        }
        store_f16(b, 80, max_scale / 15.0)
    } else {
        b[0..16].fill(0);
        store_f16(b, 80, 0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for j in 0..16 {
            b[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        store_f16(b, 82, max_min / 15.0)
    } else {
        store_f16(b, 82, 0.0)
    };
    let groups = x.chunks_exact(16).zip(l.chunks_exact_mut(16));
    for (&sc, (xs, ls)) in b[..16].iter().zip(groups) {
        let dl = d * (sc & 0x0F) as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * (sc >> 4) as f32;
        for (li, &v) in ls.iter_mut().zip(xs) {
            *li = nearest_int((v + ml) / dl).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut b[16..80]);
}

/// Q3_K `hmask[32] | qs[64] | scales[12] | d`: 16 groups of 16 fitted by `make_q3_quants`,
/// their scales quantized to 6 signed bits, then the values re-quantized to -4..3.
fn q3_k(x: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut amax, mut max_scale) = (0.0f32, 0.0f32);
    for j in 0..16 {
        scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut l[16 * j..16 * j + 16]);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }
    let packed = &mut b[96..108];
    packed.fill(0);
    let d = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            let q = ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8;
            if j < 8 {
                packed[j] = q & 0x0F;
            } else {
                packed[j - 8] |= (q & 0x0F) << 4;
            }
            packed[8 + j % 4] |= (q >> 4) << (2 * (j / 4));
        }
        store_f16(b, 108, 1.0 / iscale)
    } else {
        store_f16(b, 108, 0.0)
    };
    let groups = x.chunks_exact(16).zip(l.chunks_exact_mut(16));
    for (sc, (xs, ls)) in q3_k_scales(&b[96..108]).into_iter().zip(groups) {
        let dl = d * sc as f32;
        if dl == 0.0 {
            continue;
        }
        for (li, &v) in ls.iter_mut().zip(xs) {
            *li = (nearest_int(v / dl).clamp(-4, 3) + 4) as u8;
        }
    }
    // The third bit of value j goes to bit j/32 of hmask[j % 32].
    let hmask = &mut b[0..32];
    hmask.fill(0);
    for (j, l) in l.iter_mut().enumerate() {
        if *l > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            *l -= 4;
        }
    }
    pack_2bit(&l, &mut b[32..96]);
}

/// The shared part of Q4_K and Q5_K (`d dmin | scales[12] | ...`): 8 groups of 32 fitted by
/// `make_qkx2_quants` (weights rms + |x|), scales and mins quantized to 6 bits and packed into
/// `b[4..16]`, then the values re-quantized to `0..=nmax` into `l`.
fn k4_scales_and_quants(
    x: &[f32],
    b: &mut [u8],
    nmax: i32,
    search: &ScaleSearch,
    l: &mut [u8; QK_K],
) {
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0.0f32; 32];
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let ls = &mut l[32 * j..32 * j + 32];
        (scales[j], mins[j]) = make_qkx2_quants(xs, &weights, nmax, search, ls);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut b[4..16];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = store_f16(b, 0, max_scale / 63.0);
    let dmin = store_f16(b, 2, max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = k4_scale_min(j, &b[4..16]);
        let dl = d * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * m as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + ml) / dl).clamp(0, nmax) as u8;
        }
    }
}

/// Q4_K `d dmin | scales[12] | qs[128]`: in each chunk of 64, byte l holds value l (low nibble)
/// and value l+32 (high nibble).
fn q4_k(x: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    k4_scales_and_quants(x, b, 15, &Q4_K_SEARCH, &mut l);
    let qs = &mut b[16..144];
    for chunk in 0..4 {
        let l = &l[64 * chunk..64 * chunk + 64];
        for i in 0..32 {
            qs[32 * chunk + i] = l[i] | (l[i + 32] << 4);
        }
    }
}

/// Q5_K `d dmin | scales[12] | qh[32] | qs[128]`: as Q4_K, the fifth bit of value l+64c in bit
/// 2c of qh[l], of value l+32+64c in bit 2c+1.
fn q5_k(x: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    k4_scales_and_quants(x, b, 31, &Q5_K_SEARCH, &mut l);
    let (qh, qs) = b[16..176].split_at_mut(32);
    qh.fill(0);
    for chunk in 0..4 {
        let l = &l[64 * chunk..64 * chunk + 64];
        for i in 0..32 {
            let (mut l1, mut l2) = (l[i], l[i + 32]);
            if l1 > 15 {
                l1 -= 16;
                qh[i] |= 1 << (2 * chunk);
            }
            if l2 > 15 {
                l2 -= 16;
                qh[i] |= 2 << (2 * chunk);
            }
            qs[32 * chunk + i] = l1 | (l2 << 4);
        }
    }
}

/// Q6_K `ql[128] | qh[64] | scales[16] (i8) | d`: 16 groups of 16 fitted by `make_qx_quants`,
/// scales quantized to 8 signed bits, values re-quantized to -32..31 (stored offset by 32).
fn q6_k(x: &[f32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_abs_scale, mut max_scale) = (0.0f32, 0.0f32);
    for j in 0..16 {
        scales[j] = make_qx_quants(&x[16 * j..16 * j + 16], 32, &mut l[16 * j..16 * j + 16]);
        if scales[j].abs() > max_abs_scale {
            max_abs_scale = scales[j].abs();
            max_scale = scales[j];
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        b.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = store_f16(b, 208, 1.0 / iscale);
    for j in 0..16 {
        b[192 + j] = nearest_int(iscale * scales[j]).min(127) as u8;
    }
    for j in 0..16 {
        let dl = d * (b[192 + j] as i8) as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            l[i] = (nearest_int(x[i] / dl).clamp(-32, 31) + 32) as u8;
        }
    }
    for half in 0..2 {
        let l = &l[128 * half..128 * half + 128];
        for i in 0..32 {
            let (q1, q2, q3, q4) = (l[i], l[i + 32], l[i + 64], l[i + 96]);
            b[64 * half + i] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
            b[64 * half + i + 32] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
            b[128 + 32 * half + i] =
                (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}

#[cfg(test)]
#[path = "quant_tests.rs"]
mod tests;
