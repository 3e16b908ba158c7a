#!/usr/bin/env python3
"""How to combine the chains of a MAD-FA run into one CLC score, measured on a pool of chains
(issue 26: a single chain that makes the triggered inputs look explained drags a concatenated
run down).

    OPENBLAS_NUM_THREADS=1 scripts/madfa-chain-aggregation.py POOL_RUN_DIR [--chains 4] [--draws 150]

Emulates runs of --chains chains x --draws draws from the pool (disjoint groups, 10 random
assignments, as scripts/madfa-pool.py) and scores each run five ways: concat (vigil's: one
Pearson over all draws), mean / median / max of the per-chain CLC anomaly scores, and the mean of
per-chain ranks. Prints each way's AUROC mean and sd over replicates, and each chain's own AUROC;
and, beside them, Class CCC (concordance instead of Pearson, chains concatenated), the score
that sees the traces' levels as well as their co-variation.
"""
import argparse
import pathlib
import sys

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(pathlib.Path(__file__).parent))
variants = __import__("madfa-trace-variants")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pool")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=150)
    parser.add_argument("--permutations", type=int, default=10)
    args = parser.parse_args()
    test, trusted, labels, flags = variants.load(pathlib.Path(args.pool))
    d = args.draws
    per_chain = [variants.clc_from_pearson(variants.pearson_concat([te[:d]], [tr[:d]]), labels)
                 for te, tr in zip(test, trusted)]
    print(f"{args.pool}: per-chain AUROC at {d} draws: "
          + ", ".join(f"{roc_auc_score(flags, s):.3f}" for s in per_chain))
    rng = np.random.default_rng(0)
    ways = {"concat": [], "mean": [], "median": [], "max": [], "mean rank": [],
            "class_ccc": []}
    variances = {k: [] for k in ways}
    n = len(test)
    for _ in range(args.permutations):
        groups = variants.disjoint_groups(rng, n, args.chains)
        values = {k: [] for k in ways}
        for g in groups:
            scores = np.stack([per_chain[c] for c in g])
            te = [test[c][:d] for c in g]
            tr = [trusted[c][:d] for c in g]
            values["concat"].append(roc_auc_score(
                flags, variants.clc_from_pearson(variants.pearson_concat(te, tr), labels)))
            ccc = variants.ccc_matrix(np.concatenate(te, axis=0).T, np.concatenate(tr, axis=0).T)
            values["class_ccc"].append(roc_auc_score(flags, -variants.class_max(ccc, labels)))
            values["mean"].append(roc_auc_score(flags, scores.mean(axis=0)))
            values["median"].append(roc_auc_score(flags, np.median(scores, axis=0)))
            values["max"].append(roc_auc_score(flags, scores.max(axis=0)))
            values["mean rank"].append(roc_auc_score(
                flags, np.mean([rankdata(s) for s in scores], axis=0)))
        for k in ways:
            ways[k].extend(values[k])
            if len(values[k]) >= 2:
                variances[k].append(np.var(values[k], ddof=1))
    for k in ways:
        print(f"  {args.chains} x {d} {k:10s} AUROC {np.mean(ways[k]):.4f} ± "
              f"{np.sqrt(np.mean(variances[k])) if variances[k] else float('nan'):.4f}")


if __name__ == "__main__":
    main()
