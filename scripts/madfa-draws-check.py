#!/usr/bin/env python3
"""Are a recorded vigil chain's draws what they should be? (`vigil sample --record-steps DIR`)

The replay (bench/peer/madfa_replay.py) shows whether the update law is the twin's; this checks
the draws the law was fed, straight from the recording:
  - noise: pooled mean, variance and excess kurtosis of N (should be 0, 1, 0); correlation of
    whole noise vectors k steps apart (k = 1..10; should be ~0, sd 1/sqrt(floats x steps));
  - the noise along directions, z_t = N_t . d for unit d, over the steps: variance (1), lag-1
    autocorrelation and the sum of autocorrelations at lags 1..10 (0 for independent draws,
    sd about sqrt(10/steps)), for the 128 per-hidden-unit input sums of fc1 (hidden unit 125 is
    the direction of seed 2's excursion in results/madfa-small-cnn/class-ccc-gap/analysis.md) and
    for --random random unit directions (the null);
  - minibatches: every pass over the sampling set is a permutation of it.

    python3 scripts/madfa-draws-check.py runs/madfa/replay/seed-2/steps --sampling 1000

Prints one JSON object.
"""

import argparse
import json
import os

import numpy as np


def autocorr_sums(z):
    """Lag-1 autocorrelation and the sum over lags 1..10 of each row of z [dirs, steps]."""
    z = z - z.mean(1, keepdims=True)
    var = (z * z).mean(1)
    acf = np.stack([(z[:, :-k] * z[:, k:]).mean(1) / var for k in range(1, 11)], 1)
    return acf[:, 0], acf.sum(1)


def summary(x):
    x = np.asarray(x, dtype=np.float64)
    return {"mean": round(float(x.mean()), 4), "sd": round(float(x.std()), 4),
            "min": round(float(x.min()), 4), "max": round(float(x.max()), 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("steps")
    ap.add_argument("--sampling", type=int, required=True, help="size of the sampling set")
    ap.add_argument("--random", type=int, default=100)
    args = ap.parse_args()
    with open(os.path.join(args.steps, "manifest.json")) as f:
        manifest = json.load(f)
    offsets, start = {}, 0
    for p in manifest["params"]:
        offsets[p["path"]] = (start, p["numel"])
        start += p["numel"]
    total, steps = start, manifest["steps"] - manifest["first_step"]
    # fc1.weight in vigil's layout is [in, out]: unit j's inputs are every out-th value from j.
    begin, n = offsets["fc1.weight"]
    hidden = 128 if n % 128 == 0 else None
    rng = np.random.default_rng(0)
    random_dirs = rng.standard_normal((args.random, total)).astype(np.float32)
    random_dirs /= np.linalg.norm(random_dirs, axis=1, keepdims=True)
    z_random, z_units, lag_dots = [], [], {k: [] for k in range(1, 11)}
    s1 = s2 = s4 = 0.0
    previous, indices = [], []
    for step in range(manifest["first_step"], manifest["steps"]):
        with np.load(os.path.join(args.steps, f"step-{step:05}.npz")) as z:
            noise, idx = z["noise"].astype(np.float64), z["indices"]
        indices.append(idx)
        s1 += noise.sum()
        s2 += (noise ** 2).sum()
        s4 += (noise ** 4).sum()
        z_random.append(random_dirs @ noise.astype(np.float32))
        if hidden:
            fc1 = noise[begin:begin + n].reshape(n // hidden, hidden)
            z_units.append(fc1.sum(0) / np.sqrt(n // hidden))
        for k, old in enumerate(reversed(previous), start=1):
            lag_dots[k].append(float(old @ noise) / total)
        previous = (previous + [noise])[-10:]
    count = total * steps
    mean, var = s1 / count, s2 / count - (s1 / count) ** 2
    z_random = np.array(z_random).T
    lag1_r, sum_r = autocorr_sums(z_random)
    result = {
        "steps_dir": args.steps, "steps": steps, "floats": total,
        "noise": {"mean": float(mean), "variance": float(var),
                  "excess_kurtosis": float(s4 / count / var ** 2 - 3.0),
                  "whole_vector_correlation_by_lag": {str(k): round(float(np.mean(v)), 6)
                                                      for k, v in lag_dots.items()},
                  "expected_sd_of_those": 1.0 / np.sqrt(count)},
        "random_directions": {"variance": summary(z_random.var(1)), "lag1": summary(lag1_r),
                              "sum_lags_1_10": summary(sum_r)},
    }
    if hidden:
        z_units = np.array(z_units).T
        lag1_u, sum_u = autocorr_sums(z_units)
        result["fc1_hidden_unit_input_sums"] = {
            "variance": summary(z_units.var(1)), "lag1": summary(lag1_u),
            "sum_lags_1_10": summary(sum_u),
            "unit_125": {"variance": round(float(z_units[125].var()), 4),
                         "lag1": round(float(lag1_u[125]), 4),
                         "sum_lags_1_10": round(float(sum_u[125]), 4)},
        }
    per_pass = -(-args.sampling // len(indices[0]))
    passes = [np.concatenate(indices[i:i + per_pass]) for i in range(0, len(indices) - per_pass + 1, per_pass)]
    result["minibatches"] = {
        "batches_per_pass": per_pass, "full_passes": len(passes),
        "every_pass_a_permutation": all(np.array_equal(np.sort(p), np.arange(args.sampling)) for p in passes),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
