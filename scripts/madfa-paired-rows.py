#!/usr/bin/env python3
"""Paired comparison of two `scripts/madfa-seeds.sh` rows whose seed K is the same chain.

    python3 scripts/madfa-paired-rows.py results/madfa-small-cnn/ROW_A results/madfa-small-cnn/ROW_B

For rows that differ only in how the traces are formed (exact against linearised, reference
against precise loss), seed K of both rows runs the same chain, so the per-seed difference of an
AUROC removes the chain's luck. Prints, per score, the per-seed values, the mean difference B - A
and its standard error (sample sd of the differences / sqrt(seeds)), and the mean seconds per seed
of each row; writes the same as JSON to ROW_B/paired-with-<ROW_A>.json.
"""

import glob
import json
import math
import os
import sys

SCORES = ("clc", "class_ccc", "mean_corr", "mean_ccc")


def rows(folder):
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "seed-*.json"))):
        with open(path) as f:
            out[os.path.basename(path)[5:-5]] = json.load(f)
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a_dir, b_dir = (p.rstrip("/") for p in sys.argv[1:])
    a, b = rows(a_dir), rows(b_dir)
    seeds = sorted(set(a) & set(b), key=int)
    if len(seeds) < 2:
        sys.exit(f"need at least two seeds in both rows, found {seeds}")
    report = {"a": a_dir, "b": b_dir, "seeds": seeds, "scores": {}}
    for score in SCORES:
        va = [a[s]["auroc"][score] for s in seeds]
        vb = [b[s]["auroc"][score] for s in seeds]
        diffs = [y - x for x, y in zip(va, vb)]
        mean = sum(diffs) / len(diffs)
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
        report["scores"][score] = {"a": va, "b": vb, "mean_difference": mean,
                                   "standard_error": sd / math.sqrt(len(diffs))}
        print(f"{score:>9}: a {' '.join(f'{x:.4f}' for x in va)} | b {' '.join(f'{x:.4f}' for x in vb)}"
              f" | b - a {mean:+.4f} +- {sd / math.sqrt(len(diffs)):.4f}")
    for name, row in (("a", a), ("b", b)):
        secs = [row[s]["seconds"]["total"] if isinstance(row[s].get("seconds"), dict) else row[s]["seconds"]
                for s in seeds]
        report[f"{name}_seconds_per_seed"] = sum(secs) / len(secs)
        print(f"{name}: {sum(secs) / len(secs):.1f} s per seed")
    out = os.path.join(b_dir, f"paired-with-{os.path.basename(a_dir)}.json")
    with open(out + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
