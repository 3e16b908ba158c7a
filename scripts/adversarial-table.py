#!/usr/bin/env python3
"""One Markdown table of `vigil benchmark backdoor` runs on adversarial records: per detector
column, AUROC (TPR at the trusted-set threshold) in each run.

    scripts/adversarial-table.py LABEL=DIR/rows.csv ...
"""
import csv
import sys

runs = [arg.split("=", 1) for arg in sys.argv[1:]]
table = {}
positives = {}
order = []
for label, path in runs:
    for row in csv.DictReader(open(path)):
        key = f"{row['detector']}.{row['column']}"
        if key not in order:
            order.append(key)
        table[(key, label)] = (float(row["auroc"]), float(row["tpr"]))
print("| detector.column | " + " | ".join(label for label, _ in runs) + " |")
print("|---|" + "---|" * len(runs))
for key in order:
    cells = []
    for label, _ in runs:
        value = table.get((key, label))
        cells.append(f"{value[0]:.3f} ({value[1]:.2f})" if value else "-")
    print(f"| {key} | " + " | ".join(cells) + " |")
