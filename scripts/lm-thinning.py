#!/usr/bin/env python3
"""Autocorrelation of MAD-FA's per-prompt traces along a chain, and AUROC against thinning.

For each trace file (vigil's .npz: trusted / test [chains, draws, samples], trusted_labels,
test_is_anomalous): the integrated autocorrelation time of every prompt's trace (Sokal's
window, c = 5), then `vigil score` on (a) every k-th draw and (b) the first draws / k draws, so
that thinned and contiguous subsets of equal size can be compared.

Usage: scripts/lm-thinning.py VIGIL_BIN OUT_DIR TRACES.npz [TRACES.npz ...]
"""
import json
import os
import subprocess
import sys

import numpy as np


def iat(x, c=5.0):
    """Integrated autocorrelation time of a 1-D series (Sokal's automatic window)."""
    x = x - x.mean()
    n = len(x)
    if not np.any(x):
        return float("nan")
    f = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n]
    acf /= acf[0]
    tau = 1.0
    for m in range(1, n):
        tau = 1.0 + 2.0 * acf[1:m + 1].sum()
        if m >= c * tau:
            break
    return tau


def score(vigil, path):
    out = subprocess.run([vigil, "score", path, "--json", "--threads", "1"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["auroc"]


def main(vigil, out_dir, files):
    os.makedirs(out_dir, exist_ok=True)
    for path in files:
        z = dict(np.load(path))
        draws = z["trusted"].shape[1]
        taus = [iat(z[k][c, :, i]) for k in ("trusted", "test")
                for c in range(z[k].shape[0]) for i in range(z[k].shape[2])]
        taus = np.array([t for t in taus if np.isfinite(t)])
        name = os.path.basename(os.path.dirname(path))
        print(f"## {name}: {draws} draws per chain, integrated autocorrelation time per prompt: "
              f"median {np.median(taus):.2f}, 90th percentile {np.percentile(taus, 90):.2f}, "
              f"max {taus.max():.2f}\n")
        print("| draws kept | how | mean_corr | mean_ccc | nearest_corr |\n|---|---|---|---|---|")
        for k in (1, 2, 5, 10):
            for how in (("every k-th", slice(None, None, k)), ("first", slice(0, draws // k)))[: 1 if k == 1 else 2]:
                label, sl = how
                sub = dict(z)
                sub["trusted"], sub["test"] = z["trusted"][:, sl], z["test"][:, sl]
                f = os.path.join(out_dir, f"{name}-{k}-{label.split()[0]}.npz")
                np.savez(f, **sub)
                a = score(vigil, f)
                kept = sub["trusted"].shape[1]
                print(f"| {kept} | {label if k > 1 else 'all'} | {a['mean_corr']:.3f} | "
                      f"{a['mean_ccc']:.3f} | {a['nearest_corr']:.3f} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
