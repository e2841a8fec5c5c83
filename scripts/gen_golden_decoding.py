#!/usr/bin/env python3
"""Reference contrastive search and DoLa on the tiny HF fixtures -> fixtures/hf/decoding.json.

transformers moved both decoding rules out of its core (to Hub `custom_generate` repos), so
the reference is written here in PyTorch, following the published algorithms as transformers
4.4x implemented them:

- contrastive search (Su et al. 2022, `_contrastive_search` + `_ranking_fast`): the top-k
  tokens of softmax(logits); each candidate is run one step ahead; the chosen one maximises
  (1 - alpha) * p - alpha * max_j cos(h_candidate, h_j) over the context's last-layer hidden
  states (prompt and chosen tokens);
- DoLa (Chuang et al. 2023, `_dola_decoding` + `_dola_select_contrast` +
  `_relative_top_filter`): lm_head on `hidden_states[l]` of each candidate premature layer,
  the layer with the largest Jensen-Shannon divergence from the final distribution chosen per
  step, scores log p_final - log p_premature with tokens below 0.1 x the top final probability
  at -inf; greedy on those scores.

Each step recomputes the whole sequence (no cache): independent of any cache logic.
Run with the venv that made the fixtures: python scripts/gen_golden_decoding.py
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "fixtures" / "hf"
PROMPT = [1, 17, 42, 9, 77, 23, 5, 61, 33, 12]
N_NEW = 12


def load(name):
    m = AutoModelForCausalLM.from_pretrained(FIX / name, dtype=torch.float32)
    m.eval()
    return m


@torch.no_grad()
def run(model, ids):
    out = model(torch.tensor([ids]), output_hidden_states=True)
    return out.logits[0].float(), [h[0].float() for h in out.hidden_states]


@torch.no_grad()
def contrastive(model, prompt, alpha, k, n):
    ids = list(prompt)
    scores = []
    for _ in range(n):
        logits, hs = run(model, ids)
        ctx = hs[-1]  # (T, C), after the final norm
        probs = F.softmax(logits[-1], dim=-1)
        top_p, top_i = probs.topk(k)
        ctx_n = ctx / ctx.norm(dim=-1, keepdim=True)
        best, best_s = None, -math.inf
        for p, t in zip(top_p.tolist(), top_i.tolist()):
            _, hs2 = run(model, ids + [t])
            h = hs2[-1][-1]
            sim = (ctx_n @ (h / h.norm())).max().item()
            s = (1 - alpha) * p - alpha * sim
            if s > best_s:
                best, best_s = t, s
        scores.append(best_s)
        ids.append(best)
    return ids[len(prompt):], scores


def dola_layers(spec, n, tied):
    start = 0 if not tied else (2 if n > 2 else (1 if n == 2 else 0))
    if spec == "low":
        if start == n // 2:
            return [start]
        return list(range(start, n // 2, 2)) if n <= 40 else list(range(start, 20, 2))
    if spec == "high":
        return list(range(n // 2, n, 2)) if n <= 40 else list(range(n - 20, n, 2))
    return [i for i in spec if i < n]


def relative_top_filter(scores, baseline, relative_top=0.1):
    s = scores.log_softmax(dim=-1)
    b = baseline.log_softmax(dim=-1)
    thresh = s.max() + math.log(relative_top)
    thresh = torch.min(s.sort(descending=True).values[0], thresh)
    b[s < thresh] = -1e-3
    s[s < thresh] = -math.inf
    return s, b


@torch.no_grad()
def dola(model, prompt, spec, n):
    cfg = model.config
    layers = dola_layers(spec, cfg.num_hidden_layers, cfg.tie_word_embeddings)
    head = model.get_output_embeddings()
    ids = list(prompt)
    chosen_layers = []
    for _ in range(n):
        logits, hs = run(model, ids)
        final = logits[-1]
        prem = {l: head(hs[l][-1]).float() for l in layers}
        if len(layers) == 1:
            layer = layers[0]
        else:
            stacked = torch.stack([prem[l] for l in layers])
            sm_f = F.softmax(final, dim=-1)
            sm_p = F.softmax(stacked, dim=-1)
            m = 0.5 * (sm_f[None] + sm_p)
            kl1 = F.kl_div(F.log_softmax(final, dim=-1)[None], m, reduction="none").mean(-1)
            kl2 = F.kl_div(F.log_softmax(stacked, dim=-1), m, reduction="none").mean(-1)
            js = 0.5 * (kl1 + kl2)
            layer = layers[int(js.argmax())]
        s, b = relative_top_filter(final.clone(), prem[layer].clone())
        chosen_layers.append(layer)
        ids.append(int((s - b).argmax()))
    return ids[len(prompt):], layers, chosen_layers


def main():
    transformers.utils.logging.set_verbosity_error()
    cases = []
    for name in ["llama", "gpt2", "qwen2", "gemma2"]:
        model = load(name)
        for alpha, k in [(0.6, 4), (0.3, 3)]:
            ids, scores = contrastive(model, PROMPT, alpha, k, N_NEW)
            cases.append({"fixture": name, "rule": "contrastive", "alpha": alpha, "k": k,
                          "prompt": PROMPT, "ids": ids})
            print(name, "contrastive", alpha, k, ids, flush=True)
        n = model.config.num_hidden_layers
        for spec in ["low", "high", list(range(n))]:
            if not dola_layers(spec, n, model.config.tie_word_embeddings):
                continue  # no premature layer (ferrolm refuses it with an error)
            ids, layers, chosen = dola(model, PROMPT, spec, N_NEW)
            cases.append({"fixture": name, "rule": "dola",
                          "layers": spec if isinstance(spec, str) else ",".join(map(str, spec)),
                          "resolved": layers, "prompt": PROMPT, "ids": ids})
            print(name, "dola", spec, layers, ids, "chosen", chosen, flush=True)
    out = FIX / "decoding.json"
    out.write_text(json.dumps({"transformers": transformers.__version__,
                               "torch": torch.__version__, "cases": cases}, indent=1) + "\n")
    print("wrote", out.relative_to(REPO))


if __name__ == "__main__":
    main()
