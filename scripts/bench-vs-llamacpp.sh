#!/usr/bin/env bash
# ferrolm bench and llama-bench side by side, alternating, on the same model and threads.
# Prints every run, then a table of medians and ratios (ferrolm / llama.cpp) for pp128, pp512,
# tg128, and tg128 after DEPTH tokens of context (llama-bench -d).
#
# usage: scripts/bench-vs-llamacpp.sh [MODEL] [PAIRS] [THREADS]
#   MODEL: a catalog name (default smollm2-135m-instruct); PAIRS: alternating pairs (default 3);
#   THREADS: default 2. Environment: DEPTH (default 4096; 0 skips the depth test),
#   LLAMA_BENCH (a llama-bench binary; when unset, llama-bench is built once from the sources
#   vendored in the llama-cpp-python 0.3.36 sdist with AVX-512 on and AMX off, into
#   ~/.cache/ferrolm/llama.cpp-0.3.36), FERROLM (default target/release/ferrolm).
set -euo pipefail
model=${1:-smollm2-135m-instruct}
pairs=${2:-3}
threads=${3:-2}
depth=${DEPTH:-4096}
ferrolm=${FERROLM:-target/release/ferrolm}
[ -x "$ferrolm" ] || cargo build --release -p ferrolm-cli

build_llama_bench() {
  local home=${XDG_CACHE_HOME:-$HOME/.cache}/ferrolm/llama.cpp-0.3.36
  local bin=$home/build/bin/llama-bench
  if [ ! -x "$bin" ]; then
    mkdir -p "$home"
    if [ ! -f "$home/llama_cpp_python-0.3.36.tar.gz" ]; then
      # pip fetches the sdist within seconds, then stalls preparing its metadata (a build):
      # take the tarball from pip's temporary folder once it is complete, then stop pip.
      local tmp
      tmp=$(mktemp -d)
      TMPDIR=$tmp pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$tmp/out" \
        >"$tmp/pip.log" 2>&1 &
      local pip_pid=$! found=
      for _ in $(seq 600); do
        found=$(find "$tmp" -name 'llama_cpp_python-0.3.36.tar.gz' 2>/dev/null | head -1)
        if [ -n "$found" ] && tar tzf "$found" >/dev/null 2>&1; then break; fi
        found=
        sleep 1
      done
      kill "$pip_pid" 2>/dev/null || true
      [ -n "$found" ] || { echo "could not fetch the llama-cpp-python sdist (see $tmp/pip.log)" >&2; exit 1; }
      cp "$found" "$home/"
      rm -rf "$tmp"
    fi
    tar xzf "$home/llama_cpp_python-0.3.36.tar.gz" -C "$home"
    cmake -S "$home/llama_cpp_python-0.3.36/vendor/llama.cpp" -B "$home/build" -DCMAKE_BUILD_TYPE=Release \
      -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
      -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON \
      -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF >"$home/cmake.log"
    cmake --build "$home/build" -j"$(nproc)" --target llama-bench >>"$home/cmake.log"
  fi
  echo "$bin"
}

LLAMA_BENCH=${LLAMA_BENCH:-$(build_llama_bench)}
export LD_LIBRARY_PATH=$(dirname "$LLAMA_BENCH")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
path=$("$ferrolm" info -m "$model" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')
out=$(mktemp)
ours() { # p-list n-list depth
  "$ferrolm" bench -m "$model" -p "$1" -n "$2" -d "$3" -r 1 --threads "$threads" --json |
    python3 -c '
import json,sys
for t in json.load(sys.stdin)["tests"]:
    print("ferrolm", t["kind"] + str(t["n"]) + ("@d" + str(t["depth"]) if t["depth"] else ""), t["tok_s"])'
}
theirs() {
  "$LLAMA_BENCH" -m "$path" -p "$1" -n "$2" -d "$3" -r 1 -t "$threads" -o json 2>/dev/null |
    python3 -c '
import json,sys
for r in json.load(sys.stdin):
    kind, n = ("pp", r["n_prompt"]) if r["n_prompt"] > 0 else ("tg", r["n_gen"])
    d = r.get("n_depth", 0)
    print("llama.cpp", kind + str(n) + ("@d" + str(d) if d else ""), r["avg_ts"])'
}
for i in $(seq "$pairs"); do
  ours 128,512 128 0 | tee -a "$out"
  theirs 128,512 128 0 | tee -a "$out"
  if [ "$depth" -gt 0 ]; then
    ours 0 128 "$depth" | tee -a "$out"
    theirs 0 128 "$depth" | tee -a "$out"
  fi
done
python3 - "$out" "$model" "$threads" "$pairs" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
tests = []
for _, t, _ in rows:
    if t not in tests:
        tests.append(t)
med = lambda eng, t: statistics.median(float(v) for e, n, v in rows if e == eng and n == t)
print(f"\n{sys.argv[2]}, {sys.argv[3]} threads, medians of {sys.argv[4]} alternating pairs (tokens/s)\n")
print("| test | ferrolm | llama.cpp | ratio |")
print("|---|---|---|---|")
for t in tests:
    f, l = med("ferrolm", t), med("llama.cpp", t)
    print(f"| {t.replace('@d', ' @ depth ')} | {f:.1f} | {l:.1f} | {f / l:.2f}x |")
PY
rm -f "$out"
