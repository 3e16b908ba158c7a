#!/usr/bin/env python3
"""PyTorch twin of `vigil throughput`: SmallCnn (or PreAct-ResNet-18) throughput on the CPU, images
per second.

Model: SmallCnn at its reference size (width 32, hidden 128), or with --arch preact-resnet18
BackdoorBench's PreAct-ResNet-18 (width 64), 1x28x28 inputs (--input-shape 3,32,32 for CIFAR's),
10 classes, batch 128, random data (fixed once, reused every iteration), float32.

  train_step      forward, mean cross-entropy, backward, SGD(momentum 0.9, nesterov,
                  weight decay 5e-4) step.
  forward_loss    eval mode under torch.no_grad(): per-sample cross-entropy
                  (reduction='none'), copied out to a numpy array.
  pgd_step        one L-inf PGD step: parameters frozen (requires_grad False), eval mode,
                  input requires grad, loss = summed cross-entropy, grad w.r.t. the input,
                  x = clamp(clip_eps(x + alpha * sign(grad), x0), 0, 1). Successive
                  iterations continue from the previous x, as an attack would.
  halo_step       one HALO training step as vigil's halo::objective_loss computes it: batch ID
                  images + batch outliers (random), train-mode forward, CE + eta CE-to-uniform;
                  PGD-10 (eps 8/255, step 2.5 eps / 10, clipped uniform start) on the per-sample
                  KL(f(X) || f(X_adv)) in eval mode with frozen parameters, best iterate per
                  sample, final included; the KL term on the kept iterate; the helper term with
                  a frozen eval-mode copy of the model as helper and the clipped helper input;
                  beta 3, gamma 0.5, eta 2; backward and SGD step. Counts ID images;
                  --halo-iters timed iterations after one warm-up; --no-halo skips it.

Each measurement runs --warmup untimed iterations, then --iters timed ones;
img/s = batch * iters / seconds. Prints ONE JSON object on stdout (everything else goes to stderr).

Usage: python3 bench/peer/bench_torch.py [--threads N] [--warmup 5] [--iters 30]
                                         [--arch small-cnn|preact-resnet18] [--width N]
"""

import argparse
import copy
import json
import os
import sys
import time

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover - reported to the user
    sys.stderr.write(f"bench_torch.py: {e}. Install PyTorch first: pip install torch numpy\n")
    sys.exit(3)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tests", "fixtures", "torch"))
from reference_models import PreActResNet18, SmallCnn  # noqa: E402


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch.set_num_threads (default: the machine's core count)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--arch", choices=["small-cnn", "preact-resnet18"], default="small-cnn",
                    help="model, as `vigil throughput --arch` (1x28x28 inputs, 10 classes)")
    ap.add_argument("--width", type=int, default=None,
                    help="channel width (small CNN default 32, PreAct-ResNet-18 default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eps", type=float, default=8 / 255, help="PGD L-inf radius")
    ap.add_argument("--alpha", type=float, default=2 / 255, help="PGD step size")
    ap.add_argument("--halo-iters", type=int, default=None,
                    help="timed HALO steps (default: iters / 4, at least 2)")
    ap.add_argument("--no-halo", action="store_true", help="skip the HALO step (the slowest)")
    ap.add_argument("--input-shape", default="1,28,28",
                    help="C,H,W, as `vigil throughput --input-shape` (3,32,32: CIFAR)")
    args = ap.parse_args()
    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        ap.error("--input-shape takes three positive sizes: C,H,W")
    channels, height, width_px = shape
    if args.iters < 1 or args.warmup < 0 or args.batch < 1 or args.threads < 1:
        ap.error("--iters, --batch and --threads must be >= 1, --warmup >= 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    batch = args.batch

    if args.arch == "small-cnn":
        model = SmallCnn(channels, 10, width=args.width or 32, hidden=128, height=height,
                         width_px=width_px)
    else:
        model = PreActResNet18(in_channels=channels, num_classes=10, width=args.width or 64)
    x = torch.rand(batch, channels, height, width_px, dtype=torch.float32)
    y = torch.randint(0, 10, (batch,))

    # (a) training step
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    t_train = timed(train_step, args.warmup, args.iters)

    # (b) batched eval forward -> per-sample losses on the host
    model.eval()
    sink = []

    def forward_loss():
        with torch.no_grad():
            losses = F.cross_entropy(model(x), y, reduction="none")
        sink.append(np.array(losses.numpy(), copy=True))
        if len(sink) > 4:
            sink.clear()

    t_fwd = timed(forward_loss, args.warmup, args.iters)

    # (c) one PGD step, parameters frozen
    for p in model.parameters():
        p.requires_grad_(False)
    x0 = x.clone()
    state = {"x": x0.clone()}

    def pgd_step():
        xa = state["x"].detach().requires_grad_(True)
        loss = F.cross_entropy(model(xa), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
        with torch.no_grad():
            xn = xa + args.alpha * grad.sign()
            xn = torch.min(torch.max(xn, x0 - args.eps), x0 + args.eps).clamp_(0.0, 1.0)
        state["x"] = xn

    t_pgd = timed(pgd_step, args.warmup, args.iters)

    # (d) one HALO step
    halo_iters = args.halo_iters or max(args.iters // 4, 2)
    for p in model.parameters():
        p.requires_grad_(True)
    helper = copy.deepcopy(model).eval()
    for p in helper.parameters():
        p.requires_grad_(False)
    xo = torch.rand(batch, channels, height, width_px, dtype=torch.float32)
    eps, steps, beta, gamma, eta = 8 / 255, 10, 3.0, 0.5, 2.0
    step_size = 2.5 * eps / steps

    def kl_rows(p_logits, q_logits):
        return (F.softmax(p_logits, 1) * (F.log_softmax(p_logits, 1) - F.log_softmax(q_logits, 1))).sum(1)

    def ce_to_uniform(z):
        return (torch.logsumexp(z, 1) - z.mean(1)).mean()

    def halo_step():
        X = torch.cat([x, xo])
        model.train()
        logits = model(X)
        loss = F.cross_entropy(logits[:batch], y) + eta * ce_to_uniform(logits[batch:])
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            clean = model(X)
        xa = (X + torch.empty_like(X).uniform_(-eps, eps)).clamp(0.0, 1.0)
        best, best_v = xa.clone(), torch.full((len(X),), float("-inf"))
        for _ in range(steps):
            xa = xa.detach().requires_grad_(True)
            v = kl_rows(clean, model(xa))
            (g,) = torch.autograd.grad(v.sum(), xa)
            with torch.no_grad():
                better = v > best_v
                best[better], best_v = xa[better], torch.where(better, v, best_v)
                xa = torch.min(torch.max(xa + step_size * g.sign(), X - eps), X + eps).clamp(0.0, 1.0)
        with torch.no_grad():
            v = kl_rows(clean, model(xa))
            better = v > best_v
            best[better] = xa[better]
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()
        adv = model(best)
        n_id = batch
        loss = loss + beta * (kl_rows(logits[:n_id], adv[:n_id]).mean()
                              + eta * kl_rows(logits[n_id:], adv[n_id:]).mean())
        with torch.no_grad():
            y_help = helper(best[:n_id]).argmax(1)
        helped = (x + 2 * (best[:n_id] - x)).clamp(0.0, 1.0)
        loss = loss + gamma * F.cross_entropy(model(helped), y_help)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_halo = None if args.no_halo else timed(halo_step, 1, halo_iters)

    n = batch * args.iters
    out = {
        "backend": "pytorch",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "arch": args.arch,
        "input_shape": list(shape),
        "train_step_img_per_s": round(n / t_train, 1),
        "forward_loss_img_per_s": round(n / t_fwd, 1),
        "pgd_step_img_per_s": round(n / t_pgd, 1),
    }
    if t_halo is not None:
        out["halo_step_img_per_s"] = round(batch * halo_iters / t_halo, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
