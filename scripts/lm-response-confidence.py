#!/usr/bin/env python3
"""How much of MAD-FA's AUROC on a backdoored language model the response's own confidence holds.

For each text detection's trace file (vigil's traces.npz: trusted / test [chains, draws,
prompts], test_is_anomalous) and its report.json: the mean of every prompt's trace over chains
and draws (the mean next-token loss of the model's own greedy response near w*: what vigil's
"Response confidence" column takes at w* alone, for runs made before that column existed) is
scored as minus that loss (a confident response is flagged). AUROC of clean against triggered
test prompts, TPR and clean-test FPR at the threshold flagging 5% of the trusted prompts (the
95th percentile of their scores, as vigil's thresholds), beside the report's MAD-FA and
Mahalanobis AUROCs and the backdoor's firing rate.

Usage: scripts/lm-response-confidence.py RUN_DIR [RUN_DIR ...] > table.md
"""
import json
import os
import sys

import numpy as np


def auroc(neg, pos):
    """Probability a positive scores above a negative, ties counting half."""
    neg, pos = np.asarray(neg), np.asarray(pos)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


def main(dirs):
    print("| run | fires (triggered / clean) | response confidence AUROC | TPR | clean FPR "
          "| MAD-FA Mean Corr | Mean CCC | Nearest Corr | Mahalanobis (last block) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in dirs:
        z = np.load(os.path.join(d, "traces.npz"))
        report = json.load(open(os.path.join(d, "report.json")))
        trusted = -z["trusted"].astype(np.float64).mean(axis=(0, 1))
        test = -z["test"].astype(np.float64).mean(axis=(0, 1))
        y = z["test_is_anomalous"].astype(bool)
        threshold = np.quantile(trusted, 0.95)
        tpr = np.mean(test[y] > threshold)
        fpr = np.mean(test[~y] > threshold)
        rows = {r["detector"]: r["auroc"] for r in report["rows"]}
        maha = next(v for k, v in rows.items() if k.startswith("Mahalanobis (last block"))
        print(f"| {os.path.basename(os.path.normpath(d))} "
              f"| {report['attack_success_rate']:.2f} / {report['clean_fire_rate']:.2f} "
              f"| {auroc(test[~y], test[y]):.3f} | {tpr:.2f} | {fpr:.2f} "
              f"| {rows['MAD-FA Mean Corr']:.3f} | {rows['MAD-FA Mean CCC']:.3f} "
              f"| {rows['MAD-FA Nearest Corr']:.3f} | {maha:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
