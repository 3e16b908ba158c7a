#!/usr/bin/env python3
"""Which transform of MAD-FA's traces separates two backdoors (numpy / scikit-learn only).

`vigil mechanisms` clusters the flagged triggered inputs of a two-backdoor model by their own
traces (the per-input log-loss at every SGLD draw, 4 chains x 150 draws concatenated, z-scored
over the draws), k-means with k chosen by split-half stability. That signature gives ARI 1.000 on
BadNets + Blended (both to class 0) but 0.000 with k = 2 on WaNet + BadNets (both to class 0).

What this script shows: the largest shared variation of the triggered inputs' traces is the
input's *source class* (the class the image belongs to before the trigger), not the backdoor.
Two triggered inputs of the same source class correlate about 0.65, of different classes about
0.45, whatever their backdoor; with WaNet + BadNets the footwear-vs-clothing split of the source
classes is at least as strong as the backdoor split, and k-means takes it (the k = 2 clusters
are source classes {1,2,3,4,6} against {5,7,9}). Clean (trusted) inputs of those classes carry
the same per-class response, so it can be removed with trace-only information: project every
triggered input's z-scored trace off the top r principal directions (in draw space) of the
TRUSTED samples' z-scored traces, then z-score again.

Variants tested, each on the flagged triggered inputs (flagged == true in assignments.csv):
  z              the current signature (baseline)
  z-per-chain    z-scored within each chain, then concatenated
  diff           first differences along the draws within each chain (removes slow drift)
  rank           ranks over the 600 values (Spearman), then z-scored (float32 floor check)
  classreg       residual of a regression on the 10 mean trusted traces per class + intercept
  trPC-r         off the top r principal directions of the trusted traces (r = 1 ... 300)
  trPC-80%       r = number of trusted PCs explaining 80% of the trusted traces' variance
                 (a rule that needs no labels)
  diff+trPC-20   first differences, then off the top 20 trusted PCs of differenced traces
  chain-vote     k-means (k = 2) on each chain alone, then k-means on the 4 one-hot labellings
                 (k = 2 only)
For each: ARI against the backdoor with k = 2 given, and with k in 2..6 chosen by split-half
stability (Ben-Hur et al. 2002: 5 random halvings, each half clustered alone with k-means,
every input assigned by both halves' centres, ARI of the two labellings, mean; highest wins).
k-means: k-means++ seeding, 10 restarts (scikit-learn).

Caveat: the variants were compared on the same pairs they are reported on; whichever wins is
tuned on them and needs a third two-backdoor model to count.

Usage (single-threaded BLAS keeps it polite on a shared machine):
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python3 scripts/mechanisms-trace-analysis.py \
      --run runs/mechanisms/wanet-badnets-same/seed-0 \
      --assignments results/mechanisms/wanet-badnets-same-seed-0/assignments.csv \
      [--fashion-labels /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz]
--fashion-labels (the Fashion-MNIST test labels; source_id indexes that set) adds the
source-class diagnosis; it is never used by any variant.
"""

import argparse
import csv
import gzip
import os

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score as ari

KS = range(2, 7)


def zscore(x):
    """Centre and scale each row to unit norm (so x @ x.T is the Pearson correlation)."""
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def flat(t):
    """(chains, draws, n) -> (n, chains * draws)."""
    return t.reshape(-1, t.shape[-1]).T


def kmeans(x, k, seed=0):
    return KMeans(k, n_init=10, random_state=seed).fit(x)


def stability(x, k, reps=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for r in range(reps):
        p = rng.permutation(len(x))
        h = len(x) // 2
        a = kmeans(x[p[:h]], k, seed + r)
        b = kmeans(x[p[h:]], k, seed + r + 100)
        out.append(ari(a.predict(x), b.predict(x)))
    return float(np.mean(out))


def trusted_basis(tr):
    """Principal directions (rows) and explained-variance ratios of the trusted z-traces."""
    z = zscore(tr)
    _, s, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
    return vt, s**2 / np.sum(s**2)


def off(x, basis):
    return zscore(x - (x @ basis.T) @ basis)


def variants(t, tr, trusted_labels):
    """name -> feature matrix (n, d); t, tr: (chains, draws, n) float64."""
    x = zscore(flat(t))
    out = {"z": x}
    out["z-per-chain"] = np.hstack([zscore(t[c].T) for c in range(t.shape[0])])
    out["diff"] = zscore(flat(np.diff(t, axis=1)))
    out["rank"] = zscore(flat(t).argsort(1).argsort(1).astype(float))
    means = np.stack([flat(tr)[trusted_labels == c].mean(0) for c in np.unique(trusted_labels)]
                     + [np.ones(flat(tr).shape[1])])
    beta, *_ = np.linalg.lstsq(means.T, flat(t).T, rcond=None)
    out["classreg"] = zscore(flat(t) - (means.T @ beta).T)
    vt, ratio = trusted_basis(flat(tr))
    for r in (1, 5, 10, 12, 20, 50, 100, 300):
        out[f"trPC-{r}"] = off(x, vt[:r])
    r80 = int(np.searchsorted(np.cumsum(ratio), 0.8) + 1)
    out[f"trPC-80% (r={r80})"] = off(x, vt[:r80])
    vtd, _ = trusted_basis(flat(np.diff(tr, axis=1)))
    out["diff+trPC-20"] = off(zscore(flat(np.diff(t, axis=1))), vtd[:20])
    return out


def chain_vote(t, y):
    votes = []
    for c in range(t.shape[0]):
        lab = kmeans(zscore(t[c].T), 2).labels_
        votes.append(np.eye(2)[lab])
    per_chain = [ari(y, v.argmax(1)) for v in votes]
    return ari(y, kmeans(np.hstack(votes), 2).labels_), per_chain


def mean_corr(c, a, b):
    block = c[np.ix_(a, b)]
    if np.array_equal(a, b):
        return float((block.sum() - np.trace(block)) / (block.size - len(a)))
    return float(block.mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="run dir with traces.npz")
    ap.add_argument("--assignments", required=True, help="assignments.csv of vigil mechanisms")
    ap.add_argument("--fashion-labels", help="t10k-labels-idx1-ubyte(.gz), for the diagnosis")
    args = ap.parse_args()

    d = np.load(os.path.join(args.run, "traces.npz"))
    rows = [r for r in csv.DictReader(open(args.assignments)) if r["flagged"] == "true"]
    idx = np.array([int(r["test_index"]) for r in rows])
    backdoor = np.array([r["backdoor"] for r in rows])
    names = sorted(set(backdoor))
    y = np.array([names.index(b) for b in backdoor])
    t = d["test"][:, :, idx].astype(np.float64)
    tr = d["trusted"].astype(np.float64)
    print(f"{args.run}: {len(idx)} flagged triggered inputs "
          + ", ".join(f"{n} {np.sum(backdoor == n)}" for n in names))
    for n in names:
        v = flat(t)[backdoor == n]
        print(f"  {n}: mean log-loss {v.mean():.1f}, mean within-input sd {v.std(1).mean():.2f}, "
              f"distinct values per trace (min) {min(len(np.unique(r)) for r in v)}/{v.shape[1]}")

    x = zscore(flat(t))
    c = x @ x.T
    a, b = np.where(y == 0)[0], np.where(y == 1)[0]
    print(f"  mean trace correlation: within {names[0]} {mean_corr(c, a, a):.2f}, "
          f"within {names[1]} {mean_corr(c, b, b):.2f}, across {mean_corr(c, a, b):.2f}")
    if args.fashion_labels:
        opener = gzip.open if args.fashion_labels.endswith(".gz") else open
        with opener(args.fashion_labels, "rb") as f:
            labels = np.frombuffer(f.read()[8:], np.uint8)
        src = labels[[int(r["source_id"]) for r in rows]]
        same = src[:, None] == src[None, :]
        np.fill_diagonal(same, False)
        diffm = src[:, None] != src[None, :]
        print(f"  source class (diagnosis only): mean correlation same class {c[same].mean():.2f}, "
              f"different class {c[diffm].mean():.2f}")
        foot = np.where(np.isin(src, [5, 7, 9]))[0]
        cloth = np.where(~np.isin(src, [5, 7, 9]))[0]
        print(f"  footwear (5,7,9) vs the rest: within {mean_corr(c, foot, foot):.2f} / "
              f"{mean_corr(c, cloth, cloth):.2f}, across {mean_corr(c, foot, cloth):.2f}")
        lab2 = kmeans(x, 2).labels_
        frac = [f"{lab2[src == k].mean():.2f}" if np.any(src == k) else "-" for k in range(10)]
        print(f"  baseline k=2 cluster-1 share by source class 0-9: {' '.join(frac)}")

    print()
    print(f"{'variant':22s} {'ARI k=2':>8s} {'k*':>3s} {'ARI k*':>7s}   stability k=2..6")
    for name, f in variants(t, tr, d["trusted_labels"]).items():
        st = {k: stability(f, k) for k in KS}
        kb = max(st, key=st.get)
        a2 = ari(y, kmeans(f, 2).labels_)
        ak = ari(y, kmeans(f, kb).labels_)
        print(f"{name:22s} {a2:8.3f} {kb:3d} {ak:7.3f}   "
              + " ".join(f"{st[k]:.2f}" for k in KS), flush=True)
    vote, per_chain = chain_vote(t, y)
    print(f"{'chain-vote':22s} {vote:8.3f} {'-':>3s} {'-':>7s}   per-chain k=2 ARI "
          + " ".join(f"{v:.2f}" for v in per_chain))


if __name__ == "__main__":
    main()
