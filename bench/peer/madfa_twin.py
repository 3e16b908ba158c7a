#!/usr/bin/env python3
"""PyTorch twin of `vigil sample` + `vigil score` (MAD-FA, SPEC.md section 1).

Same localized SGLD sampler, the same per-sample loss traces and the same four scores as the
Rust tool, written plainly in PyTorch so the two can be compared for speed and fidelity
(bench/peer/README.md). It does not share random streams with vigil: minibatch order and noise
differ, so traces agree in distribution, not bit for bit. The scores of a given trace file do
agree exactly (`--score-only`).

Sampler (RMSprop-preconditioned SGLD localized at w*), one step on a minibatch B of the
sampling set (ground-truth labels; the loader is cycled and reshuffled each pass, the last
partial batch kept, as DataLoader(shuffle=True)):

    g = grad of the MEAN cross-entropy over B at w        (model in train mode)
    V = a V + (1 - a) g^2                                 (a = 0.99, V = 0 at the start)
    G = 1 / (eps + sqrt(V))                               (eps = 0.1; G = 1 with --sampler plain)
    w <- w - (lr/2) G (n_beta g + gamma (w - w*)) + sqrt(lr) sqrt(G) N(0, I)

A chain takes burn_in + draws * thinning steps; after step s (1-based) it records a draw when
s > burn_in and (s - burn_in) % thinning == 0. Burn-in steps are not traced. A draw is the
per-sample cross-entropy (eval mode, no grad) of every trusted and test sample against the
model's own argmax prediction at w*. Chains run one after another, each from w* (parameters
and BatchNorm buffers) with V = 0.

BatchNorm: `--bn reference` steps in train mode (batch statistics, running stats updated with
momentum 0.1, so traces use drifted running stats); `--bn frozen` steps with batch statistics
but leaves the running stats at w*'s (track_running_stats switched off while stepping).

Scores (float64, as vigil's scores.rs and the reference's analyze.py): chains stacked along
the draws; z = (l - mean) / (std + 1e-8) (population std); Pearson = z_test @ z_trusted.T / T;
CCC = 2 cov / (var_x + var_y + (mu_x - mu_y)^2 + 1e-8). Mean Corr / Mean CCC average over the
trusted set; CLC / Class CCC take the class-mean (classes = trusted_labels) and the maximum
over classes. Anomaly score = minus these; AUROC with anomalous = 1.

Command lines of the comparison (same task, same settings, 1 chain, 2 threads):

    vigil sample --record runs/badnets --out runs/badnets-madfa-s0 --draws 250 --burn-in 50 \\
        --seed 0 --loss reference --json    # the twin records reference or precise losses only
    python3 bench/peer/madfa_twin.py --model runs/badnets/model.safetensors \\
        --task runs/badnets-madfa-s0/task.npz --out runs/badnets-madfa-s0/torch-traces.npz \\
        --draws 250 --burn-in 50 --seed 0 --threads 2
    # scores of vigil's own traces, to check against `vigil score --json`:
    vigil score runs/badnets-madfa-s0/traces.npz --json
    python3 bench/peer/madfa_twin.py --score-only runs/badnets-madfa-s0/traces.npz
    # unit checks of the update rule, the precise loss and the scores (no data needed):
    python3 bench/peer/madfa_twin.py --self-test

Prints ONE JSON object on stdout:
  {"auroc": {"mean_corr", "clc", "mean_ccc", "class_ccc"}, "seconds": {"total",
   "sampling_steps", "traces", "scores"}, "settings": {...}, "torch": version, "threads": n,
   "diagnostics": {...}}
Progress and warnings go to stderr. Needs torch, numpy, safetensors and scikit-learn; it
imports the model classes from tests/fixtures/torch/reference_models.py.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures", "torch"))
import reference_models  # noqa: E402

EPSILON = 1e-8
SCORE_NAMES = ("mean_corr", "clc", "mean_ccc", "class_ccc")


# --------------------------------------------------------------------------------------------
# Model


class Normalized(nn.Module):
    """`(x - mean) / std` per channel (vigil's Classifier::normalize), then the network."""

    def __init__(self, network, normalization, channels):
        super().__init__()
        self.network = network
        if normalization is None:
            self.mean = self.std = None
        else:
            shape = (1, channels, 1, 1)
            self.register_buffer("mean", torch.tensor(normalization["mean"], dtype=torch.float32).view(shape),
                                 persistent=False)
            self.register_buffer("std", torch.tensor(normalization["std"], dtype=torch.float32).view(shape),
                                 persistent=False)

    def forward(self, x):
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.network(x)


def read_model_spec(path):
    """The `vigil.model_spec` JSON of a vigil checkpoint's safetensors header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    meta = header.get("__metadata__") or {}
    if "vigil.model_spec" not in meta:
        raise SystemExit(f"{path}: no `vigil.model_spec` in the safetensors metadata; "
                         "this script needs a checkpoint written by vigil")
    return json.loads(meta["vigil.model_spec"])


def build_network(spec):
    """The reference_models class for the spec's architecture."""
    arch = spec["architecture"]
    name = arch["name"]
    c, h, w = spec["input_shape"]
    k = len(spec["class_names"])
    if name == "small-cnn":
        return reference_models.SmallCnn(c, k, width=arch["width"], hidden=arch["hidden"], height=h, width_px=w)
    if name == "preact-resnet18":
        return reference_models.PreActResNet18(c, k, width=arch["width"])
    if name == "preact-resnet18-halo":
        return reference_models.PreActResNet18Halo(c, k, width=arch["width"])
    if name == "resnet18":
        return reference_models.ResNet18(c, k, width=arch["width"])
    raise SystemExit(f"unsupported architecture `{name}` (known: small-cnn, preact-resnet18, "
                     "preact-resnet18-halo, resnet18)")


def load_model(path):
    """The checkpoint as a Normalized(network), its weights loaded strictly (vigil does not
    write BatchNorm's `num_batches_tracked` counters: only those may be missing)."""
    from safetensors.torch import load_file

    spec = read_model_spec(path)
    network = build_network(spec)
    state = load_file(path)
    missing, unexpected = network.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"{path}: state dict does not fit {spec['architecture']}: "
                         f"missing {missing}, unexpected {unexpected}")
    model = Normalized(network, spec.get("normalization"), spec["input_shape"][0])
    return model, spec


def batch_norms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# --------------------------------------------------------------------------------------------
# Data


def load_task(path, spec):
    """task.npz written by `vigil sample` (MadTask::save_npz) as tensors and arrays."""
    with np.load(path) as z:
        task = {name: z[name] for name in z.files}
    for name in ("trusted", "sampling", "test"):
        images = task[f"{name}_images"]
        if images.ndim != 4 or list(images.shape[1:]) != list(spec["input_shape"]):
            raise SystemExit(f"{path}: `{name}_images` has shape {images.shape}, the model takes "
                             f"[n, {', '.join(map(str, spec['input_shape']))}]")
        if len(images) == 0:
            raise SystemExit(f"{path}: the {name} set is empty")
    flags = task.get("test_is_anomalous")
    return {
        "trusted": torch.from_numpy(np.ascontiguousarray(task["trusted_images"], dtype=np.float32)),
        "sampling": torch.from_numpy(np.ascontiguousarray(task["sampling_images"], dtype=np.float32)),
        "sampling_labels": torch.from_numpy(task["sampling_labels"].astype(np.int64)),
        "test": torch.from_numpy(np.ascontiguousarray(task["test_images"], dtype=np.float32)),
        "test_is_anomalous": None if flags is None else flags.astype(bool),
    }


def cycled_batches(n, batch_size, generator):
    """Index batches over 0..n forever: a fresh permutation each pass, the last batch of a
    pass shorter when batch_size does not divide n (DataLoader(shuffle=True), cycled)."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]


def chain_seed(seed, chain, stream):
    """A 64-bit seed for (seed, chain, stream), so chains are independent of each other."""
    return int(np.random.SeedSequence([seed, chain, stream]).generate_state(1, dtype=np.uint64)[0])


# --------------------------------------------------------------------------------------------
# Losses


def precise_cross_entropy(logits, labels):
    """log1p(sum_{j != y} exp(z_j - z_y)) = softplus(logsumexp_{j != y}(z_j - z_y)), computed
    stably as max(L, 0) + log1p(exp(-|L|)); stays > 0 where float32 log-softmax rounds to 0."""
    z_y = logits.gather(1, labels.view(-1, 1))
    others = (logits - z_y).masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    lse = torch.logsumexp(others, dim=1)
    return lse.clamp_min(0.0) + torch.log1p(torch.exp(-lse.abs()))


def per_sample_loss(logits, labels, form):
    if form == "precise":
        return precise_cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="none")


# --------------------------------------------------------------------------------------------
# Sampler


def sgld_step_(params, grads, w_star, sq_avg, noises, cfg, norms=None):
    """One localized SGLD update of `params` in place (vigil's LocalizedSgld::update, same
    operation order). `sq_avg` is V per parameter (None entries for plain SGLD); `noises` are
    standard-normal draws shaped like the parameters. With a list `norms`, appends the
    Euclidean norms of the drift, localization and noise terms and |w - w*| after the step
    (vigil's StepNorms)."""
    squared = [0.0, 0.0, 0.0, 0.0]
    half_lr = cfg["lr"] / 2.0
    sqrt_lr = math.sqrt(cfg["lr"])
    with torch.no_grad():
        for p, g, ws, v, noise in zip(params, grads, w_star, sq_avg, noises):
            drift = g * (half_lr * cfg["n_beta"])
            pull = (p - ws) * (half_lr * cfg["gamma"])
            noise = noise * sqrt_lr
            if v is not None:
                a = cfg["rms_alpha"]
                v.mul_(a).addcmul_(g, g, value=1.0 - a)
                gain = (v.sqrt() + cfg["rms_eps"]).reciprocal()
                drift = drift * gain
                pull = pull * gain
                noise = noise * gain.sqrt()
            p.sub_(drift).sub_(pull).add_(noise)
            if norms is not None:
                for i, t in enumerate((drift, pull, noise, p - ws)):
                    squared[i] += float(t.double().pow(2).sum())
    if norms is not None:
        norms.append([math.sqrt(x) for x in squared])


def check_stable(cfg):
    """vigil's SgldConfig::validate: refuse lr >= 4 / (gamma max G), where the localization
    term alone diverges."""
    max_gain = 1.0 / cfg["rms_eps"] if cfg["sampler"] == "rmsprop" else 1.0
    if cfg["gamma"] > 0 and cfg["lr"] >= 4.0 / (cfg["gamma"] * max_gain):
        raise SystemExit(f"unstable sampler: lr {cfg['lr']:g} >= 4 / (gamma * max G) = "
                         f"{4.0 / (cfg['gamma'] * max_gain):.1e}")


def predict(model, images, batch_size):
    """Argmax predictions in eval mode."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch_size]).argmax(1)
                          for i in range(0, len(images), batch_size)])


def trace_pass(model, images, labels, batch_size, form, out):
    """Per-sample losses of every traced sample into `out` (eval mode, no grad)."""
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            logits = model(images[i:i + batch_size])
            out[i:i + batch_size] = per_sample_loss(logits, labels[i:i + batch_size], form)


def run_chain(model, start_state, task, trace_images, trace_labels, cfg, chain, on_draw=None,
              replay=None):
    """One chain from w*: returns traces [draws, n_traced] float32 and diagnostics. `on_draw`,
    if given, is called with (draw index, params, w_star) at every kept draw. `replay`, if
    given, is called with the step (0-based) and returns that step's minibatch indices and
    standard-normal noises (shaped like the parameters), in place of the chain's own loader and
    generator (bench/peer/madfa_replay.py replays vigil's draws)."""
    model.load_state_dict(start_state)
    params = [p for p in model.parameters() if p.requires_grad]
    w_star = [p.detach().clone() for p in params]
    sq_avg = [torch.zeros_like(p) if cfg["sampler"] == "rmsprop" else None for p in params]
    bns = batch_norms(model)
    for bn in bns:
        bn.track_running_stats = cfg["bn"] == "reference"  # frozen: batch stats, no update
    loader = cycled_batches(len(task["sampling"]), cfg["batch_size"],
                            torch.Generator().manual_seed(chain_seed(cfg["seed"], chain, 0)))
    noise_gen = torch.Generator().manual_seed(chain_seed(cfg["seed"], chain, 1))
    traces = torch.empty(cfg["draws"], len(trace_images), dtype=torch.float32)
    losses, step_s, trace_s = [], 0.0, 0.0
    norms = [] if cfg["step_norms"] else None
    total = cfg["burn_in"] + cfg["draws"] * cfg["thinning"]
    for step in range(1, total + 1):
        t0 = time.perf_counter()
        idx, noises = replay(step - 1) if replay is not None else (next(loader), None)
        model.train()
        loss = F.cross_entropy(model(task["sampling"][idx]), task["sampling_labels"][idx])
        grads = torch.autograd.grad(loss, params)
        if noises is None:
            noises = [torch.randn(p.shape, generator=noise_gen) for p in params]
        sgld_step_(params, grads, w_star, sq_avg, noises, cfg, norms)
        losses.append(loss.item())
        check_diverged(losses, cfg["num_classes"], chain, step)
        step_s += time.perf_counter() - t0
        past = step - cfg["burn_in"]
        if past > 0 and past % cfg["thinning"] == 0:
            t0 = time.perf_counter()
            trace_pass(model, trace_images, trace_labels, cfg["trace_batch_size"], cfg["loss"],
                       traces[past // cfg["thinning"] - 1])
            trace_s += time.perf_counter() - t0
            if on_draw is not None:
                on_draw(past // cfg["thinning"] - 1, params, w_star)
    for bn in bns:
        bn.track_running_stats = True
    diag = chain_diagnostics(chain, losses, norms, params, w_star)
    diag.update(step_seconds=step_s, trace_seconds=trace_s)
    return traces.numpy(), diag


def chain_diagnostics(chain, losses, norms, params, w_star):
    """Summary of a chain (and, with per-step norms, vigil's diagnostics.json fields)."""
    with torch.no_grad():
        distance = math.sqrt(sum(float((p - ws).double().pow(2).sum()) for p, ws in zip(params, w_star)))
    diag = {"chain": chain, "first_loss": losses[0], "last_loss": losses[-1],
            "mean_loss": float(np.mean(losses)), "final_distance": distance}
    if norms is not None:
        columns = list(zip(*norms))
        diag.update(loss=losses, drift_norm=columns[0], localization_norm=columns[1],
                    noise_norm=columns[2], distance=columns[3])
        ratios = sorted(d / n for d, n in zip(columns[0], columns[2]) if n > 0)
        diag["median_drift_to_noise"] = ratios[len(ratios) // 2] if ratios else 0.0
    return diag


def check_diverged(losses, num_classes, chain, step):
    """vigil's guard: stop if the minibatch loss is not finite or exceeds its first value by
    more than 10 ln(classes)."""
    first, last = losses[0], losses[-1]
    if not math.isfinite(last) or last > first + 10.0 * math.log(max(num_classes, 2)):
        raise SystemExit(f"chain {chain} diverged at step {step - 1}: minibatch loss {last} "
                         f"(started at {first:.4f}); lower lr or n_beta, or raise gamma")


def constant_fraction(traces):
    """Fraction of samples whose trace is constant over all chains and draws, [C, D, N]
    (vigil reports it per chain)."""
    if traces.shape[2] == 0:
        return 0.0
    flat = traces.reshape(-1, traces.shape[2])
    return float(np.mean(np.all(flat == flat[:1], axis=0)))


# --------------------------------------------------------------------------------------------
# Scores


def by_sample(traces, burn_in=0):
    """[chains, draws, n] -> [n, chains * (draws - burn_in)] float64, burn-in dropped per chain,
    chains concatenated along the draws."""
    kept = np.asarray(traces)[:, burn_in:, :].astype(np.float64)
    return kept.reshape(-1, kept.shape[2]).T


def standardize(x):
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + EPSILON)


def pearson_matrix(test, trusted):
    return standardize(test) @ standardize(trusted).T / test.shape[1]


def ccc_matrix(test, trusted):
    mt, mr = test.mean(1), trusted.mean(1)
    cov = (test - mt[:, None]) @ (trusted - mr[:, None]).T / test.shape[1]
    denom = test.var(1)[:, None] + trusted.var(1)[None, :] + (mt[:, None] - mr[None, :]) ** 2 + EPSILON
    return 2.0 * cov / denom


def class_max(matrix, trusted_labels):
    """Per row: mean over each trusted class's columns, then the max over classes."""
    labels = np.asarray(trusted_labels)
    means = [matrix[:, labels == c].mean(1) for c in np.unique(labels)]
    return np.max(np.stack(means, 1), axis=1)


def anomaly_scores(trusted, test, trusted_labels, burn_in=0):
    """The four anomaly scores (minus the coupling scores) of every test sample."""
    x, r = by_sample(test, burn_in), by_sample(trusted, burn_in)
    pearson, ccc = pearson_matrix(x, r), ccc_matrix(x, r)
    return {
        "mean_corr": -pearson.mean(1),
        "clc": -class_max(pearson, trusted_labels),
        "mean_ccc": -ccc.mean(1),
        "class_ccc": -class_max(ccc, trusted_labels),
    }


def aurocs(scores, flags):
    """AUROC of every score with anomalous = 1; None when the flags are missing or one-sided."""
    if flags is None or flags.all() or not flags.any():
        return {name: None for name in SCORE_NAMES}
    return {name: float(roc_auc_score(flags.astype(int), scores[name])) for name in SCORE_NAMES}


# --------------------------------------------------------------------------------------------
# Trace file


def save_traces(path, trusted, test, trusted_labels, flags, chains):
    """The pinned trace format (np.savez, uncompressed)."""
    arrays = {
        "trusted": trusted.astype(np.float32),
        "test": test.astype(np.float32),
        "trusted_labels": np.asarray(trusted_labels, dtype=np.int64),
        "chain_indices": np.asarray(chains, dtype=np.int64),
    }
    if flags is not None:
        arrays["test_is_anomalous"] = np.asarray(flags, dtype=bool)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_traces(path):
    """trusted, test, trusted_labels and test_is_anomalous (or None) of a trace file; other
    arrays are ignored."""
    with np.load(path) as z:
        for name in ("trusted", "test", "trusted_labels"):
            if name not in z.files:
                raise SystemExit(f"{path}: no `{name}` array")
        flags = z["test_is_anomalous"].astype(bool) if "test_is_anomalous" in z.files else None
        out = (z["trusted"], z["test"], z["trusted_labels"].astype(np.int64), flags)
    t, s = out[0].shape, out[1].shape
    if len(t) != 3 or len(s) != 3 or t[:2] != s[:2] or len(out[2]) != t[2]:
        raise SystemExit(f"{path}: inconsistent shapes trusted {t}, test {s}, labels {out[2].shape}")
    return out


# --------------------------------------------------------------------------------------------
# Commands


def score_only(args, started):
    trusted, test, labels, flags = load_traces(args.score_only)
    if args.score_burn_in >= trusted.shape[1]:
        raise SystemExit(f"--score-burn-in {args.score_burn_in} leaves no draws")
    t0 = time.perf_counter()
    scores = anomaly_scores(trusted, test, labels, args.score_burn_in)
    result = aurocs(scores, flags)
    score_s = time.perf_counter() - t0
    return {
        "auroc": result,
        "seconds": {"total": time.perf_counter() - started, "scores": score_s},
        "settings": {"traces": args.score_only, "burn_in": args.score_burn_in,
                     "chains": trusted.shape[0], "draws": trusted.shape[1],
                     "n_trusted": trusted.shape[2], "n_test": test.shape[2],
                     "normal": None if flags is None else int((~flags).sum()),
                     "anomalous": None if flags is None else int(flags.sum())},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def sample(args, started):
    torch.manual_seed(args.seed)
    model, spec = load_model(args.model)
    task = load_task(args.task, spec)
    cfg = {k: getattr(args, k) for k in ("lr", "n_beta", "gamma", "sampler", "rms_alpha", "rms_eps",
                                         "batch_size", "trace_batch_size", "draws", "burn_in",
                                         "thinning", "bn", "loss", "seed", "chains", "step_norms")}
    cfg["num_classes"] = len(spec["class_names"])
    check_stable(cfg)
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    n_trusted = len(task["trusted"])
    trace_images = torch.cat([task["trusted"], task["test"]])
    trace_labels = predict(model, trace_images, args.trace_batch_size)
    print(f"{args.chains} chain(s) of {cfg['burn_in'] + cfg['draws'] * cfg['thinning']} steps, "
          f"tracing {n_trusted} trusted + {len(task['test'])} test samples per draw",
          file=sys.stderr)
    all_traces, diags = [], []
    for chain in range(args.chains):
        traces, diag = run_chain(model, start_state, task, trace_images, trace_labels, cfg, chain)
        all_traces.append(traces)
        diags.append(diag)
        print(f"chain {chain}: steps {diag['step_seconds']:.1f}s, traces {diag['trace_seconds']:.1f}s, "
              f"|w-w*| {diag['final_distance']:.3e}", file=sys.stderr)
    stacked = np.stack(all_traces)  # [chains, draws, n]
    trusted, test = stacked[:, :, :n_trusted], stacked[:, :, n_trusted:]
    labels = trace_labels[:n_trusted].numpy().astype(np.int64)
    save_traces(args.out, trusted, test, labels, task["test_is_anomalous"], range(args.chains))
    t0 = time.perf_counter()
    scores = anomaly_scores(trusted, test, labels)
    result = aurocs(scores, task["test_is_anomalous"])
    score_s = time.perf_counter() - t0
    settings = dict(cfg, model=args.model, task=args.task, out=args.out,
                    architecture=spec["architecture"], n_trusted=n_trusted,
                    n_sampling=len(task["sampling"]), n_test=len(task["test"]))
    return {
        "auroc": result,
        "seconds": {"total": time.perf_counter() - started,
                    "sampling_steps": sum(d["step_seconds"] for d in diags),
                    "traces": sum(d["trace_seconds"] for d in diags),
                    "scores": score_s},
        "settings": settings,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "diagnostics": {"chains": diags,
                        "constant_trusted_fraction": constant_fraction(trusted),
                        "constant_test_fraction": constant_fraction(test)},
    }


# --------------------------------------------------------------------------------------------
# Self-test


def self_test():
    """Checks of the update rule, the precise loss, the scores and the loader against
    hand computations in float64. Returns a dict of the largest errors; raises on failure."""
    report = {}
    # (1) Two RMSprop steps and one plain step on a 2-parameter tensor (vigil's sgld.rs test).
    cfg = {"lr": 1e-3, "n_beta": 10.0, "gamma": 100.0, "rms_alpha": 0.9, "rms_eps": 0.1}
    w_star64, w64, v64 = np.array([0.5, -1.0]), np.array([0.6, -1.2]), np.zeros(2)
    p = torch.tensor([0.6, -1.2], dtype=torch.float32)
    ws, v = torch.tensor([0.5, -1.0], dtype=torch.float32), torch.zeros(2)
    gen, err = torch.Generator().manual_seed(7), 0.0
    for grad in ([0.3, -2.0], [0.1, 0.4]):
        g64 = np.array(grad)
        noise = torch.randn(2, generator=gen)
        n64 = noise.double().numpy()
        v64 = 0.9 * v64 + 0.1 * g64 ** 2
        gain = 1.0 / (0.1 + np.sqrt(v64))
        w64 = (w64 - 0.5e-3 * gain * (10.0 * g64 + 100.0 * (w64 - w_star64))
               + np.sqrt(1e-3) * np.sqrt(gain) * n64)
        sgld_step_([p], [torch.tensor(grad, dtype=torch.float32)], [ws], [v], [noise], cfg)
        err = max(err, float(np.abs(p.double().numpy() - w64).max()))
    err_v = float(np.abs(v.double().numpy() - v64).max())
    assert err < 1e-6 and err_v < 1e-7, (err, err_v)
    q = torch.tensor([1.0, 2.0])
    noise = torch.randn(2, generator=gen)
    norms = []
    sgld_step_([q], [torch.tensor([0.5, 0.5])], [torch.zeros(2)], [None], [noise],
               {"lr": 0.01, "n_beta": 2.0, "gamma": 4.0}, norms)
    n64 = noise.double().numpy()
    expected = np.array([1.0, 2.0]) - 0.005 * (2.0 * 0.5 + 4.0 * np.array([1.0, 2.0])) + 0.1 * n64
    err_plain = float(np.abs(q.double().numpy() - expected).max())
    want = [math.sqrt(2) * 0.005, math.hypot(0.02, 0.04), 0.1 * np.linalg.norm(n64), np.linalg.norm(expected)]
    err_norms = float(np.max(np.abs(np.array(norms[0]) - want)))
    assert err_plain < 1e-6 and err_norms < 1e-6, (err_plain, norms, want)
    report["step_norms_max_abs_err"] = err_norms
    report["sgld_rmsprop_max_abs_err"], report["rmsprop_v_max_abs_err"] = err, err_v
    report["sgld_plain_max_abs_err"] = err_plain
    # (2) Precise loss against log1p(sum exp) in float64, and the float32 zero of log-softmax.
    rows = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0], [0.0, 25.0, -3.0], [0.0, -120.0, 40.0]])
    labels = np.array([2, 0, 1, 2])
    logits = torch.tensor(rows, dtype=torch.float32)
    lt = torch.tensor(labels)
    precise = precise_cross_entropy(logits, lt).double().numpy()
    plain = F.cross_entropy(logits, lt, reduction="none")
    exact = np.array([np.log1p(sum(np.exp(r[j] - r[y]) for j in range(3) if j != y))
                      for r, y in zip(rows, labels)])
    rel = float(np.max(np.abs(precise - exact) / exact))
    assert rel < 1e-5, (precise, exact)
    assert plain[2].item() == 0.0 and precise[2] > 1e-12, (plain, precise)
    report["precise_max_rel_err"] = rel
    report["confident_row"] = {"f_cross_entropy_f32": plain[2].item(), "precise": float(precise[2]),
                               "exact_f64": float(exact[2])}
    # (3) Scores: Pearson = np.corrcoef, constant trace -> 0, CCC by its formula, class max.
    rng = np.random.default_rng(0)
    trusted = rng.normal(size=(2, 6, 4)).astype(np.float32)
    test = rng.normal(size=(2, 6, 3)).astype(np.float32)
    test[:, :, 2] = 0.0
    x, r = by_sample(test), by_sample(trusted)
    pear = pearson_matrix(x, r)
    ref = np.corrcoef(np.vstack([x[:2], r]))[:2, 2:]
    err_p = float(np.abs(pear[:2] - ref).max())
    assert err_p < 1e-6 and np.all(pear[2] == 0.0), (pear, ref)
    xi, rj = x[0], r[1]
    ccc01 = 2 * np.mean((xi - xi.mean()) * (rj - rj.mean())) / (xi.var() + rj.var() + (xi.mean() - rj.mean()) ** 2 + EPSILON)
    err_c = abs(ccc_matrix(x, r)[0, 1] - ccc01)
    assert err_c < 1e-12
    s = anomaly_scores(trusted, test, [3, 1, 1, 3])
    clc0 = max(pear[0, [1, 2]].mean(), pear[0, [0, 3]].mean())
    assert abs(-s["clc"][0] - clc0) < 1e-12 and abs(-s["mean_corr"][0] - pear[0].mean()) < 1e-12
    report["pearson_vs_corrcoef_max_abs_err"], report["ccc_abs_err"] = err_p, float(err_c)
    # (4) Loader: each pass is a permutation, the last partial batch kept.
    it = cycled_batches(10, 4, torch.Generator().manual_seed(0))
    passes = [[next(it) for _ in range(3)] for _ in range(2)]
    for batches in passes:
        assert [len(b) for b in batches] == [4, 4, 2]
        assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(passes[0]), torch.cat(passes[1]))
    report["loader"] = "ok"
    # (5) Frozen BatchNorm: batch statistics in train mode, running stats untouched.
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(0.25)
    bn.train()
    bn.track_running_stats = False
    xb = torch.randn(4, 3, 2, 2) * 3 + 1
    out = bn(xb)
    assert torch.all(bn.running_mean == 0.25) and torch.all(bn.running_var == 1.0)
    assert torch.allclose(out.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    bn.track_running_stats = True
    bn.eval()
    assert torch.allclose(bn(xb), (xb - 0.25) / math.sqrt(1 + 1e-5), atol=1e-6)
    report["frozen_bn"] = "ok"
    return report


# --------------------------------------------------------------------------------------------


def peer_arguments(description):
    """The command line the one-chain peers share (madfa_linearised.py, madfa_devinterp.py):
    model, task, seed, the reference sampler settings and schedule, batch sizes, threads."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=250)
    ap.add_argument("--burn-in", type=int, default=50)
    ap.add_argument("--thinning", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--n-beta", type=float, default=100.0)
    ap.add_argument("--gamma", type=float, default=1e4)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--trace-batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    return ap


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--score-only", metavar="TRACES.npz", help="score an existing trace file and exit")
    mode.add_argument("--self-test", action="store_true", help="run the unit checks and exit")
    ap.add_argument("--model", help="vigil checkpoint (.safetensors)")
    ap.add_argument("--task", help="task.npz written by `vigil sample`")
    ap.add_argument("--out", help="trace file to write (.npz)")
    ap.add_argument("--draws", type=int, default=250)
    ap.add_argument("--burn-in", type=int, default=50)
    ap.add_argument("--thinning", type=int, default=1)
    ap.add_argument("--chains", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--n-beta", type=float, default=100.0)
    ap.add_argument("--gamma", type=float, default=1e4)
    ap.add_argument("--sampler", choices=["rmsprop", "plain"], default="rmsprop")
    ap.add_argument("--rms-alpha", type=float, default=0.99)
    ap.add_argument("--rms-eps", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--trace-batch-size", type=int, default=256)
    ap.add_argument("--bn", choices=["reference", "frozen"], default="reference")
    ap.add_argument("--loss", choices=["reference", "precise"], default="reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--step-norms", action="store_true",
                    help="record per-step loss, term norms and |w - w*| in the diagnostics, as "
                         "vigil's diagnostics.json (costs a few reductions per step; off for timing)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--score-burn-in", type=int, default=0,
                    help="with --score-only: draws to drop per chain (as `vigil score --burn-in`)")
    args = ap.parse_args(argv)
    if not (args.score_only or args.self_test):
        if not (args.model and args.task and args.out):
            ap.error("--model, --task and --out are required (or --score-only / --self-test)")
        if args.draws < 2 or args.burn_in < 0 or args.thinning < 1 or args.chains < 1:
            ap.error("need --draws >= 2, --burn-in >= 0, --thinning >= 1, --chains >= 1")
        if args.batch_size < 1 or args.trace_batch_size < 1:
            ap.error("batch sizes must be >= 1")
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    return args


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.self_test:
        result = {"self_test": self_test(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    elif args.score_only:
        result = score_only(args, started)
    else:
        result = sample(args, started)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
