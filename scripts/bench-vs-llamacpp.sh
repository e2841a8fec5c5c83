#!/usr/bin/env bash
# ferrolm bench and llama-bench side by side, alternating, on the same model and threads.
# Prints each run and the median ratios (ferrolm / llama.cpp) for prefill (pp) and decode (tg).
#
# usage: LLAMA_BENCH=path/to/llama-bench [DEPTH=D] scripts/bench-vs-llamacpp.sh [MODEL] [PAIRS] [THREADS]
#   MODEL: a catalog name (default smollm2-135m-instruct); PAIRS: alternating pairs (default 3);
#   DEPTH: tokens already in the context before measuring (llama-bench -d; default 0).
# Build llama-bench from the llama-cpp-python sdist as README "Reference outputs" says
# (AVX-512 on, AMX off); its shared libraries must be on LD_LIBRARY_PATH.
set -euo pipefail
model=${1:-smollm2-135m-instruct}
pairs=${2:-3}
threads=${3:-2}
depth=${DEPTH:-0}
: "${LLAMA_BENCH:?set LLAMA_BENCH to a llama-bench binary}"
ferrolm=${FERROLM:-target/release/ferrolm}
[ -x "$ferrolm" ] || cargo build --release -p ferrolm-cli
path=$("$ferrolm" info -m "$model" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
out=$(mktemp)
for i in $(seq "$pairs"); do
  "$ferrolm" bench -m "$model" -p 512 -n 128 -d "$depth" -r 1 --threads "$threads" --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("ferrolm", d["pp_tok_s"], d["tg_tok_s"])' | tee -a "$out"
  "$LLAMA_BENCH" -m "$path" -p 512 -n 128 -d "$depth" -r 1 -t "$threads" -o json 2>/dev/null |
    python3 -c '
import json,sys
rows=json.load(sys.stdin)
pp=[r["avg_ts"] for r in rows if r["n_prompt"]>0][0]; tg=[r["avg_ts"] for r in rows if r["n_gen"]>0][0]
print("llama.cpp", pp, tg)' | tee -a "$out"
done
python3 - "$out" "$model" "$threads" "$depth" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
f = [(float(a), float(b)) for n, a, b in rows if n == "ferrolm"]
l = [(float(a), float(b)) for n, a, b in rows if n == "llama.cpp"]
med = lambda xs: statistics.median(xs)
fp, ft, lp, lt = med([x[0] for x in f]), med([x[1] for x in f]), med([x[0] for x in l]), med([x[1] for x in l])
print(f"{sys.argv[2]} ({sys.argv[3]} threads, depth {sys.argv[4]}, medians of {len(f)}): pp512 ferrolm {fp:.1f} llama.cpp {lp:.1f} ratio {fp/lp:.2f}; "
      f"tg128 ferrolm {ft:.1f} llama.cpp {lt:.1f} ratio {ft/lt:.2f}")
PY
rm -f "$out"
