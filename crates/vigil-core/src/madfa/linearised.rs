//! Linearised loss traces: a first-order stand-in for the exact per-sample losses along a chain.
//!
//! ```text
//! L_i(w_t) ~ L_i(w*) + g_i . (w_t - w*),        g_i = grad of L_i at w*
//! ```
//!
//! A chain then records only its displacement `w_t - w*` at each kept draw; after the chain, the
//! traces of every sample come from one matrix product `D G^T` (draws x parameters times
//! parameters x samples), with the per-sample gradients `G` computed once at w*, sample by sample,
//! in blocks. The exact traces cost one forward pass over every traced sample per draw; these cost
//! one forward and backward pass per sample in all, plus the product.
//!
//! Why it can work: at the reference settings the chain stays within a small ball around w*
//! (docs/madfa.md), where the loss is close to linear; and a confident sample whose float32 loss
//! is exactly 0 at every draw (a constant, "uncoupled" exact trace) still has a non-zero gradient,
//! so its linearised trace moves. The first-order term ignores curvature and, for BatchNorm
//! models, the drift of the running statistics (gradients are taken in eval mode at w*'s
//! statistics). Measured against exact traces of the same chains in docs/madfa.md.
//!
//! Memory: the displacements of a chain are `draws x parameters` floats (250 draws of the
//! 421k-parameter small CNN: 421 MB); [`check_memory`] refuses runs beyond a limit.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Int, Tensor, TensorData};
use rayon::prelude::*;

use super::MadError;
use super::chain::{TraceInputs, TraceLoss};
use super::sgld::W_STAR_SLOT;
use crate::kernels::conv2d::{Mat, matmul_threaded};
use crate::models::{BnMode, Classifier};
use crate::optim::{ParamSlots, param_infos};

/// Largest displacement store (bytes) a linearised run may hold in memory.
pub const MAX_DISPLACEMENT_BYTES: usize = 6 << 30;

/// Samples whose gradients are held at once while forming the traces.
const GRADIENT_BLOCK: usize = 128;

/// Floats of `module` in visiting order (parameters and buffers): the length of a displacement.
pub fn flat_len<M: Module>(module: &M) -> usize {
    param_infos(module).iter().map(|p| p.numel).sum()
}

/// Refuses a linearised run whose displacements would not fit: `rows` kept draws of a model with
/// `floats` values.
pub fn check_memory(rows: usize, floats: usize) -> Result<(), MadError> {
    let bytes = rows.saturating_mul(floats).saturating_mul(4);
    if bytes > MAX_DISPLACEMENT_BYTES {
        return Err(MadError::InvalidConfig(format!(
            "linearised traces would hold {rows} displacements of {floats} values ({:.1} GB, over the {:.0} GB limit): thin the draws (--thinning), run fewer chains per process (--chain), or use exact traces",
            bytes as f64 / 1e9,
            MAX_DISPLACEMENT_BYTES as f64 / (1u64 << 30) as f64
        )));
    }
    Ok(())
}

/// `w - w*` of every float of `live`, w* read from the chain's `slots`, flattened in visiting
/// order.
pub(crate) fn displacement(live: &Classifier, slots: &ParamSlots) -> Vec<f32> {
    struct Visit<'a> {
        slots: &'a ParamSlots,
        out: Vec<f32>,
    }
    impl ModuleVisitor for Visit<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val().without_autodiff();
            let n = value.dims().iter().product::<usize>();
            let flat = value.reshape([n]);
            let delta = match self.slots.get(param.id, W_STAR_SLOT) {
                Some(w_star) => flat - w_star.clone(),
                None => flat.zeros_like(),
            };
            self.out.extend(delta.into_data().iter::<f32>());
        }
    }
    let mut visit = Visit {
        slots,
        out: Vec::new(),
    };
    live.network.visit(&mut visit);
    visit.out
}

/// The gradient of every float of `module` in `grads`, flattened in visiting order (zeros for
/// floats without one, such as BatchNorm's running statistics).
fn flat_gradient<M: Module>(module: &M, grads: &Gradients, out: &mut Vec<f32>) {
    struct Visit<'a> {
        grads: &'a Gradients,
        out: &'a mut Vec<f32>,
    }
    impl ModuleVisitor for Visit<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let n = value.dims().iter().product::<usize>();
            match value.grad(self.grads) {
                Some(g) => self.out.extend(g.reshape([n]).into_data().iter::<f32>()),
                None => self.out.extend(std::iter::repeat_n(0.0, n)),
            }
        }
    }
    module.visit(&mut Visit { grads, out });
}

/// Appends the gradient with respect to every float of `model` (an autodiff copy that tracks
/// its parameters, eval mode) of the loss `form` of one image `x` (`[1, c, h, w]`) against
/// `label`, flattened in visiting order.
pub(crate) fn sample_gradient(
    model: &Classifier,
    x: Tensor<4>,
    label: i64,
    form: TraceLoss,
    out: &mut Vec<f32>,
) {
    let device = x.device().autodiff();
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![label], [1]), &device);
    let logits = model.forward(x.autodiff(), BnMode::Eval);
    let grads = form.per_sample(logits, y).sum().backward();
    flat_gradient(&model.network, &grads, out);
}

/// Whether each float of `model` (visiting order) has a gradient: parameters do, buffers such
/// as BatchNorm's running statistics do not. `model` is an autodiff copy that tracks its
/// parameters; one backward pass of a zero image tells.
pub(crate) fn trainable_mask(model: &Classifier, form: TraceLoss) -> Vec<bool> {
    struct Visit<'a> {
        grads: &'a Gradients,
        out: Vec<bool>,
    }
    impl ModuleVisitor for Visit<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            let n = value.dims().iter().product::<usize>();
            let has = value.grad(self.grads).is_some();
            self.out.extend(std::iter::repeat_n(has, n));
        }
    }
    let s = &model.spec.input_shape;
    let device = model
        .network
        .devices()
        .into_iter()
        .next()
        .unwrap_or_default();
    let x = Tensor::<4>::zeros([1, s[0], s[1], s[2]], &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64], [1]), &device);
    let logits = model.forward(x, BnMode::Eval);
    let grads = form.per_sample(logits, y).sum().backward();
    let mut visit = Visit {
        grads: &grads,
        out: Vec::new(),
    };
    model.network.visit(&mut visit);
    visit.out
}

/// Per-sample gradients at w* (loss `form`, eval mode) of samples `range` of `inputs`,
/// `[range.len(), floats]` row-major. Each worker thread backpropagates its own samples through
/// its own copy of the model, one sample at a time.
fn gradient_block(
    w_star: &Classifier,
    inputs: &TraceInputs,
    range: std::ops::Range<usize>,
    form: TraceLoss,
    floats: usize,
    device: &Device,
) -> Result<Vec<f32>, MadError> {
    let autodiff = device.clone().autodiff();
    let indices: Vec<usize> = range.collect();
    let per_thread = indices
        .len()
        .div_ceil(rayon::current_num_threads().max(1))
        .max(1);
    let parts: Vec<Result<Vec<f32>, MadError>> = indices
        .par_chunks(per_thread)
        .map(|chunk| {
            let model = Classifier {
                network: w_star.deep_copy().network.fork(&autodiff).train(),
                spec: w_star.spec.clone(),
            };
            let mut out = Vec::with_capacity(chunk.len() * floats);
            for &i in chunk {
                let x = inputs
                    .image(i)
                    .ok_or_else(|| MadError::Data(format!("no traced sample {i}")))?;
                sample_gradient(&model, x, inputs.labels[i], form, &mut out);
            }
            Ok(out)
        })
        .collect();
    let mut out = Vec::with_capacity(indices.len() * floats);
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// Linearised traces of every traced sample for displacement rows `displacements`
/// (`[rows, floats]` row-major, one row per kept draw, chains stacked): `[rows, n]` row-major,
/// `L_i(w*) + g_i . d_r`.
pub fn linearised_traces(
    w_star: &Classifier,
    inputs: &TraceInputs,
    displacements: &[f32],
    form: TraceLoss,
    device: &Device,
) -> Result<Vec<f32>, MadError> {
    let floats = flat_len(&w_star.network);
    let n = inputs.len();
    if floats == 0 || !displacements.len().is_multiple_of(floats) {
        return Err(MadError::InvalidConfig(format!(
            "{} displacement values do not make rows of {floats}",
            displacements.len()
        )));
    }
    let rows = displacements.len() / floats;
    let d = Mat::new(displacements, rows, floats);
    let at_star = inputs.losses(&w_star.for_inference(), form);
    let mut traces = vec![0.0f32; rows * n];
    let mut product = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + GRADIENT_BLOCK).min(n);
        let b = end - start;
        let block = gradient_block(w_star, inputs, start..end, form, floats, device)?;
        if block.len() != b * floats {
            return Err(MadError::InvalidConfig(format!(
                "per-sample gradients have {} values, expected {b} x {floats}",
                block.len()
            )));
        }
        product.resize(rows * b, 0.0);
        matmul_threaded(&mut product, d, Mat::transposed(&block, b, floats));
        for (r, values) in product.chunks_exact(b).enumerate() {
            for (j, v) in values.iter().enumerate() {
                traces[r * n + start + j] = at_star[start + j] + v;
            }
        }
        start = end;
    }
    Ok(traces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_beyond_the_limit_is_refused_with_advice() {
        assert!(check_memory(250, 421_642).is_ok());
        let err = check_memory(2000, 11_000_000).unwrap_err();
        assert!(err.to_string().contains("--thinning"), "{err}");
    }
}
