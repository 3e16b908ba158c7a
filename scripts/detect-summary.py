#!/usr/bin/env python3
"""Summarise a `vigil detect` report.json as a Markdown table (one row per detector column):
AUROC, AUPR, FPR@95TPR (anomalous = positive) and the TPR / actual FPR at the threshold set on
held-back trusted data. Usage: scripts/detect-summary.py runs/x/report.json > summary.md"""
import json
import sys

report = json.load(open(sys.argv[1]))
target = report["config"]["thresholds"]["target_fpr"]
print(f"{report['inputs']} inputs, {report['anomalous']} anomalous; thresholds at a "
      f"{target:.0%} target FPR on held-back trusted samples; anomalous = positive class.\n")
print("| detector | column | AUROC | AUPR | FPR@95TPR | TPR at threshold | actual FPR | seconds |")
print("|---|---|---|---|---|---|---|---|")
for d in report["detectors"]:
    if d.get("not_applicable"):
        print(f"| {d['detector']} | n/a | n/a | n/a | n/a | n/a | n/a | |")
        continue
    for c in d["columns"]:
        e = c["evaluation"]
        print(f"| {d['detector']} | {c['column']} | {e['auroc']:.4f} | {e['aupr']:.4f} | "
              f"{e['fpr_at_95_tpr']:.3f} | {e['tpr']:.3f} | {e['fpr']:.3f} | {d['seconds']:.0f} |")
