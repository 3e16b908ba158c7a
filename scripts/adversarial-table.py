#!/usr/bin/env python3
"""One Markdown table of `vigil benchmark backdoor` runs on adversarial records: per detector
column, AUROC (TPR at the trusted-set threshold) in each run; a label given several runs
(comma-separated, e.g. one per seed) gets the mean AUROC ± its sample standard deviation over
them and the mean TPR, with the number of runs.

    scripts/adversarial-table.py LABEL=DIR/rows.csv[,DIR2/rows.csv,...] ...
"""
import csv
import statistics
import sys

runs = [arg.split("=", 1) for arg in sys.argv[1:]]
table = {}
order = []
for label, paths in runs:
    for path in paths.split(","):
        for row in csv.DictReader(open(path)):
            key = f"{row['detector']}.{row['column']}"
            if key not in order:
                order.append(key)
            table.setdefault((key, label), []).append((float(row["auroc"]), float(row["tpr"])))


def cell(values):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0][0]:.3f} ({values[0][1]:.2f})"
    aurocs = [v[0] for v in values]
    tpr = statistics.mean(v[1] for v in values)
    return f"{statistics.mean(aurocs):.3f} ± {statistics.stdev(aurocs):.3f} ({tpr:.2f}; n={len(values)})"


print("| detector.column | " + " | ".join(label for label, _ in runs) + " |")
print("|---|" + "---|" * len(runs))
for key in order:
    print(f"| {key} | " + " | ".join(cell(table.get((key, label), [])) for label, _ in runs) + " |")
