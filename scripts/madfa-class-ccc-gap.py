#!/usr/bin/env python3
"""Why vigil's Class CCC AUROC sits below the PyTorch twin's (BadNets, reference settings, 5 seeds).

    nice -n 19 python3 scripts/madfa-class-ccc-gap.py            # trace files only, about 1 min
    nice -n 19 python3 scripts/madfa-class-ccc-gap.py --torch    # + checks of vigil's chain state, about 3 min

Reads, never writes runs/:
  runs/madfa/badnets-reference-engine2/seed-K/traces.npz           vigil's traces (K = 0..4)
  runs/madfa/badnets-reference-torch/seed-K.npz                    the twin's traces
and with --torch also
  runs/madfa/badnets-reference-engine2/seed-K/resume/chain-0/      vigil's last chain state (w_300, V)
  runs/madfa/badnets-reference-linearised/seed-K/resume/chain-0/   w_t - w* at all 250 draws of the
                                                                   same chain (linearised row, same seed)
  runs/badnets/model.safetensors, the task.npz                     w*, data (PyTorch, forward/backward only)

Prints the numbers quoted in results/madfa-small-cnn/class-ccc-gap/analysis.md and writes them as JSON
(--out). It runs no chain and trains nothing: the --torch part takes a few dozen forward/backward
passes at saved weights. devinterp's traces were never saved (bench/peer/madfa_devinterp.py prints
AUROCs only), so only its AUROCs enter (the permutation test).
"""

import argparse
import itertools
import json
import os
import sys

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
VIGIL = "runs/madfa/badnets-reference-engine2/seed-{k}/traces.npz"
TWIN = "runs/madfa/badnets-reference-torch/seed-{k}.npz"
SEEDS = range(5)
EPS = 1e-8
DEVINTERP_CLASS_CCC = "results/madfa-small-cnn/badnets-reference-devinterp/summary.json"


# ------------------------------------------------------------------------------------------------
# Scores (as bench/peer/madfa_twin.py and crates/vigil-core/src/madfa/scores.rs)


def load(which, k):
    """trusted [n, draws], test [n, draws] in f64, trusted labels, anomaly flags."""
    with np.load(os.path.join(REPO, (VIGIL if which == "vigil" else TWIN).format(k=k))) as z:
        return (z["trusted"][0].astype(np.float64).T, z["test"][0].astype(np.float64).T,
                z["trusted_labels"].copy(), z["test_is_anomalous"].astype(bool))


def standardize(x):
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + EPS)


def pearson(x, r):
    return standardize(x) @ standardize(r).T / x.shape[1]


def ccc(x, r):
    mx, mr = x.mean(1), r.mean(1)
    cov = (x - mx[:, None]) @ (r - mr[:, None]).T / x.shape[1]
    return 2 * cov / (x.var(1)[:, None] + r.var(1)[None, :] + (mx[:, None] - mr[None, :]) ** 2 + EPS)


def scale_factor(x, r):
    """A in CCC = rho * A: 2 sd_x sd_r / (var_x + var_r + (mu_x - mu_r)^2) (levels and spreads only)."""
    mx, sx, mr, sr = x.mean(1), x.std(1), r.mean(1), r.std(1)
    return 2 * sx[:, None] * sr[None, :] / (sx[:, None] ** 2 + sr[None, :] ** 2 + (mx[:, None] - mr[None, :]) ** 2 + EPS)


def class_max(m, labels):
    return np.stack([m[:, labels == c].mean(1) for c in np.unique(labels)], 1).max(1)


def auroc(flags, benign):
    """AUROC with anomalies positive, the anomaly score being minus the benign score."""
    return float(roc_auc_score(flags.astype(int), -benign))


def auroc_sides(anomalous_benign, clean_benign):
    y = np.r_[np.ones(len(anomalous_benign)), np.zeros(len(clean_benign))]
    return float(roc_auc_score(y, -np.r_[anomalous_benign, clean_benign]))


def acf(x, lag):
    """Median over rows of the lag autocorrelation (non-constant rows)."""
    x = x - x.mean(1, keepdims=True)
    v = (x * x).mean(1)
    ok = v > 0
    return float(np.median((x[ok, :-lag] * x[ok, lag:]).mean(1) / v[ok]))


def ar1(p):
    p = p - p.mean()
    return float((p[1:] * p[:-1]).sum() / (p[:-1] ** 2).sum())


def fmt(values, digits=4):
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values) + "]"


def permutation_p(low, high):
    """One-sided exact permutation p of mean(high) - mean(low) >= observed."""
    pooled = np.array(list(low) + list(high))
    observed = np.mean(high) - np.mean(low)
    hits = total = 0
    for pick in itertools.combinations(range(len(pooled)), len(low)):
        mask = np.zeros(len(pooled), bool)
        mask[list(pick)] = True
        total += 1
        hits += pooled[~mask].mean() - pooled[mask].mean() >= observed - 1e-12
    return hits / total


# ------------------------------------------------------------------------------------------------
# Part 1: trace files


def trace_analysis(out):
    data = {(w, k): load(w, k) for w in ("vigil", "twin") for k in SEEDS}
    r0, x0, lab, a = data["vigil", 0]
    same = all((data[key][2] == lab).all() and (data[key][3] == a).all() for key in data)
    mv = np.concatenate([r0, x0]).mean(1)
    mt = np.concatenate(data["twin", 0][:2]).mean(1)
    out["same_samples"] = {"labels_and_flags_equal": bool(same),
                           "corr_log_mean_level_seed0": float(np.corrcoef(np.log(mv + 1e-12), np.log(mt + 1e-12))[0, 1])}
    print(f"[1] same samples in both files: labels and flags equal {same}; per-sample log mean level, "
          f"vigil vs twin seed 0: r = {out['same_samples']['corr_log_mean_level_seed0']:.3f}")
    groups = {"trusted": None, "clean": ~a, "anomalous": a}

    # Per-chain trace statistics.
    print("\n[2] per chain: median over samples of mean level and sd over draws; constant and zero fractions")
    stats = {}
    for (w, k), (r, x, _, _) in data.items():
        row = {}
        for g, m in groups.items():
            y = r if m is None else x[m]
            row[g] = {"median_level": float(np.median(y.mean(1))), "median_sd": float(np.median(y.std(1))),
                      "constant": float(np.mean(y.std(1) == 0)), "zero": float(np.mean(y == 0))}
        stats[f"{w}-{k}"] = row
    for g in groups:
        for key in ("median_level", "median_sd", "constant", "zero"):
            v = [stats[f"vigil-{k}"][g][key] for k in SEEDS]
            t = [stats[f"twin-{k}"][g][key] for k in SEEDS]
            print(f"    {g:9s} {key:12s} vigil {fmt(v, 4) if key in ('constant', 'zero') else fmt(v, 10)}")
            print(f"    {'':9s} {'':12s} twin  {fmt(t, 4) if key in ('constant', 'zero') else fmt(t, 10)}")
    out["chain_stats"] = stats

    # Pooled per-sample level ratio by level bin (samples matched by index).
    print("\n[3] per-sample levels, seeds pooled (mean over the 5 chains of each side), log(vigil/twin) by level bin")
    lv = {w: np.mean([np.concatenate(data[w, k][:2]).mean(1) for k in SEEDS], 0) for w in ("vigil", "twin")}
    sv = {w: np.mean([np.concatenate(data[w, k][:2]).std(1) for k in SEEDS], 0) for w in ("vigil", "twin")}
    grp = np.array(["trusted"] * len(lab) + ["clean" if not f else "anomalous" for f in a])
    ref = (lv["vigil"] + lv["twin"]) / 2
    bins = [(0, 1e-7), (1e-7, 1e-5), (1e-5, 1e-3), (1e-3, np.inf)]
    out["pooled_level_ratio"] = []
    for g in ("trusted", "clean", "anomalous"):
        for lo, hi in bins:
            m = (grp == g) & (ref >= lo) & (ref < hi)
            if m.sum() < 5:
                continue
            ll = np.log((lv["vigil"][m] + 1e-12) / (lv["twin"][m] + 1e-12))
            ls = np.log((sv["vigil"][m] + 1e-12) / (sv["twin"][m] + 1e-12))
            item = {"group": g, "bin": [lo, hi], "n": int(m.sum()), "mean_log_level_ratio": float(ll.mean()),
                    "mean_log_sd_ratio": float(ls.mean())}
            out["pooled_level_ratio"].append(item)
            print(f"    {g:9s} level [{lo:g}, {hi:g}) n={m.sum():4d}  log level ratio {ll.mean():+.3f}  log sd ratio {ls.mean():+.3f}")

    # Scores, AUROC, where the AUROC is lost.
    print("\n[4] Class CCC AUROC and where it is lost (non-constant anomalies ranked above clean samples)")
    benign, parts = {}, {}
    out["auroc"] = {}
    for (w, k), (r, x, lab_, a_) in data.items():
        c = ccc(x, r)
        cc = class_max(c, lab_)
        benign[w, k] = cc
        parts[w, k] = (pearson(x, r), scale_factor(x, r))
        const = x[a_].std(1) == 0
        ca, cn = cc[a_], cc[~a_]
        bad = (ca[:, None] > cn[None, :]) + 0.5 * (ca[:, None] == cn[None, :])
        n = bad.size
        out["auroc"][f"{w}-{k}"] = {
            "class_ccc": auroc(a_, cc), "clc": auroc(a_, class_max(parts[w, k][0], lab_)),
            "mean_ccc": auroc(a_, c.mean(1)), "mean_corr": auroc(a_, parts[w, k][0].mean(1)),
            "loss_from_constant_anomalies": float(bad[const].sum() / n),
            "loss_from_nonconstant_anomalies": float(bad[~const].sum() / n),
            "anomalies_class_ccc_above_1e-3": int((ca > 1e-3).sum()),
            "anomalies_class_ccc_above_1e-2": int((ca > 1e-2).sum()),
        }
    for w in ("vigil", "twin"):
        rows = [out["auroc"][f"{w}-{k}"] for k in SEEDS]
        print(f"    {w:5s} Class CCC {fmt([q['class_ccc'] for q in rows])}  mean {np.mean([q['class_ccc'] for q in rows]):.4f}")
        print(f"          1-AUROC from constant anomalies {fmt([q['loss_from_constant_anomalies'] for q in rows])}, "
              f"from non-constant {fmt([q['loss_from_nonconstant_anomalies'] for q in rows])}")
        print(f"          anomalies with Class CCC > 1e-3: {[q['anomalies_class_ccc_above_1e-3'] for q in rows]}, "
              f"> 1e-2: {[q['anomalies_class_ccc_above_1e-2'] for q in rows]}")

    # Which side carries the gap: anomalous scores of one tool against clean scores of the other.
    print("\n[5] cross-pairing (mean over the 25 chain pairs): anomalous scores from rows, clean scores from columns")
    cross = {}
    for wa in ("vigil", "twin"):
        for wc in ("vigil", "twin"):
            cross[f"anomalous-{wa}/clean-{wc}"] = float(np.mean(
                [auroc_sides(benign[wa, k][a], benign[wc, j][~a]) for k in SEEDS for j in SEEDS]))
    out["cross_pairing"] = cross
    print(f"    anomalous vigil: clean vigil {cross['anomalous-vigil/clean-vigil']:.4f}, clean twin {cross['anomalous-vigil/clean-twin']:.4f}")
    print(f"    anomalous twin : clean vigil {cross['anomalous-twin/clean-vigil']:.4f}, clean twin {cross['anomalous-twin/clean-twin']:.4f}")

    # CCC = rho * A: swap the parts between the two tools' chains of the same seed number.
    print("\n[6] CCC = rho x A (A from levels and spreads only); parts swapped between vigil and twin chain K")
    swaps = {"rho_vigil_A_vigil": [], "rho_vigil_A_twin": [], "rho_twin_A_vigil": [], "rho_twin_A_twin": []}
    for k in SEEDS:
        for pw in ("vigil", "twin"):
            for aw in ("vigil", "twin"):
                swaps[f"rho_{pw}_A_{aw}"].append(auroc(a, class_max(parts[pw, k][0] * parts[aw, k][1], lab)))
    out["rho_A_swap"] = swaps
    for key, v in swaps.items():
        print(f"    {key:18s} {fmt(v)} mean {np.mean(v):.4f}")

    # Rescale each chain's anomalous traces to the pooled anomalous level (or sd): removes the
    # chain-level anomalous scale; the correlation structure stays.
    print("\n[7] anomalous traces rescaled per chain to the pooled mean log sd / log level of the 10 chains")
    out["anomalous_rescaled"] = {}
    for stat in ("sd", "level"):
        fn = (lambda y: np.log(y.std(1)[y.std(1) > 0]).mean()) if stat == "sd" else \
             (lambda y: np.log(y.mean(1)[y.mean(1) > 0]).mean())
        vals = {key: fn(data[key][1][a]) for key in data}
        pooled = np.mean(list(vals.values()))
        for w in ("vigil", "twin"):
            res = []
            for k in SEEDS:
                r, x, _, _ = data[w, k]
                y = x.copy()
                y[a] *= np.exp(pooled - vals[w, k])
                res.append(auroc(a, class_max(ccc(y, r), lab)))
            out["anomalous_rescaled"][f"{stat}-{w}"] = res
            print(f"    by {stat:5s} {w:5s} {fmt(res)} mean {np.mean(res):.4f}")
    print("    anomalous traces x f in both tools (sensitivity of Class CCC to the anomalous scale):")
    out["anomalous_factor"] = {}
    for w in ("vigil", "twin"):
        row = {}
        for f in (0.5, 0.8, 1.0, 1.25, 2.0):
            res = []
            for k in SEEDS:
                r, x, _, _ = data[w, k]
                y = x.copy()
                y[a] *= f
                res.append(auroc(a, class_max(ccc(y, r), lab)))
            row[str(f)] = float(np.mean(res))
        out["anomalous_factor"][w] = row
        print(f"    {w:5s} " + "  ".join(f"x{f}: {v:.4f}" for f, v in row.items()))

    # Chain structure: how strongly the anomalous traces move together and with the trusted ones.
    print("\n[8] chain structure per chain (and Spearman with Class CCC AUROC over all 10 chains)")
    feats = {}
    for (w, k), (r, x, lab_, a_) in data.items():
        xa = x[a_]
        ok = (xa > 0).mean(1) > 0.9
        la = np.log(np.maximum(xa[ok], 1e-9))
        la = la - la.mean(1, keepdims=True)
        common = la.mean(0)
        z = la / la.std(1, keepdims=True)
        s = np.linalg.svd(z, compute_uv=False) ** 2
        p = parts[w, k][0][a_][xa.std(1) > 0]
        feats[f"{w}-{k}"] = {
            "anomalous_pc1_share": float(s[0] / s.sum()),
            "mean_abs_rho_anomalous_trusted": float(np.abs(p).mean()),
            "trusted_acf_lag20": acf(r, 20),
            "anomalous_common_mode_sd": float(common.std()),
            "anomalous_common_mode_ar1": ar1(common),
            "anomalous_constant_fraction": float(np.mean(xa.std(1) == 0)),
        }
    out["chain_structure"] = feats
    au = np.array([out["auroc"][f"{w}-{k}"]["class_ccc"] for w in ("vigil", "twin") for k in SEEDS])
    out["chain_structure_spearman_with_auroc"] = {}
    for key in feats["vigil-0"]:
        v = np.array([feats[f"{w}-{k}"][key] for w in ("vigil", "twin") for k in SEEDS])
        rho = float(spearmanr(v, au)[0])
        out["chain_structure_spearman_with_auroc"][key] = rho
        print(f"    {key:32s} vigil {fmt(v[:5], 3)} twin {fmt(v[5:], 3)}  Spearman {rho:+.2f}")

    # Is the AUROC gap beyond chance? Exact permutation tests over chains.
    vig = [out["auroc"][f"vigil-{k}"]["class_ccc"] for k in SEEDS]
    twi = [out["auroc"][f"twin-{k}"]["class_ccc"] for k in SEEDS]
    tests = {"vigil<twin": permutation_p(vig, twi)}
    path = os.path.join(REPO, DEVINTERP_CLASS_CCC)
    if os.path.exists(path):
        with open(path) as f:
            dev = json.load(f)["auroc"]["class_ccc"]["values"]
        tests["vigil<devinterp"] = permutation_p(vig, dev)
        tests["vigil<twin+devinterp"] = permutation_p(vig, twi + dev)
        tests["twin<devinterp"] = permutation_p(twi, dev)
    out["permutation_p_one_sided"] = tests
    print("\n[9] exact permutation p (one-sided, chains exchangeable): " + ", ".join(f"{k} {v:.4f}" for k, v in tests.items()))
    return data


# ------------------------------------------------------------------------------------------------
# Part 2 (--torch): vigil's chain against the sampler's law, from its saved state


def torch_analysis(out, n_batches, n_random):
    import torch
    import torch.nn.functional as F
    from safetensors import safe_open
    from safetensors.numpy import load_file

    sys.path.insert(0, os.path.join(REPO, "bench", "peer"))
    import madfa_twin as twin

    torch.set_num_threads(1)
    model, spec = twin.load_model(os.path.join(REPO, "runs/badnets/model.safetensors"))
    task = twin.load_task(os.path.join(REPO, "runs/madfa/badnets-reference-engine2/seed-0/task.npz"), spec)
    net = model.network
    names = [n for n, _ in net.named_parameters()]
    params = list(net.parameters())
    w_star = {n: p.detach().clone() for n, p in zip(names, params)}
    transposed = ("fc1.weight", "fc2.weight")  # vigil (burn) stores Linear weights as [in, out]

    def flat(tensors):
        return np.concatenate([(t.T if n in transposed else t).detach().numpy().ravel()
                               for n, t in zip(names, tensors)]).astype(np.float64)

    def set_weights(state):
        net.load_state_dict({n: torch.from_numpy(state[n]) for n in names})

    images = torch.cat([task["trusted"], task["test"]])
    labels = twin.predict(model, images, 128)
    anomalous = torch.from_numpy(task["test_is_anomalous"])

    # (a) vigil's trace pass against PyTorch's at the same weights (the chain's last draw).
    print("\n[10] vigil's last traced draw against PyTorch's trace pass at vigil's saved w_300")
    res = []
    for k in SEEDS:
        set_weights(load_file(os.path.join(REPO, f"runs/madfa/badnets-reference-engine2/seed-{k}/resume/chain-0/model.safetensors")))
        t = torch.empty(len(images))
        twin.trace_pass(model, images, labels, 128, "reference", t)
        t = t.numpy().astype(np.float64)
        with np.load(os.path.join(REPO, VIGIL.format(k=k))) as z:
            v = np.concatenate([z["trusted"][0, -1], z["test"][0, -1]]).astype(np.float64)
        rel = np.abs(v - t) / np.maximum(np.abs(t), 1e-7)
        item = {"bit_identical": float(np.mean(v == t)), "max_abs": float(np.abs(v - t).max()),
                "rel_99pct": float(np.quantile(rel, 0.99)), "zero_pattern_agrees": float(np.mean((v == 0) == (t == 0)))}
        res.append(item)
        print(f"    seed {k}: bit-identical {item['bit_identical']:.3f}, max |diff| {item['max_abs']:.1e}, "
              f"99% rel {item['rel_99pct']:.1e}, zero pattern agrees {item['zero_pattern_agrees']:.4f}")
    out["trace_pass_vs_torch"] = res
    set_weights({n: w.numpy() for n, w in w_star.items()})

    # (b) V and drift against PyTorch's gradients at vigil's w_300.
    print(f"\n[11] RMSprop V of vigil's chain against PyTorch's E[g^2] at the same w_300 ({n_batches} minibatches)")
    X, Y = task["sampling"], task["sampling_labels"]
    out["v_vs_torch"] = {}
    for k in SEEDS:
        base = os.path.join(REPO, f"runs/madfa/badnets-reference-engine2/seed-{k}/resume/chain-0/")
        set_weights(load_file(base + "model.safetensors"))
        V = load_file(base + "rmsprop.safetensors")
        gen = torch.Generator().manual_seed(100 + k)
        sq = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        net.train()
        for _ in range(n_batches):
            idx = torch.randperm(len(X), generator=gen)[:256]
            grads = torch.autograd.grad(F.cross_entropy(model(X[idx]), Y[idx]), params)
            for s, g in zip(sq, grads):
                s += g.double() ** 2 / n_batches
        row = {}
        for n, s, p in zip(names, sq, params):
            v = torch.from_numpy(V[n]).double()
            v = v.view(p.shape[1], p.shape[0]).T if n in transposed else v.view(p.shape)
            v = v / (1 - 0.99 ** 300)
            row[n] = {"ratio": float(v.sum() / s.sum()),
                      "log_corr": float(np.corrcoef(np.log(v.flatten().numpy() + 1e-20), np.log(s.flatten().numpy() + 1e-20))[0, 1])}
        out["v_vs_torch"][str(k)] = row
        print(f"    seed {k}: " + " | ".join(f"{n} {q['ratio']:.2f}/{q['log_corr']:.2f}" for n, q in row.items()))
    set_weights({n: w.numpy() for n, w in w_star.items()})

    # Step-1 drift norm: vigil's diagnostics against PyTorch's minibatch gradients at w* (V = 0.01 g^2
    # after one step, so G = 1 / (0.1 + 0.1 |g|)).
    net.train()
    gen = torch.Generator().manual_seed(7)
    torch_drift = []
    for _ in range(n_batches):
        idx = torch.randperm(len(X), generator=gen)[:256]
        grads = torch.autograd.grad(F.cross_entropy(model(X[idx]), Y[idx]), params)
        torch_drift.append(float(torch.sqrt(sum(((0.5e-6 * 100 * g / (0.1 + 0.1 * g.abs())) ** 2).sum() for g in grads))))
    vigil_drift = []
    for k in SEEDS:
        with open(os.path.join(REPO, f"runs/madfa/badnets-reference-engine2/seed-{k}/diagnostics.json")) as f:
            vigil_drift.append(json.load(f)[0]["drift_norm"][0])
    out["step1_drift"] = {"vigil": vigil_drift, "torch_min": min(torch_drift), "torch_max": max(torch_drift),
                          "torch_mean": float(np.mean(torch_drift))}
    print(f"    step-1 drift norm: vigil {fmt(vigil_drift, 6)}; PyTorch minibatches at w*: {min(torch_drift):.2e}-{max(torch_drift):.2e}")

    # Spread of w_300 - w* per tensor against the stationary value sqrt(1e-4 / (1 - 0.0025 G)) ~ 0.0101.
    out["w300_rms"] = {}
    for k in SEEDS:
        st = load_file(os.path.join(REPO, f"runs/madfa/badnets-reference-engine2/seed-{k}/resume/chain-0/model.safetensors"))
        out["w300_rms"][str(k)] = {n: float(np.sqrt(((st[n] - w_star[n].numpy()).astype(np.float64) ** 2).mean())) for n in names}
    print("    rms of w_300 - w* per tensor (theory 0.0101): " + "; ".join(
        f"{n} {min(out['w300_rms'][str(k)][n] for k in SEEDS):.4f}-{max(out['w300_rms'][str(k)][n] for k in SEEDS):.4f}" for n in names))

    # Directions at w*: the mean sampling-set gradient and the trigger direction (gradient of the
    # mean log-loss of the triggered test samples, precise loss so that no gradient rounds to 0).
    net.train()
    g_bar = flat(torch.autograd.grad(F.cross_entropy(model(X), Y), params))
    model.eval()
    test = task["test"]
    test_labels = labels[len(task["trusted"]):]
    trig = flat(torch.autograd.grad(
        torch.log(twin.precise_cross_entropy(model(test[anomalous]), test_labels[anomalous])).mean(), params))
    trig_norm = float(np.linalg.norm(trig))
    u_trig, u_bar = trig / trig_norm, g_bar / np.linalg.norm(g_bar)

    def curvature(u):
        vec, start = [], 0
        for n, p in zip(names, params):
            piece = torch.from_numpy(u[start:start + p.numel()].astype(np.float32))
            vec.append(piece.view(p.shape[1], p.shape[0]).T if n in transposed else piece.view(p.shape))
            start += p.numel()
        net.train()
        g = torch.autograd.grad(F.cross_entropy(model(X), Y), params, create_graph=True)
        hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, vec)), params)
        return float(sum((a * b).sum() for a, b in zip(hv, vec)))

    lam = curvature(u_trig)
    out["trigger_direction"] = {"grad_norm": trig_norm, "clean_curvature": lam,
                                "cos_with_sampling_gradient": float(u_trig @ u_bar)}
    print(f"\n[12] trigger direction u: |grad mean anomalous log-loss| {trig_norm:.1f}; clean-loss curvature "
          f"u'Hu {lam:.2f} (restoring factor 1 + n_beta/gamma * lambda = {1 + 0.01 * lam:.3f}); cos(u, g_bar) {u_trig @ u_bar:+.3f}")

    # (c) vigil's chain path (w_t - w*, 250 draws), against the law of the update.
    print(f"\n[13] vigil's path w_t - w* (linearised row's resume state = same chain as engine2), {n_random} random unit directions as the null")
    rng = np.random.default_rng(0)
    out["path"] = {}
    for k in SEEDS:
        base = os.path.join(REPO, f"runs/madfa/badnets-reference-linearised/seed-{k}/resume/chain-0/")
        V = load_file(base + "rmsprop.safetensors")
        G = np.concatenate([1 / (0.1 + np.sqrt(V[n].astype(np.float64))) for n in names]).astype(np.float32)
        with safe_open(base + "traces.safetensors", "numpy") as s:
            D = s.get_tensor("traces").reshape(250, -1)
        Z = (D[1:] - (1 - 0.005 * G) * D[:-1]) / np.sqrt(1e-6 * G)  # noise - drift, standardised
        R = rng.normal(size=(D.shape[1], n_random)).astype(np.float32)
        R /= np.linalg.norm(R, axis=0)
        PR, ZR = (D @ R).astype(np.float64), (Z @ R).astype(np.float64)
        pu = (D @ u_trig.astype(np.float32)).astype(np.float64)
        zu = (Z @ u_trig.astype(np.float32)).astype(np.float64)
        pg = (D @ u_bar.astype(np.float32)).astype(np.float64)
        z64 = Z[:, ::7].astype(np.float64)

        def sum_acf(z, lags=10):
            z = z - z.mean()
            return float(sum((z[l:] * z[:-l]).sum() / (z * z).sum() for l in range(1, lags + 1)))

        sd_r, ar_r = PR.std(0), np.array([ar1(PR[:, i]) for i in range(n_random)])
        sa_r = np.array([sum_acf(ZR[:, i]) for i in range(n_random)])
        item = {
            "noise_var": float(z64.var()), "noise_excess_kurtosis": float(((z64 - z64.mean()) ** 4).mean() / z64.var() ** 2 - 3),
            "noise_lag1_corr": float((z64[1:] * z64[:-1]).mean() / z64.var()),
            "mean_proj_on_sampling_gradient": float(pg.mean()),
            "random_mean_proj_sd": float(PR.mean(0).std()),
            "random_ar1_mean": float(ar_r.mean()),
            "trigger_sd": float(pu.std()), "trigger_sd_pct": float((sd_r < pu.std()).mean()),
            "random_sd_mean": float(sd_r.mean()), "random_sd_95": float(np.quantile(sd_r, 0.95)),
            "trigger_ar1": ar1(pu), "trigger_ar1_pct": float((ar_r < ar1(pu)).mean()),
            "random_ar1_95": float(np.quantile(ar_r, 0.95)),
            "trigger_increment_var": float(zu.var()), "trigger_increment_sum_acf10": sum_acf(zu),
            "trigger_increment_sum_acf10_pct": float((sa_r < sum_acf(zu)).mean()),
            "random_increment_sum_acf10_95": float(np.quantile(sa_r, 0.95)),
            "predicted_common_mode_sd": trig_norm * float(pu.std()),
            "law_ar1_along_trigger": float(1 - 0.005 * float((u_trig ** 2 * G).sum()) * (1 + 0.01 * lam)),
        }
        out["path"][str(k)] = item
        print(f"    seed {k}: noise var {item['noise_var']:.4f} kurt {item['noise_excess_kurtosis']:+.4f} lag-1 {item['noise_lag1_corr']:+.4f} | "
              f"mean proj on g_bar {item['mean_proj_on_sampling_gradient']:+.4f} (random sd {item['random_mean_proj_sd']:.4f}) | "
              f"random AR1 {item['random_ar1_mean']:.3f}")
        print(f"            trigger dir: sd {item['trigger_sd']:.4f} (pct {100 * item['trigger_sd_pct']:.0f}%, random mean {item['random_sd_mean']:.4f}, 95% {item['random_sd_95']:.4f}), "
              f"AR1 {item['trigger_ar1']:.3f} (pct {100 * item['trigger_ar1_pct']:.0f}%, 95% {item['random_ar1_95']:.3f}), "
              f"increments var {item['trigger_increment_var']:.2f} sum-ACF(1..10) {item['trigger_increment_sum_acf10']:+.2f} "
              f"(pct {100 * item['trigger_increment_sum_acf10_pct']:.0f}%), predicted common-mode sd {item['predicted_common_mode_sd']:.3f}, "
              f"law AR1 along u {item['law_ar1_along_trigger']:.3f}")
        if k == 2:
            # Structured null directions inside fc1.weight (burn layout [in 3136, out 128]): rank-1
            # a x b, per-input-row sums, per-output-column sums; and the per-coordinate autocorrelation.
            o = sum(p.numel() for p in params[:4])
            zf = Z[:, o:o + 3136 * 128]
            zc = zf - zf.mean(0)
            v = (zc * zc).mean(0)
            coord_acf = [float(((zc[l:] * zc[:-l]).mean(0) / v).mean()) for l in (1, 2, 5, 10)]
            zm = zf.reshape(249, 3136, 128)
            A = rng.normal(size=(3136, 30)).astype(np.float32)
            B = rng.normal(size=(128, 30)).astype(np.float32)
            A /= np.linalg.norm(A, axis=0)
            B /= np.linalg.norm(B, axis=0)
            rank1 = (np.tensordot(zm, A, axes=([1], [0])) * B[None]).sum(1).astype(np.float64)  # [249, 30]
            rows = (zm.sum(2)[:, :200] / np.sqrt(128)).astype(np.float64)
            cols = (zm.sum(1) / np.sqrt(3136)).astype(np.float64)
            col_acf = np.array([sum_acf(cols[:, i]) for i in range(cols.shape[1])])
            top = int(col_acf.argmax())
            e = np.zeros(D.shape[1])
            e[o + np.arange(3136) * 128 + top] = 1 / np.sqrt(3136)
            pc = (D @ e.astype(np.float32)).astype(np.float64)
            structured = {"per_coordinate_acf_lags_1_2_5_10": coord_acf,
                          "top_column": top, "top_column_cos_with_trigger": float(e @ u_trig),
                          "top_column_curvature": curvature(e), "top_column_path_ar1": ar1(pc),
                          "top_column_path_sd": float(pc.std()),
                          "rank1_sum_acf10_max": max(sum_acf(rank1[:, i]) for i in range(rank1.shape[1])),
                          "row_sum_acf10_max": max(sum_acf(rows[:, i]) for i in range(rows.shape[1])),
                          "col_sum_acf10_max": max(sum_acf(cols[:, i]) for i in range(cols.shape[1])),
                          "random_sum_acf10_max": float(sa_r.max())}
            out["path_structured_null_seed2"] = structured
            print(f"            seed 2, fc1.weight increments: per-coordinate ACF at lags 1,2,5,10 {fmt(coord_acf, 4)} (-1/249 = -0.0040 if independent); "
                  f"max sum-ACF(1..10): 30 rank-1 {structured['rank1_sum_acf10_max']:+.2f}, 200 row sums {structured['row_sum_acf10_max']:+.2f}, "
                  f"128 column sums {structured['col_sum_acf10_max']:+.2f}, {n_random} random {structured['random_sum_acf10_max']:+.2f}")
            print(f"            top column (hidden unit {top}): path AR1 {structured['top_column_path_ar1']:.3f}, sd {structured['top_column_path_sd']:.4f}, "
                  f"cos with u {structured['top_column_cos_with_trigger']:+.3f}, clean-loss curvature {structured['top_column_curvature']:.2f}")
        del D, Z


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch", action="store_true", help="also check vigil's saved chain state with PyTorch")
    ap.add_argument("--batches", type=int, default=32, help="minibatches for E[g^2] (--torch)")
    ap.add_argument("--random-directions", type=int, default=100, help="null directions for the path (--torch)")
    ap.add_argument("--out", default="results/madfa-small-cnn/class-ccc-gap/numbers.json")
    args = ap.parse_args()
    out = {}
    trace_analysis(out)
    if args.torch:
        torch_analysis(out, args.batches, args.random_directions)
    path = os.path.join(REPO, args.out)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
