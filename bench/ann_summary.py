#!/usr/bin/env python3
"""ann_summary.py - QPS of two recall/QPS curves at given recall levels.

usage: ann_summary.py TITLE QUIVER.jsonl PEER.jsonl [RECALL ...]

Each file holds JSON lines with recall_at_k and qps (one per sweep point;
repeated points - several rounds - keep their best QPS).  For every recall
level R (default: 0.90 0.95 and "best"), prints the QPS each side reaches
at recall >= R, interpolated linearly in recall between the two sweep
points around R (a side whose curve never reaches R prints n/a), and the
ratio Quiver / peer.  "best" is the highest recall both sides reach.
Prints one Markdown table row per level.
"""
import json
import sys


def load(path):
    best = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            key = r.get("nprobe", r.get("ef", len(best)))
            if key not in best or r["qps"] > best[key]["qps"]:
                best[key] = r
    return sorted(best.values(), key=lambda r: r["recall_at_k"])


def qps_at(curve, target):
    """QPS at recall >= target: the curve is sorted by recall; QPS falls as
    recall rises, so interpolate between the last point below and the first
    at or above the target."""
    above = [r for r in curve if r["recall_at_k"] >= target - 1e-12]
    if not above:
        return None
    hi = max(above, key=lambda r: r["qps"])        # fastest point that reaches it
    below = [r for r in curve if r["recall_at_k"] < target and r["qps"] > hi["qps"]]
    if not below:
        return hi["qps"]
    lo = min(below, key=lambda r: target - r["recall_at_k"])
    span = hi["recall_at_k"] - lo["recall_at_k"]
    if span <= 0:
        return hi["qps"]
    t = (target - lo["recall_at_k"]) / span
    return lo["qps"] + t * (hi["qps"] - lo["qps"])


def main(argv):
    if len(argv) < 4:
        sys.stderr.write(__doc__)
        return 2
    title, qpath, ppath = argv[1], argv[2], argv[3]
    levels = argv[4:] or ["0.90", "0.95", "best"]
    q, p = load(qpath), load(ppath)
    print("| %s | recall | QPS Quiver | QPS peer | ratio |" % title)
    print("|---|---|---|---|---|")
    for lv in levels:
        if lv == "best":
            target = min(max(r["recall_at_k"] for r in q), max(r["recall_at_k"] for r in p))
            name = "best both reach"
        else:
            target = float(lv)
            name = ">= %s" % lv
        a, b = qps_at(q, target), qps_at(p, target)
        ratio = "%.2fx" % (a / b) if a and b else "n/a"
        print("| %s | %.4f | %s | %s | %s |" % (name, target,
              "%.0f" % a if a else "n/a", "%.0f" % b if b else "n/a", ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
