#!/usr/bin/env python3
"""Linearised loss traces against exact ones, on the same chain (issue 13's "fast mode" question).

Runs one chain of the PyTorch twin (`madfa_twin.py`, same sampler and settings) and records, at
every kept draw, both the exact per-sample losses L_i(w_t) and the displacement w_t - w*. Then it
forms the linearised traces

    lin_i(t) = L_i(w*) + g_i . (w_t - w*),      g_i = grad of L_i at w* (eval mode)

with per-sample gradients from torch.func, scores both trace sets with the twin's scores and prints
ONE JSON object: the AUROCs of both, how alike the traces are (per-sample Pearson correlation of
exact against linearised trace over the draws), the fraction of constant traces of each, and the
seconds each part took. Pearson-based scores (Mean Corr, CLC) ignore the constant L_i(w*); the CCC
scores need it.

    python3 bench/peer/madfa_linearised.py --model runs/badnets/model.safetensors \\
        --task runs/madfa/badnets-reference/seed-0/task.npz --seed 0 > out.json

Settings default to the twin's (reference: lr 1e-6, n_beta 100, gamma 1e4, 300 steps, 50 burn-in,
250 draws). Models with BatchNorm are refused: their linearisation would need the drifted running
statistics, which this prototype does not model.
"""

import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import madfa_twin as twin  # noqa: E402


def per_sample_gradients(model, images, labels, block):
    """Yields (start, [b, P] float32) blocks of flattened per-sample CE gradients at the model's
    current parameters (eval mode), in model.parameters() order."""
    model.eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def loss(ps, x, y):
        return F.cross_entropy(functional_call(model, ps, (x.unsqueeze(0),)), y.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    for start in range(0, len(images), block):
        g = per_sample(params, images[start:start + block], labels[start:start + block])
        yield start, torch.cat([g[n].reshape(len(g[n]), -1) for n in names], 1)


def main():
    ap = twin.peer_arguments(__doc__)
    ap.add_argument("--grad-block", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    model, spec = twin.load_model(args.model)
    if twin.batch_norms(model):
        raise SystemExit("this prototype does not linearise BatchNorm models")
    task = twin.load_task(args.task, spec)
    cfg = {"lr": args.lr, "n_beta": args.n_beta, "gamma": args.gamma, "sampler": "rmsprop",
           "rms_alpha": 0.99, "rms_eps": 0.1, "batch_size": args.batch_size,
           "trace_batch_size": args.trace_batch_size, "draws": args.draws, "burn_in": args.burn_in,
           "thinning": args.thinning, "bn": "reference", "loss": "reference", "seed": args.seed,
           "chains": 1, "step_norms": False, "num_classes": len(spec["class_names"])}
    twin.check_stable(cfg)
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    n_trusted = len(task["trusted"])
    images = torch.cat([task["trusted"], task["test"]])
    labels = twin.predict(model, images, args.trace_batch_size)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    displacement = torch.empty(args.draws, n_params, dtype=torch.float32)

    def on_draw(d, params, w_star):
        with torch.no_grad():
            displacement[d] = torch.cat([(p - w).reshape(-1) for p, w in zip(params, w_star)])

    exact, diag = twin.run_chain(model, start_state, task, images, labels, cfg, 0, on_draw)

    # Linearised traces at w*: the loss there, plus gradient . displacement.
    model.load_state_dict(start_state)
    t0 = time.perf_counter()
    at_star = torch.empty(len(images))
    twin.trace_pass(model, images, labels, args.trace_batch_size, "reference", at_star)
    linear = torch.empty(args.draws, len(images), dtype=torch.float32)
    grad_s = dot_s = 0.0
    t_grad = time.perf_counter()
    for start, g in per_sample_gradients(model, images, labels, args.grad_block):
        t_dot = time.perf_counter()
        grad_s += t_dot - t_grad
        linear[:, start:start + len(g)] = at_star[start:start + len(g)] + displacement @ g.T
        t_grad = time.perf_counter()
        dot_s += t_grad - t_dot
    linear_s = time.perf_counter() - t0

    flags = task["test_is_anomalous"]
    result = {"settings": dict(cfg, model=args.model, task=args.task, n_params=n_params,
                               n_trusted=n_trusted, n_test=len(task["test"])),
              "seconds": {"total": time.perf_counter() - started,
                          "sampling_steps": diag["step_seconds"],
                          "exact_traces": diag["trace_seconds"],
                          "linearised_traces": linear_s, "per_sample_gradients": grad_s,
                          "displacement_products": dot_s}}
    traces = {"exact": exact, "linearised": linear.numpy()}
    for name, t in traces.items():
        t = t[None]  # [1 chain, draws, n]
        scores = twin.anomaly_scores(t[:, :, :n_trusted], t[:, :, n_trusted:], labels[:n_trusted].numpy())
        result[name] = {"auroc": twin.aurocs(scores, flags),
                        "constant_trusted_fraction": twin.constant_fraction(t[:, :, :n_trusted]),
                        "constant_test_fraction": twin.constant_fraction(t[:, :, n_trusted:])}
    # How alike the two traces of each sample are over the draws (both non-constant only).
    e, lin = exact.astype(np.float64), linear.numpy().astype(np.float64)
    e_c, l_c = e - e.mean(0), lin - lin.mean(0)
    denom = np.sqrt((e_c ** 2).sum(0) * (l_c ** 2).sum(0))
    ok = denom > 0
    corr = (e_c * l_c).sum(0)[ok] / denom[ok]
    result["exact_vs_linearised_corr"] = {"samples": int(ok.sum()), "median": float(np.median(corr)),
                                          "p10": float(np.percentile(corr, 10)),
                                          "min": float(corr.min())}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
