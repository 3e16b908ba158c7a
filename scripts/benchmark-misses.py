#!/usr/bin/env python3
"""Which triggered inputs a detector misses at its trusted-set threshold, by true class: the
per-class miss rate on triggered inputs and flag rate on clean ones, for every record of a
`vigil benchmark backdoor` folder.

    cargo run --release -p vigil-core --example benchmark_inputs -- runs/attacks/badnets \
        > runs/benchmark-inputs/badnets.csv       # one per record
    scripts/benchmark-misses.py BENCH_DIR INPUTS_DIR [DETECTOR.COLUMN ...]

BENCH_DIR holds `parts/<record>/<detector>.json` (per-input scores and flags, in the order
the example prints); INPUTS_DIR holds `<record>.csv` from the example. Columns default to
madfa.clc and mahalanobis.mahalanobis. Standard library only.
"""
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path


def column_flags(part, column):
    result = part["result"]
    for c in result["columns"]:
        if c["column"] == column:
            return c["flags"]
    raise SystemExit(f"no column {column} in {result['detector']}")


def main(bench, inputs_dir, columns):
    bench, inputs_dir = Path(bench), Path(inputs_dir)
    classes = None
    rows = []
    for inputs_file in sorted(inputs_dir.glob("*.csv")):
        record = inputs_file.stem
        inputs = list(csv.DictReader(open(inputs_file)))
        for spec in columns:
            detector, column = spec.split(".", 1)
            part_file = bench / "parts" / record / f"{detector}.json"
            if not part_file.exists():
                continue
            flags = column_flags(json.load(open(part_file)), column)
            if len(flags) != len(inputs):
                raise SystemExit(f"{part_file}: {len(flags)} flags for {len(inputs)} inputs")
            by_class = defaultdict(lambda: [0, 0, 0, 0])  # triggered, missed, clean, flagged
            for row, flagged in zip(inputs, flags):
                k = int(row["true_class"])
                counts = by_class[k]
                if row["is_triggered"] == "1":
                    counts[0] += 1
                    counts[1] += int(not flagged)
                else:
                    counts[2] += 1
                    counts[3] += int(flagged)
            classes = sorted(set(classes or []) | set(by_class))
            rows.append((record, spec, by_class))
    print("Per true class: share of triggered inputs missed (clean inputs flagged) at the "
          "trusted-set threshold.\n")
    print("| record | detector.column | " + " | ".join(f"class {k}" for k in classes)
          + " | all |")
    print("|---|---|" + "---|" * (len(classes) + 1))
    for record, spec, by_class in rows:
        cells = []
        for k in classes:
            t, m, c, f = by_class.get(k, [0, 0, 0, 0])
            miss = f"{m / t:.2f}" if t else "-"
            fpr = f"{f / c:.2f}" if c else "-"
            cells.append(f"{miss} ({fpr})")
        t = sum(v[0] for v in by_class.values())
        m = sum(v[1] for v in by_class.values())
        c = sum(v[2] for v in by_class.values())
        f = sum(v[3] for v in by_class.values())
        cells.append(f"{m / t:.2f} ({f / c:.2f})")
        print(f"| {record} | {spec} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:] or ["madfa.clc", "mahalanobis.mahalanobis"])
