#!/usr/bin/env python3
"""Constants for the Nearest Corr test (crates/vigil-core/src/madfa/scores.rs,
`nearest_corr_matches_numpy`), computed in numpy (f64) independently of vigil's Rust code: the
anomaly score minus the mean Pearson correlation with the k = 5 most correlated trusted
samples, for the test samples and, leave-one-out, for the trusted samples themselves.

    python3 scripts/madfa-nearest-constants.py
"""
import numpy as np

K = 5
tr = np.zeros((2, 9, 7))
te = np.zeros((2, 9, 3))
for c in range(2):
    for d in range(9):
        for i in range(7):
            tr[c, d, i] = np.float32(np.sin(((c * 31 + d * 17 + i * 13) % 23) / 7.0) + 0.1 * i)
        for i in range(3):
            te[c, d, i] = np.float32(np.cos(((c * 7 + d * 11 + i * 5) % 19) / 5.0) + 0.05 * i)
# [samples, draws]: chains concatenated along the draws.
trusted = np.concatenate(list(tr), axis=0).T
test = np.concatenate(list(te), axis=0).T


def z(x):
    return (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-8)


draws = trusted.shape[1]
pearson = z(test) @ z(trusted).T / draws
nearest = -np.sort(pearson, axis=1)[:, ::-1][:, :K].mean(axis=1)
square = z(trusted) @ z(trusted).T / draws
loo = []
for i in range(len(square)):
    others = np.delete(square[i], i)
    loo.append(-np.sort(others)[::-1][:K].mean())
print("test:", [float(v) for v in nearest])
print("trusted leave-one-out:", [float(v) for v in loo])
