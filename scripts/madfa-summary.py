#!/usr/bin/env python3
"""Mean and spread of MAD-FA AUROCs over seeds.

    scripts/madfa-summary.py results/madfa-small-cnn/NAME [...]

Reads every seed-*.json (the `vigil sample --json` output) in each folder, writes
summary.json beside them and prints one Markdown row per folder: mean +- sample sd (and the
standard error) of each score's AUROC, the seeds, and the mean wall time per seed. With exactly
two folders it adds their difference in units of its (Welch) standard error and a two-sided
Mann-Whitney U p-value per score (scipy), to say whether two tools agree within the seed noise.
"""
import json
import math
import pathlib
import sys

# The four reference scores, then vigil's recommended one (runs before 2026-12-05 lack it, as do
# the PyTorch twin's; a folder reports the scores every one of its runs has).
SCORES = ["mean_corr", "clc", "mean_ccc", "class_ccc", "clc_plus_class_ccc"]


def scores_in(records):
    return [k for k in SCORES if all(k in r["auroc"] for r in records)]


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
    # vigil's records nest the chain settings; the PyTorch twin's are flat.
    settings = [r["settings"].get("chain", r["settings"]) for r in records]
    seconds = [r["seconds"]["total"] if isinstance(r["seconds"], dict) else r["seconds"]
               for r in records]
    summary = {
        "row": folder.name,
        "producer": "vigil" if "chain" in records[0]["settings"]
        else "devinterp " + records[0]["devinterp"] if "devinterp" in records[0] else "pytorch-twin",
        "seeds": [s["seed"] for s in settings],
        "settings": settings[0],
        "data": records[0]["settings"].get("data"),
        "vigil_version": records[0]["settings"].get("vigil_version"),
        "normal": records[0].get("normal"),
        "anomalous": records[0].get("anomalous"),
        "seconds_per_seed": sum(seconds) / len(seconds),
        "auroc": {s: stats([r["auroc"][s] for r in records]) for s in scores_in(records)},
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def difference_row(a, b):
    """a - b per score: the difference over its Welch standard error, and the Mann-Whitney U
    two-sided p-value of the per-seed AUROCs."""
    from scipy.stats import mannwhitneyu

    cells = []
    for k in SCORES:
        if k not in a["auroc"] or k not in b["auroc"]:
            cells.append("")
            continue
        x, y = a["auroc"][k], b["auroc"][k]
        se = math.sqrt(x["se"] ** 2 + y["se"] ** 2)
        z = (x["mean"] - y["mean"]) / se if se > 0 else float("nan")
        p = mannwhitneyu(x["values"], y["values"], alternative="two-sided").pvalue
        cells.append(f"{x['mean'] - y['mean']:+.4f} ({z:+.1f} se, U p {p:.3f})")
    return f"| difference | | " + " | ".join(cells) + " | |"


def main():
    print("| row | seeds | " + " | ".join(SCORES) + " | s/seed |")
    print("|---|---|" + "---|" * len(SCORES) + "---|")
    summaries = []
    for arg in sys.argv[1:]:
        s = summarize(pathlib.Path(arg))
        if s is None:
            continue
        summaries.append(s)
        cells = [f"{s['auroc'][k]['mean']:.4f} ± {s['auroc'][k]['sd']:.4f}" if k in s["auroc"] else ""
                 for k in SCORES]
        print(f"| {s['row']} | {len(s['seeds'])} | " + " | ".join(cells)
              + f" | {s['seconds_per_seed']:.0f} |")
    if len(summaries) == 2:
        print(difference_row(*summaries))


if __name__ == "__main__":
    main()
