#!/usr/bin/env python3
"""Golden outputs from llama.cpp (through llama-cpp-python) for the real GGUF models.

Writes tests/golden/llamacpp_<model>.json with, per prompt: token ids, the top-20 next-token
logits, and a 24-token greedy continuation; plus the perplexity of a text file over windows of
512 tokens, computed the way `ferrolm perplexity` does (file tokens without BOS, cut into
windows of ctx tokens, or ctx-1 headed by BOS when the model adds one; every token after a
window's first is scored).

Usage (llama-cpp-python built with AMX off, see README "Reference outputs"):
  python3 scripts/gen_golden_llamacpp.py --models-dir DIR [--text /usr/share/common-licenses/GPL-3]
"""
import argparse, json, math, os, sys
import numpy as np
from llama_cpp import Llama

MODELS = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3-270m": "gemma-3-270m-q4_k_m.gguf",
}

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "Der schnelle braune Fuchs springt über den faulen Hund, und dann",
    "La vie est belle quand on sait où l'on va. Demain, nous",
    "人工智能正在改变世界，因为",
    "東京は日本の首都であり、",
    "Москва — столица России, и её население",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "fn main() {\n\tlet v: Vec<u32> = (0..10).collect();\n\tprintln!(\"{:?}\", v);\n}\n// In Rust,",
    "I love pizza 🍕🍕 and tacos 🌮! My family 👨‍👩‍👧‍👦 from 🇫🇷 says",
    "Spaces:    four, then\ttab,\t\ttwo tabs,   \n\n  and newlines. Next:",
    "Numbers 1234567 and 3.14159 and 2,718 are",
    "It's what they're doing; we'll see if you've got it, isn't it?",
    "مرحبا بالعالم، هذا",
    "नमस्ते दुनिया, आज",
    "안녕하세요 세계, 오늘은",
    "<html>\n  <body>\n    <p>Hello</p>\n  </body>\n</html>\n<!--",
    "   leading spaces and trailing spaces   ",
]


def log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def run_model(path, text_path, ctx):
    llm = Llama(model_path=path, n_ctx=max(ctx, 256), n_batch=512, logits_all=True, verbose=False, n_threads=2)
    out = {"prompts": []}
    for p in PROMPTS:
        ids = llm.tokenize(p.encode(), add_bos=True, special=False)
        llm.reset()
        llm.eval(ids)
        last = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
        top = np.argsort(-last, kind="stable")[:20]
        # llama.cpp against itself: the same prompt fed one token at a time. The difference
        # to the batched logits is llama.cpp's own numerical noise floor for this prompt.
        llm.reset()
        for t in ids:
            llm.eval([t])
        inc = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
        llm.reset()
        llm.eval(ids)
        # greedy continuation, ignoring end-of-sequence
        gen = []
        cur = int(np.argmax(last))
        for _ in range(24):
            gen.append(cur)
            llm.eval([cur])
            cur = int(np.argmax(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)))
        out["prompts"].append({
            "prompt": p,
            "ids": ids,
            "top20": [[int(i), float(last[i])] for i in top],
            "top20_incremental": [[int(i), float(inc[i])] for i in top],
            "greedy24": gen,
        })
    # also special-token parsing
    out["special"] = []
    for p in ["<|im_start|>user\nHi there<|im_end|>\n", "<start_of_turn>user\nHi<end_of_turn>\n", "<bos>text<eos>"]:
        out["special"].append({"prompt": p, "ids_special": llm.tokenize(p.encode(), add_bos=True, special=True),
                               "ids_plain": llm.tokenize(p.encode(), add_bos=True, special=False)})
    # perplexity
    text = open(text_path, encoding="utf-8").read()
    toks = llm.tokenize(text.encode(), add_bos=False, special=False)
    add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else None
    bos = llm.token_bos()
    meta = llm.metadata
    add_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true"
    per = ctx - (1 if add_bos else 0)
    nll, n = 0.0, 0
    windows = []
    for s in range(0, len(toks), per):
        w = ([bos] if add_bos else []) + toks[s:s + per]
        if len(w) < 2:
            continue
        llm.reset()
        llm.eval(w)
        sc = np.array(llm.scores[:len(w)], dtype=np.float32)
        lp = log_softmax(sc[:-1].astype(np.float64))
        wn = -float(sum(lp[i, w[i + 1]] for i in range(len(w) - 1)))
        nll += wn
        n += len(w) - 1
        windows.append({"tokens_scored": len(w) - 1, "nll": wn})
    out["perplexity"] = {"file": os.path.basename(text_path), "ctx": ctx, "file_tokens": len(toks),
                         "tokens_scored": n, "mean_nll": nll / n, "ppl": math.exp(nll / n), "windows": windows}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "golden"))
    ap.add_argument("--only")
    a = ap.parse_args()
    import llama_cpp
    for name, fname in MODELS.items():
        if a.only and a.only != name:
            continue
        res = run_model(os.path.join(a.models_dir, fname), a.text, a.ctx)
        res["model"] = name
        res["reference"] = f"llama.cpp via llama-cpp-python {llama_cpp.__version__}"
        dst = os.path.join(a.out, f"llamacpp_{name}.json")
        with open(dst, "w", encoding="utf-8") as f:
            json.dump(res, f, ensure_ascii=False, indent=1)
        print(f"wrote {dst}: ppl {res['perplexity']['ppl']:.4f} over {res['perplexity']['tokens_scored']} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
