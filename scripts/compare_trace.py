#!/usr/bin/env python3
"""Line up two tensor traces (ferrolm's FERROLM_TRACE file and llama.cpp's, written by
scripts/llamacpp_dump.cpp) and print, per named tensor, the max abs and relative difference.

usage: compare_trace.py OURS THEIRS [--layers N]
Only names present in both with the same element count are compared (the last tensor of a
name wins in llama.cpp's file, which is the post-rope Qcur/Kcur).
"""
import struct, sys
import numpy as np

def load(path):
    f = open(path, 'rb').read()
    o, out = 0, {}
    while o < len(f):
        n = struct.unpack_from('<I', f, o)[0]; o += 4
        name = f[o:o + n].decode(); o += n
        ne = struct.unpack_from('<4q', f, o); o += 32
        cnt = ne[0] * ne[1] * ne[2] * ne[3]
        a = np.frombuffer(f, dtype='<f4', count=cnt, offset=o); o += 4 * cnt
        out.setdefault(name, []).append((ne, a))
    return out

def main():
    ours, theirs = load(sys.argv[1]), load(sys.argv[2])
    # Our names for llama.cpp's earlier emissions of a name (before rope).
    for ours_name, (their_name, idx) in {'Qpre': ('Qcur', 0), 'Kpre': ('Kcur', 0)}.items():
        for k in list(ours):
            if k.startswith(ours_name + '-'):
                t = their_name + k[len(ours_name):]
                if t in theirs:
                    theirs[k] = [theirs[t][idx]]
    order = list(theirs.keys())
    for name in order:
        if name not in ours:
            continue
        a = ours[name][-1][1]
        # llama.cpp may emit the same name several times (before/after reshape and rope).
        for ne, b in reversed(theirs[name]):
            if b.size == a.size:
                break
        else:
            print(f'{name:20s} size mismatch {a.size} vs {[x[1].size for x in theirs[name]]}')
            continue
        d = np.abs(a.astype(np.float64) - b)
        scale = np.abs(b).max() + 1e-30
        print(f'{name:20s} max|d| {d.max():.3e}  rel {d.max()/scale:.3e}  mean|d| {d.mean():.3e}')

if __name__ == '__main__':
    main()
