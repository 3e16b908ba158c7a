//! SentiNet (Chou, Tramèr and Pellegrino, "SentiNet: Detecting Localized Universal Attacks
//! Against Deep Learning Systems", IEEE S&P Workshops 2020), as BackdoorBench runs it.
//!
//! # What the reference does
//!
//! BackdoorBench `detection_infer/sentinet.py` (adapted from Beatrix
//! `defenses/SentiNet/SentiNet.py`, whose `DecisionBoundary` class holds the paper's decision
//! boundary), for every input:
//!
//! 1. **Salient region.** Grad-CAM (`pytorch_grad_cam.GradCAM`, target layer `layer4.1.conv2`,
//!    the last convolution) of the input's predicted class: weights = the class logit's gradient
//!    with respect to that layer's output, averaged over positions; map = ReLU of the weighted sum
//!    of the channels, resized bilinearly (`cv2.resize`) to the input and min-max scaled to
//!    `[0, 1]`. The region is where the map is `>= mask_cond` (0.85).
//! 2. **Fooled fraction.** `SentiNet._superimpose(background, overlay, mask)` pastes the input
//!    inside the region onto `clean_sample_num` (100) clean images (`clean_sample_num /
//!    num_classes` of each class): the fraction of them the model then assigns to the input's
//!    predicted class.
//! 3. **Inert-pattern confidence.** The same region pasted onto as many uniform-noise images:
//!    the mean of their maximum softmax probability.
//!
//! BackdoorBench flags an input when its inert-pattern confidence exceeds 0.9 and never uses the
//! fooled fraction. The paper, and Beatrix's `DecisionBoundary`, use both: on clean inputs'
//! points (x = confidence, y = fooled fraction) it keeps, in each confidence bin of width 0.04,
//! the two points with the highest fooled fraction, fits a quadratic `y = a x² + b x + c` to them
//! (`scipy.optimize.curve_fit`), and calls an input adversarial when its point lies above that
//! curve by more than a distance set from the clean points.
//!
//! # What vigil scores
//!
//! One column, `sentinet`: the **signed Euclidean distance** of an input's point to the
//! boundary curve fitted on trusted inputs' points, positive above the curve (more images fooled
//! than clean inputs of the same confidence manage), negative below. Higher = more anomalous.
//! This keeps both axes of the reference's plane and its decision boundary; the paper's distance
//! threshold is replaced by vigil's threshold at a target false-positive rate on held-out trusted
//! inputs ([`super::fit_with_thresholds`]). vigil keeps the paper's two-axis boundary rather
//! than BackdoorBench's confidence-only rule because the fooled fraction is what a pasted
//! trigger moves most (every clean image switches to the target class), and a fixed 0.9 on the
//! confidence ignores how confident the model is on noise to begin with. As in the reference,
//! the clean images of the input's own class count as fooled when they keep their class.
//!
//! # Where vigil deviates, and why
//!
//! - **Fixed overlays and inert patterns.** The clean images (from the sampling set: held-out
//!   clean data, never the trusted set) and the noise images are drawn once at fit time and
//!   reused for every input, so an input's score is a function of the input alone and the
//!   thresholds set on held-out trusted inputs apply to later inputs without redrawing noise.
//!   The reference draws fresh noise per input (and BackdoorBench draws its clean images with
//!   replacement; vigil draws without, a duplicate adds nothing).
//! - **Images stay `f32` in `[0, 1]`.** The reference round-trips through `uint8`; the noise is
//!   uniform in `[0, 1)` rather than `k / 255`.
//! - **Map scaling.** A map that is constant (no positive evidence for the class) gives an empty
//!   region (pytorch-grad-cam divides by `max + 1e-7`, giving zeros; an older version divides by
//!   zero); otherwise it is scaled by `max - min` exactly.
//! - **Too few boundary points for a quadratic.** When the bins give fewer than three distinct
//!   confidences, the curve is a line (two) or a constant (one); `curve_fit` would fail.
//! - **Which clean inputs fit the boundary.** Up to `boundary_inputs` (200, Beatrix's `n_test`)
//!   trusted inputs, drawn with the seed.
//! - **The last convolution** is `conv2` of the small CNN (before its ReLU) and `layer4.1.conv2`
//!   of both ResNets ([`crate::models::Network::split_at_last_conv`]).
//!
//! Inputs' labels are never read: the region and the fooled fraction follow the model's own
//! prediction.

use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{DetectError, Detector, FitData, FittedDetector, ScoreTable};
use crate::attack::pgd::frozen;
use crate::data::{ImageSet, images_tensor};
use crate::models::{BnMode, Classifier};

/// The detector's name and its score column's.
pub const NAME: &str = "sentinet";

/// Largest number of clean overlays or inert patterns accepted (the reference uses 100 each).
pub const MAX_PATTERNS: usize = 10_000;

/// SentiNet's settings, with the reference's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SentinetSettings {
    /// Grad-CAM value (after min-max scaling to `[0, 1]`) from which a pixel belongs to the
    /// salient region (BackdoorBench `mask_cond`: 0.85).
    pub mask_threshold: f64,
    /// Clean images the region is pasted onto, split evenly over the model's classes, at least
    /// one per class (BackdoorBench `clean_sample_num`: 100). Drawn from the sampling set.
    pub clean_samples: usize,
    /// Uniform-noise images the region is pasted onto (the reference uses as many as clean
    /// images: 100).
    pub inert_patterns: usize,
    /// Trusted inputs whose points fit the decision boundary (Beatrix `n_test`: 200).
    pub boundary_inputs: usize,
    /// Width of the confidence bins the boundary points are picked from (Beatrix
    /// `DecisionBoundary.step`: 0.04).
    pub bin_width: f64,
    /// Points with the highest fooled fraction kept per bin (Beatrix: 2).
    pub points_per_bin: usize,
}

impl Default for SentinetSettings {
    fn default() -> Self {
        Self {
            mask_threshold: 0.85,
            clean_samples: 100,
            inert_patterns: 100,
            boundary_inputs: 200,
            bin_width: 0.04,
            points_per_bin: 2,
        }
    }
}

/// SentiNet with checked settings.
#[derive(Debug, Clone)]
pub struct Sentinet {
    settings: SentinetSettings,
}

impl Sentinet {
    /// Checks `settings`: a threshold in `(0, 1]`, a bin width in `(0, 1]`, and at least one
    /// (at most [`MAX_PATTERNS`]) of every count.
    pub fn new(settings: SentinetSettings) -> Result<Self, DetectError> {
        let bad = |reason: String| DetectError::Settings {
            detector: NAME.into(),
            reason,
        };
        let s = &settings;
        if !(s.mask_threshold > 0.0 && s.mask_threshold <= 1.0) {
            return Err(bad(format!(
                "mask_threshold must be in (0, 1], got {}",
                s.mask_threshold
            )));
        }
        if !(s.bin_width > 0.0 && s.bin_width <= 1.0) {
            return Err(bad(format!(
                "bin_width must be in (0, 1], got {}",
                s.bin_width
            )));
        }
        for (name, value) in [
            ("clean_samples", s.clean_samples),
            ("inert_patterns", s.inert_patterns),
            ("boundary_inputs", s.boundary_inputs),
            ("points_per_bin", s.points_per_bin),
        ] {
            if value == 0 || value > MAX_PATTERNS {
                return Err(bad(format!(
                    "{name} must be between 1 and {MAX_PATTERNS}, got {value}"
                )));
            }
        }
        Ok(Self { settings })
    }
}

/// An input's place in the reference's plane.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanePoint {
    /// Mean maximum softmax probability of the region pasted onto the inert patterns.
    pub confidence: f64,
    /// Fraction of the clean overlays the region switches to the input's predicted class.
    pub fooled: f64,
}

/// SentiNet fitted: the overlays, the inert patterns and the decision boundary.
pub struct FittedSentinet {
    mask_threshold: f64,
    /// Clean images the region is pasted onto.
    overlays: ImageSet,
    /// Inert patterns, `[n, c, h, w]` pixels.
    inert: Vec<f32>,
    batch_size: usize,
    /// The boundary fitted on trusted inputs' points.
    pub boundary: BoundaryCurve,
    /// The trusted inputs' points the boundary was fitted on.
    pub trusted_points: Vec<PlanePoint>,
}

impl Detector for Sentinet {
    fn name(&self) -> &str {
        NAME
    }

    fn fit(&self, data: &FitData<'_>) -> Result<Box<dyn FittedDetector>, DetectError> {
        let s = &self.settings;
        let fail = |reason: String| DetectError::Fit {
            detector: NAME.into(),
            reason,
        };
        let spec = &data.model.spec;
        for set in [data.trusted, data.sampling] {
            set.check_model_input(spec.input_shape, spec.num_classes())?;
        }
        if data.trusted.is_empty() {
            return Err(fail("the trusted set is empty".into()));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(data.seed ^ 0x5E47_1E75);
        // BackdoorBench: `clean_sample_num / num_classes` images of each class, at least one.
        let per_class = (s.clean_samples / spec.num_classes()).max(1);
        let mut chosen = Vec::new();
        for mut indices in data.sampling.indices_by_class() {
            indices.shuffle(&mut rng);
            chosen.extend(indices.into_iter().take(per_class));
        }
        if chosen.is_empty() {
            return Err(fail(
                "the sampling set has no clean images to paste regions onto".into(),
            ));
        }
        chosen.sort_unstable();
        let overlays = data.sampling.subset(&chosen);
        let [c, h, w] = spec.input_shape;
        let values = s.inert_patterns * c * h * w;
        let inert = (0..values).map(|_| rng.random::<f32>()).collect();
        let mut boundary_indices: Vec<usize> = (0..data.trusted.len()).collect();
        boundary_indices.shuffle(&mut rng);
        boundary_indices.truncate(s.boundary_inputs);
        boundary_indices.sort_unstable();
        let mut fitted = FittedSentinet {
            mask_threshold: s.mask_threshold,
            overlays,
            inert,
            batch_size: data.batch_size.max(1),
            boundary: BoundaryCurve {
                coefficients: [0.0; 3],
            },
            trusted_points: Vec::new(),
        };
        let trusted_points = fitted.points(
            data.model,
            &data.trusted.subset(&boundary_indices),
            data.device,
        )?;
        fitted.boundary = BoundaryCurve::fit(&trusted_points, s.bin_width, s.points_per_bin)?;
        fitted.trusted_points = trusted_points;
        Ok(Box::new(fitted))
    }
}

impl FittedDetector for FittedSentinet {
    fn name(&self) -> &str {
        NAME
    }

    fn columns(&self) -> Vec<String> {
        vec![NAME.into()]
    }

    fn score(
        &self,
        model: &Classifier,
        inputs: &ImageSet,
        device: &Device,
    ) -> Result<ScoreTable, DetectError> {
        let points = self.points(model, inputs, device)?;
        let scores = points
            .iter()
            .map(|&p| self.boundary.signed_distance(p))
            .collect();
        ScoreTable::new(vec![(NAME.into(), scores)])
    }
}

impl FittedSentinet {
    /// Every input's [`PlanePoint`] (labels not read).
    pub fn points(
        &self,
        model: &Classifier,
        inputs: &ImageSet,
        device: &Device,
    ) -> Result<Vec<PlanePoint>, DetectError> {
        let spec = &model.spec;
        inputs.check_model_input(spec.input_shape, spec.num_classes())?;
        let plain = device.clone().inner();
        let inference = model.for_inference();
        let shape = inputs.shape();
        let [_, height, width] = spec.input_shape;
        let image_len = shape.num_values();
        let n_overlays = self.overlays.len();
        let n_inert = self.inert.len() / image_len;
        let mut points = Vec::with_capacity(inputs.len());
        let all: Vec<usize> = (0..inputs.len()).collect();
        let differentiable = frozen(model, device);
        for chunk in all.chunks(self.batch_size) {
            let cams = grad_cam_of_frozen(&differentiable, images_tensor(inputs, chunk, &plain));
            // Every (input, pasted image) pair of the chunk, classified in batches.
            let mut fooled = vec![0usize; chunk.len()];
            let mut confidence = vec![0.0f64; chunk.len()];
            let masks: Vec<Vec<bool>> = (0..chunk.len())
                .map(|k| {
                    let map = resize_bilinear(cams.map(k), cams.height, cams.width, height, width);
                    salient_mask(&map, self.mask_threshold)
                })
                .collect();
            let jobs: Vec<(usize, usize)> = (0..chunk.len())
                .flat_map(|k| (0..n_overlays + n_inert).map(move |j| (k, j)))
                .collect();
            for batch in jobs.chunks(self.batch_size) {
                let mut pixels = Vec::with_capacity(batch.len() * image_len);
                for &(k, j) in batch {
                    let background = if j < n_overlays {
                        self.overlays.image(j)
                    } else {
                        let start = (j - n_overlays) * image_len;
                        &self.inert[start..start + image_len]
                    };
                    superimpose(inputs.image(chunk[k]), &masks[k], background, &mut pixels);
                }
                let x = Tensor::<4>::from_data(
                    TensorData::new(pixels, [batch.len(), shape.channels, height, width]),
                    &plain,
                );
                let logits = inference.forward(x, BnMode::Eval);
                let predicted: Vec<i64> = logits.clone().argmax(1).into_data().iter().collect();
                let top: Vec<f32> = softmax(logits, 1).max_dim(1).into_data().iter().collect();
                for ((&(k, j), &p), &c) in batch.iter().zip(&predicted).zip(&top) {
                    if j < n_overlays {
                        fooled[k] += usize::from(usize::try_from(p) == Ok(cams.predicted[k]));
                    } else {
                        confidence[k] += f64::from(c);
                    }
                }
            }
            points.extend(fooled.iter().zip(&confidence).map(|(&f, &c)| PlanePoint {
                confidence: c / n_inert.max(1) as f64,
                fooled: f as f64 / n_overlays.max(1) as f64,
            }));
        }
        Ok(points)
    }
}

/// Grad-CAM maps at the last convolution's resolution, one per image.
#[derive(Debug, Clone, PartialEq)]
pub struct CoarseCams {
    /// Each image's predicted class (the class its map explains).
    pub predicted: Vec<usize>,
    /// `[n, height, width]` map values, `>= 0`.
    pub maps: Vec<f32>,
    /// Rows of a map.
    pub height: usize,
    /// Columns of a map.
    pub width: usize,
}

impl CoarseCams {
    /// Map `k`, row-major.
    pub fn map(&self, k: usize) -> &[f32] {
        let len = self.height * self.width;
        &self.maps[k * len..(k + 1) * len]
    }
}

/// Grad-CAM (Selvaraju et al. 2017, as `pytorch_grad_cam.GradCAM`) of each `[0, 1]` image's
/// predicted class at the model's last convolution: `relu(sum_k w_k A_k)`, `A_k` channel `k` of
/// that convolution's output and `w_k` the mean over positions of the class logit's gradient
/// with respect to `A_k`. BatchNorm in eval mode.
pub fn grad_cam(model: &Classifier, images: Tensor<4>, device: &Device) -> CoarseCams {
    grad_cam_of_frozen(&frozen(model, device), images)
}

/// [`grad_cam`] with a model already [`frozen`] on an autodiff device.
fn grad_cam_of_frozen(model: &Classifier, images: Tensor<4>) -> CoarseCams {
    let x = images.without_autodiff().autodiff();
    let (last_conv, rest) = model.split_at_last_conv(x, BnMode::Eval);
    let last_conv = last_conv.detach().require_grad();
    let logits = rest(last_conv.clone());
    let predicted_tensor = logits.clone().argmax(1);
    let predicted: Vec<usize> = predicted_tensor
        .clone()
        .into_data()
        .iter::<i64>()
        .map(|p| usize::try_from(p).unwrap_or(usize::MAX))
        .collect();
    let grads = logits.gather(1, predicted_tensor).sum().backward();
    let activation = last_conv.clone().without_autodiff();
    let gradient = last_conv
        .grad(&grads)
        .unwrap_or_else(|| activation.zeros_like());
    let weights = gradient.mean_dim(3).mean_dim(2);
    let maps = relu((activation * weights).sum_dim(1));
    let [_, _, height, width] = maps.dims();
    CoarseCams {
        predicted,
        maps: maps.into_data().iter::<f32>().collect(),
        height,
        width,
    }
}

/// Resizes a row-major `from_h x from_w` map to `to_h x to_w` the way `cv2.resize` does with
/// `INTER_LINEAR`: pixel centres aligned (`src = (dst + 0.5) * scale - 0.5`), coordinates
/// clamped to the map at the edges.
pub fn resize_bilinear(
    map: &[f32],
    from_h: usize,
    from_w: usize,
    to_h: usize,
    to_w: usize,
) -> Vec<f32> {
    // Per output coordinate: the two source indices and the weight of the second.
    let taps = |from: usize, to: usize| -> Vec<(usize, usize, f64)> {
        let scale = from as f64 / to as f64;
        (0..to)
            .map(|d| {
                let f = (d as f64 + 0.5) * scale - 0.5;
                let s = f.floor();
                let (s, w) = if s < 0.0 {
                    (0, 0.0)
                } else if s as usize >= from - 1 {
                    (from - 1, 0.0)
                } else {
                    (s as usize, f - s)
                };
                (s, (s + 1).min(from - 1), w)
            })
            .collect()
    };
    if map.is_empty() || from_h * from_w != map.len() {
        return vec![0.0; to_h * to_w];
    }
    let rows = taps(from_h, to_h);
    let cols = taps(from_w, to_w);
    let at = |r: usize, c: usize| f64::from(map[r * from_w + c]);
    let mut out = Vec::with_capacity(to_h * to_w);
    for &(r0, r1, wr) in &rows {
        for &(c0, c1, wc) in &cols {
            let top = at(r0, c0) * (1.0 - wc) + at(r0, c1) * wc;
            let bottom = at(r1, c0) * (1.0 - wc) + at(r1, c1) * wc;
            out.push((top * (1.0 - wr) + bottom * wr) as f32);
        }
    }
    out
}

/// The salient region of a map: scaled to `[0, 1]` by its minimum and maximum, the pixels at or
/// above `threshold`. A constant map (no evidence anywhere) has an empty region.
pub fn salient_mask(map: &[f32], threshold: f64) -> Vec<bool> {
    let (lo, hi) = map
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let range = f64::from(hi) - f64::from(lo);
    if range.is_nan() || range <= 0.0 {
        return vec![false; map.len()];
    }
    map.iter()
        .map(|&v| (f64::from(v) - f64::from(lo)) / range >= threshold)
        .collect()
}

/// Appends `input` inside `mask` and `background` outside it (the reference's
/// `background * mask + overlay * (1 - mask)`, the suspect input as its "background"): `mask`
/// has one entry per pixel position and applies to every channel.
pub fn superimpose(input: &[f32], mask: &[bool], background: &[f32], out: &mut Vec<f32>) {
    let positions = mask.len().max(1);
    out.extend(
        input
            .iter()
            .zip(background)
            .enumerate()
            .map(|(i, (&x, &b))| {
                if mask.get(i % positions).copied().unwrap_or(false) {
                    x
                } else {
                    b
                }
            }),
    );
}

/// The decision boundary `fooled = a conf² + b conf + c` over clean inputs' points.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoundaryCurve {
    /// `[a, b, c]`.
    pub coefficients: [f64; 3],
}

impl BoundaryCurve {
    /// Beatrix's `DecisionBoundary`: in every confidence bin `(i w, (i + 1) w]` the
    /// `per_bin` points with the highest fooled fraction, then the least-squares quadratic
    /// through them (a line or a constant if they have fewer than three distinct confidences).
    pub fn fit(points: &[PlanePoint], bin_width: f64, per_bin: usize) -> Result<Self, DetectError> {
        let boundary = boundary_points(points, bin_width, per_bin);
        let coefficients = least_squares_quadratic(&boundary).ok_or_else(|| DetectError::Fit {
            detector: NAME.into(),
            reason: format!(
                "no boundary can be fitted to {} trusted points with a finite confidence in (0, 1]",
                points.len()
            ),
        })?;
        Ok(Self { coefficients })
    }

    /// The curve's fooled fraction at confidence `x`.
    pub fn at(&self, x: f64) -> f64 {
        let [a, b, c] = self.coefficients;
        (a * x + b) * x + c
    }

    /// Euclidean distance from `p` to the nearest point of the curve, positive when `p` lies
    /// above it (more fooled than the curve), negative below.
    pub fn signed_distance(&self, p: PlanePoint) -> f64 {
        let (px, py) = (p.confidence, p.fooled);
        let vertical = py - self.at(px);
        if vertical == 0.0 || !vertical.is_finite() {
            return vertical;
        }
        let [a, b, c] = self.coefficients;
        // The nearest point (x, f(x)) zeroes the derivative of the squared distance, a cubic:
        // (x - px) + (f(x) - py) f'(x) = 0. It lies within |vertical| of px (the point straight
        // below or above p is that close).
        let q = c - py;
        let cubic = [
            2.0 * a * a,
            3.0 * a * b,
            b * b + 2.0 * a * q + 1.0,
            b * q - px,
        ];
        let reach = vertical.abs();
        let squared = |x: f64| (x - px).powi(2) + (self.at(x) - py).powi(2);
        let nearest = real_roots_in(cubic, px - reach, px + reach)
            .into_iter()
            .map(squared)
            .fold(vertical * vertical, f64::min);
        nearest.sqrt().copysign(vertical)
    }
}

/// The points Beatrix's `DecisionBoundary.boundary_sample` keeps: per confidence bin
/// `(i w, (i + 1) w]`, the `per_bin` with the highest fooled fraction. Points with a confidence
/// outside `(0, 1]` or not finite fall in no bin.
fn boundary_points(points: &[PlanePoint], bin_width: f64, per_bin: usize) -> Vec<PlanePoint> {
    // Python's `range(0, int(1 / step + 1))`: the last bin reaches past 1.
    let bins = (1.0 / bin_width + 1.0) as usize;
    let mut kept = Vec::new();
    for i in 0..bins {
        let (lo, hi) = (bin_width * i as f64, bin_width * (i + 1) as f64);
        let mut bin: Vec<PlanePoint> = points
            .iter()
            .copied()
            .filter(|p| p.fooled.is_finite() && lo < p.confidence && p.confidence <= hi)
            .collect();
        // Stable, as numpy's argsort is on bins this small: of tied points the last are kept.
        bin.sort_by(|p, q| p.fooled.total_cmp(&q.fooled));
        let skip = bin.len().saturating_sub(per_bin);
        kept.extend_from_slice(&bin[skip..]);
    }
    kept
}

/// Least-squares `y = a x² + b x + c` through `points` (x = confidence, y = fooled), as
/// `[a, b, c]`; with fewer than three distinct x a line (`a = 0`) or a constant. `None` without
/// points.
fn least_squares_quadratic(points: &[PlanePoint]) -> Option<[f64; 3]> {
    let mut xs: Vec<f64> = points.iter().map(|p| p.confidence).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let mut degree = xs.len().checked_sub(1)?.min(2);
    loop {
        // Normal equations in the powers 0..=degree.
        let n = degree + 1;
        let mut m = vec![vec![0.0f64; n + 1]; n];
        for p in points {
            let powers: Vec<f64> = (0..n).map(|k| p.confidence.powi(k as i32)).collect();
            for r in 0..n {
                for c in 0..n {
                    m[r][c] += powers[r] * powers[c];
                }
                m[r][n] += powers[r] * p.fooled;
            }
        }
        if let Some(solution) = solve(m) {
            let mut out = [0.0; 3];
            for (k, v) in solution.into_iter().enumerate() {
                out[2 - k] = v;
            }
            return Some(out);
        }
        degree = degree.checked_sub(1)?;
    }
}

/// Solves an augmented `n x (n + 1)` system by Gaussian elimination with partial pivoting;
/// `None` if it is (numerically) singular.
fn solve(mut m: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let n = m.len();
    let scale = m
        .iter()
        .flat_map(|row| row[..n].iter())
        .fold(0.0f64, |s, v| s.max(v.abs()));
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        let size = m[pivot][col].abs();
        if size.is_nan() || size <= 1e-12 * scale {
            return None;
        }
        m.swap(col, pivot);
        let (upper, lower) = m.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for row in lower {
            let factor = row[col] / pivot_row[col];
            for (x, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= factor * p;
            }
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let tail: f64 = (row + 1..n).map(|k| m[row][k] * x[k]).sum();
        x[row] = (m[row][n] - tail) / m[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// The real roots in `[lo, hi]` of `c[0] x³ + c[1] x² + c[2] x + c[3]` (any leading
/// coefficient, zero included): the interval is cut at the polynomial's critical points into
/// monotone pieces, and each sign change is bisected to machine precision.
fn real_roots_in(c: [f64; 4], lo: f64, hi: f64) -> Vec<f64> {
    let value = |x: f64| ((c[0] * x + c[1]) * x + c[2]) * x + c[3];
    // Critical points: roots of 3 c0 x² + 2 c1 x + c2.
    let (qa, qb, qc) = (3.0 * c[0], 2.0 * c[1], c[2]);
    let mut cuts = vec![lo, hi];
    if qa != 0.0 {
        let disc = qb * qb - 4.0 * qa * qc;
        if disc >= 0.0 {
            let root = disc.sqrt();
            cuts.push((-qb - root) / (2.0 * qa));
            cuts.push((-qb + root) / (2.0 * qa));
        }
    } else if qb != 0.0 {
        cuts.push(-qc / qb);
    }
    cuts.retain(|x| x.is_finite() && *x >= lo && *x <= hi);
    cuts.sort_by(f64::total_cmp);
    let mut roots = Vec::new();
    for pair in cuts.windows(2) {
        let (mut a, mut b) = (pair[0], pair[1]);
        let (fa, fb) = (value(a), value(b));
        if fa == 0.0 {
            roots.push(a);
        }
        if fb == 0.0 {
            roots.push(b);
        }
        if fa.signum() * fb.signum() >= 0.0 {
            continue;
        }
        let rising = fb > fa;
        for _ in 0..200 {
            let mid = 0.5 * (a + b);
            if mid <= a || mid >= b {
                break;
            }
            if (value(mid) > 0.0) == rising {
                b = mid;
            } else {
                a = mid;
            }
        }
        roots.push(0.5 * (a + b));
    }
    roots
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, ModuleMapper, Param};

    use super::*;
    use crate::data::ImageShape;
    use crate::device::default_device;
    use crate::models::host_init::redraw;
    use crate::models::{Architecture, ModelSpec};

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// A one-channel 8x8 small CNN (width 1) with every parameter given, in burn's visiting
    /// order: conv1 weight and bias, conv2 weight and bias, fc1 weight (`[in, out]`) and bias,
    /// fc2 weight and bias.
    fn hand_model(hidden: usize, classes: usize, values: Vec<Vec<f32>>) -> Classifier {
        struct Set(std::vec::IntoIter<Vec<f32>>);
        impl ModuleMapper for Set {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let next = self.0.next().unwrap();
                redraw(param, |dims| {
                    assert_eq!(dims.iter().product::<usize>(), next.len(), "{dims:?}");
                    next
                })
            }
        }
        let spec = ModelSpec {
            architecture: Architecture::SmallCnn { width: 1, hidden },
            input_shape: [1, 8, 8],
            class_names: (0..classes).map(|c| format!("c{c}")).collect(),
            normalization: None,
        };
        let mut model = Classifier::new(spec, &default_device()).unwrap();
        model.network = model.network.map(&mut Set(values.into_iter()));
        model
    }

    fn one_hot(len: usize, at: &[(usize, f32)]) -> Vec<f32> {
        let mut v = vec![0.0; len];
        for &(i, x) in at {
            v[i] = x;
        }
        v
    }

    fn set(images: Vec<Vec<f32>>, labels: Vec<u16>, classes: usize) -> ImageSet {
        ImageSet::new(
            images.concat(),
            labels,
            ImageShape::new(1, 8, 8),
            (0..classes).map(|c| format!("c{c}")).collect(),
            "test",
        )
        .unwrap()
    }

    // The reference constants below come from `tests/fixtures/reference/sentinet_ref.py`.

    #[test]
    fn resize_is_cv2_inter_linear() {
        // cv2.resize(np.array([[0, 1], [2, 3]], np.float32), (4, 4)), opencv-python 5.1.0.
        let got = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        let expected = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        assert_eq!(got, expected);
        // A non-integer ratio, rows and columns apart: b = np.arange(9, dtype=np.float32)
        // .reshape(3, 3) ** 1.5; cv2.resize(b, (5, 7)) (width 5, height 7).
        let b: Vec<f32> = (0..9).map(|i| (i as f32).powf(1.5)).collect();
        let expected: [f64; 35] = [
            0.0,
            0.4,
            1.0,
            2.097_056_4,
            2.828_427,
            0.742_307_5,
            1.245_384_6,
            2.0,
            3.212_934_7,
            4.021_557_3,
            2.969_230_2,
            3.781_538_2,
            5.0,
            6.560_569_8,
            7.600_948_8,
            5.196_152_7,
            6.317_691_8,
            8.0,
            9.908_204,
            11.180_34,
            9.267_918,
            10.564_224,
            12.508_682,
            14.655_21,
            16.086_23,
            13.339_684,
            14.810_757,
            17.017_365,
            19.402_218,
            20.992_12,
            14.696_939,
            16.226_267,
            18.520_258,
            20.984_552,
            22.627_417,
        ];
        let got = resize_bilinear(&b, 3, 3, 7, 5);
        for (g, e) in got.iter().zip(expected) {
            assert!((f64::from(*g) - e).abs() < 1e-4, "{got:?}");
        }
        // Same size is the identity; a map of the wrong length is all zeros, not a panic.
        assert_eq!(resize_bilinear(&b, 3, 3, 3, 3), b);
        assert_eq!(resize_bilinear(&b, 2, 2, 2, 2), vec![0.0; 4]);
    }

    #[test]
    fn the_salient_region_is_the_top_of_the_min_max_scaled_map() {
        // Scaled: 0, 0.25, 0.5, 0.925, 1 -> at 0.85 the last two.
        let mask = salient_mask(&[1.0, 2.0, 3.0, 4.7, 5.0], 0.85);
        assert_eq!(mask, [false, false, false, true, true]);
        // No evidence anywhere: no region (pytorch-grad-cam's zeros, not NaN).
        assert_eq!(salient_mask(&[0.0; 4], 0.85), [false; 4]);
        assert_eq!(salient_mask(&[], 0.85), Vec::<bool>::new());
    }

    #[test]
    fn superimposing_keeps_the_input_inside_the_region_on_every_channel() {
        // Two channels of 2x2: the mask covers positions 0 and 3.
        let input = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let background = [-1.0; 8];
        let mut out = Vec::new();
        superimpose(&input, &[true, false, false, true], &background, &mut out);
        assert_eq!(out, [1.0, -1.0, -1.0, 4.0, 5.0, -1.0, -1.0, 8.0]);
    }

    /// Image with pixel (r, c) = 0.01 (8 r + c), its top-left 2x2 block set to 1.
    fn ramp_with_bright_corner() -> Vec<f32> {
        let mut image: Vec<f32> = (0..64).map(|i| 0.01 * i as f32).collect();
        for i in [0, 1, 8, 9] {
            image[i] = 1.0;
        }
        image
    }

    #[test]
    fn grad_cam_matches_a_hand_computed_map() {
        // conv1 = identity, so after ReLU and the 2x2 pool P[i][j] = image[2i+1][2j+1]
        // (P[0][0] = 1). conv2: channel 0 = P, channel 1 = P shifted down-right by one + 0.5.
        // fc1: h = relu(pool(A0)[top-left] - 0.5 pool(A1)[bottom-right]) = 1 - 0.5 (P[2][2] +
        // 0.5) = 0.525; fc2: logits [0.5 - h, h], class 1. Every 2x2 window of A0 and A1 has one
        // maximum (the ramp), so d logit1 / d A0 = 1 at A0's top-left window maximum (0, 0),
        // d logit1 / d A1 = -0.5 at A1's bottom-right window maximum (3, 3), zero elsewhere:
        // weights 1/16 and -0.5/16, and cam = relu(A0 - 0.5 A1) / 16.
        let mut conv2 = vec![0.0; 18];
        conv2[4] = 1.0;
        conv2[9] = 1.0;
        let model = hand_model(
            1,
            2,
            vec![
                one_hot(9, &[(4, 1.0)]),
                vec![0.0],
                conv2,
                vec![0.0, 0.5],
                one_hot(8, &[(0, 1.0), (7, -0.5)]),
                vec![0.0],
                vec![-1.0, 1.0],
                vec![0.5, 0.0],
            ],
        );
        let image = ramp_with_bright_corner();
        let device = default_device();
        let x = Tensor::<4>::from_data(TensorData::new(image.clone(), [1, 1, 8, 8]), &device);
        let cams = grad_cam(&model, x, &device);
        assert_eq!(cams.predicted, [1]);
        assert_eq!((cams.height, cams.width), (4, 4));
        let p = |i: isize, j: isize| -> f64 {
            if i < 0 || j < 0 {
                0.0
            } else {
                f64::from(image[((2 * i + 1) * 8 + 2 * j + 1) as usize])
            }
        };
        for i in 0..4 {
            for j in 0..4 {
                let expected = (p(i, j) - 0.5 * (p(i - 1, j - 1) + 0.5)).max(0.0) / 16.0;
                let got = f64::from(cams.map(0)[(i * 4 + j) as usize]);
                assert!(
                    close(got, expected, 1e-6),
                    "({i}, {j}): {got} vs {expected}"
                );
            }
        }
        // The region at 0.85 of the map resized to the image is the bright corner's pixel:
        // cam[0][0] = 0.75 / 16 is the maximum and its neighbours fall below 0.85 once blended.
        let map = resize_bilinear(cams.map(0), 4, 4, 8, 8);
        let mask = salient_mask(&map, 0.85);
        assert!(mask[0]);
        assert_eq!(mask.iter().filter(|&&m| m).count(), 1, "{mask:?}");
    }

    #[test]
    fn grad_cam_reads_every_architecture_at_its_last_convolution() {
        // conv2 of the small CNN keeps the pooled 14x14 of a 28x28 input; both ResNets end at
        // 4x4 (28 -> 14 -> 7 -> 4). The split network gives forward's logits.
        let device = default_device();
        for (architecture, side) in [
            (
                Architecture::SmallCnn {
                    width: 2,
                    hidden: 4,
                },
                14,
            ),
            (Architecture::ResNet18 { width: 2 }, 4),
            (Architecture::PreActResNet18 { width: 2 }, 4),
            (Architecture::PreActResNet18Halo { width: 2 }, 4),
        ] {
            let spec = ModelSpec {
                architecture,
                input_shape: [1, 28, 28],
                class_names: vec!["a".into(), "b".into(), "c".into()],
                normalization: Some(crate::models::Normalization {
                    mean: vec![0.5],
                    std: vec![0.5],
                }),
            };
            let model = Classifier::new(spec, &device).unwrap();
            let pixels: Vec<f32> = (0..2 * 784)
                .map(|i| ((i * 31) % 97) as f32 / 97.0)
                .collect();
            let x = Tensor::<4>::from_data(TensorData::new(pixels, [2, 1, 28, 28]), &device);
            let (last_conv, rest) = model.split_at_last_conv(x.clone(), BnMode::Eval);
            let split: Vec<f32> = rest(last_conv).into_data().iter().collect();
            let direct: Vec<f32> = model
                .forward(x.clone(), BnMode::Eval)
                .into_data()
                .iter()
                .collect();
            assert_eq!(split, direct);
            let cams = grad_cam(&model, x, &device);
            assert_eq!((cams.height, cams.width), (side, side));
            assert_eq!(cams.maps.len(), 2 * side * side);
            assert!(cams.maps.iter().all(|v| v.is_finite() && *v >= 0.0));
            assert!(cams.predicted.iter().all(|&p| p < 3));
        }
    }

    /// Confidence and fooled fraction of 40 points, from
    /// `rng = np.random.default_rng(0); conf = np.round(rng.uniform(0.3, 0.95, 40), 4);
    /// fooled = np.round(rng.uniform(0, 0.6, 40) * (1.2 - conf), 2)` (numpy 2.4.6).
    fn scipy_points() -> Vec<PlanePoint> {
        let conf = [
            0.714, 0.4754, 0.3266, 0.3107, 0.8286, 0.8933, 0.6943, 0.7742, 0.6534, 0.9078, 0.8303,
            0.3018, 0.8573, 0.3218, 0.7743, 0.4142, 0.8611, 0.6519, 0.4948, 0.5747, 0.3184, 0.3808,
            0.7359, 0.7207, 0.7, 0.5494, 0.9482, 0.9375, 0.7456, 0.7228, 0.7475, 0.5528, 0.3878,
            0.769, 0.6415, 0.5017, 0.6158, 0.8782, 0.9071, 0.5326,
        ];
        let fooled = [
            0.17, 0.14, 0.31, 0.18, 0.09, 0.16, 0.07, 0.16, 0.03, 0.15, 0.17, 0.13, 0.18, 0.03,
            0.09, 0.07, 0.09, 0.26, 0.1, 0.02, 0.21, 0.1, 0.03, 0.17, 0.09, 0.26, 0.03, 0.15, 0.1,
            0.03, 0.17, 0.36, 0.21, 0.25, 0.17, 0.18, 0.22, 0.19, 0.17, 0.18,
        ];
        conf.iter()
            .zip(fooled)
            .map(|(&confidence, fooled)| PlanePoint { confidence, fooled })
            .collect()
    }

    #[test]
    fn the_boundary_is_beatrix_decision_boundary_and_distances_are_exact() {
        // Beatrix's boundary_sample (bins of 0.04, top two by fooled, numpy's stable argsort)
        // keeps 30 points; scipy.optimize.curve_fit(lambda x, a, b, c: a*x**2 + b*x + c, ...)
        // (scipy 1.17.1) gives [-0.4097536217410176, 0.4747270405653936, 0.046290678796543076],
        // the least-squares solution to its tolerance (1.5e-8); np.polyfit(x, y, 2), exact:
        let curve = BoundaryCurve::fit(&scipy_points(), 0.04, 2).unwrap();
        assert_eq!(boundary_points(&scipy_points(), 0.04, 2).len(), 30);
        let expected = [
            -0.409_753_618_506_319_5,
            0.474_727_035_007_190_8,
            0.046_290_681_091_464_03,
        ];
        for (got, want) in curve.coefficients.iter().zip(expected) {
            assert!(close(*got, want, 1e-12), "{:?}", curve.coefficients);
        }
        // Signed distances to that curve by brute force (a grid of 400001 points over
        // [px - 2, px + 2], then scipy.optimize.minimize_scalar around the best), negative
        // below the curve.
        for (p, want) in [
            ((0.5, 0.9), 0.717_830_476_284_421_8),
            ((0.92, 1.0), 0.844_399_863_748_995_6),
            ((0.4, 0.0), -0.168_527_916_501_997_78),
            ((0.7, 0.2), 0.022_073_816_076_123_225),
            ((0.99, 0.05), -0.061_137_910_300_522_41),
        ] {
            let got = curve.signed_distance(PlanePoint {
                confidence: p.0,
                fooled: p.1,
            });
            assert!(close(got, want, 1e-9), "{p:?}: {got} vs {want}");
        }
    }

    #[test]
    fn too_few_boundary_points_give_a_line_or_a_constant() {
        let point = |confidence, fooled| PlanePoint { confidence, fooled };
        // One bin: the two highest (0.5 and 0.3 at 0.51, 0.52): a line through both.
        let line = BoundaryCurve::fit(
            &[point(0.51, 0.5), point(0.52, 0.3), point(0.515, 0.1)],
            0.04,
            2,
        )
        .unwrap();
        assert!(close(line.coefficients[0], 0.0, 1e-12));
        assert!(close(line.at(0.51), 0.5, 1e-9) && close(line.at(0.52), 0.3, 1e-9));
        // One confidence: the mean fooled fraction of the points kept.
        let flat = BoundaryCurve::fit(&[point(0.9, 0.2), point(0.9, 0.4)], 0.04, 2).unwrap();
        assert_eq!(flat.coefficients, [0.0, 0.0, 0.30000000000000004]);
        assert_eq!(flat.signed_distance(point(0.2, 0.8)), 0.5);
        assert!(close(flat.signed_distance(point(0.2, 0.1)), -0.2, 1e-15));
        // Nothing in (0, 1]: refused, not a NaN curve.
        let err = BoundaryCurve::fit(&[point(f64::NAN, 0.2)], 0.04, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no boundary can be fitted"), "{err}");
    }

    #[test]
    fn settings_are_checked_once() {
        assert!(Sentinet::new(SentinetSettings::default()).is_ok());
        for (settings, what) in [
            (
                SentinetSettings {
                    mask_threshold: 0.0,
                    ..Default::default()
                },
                "mask_threshold",
            ),
            (
                SentinetSettings {
                    mask_threshold: f64::NAN,
                    ..Default::default()
                },
                "mask_threshold",
            ),
            (
                SentinetSettings {
                    bin_width: 1.5,
                    ..Default::default()
                },
                "bin_width",
            ),
            (
                SentinetSettings {
                    clean_samples: 0,
                    ..Default::default()
                },
                "clean_samples",
            ),
            (
                SentinetSettings {
                    inert_patterns: MAX_PATTERNS + 1,
                    ..Default::default()
                },
                "inert_patterns",
            ),
            (
                SentinetSettings {
                    points_per_bin: 0,
                    ..Default::default()
                },
                "points_per_bin",
            ),
        ] {
            let err = Sentinet::new(settings).unwrap_err().to_string();
            assert!(err.contains("sentinet") && err.contains(what), "{err}");
        }
    }

    /// Three classes on 8x8 images: `a` = bright bottom-left quadrant, `b` = bright
    /// bottom-right, `t` = a bright top-left pixel (the trigger). After the identity convolutions
    /// and both pools the features are the quadrants' maxima; h_a = relu(BL - BR),
    /// h_b = relu(BR - BL), h_t = relu(TL - 0.7); logits 4 h_a, 4 h_b, 20 h_t.
    fn quadrant_model() -> Classifier {
        let mut fc1 = vec![0.0; 24];
        for (input, output, w) in [(2, 0, 1.0), (3, 0, -1.0), (3, 1, 1.0), (2, 1, -1.0)] {
            fc1[input * 3 + output] = w;
        }
        fc1[2] = 1.0;
        hand_model(
            3,
            3,
            vec![
                one_hot(9, &[(4, 1.0)]),
                vec![0.0],
                one_hot(18, &[(4, 1.0)]),
                vec![0.0, 0.0],
                fc1,
                vec![0.0, 0.0, -0.7],
                one_hot(9, &[(0, 4.0), (4, 4.0), (8, 20.0)]),
                vec![0.0; 3],
            ],
        )
    }

    /// A clean image of class `class` (0: bottom-left bright, 1: bottom-right), with a little
    /// variation from `salt`, and the trigger pixel (0, 0) if asked.
    fn quadrant_image(class: usize, salt: usize, trigger: bool) -> Vec<f32> {
        let mut image = vec![0.0; 64];
        for (i, p) in image.iter_mut().enumerate() {
            let (r, c) = (i / 8, i % 8);
            let bright = r >= 4 && (c < 4) == (class == 0);
            let jitter = ((i * 7 + salt * 13) % 11) as f32 / 200.0;
            *p = if bright { 0.6 } else { 0.1 } - jitter;
        }
        if trigger {
            image[0] = 1.0;
        }
        image
    }

    fn quadrant_set(n: usize, salt: usize, trigger: bool) -> ImageSet {
        set(
            (0..n)
                .map(|i| quadrant_image(i % 2, salt + i, trigger))
                .collect(),
            (0..n).map(|i| (i % 2) as u16).collect(),
            3,
        )
    }

    #[test]
    fn sentinet_flags_a_pasted_trigger_and_never_reads_labels() {
        let model = quadrant_model();
        let device = default_device();
        let trusted = quadrant_set(12, 0, false);
        let sampling = quadrant_set(20, 100, false);
        let detector = Sentinet::new(SentinetSettings {
            inert_patterns: 30,
            ..Default::default()
        })
        .unwrap();
        let fitted = detector
            .fit(&FitData {
                model: &model,
                trusted: &trusted,
                sampling: &sampling,
                batch_size: 7,
                seed: 1,
                device: &device,
            })
            .unwrap();
        assert_eq!(fitted.columns(), ["sentinet"]);
        let mut inputs = quadrant_set(8, 50, false);
        inputs.append(&quadrant_set(8, 60, true)).unwrap();
        let table = fitted.score(&model, &inputs, &device).unwrap();
        let scores = table.column("sentinet").unwrap();
        // Clean inputs' Grad-CAM cancels (their class logit rises with one quadrant and falls
        // with the other): no region, so the overlays keep their own classes and half of them
        // are the input's; the trigger pasted onto any clean image makes it `t`.
        let (clean, triggered) = scores.split_at(8);
        let highest_clean = clean.iter().copied().fold(f64::MIN, f64::max);
        let lowest_triggered = triggered.iter().copied().fold(f64::MAX, f64::min);
        assert!(
            lowest_triggered > highest_clean + 0.4,
            "clean {clean:?}, triggered {triggered:?}"
        );
        // Scoring again gives the same table (overlays and noise fixed at fit), and the inputs'
        // labels are not read.
        assert_eq!(fitted.score(&model, &inputs, &device).unwrap(), table);
        let mut relabelled = inputs.clone();
        for i in 0..relabelled.len() {
            relabelled.set_label(i, 2).unwrap();
        }
        assert_eq!(fitted.score(&model, &relabelled, &device).unwrap(), table);
        // No inputs, no scores; inputs of another shape are refused, not a panic.
        let empty = inputs.subset(&[]);
        assert!(fitted.score(&model, &empty, &device).unwrap().is_empty());
        let wrong = ImageSet::new(
            vec![0.5; 16],
            vec![0],
            ImageShape::new(1, 4, 4),
            vec!["a".into()],
            "small",
        )
        .unwrap();
        let err = fitted
            .score(&model, &wrong, &device)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("4x4"), "{err}");
    }

    #[test]
    fn fitting_needs_trusted_and_sampling_images() {
        let model = quadrant_model();
        let device = default_device();
        let some = quadrant_set(4, 0, false);
        let none = some.subset(&[]);
        let detector = Sentinet::new(SentinetSettings::default()).unwrap();
        for (trusted, sampling, what) in [
            (&none, &some, "the trusted set is empty"),
            (&some, &none, "no clean images"),
        ] {
            let err = detector
                .fit(&FitData {
                    model: &model,
                    trusted,
                    sampling,
                    batch_size: 4,
                    seed: 0,
                    device: &device,
                })
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(what), "{err}");
        }
    }
}
