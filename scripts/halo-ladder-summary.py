#!/usr/bin/env python3
"""Summary of a `scripts/halo-ladder.sh` results folder: per objective, the clean test accuracy
of the last epoch, the epoch with the lowest validation loss (the kept checkpoint) and that
loss, and the training time. Writes RESULTS/summary.json and prints a Markdown table.

    python3 scripts/halo-ladder-summary.py results/halo-ladder-small-cnn-reduced
"""

import json
import os
import sys

ORDER = ["std", "oe", "trades", "trades-oe", "halo"]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = sys.argv[1]
    rows = []
    for objective in ORDER:
        path = os.path.join(root, objective, "metrics.jsonl")
        if not os.path.exists(path):
            continue
        epochs = [json.loads(line) for line in open(path) if line.strip()]
        best = min(epochs, key=lambda e: e.get("validation_loss", float("inf")))
        info = json.load(open(os.path.join(root, objective, "info.json")))
        rows.append({
            "objective": objective,
            "epochs": len(epochs),
            "last_test_accuracy": epochs[-1]["test_accuracy"],
            "best_epoch": best["epoch"],
            "best_validation_loss": best.get("validation_loss"),
            "best_epoch_test_accuracy": best["test_accuracy"],
            "train_seconds": sum(e["seconds"] for e in epochs),
            "config": info.get("training"),
        })
    print("| objective | epochs | clean test accuracy (last) | kept epoch | its validation loss (PGD-attacked for trades, trades-oe, halo; clean for std, oe) | its clean accuracy | training time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['objective']} | {r['epochs']} | {r['last_test_accuracy']:.4f} | {r['best_epoch']} | "
              f"{r['best_validation_loss']:.4f} | {r['best_epoch_test_accuracy']:.4f} | {r['train_seconds']:.0f} s |")
    out = os.path.join(root, "summary.json")
    with open(out + ".tmp", "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
