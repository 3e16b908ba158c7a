#!/usr/bin/env python3
"""What HALO's helper term does to a trained ladder: measures, on each rung, the quantities the
helper term of SPEC.md section 2 is about, so one can see whether the term had anything to fix.

    python3 scripts/halo-helper-analysis.py LADDER [LADDER ...] [--n 1000] [--out FILE.json]

For every ladder folder (LADDER/std, LADDER/trades-oe, LADDER/halo, ...; best.safetensors of each
rung, the std rung as the helper g) and for the first N images of the Fashion-MNIST training and
test splits, per rung f:

  X_adv     PGD-10 on f maximising KL(softmax f(X) || softmax f(X_adv)) (L-inf 8/255, step
            2.5 eps / 10, uniform start, per-sample best iterate, eval mode: vigil's defaults)
  X_help    clip(X + 2 (X_adv - X), 0, 1)
  y_help    argmax g(X_adv)
  reported  clean accuracy of f; accuracy of g's labels y_help against the true labels;
            L_help = CE(f(X_help), y_help) and f's agreement with y_help on X_help;
            f's accuracy on X_adv and on X_help (true labels); L_adv = KL(f(X) || f(X_adv));
            mean MSP of f on X and on X_adv.

If the TRADES-OE rung already has a low L_help (it agrees with the helper on X_help as much as
HALO does), the helper term has nothing to teach and HALO cannot differ from TRADES-OE.
Reads the data from /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist) and the
models with bench/peer/madfa_twin.py's loader (needs torch, safetensors).
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "bench", "peer"))
import madfa_twin  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"
RUNGS = ["std", "oe", "trades", "trades-oe", "halo"]


def idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def split(name, n):
    images = idx(os.path.join(DATA, f"{name}-images-idx3-ubyte.gz"))[:n]
    labels = idx(os.path.join(DATA, f"{name}-labels-idx1-ubyte.gz"))[:n]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def kl_rows(p_logits, q_logits):
    """KL(softmax p || softmax q) per row."""
    p = F.log_softmax(p_logits, dim=1)
    q = F.log_softmax(q_logits, dim=1)
    return (p.exp() * (p - q)).sum(dim=1)


def trades_pgd(model, x, eps, steps, generator):
    """PGD maximising the per-sample KL to the clean prediction; per-sample best iterate
    (the final one included), as vigil's attack::pgd."""
    step = 2.5 * eps / steps
    with torch.no_grad():
        clean = model(x)
    start = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    adv = (x + start).clamp(0, 1)
    best, best_loss = adv.clone(), torch.full((len(x),), -float("inf"))
    for _ in range(steps + 1):
        adv.requires_grad_(True)
        loss = kl_rows(clean, model(adv))
        with torch.no_grad():
            better = loss > best_loss
            best[better] = adv[better]
            best_loss = torch.where(better, loss, best_loss)
        if _ == steps:
            break
        (grad,) = torch.autograd.grad(loss.sum(), adv)
        with torch.no_grad():
            adv = adv + step * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return best.detach()


def measure(model, helper, x, y, eps, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    adv = trades_pgd(model, x, eps, steps, generator)
    x_help = (x + 2 * (adv - x)).clamp(0, 1)
    with torch.no_grad():
        z, z_adv, z_help = model(x), model(adv), model(x_help)
        y_help = helper(adv).argmax(1)
        return {
            "clean_accuracy": (z.argmax(1) == y).float().mean().item(),
            "helper_label_accuracy": (y_help == y).float().mean().item(),
            "l_help": F.cross_entropy(z_help, y_help).item(),
            "agreement_with_helper_on_x_help": (z_help.argmax(1) == y_help).float().mean().item(),
            "accuracy_on_x_adv": (z_adv.argmax(1) == y).float().mean().item(),
            "accuracy_on_x_help": (z_help.argmax(1) == y).float().mean().item(),
            "l_adv": kl_rows(z, z_adv).mean().item(),
            "msp_clean": F.softmax(z, 1).max(1).values.mean().item(),
            "msp_adv": F.softmax(z_adv, 1).max(1).values.mean().item(),
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ladders", nargs="+")
    ap.add_argument("--n", type=int, default=1000, help="images per split (first N)")
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the JSON here as well as to stdout")
    ap.add_argument("--markdown", help="also write a Markdown table (test split, mean and sd "
                    "over the ladders) here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    data = {name: split(name, args.n) for name in ("train", "t10k")}
    report = {"settings": vars(args), "torch": torch.__version__, "ladders": {}}
    for ladder in args.ladders:
        rows = {}
        helper, _ = madfa_twin.load_model(os.path.join(ladder, "std", "best.safetensors"))
        helper.eval()
        for rung in RUNGS:
            path = os.path.join(ladder, rung, "best.safetensors")
            if not os.path.exists(path):
                continue
            model, _ = madfa_twin.load_model(path)
            model.eval()
            rows[rung] = {split_name: measure(model, helper, x, y, args.eps, args.steps, args.seed)
                          for split_name, (x, y) in data.items()}
            print(f"{ladder} {rung}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in rows[rung]["t10k"].items()), file=sys.stderr)
        report["ladders"][ladder] = rows
    report["seconds"] = time.time() - started
    text = json.dumps(report, indent=1)
    if args.out:
        write_atomic(args.out, text + "\n")
    if args.markdown:
        write_atomic(args.markdown, markdown(report))
    print(text)


COLUMNS = ["clean_accuracy", "helper_label_accuracy", "accuracy_on_x_adv", "l_help",
           "agreement_with_helper_on_x_help", "l_adv", "msp_clean", "msp_adv"]


def markdown(report):
    ladders = list(report["ladders"].values())
    lines = [f"{len(ladders)} ladder(s): " + ", ".join(report["ladders"]) +
             f"; first {report['settings']['n']} Fashion-MNIST test images; mean ± sd over ladders", "",
             "| rung | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for rung in RUNGS:
        rows = [ladder[rung]["t10k"] for ladder in ladders if rung in ladder]
        if not rows:
            continue
        cells = []
        for column in COLUMNS:
            values = np.array([r[column] for r in rows])
            sd = values.std(ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{values.mean():.4f} ± {sd:.4f}")
        lines.append(f"| {rung} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
