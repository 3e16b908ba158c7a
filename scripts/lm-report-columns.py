#!/usr/bin/env python3
"""One column per single-seed `vigil benchmark text` report: AUROC (TPR at the 5% trusted-FPR
threshold), the latent detectors' best layer named, and the backdoor's firing rates.

    scripts/lm-report-columns.py "LABEL=path/report.json" "LABEL2=path2/report.json" ...

Prints a Markdown table (scripts/lm-detection-table.py gives means over seeds instead).
"""
import json
import sys


def name_of(detector):
    """The detector's name without the best layer, which differs between reports."""
    for latent in ("Mahalanobis", "Spectral"):
        if detector.startswith(f"{latent} (best layer"):
            return f"{latent} (best layer, post hoc)"
    return detector


def main(args):
    labels, reports = [], []
    for arg in args:
        label, path = arg.rsplit("=", 1)
        labels.append(label)
        reports.append(json.load(open(path)))
    cells, order = {}, []
    for k, report in enumerate(reports):
        for row in report["rows"]:
            name = name_of(row["detector"])
            if name not in cells:
                cells[name] = [""] * len(reports)
                order.append(name)
            layer = ""
            if "best layer: " in row["detector"]:
                layer = ", " + row["detector"].split("best layer: ")[1].split(",")[0]
            cells[name][k] = f"{row['auroc']:.3f} ({row['tpr_at_5_fpr']:.2f}){layer}"
    print("| detector | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    fires = [f"{r['attack_success_rate']:.0%} / {r['clean_fire_rate']:.0%}" for r in reports]
    print("| backdoor fires (triggered / clean) | " + " | ".join(fires) + " |")
    for name in order:
        print(f"| {name} | " + " | ".join(cells[name]) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
