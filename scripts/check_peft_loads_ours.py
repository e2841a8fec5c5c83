#!/usr/bin/env python3
"""Cross-loads adapters between ferrolm and PEFT on the tiny llama fixture.

1. `ferrolm finetune` trains a LoRA adapter on token ids (from the fixture's golden ids'
   vocabulary) and saves it in PEFT's format; `peft.PeftModel.from_pretrained` loads it onto
   the fixture in transformers and its logits are compared with `ferrolm logits --lora`.
2. The same from the fixture converted to GGUF (`ferrolm convert --type f32`), whose q/k rows
   llama.cpp's layout permutes: the adapter trained on the GGUF base must still load in PEFT.
3. Prompt tuning and P-tuning adapters (`--method prompt|ptuning`): PEFT loads the virtual
   tokens (`prompt_embeddings`) and its logits for the real tokens are compared with
   `ferrolm logits --prompt-adapter`.

Prints the max |logit difference| per case and exits non-zero above 2e-3.
Needs: torch, transformers, peft; a built `target/release/ferrolm`.
Usage: scripts/check_peft_loads_ours.py
"""
import json
import os
import random
import subprocess
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BIN = os.path.join(ROOT, "target/release/ferrolm")
BASE = os.path.join(ROOT, "fixtures/hf/llama")
WORK = os.path.join(ROOT, "target/peft-check")
IDS = [74, 70, 125, 117, 13, 51, 53, 105, 86, 106, 52, 30]


def ferrolm(*args):
    out = subprocess.run([BIN, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"ferrolm {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def main():
    os.makedirs(WORK, exist_ok=True)
    data = os.path.join(WORK, "ids.jsonl")
    r = random.Random(0)
    with open(data, "w") as f:
        for _ in range(40):
            s = r.randrange(0, 100)
            f.write(json.dumps({"input_ids": [(s + 3 * k) % 128 for k in range(24)]}) + "\n")
    gguf = os.path.join(WORK, "llama-f32.gguf")
    ferrolm("convert", BASE, gguf, "--type", "f32")
    worst = 0.0
    for name, model in [("hf base", BASE), ("gguf base", gguf)]:
        out = os.path.join(WORK, name.replace(" ", "-"))
        ferrolm("finetune", "-m", model, "--data", data, "--steps", "40", "--lr", "5e-3", "--rank", "4",
                "--out", out, "--json")
        ours = json.loads(ferrolm("logits", "-m", BASE, "--lora", out, "--ids", ",".join(map(str, IDS)),
                                  "--all", "--json", "--cache-type", "f32"))["logits"]
        base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager")
        peft_model = PeftModel.from_pretrained(base, out).eval()
        with torch.no_grad():
            theirs = peft_model(torch.tensor([IDS])).logits[0].tolist()
        with torch.no_grad():
            plain = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)(torch.tensor([IDS])).logits[0].tolist()
        d = max(abs(a - b) for ra, rb in zip(ours, theirs) for a, b in zip(ra, rb))
        moved = max(abs(a - b) for ra, rb in zip(plain, theirs) for a, b in zip(ra, rb))
        print(f"adapter trained on the {name}: max |ferrolm - PEFT| = {d:.2e} (the adapter moves logits by up to {moved:.2f})")
        worst = max(worst, d)
    for method in ["prompt", "ptuning"]:
        out = os.path.join(WORK, method)
        ferrolm("finetune", "-m", BASE, "--data", data, "--method", method, "--virtual-tokens", "4",
                "--encoder-hidden", "16", "--steps", "30", "--lr", "3e-2", "--out", out, "--json")
        ours = json.loads(ferrolm("logits", "-m", BASE, "--prompt-adapter", out, "--ids", ",".join(map(str, IDS)),
                                  "--all", "--json", "--cache-type", "f32"))["logits"]
        base = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, attn_implementation="eager")
        peft_model = PeftModel.from_pretrained(base, out).eval()
        with torch.no_grad():
            # PEFT's logits include the virtual positions first.
            theirs = peft_model(input_ids=torch.tensor([IDS])).logits[0].tolist()[-len(IDS):]
        d = max(abs(a - b) for ra, rb in zip(ours, theirs) for a, b in zip(ra, rb))
        print(f"{method} adapter: max |ferrolm - PEFT| = {d:.2e} over {len(ours)} positions")
        worst = max(worst, d)
    sys.exit(0 if worst <= 2e-3 else 1)


if __name__ == "__main__":
    main()
