#!/usr/bin/env python3
"""A candidate for MAD-FA's recommended score (issue 26): CLC and Class CCC, each standardised by
its own leave-one-out scores on the trusted set, summed. Measured after the fact on trace files,
in numpy, independently of vigil's Rust scores.

    OPENBLAS_NUM_THREADS=1 scripts/madfa-fused-score.py seeds RUNS_DIR [--results DIR] [--log EPS]
    OPENBLAS_NUM_THREADS=1 scripts/madfa-fused-score.py pool POOL_RUN_DIR [--log EPS]
                                                        [--chains 4] [--draws 150]

Why these two: on the validation pools CLC (Pearson: the traces' co-variation only) is best on
vigil's records and Class CCC (Lin's concordance: levels and scales too) on the PyTorch peer's
models, each failing where the other wins (docs/madfa.md, "Stable on models it was not tuned
on"). Neither scale means anything across runs, so each is turned into "how many trusted
standard deviations above the trusted mean" using the trusted samples' own scores against the
other trusted samples (leave-one-out, as vigil's thresholds use), then the two are added. Only
trusted data is used: the score of one input does not depend on the other inputs.

`seeds`: RUNS_DIR/seed-K/traces.npz of scripts/madfa-seeds.sh; prints, per seed, CLC, Class CCC
and the sum's AUROC, then each one's mean and sample sd over seeds; with --results, checks the
numpy CLC and Class CCC against the AUROCs vigil printed (RESULTS/seed-K.json).
`figure`: the stability figure against the spread for the recommended score (issue 26's third
bar): for every pool given and designs of 2-5 chains x 100-300 draws, the sd of the summed
score's AUROC over disjoint-chain replicates against one minus its mean split-run reliability on
the test inputs (even against odd chains, Spearman-Brown, as `vigil sample` prints it); prints
the rows and the Spearman correlation, and with --plot draws them (SVG).

    OPENBLAS_NUM_THREADS=1 scripts/madfa-fused-score.py figure POOL_RUN_DIR... --log 1e-7 [--plot F.svg]

`pool`: emulates runs of --chains x --draws from a pool of chains (disjoint chain groups, 10
random assignments, as scripts/madfa-pool.py) and prints each score's mean and sd over replicates.
--log EPS scores log(trace + EPS) (a pool recorded with the reference or precise loss, to emulate
`--loss log`).
"""
import argparse
import json
import pathlib
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(pathlib.Path(__file__).parent))
variants = __import__("madfa-trace-variants")


def class_max_leave_one_out(matrix, labels):
    """Square trusted x trusted matrix: per row, the class means without the row's own sample,
    the max over classes that keep a member (as vigil's leave_one_out_scores)."""
    means = []
    for c in np.unique(labels):
        members = labels == c
        total = matrix[:, members].sum(axis=1) - np.where(members, np.diag(matrix), 0.0)
        count = members.sum() - members.astype(int)
        means.append(np.where(count > 0, total / np.maximum(count, 1), -np.inf))
    return np.stack(means, axis=1).max(axis=1)


def scores(test, trusted, labels):
    """test, trusted: [samples, draws] (chains concatenated). Returns the anomaly scores
    (higher = more anomalous) CLC, Class CCC and their standardised sum, of the test samples."""
    zt, zr = variants.zscore(test), variants.zscore(trusted)
    draws = test.shape[1]
    clc = -variants.class_max(zt @ zr.T / draws, labels)
    clc_trusted = -class_max_leave_one_out(zr @ zr.T / draws, labels)
    class_ccc = -variants.class_max(variants.ccc_matrix(test, trusted), labels)
    class_ccc_trusted = -class_max_leave_one_out(variants.ccc_matrix(trusted, trusted), labels)
    fused = ((clc - clc_trusted.mean()) / clc_trusted.std()
             + (class_ccc - class_ccc_trusted.mean()) / class_ccc_trusted.std())
    return {"clc": clc, "class_ccc": class_ccc, "clc_plus_class_ccc": fused}


def aurocs(test_chains, trusted_chains, labels, flags):
    test = np.concatenate(test_chains, axis=0).T
    trusted = np.concatenate(trusted_chains, axis=0).T
    return {k: roc_auc_score(flags, v) for k, v in scores(test, trusted, labels).items()}


def split_run_reliability(test_chains, trusted_chains, labels, name):
    """Even chains against odd chains: the test inputs' score `name` from each half, correlated
    across inputs, stepped up to the whole run (Spearman-Brown)."""
    halves = []
    for part in (slice(0, None, 2), slice(1, None, 2)):
        test = np.concatenate(test_chains[part], axis=0).T
        trusted = np.concatenate(trusted_chains[part], axis=0).T
        halves.append(scores(test, trusted, labels)[name])
    r = np.corrcoef(halves[0], halves[1])[0, 1]
    return 2 * r / (1 + r)


def figure(pools, eps, plot_path, name="clc_plus_class_ccc"):
    from scipy.stats import spearmanr

    points = []
    for pool in pools:
        test, trusted, labels, flags = variants.load(pathlib.Path(pool))
        test, trusted = transform(test, eps), transform(trusted, eps)
        model = pathlib.Path(pool).name
        for k in (2, 3, 4, 5):
            for d in (100, 150, 300):
                rng = np.random.default_rng(0)
                variances, rels, values = [], [], []
                for _ in range(3):
                    group_values = []
                    for g in variants.disjoint_groups(rng, len(test), k):
                        te = [test[c][:d] for c in g]
                        tr = [trusted[c][:d] for c in g]
                        group_values.append(aurocs(te, tr, labels, flags)[name])
                        rels.append(split_run_reliability(te, tr, labels, name))
                    values.extend(group_values)
                    variances.append(np.var(group_values, ddof=1))
                row = (model, f"{k} x {d}", 1 - float(np.mean(rels)),
                       float(np.sqrt(np.mean(variances))), float(np.mean(values)))
                points.append(row)
                print(f"  {row[0]} {row[1]}: 1 - reliability {row[2]:.4f}, sd {row[3]:.4f}, "
                      f"mean {row[4]:.4f}", flush=True)
    rho = spearmanr([p[2] for p in points], [p[3] for p in points])
    print(f"{name}: Spearman rho between 1 - split-run reliability and the AUROC sd over "
          f"{len(points)} designs of {len(pools)} models: {rho.statistic:.3f} (p {rho.pvalue:.2g})")
    if plot_path:
        import matplotlib

        matplotlib.use("svg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        colours = plt.get_cmap("tab10")
        for i, model in enumerate(sorted({p[0] for p in points})):
            mine = [p for p in points if p[0] == model]
            ax.scatter([p[2] for p in mine], [p[3] for p in mine], color=colours(i % 10),
                       label=model)
        ax.axhline(0.01, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel(f"1 - split-run reliability of {name} on the test inputs")
        ax.set_ylabel(f"sd of the {name} AUROC over replicates")
        ax.set_title(f"Stability figure against spread (log traces, rho {rho.statistic:.2f})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plot_path)


def transform(chains, eps):
    return chains if eps is None else [np.log(c + eps) for c in chains]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["seeds", "pool", "figure"])
    parser.add_argument("folder", nargs="+")
    parser.add_argument("--plot")
    parser.add_argument("--results")
    parser.add_argument("--log", type=float, metavar="EPS")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=150)
    args = parser.parse_args()
    if args.mode == "figure":
        figure(args.folder, args.log, args.plot)
        return
    if len(args.folder) != 1:
        raise SystemExit(f"{args.mode} takes one folder")
    root = pathlib.Path(args.folder[0])
    rows = []
    if args.mode == "seeds":
        seeds = sorted((p for p in root.glob("seed-*") if (p / "traces.npz").exists()),
                       key=lambda p: int(p.name.split("-")[1]))
        for p in seeds:
            test, trusted, labels, flags = variants.load(p)
            a = aurocs(transform(test, args.log), transform(trusted, args.log), labels, flags)
            if args.results and args.log is None:
                printed = json.loads((pathlib.Path(args.results) / f"{p.name}.json").read_text())
                for k in ("clc", "class_ccc"):
                    if abs(printed["auroc"][k] - a[k]) > 1e-6:
                        raise SystemExit(f"{p.name}: numpy {k} {a[k]} != vigil's {printed['auroc'][k]}")
            print(f"  {p.name}: " + ", ".join(f"{k} {v:.4f}" for k, v in a.items()))
            rows.append(a)
        label = f"{root}: {len(rows)} seeds"
        spread = {k: np.std([r[k] for r in rows], ddof=1) for k in rows[0]}
    else:
        test, trusted, labels, flags = variants.load(root)
        test, trusted = transform(test, args.log), transform(trusted, args.log)
        rng = np.random.default_rng(0)
        variances = []
        for _ in range(10):
            group_rows = []
            for g in variants.disjoint_groups(rng, len(test), args.chains):
                group_rows.append(aurocs([test[c][:args.draws] for c in g],
                                         [trusted[c][:args.draws] for c in g], labels, flags))
            rows.extend(group_rows)
            variances.append({k: np.var([r[k] for r in group_rows], ddof=1) for k in group_rows[0]})
        label = f"{root}: {args.chains} x {args.draws}, {len(rows)} replicates"
        spread = {k: np.sqrt(np.mean([v[k] for v in variances])) for k in variances[0]}
    print(label + ("" if args.log is None else f", log(trace + {args.log:g})") + ": "
          + ", ".join(f"{k} {np.mean([r[k] for r in rows]):.4f} ± {spread[k]:.4f}" for k in rows[0]),
          flush=True)


if __name__ == "__main__":
    main()
