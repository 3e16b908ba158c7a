#!/usr/bin/env python3
"""Mean AUROC over OOD sets per score and setting, from one model's saved parts of
`vigil benchmark ood` (OUT/parts/<model>/*.json), before the whole report exists.

Usage: scripts/ood-parts-summary.py OUT/parts/MODEL
Prints a Markdown table (rows: scores, columns: settings) and MAD-FA's adaptive rows.
"""
import glob
import json
import os
import sys
from collections import defaultdict

SETTINGS = ["clean", "id-attacked", "ood-attacked", "both-attacked", "adaptive", "transfer"]


def main(folder):
    per = defaultdict(list)
    adaptive = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        part = json.load(open(path))
        for r in part.get("rows", []):
            per[(r["score"], r["setting"])].append(r["auroc"])
        adaptive.extend(part.get("madfa_adaptive", []))
    scores = []
    for score, _ in per:
        if score not in scores:
            scores.append(score)
    print(f"{folder}: AUROC (OOD positive), mean over OOD sets\n")
    print("| score | " + " | ".join(SETTINGS) + " |\n|---|" + "---|" * len(SETTINGS))
    for score in scores:
        cells = []
        for s in SETTINGS:
            v = per.get((score, s))
            cells.append(f"{sum(v) / len(v):.3f}" if v else "-")
        print(f"| {score} | " + " | ".join(cells) + " |")
    if adaptive:
        print("\nMAD-FA's adaptive attack on its subsets (linearised scores):\n")
        print("| OOD set | ID / OOD inputs | AUROC before | after |\n|---|---|---|---|")
        for r in adaptive:
            print(f"| {r['ood_set']} | {r['id_inputs']} / {r['ood_inputs']} | "
                  f"{r['auroc_before']:.3f} | {r['auroc_after']:.3f} |")
        n = len(adaptive)
        print(f"| mean | | {sum(r['auroc_before'] for r in adaptive) / n:.3f} | "
              f"{sum(r['auroc_after'] for r in adaptive) / n:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1])
