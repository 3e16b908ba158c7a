#!/usr/bin/env python3
"""devinterp 2.0.1 (the real library, from PyPI) as a second MAD-FA peer.

Runs one chain of devinterp's own sampler loop (`devinterp.slt.sampler.sample_single_chain` with
`SGMCMC.rmsprop_sgld`: the same localized, RMSprop-preconditioned SGLD update vigil and the twin
implement) on a vigil attack record's model and task, records the per-sample cross-entropy of every
trusted and test sample at every kept draw through devinterp's draw callback (eval mode, no grad),
and scores the traces with the twin's scores (the reference's analyze.py arithmetic).

devinterp's per-sample machinery (`compute_bif` and its observables) takes language-model input
only, so the traces are recorded by the callback here; the sampler, its minibatch loader
(DataLoader with shuffle and drop_last, cycled) and its noise are devinterp's.

    pip install devinterp==2.0.1
    python3 bench/peer/madfa_devinterp.py --model runs/badnets/model.safetensors \\
        --task runs/madfa/badnets-reference-engine2/seed-0/task.npz --seed 0 > out.json

Prints ONE JSON object: AUROCs, seconds (total, chain including its traces, traces alone),
settings and the devinterp and torch versions.
"""

import json
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import madfa_twin as twin  # noqa: E402

try:
    import devinterp
    from devinterp.optim.sgmcmc import SGMCMC
    from devinterp.slt.sampler import sample_single_chain
except ImportError as e:  # pragma: no cover - reported to the user
    sys.exit(f"madfa_devinterp.py: {e}. Install the peer first: pip install devinterp==2.0.1")


class Samples(torch.utils.data.Dataset):
    """The sampling set as devinterp's loader expects it: dicts with an `input_ids` tensor."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"input_ids": self.images[i], "labels": self.labels[i]}


def main():
    ap = twin.peer_arguments(__doc__)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    model, spec = twin.load_model(args.model)
    task = twin.load_task(args.task, spec)
    n_trusted = len(task["trusted"])
    images = torch.cat([task["trusted"], task["test"]])
    labels = twin.predict(model, images, args.trace_batch_size)
    traces = np.zeros((args.draws, len(images)), dtype=np.float32)
    trace_seconds = [0.0]

    def record(draw, model, **_):
        t0 = time.perf_counter()
        out = torch.empty(len(images))
        twin.trace_pass(model, images, labels, args.trace_batch_size, "reference", out)
        model.train()
        traces[draw] = out.numpy()
        trace_seconds[0] += time.perf_counter() - t0

    def evaluate(model, data):
        logits = model(data["input_ids"])
        return F.cross_entropy(logits, data["labels"], reduction="none"), {}

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample_single_chain(
            model,
            Samples(task["sampling"], task["sampling_labels"]),
            evaluate,
            {name: None for name, _ in model.named_parameters()},
            num_draws=args.draws,
            num_burnin_steps=args.burn_in,
            num_steps_bw_draws=args.thinning,
            sampling_method=SGMCMC.rmsprop_sgld,
            sampling_method_kwargs={"lr": args.lr, "localization": args.gamma, "nbeta": args.n_beta,
                                    "alpha": 0.99, "eps": 0.1},
            chain=0,
            seed=args.seed,
            dataloader_seed=args.seed,
            callbacks=[record],
            batch_size=args.batch_size,
        )
    chain_seconds = time.perf_counter() - t0
    t = traces[None]
    scores = twin.anomaly_scores(t[:, :, :n_trusted], t[:, :, n_trusted:], labels[:n_trusted].numpy())
    result = {
        "auroc": twin.aurocs(scores, task["test_is_anomalous"]),
        "seconds": {"total": time.perf_counter() - started, "chain_with_traces": chain_seconds,
                    "traces": trace_seconds[0], "sampling_steps": chain_seconds - trace_seconds[0]},
        "constant_test_fraction": twin.constant_fraction(t[:, :, n_trusted:]),
        "settings": {k: getattr(args, k) for k in ("model", "task", "seed", "draws", "burn_in", "thinning",
                                                    "lr", "n_beta", "gamma", "batch_size",
                                                    "trace_batch_size", "threads")},
        "devinterp": devinterp.__version__ if hasattr(devinterp, "__version__") else "2.0.1",
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
