#!/usr/bin/env python3
"""PyTorch twin of `vigil throughput --lm MODEL`: a Llama-style language model's two loops on the
CPU, in tokens per second.

The model is loaded by Hugging Face transformers from the same GGUF file (dequantised to
float32; PyTorch's default attention, SDPA), random token ids (seeded numpy), batch x seq_len.

  forward_loss  eval mode under torch.inference_mode(): logits, per-position next-token
                cross-entropy (reduction='none'), each sequence's mean copied out to numpy.
  sgld_step     forward, mean next-token loss, backward, then one localized SGLD step over every
                weight as vigil's madfa::sgld computes it at the reference settings (lr 1e-6,
                n_beta 100, gamma 1e4, RMSprop alpha 0.99 eps 0.1):
                V = alpha V + (1 - alpha) g^2, G = 1 / (sqrt(V) + eps),
                w -= (lr/2) G (n_beta g + gamma (w - w*)) - sqrt(lr) sqrt(G) N.

Each measurement runs --warmup untimed iterations, then --iters timed ones;
tokens/s = batch * seq_len * iters / seconds. Prints ONE JSON object on stdout.

Usage: python3 bench/peer/bench_lm_torch.py --gguf M.gguf|HF_DIR [--batch 4] [--seq-len 128]
                                            [--threads N] [--warmup 2] [--iters 5]
(a Hugging Face folder, such as a vigil text run, loads as it is: the tiny LM's row)
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import timed  # noqa: E402  (the image benchmark's timing loop, shared)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="a .gguf file or a Hugging Face folder")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import transformers
    from transformers import AutoModelForCausalLM

    dtype_kw = "dtype" if tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56) else "torch_dtype"
    if os.path.isdir(args.gguf):
        model = AutoModelForCausalLM.from_pretrained(args.gguf, **{dtype_kw: torch.float32})
    else:
        gdir, gname = os.path.split(os.path.abspath(args.gguf))
        model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, **{dtype_kw: torch.float32})
    vocab = model.config.vocab_size
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, vocab, (args.batch, args.seq_len)))

    def losses(logits):
        return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1),
                               reduction="none").reshape(args.batch, -1)

    model.eval()

    def forward_loss():
        with torch.inference_mode():
            out = losses(model(input_ids=ids, use_cache=False).logits).mean(1).numpy()
        return out

    t_fwd = timed(forward_loss, args.warmup, args.iters)

    lr, n_beta, gamma, alpha, eps = 1e-6, 100.0, 1e4, 0.99, 0.1
    params = [p for p in model.parameters() if p.requires_grad]
    w_star = [p.detach().clone() for p in params]
    squares = [torch.zeros_like(p) for p in params]

    def sgld_step():
        loss = losses(model(input_ids=ids, use_cache=False).logits).mean()
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p, w0, v in zip(params, w_star, squares):
                g = p.grad
                v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
                gain = 1.0 / (v.sqrt() + eps)
                step = (lr / 2) * gain * (n_beta * g + gamma * (p - w0))
                p.sub_(step).add_(math.sqrt(lr) * gain.sqrt() * torch.randn_like(p))

    t_sgld = timed(sgld_step, args.warmup, args.iters)
    n = args.batch * args.seq_len * args.iters
    print(json.dumps({
        "backend": "pytorch",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "attention": getattr(model.config, "_attn_implementation", None),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "seq_len": args.seq_len,
        "iters": args.iters,
        "forward_loss_tokens_per_s": round(n / t_fwd, 1),
        "sgld_step_tokens_per_s": round(n / t_sgld, 1),
    }))


if __name__ == "__main__":
    sys.exit(main())
