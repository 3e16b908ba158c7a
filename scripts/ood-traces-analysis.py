#!/usr/bin/env python3
"""Why k-NN beats MAD-FA on OOD inputs: per-input analysis of the output of the
`ood_traces` example (scores.csv and traces.npz in one folder).

    cargo run --release -p vigil-core --example ood_traces -- MODEL DIR
    python3 scripts/ood-traces-analysis.py DIR > DIR/analysis.txt

Prints, per OOD set and over all five: AUROC of every score (OOD positive); how each score's
misses (OOD inputs below the ID inputs' 95th percentile) relate to the model's confidence;
AUROC within confidence bins; the rank correlation of MAD-FA with k-NN and with confidence;
and what the traces of ID and OOD inputs look like (level and spread of the log-loss over the
draws, correlation with the trusted class the input couples to most).
"""
import csv
import sys

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

folder = sys.argv[1]
rows = list(csv.DictReader(open(f"{folder}/scores.csv")))
sets = np.array([r["set"] for r in rows])
predicted = np.array([int(r["predicted"]) for r in rows])
columns = [c for c in rows[0] if c not in ("set", "index", "predicted")]
scores = {c: np.array([float(r[c]) for r in rows]) for c in columns}
is_id = sets == "fashion-mnist"
ood_names = [s for s in dict.fromkeys(sets) if s != "fashion-mnist"]
recommended = "madfa-clc_plus_class_ccc"
# MSP's score is the negated max softmax probability (higher = more OOD).
confidence = -scores["msp"]

print(f"inputs: {is_id.sum()} ID, " + ", ".join(f"{s} {np.sum(sets == s)}" for s in ood_names))
print()
print("AUROC per set (OOD positive)")
print(f"{'score':28s}" + "".join(f"{s[:14]:>15s}" for s in ood_names) + f"{'mean':>8s}")
for c in columns:
    values = [roc_auc_score(np.r_[np.zeros(is_id.sum()), np.ones(np.sum(sets == s))],
                            np.r_[scores[c][is_id], scores[c][sets == s]]) for s in ood_names]
    print(f"{c:28s}" + "".join(f"{v:15.3f}" for v in values) + f"{np.mean(values):8.3f}")

print()
print("confidence (max softmax) by set: mean, share above 0.99")
for s in ["fashion-mnist"] + ood_names:
    m = sets == s
    print(f"  {s:16s} {confidence[m].mean():.3f}  {np.mean(confidence[m] > 0.99):.2f}")

print()
print("misses at the ID 95th percentile (share of OOD inputs scored below it), and the mean")
print("confidence of the missed and of the caught OOD inputs")
for c in [recommended, "madfa-clc", "madfa-mean_corr", "knn", "mahalanobis", "msp"]:
    threshold = np.quantile(scores[c][is_id], 0.95)
    ood = ~is_id
    missed = ood & (scores[c] < threshold)
    caught = ood & ~missed
    print(f"  {c:28s} missed {missed.sum() / ood.sum():.2f}  confidence missed "
          f"{confidence[missed].mean():.3f} caught {confidence[caught].mean():.3f}")

print()
print("AUROC (all OOD sets against ID) within confidence bins (bins by ID+OOD quantiles)")
edges = np.quantile(confidence, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
print(f"  {'bin':22s} {'ID':>5s} {'OOD':>5s} " + " ".join(f"{c[:12]:>12s}" for c in
                                                         [recommended, "madfa-clc", "knn", "mahalanobis"]))
for lo, hi in zip(edges[:-1], edges[1:]):
    m = (confidence >= lo) & (confidence <= hi)
    if m.sum() == 0 or is_id[m].all() or (~is_id[m]).all():
        continue
    aurocs = [roc_auc_score(~is_id[m], scores[c][m]) for c in
              [recommended, "madfa-clc", "knn", "mahalanobis"]]
    print(f"  {lo:.4f}-{hi:.4f}       {is_id[m].sum():5d} {(~is_id[m]).sum():5d} " +
          " ".join(f"{a:12.3f}" for a in aurocs))

print()
print("Spearman rank correlations over all inputs (ID and OOD)")
for a, b in [(recommended, "knn"), (recommended, "msp"), ("knn", "msp"), ("madfa-clc", "knn"),
             ("madfa-mean_corr", "knn"), (recommended, "mahalanobis")]:
    print(f"  {a:28s} ~ {b:12s} {spearmanr(scores[a], scores[b])[0]:+.3f}")
print("  within the OOD inputs only:")
for a, b in [(recommended, "knn"), (recommended, "msp"), ("knn", "msp")]:
    print(f"  {a:28s} ~ {b:12s} {spearmanr(scores[a][~is_id], scores[b][~is_id])[0]:+.3f}")

# Traces: the ID test images are the trace file's `test`, the OOD sets follow as anomalous.
npz = np.load(f"{folder}/traces.npz")
trusted, test = npz["trusted"], npz["test"]  # [chains, draws, n]
labels = npz["trusted_labels"]
chains, draws, n = test.shape
assert n == len(rows), (n, len(rows))


def standardised(x):
    """Per chain, each column centred and scaled over the draws; chains stacked."""
    x = x - x.mean(axis=1, keepdims=True)
    x = x / np.maximum(x.std(axis=1, keepdims=True), 1e-12)
    return x.reshape(chains * draws, -1)


level = test.mean(axis=(0, 1))
spread = test.std(axis=1).mean(axis=0)
zt, zx = standardised(trusted), standardised(test)
pearson = zx.T @ zt / (chains * draws)  # [n, n_trusted], per-chain-centred correlation
classes = np.unique(labels)
class_mean = np.stack([pearson[:, labels == k].mean(axis=1) for k in classes], axis=1)
best_class = classes[class_mean.argmax(axis=1)]
print()
print("traces (log-loss over the draws): per set, median level, median spread over the draws,")
print("max class-mean correlation with the trusted set, and how often that class is the")
print("model's prediction")
for s in ["fashion-mnist"] + ood_names:
    m = sets == s
    print(f"  {s:16s} level {np.median(level[m]):+7.2f}  spread {np.median(spread[m]):.3f}  "
          f"max class corr {np.median(class_mean[m].max(axis=1)):.3f}  "
          f"best class = predicted {np.mean(best_class[m] == predicted[m]):.2f}")
print()
print("Spearman, over OOD inputs: max class correlation against confidence, and against")
print("k-NN distance")
print(f"  max class corr ~ confidence {spearmanr(class_mean[~is_id].max(axis=1), confidence[~is_id])[0]:+.3f}")
print(f"  max class corr ~ knn        {spearmanr(class_mean[~is_id].max(axis=1), scores['knn'][~is_id])[0]:+.3f}")
print(f"  trace spread   ~ confidence {spearmanr(spread[~is_id], confidence[~is_id])[0]:+.3f}")

# The aggregation: CLC averages the couplings over a whole class; a local aggregation keeps
# only each input's most correlated trusted samples (as k-NN keeps the nearest features).
x = test.transpose(2, 0, 1).reshape(n, -1)  # [n, chains * draws], chains joined as vigil does
t = trusted.transpose(2, 0, 1).reshape(trusted.shape[2], -1)


def zpool(a):
    return (a - a.mean(axis=1, keepdims=True)) / (a.std(axis=1, keepdims=True) + 1e-8)


pearson_pooled = zpool(x) @ zpool(t).T / x.shape[1]
ranked = -np.sort(-pearson_pooled, axis=1)
class_means = np.stack([pearson_pooled[:, labels == k].mean(axis=1) for k in classes], axis=1)
print()
print("the same couplings aggregated differently (AUROC per set, OOD positive):")
print(f"  {'aggregation':34s}" + "".join(f"{s[:8]:>9s}" for s in ood_names) + f"{'mean':>8s}")


def aggregated(name, score):
    values = [roc_auc_score(np.r_[np.zeros(is_id.sum()), np.ones(np.sum(sets == s))],
                            np.r_[score[is_id], score[sets == s]]) for s in ood_names]
    print(f"  {name:34s}" + "".join(f"{v:9.3f}" for v in values) + f"{np.mean(values):8.3f}")


aggregated("k-NN on penultimate features", scores["knn"])
aggregated("class mean, max over classes (CLC)", -class_means.max(axis=1))
for k in (1, 5, 20, 50, 250):
    aggregated(f"mean of the {k} most correlated", -ranked[:, :k].mean(axis=1))
if "madfa-nearest_corr" in scores:
    aggregated("vigil's nearest_corr column", scores["madfa-nearest_corr"])

# Noise: CLC from half the chains against all of them (chains joined as vigil joins them).
print()
print("CLC from chains 0-1 and from chains 2-3 (mean AUROC over the sets), against all chains:")
for half in ([0, 1], [2, 3]):
    xs = test[half].transpose(2, 0, 1).reshape(n, -1)
    ts = trusted[half].transpose(2, 0, 1).reshape(trusted.shape[2], -1)
    p_half = zpool(xs) @ zpool(ts).T / xs.shape[1]
    cm = np.stack([p_half[:, labels == k].mean(axis=1) for k in classes], axis=1)
    aggregated(f"CLC, chains {half[0]}-{half[1]}", -cm.max(axis=1))
