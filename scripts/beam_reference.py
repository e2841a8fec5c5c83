#!/usr/bin/env python3
"""Generate crates/ferrolm-sample/tests/golden/beam_toy.json, the golden data that the tests in
crates/ferrolm-sample/src/beam.rs compare ferrolm's beam search against.

The reference is Hugging Face transformers' own beam search (`model.generate(num_beams=...)`,
which runs `GenerationMixin._beam_search`), driven by a toy causal LM whose logits are a fixed
function of the last token and the sequence length:

    k[v]      = (7*v + 11*last + 5*len) % 31          (v = 0..V-1; distinct in a row, V < 31)
    k[EOS]   += 31 if (len + last) % 4 == 0 else 0    (EOS = 0; keeps the row free of ties)
    logit[v]  = float32(k[v]) * float32(0.09)

`len` is the whole sequence length, prompt included. The same function is in beam.rs
(`ToyModel`); both sides compute it with one f32 multiply, so the logits agree bit for bit.

Each case records the prompt, the parameters, and HF's returned hypotheses: the new tokens
(trailing padding cut using `beam_indices`) and `sequences_scores`.

Usage: python3 scripts/beam_reference.py   (needs torch and transformers 5.x)
"""

import json
from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/ferrolm-sample/tests/golden/beam_toy.json"

VOCAB = 13
EOS = 0


def toy_logits(ids: torch.Tensor) -> torch.Tensor:
    """ids: (B, T) -> logits (B, VOCAB), f32."""
    b, t = ids.shape
    last = ids[:, -1:].to(torch.int64)  # (B, 1)
    v = torch.arange(VOCAB, dtype=torch.int64)[None, :]  # (1, V)
    k = (7 * v + 11 * last + 5 * t) % 31  # (B, V)
    boost = ((t + last[:, 0]) % 4 == 0).to(torch.int64) * 31  # (B,)
    k[:, EOS] += boost
    return k.to(torch.float32) * torch.tensor(0.09, dtype=torch.float32)


class ToyConfig(PretrainedConfig):
    model_type = "ferrolm_beam_toy"

    def __init__(self, **kwargs):
        kwargs.setdefault("vocab_size", VOCAB)
        super().__init__(**kwargs)


class ToyLM(PreTrainedModel, GenerationMixin):
    config_class = ToyConfig

    def __init__(self, config):
        super().__init__(config)
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # gives the model a device and dtype
        self.post_init()

    def forward(self, input_ids=None, **kwargs):
        logits = toy_logits(input_ids)[:, None, :]  # (B, 1, V)
        return CausalLMOutput(logits=logits)


# (prompt, num_beams, num_return, length_penalty, early_stopping, max_new_tokens, eos)
CASES = [
    ([1, 2, 3], 2, 1, 1.0, False, 6, [EOS]),
    ([1, 2, 3], 3, 3, 1.0, False, 8, [EOS]),
    ([4], 4, 4, 1.0, False, 10, [EOS]),
    ([4], 4, 2, 1.0, True, 10, [EOS]),
    ([4], 4, 4, 1.0, "never", 10, [EOS]),
    ([5, 9], 3, 3, 2.0, False, 9, [EOS]),
    ([5, 9], 3, 3, 2.0, True, 9, [EOS]),
    ([5, 9], 3, 3, 2.0, "never", 9, [EOS]),
    ([5, 9], 3, 3, 0.0, "never", 9, [EOS]),
    ([5, 9], 3, 3, -0.5, False, 9, [EOS]),
    ([5, 9], 3, 3, -0.5, "never", 9, [EOS]),
    ([7, 7, 7, 7], 5, 5, 0.7, False, 7, [EOS, 5]),
    ([7, 7, 7, 7], 5, 3, 0.7, True, 7, [EOS, 5]),
    ([2], 3, 3, 1.0, False, 6, []),
    ([2], 3, 2, 1.5, "never", 1, [EOS]),
    ([3], 6, 6, 1.0, False, 5, [EOS]),
    ([8, 1], 2, 2, 1.0, False, 12, [EOS]),
    ([8, 1], 2, 2, 1.0, True, 12, [EOS]),
    ([11, 12], 8, 8, 1.3, False, 8, [EOS, 3, 6]),
    # num_beams * (1 + n_eos) > vocab: the -1e9 beams of step 0 reach the top-k
    ([6], 7, 7, 1.0, False, 6, [EOS, 1, 2]),
    ([6], 10, 10, 1.0, False, 5, [EOS, 1, 2, 3]),
]


def run_case(model, prompt, num_beams, num_return, lp, early, max_new, eos):
    cfg = GenerationConfig(
        num_beams=num_beams,
        num_return_sequences=num_return,
        length_penalty=lp,
        early_stopping=early,
        max_new_tokens=max_new,
        do_sample=False,
        use_cache=False,
        eos_token_id=eos if eos else None,
        pad_token_id=eos[0] if eos else None,
        return_dict_in_generate=True,
        output_scores=True,
    )
    ids = torch.tensor([prompt], dtype=torch.int64)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
    hyps = []
    for i in range(num_return):
        n_new = int((out.beam_indices[i] >= 0).sum())
        new = out.sequences[i, len(prompt) : len(prompt) + n_new].tolist()
        hyps.append({"ids": new, "score": float(out.sequences_scores[i])})
    return hyps


def main():
    torch.manual_seed(0)
    model = ToyLM(ToyConfig()).eval()
    cases = []
    for prompt, num_beams, num_return, lp, early, max_new, eos in CASES:
        with torch.no_grad():
            hyps = run_case(model, prompt, num_beams, num_return, lp, early, max_new, eos)
        cases.append(
            {
                "prompt": prompt,
                "num_beams": num_beams,
                "num_return": num_return,
                "length_penalty": lp,
                "early_stopping": {True: "true", False: "false"}.get(early, early),
                "max_new_tokens": max_new,
                "eos": eos,
                "hyps": hyps,
            }
        )
    doc = {
        "generator": "scripts/beam_reference.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "vocab": VOCAB,
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # One case per line keeps the file short and its diffs readable.
    head = json.dumps({k: v for k, v in doc.items() if k != "cases"})[:-1]
    body = ",\n  ".join(json.dumps(c) for c in cases)
    OUT.write_text(f'{head}, "cases": [\n  {body}\n]}}\n')
    print(f"wrote {len(cases)} cases to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
