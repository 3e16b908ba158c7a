//! MAD-FA's score as a differentiable function of the input, through linearised traces: what an
//! attack on the detector (an adaptive attack) or an attacked OOD benchmark needs.
//!
//! With the chain's displacements `d_k = w_k - w*` (rows of `D`, one per kept draw), an input
//! `x` with label `y` (the model's prediction at w*, held fixed) has the linearised trace
//!
//! ```text
//! t_k(x) = l(x) + g(x) . d_k,      l(x) = L(x, y; w*),   g(x) = grad_w L(x, y; w*)
//! ```
//!
//! and a score `s(t)` (the negated couplings with the fixed trusted traces). By the chain rule,
//! with `a = ds/dt`,
//!
//! ```text
//! grad_x s = (sum_k a_k) grad_x l(x)  +  grad_x [ g(x) . v ],      v = D^T a
//! ```
//!
//! The first term is one input gradient. The second is a mixed second derivative: `g(x) . v` is
//! the derivative of the loss along the weight direction `v`, so its input gradient is the
//! derivative along `v` of the input gradient, taken here as a central difference in weight
//! space (burn has no second-order autodiff):
//!
//! ```text
//! grad_x [g(x) . v] ~ |v| (grad_x L(x; w* + h v/|v|) - grad_x L(x; w* - h v/|v|)) / (2h)
//! ```
//!
//! with error `O(h^2)`. Only parameters move (buffers such as BatchNorm's running statistics
//! have no gradient, so `g` is zero there and they stay at w*). `a` is exact: the derivatives of
//! Pearson's correlation and Lin's concordance with the population moments and the `1e-8`
//! guards of [`scores`](super::scores), and of the class maximum at its arg-max class. The
//! whole is checked against central differences in the input in the tests; the derivation is
//! in docs/madfa.md, "The score as a function of the input".

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use ndarray::{Array2, Array3};

use super::MadError;
use super::chain::{ChainConfig, ChainOutcome, TraceForm, TraceInputs, TraceLoss, run_chain};
use super::linearised::{flat_len, sample_gradient, trainable_mask};
use super::scores::{AnomalyScores, EPSILON, TrustedScale, leave_one_out_scores};
use super::task::MadTask;
use super::traces::LossTraces;
use crate::data::ImageSet;
use crate::kernels::conv2d::{Mat, matmul_threaded};
use crate::models::{BnMode, Classifier};

/// Which of MAD-FA's scores the function computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputScore {
    /// `-` mean Pearson correlation with the trusted traces.
    MeanCorr,
    /// `-` class-level correlation.
    Clc,
    /// `-` class-level concordance.
    ClassCcc,
    /// CLC and Class CCC standardised by the trusted samples' leave-one-out scores, summed (the
    /// recommended score).
    ClcPlusClassCcc,
    /// `-` mean correlation with the most correlated trusted traces
    /// ([`super::scores::NEAREST_TRUSTED`] of them).
    NearestCorr,
}

impl InputScore {
    /// Its column in [`AnomalyScores::named`] and score tables.
    pub fn column(self) -> &'static str {
        match self {
            InputScore::MeanCorr => "mean_corr",
            InputScore::Clc => "clc",
            InputScore::ClassCcc => "class_ccc",
            InputScore::ClcPlusClassCcc => "clc_plus_class_ccc",
            InputScore::NearestCorr => "nearest_corr",
        }
    }
}

/// Default weight-space step `h` of the mixed derivative, in parameter units (the norm of the
/// weight perturbation): small against the weights, large against float32 rounding of the
/// input gradients.
pub const DEFAULT_WEIGHT_STEP: f64 = 1e-3;

/// Inputs whose traces are computed together when the trusted traces are made.
const TRACE_CHUNK: usize = 32;

/// MAD-FA's linearised score of single inputs, and its input gradient.
pub struct LinearisedScorer {
    /// w* on the plain device (predictions, and the copies the weight-space difference moves).
    w_star: Classifier,
    /// w* on the autodiff device tracking its parameters (per-sample weight gradients).
    tracked: Classifier,
    /// w* on the autodiff device with frozen parameters (input gradients).
    frozen: Classifier,
    /// Displacements `[draws, floats]`, row-major.
    displacements: Vec<f32>,
    draws: usize,
    floats: usize,
    /// Whether each float is a parameter (moves in the weight-space difference).
    trainable: Vec<bool>,
    /// Trusted traces `[n_trusted, draws]`.
    trusted: Array2<f64>,
    /// Trusted traces z-scored over draws.
    trusted_z: Array2<f64>,
    /// Members of every trusted class.
    classes: Vec<Vec<usize>>,
    scale: TrustedScale,
    /// The trusted samples scored leave-one-out against the others (thresholds).
    trusted_leave_one_out: AnomalyScores,
    form: TraceLoss,
    /// Weight-space step of the mixed derivative.
    pub weight_step: f64,
    device: Device,
}

/// Per-row mean and population variance of a trace.
fn moments(t: &[f64]) -> (f64, f64) {
    let k = t.len() as f64;
    let mean = t.iter().sum::<f64>() / k;
    (mean, t.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / k)
}

impl LinearisedScorer {
    /// A scorer for `w_star`, the displacements of a chain's kept draws (`[draws, floats]`
    /// row-major, as a linearised run records them) and the trusted images with their labels
    /// (the model's predictions at w*). The trusted traces are computed here, one per-sample
    /// gradient and one product with the displacements each, and rounded to float32 as a trace
    /// file holds them, so the scores equal [`super::scores::anomaly_scores`] on that file.
    pub fn new(
        w_star: &Classifier,
        displacements: Vec<f32>,
        trusted_images: &ImageSet,
        trusted_labels: Vec<i64>,
        form: TraceLoss,
        device: &Device,
    ) -> Result<Self, MadError> {
        let floats = flat_len(&w_star.network);
        if floats == 0 || displacements.is_empty() || !displacements.len().is_multiple_of(floats) {
            return Err(MadError::InvalidConfig(format!(
                "{} displacement values do not make rows of {floats}",
                displacements.len()
            )));
        }
        let draws = displacements.len() / floats;
        if draws < 2 || trusted_images.len() != trusted_labels.len() || trusted_images.len() < 2 {
            return Err(MadError::InvalidConfig(format!(
                "{} trusted images with {} labels and {draws} displacements (at least 2 of each)",
                trusted_images.len(),
                trusted_labels.len()
            )));
        }
        let tracked = Self::tracked(w_star, device);
        let trainable = trainable_mask(&tracked, form);
        let mut scorer = Self {
            w_star: w_star.deep_copy().for_inference(),
            tracked,
            frozen: crate::attack::pgd::frozen(w_star, device),
            displacements,
            draws,
            floats,
            trainable,
            trusted: Array2::zeros((0, draws)),
            trusted_z: Array2::zeros((0, draws)),
            classes: Vec::new(),
            scale: TrustedScale::of(&[], &[]),
            trusted_leave_one_out: AnomalyScores {
                mean_corr: Vec::new(),
                clc: Vec::new(),
                mean_ccc: Vec::new(),
                class_ccc: Vec::new(),
                nearest_corr: Vec::new(),
                clc_plus_class_ccc: Vec::new(),
            },
            form,
            weight_step: DEFAULT_WEIGHT_STEP,
            device: device.clone(),
        };
        // Traces rounded to float32 as a trace file holds them: the leave-one-out scale and the
        // couplings below see the values `anomaly_scores` would read from that file.
        // In chunks: each streams the displacements once.
        let mut trusted = Array2::zeros((trusted_images.len(), draws));
        let all: Vec<usize> = (0..trusted_images.len()).collect();
        for chunk in all.chunks(TRACE_CHUNK) {
            let inputs: Vec<(&[f32], i64)> = chunk
                .iter()
                .map(|&i| (trusted_images.image(i), trusted_labels[i]))
                .collect();
            let traced = scorer.traces_and_loss_gradients(&scorer.images(&inputs)?);
            for (&i, (trace, _)) in chunk.iter().zip(traced) {
                for (slot, v) in trusted.row_mut(i).iter_mut().zip(trace) {
                    *slot = f64::from(v as f32);
                }
            }
        }
        let as_traces = LossTraces::new(
            Array3::from_shape_vec(
                (1, draws, trusted.nrows()),
                trusted.t().iter().map(|&v| v as f32).collect(),
            )
            .map_err(|e| MadError::InvalidConfig(e.to_string()))?,
            Array3::zeros((1, draws, 0)),
            trusted_labels.clone(),
        );
        let loo = leave_one_out_scores(&as_traces, 0)?;
        let scale = TrustedScale::of(&loo.clc, &loo.class_ccc);
        let trusted_z = super::scores::standardize(trusted.view());
        let mut labels = trusted_labels.clone();
        labels.sort_unstable();
        labels.dedup();
        let classes = labels
            .iter()
            .map(|c| {
                (0..trusted_labels.len())
                    .filter(|&j| trusted_labels[j] == *c)
                    .collect()
            })
            .collect();
        scorer.trusted = trusted;
        scorer.trusted_z = trusted_z;
        scorer.classes = classes;
        scorer.scale = scale;
        scorer.trusted_leave_one_out = loo;
        Ok(scorer)
    }

    /// A scorer for the chains `chains` (indices) of `chain` around `w_star` on `task`: walks
    /// them with linearised traces (the walk depends only on the model, the sampling set and the
    /// seed, so these are the draws an exact run of the same settings takes) and keeps their
    /// displacements. Returns the scorer and the task's test labels (the predictions at w*).
    /// `on_chain` is told each finished chain.
    pub fn from_chains(
        w_star: &Classifier,
        task: &MadTask,
        chain: &ChainConfig,
        chains: &[usize],
        device: &Device,
        mut on_chain: impl FnMut(usize),
    ) -> Result<(Self, Vec<i64>), MadError> {
        let linearised = ChainConfig {
            traces: TraceForm::Linearised,
            ..chain.clone()
        };
        let inputs = TraceInputs::new(w_star, task, linearised.trace_batch_size, device)?;
        let mut displacements = Vec::new();
        for (done, &c) in chains.iter().enumerate() {
            let outcome = run_chain(
                w_star,
                &task.sampling,
                &inputs,
                &linearised,
                c,
                None,
                device,
                &mut crate::progress::Quiet,
                None,
            )?;
            let ChainOutcome::Finished(values, _) = outcome else {
                return Err(MadError::Data("a chain stopped before its end".into()));
            };
            displacements.extend(values);
            on_chain(done + 1);
        }
        let trusted_labels = inputs.labels[..inputs.n_trusted].to_vec();
        let test_labels = inputs.labels[inputs.n_trusted..].to_vec();
        let scorer = Self::new(
            w_star,
            displacements,
            &task.trusted,
            trusted_labels,
            chain.loss,
            device,
        )?;
        Ok((scorer, test_labels))
    }

    /// An autodiff copy of `model` that tracks its parameters.
    fn tracked(model: &Classifier, device: &Device) -> Classifier {
        Classifier {
            network: model
                .deep_copy()
                .network
                .fork(&device.clone().autodiff())
                .train(),
            spec: model.spec.clone(),
        }
    }

    fn image(&self, pixels: &[f32]) -> Result<Tensor<4>, MadError> {
        let [c, h, w] = self.w_star.spec.input_shape;
        if pixels.len() != c * h * w || pixels.iter().any(|v| !v.is_finite()) {
            return Err(MadError::Data(format!(
                "an input of {} values (or a value that is not finite), expected {c}x{h}x{w}",
                pixels.len()
            )));
        }
        Ok(Tensor::from_data(
            TensorData::new(pixels.to_vec(), [1, c, h, w]),
            &self.device,
        ))
    }

    /// The linearised trace `[draws]` of one input (`c x h x w` pixels) with label `label`.
    pub fn trace(&self, pixels: &[f32], label: i64) -> Result<Vec<f64>, MadError> {
        let x = self.image(pixels)?;
        let mut traces = self.traces_and_loss_gradients(&[(x, label)]);
        Ok(traces.remove(0).0)
    }

    /// The linearised traces of several inputs (`[1, c, h, w]` each, with its label) and the
    /// input gradients of their losses at w*, which the traces' levels need anyway. The product
    /// with the displacements streams the whole `[draws, floats]` matrix once for all inputs.
    fn traces_and_loss_gradients(&self, inputs: &[(Tensor<4>, i64)]) -> Vec<(Vec<f64>, Vec<f32>)> {
        let b = inputs.len();
        // Per-sample weight gradients as the columns of `[floats, b]`.
        let mut gradients = vec![0.0f32; self.floats * b];
        let mut levels = Vec::with_capacity(b);
        let mut gradient = Vec::with_capacity(self.floats);
        for (j, (x, label)) in inputs.iter().enumerate() {
            gradient.clear();
            sample_gradient(&self.tracked, x.clone(), *label, self.form, &mut gradient);
            for (f, &value) in gradient.iter().enumerate() {
                gradients[f * b + j] = value;
            }
            levels.push(self.loss_and_input_gradient(&self.frozen, x.clone(), *label));
        }
        let mut products = vec![0.0f32; self.draws * b];
        matmul_threaded(
            &mut products,
            Mat::new(&self.displacements, self.draws, self.floats),
            Mat::new(&gradients, self.floats, b),
        );
        levels
            .into_iter()
            .enumerate()
            .map(|(j, (loss, loss_gradient))| {
                let trace = (0..self.draws)
                    .map(|k| f64::from(loss) + f64::from(products[k * b + j]))
                    .collect();
                (trace, loss_gradient)
            })
            .collect()
    }

    /// The loss of `x` against `label` under `frozen` (a copy on the autodiff device whose
    /// parameters do not track gradients) and its gradient with respect to `x`.
    fn loss_and_input_gradient(
        &self,
        frozen: &Classifier,
        x: Tensor<4>,
        label: i64,
    ) -> (f32, Vec<f32>) {
        let autodiff = self.device.clone().autodiff();
        let xa = x.autodiff().require_grad();
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![label], [1]), &autodiff);
        let loss = self
            .form
            .per_sample(frozen.forward(xa.clone(), BnMode::Eval), y)
            .sum();
        let value = loss.clone().into_scalar();
        let grads = loss.backward();
        let gradient = xa
            .grad(&grads)
            .map(|g| g.into_data().iter::<f32>().collect())
            .unwrap_or_else(|| vec![0.0; x_len(&self.w_star)]);
        (value, gradient)
    }

    /// The score `which` of a trace `t` (`[draws]`), exactly as [`super::scores::anomaly_scores`]
    /// computes it for a test sample, and its derivative with respect to `t`.
    pub fn score_of_trace(&self, t: &[f64], which: InputScore) -> (f64, Vec<f64>) {
        let k = self.draws as f64;
        let (mean, var) = moments(t);
        let sd = var.sqrt();
        let c: Vec<f64> = t.iter().map(|v| v - mean).collect();
        let z: Vec<f64> = c.iter().map(|v| v / (sd + EPSILON)).collect();
        // Pearson with trusted row u.
        let correlation = |u: usize| -> f64 {
            let zu = self.trusted_z.row(u);
            z.iter().zip(zu.iter()).map(|(a, b)| a * b).sum::<f64>() / k
        };
        // Pearson with trusted row u, and its gradient in t.
        let pearson = |u: usize| -> (f64, Vec<f64>) {
            let zu = self.trusted_z.row(u);
            let rho = correlation(u);
            let zu_mean = zu.sum() / k;
            let zu_c: f64 = zu.iter().zip(&c).map(|(a, b)| a * b).sum();
            let second = if sd > 0.0 {
                zu_c / (k * sd * (sd + EPSILON).powi(2))
            } else {
                0.0
            };
            let grad = (0..self.draws)
                .map(|j| ((zu[j] - zu_mean) / (sd + EPSILON) - second * c[j]) / k)
                .collect();
            (rho, grad)
        };
        // Lin's concordance with trusted row u, and its gradient in t.
        let concordance = |u: usize| -> (f64, Vec<f64>) {
            let row = self.trusted.row(u).to_vec();
            let (mean_u, var_u) = moments(&row);
            let d: Vec<f64> = row.iter().map(|v| v - mean_u).collect();
            let d_mean = d.iter().sum::<f64>() / k;
            let c_mean = c.iter().sum::<f64>() / k;
            let cov = c.iter().zip(&d).map(|(a, b)| a * b).sum::<f64>() / k;
            let den = var + var_u + (mean - mean_u).powi(2) + EPSILON;
            let grad = (0..self.draws)
                .map(|j| {
                    let d_cov = (d[j] - d_mean) / k;
                    let d_den = 2.0 * (c[j] - c_mean) / k + 2.0 * (mean - mean_u) / k;
                    (2.0 * d_cov * den - 2.0 * cov * d_den) / (den * den)
                })
                .collect();
            (2.0 * cov / den, grad)
        };
        // `-` max over classes of the class mean of `coupling`, and the gradient at the arg-max.
        let class_level = |coupling: &dyn Fn(usize) -> (f64, Vec<f64>)| -> (f64, Vec<f64>) {
            let mut best: Option<(f64, Vec<f64>)> = None;
            for members in &self.classes {
                let mut value = 0.0;
                let mut grad = vec![0.0; self.draws];
                for &u in members {
                    let (v, g) = coupling(u);
                    value += v;
                    grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                }
                let n = members.len() as f64;
                value /= n;
                grad.iter_mut().for_each(|g| *g /= n);
                if best.as_ref().is_none_or(|(b, _)| value > *b) {
                    best = Some((value, grad));
                }
            }
            let (value, grad) = best.unwrap_or((0.0, vec![0.0; self.draws]));
            (-value, grad.into_iter().map(|g| -g).collect())
        };
        match which {
            InputScore::MeanCorr => {
                let n = self.trusted.nrows() as f64;
                let mut value = 0.0;
                let mut grad = vec![0.0; self.draws];
                for u in 0..self.trusted.nrows() {
                    let (v, g) = pearson(u);
                    value += v;
                    grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                }
                (-value / n, grad.into_iter().map(|g| -g / n).collect())
            }
            InputScore::Clc => class_level(&pearson),
            InputScore::ClassCcc => class_level(&concordance),
            InputScore::NearestCorr => {
                // The correlations alone first (a dot product each), then the gradients of the
                // selected ones: the derivative where the selection does not change.
                let rho: Vec<f64> = (0..self.trusted_z.nrows()).map(correlation).collect();
                let mut order: Vec<usize> = (0..rho.len()).collect();
                order.sort_by(|&a, &b| rho[b].total_cmp(&rho[a]).then(a.cmp(&b)));
                order.truncate(super::scores::NEAREST_TRUSTED);
                let n = order.len().max(1) as f64;
                let mut value = 0.0;
                let mut grad = vec![0.0; self.draws];
                for &u in &order {
                    let (v, g) = pearson(u);
                    value += v;
                    grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                }
                (-value / n, grad.into_iter().map(|g| -g / n).collect())
            }
            InputScore::ClcPlusClassCcc => {
                let (clc, clc_grad) = class_level(&pearson);
                let (ccc, ccc_grad) = class_level(&concordance);
                let (a, b) = (self.scale.clc, self.scale.class_ccc);
                (
                    a.apply(clc) + b.apply(ccc),
                    clc_grad
                        .iter()
                        .zip(&ccc_grad)
                        .map(|(x, y)| x / a.sd + y / b.sd)
                        .collect(),
                )
            }
        }
    }

    /// The trusted samples' leave-one-out scores `which` (where thresholds come from).
    pub fn trusted_scores(&self, which: InputScore) -> &[f64] {
        let loo = &self.trusted_leave_one_out;
        match which {
            InputScore::MeanCorr => &loo.mean_corr,
            InputScore::Clc => &loo.clc,
            InputScore::ClassCcc => &loo.class_ccc,
            InputScore::ClcPlusClassCcc => &loo.clc_plus_class_ccc,
            InputScore::NearestCorr => &loo.nearest_corr,
        }
    }

    /// The class w* gives one input.
    pub fn predict(&self, pixels: &[f32]) -> Result<i64, MadError> {
        let logits: Vec<f32> = self
            .w_star
            .forward(self.image(pixels)?, BnMode::Eval)
            .into_data()
            .iter::<f32>()
            .collect();
        Ok(logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as i64))
    }

    /// The score `which` of one input.
    pub fn score(&self, pixels: &[f32], label: i64, which: InputScore) -> Result<f64, MadError> {
        Ok(self.scores(&[(pixels, label)], which)?[0])
    }

    /// The scores `which` of several inputs (pixels and label each), in one pass over the
    /// displacements.
    pub fn scores(
        &self,
        inputs: &[(&[f32], i64)],
        which: InputScore,
    ) -> Result<Vec<f64>, MadError> {
        let xs = self.images(inputs)?;
        Ok(self
            .traces_and_loss_gradients(&xs)
            .iter()
            .map(|(t, _)| self.score_of_trace(t, which).0)
            .collect())
    }

    fn images(&self, inputs: &[(&[f32], i64)]) -> Result<Vec<(Tensor<4>, i64)>, MadError> {
        inputs
            .iter()
            .map(|&(pixels, label)| Ok((self.image(pixels)?, label)))
            .collect()
    }

    /// The score `which` of one input and its gradient with respect to the pixels.
    pub fn score_and_gradient(
        &self,
        pixels: &[f32],
        label: i64,
        which: InputScore,
    ) -> Result<(f64, Vec<f32>), MadError> {
        self.objective_and_gradient(pixels, label, which, 0.0)
    }

    /// The score `which` of one input, and the pixel gradient of the score plus `keep` times
    /// the input's trace loss at w* (an attacker's objective that keeps the class; the loss
    /// gradient is a by-product of the trace, so it costs nothing extra).
    pub fn objective_and_gradient(
        &self,
        pixels: &[f32],
        label: i64,
        which: InputScore,
        keep: f64,
    ) -> Result<(f64, Vec<f32>), MadError> {
        Ok(self
            .objectives_and_gradients(&[(pixels, label)], which, &[keep])?
            .remove(0))
    }

    /// [`Self::objective_and_gradient`] of several inputs, each with its own `keep` weight:
    /// both products with the displacements (traces, and `v = D^T a`) stream the
    /// `[draws, floats]` matrix once for all of them; the weight-space differences stay one pair
    /// per input.
    pub fn objectives_and_gradients(
        &self,
        inputs: &[(&[f32], i64)],
        which: InputScore,
        keep: &[f64],
    ) -> Result<Vec<(f64, Vec<f32>)>, MadError> {
        if keep.len() != inputs.len() {
            return Err(MadError::InvalidConfig(format!(
                "{} inputs with {} keep weights",
                inputs.len(),
                keep.len()
            )));
        }
        let xs = self.images(inputs)?;
        let b = xs.len();
        let traced = self.traces_and_loss_gradients(&xs);
        // a = ds/dt of every input as the columns of `[draws, b]`.
        let mut values = Vec::with_capacity(b);
        let mut a_sums = Vec::with_capacity(b);
        let mut a32 = vec![0.0f32; self.draws * b];
        for (j, (t, _)) in traced.iter().enumerate() {
            let (value, a) = self.score_of_trace(t, which);
            a_sums.push(a.iter().sum::<f64>());
            for (k, &ak) in a.iter().enumerate() {
                a32[k * b + j] = ak as f32;
            }
            values.push(value);
        }
        // v = D^T a over the parameters (buffers stay at w*).
        let mut v32 = vec![0.0f32; self.floats * b];
        matmul_threaded(
            &mut v32,
            Mat::transposed(&self.displacements, self.draws, self.floats),
            Mat::new(&a32, self.draws, b),
        );
        let mut out = Vec::with_capacity(b);
        for (j, ((x, label), (_, loss_gradient))) in xs.iter().zip(&traced).enumerate() {
            let v: Vec<f64> = (0..self.floats)
                .map(|f| {
                    if self.trainable[f] {
                        f64::from(v32[f * b + j])
                    } else {
                        0.0
                    }
                })
                .collect();
            let gradient = self.mixed_gradient(x, *label, &v, a_sums[j], loss_gradient);
            let keep = keep[j] as f32;
            out.push((
                values[j],
                gradient
                    .iter()
                    .zip(loss_gradient)
                    .map(|(&g, &l)| g as f32 + keep * l)
                    .collect(),
            ));
        }
        Ok(out)
    }

    /// `(sum_k a_k) grad_x l(x) + grad_x [g(x) . v]`, the second term by a central difference
    /// in weight space along `v` (the module's derivation).
    fn mixed_gradient(
        &self,
        x: &Tensor<4>,
        label: i64,
        v: &[f64],
        a_sum: f64,
        loss_gradient: &[f32],
    ) -> Vec<f64> {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut gradient: Vec<f64> = loss_gradient
            .iter()
            .map(|&g| a_sum * f64::from(g))
            .collect();
        if norm > 0.0 {
            let h = self.weight_step;
            let direction: Vec<f32> = v.iter().map(|x| (x / norm) as f32).collect();
            let shifted = |sign: f32| {
                let mut model = self.w_star.deep_copy();
                model.network = model.network.map(&mut Shift {
                    step: &direction,
                    scale: sign * h as f32,
                    offset: 0,
                });
                let frozen = crate::attack::pgd::frozen(&model, &self.device);
                self.loss_and_input_gradient(&frozen, x.clone(), label).1
            };
            let (plus, minus) = (shifted(1.0), shifted(-1.0));
            for ((g, p), m) in gradient.iter_mut().zip(&plus).zip(&minus) {
                *g += norm * f64::from(p - m) / (2.0 * h);
            }
        }
        gradient
    }
}

/// Number of pixels of one input of `model`.
fn x_len(model: &Classifier) -> usize {
    model.spec.input_shape.iter().product()
}

/// Adds `scale * step` to every float of a module, `step` flattened in visiting order.
struct Shift<'a> {
    step: &'a [f32],
    scale: f32,
    offset: usize,
}

impl ModuleMapper for Shift<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let n = dims.iter().product::<usize>();
        let end = (self.offset + n).min(self.step.len());
        let step = &self.step[self.offset.min(end)..end];
        self.offset += n;
        if step.len() != n || step.iter().all(|&s| s == 0.0) {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let require_grad = tensor.is_require_grad();
        let delta = Tensor::<1>::from_data(
            TensorData::new(
                step.iter().map(|s| s * self.scale).collect::<Vec<f32>>(),
                [n],
            ),
            &tensor.device(),
        )
        .reshape(dims);
        let mut next = tensor + delta;
        if require_grad {
            next = next.require_grad();
        }
        Param::from_mapped_value(id, next, mapper)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attack::test_data::tiny_cnn_spec;
    use crate::device::default_device;
    use crate::madfa::scores::{anomaly_scores, coupling};
    use crate::models::test_util::host_seeded;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const DRAWS: usize = 16;

    /// A random tiny CNN on 8x8 images, random displacements of its floats, six trusted images
    /// in two classes, and one test image.
    pub(crate) fn fixture() -> (LinearisedScorer, Vec<f32>, ImageSet) {
        let device = default_device();
        let mut rng = StdRng::seed_from_u64(7);
        let model = host_seeded(tiny_cnn_spec(), &mut rng, &device);
        let floats = flat_len(&model.network);
        let displacements: Vec<f32> = (0..DRAWS * floats)
            .map(|_| rng.random_range(-0.05..0.05))
            .collect();
        let pixels: Vec<f32> = (0..6 * 64).map(|_| rng.random_range(0.0..1.0)).collect();
        let labels = vec![0, 1, 0, 1, 0, 1];
        let trusted = ImageSet::new(
            pixels,
            labels.clone(),
            crate::data::ImageShape::new(1, 8, 8),
            vec!["a".into(), "b".into()],
            "trusted",
        )
        .unwrap();
        let scorer = LinearisedScorer::new(
            &model,
            displacements,
            &trusted,
            labels.iter().map(|&l| i64::from(l)).collect(),
            TraceLoss::Log,
            &device,
        )
        .unwrap();
        let x: Vec<f32> = (0..64).map(|_| rng.random_range(0.2..0.8)).collect();
        (scorer, x, trusted)
    }

    const SCORES: [InputScore; 5] = [
        InputScore::MeanCorr,
        InputScore::Clc,
        InputScore::ClassCcc,
        InputScore::ClcPlusClassCcc,
        InputScore::NearestCorr,
    ];

    #[test]
    fn the_score_of_a_trace_is_the_score_of_the_trace_file() {
        let (scorer, x, _) = fixture();
        let t: Vec<f64> = scorer
            .trace(&x, 1)
            .unwrap()
            .iter()
            .map(|&v| f64::from(v as f32))
            .collect();
        let trusted = scorer.trusted.t().as_standard_layout().mapv(|v| v as f32);
        let n = scorer.trusted.nrows();
        let traces = LossTraces::new(
            trusted.into_shape_with_order((1, DRAWS, n)).unwrap(),
            Array3::from_shape_vec((1, DRAWS, 1), t.iter().map(|&v| v as f32).collect()).unwrap(),
            vec![0, 1, 0, 1, 0, 1],
        );
        let file = anomaly_scores(&coupling(&traces, 0).unwrap(), &traces.trusted_labels);
        let want = [
            file.mean_corr[0],
            file.clc[0],
            file.class_ccc[0],
            file.clc_plus_class_ccc[0],
            file.nearest_corr[0],
        ];
        for (which, want) in SCORES.iter().zip(want) {
            let got = scorer.score_of_trace(&t, *which).0;
            assert!((got - want).abs() < 1e-12, "{which:?}: {got} vs {want}");
        }
    }

    #[test]
    fn the_derivative_in_the_trace_matches_central_differences() {
        let (scorer, x, _) = fixture();
        let t = scorer.trace(&x, 1).unwrap();
        let h = 1e-6;
        for which in SCORES {
            let (_, grad) = scorer.score_of_trace(&t, which);
            for j in 0..DRAWS {
                let mut up = t.clone();
                up[j] += h;
                let mut down = t.clone();
                down[j] -= h;
                let numeric = (scorer.score_of_trace(&up, which).0
                    - scorer.score_of_trace(&down, which).0)
                    / (2.0 * h);
                assert!(
                    (numeric - grad[j]).abs() < 1e-6 * (1.0 + numeric.abs()),
                    "{which:?} draw {j}: analytic {} vs numeric {numeric}",
                    grad[j]
                );
            }
        }
    }

    #[test]
    fn the_input_gradient_matches_central_differences_in_the_input() {
        let (scorer, x, _) = fixture();
        let mut rng = StdRng::seed_from_u64(11);
        // Small enough that no ReLU of the tiny model changes state along the way (at 1e-2 the
        // mean-correlation difference is already off by a factor of two).
        let delta = 1e-3f32;
        for which in SCORES {
            let (value, gradient) = scorer.score_and_gradient(&x, 1, which).unwrap();
            assert!((value - scorer.score(&x, 1, which).unwrap()).abs() < 1e-12);
            for _ in 0..3 {
                let direction: Vec<f32> = (0..64).map(|_| rng.random_range(-1.0..1.0)).collect();
                let moved = |sign: f32| -> Vec<f32> {
                    x.iter()
                        .zip(&direction)
                        .map(|(a, d)| a + sign * delta * d)
                        .collect()
                };
                let numeric = (scorer.score(&moved(1.0), 1, which).unwrap()
                    - scorer.score(&moved(-1.0), 1, which).unwrap())
                    / (2.0 * f64::from(delta));
                let analytic: f64 = gradient
                    .iter()
                    .zip(&direction)
                    .map(|(g, d)| f64::from(g * d))
                    .sum();
                assert!(
                    // 2%: the traces' levels are float32 losses, whose rounding moves the
                    // concordance's difference quotient by about 1% at this step.
                    (numeric - analytic).abs() < 0.02 * numeric.abs().max(analytic.abs()) + 1e-5,
                    "{which:?}: analytic {analytic} vs numeric {numeric}"
                );
            }
        }
    }

    #[test]
    fn several_inputs_at_once_score_and_differentiate_as_each_alone() {
        let (scorer, x, trusted) = fixture();
        let inputs: Vec<(&[f32], i64)> =
            vec![(&x, 1), (trusted.image(0), 0), (trusted.image(3), 1)];
        for which in SCORES {
            let together = scorer
                .objectives_and_gradients(&inputs, which, &[0.5; 3])
                .unwrap();
            let scores = scorer.scores(&inputs, which).unwrap();
            for (((pixels, label), (value, gradient)), score) in
                inputs.iter().zip(&together).zip(&scores)
            {
                let (alone, alone_gradient) = scorer
                    .objective_and_gradient(pixels, *label, which, 0.5)
                    .unwrap();
                // Float32 products summed in another order: equal to rounding.
                assert!(
                    (value - alone).abs() < 1e-6 * (1.0 + alone.abs()),
                    "{which:?}"
                );
                assert!(
                    (score - alone).abs() < 1e-6 * (1.0 + alone.abs()),
                    "{which:?}"
                );
                let scale = alone_gradient.iter().fold(0.0f32, |m, g| m.max(g.abs()));
                for (a, b) in gradient.iter().zip(&alone_gradient) {
                    assert!(
                        (a - b).abs() <= 1e-3 * scale + 1e-6,
                        "{which:?}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
