#!/usr/bin/env python3
"""Is a gap between two MAD-FA rows (say vigil and the PyTorch twin, same model, task and
settings) more than the seed lottery? Reads the per-seed JSONs of both rows and tests, per score,
on the seeds given (by default every seed both rows have):

    python3 scripts/madfa-seed-gap.py ROW_A ROW_B [--seeds 5-14] [--out FILE.json]

  mean difference A - B, its Welch standard error and t, the two-sided Welch p;
  the two-sided Mann-Whitney U p;
  a two-sided permutation p of the mean difference (exact up to 12 seeds a side, else 200,000
  random relabellings from a fixed seed).

Use --seeds for a replication: a gap first seen on seeds 0-4 is tested on fresh seeds only, so
the seeds that suggested it do not also confirm it.
"""
import argparse
import itertools
import json
import math
import os
import pathlib

import numpy as np
from scipy.stats import mannwhitneyu, ttest_ind

SCORES = ["mean_corr", "clc", "mean_ccc", "class_ccc"]


def seed_range(text):
    seeds = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.update(range(int(lo), int(hi or lo) + 1))
    return seeds


def per_seed(folder):
    runs = {}
    for path in pathlib.Path(folder).glob("seed-*.json"):
        record = json.loads(path.read_text())
        runs[int(path.stem.split("-")[1])] = record["auroc"]
    return runs


def permutation_p(a, b, rounds, rng):
    pooled = np.concatenate([a, b])
    observed = abs(a.mean() - b.mean())
    n = len(a)
    if math.comb(len(pooled), n) <= 3_000_000:
        total = hits = 0
        for pick in itertools.combinations(range(len(pooled)), n):
            mask = np.zeros(len(pooled), bool)
            mask[list(pick)] = True
            hits += abs(pooled[mask].mean() - pooled[~mask].mean()) >= observed - 1e-12
            total += 1
        return hits / total, "exact"
    hits = 0
    for _ in range(rounds):
        perm = rng.permutation(pooled)
        hits += abs(perm[:n].mean() - perm[n:].mean()) >= observed - 1e-12
    return (hits + 1) / (rounds + 1), f"{rounds} random relabellings"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("row_a")
    ap.add_argument("row_b")
    ap.add_argument("--seeds", type=seed_range, help="seeds to use, e.g. 5-14 or 0-4,10")
    ap.add_argument("--rounds", type=int, default=200_000)
    ap.add_argument("--out")
    args = ap.parse_args()
    a_runs, b_runs = per_seed(args.row_a), per_seed(args.row_b)
    seeds = sorted(set(a_runs) & set(b_runs) & (args.seeds or set(a_runs) | set(b_runs)))
    if len(seeds) < 2:
        raise SystemExit(f"need at least 2 seeds in both rows, found {seeds}")
    rng = np.random.default_rng(0)
    report = {"row_a": args.row_a, "row_b": args.row_b, "seeds": seeds, "scores": {}}
    print(f"{os.path.basename(args.row_a.rstrip('/'))} - {os.path.basename(args.row_b.rstrip('/'))}, "
          f"seeds {seeds[0]}-{seeds[-1]} ({len(seeds)} a side)")
    print("| score | A mean ± sd | B mean ± sd | A - B | Welch t | Welch p | U p | permutation p |")
    print("|---|---|---|---|---|---|---|---|")
    for score in SCORES:
        a = np.array([a_runs[s][score] for s in seeds])
        b = np.array([b_runs[s][score] for s in seeds])
        se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        welch = ttest_ind(a, b, equal_var=False)
        u = mannwhitneyu(a, b, alternative="two-sided").pvalue
        perm, how = permutation_p(a, b, args.rounds, rng)
        report["scores"][score] = {
            "a": a.tolist(), "b": b.tolist(), "difference": float(a.mean() - b.mean()),
            "se": se, "welch_t": float(welch.statistic), "welch_p": float(welch.pvalue),
            "mann_whitney_p": float(u), "permutation_p": perm, "permutation": how,
        }
        print(f"| {score} | {a.mean():.4f} ± {a.std(ddof=1):.4f} | {b.mean():.4f} ± {b.std(ddof=1):.4f} | "
              f"{a.mean() - b.mean():+.4f} | {welch.statistic:+.2f} | {welch.pvalue:.3f} | {u:.3f} | {perm:.3f} |")
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
