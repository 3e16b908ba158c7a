#!/usr/bin/env python3
"""Actual false-positive rate at the trusted-set threshold over independent splits: per
detector column, the FPR of every `vigil benchmark backdoor` report given (one per split seed),
their mean and standard deviation, and how many are within 2 points of the target.

    for s in 1 2 ... 10; do
      vigil benchmark backdoor runs/attacks/badnets --detectors msp,... \\
          --split-seed $s --seed $s --out runs/fpr-seeds/cheap-s$s
    done
    scripts/fpr-over-splits.py runs/fpr-seeds/*/report.json

Standard library only.
"""
import json
import statistics
import sys


def main(paths):
    target = None
    columns = {}
    for path in paths:
        report = json.load(open(path))
        target = report["config"]["detect"]["thresholds"]["target_fpr"]
        for row in report["rows"]:
            key = (row["detector"], row["column"])
            columns.setdefault(key, []).append((row["fpr"], row.get("threshold_samples")))
    print(f"{len(paths)} reports; target FPR {target}\n")
    print("| detector.column | splits | actual FPR per split | mean | SD | within 2 points | trusted scores |")
    print("|---|---|---|---|---|---|---|")
    total = within_all = 0
    for (detector, column), values in columns.items():
        fprs = [f for f, _ in values]
        within = sum(abs(f - target) <= 0.02 + 1e-12 for f in fprs)
        total += len(fprs)
        within_all += within
        sd = statistics.stdev(fprs) if len(fprs) > 1 else float("nan")
        ns = sorted({n for _, n in values if n})
        shown = " ".join(f"{f:.3f}" for f in fprs)
        print(f"| {detector}.{column} | {len(fprs)} | {shown} | {statistics.mean(fprs):.3f} | "
              f"{sd:.3f} | {within}/{len(fprs)} | {f'{ns[0]}-{ns[-1]}' if ns else 'not recorded'} |")
    print(f"\nall: {within_all}/{total} within 2 points of the target")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
