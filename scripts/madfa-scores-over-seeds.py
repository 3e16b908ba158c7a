#!/usr/bin/env python3
"""Mean and sd over seeds of every MAD-FA score's AUROC, from `vigil score --json` outputs of
seed runs (one JSON per run, named ROW_seed-K.json).

    for f in runs/madfa-validation/*/seed-*/traces.npz; do
        name=$(echo $f | sed 's#runs/##; s#/traces.npz##; s#/#_#g')
        vigil score $f --json --out OUT/$name.csv > OUT/$name.json
    done
    scripts/madfa-scores-over-seeds.py OUT
"""
import glob
import json
import os
import re
import sys
from collections import defaultdict

import numpy as np

folder = sys.argv[1]
rows = defaultdict(lambda: defaultdict(list))
for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    row = re.sub(r"_seed-\d+\.json$", "", os.path.basename(path))
    for name, value in json.load(open(path))["auroc"].items():
        rows[row][name].append(value)
names = ["mean_corr", "clc", "mean_ccc", "class_ccc", "nearest_corr", "clc_plus_class_ccc"]
print("| row | seeds | " + " | ".join(names) + " |")
print("|---|---|" + "---|" * len(names))
for row, scores in rows.items():
    cells = []
    for name in names:
        v = np.array(scores[name])
        cells.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}")
    print(f"| {row} | {len(scores['clc'])} | " + " | ".join(cells) + " |")
