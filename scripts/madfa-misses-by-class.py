#!/usr/bin/env python3
"""Which anomalous inputs MAD-FA misses, by their source class (issue 26: what the PyTorch
peer's Blended model lacks).

    OPENBLAS_NUM_THREADS=1 scripts/madfa-misses-by-class.py RUN_DIR [--log EPS]

RUN_DIR is a `vigil sample` folder run on image folders (its task.json lists every test input's
path; an anomalous input's class folder is its source class). Scores the whole run's CLC and
Class CCC in numpy (all chains and draws; --log EPS scores log(trace + EPS)) and prints, per
source class of the anomalous inputs, each score's AUROC of those inputs against all clean test
inputs, and the share of them above the clean inputs' 95th percentile.
"""
import argparse
import json
import pathlib
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(pathlib.Path(__file__).parent))
variants = __import__("madfa-trace-variants")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run")
    parser.add_argument("--log", type=float, metavar="EPS")
    args = parser.parse_args()
    run = pathlib.Path(args.run)
    test, trusted, labels, flags = variants.load(run)
    if args.log is not None:
        test = [np.log(t + args.log) for t in test]
        trusted = [np.log(t + args.log) for t in trusted]
    paths = json.loads((run / "task.json").read_text()).get("test_paths")
    if not paths or len(paths) != len(flags):
        raise SystemExit(f"{run}/task.json lists no path per test input (a --record run?)")
    source = np.array([pathlib.Path(p).parent.name for p in paths])
    te, tr = np.concatenate(test).T, np.concatenate(trusted).T
    scores = {
        "clc": variants.clc_from_pearson(variants.pearson_concat(test, trusted), labels),
        "class_ccc": -variants.class_max(variants.ccc_matrix(te, tr), labels),
    }
    print(f"{run}: all anomalous: " + ", ".join(
        f"{k} {roc_auc_score(flags, v):.4f}" for k, v in scores.items()))
    clean = ~flags
    for c in sorted(set(source[flags])):
        pick = flags & (source == c)
        cells = []
        for k, v in scores.items():
            y = np.r_[np.zeros(clean.sum()), np.ones(pick.sum())]
            auc = roc_auc_score(y, np.r_[v[clean], v[pick]])
            above = np.mean(v[pick] > np.quantile(v[clean], 0.95))
            cells.append(f"{k} {auc:.3f} (above clean 95%: {above:.2f})")
        print(f"  source class {c} ({pick.sum()} inputs): " + ", ".join(cells))


if __name__ == "__main__":
    main()
