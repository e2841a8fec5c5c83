#!/usr/bin/env python3
"""Golden token ids and chat renderings for crates/ferrolm-tokenize, from llama.cpp itself.

For each model, every prompt is tokenized by llama.cpp's `llama-tokenize` (add_special as the
model asks, parse_special off and on) and written to
crates/ferrolm-tokenize/tests/golden/tokenize_<model>.json as [{prompt, parse_special, ids}].
Chat templates (the model's own, else ferrolm's ChatML fallback) are rendered with Python
jinja2 configured as transformers' apply_chat_template and written to chat_<model>.json.

Usage:
  scripts/gen_tokenizer_golden.py [--llama-tokenize PATH] [--models DIR]
Needs: a llama.cpp build (llama-tokenize), `pip install gguf jinja2`.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import jinja2
import jinja2.sandbox

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "crates" / "ferrolm-tokenize" / "tests" / "golden"

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}

# Kept in sync with crates/ferrolm-tokenize/src/chat.rs::fallback_chatml().
FALLBACK_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

GPL_HEAD = """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007

 Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>
 Everyone is permitted to copy and distribute verbatim copies
 of this license document, but changing it is not allowed.

                            Preamble

  The GNU General Public License is a free, copyleft license for
software and other kinds of works.

  The licenses for most software and other practical works are designed
to take away your freedom to share and change the works.  By contrast,
the GNU General Public License is intended to guarantee your freedom to
share and change all versions of a program--to make sure it remains free
software for all its users.  We, the Free Software Foundation, use the
GNU General Public License for most of our software; it applies also to
any other work released this way by its authors.  You can apply it to
your programs, too.
"""

PROMPTS = [
    "",
    " ",
    "\n",
    "Hello world",
    "Hello, world! How's it going? I'm fine, they're here, we've done it, you'll see, he'd go.",
    "it's 'quoted' don't we'll they've I'd 'tis 're 'S 'T 'LL",
    "   leading and trailing   ",
    "a  b   c    d     e          f",
    "\tone\t\ttwo\t\t\tthree",
    "line1\nline2\n\nline3\n\n\n\nline4",
    "\t \n \t\n  \n\t\t  x \t \n",
    "windows\r\nline\r\n\r\nend",
    "nbsp\u00a0here\u2003em\u3000ideographic",
    "1234567 3.14159 -42 1,000,000 0x1F 2024-01-01 99.99%",
    "Größere Übungen für Straßenbahnfahrer: Äpfel, Öl und Süßigkeiten.",
    "L'été dernier, nous sommes allés à la mer — c'était très agréable !",
    "我们今天去公园散步，天气非常好。人工智能正在改变世界。",
    "今日はとても良い天気ですね。東京タワーに行きましょう！カタカナとひらがな。",
    "Привет, мир! Как дела? Съешь ещё этих мягких французских булок.",
    "مرحبا بالعالم! كيف حالك اليوم؟",
    "नमस्ते दुनिया! आप कैसे हैं?",
    "안녕하세요, 세계! 오늘 날씨가 좋네요.",
    "สวัสดีครับ ยินดีต้อนรับ",
    "English, 中文, русский, العربية, हिन्दी in one line.",
    "e\u0301 vs \u00e9, n\u0303 vs \u00f1",
    "\ufffd replacement, \u200b zero width, \ufeff BOM",
    "𠀀𠀁 𪚥 rare CJK",
    "I love 🦀 and 🐍! 👍🏽 😀😃😄",
    "Family: 👨\u200d👩\u200d👧\u200d👦, flags: 🇩🇪🇫🇷🇯🇵, rainbow 🏳\ufe0f\u200d🌈",
    "∑_{i=1}^{n} i² = n(n+1)/2 ≈ ∞ ≠ ≤ ≥",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!!!!!!!!!!????....",
    "bell\x07 ctrl \x01\x02 escape\x1b[0m",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"
    "print([fib(i) for i in range(10)])\n",
    "fn main() {\n\tlet v: Vec<u32> = (0..10).map(|x| x * x).collect();\n"
    "\tprintln!(\"{:?}\", v);\n}\n",
    "const add = (a, b) => a + b;\nconsole.log(`sum: ${add(1, 2)}`); // => 3\n",
    '{"name": "ferrolm", "version": [0, 1, 0], "ok": true}',
    "# Title\n\n- item 1\n- item 2\n\n```rust\nlet x = 1;\n```\n",
    "https://example.com/path?query=value&other=123#fragment",
    "<h1>Title</h1>\n<table><tr><td>cell</td></tr></table> <s>x</s>",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<|endoftext|><reponame>x",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos></s><s> <pad><unk><mask>",
    "x<start_of_turn>y<end_of_turn>z<unused0>w[multimodal]v",
    GPL_HEAD,
]

CONVERSATIONS = [
    ([("user", "Hi there!")], True),
    ([("user", "Hi there!")], False),
    ([("system", "You are terse."), ("user", "What is 2+2?"), ("assistant", "4"),
      ("user", "  And 3+3?  \n")], True),
    ([("user", "Ünïcødé 🦀 and <tags>")], True),
]


def tokenize(binary, model_path, text, parse_special):
    cmd = [binary, "-m", str(model_path), "--stdin", "--no-escape", "--ids", "--log-disable"]
    if not parse_special:
        cmd.append("--no-parse-special")
    env = dict(os.environ, LD_LIBRARY_PATH=str(Path(binary).parent))
    res = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, env=env, check=True)
    return json.loads(res.stdout.decode().strip().splitlines()[-1])


def field_str(reader, key):
    f = reader.fields.get(key)
    return None if f is None else bytes(f.parts[-1]).decode("utf-8")


def token_text(reader, idx):
    f = reader.fields["tokenizer.ggml.tokens"]
    return bytes(f.parts[f.data[idx]]).decode("utf-8")


def render(source, bos, eos, conv, add_generation_prompt):
    # As transformers' apply_chat_template compiles templates.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env.globals["raise_exception"] = raise_exception
    messages = [{"role": r, "content": c} for r, c in conv]
    return env.from_string(source).render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        bos_token=bos, eos_token=eos)


def dump_cases(header, cases):
    """JSON with one case per line: small diffs when a golden changes."""
    head = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in header.items())
    body = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
    return "{\n" + head + ',\n "cases": [\n' + body + "\n ]\n}\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--llama-tokenize", required=True, help="path to llama.cpp's llama-tokenize binary")
    ap.add_argument("--models", default=os.environ.get("FERROLM_TEST_MODELS_DIR", os.path.expanduser("~/.cache/ferrolm/models")))
    args = ap.parse_args()
    GOLDEN.mkdir(parents=True, exist_ok=True)

    for name, file in MODELS.items():
        path = Path(args.models) / file
        cases = []
        for prompt in PROMPTS:
            for parse_special in (False, True):
                ids = tokenize(args.llama_tokenize, path, prompt, parse_special)
                cases.append({"prompt": prompt, "parse_special": parse_special, "ids": ids})
        out = GOLDEN / f"tokenize_{name}.json"
        out.write_text(dump_cases({"model": file, "add_special": True}, cases))
        print(f"{out}: {len(cases)} cases", file=sys.stderr)

        reader = gguf.GGUFReader(path)
        source = field_str(reader, "tokenizer.chat_template")
        which = "model" if source is not None else "fallback_chatml"
        source = source if source is not None else FALLBACK_CHATML
        bos = token_text(reader, int(reader.fields["tokenizer.ggml.bos_token_id"].parts[-1][0]))
        eos = token_text(reader, int(reader.fields["tokenizer.ggml.eos_token_id"].parts[-1][0]))
        renders = []
        for conv, agp in CONVERSATIONS:
            renders.append({
                "messages": [{"role": r, "content": c} for r, c in conv],
                "add_generation_prompt": agp,
                "rendered": render(source, bos, eos, conv, agp),
            })
        out = GOLDEN / f"chat_{name}.json"
        out.write_text(dump_cases({"model": file, "template": which, "source": source,
                                   "bos_token": bos, "eos_token": eos}, renders))
        print(f"{out}: {len(renders)} renders ({which})", file=sys.stderr)


if __name__ == "__main__":
    main()
