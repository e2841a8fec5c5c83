//! Whether a row's product depends on the other rows in the call. The server batches many
//! sequences' steps into one product and promises each sequence the answer it gets alone, so
//! the 32-block formats must give every row the bits of a one-row call. The K-quant kernels
//! follow llama.cpp's orders, which differ between one row and many (recorded, not required).

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
