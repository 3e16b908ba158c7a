#!/usr/bin/env python3
"""AUROC of several independent single-chain runs joined as the chains of one run.

    scripts/madfa-join-seeds.py runs/madfa/badnets-reference [--every 5] [--out FILE]

Seeds of one row differ only in the sampler's random streams, so seed runs are independent
chains of the same settings; joining them (burn-in already dropped, chains stacked along the
draws, as `vigil score` does) measures what a multi-chain run detects. Each run's traces are
thinned by --every. Scores come from `vigil score` (VIGIL, default target/release/vigil) on the
joined file; the JSON result goes to --out (default stdout).
"""
import argparse
import json
import os
import pathlib
import subprocess
import tempfile

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("runs")
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--out")
    a = p.parse_args()
    vigil = os.environ.get("VIGIL", "target/release/vigil")
    # vigil keeps seed-K/traces.npz, the PyTorch twin seed-K.npz.
    root = pathlib.Path(a.runs)
    files = sorted(root.glob("seed-*/traces.npz")) or sorted(root.glob("seed-*.npz"))
    data = [np.load(f) for f in files]
    with tempfile.TemporaryDirectory() as tmp:
        joined = pathlib.Path(tmp) / "joined.npz"
        np.savez(joined,
                 trusted=np.concatenate([d["trusted"][:, ::a.every] for d in data]),
                 test=np.concatenate([d["test"][:, ::a.every] for d in data]),
                 trusted_labels=data[0]["trusted_labels"],
                 test_is_anomalous=data[0]["test_is_anomalous"])
        out = subprocess.run([vigil, "score", str(joined), "--out", str(pathlib.Path(tmp) / "s.csv"),
                              "--json"], capture_output=True, text=True, check=True).stdout
    result = {"runs": [str(f) for f in files], "every": a.every, "score": json.loads(out)}
    text = json.dumps(result, indent=1)
    if a.out:
        pathlib.Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
