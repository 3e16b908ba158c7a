#!/usr/bin/env python3
"""How close the actual false-positive rate on clean inputs comes to the target, per detector
column, in a `vigil benchmark backdoor` report; and how close it can come.

    scripts/benchmark-fpr.py DIR/report.json

A threshold set at the target on n trusted scores (held back, or all of them out of fold) is an
estimated quantile: with the conservative rule it flags the k = floor(target * n) highest, and
the rate it flags on new clean inputs is Beta(k, n - k + 1) distributed (mean k / (n + 1); with
randomised ties the mean is the target, the spread about the same); measured on m clean inputs
it gains binomial noise. The script prints, per column, the actual FPRs over records, their
mean, how many are within 2 points of the target, the standard deviation this sampling alone
predicts, and how many (record, column) pairs it alone would put outside the 2 points.
Standard library only.
"""
import json
import math
import sys


def phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def main(path):
    report = json.load(open(path))
    target = report["config"]["detect"]["thresholds"]["target_fpr"]
    thresholds = report["config"]["detect"]["thresholds"]
    # Reports before 2026-12-04 name the held-back fraction alone and no per-row sample count.
    split = thresholds.get("split", {"kind": "holdout", "fraction": thresholds.get("holdout_fraction")})
    print(f"target FPR {target}; thresholds: {json.dumps(split)}, ties "
          f"{thresholds.get('ties', 'conservative')}\n")
    records = {r["name"]: r for r in report["records"]}
    columns = {}
    for row in report["rows"]:
        columns.setdefault((row["detector"], row["column"]), []).append(row)
    print("| detector.column | actual FPR per record | mean | within 2 points | trusted scores | predicted SD (points) |")
    print("|---|---|---|---|---|---|")
    total = within_all = 0
    expected_outside = 0.0
    for (detector, column), rows in columns.items():
        fprs = [r["fpr"] for r in rows]
        within = sum(abs(f - target) <= 0.02 + 1e-12 for f in fprs)
        total += len(fprs)
        within_all += within
        sds, counts = [], []
        for r in rows:
            split_sizes = records[r["record"]]["split"]
            # The report's count, else per class ceil(fraction * n) over the whole kept set.
            kept = split_sizes["trusted"][1]
            n = r.get("threshold_samples") or (
                kept if split["kind"] == "cross-fit" else math.ceil(split["fraction"] * kept))
            m = split_sizes["clean_test"][1]
            counts.append(n)
            k = math.floor(target * n)
            beta_var = k * (n - k + 1) / ((n + 1) ** 2 * (n + 2))
            # Randomised ties flag the target rate of the trusted scores in expectation.
            p = target if thresholds.get("ties") == "randomised" else k / (n + 1)
            sd = math.sqrt(beta_var + p * (1 - p) / m)
            sds.append(sd)
            # Normal approximation around the rule's mean rate.
            expected_outside += 1 - (phi((0.02 + target - p) / sd) - phi((-0.02 + target - p) / sd))
        shown = " ".join(f"{f:.3f}" for f in fprs)
        ns = sorted({n for n in counts})
        print(f"| {detector}.{column} | {shown} | {sum(fprs) / len(fprs):.3f} | {within}/{len(fprs)} | "
              f"{'-'.join(str(n) for n in (ns[0], ns[-1])) if len(ns) > 1 else ns[0]} | "
              f"{100 * sum(sds) / len(sds):.2f} |")
    print(f"\nall columns: {within_all}/{total} within 2 points of the target; sampling alone "
          f"puts about {expected_outside:.1f} outside")


if __name__ == "__main__":
    main(sys.argv[1])
