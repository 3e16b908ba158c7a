#!/usr/bin/env python3
"""Why MAD-FA's traces record the log of the loss (issue 26): on pools of chains, the shape of
the loss traces and what scoring their log (or their ranks) does to each chain's CLC AUROC.

    OPENBLAS_NUM_THREADS=1 scripts/madfa-log-traces.py POOL_RUN_DIR... [--eps 1e-7] [--draws 150]

For each pool (a `vigil sample` folder of many chains, as scripts/madfa-pool.py takes) it prints:
- the traces' shape in chain 0 (first --draws draws): the median over samples of the excess
  kurtosis over draws, and the median share of a trace's variance carried by its 5 largest
  deviations, for the recorded traces and for log(trace + eps);
- every chain's CLC AUROC on its own (first --draws draws) scored on the traces as recorded, on
  their log, and on their ranks over draws (Spearman instead of Pearson), with mean, sd and min;
- the whole pool's CLC and Class CCC AUROC (all chains and draws), recorded and log;
- the whole pool's CLC AUROC of log(trace + e) for several e (a pool recorded with the float32
  reference loss has exact zeros and losses quantised near 1.2e-7: e decides how much of that
  rounding noise the log amplifies; a pool recorded with `--loss precise` needs no e, and e = 0 is
  vigil's `--loss log`).

Scores in numpy (scripts/madfa-trace-variants.py), independent of vigil's Rust code.
"""
import argparse
import pathlib
import sys

import numpy as np
from scipy.stats import kurtosis, rankdata
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(pathlib.Path(__file__).parent))
variants = __import__("madfa-trace-variants")


def top_share(x, k=5):
    dev = (x - x.mean(axis=0)) ** 2
    return float(np.median(np.sort(dev, axis=0)[-k:].sum(axis=0) / dev.sum(axis=0)))


def summary(values):
    return (f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} (min {np.min(values):.3f}): "
            + " ".join(f"{v:.3f}" for v in values))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pools", nargs="+")
    parser.add_argument("--eps", type=float, default=1e-7,
                        help="added before the log (0 for a pool recorded with --loss precise)")
    parser.add_argument("--draws", type=int, default=150)
    args = parser.parse_args()
    d = args.draws
    for pool in args.pools:
        test, trusted, labels, flags = variants.load(pathlib.Path(pool))
        lowest = min(t.min() for t in test + trusted)
        print(f"{pool}: {len(test)} chains x {test[0].shape[0]} draws; lowest trace value "
              f"{lowest:.3g}; share of exact zeros {np.mean(np.stack(test) == 0):.4f}")
        log = lambda x: np.log(x + args.eps)  # noqa: E731
        te, tr = test[0][:d], trusted[0][:d]
        moving = te.std(axis=0) > 0
        moving_tr = tr.std(axis=0) > 0
        print(f"  chain 0, {d} draws: excess kurtosis (median over samples) test "
              f"{np.median(kurtosis(te[:, moving], axis=0)):.1f} -> log "
              f"{np.median(kurtosis(log(te[:, moving]), axis=0)):.1f}, trusted "
              f"{np.median(kurtosis(tr[:, moving_tr], axis=0)):.1f} -> log "
              f"{np.median(kurtosis(log(tr[:, moving_tr]), axis=0)):.1f}; variance share of the "
              f"5 largest deviations: test {top_share(te[:, moving]):.2f} -> log "
              f"{top_share(log(te[:, moving])):.2f}")
        forms = {
            "recorded": lambda x: x,
            "log": log,
            "ranks": lambda x: rankdata(x, axis=0),
        }
        for name, form in forms.items():
            per_chain = [
                roc_auc_score(flags, variants.clc_from_pearson(
                    variants.pearson_concat([form(a[:d])], [form(b[:d])]), labels))
                for a, b in zip(test, trusted)
            ]
            print(f"  per chain ({d} draws), {name:8s} CLC {summary(per_chain)}")
        for name in ("recorded", "log"):
            form = forms[name]
            a = [form(t) for t in test]
            b = [form(t) for t in trusted]
            clc = roc_auc_score(flags, variants.clc_from_pearson(variants.pearson_concat(a, b), labels))
            ccc = variants.ccc_matrix(np.concatenate(a).T, np.concatenate(b).T)
            class_ccc = roc_auc_score(flags, -variants.class_max(ccc, labels))
            print(f"  whole pool, {name:8s}: CLC {clc:.4f}, Class CCC {class_ccc:.4f}")
        sweep = []
        for e in (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3):
            if lowest + e <= 0:
                continue
            a = [np.log(t + e) for t in test]
            b = [np.log(t + e) for t in trusted]
            sweep.append(f"{e:g}: {roc_auc_score(flags, variants.clc_from_pearson(variants.pearson_concat(a, b), labels)):.4f}")
        print("  whole pool, CLC of log(trace + e): " + ", ".join(sweep), flush=True)


if __name__ == "__main__":
    main()
