#!/usr/bin/env python3
"""Long-context figures on SmolLM2-135M-Instruct (trained context 8192), through the CLI's --json.

1. Perplexity over several licence texts of /usr/share/common-licenses concatenated (> 20,000
   tokens): chunked (--ctx 1024) against streaming with 4 sinks and a 1024 window, and the same
   without sinks; RSS sampled during the streaming runs.
2. Passkey accuracy per length and method (`ferrolm eval passkey`), with ms per prompt token
   and the KV memory the sequence held.
3. llama.cpp's YaRN at 16k on the same task, as the peer's figure (llama-cpp-python, with
   LLAMA_CPP_LIB_PATH pointing at a llama.cpp build when the wheel has none).

Results go to stdout as markdown tables and, one JSON line per run, to --out.

Usage: python3 scripts/longctx_figures.py [--only ppl|passkey|llamacpp] [--trials 3]
"""

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time

# FERROLM_BIN lets a long run use a copy of the binary while the tree is rebuilt.
BIN = os.environ.get("FERROLM_BIN", "target/release/ferrolm")
MODEL = "smollm2-135m-instruct"
LICENSES = ["GPL-3", "GPL-2", "LGPL-2.1", "Apache-2.0", "MPL-2.0"]

ALL = [4096, 8192, 16384, 32768]
# (name, flags, lengths)
METHODS = [
    ("kNN memory (sinks 4, window 1024, top-16 of 8-token chunks)",
     ["--stream-window", "1024", "--sinks", "4", "--memory-topk", "16", "--memory-chunk", "8"],
     [4096, 8192, 16384, 32768]),
    ("no scaling", [], ALL),
    ("linear x4", ["--rope-scaling", "linear", "--rope-factor", "4"], ALL),
    ("dynamic NTK x4", ["--rope-scaling", "dynamic", "--rope-factor", "4"], ALL),
    ("YaRN x4", ["--rope-scaling", "yarn", "--rope-factor", "4"], ALL),
    ("ReRoPE w4096", ["--rope-scaling", "rerope", "--rerope-window", "4096"], ALL),
    ("Self-Extend 8:2048", ["--self-extend", "8:2048"], ALL),
]


def run(args):
    out = subprocess.run([BIN] + args + ["-m", MODEL, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"ferrolm {' '.join(args)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def long_text(path):
    with open(path, "w") as f:
        for name in LICENSES:
            with open(f"/usr/share/common-licenses/{name}") as g:
                f.write(g.read())
    return path


def ppl(log):
    text = long_text("target/longctx-licenses.txt")
    rows = []
    for name, flags in [
        ("chunked, --ctx 1024", ["--ctx", "1024"]),
        ("streaming, 4 sinks + 1024 window", ["--stream-window", "1024", "--sinks", "4"]),
        ("streaming, no sinks, 1024 window", ["--stream-window", "1024"]),
    ]:
        t = time.time()
        r = run(["perplexity", "-f", text] + flags)
        r["name"], r["wall_s"] = name, time.time() - t
        log.write(json.dumps(r) + "\n")
        log.flush()
        rows.append(r)
    base = rows[0]["ppl"]
    print("\n| run | tokens scored | perplexity | vs chunked | RSS start -> end (MiB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        rss = r.get("rss_mib") or []
        span = f"{rss[1]['rss_mib']:.0f} -> {rss[-1]['rss_mib']:.0f}" if len(rss) > 1 else ""
        print(f"| {r['name']} | {r['tokens_scored']} | {r['ppl']:.4f} | {r['ppl'] / base:.3f}x | {span} |")
    for r in rows[1:]:
        print(f"RSS samples ({r['name']}): " + ", ".join(f"{x['tokens']}:{x['rss_mib']:.0f}" for x in r["rss_mib"]))


def passkey(log, trials, done, max_length):
    """Each method at each of its lengths; (method, length) pairs already in the log are reused."""
    table = dict(done)
    # The memory method first at every length (the one that reaches 32k), then the others
    # length by length.
    # Within a length, the methods that can still work there come first (when time is short).
    first = ["memory", "ReRoPE", "Self-Extend", "YaRN", "dynamic"]
    rank = lambda name: next((i for i, f in enumerate(first) if f in name), len(first))
    work = sorted(((name, flags, length) for name, flags, lengths in METHODS for length in lengths),
                  key=lambda w: (rank(w[0]) != 0, w[2], rank(w[0])))
    for name, flags, length in work:
        if (name, length) in table or length > max_length:
            continue
        # Full attention at 16k and 32k costs minutes per trial on 2 cores: two thirds of the trials.
        n = trials if length <= 8192 or "memory" in name else max(1, trials * 2 // 3)
        r = run(["eval", "passkey", "--lengths", str(length), "--trials", str(n)] + flags)
        res = r["results"][0]
        res["method"] = name
        log.write(json.dumps(res) + "\n")
        log.flush()
        table[(name, length)] = res
        print(f"{name} @ {length}: {res['correct']}/{res['trials']}, {res['ms_per_token']:.2f} ms/token, "
              f"KV {res['kv_mib']:.0f} MiB", flush=True)
    lengths = [4096, 8192, 16384, 32768]
    print("\n| method | " + " | ".join(f"{l // 1024}k" for l in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for name, _, _ in METHODS:
        cells = []
        for l in lengths:
            r = table.get((name, l))
            cells.append(f"{r['correct']}/{r['trials']}" if r else "not run")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n| method | length | ms / prompt token | KV held (MiB) |")
    print("|---|---|---|---|")
    for (name, l), r in table.items():
        if l in (4096, 32768) or (l == 8192 and (name, 32768) not in table):
            print(f"| {name} | {l} | {r['ms_per_token']:.2f} | {r['kv_mib']:.0f} |")


INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = " What is the pass key? The pass key is"


def llamacpp(log, trials, length=16384):
    from llama_cpp import Llama, LLAMA_ROPE_SCALING_TYPE_YARN

    path = os.path.expanduser("~/.cache/ferrolm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    llm = Llama(model_path=path, n_ctx=length + 64, n_batch=512, n_threads=2, verbose=False,
                rope_scaling_type=LLAMA_ROPE_SCALING_TYPE_YARN, rope_freq_scale=8192 / length,
                yarn_orig_ctx=8192)
    per_rep = len(llm.tokenize((FILLER * 20).encode(), add_bos=False)) / 20
    fixed = len(llm.tokenize((INTRO + " The pass key is 12345. Remember it. 12345 is the pass key." + QUESTION).encode()))
    reps = int((length - fixed - 8) / per_rep)
    rng = random.Random(0)
    correct, secs = 0, []
    for _ in range(trials):
        key, at = rng.randint(10000, 99999), rng.randint(0, reps)
        text = INTRO + "".join(
            (f" The pass key is {key}. Remember it. {key} is the pass key." if i == at else "") + (FILLER if i < reps else "")
            for i in range(reps + 1)) + QUESTION
        llm.reset()
        t = time.time()
        out = llm.create_completion(text, max_tokens=8, temperature=0.0)["choices"][0]["text"]
        secs.append(time.time() - t)
        m = re.search(r"(?<!\d)\d{5}(?!\d)", out)
        correct += int(bool(m) and int(m.group()) == key)
        print(f"llama.cpp YaRN {length}: key {key} -> {out.strip()!r}", flush=True)
    r = {"method": "llama.cpp YaRN", "length": length, "trials": trials, "correct": correct,
         "median_s": statistics.median(secs)}
    log.write(json.dumps(r) + "\n")
    print(f"\nllama.cpp YaRN x{length // 8192} at {length}: {correct}/{trials}, median {statistics.median(secs):.0f} s per trial")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["ppl", "passkey", "llamacpp"])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out", default="target/longctx-figures.jsonl")
    ap.add_argument("--max-length", type=int, default=32768, help="passkey lengths up to this")
    a = ap.parse_args()
    done = {}
    if os.path.exists(a.out):
        for line in open(a.out):
            r = json.loads(line)
            if "method" in r and "accuracy" in r:
                done[(r["method"], r["length"])] = r
    with open(a.out, "a") as log:
        if a.only in (None, "ppl"):
            ppl(log)
        if a.only in (None, "llamacpp"):
            llamacpp(log, a.trials)
        if a.only in (None, "passkey"):
            passkey(log, a.trials, done, a.max_length)


if __name__ == "__main__":
    main()
