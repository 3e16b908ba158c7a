#!/usr/bin/env python3
"""Mean ± sample sd over seeds of `vigil benchmark ood`'s AUROCs (each seed's mean over the
OOD sets), one saved parts folder per seed (OUT/parts/<model>/*.json), and per OOD set the
clean AUROC of each score.

Usage: scripts/ood-seeds-table.py PARTS_DIR [PARTS_DIR ...]
Prints Markdown tables: rows are scores, columns the settings every seed ran.
"""
import glob
import json
import os
import statistics
import sys
from collections import defaultdict

SETTINGS = ["clean", "id-attacked", "ood-attacked", "both-attacked", "adaptive", "transfer"]


def seed_rows(folder):
    """(score, setting) -> mean AUROC over OOD sets; (score, ood_set) -> clean AUROC."""
    per, clean = defaultdict(list), {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        for r in json.load(open(path)).get("rows", []):
            per[(r["score"], r["setting"])].append(r["auroc"])
            if r["setting"] == "clean":
                clean[(r["score"], r["ood_set"])] = r["auroc"]
    return {k: sum(v) / len(v) for k, v in per.items()}, clean


def cell(values):
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(folders):
    seeds = [seed_rows(f) for f in folders]
    keys = set.intersection(*(set(means) for means, _ in seeds))
    scores = sorted({score for score, _ in keys})
    settings = [s for s in SETTINGS if any((score, s) in keys for score in scores)]
    print(f"AUROC (OOD positive), mean over the OOD sets, mean ± sd over {len(folders)} seeds:\n")
    print("| score | " + " | ".join(settings) + " |\n|---|" + "---|" * len(settings))
    for score in scores:
        cells = [cell([m[(score, s)] for m, _ in seeds]) if (score, s) in keys else "-"
                 for s in settings]
        print(f"| {score} | " + " | ".join(cells) + " |")
    sets = sorted({ood for _, c in seeds for (_, ood) in c})
    print("\nClean AUROC per OOD set, mean ± sd over seeds:\n")
    print("| score | " + " | ".join(sets) + " |\n|---|" + "---|" * len(sets))
    for score in scores:
        cells = [cell([c[(score, o)] for _, c in seeds]) for o in sets]
        print(f"| {score} | " + " | ".join(cells) + " |")
    # Paired differences, where both scores ran on every seed.
    pairs = [("madfa-nearest-corr", "knn")]
    for a, b in pairs:
        for s in settings:
            if (a, s) in keys and (b, s) in keys:
                d = [m[(a, s)] - m[(b, s)] for m, _ in seeds]
                wins = sum(x > 0 for x in d)
                print(f"\n{a} - {b}, {s}: {cell(d)} (ahead on {wins} of {len(d)} seeds)", end="")
    print()


if __name__ == "__main__":
    main(sys.argv[1:])
