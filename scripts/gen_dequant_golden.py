#!/usr/bin/env python3
"""Generate crates/ferrolm-format/tests/golden/dequant.json, the golden data that
tests/dequant_golden.rs compares ferrolm's reference dequantization against, bit for bit.

The independent reference is the Python `gguf` package (gguf-py, from llama.cpp):
`gguf.quants.dequantize(bytes, GGMLQuantizationType.X)`. gguf-py has no Q8_K dequantizer, so
Q8_K is computed here with numpy exactly as ggml's dequantize_row_q8_K writes it (d * q in f32).

Two parts:
  synthetic  random but valid blocks for every supported type: random bytes, with each f16
             (or, for Q8_K, f32) scale field set to a sane finite value.
  models     one dequantized row of a few tensors of the two real test models, when the models
             are found (directory from --models-dir or $FERROLM_TEST_MODELS_DIR); the Rust test
             skips these when the files are absent.

Expected values are stored as f32 bit patterns (u32), so the comparison is exact.

Usage: python3 scripts/gen_dequant_golden.py [--models-dir DIR]
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/ferrolm-format/tests/golden/dequant.json"

# Byte offsets of the f16 scale fields inside one block, per type (see ggml-common.h).
F16_SCALE_OFFSETS = {
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q5_0: [0],
    Q.Q5_1: [0, 2],
    Q.Q8_0: [0],
    Q.Q2_K: [80, 82],
    Q.Q3_K: [108],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}

# Blocks per synthetic case.
N_BLOCKS = {Q.F32: 64, Q.F16: 64, Q.BF16: 64, Q.Q8_K: 2}
for t in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0):
    N_BLOCKS[t] = 4
for t in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
    N_BLOCKS[t] = 2

# (model file, tensor name, row index) for the real-model rows.
MODEL_ROWS = [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "blk.0.ffn_down.weight", 3),  # Q4_1
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "token_embd.weight", 100),  # Q8_0
    ("gemma-3-270m-q4_k_m.gguf", "blk.0.attn_k.weight", 5),  # Q5_0
    ("gemma-3-270m-q4_k_m.gguf", "blk.0.attn_output.weight", 7),  # Q4_K
    ("gemma-3-270m-q4_k_m.gguf", "blk.0.ffn_down.weight", 2),  # Q6_K
    ("gemma-3-270m-q4_k_m.gguf", "token_embd.weight", 1000),  # Q8_0
    ("gemma-3-270m-q4_k_m.gguf", "output_norm.weight", 0),  # F32
]


def sane_scales(rng, n):
    """n finite f16 values: random sign, magnitude 2^-12 .. 2^0."""
    mag = np.exp2(rng.uniform(-12, 0, n))
    sign = np.where(rng.random(n) < 0.25, -1.0, 1.0)
    return (mag * sign).astype(np.float16)


def synthetic_bytes(rng, qtype):
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = N_BLOCKS[qtype]
    if qtype == Q.F32:
        vals = rng.normal(0, 10, n_blocks).astype(np.float32)
        vals[:6] = [0.0, -0.0, np.inf, -np.inf, 1e-45, np.nan]
        return vals.tobytes(), n_blocks
    if qtype == Q.F16:
        bits = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint16)
        bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0x83FF, bits)  # no NaN/inf from random
        bits[:4] = [0x7C00, 0xFC00, 0x0001, 0x8000]  # inf, -inf, smallest subnormal, -0
        return bits.astype("<u2").tobytes(), n_blocks
    if qtype == Q.BF16:
        return rng.integers(0, 256, 2 * n_blocks, dtype=np.uint8).tobytes(), n_blocks
    raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    if qtype == Q.Q8_K:
        raw[:, 0:4] = np.frombuffer(sane_scales(rng, n_blocks).astype("<f4").tobytes(), np.uint8).reshape(-1, 4)
    for off in F16_SCALE_OFFSETS.get(qtype, []):
        raw[:, off : off + 2] = np.frombuffer(sane_scales(rng, n_blocks).astype("<f2").tobytes(), np.uint8).reshape(-1, 2)
    return raw.tobytes(), n_blocks * block_size


def reference(qtype, data):
    """Dequantize with gguf-py (numpy for Q8_K, which gguf-py lacks); returns f32 bits."""
    arr = np.frombuffer(data, dtype=np.uint8)
    if qtype == Q.Q8_K:
        blocks = arr.reshape(-1, 292)
        d = blocks[:, 0:4].copy().view("<f4")  # (n_blocks, 1)
        qs = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
        out = (d * qs).astype(np.float32).reshape(-1)
    else:
        out = np.asarray(dequantize(arr, qtype), dtype=np.float32).reshape(-1)
    return [int(b) for b in out.view(np.uint32)]


def model_rows(models_dir):
    rows = []
    readers = {}
    for file, name, row in MODEL_ROWS:
        path = models_dir / file
        if not path.exists():
            print(f"skipping {file}: not found in {models_dir}")
            continue
        reader = readers.setdefault(file, GGUFReader(path))
        t = next(t for t in reader.tensors if t.name == name)
        qtype = Q(t.tensor_type)
        row_len = int(t.shape[0])
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        row_bytes = row_len // block_size * type_size
        data = np.asarray(t.data).view(np.uint8).reshape(-1)[row * row_bytes : (row + 1) * row_bytes].tobytes()
        rows.append(
            {
                "file": file,
                "tensor": name,
                "type": qtype.name,
                "row": row,
                "row_len": row_len,
                "expected_bits": reference(qtype, data),
            }
        )
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", default=os.environ.get("FERROLM_TEST_MODELS_DIR"))
    args = ap.parse_args()

    rng = np.random.default_rng(20240601)
    types = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]
    types += [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_K]
    synthetic = []
    for qtype in types:
        data, n = synthetic_bytes(rng, qtype)
        bits = reference(qtype, data)
        assert len(bits) == n
        synthetic.append({"type": qtype.name, "n": n, "bytes_hex": data.hex(), "expected_bits": bits})

    models = model_rows(Path(args.models_dir)) if args.models_dir else []
    if not args.models_dir:
        print("no models dir given: the golden file will have no model rows")

    # One entry per line keeps the file diffable and small.
    lines = ['{"generator": "scripts/gen_dequant_golden.py",', ' "synthetic": [']
    lines += [" " + json.dumps(e, separators=(",", ":")) + "," for e in synthetic]
    lines[-1] = lines[-1].rstrip(",")
    lines += [" ],", ' "models": [']
    lines += [" " + json.dumps(e, separators=(",", ":")) + "," for e in models]
    if models:
        lines[-1] = lines[-1].rstrip(",")
    lines += [" ]", "}"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(synthetic)} synthetic cases, {len(models)} model rows)")


if __name__ == "__main__":
    main()
