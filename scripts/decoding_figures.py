#!/usr/bin/env python3
"""Figures for the decoding rules on SmolLM2 (the default model), through the CLI's --json.

1. Speculative decoding: on 20 chat prompts, plain greedy vs --speculative ngram, early-exit
   and --draft-model give identical ids (checked); decode tokens/s (median of --repeats runs)
   and acceptance on a copy-heavy set and a free-text set.
2. Repetition: the share of repeated 4-grams in 96-token continuations of 20 text prompts, for
   greedy, contrastive search and DoLa (with and without a repetition penalty), with examples.

Usage: python3 scripts/decoding_figures.py [--bin target/release/ferrolm] [--repeats 3]
"""

import argparse
import json
import statistics
import subprocess
import sys

PARAGRAPHS = [
    "The committee met on Tuesday to review the budget for the coming year. After a long "
    "discussion, the members agreed to increase funding for the library by ten percent, to "
    "repair the roof of the town hall before winter, and to hire two new teachers for the "
    "primary school.",
    "To install the package, download the archive, unpack it into a new folder, and run the "
    "setup script from a terminal. The script checks that the required libraries are present, "
    "builds the program, and copies it into your home directory.",
    "Our shop opens at nine in the morning and closes at six in the evening from Monday to "
    "Saturday. On Sundays we are open from ten until four. Orders placed online before noon "
    "are shipped on the same day.",
    "The river rises in the northern hills and flows south through farmland and two small "
    "towns before it reaches the sea. In spring the water is high and fast; in late summer "
    "it is slow and shallow enough to cross on foot.",
    "Please remember to bring your identity card, a pen, and a bottle of water to the exam. "
    "Phones must be switched off and left in your bag. The exam lasts two hours and starts "
    "at half past nine.",
]

COPY = [f"Repeat the following text exactly, word for word.\n\n{p}" for p in PARAGRAPHS] + [
    f"Rewrite this text with every sentence on its own line, changing no words.\n\n{p}"
    for p in PARAGRAPHS
]

FREE = [
    "Write a short story about a robot who learns to paint.",
    "Explain why the sky is blue to a ten year old.",
    "Give me three tips for learning a new language.",
    "What are the main causes of the French Revolution?",
    "Describe a perfect day at the beach.",
    "How does a refrigerator keep food cold?",
    "Write a poem about autumn leaves.",
    "What should I pack for a week-long hiking trip?",
    "Explain the difference between weather and climate.",
    "Suggest a healthy breakfast and explain why it is healthy.",
]

TEXT = [
    "The history of the old city begins",
    "In the morning, the farmer walked to the field and",
    "Scientists have discovered a new species of",
    "The best way to learn programming is",
    "Once upon a time, in a small village by the sea,",
    "The economy of the country depends mainly on",
    "My favourite recipe for a quick dinner is",
    "The train left the station at exactly",
    "Climate change affects the oceans because",
    "The museum's newest exhibition shows",
    "When I was a child, my grandmother told me",
    "The football match ended in a draw after",
    "Learning to play the piano requires",
    "The company announced on Monday that",
    "Our solar system contains eight planets, and",
    "The key to a good night's sleep is",
    "During the winter, the mountain village",
    "The new law will change the way people",
    "Artificial intelligence can help doctors",
    "The library was quiet except for",
]


def run(bin_, args):
    p = subprocess.run([bin_, "generate", "--json", *args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"ferrolm {' '.join(args)} failed: {p.stderr.strip()}")
    return json.loads(p.stdout)


def repeated_4gram_share(ids):
    grams = [tuple(ids[i:i + 4]) for i in range(len(ids) - 3)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def speculative(bin_, repeats):
    modes = {
        "greedy": [],
        "ngram": ["--speculative", "ngram"],
        "early-exit:20": ["--speculative", "early-exit:20"],
        "draft-model (itself)": ["--draft-model", "smollm2-135m-instruct"],
    }
    identical = {m: 0 for m in modes}
    rows = []
    for name, prompts in [("copy-heavy", COPY), ("free text", FREE)]:
        stats = {m: {"tps": [], "drafted": 0, "accepted": 0, "tokens": 0} for m in modes}
        for prompt in prompts:
            base = None
            for m, extra in modes.items():
                runs = [run(bin_, ["--chat", "-n", "128", *extra, prompt]) for _ in range(repeats)]
                ids = runs[0]["ids"]
                assert all(r["ids"] == ids for r in runs), f"{m}: runs differ"
                if base is None:
                    base = ids
                if ids == base:
                    identical[m] += 1
                else:
                    print(f"DIFFERENT: {m} on {prompt[:40]!r}", file=sys.stderr)
                s = stats[m]
                s["tps"].append(statistics.median(r["decode_tokens_per_second"] for r in runs))
                s["tokens"] += len(ids)
                sp = runs[0].get("speculative")
                if sp:
                    s["drafted"] += sp["drafted"]
                    s["accepted"] += sp["accepted"]
        g = statistics.median(stats["greedy"]["tps"])
        for m, s in stats.items():
            tps = statistics.median(s["tps"])
            acc = s["accepted"] / s["drafted"] if s["drafted"] else None
            rows.append((name, m, tps, tps / g, acc))
    print(f"\nSpeculative decoding, SmolLM2-135M-Instruct Q4_1, greedy, 128 tokens max, "
          f"decode tokens/s = median over prompts of the median of {repeats} runs")
    print("| set | mode | decode tok/s | vs greedy | acceptance |")
    print("|---|---|---|---|---|")
    for name, m, tps, r, acc in rows:
        a = "" if acc is None else f"{acc:.2f}"
        print(f"| {name} | {m} | {tps:.1f} | {r:.2f}x | {a} |")
    n = len(COPY) + len(FREE)
    print("identical ids to greedy: " + ", ".join(f"{m} {identical[m]}/{n}" for m in modes))


def repetition(bin_):
    modes = {
        "greedy": ["--temperature", "0"],
        "greedy + repeat-penalty 1.2": ["--temperature", "0", "--repeat-penalty", "1.2"],
        "contrastive (alpha 0.6, k 4)": ["--decoding", "contrastive", "--penalty-alpha", "0.6",
                                         "--top-k", "4"],
        "DoLa (high)": ["--decoding", "dola", "--dola-layers", "high", "--temperature", "0"],
        "DoLa (high) + repeat-penalty 1.2": ["--decoding", "dola", "--dola-layers", "high",
                                             "--temperature", "0", "--repeat-penalty", "1.2"],
        "DoLa (low)": ["--decoding", "dola", "--dola-layers", "low", "--temperature", "0"],
    }
    print("\nRepetition: share of repeated 4-grams in 96-token continuations of 20 text prompts")
    print("| decoding | mean | median | worst | decode tok/s |")
    print("|---|---|---|---|---|")
    examples = {}
    for m, extra in modes.items():
        shares, tps = [], []
        for i, prompt in enumerate(TEXT):
            r = run(bin_, ["-n", "96", "--ignore-eos", *extra, prompt])
            shares.append(repeated_4gram_share(r["ids"]))
            tps.append(r["decode_tokens_per_second"])
            if i == 0:
                examples[m] = prompt + r["text"]
        print(f"| {m} | {statistics.mean(shares):.3f} | {statistics.median(shares):.3f} | "
              f"{max(shares):.3f} | {statistics.median(tps):.1f} |")
    print("\nExamples (first prompt):")
    for m, t in examples.items():
        print(f"- **{m}**: {t!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/ferrolm")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["speculative", "repetition"])
    a = ap.parse_args()
    if a.only != "repetition":
        speculative(a.bin, a.repeats)
    if a.only != "speculative":
        repetition(a.bin)


if __name__ == "__main__":
    main()
