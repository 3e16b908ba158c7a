#!/usr/bin/env python3
"""Prints the reference values `mechanisms::cluster`'s tests compare against, from scikit-learn
and numpy (`python3 scripts/mechanisms-constants.py`; sklearn 1.9.1, numpy 2 when written).

The points are a fixed formula, so the Rust test builds the same matrix without a file."""
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

# 12 points in 3-D: three loose groups of four, made by a formula the test repeats.
points = np.array([[((i * 7 + d * 3) % 5) * 0.1 + (i // 4) * (1.0 + d), float(np.sin(i + d))]
                   for i in range(12) for d in range(3)])
points = points[:, 0].reshape(12, 3) + points[:, 1].reshape(12, 3) * 0.2
np.set_printoptions(precision=17)
print("points =", repr(points.tolist()))

labels = [0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 1, 2]
print("silhouette(labels) =", repr(silhouette_score(points, labels)))
print("silhouette(groups) =", repr(silhouette_score(points, [i // 4 for i in range(12)])))

km = KMeans(n_clusters=3, n_init=10, random_state=0).fit(points)
print("kmeans k=3 inertia =", repr(km.inertia_), "labels", km.labels_.tolist())

truth = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
for found in ([1, 1, 1, 0, 0, 0, 2, 2, 2, 2], [0, 0, 1, 1, 2, 2, 0, 1, 2, 0], [0] * 10,
              [0, 0, 0, 1, 1, 1, 1, 1, 2, 3]):
    print("ari", found, "=", repr(adjusted_rand_score(truth, found)))

centred = points - points.mean(axis=0)
values, vectors = np.linalg.eigh(np.cov(centred, rowvar=False))
order = np.argsort(values)[::-1][:2]
components = vectors[:, order]
for c in range(2):
    if components[np.argmax(np.abs(components[:, c])), c] < 0:
        components[:, c] *= -1
print("pca first rows =", repr((centred @ components)[:3].tolist()))
