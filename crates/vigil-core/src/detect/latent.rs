//! What the latent-space detectors ([`super::spectral`], [`super::que`]) share: the penultimate
//! features of a set, checked; the mean and sample covariance of a feature matrix; and the
//! eigendecomposition of a symmetric matrix (Householder tridiagonalisation and implicit QL:
//! vigil links no LAPACK; the matrices are the feature dimension squared, 128 x 128 for the
//! small CNN, 512 x 512 for PreAct-ResNet-18).
//!
//! Features are row-major `[n, dim]` `f64` slices, as [`crate::ood::features_of`] gives them.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::DetectError;
use crate::data::{ImageSet, ImageShape};
use crate::models::Classifier;
use crate::ood::features_of;

/// Which set a latent detector takes the statistics of the data under inspection from.
///
/// Spectral signatures (Tran et al. 2018) and the quantum entropy score (Dong et al. 2019,
/// SPECTRE) are statistics of the possibly-poisoned data itself: a trigger shared by many
/// inputs becomes the top direction of their covariance. cupbearer fits them on its task's
/// *untrusted* data (unlabelled, clean and anomalous mixed). A vigil detector is fitted on clean
/// data only, and the unlabelled data it is given is the input set it scores, so `Inputs` takes
/// the statistics from that set, scored together (an input's score then depends on the others:
/// score the whole mix in one call). `Trusted` takes them from the trusted set at fit, so each
/// input is scored on its own; it is the reference's method only in form, since a clean set's top
/// direction knows nothing of a trigger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatisticsFrom {
    /// The inputs being scored, together (the reference's untrusted data).
    #[default]
    Inputs,
    /// The trusted set, at fit.
    Trusted,
}

impl StatisticsFrom {
    /// The name in settings and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Inputs => "inputs",
            Self::Trusted => "trusted",
        }
    }
}

/// Penultimate features of `set` under `model` (eval mode), `[n, dim]` row-major, refusing
/// images the model cannot take and non-finite features (a broken model would otherwise make
/// every statistic NaN). Labels are not returned: scoring must not read them.
pub fn penultimate_features(
    detector: &str,
    model: &Classifier,
    set: &ImageSet,
    batch_size: usize,
    device: &Device,
) -> Result<(Vec<f64>, usize), DetectError> {
    set.check_shape(ImageShape::from(model.spec.input_shape))?;
    let (features, dim, _labels) = features_of(model, set, batch_size.max(1), device);
    if let Some(at) = features.iter().position(|v| !v.is_finite()) {
        return Err(DetectError::Fit {
            detector: detector.into(),
            reason: format!(
                "the model's penultimate features of input {} are not finite",
                at / dim.max(1)
            ),
        });
    }
    Ok((features, dim))
}

/// Column means `[dim]` and sample covariance `[dim, dim]` (row-major, divided by `n - 1` as
/// numpy's `np.cov` and cupbearer's `batch_covariance` do) of `n >= 2` feature rows.
pub fn mean_and_covariance(features: &[f64], dim: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    if dim == 0 || !features.len().is_multiple_of(dim) {
        return None;
    }
    let n = features.len() / dim;
    if n < 2 {
        return None;
    }
    let mut mean = vec![0.0; dim];
    for row in features.chunks_exact(dim) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    for m in &mut mean {
        *m /= n as f64;
    }
    let mut covariance = vec![0.0; dim * dim];
    let mut centred = vec![0.0; dim];
    for row in features.chunks_exact(dim) {
        for ((c, v), m) in centred.iter_mut().zip(row).zip(&mean) {
            *c = v - m;
        }
        for a in 0..dim {
            let ca = centred[a];
            for (b, cb) in centred.iter().enumerate().take(a + 1) {
                covariance[a * dim + b] += ca * cb;
            }
        }
    }
    for a in 0..dim {
        for b in 0..=a {
            let v = covariance[a * dim + b] / (n - 1) as f64;
            covariance[a * dim + b] = v;
            covariance[b * dim + a] = v;
        }
    }
    Some((mean, covariance))
}

/// Eigenvalues and unit eigenvectors of a symmetric matrix, largest eigenvalue first.
#[derive(Debug, Clone, PartialEq)]
pub struct SymmetricEigen {
    /// Eigenvalues, descending.
    pub values: Vec<f64>,
    /// `vectors[j]` is the unit eigenvector of `values[j]` (its sign is arbitrary).
    pub vectors: Vec<Vec<f64>>,
}

/// QL iterations allowed per eigenvalue; the implicit shifts converge cubically, in two or three.
const MAX_QL_ITERATIONS: usize = 100;

/// The eigendecomposition of the symmetric `dim x dim` row-major matrix `a` (only its lower
/// triangle is read): Householder reduction to tridiagonal form, then the QL algorithm with
/// implicit shifts (EISPACK's `tred2` and `tql2`, in the form of JAMA's public-domain
/// `EigenvalueDecomposition`). `None` if `a` has a non-finite entry, is not `dim x dim`, or QL
/// does not converge.
pub fn symmetric_eigen(a: &[f64], dim: usize) -> Option<SymmetricEigen> {
    if a.len() != dim * dim || a.iter().any(|v| !v.is_finite()) {
        return None;
    }
    if dim == 0 {
        return Some(SymmetricEigen {
            values: Vec::new(),
            vectors: Vec::new(),
        });
    }
    let n = dim;
    // v[i][j] = a[i][j] on and below the diagonal; tred2 reads nothing else.
    let mut v: Vec<Vec<f64>> = (0..n).map(|i| a[i * n..(i + 1) * n].to_vec()).collect();
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    tridiagonalize(&mut v, &mut d, &mut e);
    // QL rotates pairs of columns of v: work on its transpose, whose rows are contiguous.
    let mut vt: Vec<Vec<f64>> = (0..n).map(|j| (0..n).map(|k| v[k][j]).collect()).collect();
    ql_implicit(&mut vt, &mut d, &mut e)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[j].total_cmp(&d[i]));
    Some(SymmetricEigen {
        values: order.iter().map(|&j| d[j]).collect(),
        vectors: order.iter().map(|&j| std::mem::take(&mut vt[j])).collect(),
    })
}

/// Householder reduction of the symmetric `v` to tridiagonal form (EISPACK `tred2`): on return
/// `d` is the diagonal, `e[1..]` the subdiagonal and `v` the orthogonal transformation.
fn tridiagonalize(v: &mut [Vec<f64>], d: &mut [f64], e: &mut [f64]) {
    let n = d.len();
    d.copy_from_slice(&v[n - 1]);
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[i - 1][j];
                v[i][j] = 0.0;
                v[j][i] = 0.0;
            }
        } else {
            // The Householder vector, scaled against under- and overflow.
            for x in &mut d[..i] {
                *x /= scale;
                h += *x * *x;
            }
            let mut f = d[i - 1];
            let mut g = if f > 0.0 { -h.sqrt() } else { h.sqrt() };
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].fill(0.0);
            // The similarity transformation of the remaining columns.
            for j in 0..i {
                f = d[j];
                v[j][i] = f;
                g = e[j] + v[j][j] * f;
                for k in j + 1..i {
                    g += v[k][j] * d[k];
                    e[k] += v[k][j] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[k][j] -= f * e[k] + g * d[k];
                }
                d[j] = v[i - 1][j];
                v[i][j] = 0.0;
            }
        }
        d[i] = h;
    }
    // Accumulate the transformations.
    for i in 0..n - 1 {
        v[n - 1][i] = v[i][i];
        v[i][i] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[k][i + 1] / h;
            }
            for j in 0..=i {
                let g: f64 = (0..=i).map(|k| v[k][i + 1] * v[k][j]).sum();
                for k in 0..=i {
                    v[k][j] -= g * d[k];
                }
            }
        }
        for row in v.iter_mut().take(i + 1) {
            row[i + 1] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[n - 1][j];
        v[n - 1][j] = 0.0;
    }
    v[n - 1][n - 1] = 1.0;
    e[0] = 0.0;
}

/// Eigenvalues (into `d`) and eigenvectors (rows of `vt`, the transposed transformation of
/// [`tridiagonalize`]) of the tridiagonal matrix `d`, `e[1..]` (EISPACK `tql2`); `None` if an
/// eigenvalue does not converge.
fn ql_implicit(vt: &mut [Vec<f64>], d: &mut [f64], e: &mut [f64]) -> Option<()> {
    let n = d.len();
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        // The first negligible subdiagonal element at or after l (e[n - 1] = 0 stops it).
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iterations = 0;
            loop {
                iterations += 1;
                if iterations > MAX_QL_ITERATIONS {
                    return None;
                }
                // The implicit (Wilkinson) shift.
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for x in &mut d[l + 2..n] {
                    *x -= h;
                }
                f += h;
                // The QL sweep from m up to l.
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = vt.split_at_mut(i + 1);
                    for (a, b) in lo[i].iter_mut().zip(hi[0].iter_mut()) {
                        let t = *b;
                        *b = s * *a + c * t;
                        *a = c * *a - s * t;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    Some(())
}

/// Dot product.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy 2.4.6:
    /// ```python
    /// import numpy as np
    /// a = np.array([[4., 1., -2., .5], [1., 3., 0., 1.], [-2., 0., 5., -1.], [.5, 1., -1., 2.]])
    /// w, v = np.linalg.eigh(a)          # ascending
    /// print(repr(w[::-1]), repr(v[:, ::-1].T))
    /// ```
    #[test]
    fn eigen_matches_numpy_eigh() {
        let a = [
            4.0, 1.0, -2.0, 0.5, 1.0, 3.0, 0.0, 1.0, -2.0, 0.0, 5.0, -1.0, 0.5, 1.0, -1.0, 2.0,
        ];
        let eigen = symmetric_eigen(&a, 4).unwrap();
        for (got, want) in eigen.values.iter().zip(NUMPY_VALUES) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        for (got, want) in eigen.vectors.iter().zip(NUMPY_VECTORS) {
            // Eigenvectors are defined up to sign.
            let sign = dot(got, &want).signum();
            for (g, w) in got.iter().zip(want) {
                assert!((sign * g - w).abs() < 1e-10, "{got:?} vs {want:?}");
            }
        }
    }

    const NUMPY_VALUES: [f64; 4] = [
        6.9893415317566046,
        3.6025744003397637,
        2.360945426974544,
        1.0471386409290875,
    ];
    const NUMPY_VECTORS: [[f64; 4]; 4] = [
        [
            -0.6007604337415516,
            -0.21301882287181984,
            0.7291685453272296,
            -0.24904440338690398,
        ],
        [
            0.22717960250456729,
            0.793935388458327,
            0.5049175736331959,
            0.25122553810422615,
        ],
        [
            -0.7174994986878305,
            0.2348224610928722,
            -0.3287404039181097,
            0.5674351310773383,
        ],
        [
            -0.2695752192603053,
            0.5187947492237326,
            -0.3245014994934473,
            -0.7435589997876069,
        ],
    ];

    #[test]
    fn eigen_handles_diagonal_zero_and_non_finite_matrices() {
        let eigen = symmetric_eigen(&[1.0, 0.0, 0.0, 3.0], 2).unwrap();
        assert_eq!(eigen.values, vec![3.0, 1.0]);
        assert_eq!(eigen.vectors, vec![vec![0.0, 1.0], vec![1.0, 0.0]]);
        let zero = symmetric_eigen(&[0.0; 9], 3).unwrap();
        assert_eq!(zero.values, vec![0.0; 3]);
        assert!(symmetric_eigen(&[1.0, f64::NAN, f64::NAN, 1.0], 2).is_none());
        assert!(symmetric_eigen(&[1.0, 2.0, 3.0], 2).is_none());
        assert_eq!(symmetric_eigen(&[], 0).unwrap().values, Vec::<f64>::new());
    }

    /// A 40 x 40 covariance with a repeated eigenvalue: every pair satisfies `A v = lambda v` and
    /// the vectors are orthonormal (checks the decomposition without a reference).
    #[test]
    fn eigenpairs_of_a_larger_matrix_are_exact_and_orthonormal() {
        let dim = 40;
        let mut state = 1u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        // 30 samples: rank 29, so 11 eigenvalues are zero.
        let x: Vec<f64> = (0..30 * dim).map(|_| next()).collect();
        let (_, a) = mean_and_covariance(&x, dim).unwrap();
        let eigen = symmetric_eigen(&a, dim).unwrap();
        assert!(eigen.values.windows(2).all(|w| w[0] >= w[1]));
        assert!(eigen.values[29..].iter().all(|v| v.abs() < 1e-14));
        for (value, vector) in eigen.values.iter().zip(&eigen.vectors) {
            for i in 0..dim {
                let av = dot(&a[i * dim..(i + 1) * dim], vector);
                assert!(
                    (av - value * vector[i]).abs() < 1e-13,
                    "{av} vs {}",
                    value * vector[i]
                );
            }
        }
        for (i, u) in eigen.vectors.iter().enumerate() {
            for (j, w) in eigen.vectors.iter().enumerate() {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((dot(u, w) - expected).abs() < 1e-13);
            }
        }
    }

    /// `x.mean(0)` and `np.cov(x, rowvar=False)` of the rows below: [1.25, 2.25] and
    /// [2.9166666666666665, 3.25, 3.25, 4.25]; by hand, the centred rows (-0.25, -0.25),
    /// (1.75, 2.75), (-2.25, -2.25), (0.75, -0.25) give sums 8.75, 9.75, 12.75, over n - 1 = 3.
    #[test]
    fn covariance_matches_numpy() {
        let x = [1.0, 2.0, 3.0, 5.0, -1.0, 0.0, 2.0, 2.0];
        let (mean, cov) = mean_and_covariance(&x, 2).unwrap();
        assert_eq!(mean, vec![1.25, 2.25]);
        for (got, want) in cov.iter().zip([8.75 / 3.0, 3.25, 3.25, 4.25]) {
            assert!((got - want).abs() < 1e-15, "{cov:?}");
        }
        assert!(mean_and_covariance(&x[..2], 2).is_none());
        assert!(mean_and_covariance(&x[..3], 2).is_none());
    }
}
