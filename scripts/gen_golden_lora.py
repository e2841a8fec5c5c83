#!/usr/bin/env python3
"""PEFT LoRA adapters and PyTorch reference logits for ferrolm's `--lora`.

For each case below this wraps the tiny llama fixture (fixtures/hf/llama, made by
scripts/gen_golden_hf.py) with PEFT's LoraConfig, initialised with `init_lora_weights=False`
(so B is random too and the adapter changes the output), saves it with `save_pretrained`
(adapter_config.json + adapter_model.safetensors, PEFT's key names), reloads base + adapter with
`PeftModel.from_pretrained` and records the all-position logits of the fixture's ids.

Output: fixtures/lora/<case>/ with PEFT's two files plus golden.json:
  {"case", "peft", "torch", "transformers", "ids": [12 ints], "logits": [[V floats] x T]}
Deterministic for fixed library versions. Needs torch, transformers, peft.

Usage: scripts/gen_golden_lora.py [--out DIR]
"""
import argparse
import json
import os

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BASE = os.path.join(ROOT, "fixtures/hf/llama")
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = {
    # Every projection, rank 4, alpha 8 (scaling 2).
    "llama-all": dict(r=4, lora_alpha=8, target_modules=ALL),
    # Attention only, rsLoRA scaling (alpha / sqrt(r)) and a per-module alpha.
    "llama-qv-rslora": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                            use_rslora=True, alpha_pattern={"v_proj": 4}),
}


def rounded(rows):
    return [[float(f"{x:.6g}") for x in r] for r in rows]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "fixtures/lora"))
    a = ap.parse_args()
    ids = json.load(open(os.path.join(BASE, "golden.json")))["ids"]
    for name, kw in CASES.items():
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(lora_dropout=0.0, init_lora_weights=False, **kw))
        out = os.path.join(a.out, name)
        model.save_pretrained(out)
        # No machine path in the fixture, and a stable module order (PEFT keeps a set).
        cfg_path = os.path.join(out, "adapter_config.json")
        cfg = json.load(open(cfg_path))
        cfg["base_model_name_or_path"] = "fixtures/hf/llama"
        cfg["target_modules"] = sorted(cfg["target_modules"])
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        # The reference is what the saved files give.
        base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32,
                                                    attn_implementation="eager")
        model = PeftModel.from_pretrained(base, out).eval()
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        g = {"case": name, "peft": peft.__version__, "torch": torch.__version__,
             "transformers": transformers.__version__, "ids": ids, "logits": rounded(logits.tolist())}
        with open(os.path.join(out, "golden.json"), "w") as f:
            json.dump(g, f)
        # README.md that save_pretrained writes is a model card template; not needed here.
        card = os.path.join(out, "README.md")
        if os.path.exists(card):
            os.remove(card)
        print(name, "written to", out)


if __name__ == "__main__":
    main()
