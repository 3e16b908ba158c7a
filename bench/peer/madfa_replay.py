#!/usr/bin/env python3
"""Replays a vigil MAD-FA chain through the PyTorch twin's update, with vigil's own draws.

`vigil sample ... --record-steps DIR` writes chain 0's randomness: per step the minibatch
indices and the standard-normal noise N (before scaling by sqrt(lr) sqrt(G)), in vigil's layout
(format: crates/vigil-core/src/madfa/record.rs). This script feeds them to
`madfa_twin.run_chain` (its `replay` hook) from w* with V = 0, so the twin takes exactly vigil's
minibatches and noise; only the update arithmetic is the twin's (PyTorch's gradients,
`madfa_twin.sgld_step_`). If the two update laws are the same, the trajectories agree up to
float32 rounding (the chain is a contracting Ornstein-Uhlenbeck jitter, so rounding does not
grow); if not, the per-step comparison shows the first step and term where they part.

Compared, step by step, against vigil's run folder (--run: task.npz, traces.npz,
diagnostics.json, resume/chain-0/model.safetensors):
  - the minibatch loss and the norms of the drift, localization and noise terms and |w - w*| at
    every step (vigil's diagnostics.json), relative differences and the first step where each
    exceeds --tolerance;
  - with --displacements (resume/chain-0/traces.safetensors of a `--traces linearised` run of
    the same seed and chain: w_t - w* at every draw), |w_replay - w_vigil| at every kept draw;
  - the final weights against vigil's w_T (resume/chain-0/model.safetensors);
  - the traces against vigil's traces.npz, and the four AUROCs of both (madfa_twin's scoring).

    python3 bench/peer/madfa_replay.py --steps /tmp/steps-s2 --run runs/madfa/replay/seed-2 \\
        --model runs/badnets/model.safetensors --out runs/madfa/replay/seed-2/replay.npz \\
        [--displacements runs/madfa/badnets-reference-linearised/seed-2/resume/chain-0/traces.safetensors] \\
        [--twin-json results/madfa-small-cnn/badnets-reference-torch/seed-2.json]

Prints one JSON object on stdout (small: per-step series rounded to 4 significant digits).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import madfa_twin as twin  # noqa: E402

TERMS = ("loss", "drift_norm", "localization_norm", "noise_norm", "distance")


def twin_config(manifest, n_classes):
    """madfa_twin's cfg dict from the recorded ChainConfig."""
    c = manifest["config"]
    s = c["sgld"]
    p = s["preconditioner"]
    rms = p["kind"] == "rms-prop"
    return {
        "lr": s["lr"], "n_beta": s["n_beta"], "gamma": s["gamma"],
        "sampler": "rmsprop" if rms else "plain",
        "rms_alpha": p.get("alpha", 0.99), "rms_eps": p.get("eps", 0.1),
        "batch_size": s["batch_size"], "trace_batch_size": c["trace_batch_size"],
        "draws": c["draws"], "burn_in": c["burn_in"], "thinning": c["thinning"],
        "bn": c["bn"], "loss": c["loss"], "seed": c["seed"], "chains": 1,
        "step_norms": True, "num_classes": n_classes,
    }


def noise_layout(manifest, model):
    """Per torch parameter (in model.parameters() order): slice of the recorded noise vector and
    how to reshape it. vigil's Linear weights are [in, out]: transposed here."""
    named = {name.removeprefix("network."): p for name, p in model.named_parameters()}
    offsets, start = {}, 0
    for entry in manifest["params"]:
        offsets[entry["path"]] = (start, entry["numel"])
        start += entry["numel"]
    layout = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = name.removeprefix("network.")
        if key not in offsets:
            raise SystemExit(f"vigil recorded no noise for `{key}` (recorded: {list(offsets)})")
        begin, n = offsets[key]
        if n != p.numel():
            raise SystemExit(f"`{key}`: vigil recorded {n} values, the model has {p.numel()}")
        layout.append((key, begin, n, tuple(p.shape)))
    if set(offsets) - set(named):
        raise SystemExit(f"recorded parameters unknown to the model: {set(offsets) - set(named)}")
    return layout, start


def to_torch(flat, layout):
    """The recorded flat noise as tensors shaped like the torch parameters."""
    out = []
    for _, begin, n, shape in layout:
        t = torch.from_numpy(np.ascontiguousarray(flat[begin:begin + n]))
        if len(shape) == 2:  # vigil's Linear weight is [in, out]
            t = t.view(shape[1], shape[0]).t()
        out.append(t.reshape(shape).contiguous())
    return out


def flat_vigil_layout(tensors, layout, total):
    """Torch-shaped tensors back to vigil's flat layout (the recorded order)."""
    flat = np.empty(total, dtype=np.float32)
    for t, (_, begin, n, shape) in zip(tensors, layout):
        a = t.detach()
        if len(shape) == 2:
            a = a.t()
        flat[begin:begin + n] = a.contiguous().reshape(-1).numpy()
    return flat


def sig(x, digits=4):
    if x is None or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def compare_series(replay, vigil, tolerance):
    """Relative difference per step of two series, its summary and first step above tolerance."""
    a, b = np.asarray(replay, dtype=np.float64), np.asarray(vigil, dtype=np.float64)
    rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-30)
    above = np.nonzero(rel > tolerance)[0]
    return {
        "max_rel": sig(float(rel.max())), "median_rel": sig(float(np.median(rel))),
        "first_step_above_tolerance": int(above[0]) if len(above) else None,
        "rel_at_steps": {str(s): sig(float(rel[s])) for s in (0, 1, 9, 49, len(rel) - 1) if s < len(rel)},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", required=True, help="folder written by `vigil sample --record-steps`")
    ap.add_argument("--run", required=True, help="the same run's --out folder")
    ap.add_argument("--model", required=True, help="w*: the vigil checkpoint the run sampled around")
    ap.add_argument("--out", required=True, help="replayed trace file to write (.npz)")
    ap.add_argument("--displacements", help="linearised run's resume/chain-0/traces.safetensors")
    ap.add_argument("--twin-json", help="the twin's own run of this seed (its AUROCs are reported)")
    ap.add_argument("--tolerance", type=float, default=1e-3,
                    help="relative difference per step that counts as a departure (default 1e-3)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    with open(os.path.join(args.steps, "manifest.json")) as f:
        manifest = json.load(f)
    if manifest["first_step"] != 0:
        raise SystemExit(f"the recording starts at step {manifest['first_step']}: it needs every step "
                         "(record a fresh run, not a resumed one)")
    model, spec = twin.load_model(args.model)
    cfg = twin_config(manifest, len(spec["class_names"]))
    task = twin.load_task(os.path.join(args.run, "task.npz"), spec)
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    layout, total = noise_layout(manifest, model)
    n_trusted = len(task["trusted"])
    trace_images = torch.cat([task["trusted"], task["test"]])
    trace_labels = twin.predict(model, trace_images, cfg["trace_batch_size"])
    with np.load(os.path.join(args.run, "traces.npz")) as z:
        vigil_trusted, vigil_test = z["trusted"][0], z["test"][0]
        vigil_labels = np.concatenate([z["trusted_labels"], z["test_labels"]])
        flags = z["test_is_anomalous"].astype(bool)
    with open(os.path.join(args.run, "diagnostics.json")) as f:
        vigil_diag = next(d for d in json.load(f) if d["chain"] == manifest["chain"])
    labels_agree = float(np.mean(trace_labels.numpy() == vigil_labels))

    def replay(step):
        with np.load(os.path.join(args.steps, f"step-{step:05}.npz")) as z:
            indices, noise = z["indices"], z["noise"]
        if len(noise) != total:
            raise SystemExit(f"step {step}: {len(noise)} noise values, the manifest says {total}")
        return torch.from_numpy(indices.astype(np.int64)), to_torch(noise, layout)

    displacements = safe_open(args.displacements, "np") if args.displacements else None
    per_draw = {"replay_minus_vigil": [], "vigil_distance": [], "replay_distance": [], "max_abs": []}

    def on_draw(draw, params, w_star):
        if displacements is None:
            return
        mine = flat_vigil_layout([p - w for p, w in zip(params, w_star)], layout, total)
        theirs = displacements.get_slice("traces")[draw * total:(draw + 1) * total]
        diff = mine.astype(np.float64) - theirs
        per_draw["replay_minus_vigil"].append(float(np.linalg.norm(diff)))
        per_draw["vigil_distance"].append(float(np.linalg.norm(theirs.astype(np.float64))))
        per_draw["replay_distance"].append(float(np.linalg.norm(mine.astype(np.float64))))
        per_draw["max_abs"].append(float(np.abs(diff).max()))

    if displacements is not None:
        length = displacements.get_slice("traces").get_shape()[0]
        if length != cfg["draws"] * total:
            raise SystemExit(f"{args.displacements}: {length} values, not {cfg['draws']} draws x {total}")

    traces, diag = twin.run_chain(model, start_state, task, trace_images, trace_labels, cfg,
                                  manifest["chain"], on_draw=on_draw, replay=replay)
    params = [p for p in model.parameters() if p.requires_grad]

    # Final weights against vigil's checkpoint at the last step.
    final = load_file(os.path.join(args.run, "resume", "chain-0", "model.safetensors"))
    w_star = load_file(args.model)
    final_diff, final_vigil, per_tensor = 0.0, 0.0, {}
    for (key, _, _, _), p in zip(layout, params):
        d = (p.detach().double() - final[key].double())
        v = (final[key].double() - w_star[key].double())
        final_diff += float(d.pow(2).sum())
        final_vigil += float(v.pow(2).sum())
        per_tensor[key] = sig(float(d.norm() / v.norm()))

    trusted, test = traces[:, :n_trusted], traces[:, n_trusted:]
    t_diff = np.abs(traces.astype(np.float64) - np.concatenate([vigil_trusted, vigil_test], 1))
    triggered = np.concatenate([np.zeros(n_trusted, bool), flags])
    twin.save_traces(args.out, trusted[None], test[None], trace_labels[:n_trusted].numpy(), flags,
                     [manifest["chain"]])
    labels = trace_labels[:n_trusted].numpy().astype(np.int64)
    auroc_replay = twin.aurocs(twin.anomaly_scores(trusted[None], test[None], labels), flags)
    auroc_vigil = twin.aurocs(twin.anomaly_scores(vigil_trusted[None], vigil_test[None],
                                                  vigil_labels[:n_trusted]), flags)
    twin_own = None
    if args.twin_json:
        with open(args.twin_json) as f:
            twin_own = json.load(f)["auroc"]

    steps = {term: compare_series(diag[term], vigil_diag[term], args.tolerance) for term in TERMS}
    result = {
        "steps_dir": args.steps, "run": args.run, "model": args.model, "seed": cfg["seed"],
        "chain": manifest["chain"], "steps": len(diag["loss"]),
        "trace_labels_agree": labels_agree,
        "per_step_vs_vigil": steps,
        "per_step_series": {term: {"replay": [sig(x) for x in diag[term]],
                                   "vigil": [sig(x) for x in vigil_diag[term]]}
                            for term in ("drift_norm", "noise_norm", "distance")},
        "final_weights": {
            "replay_minus_vigil": sig(math.sqrt(final_diff)),
            "vigil_distance_from_w_star": sig(math.sqrt(final_vigil)),
            "relative": sig(math.sqrt(final_diff / final_vigil)),
            "relative_per_tensor": per_tensor,
        },
        "traces_vs_vigil": {
            "max_abs": sig(float(t_diff.max())),
            "median_abs": sig(float(np.median(t_diff))),
            "bit_identical_fraction": sig(float(np.mean(t_diff == 0))),
            "triggered_max_abs": sig(float(t_diff[:, triggered].max())),
            "same_zero_pattern": bool(np.array_equal(traces == 0,
                                                     np.concatenate([vigil_trusted, vigil_test], 1) == 0)),
        },
        "auroc": {"vigil": auroc_vigil, "replay": auroc_replay, "twin_own_draws": twin_own},
        "seconds": {"total": time.perf_counter() - started, "steps": diag["step_seconds"],
                    "traces": diag["trace_seconds"]},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    if displacements is not None:
        rel = np.array(per_draw["replay_minus_vigil"]) / np.array(per_draw["vigil_distance"])
        result["per_draw_displacement"] = {
            "relative_max": sig(float(rel.max())), "relative_median": sig(float(np.median(rel))),
            "relative_at_draws": {str(d): sig(float(rel[d])) for d in (0, 49, 99, 149, 199, len(rel) - 1)},
            "max_abs_max": sig(max(per_draw["max_abs"])),
            "relative": [sig(x, 3) for x in rel],
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
