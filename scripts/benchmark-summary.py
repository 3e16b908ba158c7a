#!/usr/bin/env python3
"""A Markdown summary of a `vigil benchmark backdoor` report: one row per detector (its primary
column) with mean AUROC, mean DER, mean TPR and FPR at the trusted-set threshold and the number
of records where it has the best AUROC / DER among the online detectors; then per attack the
AUROC and DER of MAD-FA (CLC) beside the best other online detector.

    scripts/benchmark-summary.py DIR/report.json

"Online" excludes spectral signatures and QUE, which score with statistics of the whole input
mix (transductive, docs/detectors.md). Standard library only.
"""
import json
import sys

PRIMARY = {"madfa": "clc", "strip": "neg_entropy", "scale-up": "spc", "ibd-psc": "psc"}
TRANSDUCTIVE = {"spectral", "que"}


def main(path):
    report = json.load(open(path))
    records = [r["name"] for r in report["records"]]
    attack = {r["name"]: r["attack"] for r in report["records"]}
    rows = {}
    for row in report["rows"]:
        if row["column"] == PRIMARY.get(row["detector"], row["detector"]):
            rows[(row["detector"], row["record"])] = row
    names = sorted({d for d, _ in rows})
    na = {(n["detector"], n["record"]) for n in report.get("no_scores", report.get("not_applicable", []))}

    def best(record, key):
        online = [(rows[(d, record)][key] if key == "auroc" else rows[(d, record)]["der"]["der"], d)
                  for d in names if d not in TRANSDUCTIVE and (d, record) in rows]
        return max(online)

    table = []
    for d in names:
        rs = [rows[(d, r)] for r in records if (d, r) in rows]
        if not rs:
            continue
        mean = lambda f: sum(f(r) for r in rs) / len(rs)
        wins_auroc = sum(best(r, "auroc")[1] == d for r in records if (d, r) in rows)
        wins_der = sum(best(r, "der")[1] == d for r in records if (d, r) in rows)
        table.append((mean(lambda r: r["der"]["der"]), d, PRIMARY.get(d, d), len(rs),
                      mean(lambda r: r["auroc"]), mean(lambda r: r["tpr"]), mean(lambda r: r["fpr"]),
                      min(r["der"]["der"] for r in rs), wins_auroc, wins_der))
    table.sort(reverse=True)
    print(f"{len(records)} attack records: {', '.join(records)}\n")
    print("| detector (column) | records | mean AUROC | mean DER | min DER | TPR at threshold | FPR at threshold | best online AUROC / DER |")
    print("|---|---|---|---|---|---|---|---|")
    for der, d, col, n, auroc, tpr, fpr, min_der, wa, wd in table:
        tag = " (transductive)" if d in TRANSDUCTIVE else ""
        wins = "-" if d in TRANSDUCTIVE else f"{wa} / {wd}"
        print(f"| {d} ({col}){tag} | {n} | {auroc:.4f} | {der:.4f} | {min_der:.4f} | {tpr:.3f} | {fpr:.3f} | {wins} |")
    for d in sorted({d for d, _ in na}):
        print(f"| {d} | 0 | n/a | n/a | n/a | n/a | n/a | - |")
    print("\n| record (attack) | MAD-FA CLC AUROC | DER | best other online detector | its AUROC | its DER |")
    print("|---|---|---|---|---|---|")
    for r in records:
        m = rows.get(("madfa", r))
        others = [(rows[(d, r)]["der"]["der"], d) for d in names
                  if d not in TRANSDUCTIVE and d != "madfa" and (d, r) in rows]
        der, d = max(others)
        o = rows[(d, r)]
        mad = f"{m['auroc']:.4f} | {m['der']['der']:.4f}" if m else "- | -"
        print(f"| {r} ({attack[r]}) | {mad} | {d} | {o['auroc']:.4f} | {der:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1])
