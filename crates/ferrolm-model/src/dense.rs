//! Dense f32 matrix products for training (the `gemm` crate), on strided views so a
//! transpose or one head of a `(T, H, D)` buffer needs no copy.

/// A strided read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Row-major with row stride `ld`.
    pub fn rows(data: &'a [f32], ld: usize) -> View<'a> {
        View {
            data,
            rs: ld,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with row stride `ld`.
    pub fn t(data: &'a [f32], ld: usize) -> View<'a> {
        View {
            data,
            rs: 1,
            cs: ld,
        }
    }
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.rs + (c - 1) * self.cs < self.data.len()
    }
}

/// `c (m, n) [+]= a (m, k) · b (k, n)`; `c` row-major with row stride `ldc`; `acc` keeps what
/// `c` held.
#[allow(clippy::too_many_arguments)]
pub fn mm(m: usize, k: usize, n: usize, a: View, b: View, c: &mut [f32], ldc: usize, acc: bool) {
    assert!(a.fits(m, k) && b.fits(k, n), "matrix views out of bounds");
    assert!(m == 0 || n == 0 || (m - 1) * ldc + n <= c.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for r in c.chunks_mut(ldc).take(m) {
                r[..n].iter_mut().for_each(|x| *x = 0.0);
            }
        }
        return;
    }
    let par = if m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(ferrolm_kernels::pool::global().threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the product touches is within the slices (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            acc,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// The slow reference: the same product by three loops.
#[allow(clippy::too_many_arguments)]
pub fn mm_reference(
    m: usize,
    k: usize,
    n: usize,
    a: View,
    b: View,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let s: f32 = (0..k)
                .map(|l| a.data[i * a.rs + l * a.cs] * b.data[l * b.rs + j * b.cs])
                .sum();
            let x = &mut c[i * ldc + j];
            *x = if acc { *x + s } else { s };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mm_equals_reference_with_transposes_and_strides() {
        let data: Vec<f32> = (0..40000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        for &(m, k, n) in &[(1, 1, 1), (7, 13, 5), (64, 80, 96), (3, 200, 2)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = if ta {
                    View::t(&data, m + 3)
                } else {
                    View::rows(&data, k + 2)
                };
                let b = if tb {
                    View::t(&data[17..], k + 1)
                } else {
                    View::rows(&data[17..], n + 4)
                };
                let mut c1 = vec![0.5f32; m * (n + 1)];
                let mut c2 = c1.clone();
                mm(m, k, n, a, b, &mut c1, n + 1, true);
                mm_reference(m, k, n, a, b, &mut c2, n + 1, true);
                for (x, y) in c1.iter().zip(&c2) {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{m}x{k}x{n} {ta} {tb}: {x} vs {y}"
                    );
                }
            }
        }
    }
}
