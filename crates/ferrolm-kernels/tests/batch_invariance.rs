//! Whether a row's product depends on the other rows in the call. The server batches many
//! sequences' steps into one product and promises each sequence the answer it gets alone, so
//! the 32-block formats must give every row the bits of a one-row call. The K-quant kernels
//! follow llama.cpp's orders, which differ between one row and many (recorded); a batch passes
//! each sequence's own orders instead (`matmul_ordered`), which this checks too.

use ferrolm_format::quant::quantize;
use ferrolm_format::GgmlType;
use ferrolm_kernels::kquant::KQuantKind;
use ferrolm_kernels::QuantKind;

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A product `y (m, n) = x (m, k) W^T` over quantized `W`.
type Product<'a> = &'a dyn Fn(&[u8], usize, usize, &[f32], &mut [f32]);

fn check(name: &str, ty: GgmlType, mm: Product) -> Vec<usize> {
    let (n, k) = (64, 512);
    let w = quantize(ty, &data(n * k, 1)).unwrap();
    let mut differs = Vec::new();
    for m in [2usize, 3, 4, 8, 24] {
        let x = data(m * k, 7 + m as u32);
        let mut y = vec![0f32; m * n];
        mm(&w, n, k, &x, &mut y);
        for i in 0..m {
            let mut y1 = vec![0f32; n];
            mm(&w, n, k, &x[i * k..(i + 1) * k], &mut y1);
            if y1 != y[i * n..(i + 1) * n] {
                differs.push(m);
                break;
            }
        }
    }
    println!("{name}: row counts whose rows differ from one-row calls: {differs:?}");
    differs
}

#[test]
fn which_products_are_batch_invariant() {
    use QuantKind::*;
    for (kind, ty) in [
        (Q4_0, GgmlType::Q4_0),
        (Q4_1, GgmlType::Q4_1),
        (Q5_0, GgmlType::Q5_0),
        (Q5_1, GgmlType::Q5_1),
        (Q8_0, GgmlType::Q8_0),
    ] {
        let d = check(&format!("{kind:?}"), ty, &|w, n, k, x, y| {
            ferrolm_kernels::matmul(kind, w, n, k, x, y)
        });
        assert!(d.is_empty(), "{kind:?} rows depend on the batch: {d:?}");
    }
    for (kind, ty) in [
        (KQuantKind::Q4K, GgmlType::Q4_K),
        (KQuantKind::Q6K, GgmlType::Q6_K),
    ] {
        check(&format!("{kind:?}"), ty, &|w, n, k, x, y| {
            ferrolm_kernels::kquant::matmul(kind, w, n, k, x, y)
        });
    }
}

/// The K-quant products with each sequence's own orders (`matmul_ordered`, what a server's
/// batched step uses): every row equals its sequence's call alone, for any mix of decode
/// rows and prompt chunks.
#[test]
fn k_quant_rows_with_their_sequences_orders_equal_alone() {
    use ferrolm_kernels::kquant::{matmul, matmul_ordered, order_for};
    for (kind, ty) in [
        (KQuantKind::Q4K, GgmlType::Q4_K),
        (KQuantKind::Q6K, GgmlType::Q6_K),
    ] {
        let (n, k) = (64, 512);
        let w = quantize(ty, &data(n * k, 1)).unwrap();
        let segs = [1usize, 5, 1, 9, 1, 3, 12, 1, 8];
        let m: usize = segs.iter().sum();
        let x = data(m * k, 5);
        let starts: Vec<usize> = segs
            .iter()
            .scan(0, |a, &l| {
                let s = *a;
                *a += l;
                Some(s)
            })
            .collect();
        let seg_of = |i: usize| starts.iter().rposition(|&s| s <= i).unwrap();
        let mut y = vec![0f32; m * n];
        matmul_ordered(kind, &w, n, k, &x, &mut y, |i| {
            let s = seg_of(i);
            order_for(kind, n, segs[s], i - starts[s])
        });
        for (s, (&l, &r0)) in segs.iter().zip(&starts).enumerate() {
            let mut alone = vec![0f32; l * n];
            matmul(kind, &w, n, k, &x[r0 * k..(r0 + l) * k], &mut alone);
            assert_eq!(
                alone,
                y[r0 * n..(r0 + l) * n],
                "{kind:?} sequence {s} ({l} rows)"
            );
        }
    }
}
