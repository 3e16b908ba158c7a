#!/usr/bin/env python3
"""Mean and spread of MAD-FA AUROCs over seeds.

    scripts/madfa-summary.py results/madfa-small-cnn/NAME [...]

Reads every seed-*.json (the `vigil sample --json` output) in each folder, writes
summary.json beside them and prints one Markdown row per folder: mean +- sample sd (and the
standard error) of each score's AUROC, the seeds, and the mean wall time per seed.
"""
import json
import math
import pathlib
import sys

SCORES = ["mean_corr", "clc", "mean_ccc", "class_ccc"]


def stats(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "se": sd / math.sqrt(n), "n": n, "values": values}


def summarize(folder):
    runs = sorted(folder.glob("seed-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    records = [json.loads(p.read_text()) for p in runs]
    if not records:
        return None
    summary = {
        "row": folder.name,
        "seeds": [r["settings"]["chain"]["seed"] for r in records],
        "settings": records[0]["settings"]["chain"],
        "data": records[0]["settings"]["data"],
        "vigil_version": records[0]["settings"]["vigil_version"],
        "normal": records[0]["normal"],
        "anomalous": records[0]["anomalous"],
        "seconds_per_seed": sum(r["seconds"] for r in records) / len(records),
        "auroc": {s: stats([r["auroc"][s] for r in records]) for s in SCORES},
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main():
    print("| row | seeds | " + " | ".join(SCORES) + " | s/seed |")
    print("|---|---|" + "---|" * len(SCORES) + "---|")
    for arg in sys.argv[1:]:
        s = summarize(pathlib.Path(arg))
        if s is None:
            continue
        cells = [f"{s['auroc'][k]['mean']:.4f} ± {s['auroc'][k]['sd']:.4f}" for k in SCORES]
        print(f"| {s['row']} | {len(s['seeds'])} | " + " | ".join(cells)
              + f" | {s['seconds_per_seed']:.0f} |")


if __name__ == "__main__":
    main()
