//! Which SIMD paths this CPU may take, detected once. `FERROLM_NO_SIMD=1` turns the vector
//! kernels off (they return the same bits as the portable code, so this only changes speed).

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug)]
pub struct Features {
    /// FMA and AVX2: `mul_add` in one instruction.
    pub fma: bool,
    /// AVX-512 F/DQ with FMA: the attention dots.
    pub avx512: bool,
    /// AVX-512 BW/VL/VNNI with F16C: the quantized products.
    pub vnni: bool,
}

pub fn features() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    use std::arch::is_x86_feature_detected as has;
    let simd = std::env::var_os("FERROLM_NO_SIMD").is_none();
    let fma = has!("fma") && has!("avx2");
    Features {
        fma,
        avx512: simd && fma && has!("avx512f") && has!("avx512dq"),
        vnni: simd
            && fma
            && has!("avx512bw")
            && has!("avx512vl")
            && has!("avx512vnni")
            && has!("f16c"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features {
        fma: false,
        avx512: false,
        vnni: false,
    }
}
