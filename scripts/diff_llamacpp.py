#!/usr/bin/env python3
"""Random-prompt differential against llama.cpp: slices of the license texts on this machine
plus a few fixed multilingual/code/emoji prompts, through llama-cpp-python (batched prompt
evaluation) and `ferrolm logits`; prints the worst |logit difference| over llama.cpp's top-20.

usage: LLAMA_CPP_LIB_PATH=... scripts/diff_llamacpp.py MODEL.gguf CATALOG_NAME [SEED]
(CTX=512 for Gemma, whose 262k-entry vocabulary makes all-position logits large.)
Needs llama-cpp-python built as README "Reference outputs" says, and a release build of ferrolm.
"""
import json, os, random, subprocess, sys
import numpy as np
from llama_cpp import Llama
model, name = sys.argv[1], sys.argv[2]
random.seed(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
texts = []
for f in ['Apache-2.0','Artistic','BSD','GFDL-1.3','LGPL-2.1','MPL-2.0','CC0-1.0','GPL-2']:
    t = open('/usr/share/common-licenses/'+f, encoding='utf-8', errors='replace').read()
    for _ in range(3):
        n = random.choice([5, 20, 60, 150, 300, 700])
        s = random.randrange(0, max(1, len(t) - n * 5))
        texts.append(t[s:s + n * 4])
texts += ["Der schnelle braune Fuchs springt über den faulen Hund, und dann",
          "日本語のテキストを生成する簡単な例として、",
          "SELECT name, count(*) FROM users WHERE age > 30 GROUP BY",
          "  indented\n\t\ttabs and    spaces\n\n\n",
          "1 + 1 = 2, 2 + 2 = 4, 4 + 4 =",
          "🙂🙃 emoji 👩‍👩‍👧‍👦 family 🇫🇷 flag"]
CTX = int(os.environ.get("CTX", "1024"))
llm = Llama(model_path=model, n_ctx=CTX, n_batch=512, logits_all=True, verbose=False, n_threads=2)
worst, tops = 0.0, 0
for t in texts:
    ids = llm.tokenize(t.encode(), add_bos=True, special=False)[:CTX - 8]
    llm.reset(); llm.eval(ids)
    row = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
    top = np.argsort(-row)[:20]
    out = subprocess.run(['./target/release/ferrolm', 'logits', '-m', name, '--ctx', str(CTX), '--top', '20', '--json', '--ids', ','.join(map(str, ids))], capture_output=True, text=True)
    ours = {i: l for i, l in json.loads(out.stdout)['top']}
    d = max(abs(ours.get(int(i), -1e9) - float(row[i])) for i in top)
    worst = max(worst, d)
    tops += int(max(ours, key=ours.get) == int(top[0]))
    if d > 1e-4:
        print('DIFF', len(ids), d, repr(t[:40]))
print(name, 'prompts', len(texts), 'worst', worst, 'top1 same', tops)
