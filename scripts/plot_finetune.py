#!/usr/bin/env python3
"""Loss curves of `ferrolm finetune --json` summaries as one SVG (no plotting library needed).

Usage: scripts/plot_finetune.py OUT.svg NAME=SUMMARY.json[:SEQS_PER_STEP] [...]
Each curve is the training loss against the training sequences seen (log scale), smoothed over
40 sequences. Sequences per step come from the summary's `sequences_per_step`, or the `:N`
suffix (default 8).
"""
import json
import math
import sys

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
W, H, L, R, T, B = 720, 400, 70, 170, 30, 50


def main():
    out, specs = sys.argv[1], sys.argv[2:]
    curves = []
    for spec in specs:
        name, path = spec.split("=", 1)
        per = None
        if ":" in path:
            path, per = path.rsplit(":", 1)
        d = json.load(open(path))
        per = int(per or d.get("sequences_per_step", 8))
        pts = d["losses"]
        k = max(1, round(40 / per))
        sm = []
        for i in range(len(pts)):
            win = [p[1] for p in pts[max(0, i - k + 1):i + 1]]
            sm.append((pts[i][0] * per, sum(win) / len(win)))
        curves.append((name, sm))
    xmax = max(p[0] for _, c in curves for p in c)
    ys = [max(p[1], 1e-4) for _, c in curves for p in c]
    lo, hi = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    px = lambda x: L + (W - L - R) * x / xmax
    py = lambda y: T + (H - T - B) * (hi - math.log10(max(y, 1e-4))) / (hi - lo)
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>']
    for e in range(lo, hi + 1):
        y = py(10 ** e)
        s.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W - R}" y2="{y:.1f}" stroke="#ddd"/>')
        s.append(f'<text x="{L - 8}" y="{y + 4:.1f}" text-anchor="end">1e{e}</text>')
    for k in range(0, 6):
        x = xmax * k / 5
        s.append(f'<text x="{px(x):.1f}" y="{H - B + 18}" text-anchor="middle">{x:.0f}</text>')
    s.append(f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>')
    s.append(f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>')
    s.append(f'<text x="{(L + W - R) / 2}" y="{H - 10}" text-anchor="middle">training sequences seen</text>')
    s.append(f'<text x="16" y="{(T + H - B) / 2}" transform="rotate(-90 16 {(T + H - B) / 2})" text-anchor="middle">training loss (mean over 40 sequences)</text>')
    for i, (name, c) in enumerate(curves):
        col = COLORS[i % len(COLORS)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in c)
        s.append(f'<polyline fill="none" stroke="{col}" stroke-width="2" points="{pts}"/>')
        s.append(f'<line x1="{W - R + 15}" y1="{T + 10 + 20 * i}" x2="{W - R + 35}" y2="{T + 10 + 20 * i}" stroke="{col}" stroke-width="2"/>')
        s.append(f'<text x="{W - R + 40}" y="{T + 14 + 20 * i}">{name}</text>')
    s.append("</svg>")
    open(out, "w").write("\n".join(s) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
