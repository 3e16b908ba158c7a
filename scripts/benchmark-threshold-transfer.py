#!/usr/bin/env python3
"""Whether a detector loses at its trusted-set threshold or in its ranking: per record, the TPR
at the threshold beside the best TPR any threshold reaches at the same actual FPR (post hoc, from
the report's ROC curve, thinned to about 200 points), and the FPR at 95% TPR.

    scripts/benchmark-threshold-transfer.py DIR/report.json [detector.column ...]

Standard library only; reads report.json or report.json.gz.
"""
import gzip
import json
import sys


def main(path, scores):
    opener = gzip.open if path.endswith(".gz") else open
    report = json.load(opener(path))
    rows = {(r["record"], r["detector"], r["column"]): r for r in report["rows"]}
    print("| record | score | TPR at threshold | actual FPR | post-hoc TPR at that FPR | FPR at 95% TPR |")
    print("|---|---|---|---|---|---|")
    for curve in report["roc"]:
        if curve["score"] not in scores:
            continue
        detector, column = curve["score"].split(".", 1)
        row = rows[(curve["record"], detector, column)]
        best = max(t for f, t in curve["points"] if f <= row["fpr"] + 1e-9)
        print(f"| {curve['record']} | {curve['score']} | {row['tpr']:.3f} | {row['fpr']:.3f} | "
              f"{best:.3f} | {row['fpr_at_95_tpr']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["madfa.clc", "mahalanobis.mahalanobis"])
