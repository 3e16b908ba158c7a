#!/usr/bin/env python3
"""Summarises `vigil benchmark ood` reports of one or more seeds (SPEC.md section 2 bars).

    python3 scripts/halo-benchmark-summary.py results/halo-benchmark-small-cnn-reduced/seed-*/report.json

Prints Markdown: per model, clean and robust accuracy, then per score the mean AUROC over OOD
sets in every setting, as mean +- sample sd over the reports (seeds) given, and the issue's bars
for MSP (HALO's score): HALO both-attacked AUROC above TRADES-OE's and OE's, HALO clean AUROC no
worse than TRADES-OE's, each as a paired difference over seeds.
"""
import json
import statistics
import sys

SETTINGS = ["clean", "id-attacked", "ood-attacked", "both-attacked", "adaptive", "transfer"]


def fmt(values, digits=4):
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(paths):
    reports = [json.load(open(p)) for p in paths]
    models = [a["model"] for a in reports[0]["accuracy"]]
    scores = list(reports[0]["config"]["scores"])
    # MAD-FA's columns, when the benchmark ran it (`--madfa`), in the order the rows give them.
    for r in reports[0]["averages"]:
        if r["score"] not in scores:
            scores.append(r["score"])

    def auroc(report, model, score, setting, over="mean"):
        for r in report["averages"]:
            if (r["model"], r["score"], r["setting"], r["ood_set"]) == (model, score, setting, over):
                return r["auroc"]
        return None

    print(f"{len(reports)} report(s): " + ", ".join(paths) + "\n")
    print("| model | clean accuracy | robust accuracy (PGD CE) |\n|---|---|---|")
    for m in models:
        acc = [[a for a in r["accuracy"] if a["model"] == m][0] for r in reports]
        print(f"| {m} | {fmt([a['clean'] for a in acc])} | {fmt([a['robust'] for a in acc])} |")
    for score in scores:
        present = [s for s in SETTINGS if auroc(reports[0], models[0], score, s) is not None]
        print(f"\n**{score}**, AUROC mean over OOD sets\n")
        print("| model | " + " | ".join(present) + " |\n|---|" + "---|" * len(present))
        for m in models:
            cells = []
            for s in present:
                values = [v for v in (auroc(r, m, score, s) for r in reports) if v is not None]
                cells.append(fmt(values))
            print(f"| {m} | " + " | ".join(cells) + " |")

    print("\n**Bars (MSP, paired over seeds)**\n")
    checks = [
        ("halo", "trades-oe", "both-attacked", "HALO both-attacked AUROC above TRADES-OE's"),
        ("halo", "oe", "both-attacked", "HALO both-attacked AUROC above OE's"),
        ("halo", "trades-oe", "clean", "HALO clean AUROC no worse than TRADES-OE's"),
    ]
    for a, b, setting, label in checks:
        if a not in models or b not in models:
            continue
        diffs = [auroc(r, a, "msp", setting) - auroc(r, b, "msp", setting) for r in reports]
        sign = all(d > 0 for d in diffs) if "above" in label else all(d >= 0 for d in diffs)
        print(f"- {label}: difference {fmt(diffs)} over {len(diffs)} seed(s): "
              f"{'holds' if sign else 'does not hold'} in every seed")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
