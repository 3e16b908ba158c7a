#!/usr/bin/env python3
"""Candidate ways to turn MAD-FA's chains into CLC scores, measured after the fact on the trace
files of several seeds of one model (issue 26: where does the seed spread come from, and what
removes it).

    scripts/madfa-trace-variants.py RUNS_DIR [--json OUT.json]

RUNS_DIR holds seed-K/traces.npz (the runs of `scripts/madfa-seeds.sh`, all on the same data
split). For every seed it recomputes CLC in numpy, independently of vigil's Rust scores, and
checks the plain variant against the AUROC vigil printed (seed-K.json beside the results, when
given), then scores:

  concat       vigil's scores: the chains' draws concatenated, one Pearson over all draws
  within       every chain z-scored on its own (a chain's mean offset is not a draw), the
               Pearson correlations averaged over chains
  prefix-F     the first fraction F of every chain's draws (fewer draws per run)
  pooled-K     K seeds' chains pooled (concatenated) into one run of 2K chains, every
               disjoint group of K seeds

and prints the CLC AUROC's mean and sample sd over seeds (or over the disjoint groups) per
variant.
"""
import argparse
import itertools
import json
import math
import pathlib

import numpy as np
from sklearn.metrics import roc_auc_score

EPS = 1e-8


def zscore(x):
    """Rows of [n, draws] z-scored over draws, population std, as vigil's scores."""
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True)
    return (x - mean) / (std + EPS)


def class_max(matrix, labels):
    classes = np.unique(labels)
    means = np.stack([matrix[:, labels == c].mean(axis=1) for c in classes], axis=1)
    return means.max(axis=1)


def clc_from_pearson(pearson, labels):
    return -class_max(pearson, labels)


def pearson_concat(test_chains, trusted_chains):
    """test_chains: list of [draws_c, n_test]; the chains' draws concatenated."""
    test = np.concatenate(test_chains, axis=0).T
    trusted = np.concatenate(trusted_chains, axis=0).T
    return zscore(test) @ zscore(trusted).T / test.shape[1]


def pearson_within(test_chains, trusted_chains):
    total = None
    for te, tr in zip(test_chains, trusted_chains):
        p = zscore(te.T) @ zscore(tr.T).T / te.shape[0]
        total = p if total is None else total + p
    return total / len(test_chains)


def ccc_matrix(test, trusted):
    """Lin's concordance of every test trace ([n_test, draws]) with every trusted trace, with
    population moments and vigil's 1e-8 guard."""
    mt, mr = test.mean(axis=1), trusted.mean(axis=1)
    vt, vr = test.var(axis=1), trusted.var(axis=1)
    cov = (test - mt[:, None]) @ (trusted - mr[:, None]).T / test.shape[1]
    return 2 * cov / (vt[:, None] + vr[None, :] + (mt[:, None] - mr[None, :]) ** 2 + EPS)


def disjoint_groups(rng, n_chains, k):
    """One random assignment of a pool's chains to disjoint groups of k: each group is an
    independent replicate of a k-chain run (leftover chains unused)."""
    order = rng.permutation(n_chains)
    return [order[i:i + k] for i in range(0, n_chains - k + 1, k)]


def loo_clc(trusted_chains, labels):
    """Trusted samples' CLC against the other trusted samples (the diagonal left out)."""
    trusted = np.concatenate(trusted_chains, axis=0).T
    z = zscore(trusted)
    pearson = z @ z.T / trusted.shape[1]
    classes = np.unique(labels)
    means = []
    for c in classes:
        members = labels == c
        total = pearson[:, members].sum(axis=1) - np.where(members, np.diag(pearson), 0.0)
        count = members.sum() - members.astype(int)
        means.append(np.where(count > 0, total / np.maximum(count, 1), -np.inf))
    return -np.stack(means, axis=1).max(axis=1)


def split_run_reliability(test_chains, trusted_chains, labels):
    """Even chains against odd chains (one chain: its two halves of draws), each half's CLC
    correlated across samples, Spearman-Brown to the whole run; on the test inputs and on the
    trusted samples scored leave-one-out. As `madfa::stability`, recomputed in numpy."""
    if len(test_chains) >= 2:
        halves = [(test_chains[0::2], trusted_chains[0::2]), (test_chains[1::2], trusted_chains[1::2])]
    else:
        mid = test_chains[0].shape[0] // 2
        halves = [([test_chains[0][:mid]], [trusted_chains[0][:mid]]),
                  ([test_chains[0][mid:]], [trusted_chains[0][mid:]])]
    out = {}
    for where in ("test", "trusted"):
        scores = []
        for te, tr in halves:
            scores.append(clc_from_pearson(pearson_concat(te, tr), labels) if where == "test"
                          else loo_clc(tr, labels))
        r = np.corrcoef(scores[0], scores[1])[0, 1]
        out[where] = 2 * r / (1 + r)
    return out


def load(run):
    data = np.load(run / "traces.npz")
    test = data["test"].astype(np.float64)  # [chains, draws, n_test]
    trusted = data["trusted"].astype(np.float64)
    labels = data["trusted_labels"]
    flags = data["test_is_anomalous"].astype(bool)
    return [test[c] for c in range(test.shape[0])], [trusted[c] for c in range(trusted.shape[0])], labels, flags


def auroc(scores, flags):
    return roc_auc_score(flags, scores)


def stats(values):
    values = list(values)
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return {"mean": mean, "sd": sd, "n": n, "values": values}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs")
    parser.add_argument("--results", help="folder with the seed-K.json of the same runs")
    parser.add_argument("--json")
    args = parser.parse_args()
    root = pathlib.Path(args.runs)
    seeds = sorted((p for p in root.glob("seed-*") if (p / "traces.npz").exists()),
                   key=lambda p: int(p.name.split("-")[1]))
    runs = {int(p.name.split("-")[1]): load(p) for p in seeds}
    variants = {}

    reliabilities = {}

    def add(name, value, te=None, tr=None, labels=None):
        variants.setdefault(name, []).append(value)
        if te is not None:
            reliabilities.setdefault(name, []).append(split_run_reliability(te, tr, labels))

    for seed, (test, trusted, labels, flags) in runs.items():
        concat = auroc(clc_from_pearson(pearson_concat(test, trusted), labels), flags)
        if args.results:
            printed = json.loads((pathlib.Path(args.results) / f"seed-{seed}.json").read_text())
            if abs(printed["auroc"]["clc"] - concat) > 1e-6:
                raise SystemExit(f"seed {seed}: numpy CLC {concat} != vigil's {printed['auroc']['clc']}")
        add("concat", concat, test, trusted, labels)
        add("within", auroc(clc_from_pearson(pearson_within(test, trusted), labels), flags))
        for fraction in (0.25, 0.5, 0.75):
            cut = [max(2, int(round(t.shape[0] * fraction))) for t in test]
            te = [t[:k] for t, k in zip(test, cut)]
            tr = [t[:k] for t, k in zip(trusted, cut)]
            add(f"prefix-{fraction}", auroc(clc_from_pearson(pearson_concat(te, tr), labels), flags),
                te, tr, labels)
    keys = sorted(runs)
    labels, flags = runs[keys[0]][2], runs[keys[0]][3]
    for k in (2, 3):
        for group_start in range(0, len(keys) - k + 1, k):
            group = keys[group_start:group_start + k]
            te = [t for s in group for t in runs[s][0]]
            tr = [t for s in group for t in runs[s][1]]
            add(f"pooled-{k}", auroc(clc_from_pearson(pearson_concat(te, tr), labels), flags))
    # Every pair of seeds (not independent of each other, but a fuller picture of pooling two).
    pairs = []
    for a, b in itertools.combinations(keys, 2):
        te = runs[a][0] + runs[b][0]
        tr = runs[a][1] + runs[b][1]
        pairs.append(auroc(clc_from_pearson(pearson_concat(te, tr), labels), flags))
    variants["pooled-2-all-pairs"] = pairs
    summary = {name: stats(values) for name, values in variants.items() if values}
    for name, rels in reliabilities.items():
        for where in ("test", "trusted"):
            summary[name][f"reliability_{where}"] = [r[where] for r in rels]
    print(f"{root}: seeds {keys}")
    for name, s in summary.items():
        rel = ""
        if "reliability_test" in s:
            rel = (f"  split-run reliability test {np.mean(s['reliability_test']):.3f}"
                   f" trusted {np.mean(s['reliability_trusted']):.3f}")
        print(f"  {name:20s} CLC {s['mean']:.4f} ± {s['sd']:.4f}  (n {s['n']}; "
              + ", ".join(f"{v:.3f}" for v in s["values"]) + ")" + rel)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
