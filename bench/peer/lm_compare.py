#!/usr/bin/env python3
"""Compare `vigil generate` with `bench/peer/lm_peer.py` on the same prompts.

    vigil generate --model M.gguf --prompts bench/peer/lm_prompts.json --max-new 32 \
        --out V.json --logits V.npz
    python3 bench/peer/lm_peer.py --gguf M.gguf --prompts bench/peer/lm_prompts.json \
        --out P.json --generate 32
    python3 bench/peer/lm_peer.py ... --out P64.json --dtype float64     # optional reference
    python3 bench/peer/lm_compare.py V.json P.json [--truth P64.json] [--tolerance 1e-4]

Per prompt: token ids equal, the largest absolute logit difference over every position and
token (both runs' npz), the mean next-token loss of each, and whether the greedy continuations
are identical token for token (and if not, where they part and the peer's top-2 gap there).
With --truth (the peer in float64), each float32 run's own largest error against it, which
shows how much of the vigil-PyTorch difference is float32 rounding on either side. Exits 1 if
any bar fails.
"""
import argparse
import json
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("vigil")
    ap.add_argument("peer")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--truth", help="the peer's JSON from a --dtype float64 run")
    a = ap.parse_args()
    vigil = json.load(open(a.vigil))
    peer = json.load(open(a.peer))
    vz = np.load(a.vigil.rsplit(".", 1)[0] + ".npz")
    pz = np.load(a.peer.rsplit(".", 1)[0] + ".npz")
    tz = np.load(a.truth.rsplit(".", 1)[0] + ".npz") if a.truth else None
    truth = json.load(open(a.truth)) if a.truth else None
    ok = True
    rows = []
    for i, (v, p) in enumerate(zip(vigil, peer["prompts"], strict=True)):
        same_ids = v["ids"] == p["ids"]
        lv, lp = vz[f"logits_{i}"], pz[f"logits_{i}"]
        diff = float(np.abs(lv.astype(np.float64) - lp.astype(np.float64)).max())
        gv, gp = v["generated"], p["generated"]["ids"]
        same_gen = gv == gp
        parted = next((k for k, (x, y) in enumerate(zip(gv, gp)) if x != y), None)
        row = {
            "prompt": i,
            "tokens": len(v["ids"]),
            "ids_equal": same_ids,
            "max_abs_logit_diff": diff,
            "max_abs_logit": float(np.abs(lp).max()),
            "mean_loss_vigil": v["mean_loss"],
            "mean_loss_peer": p["mean_loss"],
            "generated_tokens": [len(gv), len(gp)],
            "greedy_identical": same_gen,
        }
        if not same_gen:
            row["first_difference_at"] = parted
            gaps = p["generated"].get("top1_top2_gaps")
            if gaps and parted is not None and parted < len(gaps):
                row["peer_top2_gap_there"] = gaps[parted]
        if tz is not None:
            lt = tz[f"logits_{i}"].astype(np.float64)
            row["vigil_vs_float64"] = float(np.abs(lv - lt).max())
            row["peer_vs_float64"] = float(np.abs(lp - lt).max())
            row["float64_greedy_equals_vigil"] = truth["prompts"][i]["generated"]["ids"] == gv
        ok &= same_ids and diff <= a.tolerance and same_gen
        rows.append(row)
    summary = {
        "tolerance": a.tolerance,
        "all_within_tolerance_and_identical": bool(ok),
        "prompts": rows,
    }
    print(json.dumps(summary, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
