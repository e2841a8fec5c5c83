#!/usr/bin/env python3
"""Generate crates/ferrolm-format/tests/golden/quant_golden.json, the golden data that
tests/quant_golden.rs compares ferrolm's quantizers (src/quant.rs) against, byte for byte.

The reference is ggml itself: `ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, NULL)`
from a built libggml-base shared library, called through ctypes. Without an importance matrix
that runs ggml's `quantize_row_*_ref` for every type listed here (and plain conversion for
F32/F16/BF16). Build llama.cpp (or the llama.cpp vendored in the llama-cpp-python sdist) with
default options and pass the library with --lib or $GGML_LIB, e.g.

    python3 scripts/gen_golden_quant.py --lib path/to/build/bin/libggml-base.so

ggml-base is compiled for baseline x86-64 (no -march flags), so its float arithmetic is plain
IEEE f32 without fused multiply-add, which is what ferrolm's port reproduces.

Each case is `nrows` rows of `n_per_row` f32 values (stored as base64 of the little-endian
bytes, so the inputs are exact), and for every type the base64 of the bytes ggml wrote. The
cases are few on purpose (the file stays under 300 KB) but cover the branches of the
quantizers: zeros, tiny values, large outliers, all-equal blocks, one-signed blocks, exact ties,
infinities, and several distributions.

Usage: python3 scripts/gen_golden_quant.py [--lib PATH] [--random N] [--out PATH]
(--random sets how many random rows of 512 values follow the fixed cases; the committed file
uses the default 10. A one-off wider check: --random 3000 --out elsewhere, then point the test
at it by copying it over the golden file, and restore the file afterwards.)
"""

import argparse
import base64
import ctypes
import json
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/ferrolm-format/tests/golden/quant_golden.json"

# (name, ggml type id, elements per block, bytes per block), as in ggml.h / ggml-common.h.
# F32 is left out: ggml copies the input, and the Rust test checks that against the input.
TYPES = [
    ("F16", 1, 1, 2),
    ("BF16", 30, 1, 2),
    ("Q4_0", 2, 32, 18),
    ("Q4_1", 3, 32, 20),
    ("Q5_0", 6, 32, 22),
    ("Q5_1", 7, 32, 24),
    ("Q8_0", 8, 32, 34),
    ("Q2_K", 10, 256, 84),
    ("Q3_K", 11, 256, 110),
    ("Q4_K", 12, 256, 144),
    ("Q5_K", 13, 256, 176),
    ("Q6_K", 14, 256, 210),
]


def f32(values):
    return np.asarray(values, dtype=np.float32)


def cases(n_random):
    """The (name, nrows, n_per_row, values) inputs; values is a flat float32 array."""
    rng = np.random.default_rng(20240611)
    out = []

    def add(name, nrows, n_per_row, values):
        values = f32(values).reshape(-1)
        assert values.size == nrows * n_per_row, name
        out.append((name, nrows, n_per_row, values))

    # Weight-like rows: normal with a typical weight scale.
    add("normal_weights", 2, 512, rng.normal(0.0, 0.02, 1024))
    add("normal_unit", 1, 256, rng.normal(0.0, 1.0, 256))
    # Heavy tails and a few large outliers (the K-quant scale searches react to these).
    v = rng.standard_t(3, 512) * 0.05
    v[[3, 77, 200, 301, 444]] = [4.0, -7.5, 12.0, -30.0, 90.0]
    add("outliers", 1, 512, v)
    # One-signed rows: all positive (min > 0 paths) and all negative.
    add("positive", 1, 256, rng.uniform(0.5, 2.0, 256))
    add("negative", 1, 256, -rng.uniform(0.1, 3.0, 256))
    # Zeros, tiny values (below f16 range and below GROUP_MAX_EPS), subnormals.
    add("zeros", 1, 256, np.zeros(256))
    add("tiny", 1, 256, rng.normal(0.0, 1e-9, 256))
    add("tinier", 1, 256, rng.normal(0.0, 1e-17, 256))
    add("subnormal", 1, 256, rng.normal(0.0, 1e-39, 256))
    # All-equal rows.
    add("all_equal_pos", 1, 256, np.full(256, 0.37))
    add("all_equal_neg", 1, 256, np.full(256, -1.25))
    # Exact small integers and half-integers: ties for roundf and nearest_int.
    add("integers", 1, 256, rng.integers(-8, 8, 256))
    add("half_integers", 1, 256, rng.integers(-32, 32, 256) * 0.5)
    # Large magnitudes: f16 overflow for F16, large scales elsewhere.
    add("large", 1, 256, rng.normal(0.0, 3e4, 256))
    add("huge", 1, 256, rng.normal(0.0, 1e6, 256))
    # A row whose 32- and 16-element groups differ wildly: zero, constant, tiny, large,
    # one-signed, sparse.
    v = rng.normal(0.0, 0.1, 512)
    v[0:32] = 0.0
    v[32:64] = 0.5
    v[64:96] *= 1e-6
    v[96:128] *= 1e3
    v[128:160] = np.abs(v[128:160]) + 1.0
    v[160:192] = -np.abs(v[160:192])
    v[192:224] = 0.0
    v[200] = 3.0
    v[256:272] = 0.0
    v[272:288] = -2.0
    v[300:316] = np.linspace(-1, 1, 16)
    add("mixed_groups", 1, 512, v)
    # Non-finite and extreme inputs (one per 256-block, so the other blocks stay normal).
    # NaN is left out: ggml and ferrolm agree on x86, but the sign of a NaN that arithmetic
    # produces is not the same on every CPU.
    v = rng.normal(0.0, 1.0, 512)
    v[3], v[300] = np.inf, -np.inf
    add("infinite", 1, 512, v)
    v = rng.normal(0.0, 1.0, 512)
    v[40], v[290] = np.finfo(np.float32).max, -np.finfo(np.float32).max
    add("float_max", 1, 512, v)
    add("uniform", 1, 512, rng.uniform(-1.0, 1.0, 512))
    add("laplace", 1, 256, rng.laplace(0.0, 0.3, 256))
    for i in range(n_random):
        scale = 10.0 ** rng.uniform(-4, 2)
        kind = i % 3
        if kind == 0:
            v = rng.normal(0.0, scale, 512)
        elif kind == 1:
            v = rng.standard_t(2, 512) * scale
        else:
            v = rng.uniform(-scale, scale, 512) + rng.normal(0, scale) * (i % 2)
        add(f"random_{i}", 1, 512, v)
    return out


def b64(data):
    return base64.b64encode(data).decode("ascii")


def load_ggml(path):
    lib = ctypes.CDLL(path)
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [
        ctypes.c_int,  # enum ggml_type
        ctypes.c_void_p,  # const float * src
        ctypes.c_void_p,  # void * dst
        ctypes.c_int64,  # start
        ctypes.c_int64,  # nrows
        ctypes.c_int64,  # n_per_row
        ctypes.c_void_p,  # const float * imatrix (NULL)
    ]
    return fn


def quantize(fn, type_id, block, type_size, nrows, n_per_row, values):
    assert n_per_row % block == 0
    n_bytes = nrows * (n_per_row // block) * type_size
    src = np.ascontiguousarray(values, dtype=np.float32)
    dst = ctypes.create_string_buffer(n_bytes)
    written = fn(type_id, src.ctypes.data, ctypes.addressof(dst), 0, nrows, n_per_row, None)
    assert written == n_bytes, (type_id, written, n_bytes)
    return dst.raw


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", default=os.environ.get("GGML_LIB"),
                    help="path to libggml-base.so (default: $GGML_LIB)")
    ap.add_argument("--random", type=int, default=10)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if not args.lib:
        ap.error("pass --lib path/to/libggml-base.so or set $GGML_LIB")
    fn = load_ggml(args.lib)

    golden = {"source": "ggml_quantize_chunk(type, x, dst, 0, nrows, n_per_row, NULL)",
              "cases": []}
    for name, nrows, n_per_row, values in cases(args.random):
        case = {
            "name": name,
            "nrows": nrows,
            "n_per_row": n_per_row,
            "input_f32_b64": b64(values.astype("<f4").tobytes()),
            "output_b64": {},
        }
        for tname, type_id, block, type_size in TYPES:
            if n_per_row % block:
                continue
            out = quantize(fn, type_id, block, type_size, nrows, n_per_row, values)
            case["output_b64"][tname] = b64(out)
        golden["cases"].append(case)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(golden, indent=1) + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text) // 1024} KB, {len(golden['cases'])} cases)")


if __name__ == "__main__":
    main()
