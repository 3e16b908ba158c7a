#!/usr/bin/env python3
"""Calibration's criterion measured after the fact on finished runs.

For each run folder (RUNS/NAME with seed-0/ and seed-1/ traces.npz from independent chains on
the same task), split the trusted set per class into a reference half and a probe half
(alternating, as `vigil calibrate` does), score the probes' CLC against the reference half from
each seed's first D draws (chain 0), and report the Pearson correlation of the two seeds'
probe scores (the reliability) and the chain's mean minibatch-loss rise over w*'s after
burn-in (diagnostics.json). Prints one JSON object per row.

    scripts/madfa-probe-reliability.py --draws 40,100 runs/sweep/badnets-c1 runs/madfa/badnets-reference
"""
import argparse
import json
import pathlib

import numpy as np


def clc(test, trusted, labels):
    z = lambda x: (x - x.mean(0)) / (x.std(0) + 1e-8)
    c = z(test).T @ z(trusted) / test.shape[0]
    classes = np.unique(labels)
    return np.array([max(c[i, labels == k].mean() for k in classes) for i in range(c.shape[0])])


def probe_scores(path, draws):
    z = np.load(path)
    traces, labels = z["trusted"][0, :draws].astype(np.float64), z["trusted_labels"]
    reference = np.zeros(len(labels), bool)
    for k in np.unique(labels):
        reference[np.where(labels == k)[0][::2]] = True
    return clc(traces[:, ~reference], traces[:, reference], labels[reference])


def loss_rise(folder, burn_in):
    rises = []
    for seed in (0, 1):
        d = json.loads((folder / f"seed-{seed}" / "diagnostics.json").read_text())[0]
        loss = np.array(d["loss"])
        rises.append(loss[burn_in:].mean() - loss[0])
    return float(np.mean(rises))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draws", default="40,100", help="draw counts to measure at (comma-separated)")
    p.add_argument("--burn-in", type=int, default=10, help="steps skipped for the loss rise")
    p.add_argument("runs", nargs="+", type=pathlib.Path)
    a = p.parse_args()
    for folder in a.runs:
        row = {"row": folder.name, "loss_rise": loss_rise(folder, a.burn_in), "reliability": {}}
        for d in (int(x) for x in a.draws.split(",")):
            s0 = probe_scores(folder / "seed-0" / "traces.npz", d)
            s1 = probe_scores(folder / "seed-1" / "traces.npz", d)
            row["reliability"][d] = float(np.corrcoef(s0, s1)[0, 1])
        print(json.dumps(row))


if __name__ == "__main__":
    main()
