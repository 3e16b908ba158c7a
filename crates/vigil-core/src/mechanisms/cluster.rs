//! Clustering without labels, and how well a clustering matches the truth: k-means (k-means++
//! seeding, Lloyd iterations, best of several restarts), two rules that pick the number of
//! clusters (split-half stability and the silhouette coefficient), the adjusted Rand index, and a
//! 2-D principal-component projection for pictures. Points are rows of a row-major `[n, dim]` f64 matrix.
//!
//! The formulas are scikit-learn's (`KMeans` inertia, `silhouette_score` with Euclidean
//! distances, `adjusted_rand_score`), checked against its values in the tests
//! (`scripts/mechanisms-constants.py` prints them).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::detect::latent::symmetric_eigen;

/// Lloyd iterations per restart at most; a restart stops earlier once no label changes.
const MAX_ITERATIONS: usize = 300;

/// A k-means clustering.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    /// Cluster of every point, `0..k`.
    pub labels: Vec<usize>,
    /// Centres, `[k, dim]` row-major.
    pub centres: Vec<f64>,
    /// Sum of squared distances of the points to their centres.
    pub inertia: f64,
}

fn row(points: &[f64], dim: usize, i: usize) -> &[f64] {
    &points[i * dim..(i + 1) * dim]
}

fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// k-means of the `n = points.len() / dim` rows into `k` clusters: `restarts` runs from k-means++
/// seeds drawn with `seed`, the one of least inertia kept. `None` unless `1 <= k <= n`, `dim > 0`
/// and every value is finite. A cluster that empties is re-seeded with the point farthest from
/// its centre.
pub fn kmeans(points: &[f64], dim: usize, k: usize, restarts: usize, seed: u64) -> Option<KMeans> {
    if dim == 0 || !points.len().is_multiple_of(dim) || points.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let n = points.len() / dim;
    if k == 0 || k > n {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    (0..restarts.max(1))
        .map(|_| lloyd(points, dim, k, plus_plus_seeds(points, dim, k, &mut rng)))
        .min_by(|a, b| a.inertia.total_cmp(&b.inertia))
}

/// k-means++ seeding: the first centre uniformly, each next one with probability proportional
/// to the squared distance to the nearest centre chosen so far.
fn plus_plus_seeds(points: &[f64], dim: usize, k: usize, rng: &mut StdRng) -> Vec<f64> {
    let n = points.len() / dim;
    let mut centres = row(points, dim, rng.random_range(0..n)).to_vec();
    let mut nearest: Vec<f64> = (0..n)
        .map(|i| squared_distance(row(points, dim, i), &centres[..dim]))
        .collect();
    while centres.len() < k * dim {
        let total: f64 = nearest.iter().sum();
        let chosen = if total > 0.0 {
            let mut target = rng.random::<f64>() * total;
            let mut pick = n - 1;
            for (i, d) in nearest.iter().enumerate() {
                if target < *d {
                    pick = i;
                    break;
                }
                target -= d;
            }
            pick
        } else {
            // Every point sits on a centre already: any point will do.
            rng.random_range(0..n)
        };
        let centre = row(points, dim, chosen).to_vec();
        for (i, d) in nearest.iter_mut().enumerate() {
            *d = d.min(squared_distance(row(points, dim, i), &centre));
        }
        centres.extend(centre);
    }
    centres
}

/// Lloyd's iterations from `centres` until no label changes.
fn lloyd(points: &[f64], dim: usize, k: usize, mut centres: Vec<f64>) -> KMeans {
    let n = points.len() / dim;
    let mut labels = vec![usize::MAX; n];
    for _ in 0..MAX_ITERATIONS {
        let mut changed = false;
        for (i, label) in labels.iter_mut().enumerate() {
            let p = row(points, dim, i);
            let best = (0..k)
                .map(|c| (c, squared_distance(p, row(&centres, dim, c))))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(0, |(c, _)| c);
            if *label != best {
                *label = best;
                changed = true;
            }
        }
        if !changed {
            break;
        }
        let mut sums = vec![0.0; k * dim];
        let mut counts = vec![0usize; k];
        for (i, &c) in labels.iter().enumerate() {
            counts[c] += 1;
            for (s, v) in sums[c * dim..(c + 1) * dim]
                .iter_mut()
                .zip(row(points, dim, i))
            {
                *s += v;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for (centre, sum) in centres[c * dim..(c + 1) * dim]
                    .iter_mut()
                    .zip(&sums[c * dim..(c + 1) * dim])
                {
                    *centre = sum / counts[c] as f64;
                }
            } else {
                // An empty cluster takes the point farthest from its own centre.
                let far = (0..n)
                    .max_by(|&a, &b| {
                        let da =
                            squared_distance(row(points, dim, a), row(&centres, dim, labels[a]));
                        let db =
                            squared_distance(row(points, dim, b), row(&centres, dim, labels[b]));
                        da.total_cmp(&db)
                    })
                    .unwrap_or(0);
                let p = row(points, dim, far).to_vec();
                centres[c * dim..(c + 1) * dim].copy_from_slice(&p);
            }
        }
    }
    let inertia = labels
        .iter()
        .enumerate()
        .map(|(i, &c)| squared_distance(row(points, dim, i), row(&centres, dim, c)))
        .sum();
    KMeans {
        labels,
        centres,
        inertia,
    }
}

/// Euclidean distances between every pair of rows, `[n, n]` row-major.
pub fn pairwise_distances(points: &[f64], dim: usize) -> Vec<f64> {
    let n = points.len() / dim.max(1);
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let d = squared_distance(row(points, dim, i), row(points, dim, j)).sqrt();
            out[i * n + j] = d;
            out[j * n + i] = d;
        }
    }
    out
}

/// Mean silhouette coefficient of `labels` over points whose pairwise distances are `distances`
/// (`[n, n]`): for each point `(b - a) / max(a, b)` with `a` its mean distance to the rest of
/// its cluster and `b` the least mean distance to another cluster; 0 for a point alone in its
/// cluster (as scikit-learn). `None` unless there are 2..=n-1 clusters.
pub fn silhouette(distances: &[f64], labels: &[usize]) -> Option<f64> {
    let n = labels.len();
    if distances.len() != n * n || n == 0 {
        return None;
    }
    let k = labels.iter().max()? + 1;
    let mut sizes = vec![0usize; k];
    for &l in labels {
        sizes[l] += 1;
    }
    let clusters = sizes.iter().filter(|&&s| s > 0).count();
    if clusters < 2 || clusters > n - 1 {
        return None;
    }
    let mut total = 0.0;
    for i in 0..n {
        if sizes[labels[i]] == 1 {
            continue;
        }
        let mut sums = vec![0.0; k];
        for j in 0..n {
            sums[labels[j]] += distances[i * n + j];
        }
        let a = sums[labels[i]] / (sizes[labels[i]] - 1) as f64;
        let b = (0..k)
            .filter(|&c| c != labels[i] && sizes[c] > 0)
            .map(|c| sums[c] / sizes[c] as f64)
            .fold(f64::INFINITY, f64::min);
        let denominator = a.max(b);
        if denominator > 0.0 {
            total += (b - a) / denominator;
        }
    }
    Some(total / n as f64)
}

/// How the number of clusters is chosen without labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KRule {
    /// The k whose clustering is most reproducible from random halves ([`stability`]).
    Stability,
    /// The k of highest mean silhouette ([`silhouette`]).
    Silhouette,
}

/// The number of clusters chosen in `ks` (each >= 2), with its clustering, and both criteria
/// for every k tried (`None` where undefined, e.g. k >= n).
#[derive(Debug, Clone, PartialEq)]
pub struct ChosenClustering {
    /// The chosen number of clusters.
    pub k: usize,
    /// Its clustering.
    pub clustering: KMeans,
    /// `(k, silhouette)` for every k tried.
    pub silhouettes: Vec<(usize, Option<f64>)>,
    /// `(k, split-half stability)` for every k tried.
    pub stabilities: Vec<(usize, Option<f64>)>,
}

/// k-means for every k in `ks`, keeping the k `rule` prefers (the smaller k on a tie); `None`
/// when no k gives a defined criterion. Stability uses 5 random halvings.
pub fn choose_k(
    points: &[f64],
    dim: usize,
    ks: std::ops::RangeInclusive<usize>,
    rule: KRule,
    restarts: usize,
    seed: u64,
) -> Option<ChosenClustering> {
    let distances = pairwise_distances(points, dim);
    let mut best: Option<(f64, usize, KMeans)> = None;
    let (mut silhouettes, mut stabilities) = (Vec::new(), Vec::new());
    for k in ks {
        let fit = kmeans(points, dim, k, restarts, seed);
        let width = fit
            .as_ref()
            .and_then(|fit| silhouette(&distances, &fit.labels));
        let stable = stability(points, dim, k, restarts, 5, seed);
        silhouettes.push((k, width));
        stabilities.push((k, stable));
        let criterion = match rule {
            KRule::Silhouette => width,
            KRule::Stability => stable,
        };
        if let (Some(fit), Some(score)) = (fit, criterion)
            && best.as_ref().is_none_or(|(s, _, _)| score > *s + 1e-12)
        {
            best = Some((score, k, fit));
        }
    }
    best.map(|(_, k, clustering)| ChosenClustering {
        k,
        clustering,
        silhouettes,
        stabilities,
    })
}

/// Nearest of `centres` (`[k, dim]`) for every row of `points`.
pub fn assign(points: &[f64], dim: usize, centres: &[f64]) -> Vec<usize> {
    let k = centres.len() / dim.max(1);
    (0..points.len() / dim.max(1))
        .map(|i| {
            (0..k)
                .map(|c| {
                    (
                        c,
                        squared_distance(row(points, dim, i), row(centres, dim, c)),
                    )
                })
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map_or(0, |(c, _)| c)
        })
        .collect()
}

/// How reproducible k-means with `k` clusters is on `points`: over `replicates` random halvings,
/// each half is clustered on its own, every point is assigned by both halves' centres, and the
/// two labellings are compared by the adjusted Rand index; the mean (Ben-Hur et al. 2002, Lange
/// et al. 2004: a k that matches real groups gives the same partition from any half). `None`
/// when a half has fewer than `k` points.
pub fn stability(
    points: &[f64],
    dim: usize,
    k: usize,
    restarts: usize,
    replicates: usize,
    seed: u64,
) -> Option<f64> {
    let n = points.len() / dim.max(1);
    if n / 2 < k || replicates == 0 {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut total = 0.0;
    for replicate in 0..replicates {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let half = |part: &[usize]| -> Vec<f64> {
            part.iter()
                .flat_map(|&i| row(points, dim, i).iter().copied())
                .collect()
        };
        let (a, b) = order.split_at(n / 2);
        let seed_of = |side: u64| seed ^ ((replicate as u64) << 8 | side);
        let fit_a = kmeans(&half(a), dim, k, restarts, seed_of(1))?;
        let fit_b = kmeans(&half(b), dim, k, restarts, seed_of(2))?;
        total += adjusted_rand_index(
            &assign(points, dim, &fit_a.centres),
            &assign(points, dim, &fit_b.centres),
        )?;
    }
    Some(total / replicates as f64)
}

/// Adjusted Rand index of two labellings of the same points (Hubert and Arabie): 1 for the same
/// partition whatever the label names, about 0 for independent ones. 1 when both put every point
/// in one cluster, or there is at most one point (as scikit-learn). `None` if the lengths differ.
pub fn adjusted_rand_index(truth: &[usize], found: &[usize]) -> Option<f64> {
    let n = truth.len();
    if found.len() != n {
        return None;
    }
    if n <= 1 {
        return Some(1.0);
    }
    let rows = truth.iter().max().map_or(0, |m| m + 1);
    let cols = found.iter().max().map_or(0, |m| m + 1);
    let mut table = vec![0u64; rows * cols];
    for (&t, &f) in truth.iter().zip(found) {
        table[t * cols + f] += 1;
    }
    let pairs = |x: u64| (x * x.saturating_sub(1) / 2) as f64;
    let index: f64 = table.iter().map(|&c| pairs(c)).sum();
    let row_sums: f64 = (0..rows)
        .map(|r| pairs(table[r * cols..(r + 1) * cols].iter().sum()))
        .sum();
    let col_sums: f64 = (0..cols)
        .map(|c| pairs((0..rows).map(|r| table[r * cols + c]).sum()))
        .sum();
    let total = pairs(n as u64);
    let expected = row_sums * col_sums / total;
    let maximum = (row_sums + col_sums) / 2.0;
    if maximum == expected {
        // Both labellings put every point in one cluster (or each point alone): identical.
        return Some(1.0);
    }
    Some((index - expected) / (maximum - expected))
}

/// The rows projected on their first two principal components (of the covariance of the
/// centred rows), `[n]` pairs; each component's sign is fixed so its largest-magnitude loading
/// is positive. `None` if there are fewer than 2 rows or 2 dimensions, or a value is not finite.
pub fn principal_components_2d(points: &[f64], dim: usize) -> Option<Vec<[f64; 2]>> {
    if dim < 2 || !points.len().is_multiple_of(dim) || points.len() / dim < 2 {
        return None;
    }
    let n = points.len() / dim;
    let mut mean = vec![0.0; dim];
    for i in 0..n {
        for (m, v) in mean.iter_mut().zip(row(points, dim, i)) {
            *m += v / n as f64;
        }
    }
    let centred: Vec<f64> = (0..n)
        .flat_map(|i| row(points, dim, i).iter().zip(&mean).map(|(v, m)| v - m))
        .collect();
    let mut covariance = vec![0.0; dim * dim];
    for i in 0..n {
        let r = row(&centred, dim, i);
        for a in 0..dim {
            if r[a] == 0.0 {
                continue;
            }
            for b in a..dim {
                covariance[a * dim + b] += r[a] * r[b];
            }
        }
    }
    for a in 0..dim {
        for b in a..dim {
            let v = covariance[a * dim + b] / (n - 1) as f64;
            covariance[a * dim + b] = v;
            covariance[b * dim + a] = v;
        }
    }
    let eigen = symmetric_eigen(&covariance, dim)?;
    // Eigenvalues descending: the first two vectors are the leading components.
    let component = |c: usize| -> Vec<f64> {
        let mut v = eigen.vectors[c].clone();
        let largest = v
            .iter()
            .copied()
            .fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        if largest < 0.0 {
            v.iter_mut().for_each(|x| *x = -*x);
        }
        v
    };
    let (first, second) = (component(0), component(1));
    Some(
        (0..n)
            .map(|i| {
                let r = row(&centred, dim, i);
                let dot = |c: &[f64]| r.iter().zip(c).map(|(a, b)| a * b).sum::<f64>();
                [dot(&first), dot(&second)]
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 12 x 3 points of `scripts/mechanisms-constants.py`: three loose groups of four.
    fn points() -> Vec<f64> {
        (0..12)
            .flat_map(|i| {
                (0..3).map(move |d| {
                    ((i * 7 + d * 3) % 5) as f64 * 0.1
                        + (i / 4) as f64 * (1.0 + d as f64)
                        + 0.2 * ((i + d) as f64).sin()
                })
            })
            .collect()
    }

    fn close(got: f64, want: f64, what: &str) {
        assert!((got - want).abs() < 1e-12, "{what}: {got} vs {want}");
    }

    #[test]
    fn silhouettes_match_scikit_learn() {
        let distances = pairwise_distances(&points(), 3);
        let mixed = [0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 1, 2];
        close(
            silhouette(&distances, &mixed).unwrap(),
            -0.18184047780511914,
            "mixed labels",
        );
        let groups: Vec<usize> = (0..12).map(|i| i / 4).collect();
        close(
            silhouette(&distances, &groups).unwrap(),
            0.8568054190608198,
            "true groups",
        );
        // One cluster, or every point alone, has no silhouette.
        assert_eq!(silhouette(&distances, &[0; 12]), None);
        assert_eq!(silhouette(&distances, &(0..12).collect::<Vec<_>>()), None);
    }

    #[test]
    fn kmeans_finds_scikit_learns_optimum_and_silhouette_picks_three_groups() {
        let fit = kmeans(&points(), 3, 3, 10, 0).unwrap();
        close(fit.inertia, 1.3359071258290414, "inertia");
        let groups: Vec<usize> = (0..12).map(|i| i / 4).collect();
        assert_eq!(adjusted_rand_index(&groups, &fit.labels), Some(1.0));
        for rule in [KRule::Silhouette, KRule::Stability] {
            let chosen = choose_k(&points(), 3, 2..=5, rule, 10, 0).unwrap();
            assert_eq!(
                chosen.k, 3,
                "{rule:?}: {:?} {:?}",
                chosen.silhouettes, chosen.stabilities
            );
            assert_eq!(chosen.silhouettes.len(), 4);
        }
        // Three separated groups come back the same from any half; more clusters do not.
        let stable = stability(&points(), 3, 3, 10, 5, 0).unwrap();
        assert!((stable - 1.0).abs() < 1e-12, "{stable}");
        assert!(
            stability(&points(), 3, 7, 10, 5, 0).is_none(),
            "halves of 6 cannot hold 7"
        );
        // Refusals: k out of range, ragged or non-finite input.
        assert!(kmeans(&points(), 3, 0, 1, 0).is_none());
        assert!(kmeans(&points(), 3, 13, 1, 0).is_none());
        assert!(kmeans(&points()[..35], 3, 2, 1, 0).is_none());
        assert!(kmeans(&[0.0, f64::NAN], 1, 1, 1, 0).is_none());
        // Identical points: any k up to n works, with zero inertia.
        let same = kmeans(&[1.0; 8], 2, 3, 2, 0).unwrap();
        assert_eq!(same.inertia, 0.0);
    }

    #[test]
    fn adjusted_rand_indices_match_scikit_learn() {
        let truth = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2];
        for (found, want) in [
            ([1, 1, 1, 0, 0, 0, 2, 2, 2, 2], 1.0),
            ([0, 0, 1, 1, 2, 2, 0, 1, 2, 0], -0.022727272727272728),
            ([0; 10], 0.0),
            ([0, 0, 0, 1, 1, 1, 1, 1, 2, 3], 0.39114391143911437),
        ] {
            close(
                adjusted_rand_index(&truth, &found).unwrap(),
                want,
                &format!("{found:?}"),
            );
        }
        assert_eq!(adjusted_rand_index(&[0, 0], &[1, 1]), Some(1.0));
        assert_eq!(adjusted_rand_index(&[0], &[0, 1]), None);
    }

    #[test]
    fn principal_components_match_numpy() {
        let projected = principal_components_2d(&points(), 3).unwrap();
        let want = [
            [-3.5697627732189336, -0.202374501982831],
            [-3.586994147287941, -0.008075447769016404],
            [-3.900920461233781, 0.4035026101045279],
        ];
        for (got, want) in projected.iter().zip(want) {
            close(got[0], want[0], "first component");
            close(got[1], want[1], "second component");
        }
        assert!(principal_components_2d(&[1.0, 2.0], 2).is_none());
    }
}
