//! vigil's own CPU kernels for the layers that dominate its loops (2-D convolution and
//! max-pooling), plugged into burn through its backend-extension mechanism, so the models,
//! autodiff and everything else stay burn's.
//!
//! [`KernelOps`] is the extension: the `Flex` implementation runs the kernels of
//! [`conv2d`](mod@conv2d) and [`max_pool2d`](mod@max_pool2d) on `f32` tensors, and the
//! `Autodiff` implementation records a backward step that calls the kernels' backward passes.
//! Any other dtype, and convolutions with dilation, groups or asymmetric padding, fall back to
//! burn's own operations. The layer functions [`conv2d_layer`] and [`max_pool2d`] are what the
//! models call; with the `cuda` feature they are burn's operations unchanged.
//!
//! Why: `docs/performance.md` ("Own kernels"). The kernels agree with burn's to float rounding
//! (tests below and in each kernel module), not bit for bit: sums run in another order.

pub mod batch_norm;
pub mod causal_softmax;
pub mod conv2d;
pub mod cross_entropy;
mod exp;
mod fill;
mod lanes;
pub mod max_pool2d;
pub mod rms_norm;
mod scratch;
pub mod sgld_step;
pub mod swiglu;
pub mod winograd;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Tensor, TensorData};

pub use sgld_step::SgldScalars;

/// `conv.forward(x)`, through vigil's convolution kernel where it applies.
pub fn conv2d_layer(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    #[cfg(not(feature = "cuda"))]
    if let Some(padding) = symmetric_padding(&conv.padding)
        && conv.dilation == [1, 1]
        && conv.groups == 1
    {
        let out = extension::conv2d(x, conv.weight.val(), conv.stride, padding);
        return match &conv.bias {
            Some(bias) => {
                let channels = bias.dims()[0];
                out + bias.val().reshape([1, channels, 1, 1])
            }
            None => out,
        };
    }
    conv.forward(x)
}

/// Max-pooling without dilation or ceil mode, as `burn::tensor::module::max_pool2d`.
pub fn max_pool2d(
    x: Tensor<4>,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Tensor<4> {
    #[cfg(not(feature = "cuda"))]
    {
        extension::max_pool2d(x, kernel, stride, padding)
    }
    #[cfg(feature = "cuda")]
    {
        use burn::tensor::module::max_pool2d;
        use burn::tensor::ops::MaxPoolOptions;
        max_pool2d(
            x,
            MaxPoolOptions::new(kernel)
                .with_stride(stride)
                .with_padding(padding),
        )
    }
}

/// Batch normalisation of `x` (`[n, c, h, w]`) with the batch's own statistics, then a ReLU if
/// `relu`, through vigil's fused kernel where it applies: the output, and the batch's mean and
/// biased variance (detached), as `burn::tensor::module::batch_norm_train` returns them.
pub fn batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu: bool,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    #[cfg(not(feature = "cuda"))]
    {
        extension::batch_norm_train(x, gamma, beta, epsilon, relu)
    }
    #[cfg(feature = "cuda")]
    {
        let out = burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
        let output = if relu {
            burn::tensor::activation::relu(out.output)
        } else {
            out.output
        };
        (output, out.mean, out.variance)
    }
}

/// Batch normalisation of `x` with given statistics `[gamma, beta, mean, variance]` (eval
/// mode), then a ReLU if `relu`, through vigil's fused kernel where it applies.
pub fn batch_norm_eval(
    x: Tensor<4>,
    operands: [Tensor<1>; 4],
    epsilon: f64,
    relu: bool,
) -> Tensor<4> {
    #[cfg(not(feature = "cuda"))]
    {
        extension::batch_norm_eval(x, operands, epsilon, relu)
    }
    #[cfg(feature = "cuda")]
    {
        let [gamma, beta, mean, variance] = operands;
        let out = burn::tensor::module::batch_norm(x, gamma, beta, mean, variance, epsilon);
        if relu {
            burn::tensor::activation::relu(out)
        } else {
            out
        }
    }
}

/// Cross-entropy of each row of `logits` (`[rows, width]`) against its target, `[rows]`; a row
/// whose target is `None` gets 0 (and no gradient). Through the fused kernel of
/// [`cross_entropy`](mod@cross_entropy) for `f32` logits on the CPU when every target is below
/// `width`; burn's `log_softmax` and `gather` otherwise (other dtypes, GPUs, and targets out of
/// range, which then fail as they always did).
pub fn cross_entropy_rows(logits: Tensor<2>, targets: &[Option<u32>]) -> Tensor<1> {
    #[cfg(not(feature = "cuda"))]
    {
        let [rows, width] = logits.dims();
        let in_range = targets.iter().flatten().all(|&t| (t as usize) < width);
        if logits.dtype() == DType::F32 && in_range && targets.len() == rows {
            let targets: std::sync::Arc<[u32]> = targets
                .iter()
                .map(|t| t.unwrap_or(cross_entropy::IGNORED))
                .collect();
            return extension::cross_entropy(logits, targets);
        }
    }
    cross_entropy_rows_with_tensor_ops(logits, targets)
}

/// [`cross_entropy_rows`] out of burn's operations: the definition the kernel is tested against.
pub fn cross_entropy_rows_with_tensor_ops(logits: Tensor<2>, targets: &[Option<u32>]) -> Tensor<1> {
    let [rows, _] = logits.dims();
    let device = logits.device();
    let ids: Vec<i64> = targets.iter().map(|t| i64::from(t.unwrap_or(0))).collect();
    let counted: Vec<f32> = targets
        .iter()
        .map(|t| f32::from(u8::from(t.is_some())))
        .collect();
    let ids = Tensor::<2, burn::tensor::Int>::from_data(TensorData::new(ids, [rows, 1]), &device);
    let counted = Tensor::<1>::from_data(TensorData::new(counted, [rows]), &device);
    burn::tensor::activation::log_softmax(logits, 1)
        .gather(1, ids)
        .reshape([rows])
        .neg()
        * counted
}

/// `silu(gate) * up`, SwiGLU's gating, through the fused kernel of [`swiglu`](mod@swiglu) for
/// `f32` tensors of one shape on the CPU; burn's operations otherwise.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    #[cfg(not(feature = "cuda"))]
    {
        if gate.dtype() == DType::F32 && up.dtype() == DType::F32 && gate.dims() == up.dims() {
            return extension::swiglu(gate, up);
        }
    }
    swiglu_with_tensor_ops(gate, up)
}

/// [`swiglu`] out of burn's operations: the definition the kernel is tested against.
pub fn swiglu_with_tensor_ops<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::silu(gate) * up
}

/// RMSNorm over the last axis, `x / sqrt(mean(x^2) + epsilon) * gamma`, through the fused
/// kernel of [`rms_norm`](mod@rms_norm) for `f32` operands on the CPU; burn's operations
/// otherwise.
pub fn rms_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, epsilon: f64) -> Tensor<D> {
    #[cfg(not(feature = "cuda"))]
    {
        let width = x.dims().last().copied().unwrap_or(0);
        if x.dtype() == DType::F32
            && gamma.dtype() == DType::F32
            && width > 0
            && gamma.dims() == [width]
        {
            return extension::rms_norm(x, gamma, epsilon);
        }
    }
    rms_norm_with_tensor_ops(x, gamma, epsilon)
}

/// [`rms_norm`] out of burn's operations, as burn's `RmsNorm` module computes it: the
/// definition the kernel is tested against.
pub fn rms_norm_with_tensor_ops<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    let rms = (x.clone().square().mean_dim(D - 1) + epsilon).sqrt();
    (x / rms) * gamma.unsqueeze()
}

/// Causal attention's softmax of `scores` `[.., groups x queries, keys]` divided by `divisor`:
/// row `r` is query `r mod queries`, the last `queries` of `keys` positions, and sees keys up
/// to its own (the rest weigh 0). Through the fused kernel of
/// [`causal_softmax`](mod@causal_softmax) for `f32` scores on the CPU; burn's operations
/// otherwise. Empty scores (no sequences, queries or keys) come back as they are; otherwise it
/// panics unless the rows are a multiple of `queries` and `1 <= queries <= keys`.
pub fn causal_softmax(scores: Tensor<4>, queries: usize, divisor: f64) -> Tensor<4> {
    let [_, _, rows, keys] = scores.dims();
    if scores.shape().num_elements() == 0 {
        return scores;
    }
    assert!(
        (1..=keys).contains(&queries) && rows % queries == 0,
        "{rows} rows of {keys} keys do not stack {queries} queries"
    );
    #[cfg(not(feature = "cuda"))]
    {
        if scores.dtype() == DType::F32 {
            return extension::causal_softmax(scores, queries, divisor);
        }
    }
    causal_softmax_with_tensor_ops(scores, queries, divisor)
}

/// [`causal_softmax`] out of burn's operations (a division, a mask filled with minus infinity,
/// burn's softmax): the definition the kernel is tested against.
pub fn causal_softmax_with_tensor_ops(
    scores: Tensor<4>,
    queries: usize,
    divisor: f64,
) -> Tensor<4> {
    let [_, _, rows, keys] = scores.dims();
    let offset = keys - queries;
    let hidden: Vec<bool> = (0..rows)
        .flat_map(|row| (0..keys).map(move |j| j > row % queries + offset))
        .collect();
    let mask = Tensor::<2, burn::tensor::Bool>::from_data(
        TensorData::new(hidden, [rows, keys]),
        &scores.device(),
    );
    let scores = scores / divisor;
    burn::tensor::activation::softmax(
        scores.mask_fill(mask.unsqueeze::<4>(), f32::NEG_INFINITY),
        3,
    )
}

/// What one parameter's SGLD step returns: the next value, the updated squared-gradient average
/// (RMSprop only) and the squared norms of the drift, localization and noise terms and of
/// `w - w*` after the step.
pub type SgldStep = (Tensor<1>, Option<Tensor<1>>, [f64; 4]);

/// One localized SGLD step of a flat parameter (`madfa::sgld`) with the standard-normal draws
/// `noise`, through [`sgld_step`](mod@sgld_step)'s one-pass kernel where it applies (`f32`
/// operands; the step reads each value once and updates the value and the average in place when
/// nothing else holds them).
pub fn sgld_step(
    s: &SgldScalars,
    value: Tensor<1>,
    grad: Tensor<1>,
    w_star: Tensor<1>,
    average: Option<Tensor<1>>,
    noise: Vec<f32>,
) -> SgldStep {
    #[cfg(not(feature = "cuda"))]
    {
        let n = noise.len();
        let f32_of_length =
            |t: &Tensor<1>, len: usize| t.dtype() == DType::F32 && t.dims() == [len];
        let average_fits = match (&average, s.rmsprop) {
            (Some(v), Some(_)) => f32_of_length(v, n),
            (None, _) => true,
            (Some(_), None) => false,
        };
        if [&value, &grad, &w_star].iter().all(|t| f32_of_length(t, n)) && average_fits {
            return extension::sgld_step(s, value, grad, w_star, average, noise);
        }
    }
    sgld_step_with_tensor_ops(s, value, grad, w_star, average, noise)
}

/// [`sgld_step`] as burn tensor operations: the definition the kernel is tested against, the
/// step on a GPU, and the step of a parameter the kernel does not take (not `f32`).
pub fn sgld_step_with_tensor_ops(
    s: &SgldScalars,
    value: Tensor<1>,
    grad: Tensor<1>,
    w_star: Tensor<1>,
    squared_gradient: Option<Tensor<1>>,
    noise: Vec<f32>,
) -> SgldStep {
    let n = noise.len();
    let device = value.device();
    let mut v_next = None;
    let gain = s.rmsprop.map(|[alpha, one_minus_alpha, eps]| {
        let fresh = grad.clone().square().mul_scalar(one_minus_alpha);
        let v = match squared_gradient {
            Some(v) => v.mul_scalar(alpha) + fresh,
            None => fresh,
        };
        v_next = Some(v.clone());
        v.sqrt().add_scalar(eps).recip()
    });
    let noise = Tensor::<1>::from_data(TensorData::new(noise, [n]), &device);
    let mut drift = grad.mul_scalar(s.drift);
    let mut pull = (value.clone() - w_star.clone()).mul_scalar(s.pull);
    let mut noise = noise.mul_scalar(s.noise);
    if let Some(gain) = gain {
        drift = drift * gain.clone();
        pull = pull * gain.clone();
        noise = noise * gain.sqrt();
    }
    let next = value - drift.clone() - pull.clone() + noise.clone();
    let distance = next.clone() - w_star;
    let squared =
        [drift, pull, noise, distance].map(|t| f64::from(t.square().sum().into_scalar::<f32>()));
    (next, v_next, squared)
}

/// Output positions along one axis of a window of `kernel` sliding by `stride` over `size`
/// inputs padded by `pad` on both sides (PyTorch's floor rule); `None` when the window does not
/// fit. Shared by the convolution's and the pooling's geometry.
fn output_size(size: usize, kernel: usize, stride: usize, pad: usize) -> Option<usize> {
    (size + 2 * pad)
        .checked_sub(kernel)
        .map(|span| span / stride + 1)
}

/// `n` values in `[-1, 1)` from a seeded linear congruential generator: the kernels' test inputs.
#[cfg(test)]
fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `[top, left]` of a padding that is the same on both sides of each axis.
fn symmetric_padding(padding: &PaddingConfig2d) -> Option<[usize; 2]> {
    match *padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        _ => None,
    }
}

#[cfg(not(feature = "cuda"))]
mod extension {
    use super::causal_softmax as softmax_kernel;
    use super::cross_entropy as ce_kernel;
    use super::rms_norm as rms_kernel;
    use super::sgld_step as sgld_kernel;
    use super::swiglu as swiglu_kernel;
    use super::{SgldScalars, SgldStep};
    use super::{batch_norm as bn_kernel, conv2d as conv_kernel, max_pool2d as pool_kernel};
    use burn::backend::TensorMetadata;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::{Autodiff, NodeId};
    use burn::backend::flex::FlexTensor;
    use burn::backend::ops::{ConvOptions, ModuleOps};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{
        AutodiffBackend, Backend, BackendTypes, Dispatch, Flex, Scalar, Shape, backend_extension,
    };
    use burn::tensor::IntDType;
    use burn::tensor::{DType, Tensor, TensorData};
    use std::sync::Arc;

    /// Convolution and max-pooling with vigil's kernels on the CPU backend. The default bodies
    /// are burn's own operations (the `burn_*` functions below): what any backend without its
    /// own implementation runs.
    #[backend_extension(Flex, Autodiff)]
    pub trait KernelOps: Backend {
        /// 2-D convolution without bias, dilation 1, one group, symmetric padding.
        fn vigil_conv2d(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> FloatTensor<Self> {
            burn_conv2d::<Self>(x, weight, stride, padding)
        }

        /// Gradient of [`Self::vigil_conv2d`] with respect to `x`.
        fn vigil_conv2d_x_backward(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            output_grad: FloatTensor<Self>,
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> FloatTensor<Self> {
            Self::conv2d_x_backward(x, weight, output_grad, conv_options(stride, padding))
        }

        /// Gradient of [`Self::vigil_conv2d`] with respect to `weight`.
        fn vigil_conv2d_weight_backward(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            output_grad: FloatTensor<Self>,
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> FloatTensor<Self> {
            Self::conv2d_weight_backward(x, weight, output_grad, conv_options(stride, padding))
        }

        /// Max-pooling, no dilation, no ceil mode.
        fn vigil_max_pool2d(
            x: FloatTensor<Self>,
            kernel: [usize; 2],
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> FloatTensor<Self> {
            Self::max_pool2d(x, kernel, stride, padding, [1, 1], false)
        }

        /// Gradient of [`Self::vigil_max_pool2d`] with respect to `x`.
        fn vigil_max_pool2d_backward(
            x: FloatTensor<Self>,
            output_grad: FloatTensor<Self>,
            kernel: [usize; 2],
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> FloatTensor<Self> {
            burn_max_pool2d_backward::<Self>(x, output_grad, kernel, stride, padding)
        }

        /// Batch normalisation of `[n, c, h, w]` with the batch's own statistics, then a ReLU
        /// if `relu`: the output, and the batch's mean and biased variance (`[c]`).
        fn vigil_batch_norm_train(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            epsilon: f64,
            relu: bool,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            burn_batch_norm_train::<Self>(x, gamma, beta, epsilon, relu)
        }

        /// Batch normalisation with the given statistics (eval mode), then a ReLU if `relu`.
        fn vigil_batch_norm_eval(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            mean: FloatTensor<Self>,
            variance: FloatTensor<Self>,
            epsilon: f64,
            relu: bool,
        ) -> FloatTensor<Self> {
            burn_batch_norm_eval::<Self>(x, gamma, beta, mean, variance, epsilon, relu)
        }

        /// Gradients of either batch normalisation with respect to `x`, `gamma` and `beta`,
        /// given its `output` and the output's gradient; `batch_stats` says which one ran, and
        /// without `params` the gradients of `gamma` and `beta` may be left zero.
        #[allow(clippy::too_many_arguments)] // the operands burn's own backward takes, and three flags
        fn vigil_batch_norm_backward(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            mean: FloatTensor<Self>,
            variance: FloatTensor<Self>,
            output: FloatTensor<Self>,
            output_grad: FloatTensor<Self>,
            epsilon: f64,
            relu: bool,
            batch_stats: bool,
            params: bool,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            let _ = params; // burn's operations compute every gradient
            burn_batch_norm_backward::<Self>(
                [x, gamma, mean, variance, output, output_grad],
                epsilon,
                relu,
                batch_stats,
            )
        }

        /// One localized SGLD step of a flat `f32` parameter ([`super::sgld_step`]): the next
        /// value, the next squared-gradient average (empty for plain SGLD; an empty `average`
        /// in starts at zero) and the four squared norms as a `[4]` tensor of `f64`.
        fn vigil_sgld_step(
            value: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            w_star: FloatTensor<Self>,
            average: FloatTensor<Self>,
            noise: FloatTensor<Self>,
            scalars: SgldScalars,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

        /// Cross-entropy of each row of `f32` logits `[rows, width]` against `targets` (one per
        /// row, each below `width` or [`ce_kernel::IGNORED`]): the losses and the rows'
        /// log-sum-exps, both `[rows]` ([`ce_kernel::forward`]).
        fn vigil_cross_entropy(
            logits: FloatTensor<Self>,
            targets: Arc<[u32]>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>);

        /// Gradient of [`Self::vigil_cross_entropy`]'s losses weighted by `grad` with respect
        /// to the logits ([`ce_kernel::backward`]).
        fn vigil_cross_entropy_backward(
            logits: FloatTensor<Self>,
            lse: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            targets: Arc<[u32]>,
        ) -> FloatTensor<Self>;

        /// `silu(gate) * up` of two `f32` tensors of one shape ([`swiglu_kernel::forward`]).
        fn vigil_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;

        /// Gradients of [`Self::vigil_swiglu`]'s output weighted by `grad` with respect to `gate`
        /// and `up` ([`swiglu_kernel::backward`]).
        fn vigil_swiglu_backward(
            gate: FloatTensor<Self>,
            up: FloatTensor<Self>,
            grad: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>);

        /// RMSNorm of `f32` `x` over its last axis, scaled by `gamma` (that axis' width): the
        /// output and each row's `1 / rms` ([`rms_kernel::forward`]).
        fn vigil_rms_norm(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            epsilon: f64,
        ) -> (FloatTensor<Self>, FloatTensor<Self>);

        /// Gradients of [`Self::vigil_rms_norm`]'s output weighted by `grad` with respect to `x`
        /// and `gamma` ([`rms_kernel::backward`]).
        fn vigil_rms_norm_backward(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            inverse: FloatTensor<Self>,
            grad: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>);

        /// Causal softmax of `f32` scores `[.., rows, keys]` divided by `divisor`
        /// ([`softmax_kernel::forward`]).
        fn vigil_causal_softmax(
            scores: FloatTensor<Self>,
            queries: usize,
            divisor: f32,
        ) -> FloatTensor<Self>;

        /// Gradient of [`Self::vigil_causal_softmax`]'s output `probs` weighted by `grad` with
        /// respect to the scores ([`softmax_kernel::backward`]).
        fn vigil_causal_softmax_backward(
            probs: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            queries: usize,
            divisor: f32,
        ) -> FloatTensor<Self>;
    }

    /// The options of [`KernelOps::vigil_conv2d`] for burn's convolution.
    fn conv_options(stride: [usize; 2], padding: [usize; 2]) -> ConvOptions<2> {
        ConvOptions::new(stride, padding, [1, 1], 1)
    }

    /// burn's convolution without bias, for the default body and the `Flex` fallback.
    fn burn_conv2d<B: Backend>(
        x: FloatTensor<B>,
        weight: FloatTensor<B>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<B> {
        B::conv2d(x, weight, None, conv_options(stride, padding))
    }

    /// burn's max-pool gradient (through its index tensor), for the default body and the
    /// `Flex` fallback.
    fn burn_max_pool2d_backward<B: Backend>(
        x: FloatTensor<B>,
        output_grad: FloatTensor<B>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<B> {
        let (dilation, ceil) = ([1, 1], false);
        let indices = B::max_pool2d_with_indices(
            x.clone(),
            kernel,
            stride,
            padding,
            dilation,
            ceil,
            IntDType::I64,
        )
        .indices;
        B::max_pool2d_with_indices_backward(
            x,
            kernel,
            stride,
            padding,
            dilation,
            ceil,
            output_grad,
            indices,
        )
        .x_grad
    }

    /// burn's batch normalisation with batch statistics, then its ReLU.
    fn burn_batch_norm_train<B: Backend>(
        x: FloatTensor<B>,
        gamma: FloatTensor<B>,
        beta: FloatTensor<B>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let out = B::batch_norm_train(x, gamma, beta, epsilon);
        let output = if relu {
            B::relu(out.output)
        } else {
            out.output
        };
        (output, out.mean, out.variance)
    }

    /// burn's batch normalisation with given statistics, then its ReLU.
    fn burn_batch_norm_eval<B: Backend>(
        x: FloatTensor<B>,
        gamma: FloatTensor<B>,
        beta: FloatTensor<B>,
        mean: FloatTensor<B>,
        variance: FloatTensor<B>,
        epsilon: f64,
        relu: bool,
    ) -> FloatTensor<B> {
        let out = B::batch_norm(x, gamma, beta, mean, variance, epsilon);
        if relu { B::relu(out) } else { out }
    }

    /// The batch normalisation's gradients out of burn's operations: the ReLU's mask, then
    /// burn's own backward for batch statistics, or the affine map's for given ones.
    fn burn_batch_norm_backward<B: Backend>(
        [x, gamma, mean, variance, output, output_grad]: [FloatTensor<B>; 6],
        epsilon: f64,
        relu: bool,
        batch_stats: bool,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let grad = if relu {
            B::relu_backward(output, output_grad)
        } else {
            output_grad
        };
        if batch_stats {
            let b = B::batch_norm_train_backward(x, gamma, mean, variance, epsilon, grad);
            return (b.x_grad, b.gamma_grad, b.beta_grad);
        }
        let channels = x.shape()[1];
        let per_channel = Shape::new([1, channels, 1, 1]);
        let inv_std = B::float_reshape(
            B::float_recip(B::float_sqrt(B::float_add_scalar(
                variance,
                Scalar::Float(epsilon),
            ))),
            per_channel.clone(),
        );
        let xhat = B::float_mul(
            B::float_sub(x, B::float_reshape(mean, per_channel.clone())),
            inv_std.clone(),
        );
        let channel_sum = |t: FloatTensor<B>| {
            let summed = B::float_sum_dim(B::float_sum_dim(B::float_sum_dim(t, 0), 2), 3);
            B::float_reshape(summed, Shape::new([channels]))
        };
        let dbeta = channel_sum(grad.clone());
        let dgamma = channel_sum(B::float_mul(grad.clone(), xhat));
        let scale = B::float_mul(B::float_reshape(gamma, per_channel), inv_std);
        (B::float_mul(grad, scale), dgamma, dbeta)
    }

    /// A contiguous `f32` copy (or view) of a tensor and its 4-D shape; `None` for other dtypes
    /// or ranks, which then go through burn's operations.
    fn f32_nchw(t: &FlexTensor) -> Option<(FlexTensor, [usize; 4])> {
        if t.dtype() != DType::F32 {
            return None;
        }
        let shape: [usize; 4] = t.layout().shape().as_slice().try_into().ok()?;
        Some((t.to_contiguous(), shape))
    }

    fn slice(t: &FlexTensor) -> &[f32] {
        t.as_slice::<f32>()
            .expect("a contiguous f32 tensor has a slice view")
    }

    fn tensor(data: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(data, shape))
    }

    /// The convolution's operands as slices and geometry, if the kernel handles them.
    fn conv_operands(
        x: &FlexTensor,
        weight: &FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Option<(FlexTensor, FlexTensor, conv_kernel::Conv2dGeometry)> {
        let (x, x_shape) = f32_nchw(x)?;
        let (w, w_shape) = f32_nchw(weight)?;
        let g = conv_kernel::Conv2dGeometry::new(x_shape, w_shape, stride, padding)?;
        Some((x, w, g))
    }

    /// The pooling's input as a slice, its shape and the geometry, if the kernel handles them.
    fn pool_operands(
        x: &FlexTensor,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Option<(FlexTensor, [usize; 4], pool_kernel::PoolGeometry)> {
        let (x, shape) = f32_nchw(x)?;
        let g = pool_kernel::PoolGeometry::new(shape, kernel, stride, padding)?;
        Some((x, shape, g))
    }

    /// The batch normalisation's input as a slice, its shape and geometry, and its per-channel
    /// operands as vectors, if the kernel handles them (`f32`, 4-D, one value per channel).
    #[allow(clippy::type_complexity)] // one use, spelled out where it is destructured
    fn bn_operands<const K: usize>(
        x: &FlexTensor,
        per_channel: [&FlexTensor; K],
    ) -> Option<(FlexTensor, [usize; 4], bn_kernel::BnGeometry, [Vec<f32>; K])> {
        let (x, shape) = f32_nchw(x)?;
        let mut vectors: [Vec<f32>; K] = std::array::from_fn(|_| Vec::new());
        for (v, t) in vectors.iter_mut().zip(per_channel) {
            if t.dtype() != DType::F32 || t.layout().shape().as_slice() != [shape[1]] {
                return None;
            }
            *v = slice(&t.to_contiguous()).to_vec();
        }
        let g = bn_kernel::BnGeometry {
            batch: shape[0],
            channels: shape[1],
            plane: shape[2] * shape[3],
        };
        Some((x, shape, g, vectors))
    }

    /// `t` contiguous from offset 0 (itself when it already is), for a kernel that writes it in
    /// place: its storage is then copied only if something else holds it too.
    fn owned_contiguous(t: FlexTensor) -> FlexTensor {
        match t.layout().contiguous_offsets() {
            Some((0, _)) => t,
            _ => FlexTensor::from_data(t.into_data()),
        }
    }

    fn vector(data: Vec<f32>) -> FlexTensor {
        let len = data.len();
        FlexTensor::from_data(TensorData::new(data, [len]))
    }

    impl KernelOps for Flex {
        fn vigil_conv2d(
            x: FlexTensor,
            weight: FlexTensor,
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> FlexTensor {
            let Some((xc, wc, g)) = conv_operands(&x, &weight, stride, padding) else {
                return burn_conv2d::<Self>(x, weight, stride, padding);
            };
            let out = conv_kernel::forward(&g, slice(&xc), slice(&wc));
            tensor(out, [g.batch, g.c_out, g.oh, g.ow])
        }

        fn vigil_conv2d_x_backward(
            x: FlexTensor,
            weight: FlexTensor,
            output_grad: FlexTensor,
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> FlexTensor {
            let operands = conv_operands(&x, &weight, stride, padding);
            let grad = f32_nchw(&output_grad);
            let (Some((_, wc, g)), Some((gc, _))) = (operands, grad) else {
                let options = conv_options(stride, padding);
                return Self::conv2d_x_backward(x, weight, output_grad, options);
            };
            let dx = conv_kernel::backward_input(&g, slice(&wc), slice(&gc));
            tensor(dx, [g.batch, g.c_in, g.h, g.w])
        }

        fn vigil_conv2d_weight_backward(
            x: FlexTensor,
            weight: FlexTensor,
            output_grad: FlexTensor,
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> FlexTensor {
            let operands = conv_operands(&x, &weight, stride, padding);
            let grad = f32_nchw(&output_grad);
            let (Some((xc, _, g)), Some((gc, _))) = (operands, grad) else {
                let options = conv_options(stride, padding);
                return Self::conv2d_weight_backward(x, weight, output_grad, options);
            };
            let dw = conv_kernel::backward_weight(&g, slice(&xc), slice(&gc));
            tensor(dw, [g.c_out, g.c_in, g.kh, g.kw])
        }

        fn vigil_max_pool2d(
            x: FlexTensor,
            kernel: [usize; 2],
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> FlexTensor {
            let Some((xc, shape, g)) = pool_operands(&x, kernel, stride, padding) else {
                return Self::max_pool2d(x, kernel, stride, padding, [1, 1], false);
            };
            let out = pool_kernel::forward(&g, slice(&xc));
            tensor(out, [shape[0], shape[1], g.oh, g.ow])
        }

        fn vigil_max_pool2d_backward(
            x: FlexTensor,
            output_grad: FlexTensor,
            kernel: [usize; 2],
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> FlexTensor {
            let operands = pool_operands(&x, kernel, stride, padding);
            let grad = f32_nchw(&output_grad);
            let (Some((xc, shape, g)), Some((gc, _))) = (operands, grad) else {
                return burn_max_pool2d_backward::<Self>(x, output_grad, kernel, stride, padding);
            };
            let dx = pool_kernel::backward(&g, slice(&xc), slice(&gc));
            tensor(dx, shape)
        }

        fn vigil_batch_norm_train(
            x: FlexTensor,
            gamma: FlexTensor,
            beta: FlexTensor,
            epsilon: f64,
            relu: bool,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let Some((xc, shape, g, [gamma_v, beta_v])) = bn_operands(&x, [&gamma, &beta]) else {
                return burn_batch_norm_train::<Self>(x, gamma, beta, epsilon, relu);
            };
            let (mean, variance) = bn_kernel::batch_stats(&g, slice(&xc));
            let inv_std = bn_kernel::inverse_std(&variance, epsilon);
            let out =
                bn_kernel::forward(&g, slice(&xc), [&gamma_v, &beta_v, &mean, &inv_std], relu);
            (tensor(out, shape), vector(mean), vector(variance))
        }

        fn vigil_batch_norm_eval(
            x: FlexTensor,
            gamma: FlexTensor,
            beta: FlexTensor,
            mean: FlexTensor,
            variance: FlexTensor,
            epsilon: f64,
            relu: bool,
        ) -> FlexTensor {
            let Some((xc, shape, g, [gamma_v, beta_v, mean_v, var_v])) =
                bn_operands(&x, [&gamma, &beta, &mean, &variance])
            else {
                return burn_batch_norm_eval::<Self>(x, gamma, beta, mean, variance, epsilon, relu);
            };
            let inv_std = bn_kernel::inverse_std(&var_v, epsilon);
            let out =
                bn_kernel::forward(&g, slice(&xc), [&gamma_v, &beta_v, &mean_v, &inv_std], relu);
            tensor(out, shape)
        }

        fn vigil_batch_norm_backward(
            x: FlexTensor,
            gamma: FlexTensor,
            mean: FlexTensor,
            variance: FlexTensor,
            output: FlexTensor,
            output_grad: FlexTensor,
            epsilon: f64,
            relu: bool,
            batch_stats: bool,
            params: bool,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let operands = bn_operands(&x, [&gamma, &mean, &variance]);
            let (out, grad) = (f32_nchw(&output), f32_nchw(&output_grad));
            let (Some((xc, shape, g, [gamma_v, mean_v, var_v])), Some((oc, _)), Some((gc, _))) =
                (operands, out, grad)
            else {
                return burn_batch_norm_backward::<Self>(
                    [x, gamma, mean, variance, output, output_grad],
                    epsilon,
                    relu,
                    batch_stats,
                );
            };
            let inv_std = bn_kernel::inverse_std(&var_v, epsilon);
            let (dx, dgamma, dbeta) = bn_kernel::backward(
                &g,
                slice(&xc),
                [&gamma_v, &mean_v, &inv_std],
                slice(&oc),
                slice(&gc),
                relu,
                [batch_stats, params],
            );
            (tensor(dx, shape), vector(dgamma), vector(dbeta))
        }

        fn vigil_sgld_step(
            value: FlexTensor,
            grad: FlexTensor,
            w_star: FlexTensor,
            average: FlexTensor,
            noise: FlexTensor,
            scalars: SgldScalars,
        ) -> (FlexTensor, FlexTensor, FlexTensor) {
            let n = noise.layout().num_elements();
            let (grad, w_star, noise) = (
                grad.to_contiguous(),
                w_star.to_contiguous(),
                noise.to_contiguous(),
            );
            let mut value = owned_contiguous(value);
            let mut average = match (scalars.rmsprop, average.layout().num_elements()) {
                (Some(_), 0) => vector(vec![0.0; n]),
                _ => owned_contiguous(average),
            };
            let average_len = average.layout().num_elements();
            let squared = sgld_kernel::step(
                &scalars,
                &mut value.storage_mut::<f32>()[..n],
                &mut average.storage_mut::<f32>()[..average_len],
                [slice(&grad), slice(&w_star), slice(&noise)],
            );
            let squared = FlexTensor::from_data(TensorData::new(squared.to_vec(), [4]));
            (value, average, squared)
        }

        fn vigil_cross_entropy(
            logits: FlexTensor,
            targets: Arc<[u32]>,
        ) -> (FlexTensor, FlexTensor) {
            let width = logits
                .layout()
                .shape()
                .as_slice()
                .last()
                .copied()
                .unwrap_or(0);
            let logits = logits.to_contiguous();
            let (losses, lse) = ce_kernel::forward(slice(&logits), width, &targets);
            (vector(losses), vector(lse))
        }

        fn vigil_cross_entropy_backward(
            logits: FlexTensor,
            lse: FlexTensor,
            grad: FlexTensor,
            targets: Arc<[u32]>,
        ) -> FlexTensor {
            let shape = logits.layout().shape().clone();
            let width = shape.as_slice().last().copied().unwrap_or(0);
            let (logits, lse, grad) = (
                logits.to_contiguous(),
                lse.to_contiguous(),
                grad.to_contiguous(),
            );
            let dx =
                ce_kernel::backward(slice(&logits), width, &targets, slice(&lse), slice(&grad));
            FlexTensor::from_data(TensorData::new(dx, shape))
        }

        fn vigil_swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
            let shape = gate.layout().shape().clone();
            let (gate, up) = (gate.to_contiguous(), up.to_contiguous());
            let out = swiglu_kernel::forward(slice(&gate), slice(&up));
            FlexTensor::from_data(TensorData::new(out, shape))
        }

        fn vigil_swiglu_backward(
            gate: FlexTensor,
            up: FlexTensor,
            grad: FlexTensor,
        ) -> (FlexTensor, FlexTensor) {
            let shape = gate.layout().shape().clone();
            let (gate, up, grad) = (
                gate.to_contiguous(),
                up.to_contiguous(),
                grad.to_contiguous(),
            );
            let (d_gate, d_up) = swiglu_kernel::backward(slice(&gate), slice(&up), slice(&grad));
            (
                FlexTensor::from_data(TensorData::new(d_gate, shape.clone())),
                FlexTensor::from_data(TensorData::new(d_up, shape)),
            )
        }

        fn vigil_rms_norm(
            x: FlexTensor,
            gamma: FlexTensor,
            epsilon: f64,
        ) -> (FlexTensor, FlexTensor) {
            let shape = x.layout().shape().clone();
            let (x, gamma) = (x.to_contiguous(), gamma.to_contiguous());
            let (out, inverse) = rms_kernel::forward(slice(&x), slice(&gamma), epsilon);
            (
                FlexTensor::from_data(TensorData::new(out, shape)),
                vector(inverse),
            )
        }

        fn vigil_rms_norm_backward(
            x: FlexTensor,
            gamma: FlexTensor,
            inverse: FlexTensor,
            grad: FlexTensor,
        ) -> (FlexTensor, FlexTensor) {
            let shape = x.layout().shape().clone();
            let (x, gamma, inverse, grad) = (
                x.to_contiguous(),
                gamma.to_contiguous(),
                inverse.to_contiguous(),
                grad.to_contiguous(),
            );
            let (dx, d_gamma) =
                rms_kernel::backward(slice(&x), slice(&gamma), slice(&inverse), slice(&grad));
            (
                FlexTensor::from_data(TensorData::new(dx, shape)),
                vector(d_gamma),
            )
        }

        fn vigil_causal_softmax(scores: FlexTensor, queries: usize, divisor: f32) -> FlexTensor {
            let shape = scores.layout().shape().clone();
            let keys = shape.as_slice().last().copied().unwrap_or(0);
            let scores = scores.to_contiguous();
            let out = softmax_kernel::forward(slice(&scores), queries, keys, divisor);
            FlexTensor::from_data(TensorData::new(out, shape))
        }

        fn vigil_causal_softmax_backward(
            probs: FlexTensor,
            grad: FlexTensor,
            queries: usize,
            divisor: f32,
        ) -> FlexTensor {
            let shape = probs.layout().shape().clone();
            let keys = shape.as_slice().last().copied().unwrap_or(0);
            let (probs, grad) = (probs.to_contiguous(), grad.to_contiguous());
            let ds = softmax_kernel::backward(slice(&probs), slice(&grad), queries, keys, divisor);
            FlexTensor::from_data(TensorData::new(ds, shape))
        }
    }

    /// Backward step of [`KernelOps::vigil_conv2d`]: the saved input and weight, the geometry.
    #[derive(Debug)]
    struct Conv2dBackward;

    impl<B: Backend + KernelOps> Backward<B, 2> for Conv2dBackward {
        type State = (NodeId, NodeId, [usize; 2], [usize; 2]);

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let [node_x, node_weight] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (x_state, weight_state, stride, padding) = ops.state;
            let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
            let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
            if let Some(node) = node_x {
                let dx = B::vigil_conv2d_x_backward(
                    x.clone(),
                    weight.clone(),
                    grad.clone(),
                    stride,
                    padding,
                );
                grads.register::<B>(node.id, dx);
            }
            if let Some(node) = node_weight {
                let dw = B::vigil_conv2d_weight_backward(x, weight, grad, stride, padding);
                grads.register::<B>(node.id, dw);
            }
        }
    }

    /// Backward step of [`KernelOps::vigil_max_pool2d`]: the saved input and the window.
    #[derive(Debug)]
    struct MaxPool2dBackward;

    impl<B: Backend + KernelOps> Backward<B, 1> for MaxPool2dBackward {
        type State = (NodeId, [usize; 2], [usize; 2], [usize; 2]);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let [node_x] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (x_state, kernel, stride, padding) = ops.state;
            let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
            if let Some(node) = node_x {
                let dx = B::vigil_max_pool2d_backward(x, grad, kernel, stride, padding);
                grads.register::<B>(node.id, dx);
            }
        }
    }

    /// Backward step of both batch normalisations: the saved input and scale, the statistics
    /// and output the forward produced, and its settings.
    #[derive(Debug)]
    struct BatchNormBackward;

    /// What [`BatchNormBackward`] keeps: the checkpointed input and scale, then the mean,
    /// variance and output, epsilon, whether a ReLU followed, whether batch statistics ran.
    type BatchNormState<B> = (
        NodeId,
        NodeId,
        [<B as BackendTypes>::FloatTensorPrimitive; 3],
        f64,
        bool,
        bool,
    );

    impl<B: Backend + KernelOps> Backward<B, 3> for BatchNormBackward {
        type State = BatchNormState<B>;

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let [node_x, node_gamma, node_beta] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (x_state, gamma_state, [mean, variance, output], epsilon, relu, batch_stats) =
                ops.state;
            let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
            let gamma = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(gamma_state);
            let params = node_gamma.is_some() || node_beta.is_some();
            let (dx, dgamma, dbeta) = B::vigil_batch_norm_backward(
                x,
                gamma,
                mean,
                variance,
                output,
                grad,
                epsilon,
                relu,
                batch_stats,
                params,
            );
            if let Some(node) = node_x {
                grads.register::<B>(node.id, dx);
            }
            if let Some(node) = node_gamma {
                grads.register::<B>(node.id, dgamma);
            }
            if let Some(node) = node_beta {
                grads.register::<B>(node.id, dbeta);
            }
        }
    }

    /// Backward step of [`KernelOps::vigil_cross_entropy`]: the saved logits, the rows'
    /// log-sum-exps and the targets.
    #[derive(Debug)]
    struct CrossEntropyBackward;

    impl<B: Backend + KernelOps> Backward<B, 1> for CrossEntropyBackward {
        type State = (
            NodeId,
            <B as BackendTypes>::FloatTensorPrimitive,
            Arc<[u32]>,
        );

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let [node_logits] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (logits_state, lse, targets) = ops.state;
            let logits = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(logits_state);
            if let Some(node) = node_logits {
                let dx = B::vigil_cross_entropy_backward(logits, lse, grad, targets);
                grads.register::<B>(node.id, dx);
            }
        }
    }

    /// Backward step of [`KernelOps::vigil_swiglu`]: the saved gate and up.
    #[derive(Debug)]
    struct SwigluBackward;

    impl<B: Backend + KernelOps> Backward<B, 2> for SwigluBackward {
        type State = (NodeId, NodeId);

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let [node_gate, node_up] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (gate_state, up_state) = ops.state;
            let gate = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(gate_state);
            let up = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(up_state);
            let (d_gate, d_up) = B::vigil_swiglu_backward(gate, up, grad);
            if let Some(node) = node_gate {
                grads.register::<B>(node.id, d_gate);
            }
            if let Some(node) = node_up {
                grads.register::<B>(node.id, d_up);
            }
        }
    }

    /// Backward step of [`KernelOps::vigil_rms_norm`]: the saved input and scale, and the
    /// rows' `1 / rms` the forward produced.
    #[derive(Debug)]
    struct RmsNormBackward;

    impl<B: Backend + KernelOps> Backward<B, 2> for RmsNormBackward {
        type State = (NodeId, NodeId, <B as BackendTypes>::FloatTensorPrimitive);

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let [node_x, node_gamma] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (x_state, gamma_state, inverse) = ops.state;
            let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
            let gamma = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(gamma_state);
            let (dx, d_gamma) = B::vigil_rms_norm_backward(x, gamma, inverse, grad);
            if let Some(node) = node_x {
                grads.register::<B>(node.id, dx);
            }
            if let Some(node) = node_gamma {
                grads.register::<B>(node.id, d_gamma);
            }
        }
    }

    /// Backward step of [`KernelOps::vigil_causal_softmax`]: the output the forward produced,
    /// the queries per stack and the divisor.
    #[derive(Debug)]
    struct CausalSoftmaxBackward;

    impl<B: Backend + KernelOps> Backward<B, 1> for CausalSoftmaxBackward {
        type State = (<B as BackendTypes>::FloatTensorPrimitive, usize, f32);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_scores] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (probs, queries, divisor) = ops.state;
            if let Some(node) = node_scores {
                let ds = B::vigil_causal_softmax_backward(probs, grad, queries, divisor);
                grads.register::<B>(node.id, ds);
            }
        }
    }

    impl<B: Backend + KernelOps, C: CheckpointStrategy> KernelOps for Autodiff<B, C> {
        fn vigil_conv2d(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> FloatTensor<Self> {
            match Conv2dBackward
                .prepare::<C>([x.node(), weight.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let x_state = prep.checkpoint(&x);
                    let weight_state = prep.checkpoint(&weight);
                    let out = B::vigil_conv2d(
                        x.into_primitive(),
                        weight.into_primitive(),
                        stride,
                        padding,
                    );
                    prep.finish((x_state, weight_state, stride, padding), out)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::vigil_conv2d(
                    x.into_primitive(),
                    weight.into_primitive(),
                    stride,
                    padding,
                )),
            }
        }

        fn vigil_max_pool2d(
            x: FloatTensor<Self>,
            kernel: [usize; 2],
            stride: [usize; 2],
            padding: [usize; 2],
        ) -> FloatTensor<Self> {
            match MaxPool2dBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let x_state = prep.checkpoint(&x);
                    let out = B::vigil_max_pool2d(x.into_primitive(), kernel, stride, padding);
                    prep.finish((x_state, kernel, stride, padding), out)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::vigil_max_pool2d(
                    x.into_primitive(),
                    kernel,
                    stride,
                    padding,
                )),
            }
        }

        fn vigil_batch_norm_train(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            epsilon: f64,
            relu: bool,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            match BatchNormBackward
                .prepare::<C>([x.node(), gamma.node(), beta.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let x_state = prep.checkpoint(&x);
                    let gamma_state = prep.checkpoint(&gamma);
                    let (out, mean, variance) = B::vigil_batch_norm_train(
                        x.into_primitive(),
                        gamma.into_primitive(),
                        beta.into_primitive(),
                        epsilon,
                        relu,
                    );
                    let saved = [mean.clone(), variance.clone(), out.clone()];
                    let state = (x_state, gamma_state, saved, epsilon, relu, true);
                    let out = prep.finish(state, out);
                    (out, Self::from_inner(mean), Self::from_inner(variance))
                }
                OpsKind::UnTracked(prep) => {
                    let (out, mean, variance) = B::vigil_batch_norm_train(
                        x.into_primitive(),
                        gamma.into_primitive(),
                        beta.into_primitive(),
                        epsilon,
                        relu,
                    );
                    (
                        prep.finish(out),
                        Self::from_inner(mean),
                        Self::from_inner(variance),
                    )
                }
            }
        }

        fn vigil_batch_norm_eval(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            mean: FloatTensor<Self>,
            variance: FloatTensor<Self>,
            epsilon: f64,
            relu: bool,
        ) -> FloatTensor<Self> {
            // The running statistics are buffers, never differentiated.
            let (mean, variance) = (mean.into_primitive(), variance.into_primitive());
            match BatchNormBackward
                .prepare::<C>([x.node(), gamma.node(), beta.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let x_state = prep.checkpoint(&x);
                    let gamma_state = prep.checkpoint(&gamma);
                    let out = B::vigil_batch_norm_eval(
                        x.into_primitive(),
                        gamma.into_primitive(),
                        beta.into_primitive(),
                        mean.clone(),
                        variance.clone(),
                        epsilon,
                        relu,
                    );
                    let saved = [mean, variance, out.clone()];
                    prep.finish((x_state, gamma_state, saved, epsilon, relu, false), out)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::vigil_batch_norm_eval(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    mean,
                    variance,
                    epsilon,
                    relu,
                )),
            }
        }

        fn vigil_sgld_step(
            value: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            w_star: FloatTensor<Self>,
            average: FloatTensor<Self>,
            noise: FloatTensor<Self>,
            scalars: SgldScalars,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            // An update of the weights, never differentiated.
            let (value, average, squared) = B::vigil_sgld_step(
                value.into_primitive(),
                grad.into_primitive(),
                w_star.into_primitive(),
                average.into_primitive(),
                noise.into_primitive(),
                scalars,
            );
            (
                Self::from_inner(value),
                Self::from_inner(average),
                Self::from_inner(squared),
            )
        }

        fn vigil_cross_entropy(
            logits: FloatTensor<Self>,
            targets: Arc<[u32]>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            match CrossEntropyBackward
                .prepare::<C>([logits.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let logits_state = prep.checkpoint(&logits);
                    let (losses, lse) =
                        B::vigil_cross_entropy(logits.into_primitive(), targets.clone());
                    let losses = prep.finish((logits_state, lse.clone(), targets), losses);
                    (losses, Self::from_inner(lse))
                }
                OpsKind::UnTracked(prep) => {
                    let (losses, lse) = B::vigil_cross_entropy(logits.into_primitive(), targets);
                    (prep.finish(losses), Self::from_inner(lse))
                }
            }
        }

        fn vigil_cross_entropy_backward(
            logits: FloatTensor<Self>,
            lse: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            targets: Arc<[u32]>,
        ) -> FloatTensor<Self> {
            // A gradient, never differentiated again.
            Self::from_inner(B::vigil_cross_entropy_backward(
                logits.into_primitive(),
                lse.into_primitive(),
                grad.into_primitive(),
                targets,
            ))
        }

        fn vigil_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
            match SwigluBackward
                .prepare::<C>([gate.node(), up.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let gate_state = prep.checkpoint(&gate);
                    let up_state = prep.checkpoint(&up);
                    let out = B::vigil_swiglu(gate.into_primitive(), up.into_primitive());
                    prep.finish((gate_state, up_state), out)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::vigil_swiglu(gate.into_primitive(), up.into_primitive()))
                }
            }
        }

        fn vigil_swiglu_backward(
            gate: FloatTensor<Self>,
            up: FloatTensor<Self>,
            grad: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            // Gradients, never differentiated again.
            let (d_gate, d_up) = B::vigil_swiglu_backward(
                gate.into_primitive(),
                up.into_primitive(),
                grad.into_primitive(),
            );
            (Self::from_inner(d_gate), Self::from_inner(d_up))
        }

        fn vigil_rms_norm(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            epsilon: f64,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            match RmsNormBackward
                .prepare::<C>([x.node(), gamma.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let x_state = prep.checkpoint(&x);
                    let gamma_state = prep.checkpoint(&gamma);
                    let (out, inverse) =
                        B::vigil_rms_norm(x.into_primitive(), gamma.into_primitive(), epsilon);
                    let out = prep.finish((x_state, gamma_state, inverse.clone()), out);
                    (out, Self::from_inner(inverse))
                }
                OpsKind::UnTracked(prep) => {
                    let (out, inverse) =
                        B::vigil_rms_norm(x.into_primitive(), gamma.into_primitive(), epsilon);
                    (prep.finish(out), Self::from_inner(inverse))
                }
            }
        }

        fn vigil_rms_norm_backward(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            inverse: FloatTensor<Self>,
            grad: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            // Gradients, never differentiated again.
            let (dx, d_gamma) = B::vigil_rms_norm_backward(
                x.into_primitive(),
                gamma.into_primitive(),
                inverse.into_primitive(),
                grad.into_primitive(),
            );
            (Self::from_inner(dx), Self::from_inner(d_gamma))
        }

        fn vigil_causal_softmax(
            scores: FloatTensor<Self>,
            queries: usize,
            divisor: f32,
        ) -> FloatTensor<Self> {
            match CausalSoftmaxBackward
                .prepare::<C>([scores.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let probs = B::vigil_causal_softmax(scores.into_primitive(), queries, divisor);
                    prep.finish((probs.clone(), queries, divisor), probs)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::vigil_causal_softmax(
                    scores.into_primitive(),
                    queries,
                    divisor,
                )),
            }
        }

        fn vigil_causal_softmax_backward(
            probs: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            queries: usize,
            divisor: f32,
        ) -> FloatTensor<Self> {
            // A gradient, never differentiated again.
            Self::from_inner(B::vigil_causal_softmax_backward(
                probs.into_primitive(),
                grad.into_primitive(),
                queries,
                divisor,
            ))
        }
    }

    pub fn conv2d(
        x: Tensor<4>,
        weight: Tensor<4>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Tensor<4> {
        Tensor::from_dispatch(<Dispatch as KernelOps>::vigil_conv2d(
            x.into_dispatch(),
            weight.into_dispatch(),
            stride,
            padding,
        ))
    }

    pub fn max_pool2d(
        x: Tensor<4>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Tensor<4> {
        Tensor::from_dispatch(<Dispatch as KernelOps>::vigil_max_pool2d(
            x.into_dispatch(),
            kernel,
            stride,
            padding,
        ))
    }

    pub fn batch_norm_train(
        x: Tensor<4>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        epsilon: f64,
        relu: bool,
    ) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
        let (out, mean, variance) = <Dispatch as KernelOps>::vigil_batch_norm_train(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            epsilon,
            relu,
        );
        (
            Tensor::from_dispatch(out),
            Tensor::from_dispatch(mean),
            Tensor::from_dispatch(variance),
        )
    }

    pub fn batch_norm_eval(
        x: Tensor<4>,
        [gamma, beta, mean, variance]: [Tensor<1>; 4],
        epsilon: f64,
        relu: bool,
    ) -> Tensor<4> {
        Tensor::from_dispatch(<Dispatch as KernelOps>::vigil_batch_norm_eval(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            mean.into_dispatch(),
            variance.into_dispatch(),
            epsilon,
            relu,
        ))
    }

    pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
        Tensor::from_dispatch(<Dispatch as KernelOps>::vigil_swiglu(
            gate.into_dispatch(),
            up.into_dispatch(),
        ))
    }

    pub fn rms_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, epsilon: f64) -> Tensor<D> {
        let (out, _) = <Dispatch as KernelOps>::vigil_rms_norm(
            x.into_dispatch(),
            gamma.into_dispatch(),
            epsilon,
        );
        Tensor::from_dispatch(out)
    }

    pub fn causal_softmax(scores: Tensor<4>, queries: usize, divisor: f64) -> Tensor<4> {
        Tensor::from_dispatch(<Dispatch as KernelOps>::vigil_causal_softmax(
            scores.into_dispatch(),
            queries,
            divisor as f32,
        ))
    }

    pub fn cross_entropy(logits: Tensor<2>, targets: Arc<[u32]>) -> Tensor<1> {
        let (losses, _) =
            <Dispatch as KernelOps>::vigil_cross_entropy(logits.into_dispatch(), targets);
        Tensor::from_dispatch(losses)
    }

    pub fn sgld_step(
        s: &SgldScalars,
        value: Tensor<1>,
        grad: Tensor<1>,
        w_star: Tensor<1>,
        average: Option<Tensor<1>>,
        noise: Vec<f32>,
    ) -> SgldStep {
        let device = value.device();
        let n = noise.len();
        let average = average.unwrap_or_else(|| Tensor::zeros([0], &device));
        let noise = Tensor::<1>::from_data(TensorData::new(noise, [n]), &device);
        let (next, average, squared) = <Dispatch as KernelOps>::vigil_sgld_step(
            value.into_dispatch(),
            grad.into_dispatch(),
            w_star.into_dispatch(),
            average.into_dispatch(),
            noise.into_dispatch(),
            *s,
        );
        let squared: Vec<f64> = Tensor::<1>::from_dispatch(squared)
            .into_data()
            .iter::<f64>()
            .collect();
        let squared = std::array::from_fn(|k| squared.get(k).copied().unwrap_or(f64::NAN));
        let average = s.rmsprop.map(|_| Tensor::from_dispatch(average));
        (Tensor::from_dispatch(next), average, squared)
    }
}

#[cfg(all(test, not(feature = "cuda")))]
mod tests {
    use super::*;
    use crate::device::{autodiff_device, default_device};
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::module::max_pool2d as burn_max_pool2d;
    use burn::tensor::ops::MaxPoolOptions;
    use burn::tensor::{Distribution, Tensor};

    fn assert_close(a: Tensor<4>, b: Tensor<4>, what: &str) {
        let a = a.into_data().try_to_vec::<f32>().unwrap();
        let b = b.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a.len(), b.len(), "{what}: sizes");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "{what}, element {i}: {x} vs {y}"
            );
        }
    }

    /// Forward values and both gradients (through autodiff) against burn's own convolution,
    /// on strides, paddings, odd sizes, 1 to 20 channels, with and without bias.
    #[test]
    fn convolution_layer_agrees_with_burn() {
        let cases = [
            (1, 4, [3, 3], [1, 1], 1, 7, true),
            (3, 5, [3, 3], [2, 2], 1, 9, false),
            (3, 2, [1, 1], [2, 2], 0, 8, false),
            (2, 3, [5, 5], [1, 1], 2, 6, true),
            (3, 4, [1, 1], [1, 1], 0, 5, true),
            // Winograd's F(2x2, 3x3) (kernels::winograd): 16+ channels, stride 1.
            (16, 17, [3, 3], [1, 1], 1, 8, true),
            (20, 16, [3, 3], [1, 1], 2, 6, false),
        ];
        for (i, (c_in, c_out, k, stride, pad, size, bias)) in cases.into_iter().enumerate() {
            let device = autodiff_device();
            let conv = Conv2dConfig::new([c_in, c_out], k)
                .with_stride(stride)
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(bias)
                .init(&device);
            let x = Tensor::<4>::random([2, c_in, size, size + 1], Distribution::Default, &device)
                .require_grad();
            let u = Tensor::<4>::random(
                conv.forward(x.clone()).dims(),
                Distribution::Default,
                &device,
            );
            let ours = conv2d_layer(&conv, x.clone());
            let theirs = conv.forward(x.clone());
            assert_close(ours.clone(), theirs.clone(), &format!("case {i} forward"));
            let grads_ours = (ours * u.clone()).sum().backward();
            let grads_theirs = (theirs * u).sum().backward();
            let dx = |g| x.grad(g).unwrap();
            assert_close(
                dx(&grads_ours),
                dx(&grads_theirs),
                &format!("case {i} input gradient"),
            );
            let dw = |g| conv.weight.grad(g).unwrap();
            assert_close(
                dw(&grads_ours),
                dw(&grads_theirs),
                &format!("case {i} weight gradient"),
            );
        }
    }

    #[test]
    fn max_pooling_agrees_with_burn() {
        for (k, s, p, size) in [
            (2, 2, 0, 8),
            (2, 2, 0, 7),
            (2, 2, 0, 20),
            (3, 2, 1, 9),
            (3, 1, 1, 5),
        ] {
            let device = autodiff_device();
            let x = Tensor::<4>::random([2, 3, size, size], Distribution::Default, &device)
                .require_grad();
            let options = MaxPoolOptions::new([k, k])
                .with_stride([s, s])
                .with_padding([p, p]);
            let ours = max_pool2d(x.clone(), [k, k], [s, s], [p, p]);
            let theirs = burn_max_pool2d(x.clone(), options);
            assert_eq!(ours.dims(), theirs.dims());
            assert_close(ours.clone(), theirs.clone(), "pool forward");
            let u = Tensor::<4>::random(ours.dims(), Distribution::Default, &device);
            let g1 = (ours * u.clone()).sum().backward();
            let g2 = (theirs * u).sum().backward();
            assert_close(x.grad(&g1).unwrap(), x.grad(&g2).unwrap(), "pool gradient");
        }
        // Without autodiff too.
        let x = Tensor::<4>::random([1, 2, 6, 6], Distribution::Default, &default_device());
        let ours = max_pool2d(x.clone(), [2, 2], [2, 2], [0, 0]);
        let theirs = burn_max_pool2d(x, MaxPoolOptions::new([2, 2]).with_stride([2, 2]));
        assert_close(ours, theirs, "inference pool");
    }

    /// The small CNN pools before its ReLUs (`models::small_cnn`): both orders give the same
    /// values and the same input gradients bit for bit, on windows with ties, zeros of both
    /// signs, all-negative windows and NaN.
    #[test]
    fn pool_then_relu_equals_relu_then_pool() {
        use burn::tensor::activation::relu;
        let values = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            1.0,
            f32::NAN,
            2.5,
            -3.0,
            0.0,
            2.5,
            -0.5,
        ];
        let (shape, n) = ([2, 3, 6, 22], 2 * 3 * 6 * 22);
        let data: Vec<f32> = (0..n)
            .map(|i| values[(i * 5 + i / 7) % values.len()])
            .collect();
        let device = autodiff_device();
        let run = |pool_first: bool| {
            let x = Tensor::<4>::from_data(TensorData::new(data.clone(), shape), &device)
                .require_grad();
            let y = if pool_first {
                relu(max_pool2d(x.clone(), [2, 2], [2, 2], [0, 0]))
            } else {
                max_pool2d(relu(x.clone()), [2, 2], [2, 2], [0, 0])
            };
            let u: Vec<f32> = (0..y.dims().iter().product::<usize>())
                .map(|i| 1.0 + i as f32)
                .collect();
            let u = Tensor::<4>::from_data(TensorData::new(u, y.dims()), &device);
            let grads = (y.clone() * u).sum().backward();
            let bits = |t: Tensor<4>| -> Vec<u32> {
                let v = t.into_data().try_to_vec::<f32>().unwrap();
                v.into_iter().map(f32::to_bits).collect()
            };
            (bits(y), bits(x.grad(&grads).unwrap()))
        };
        let (pool_first, relu_first) = (run(true), run(false));
        assert_eq!(pool_first.0, relu_first.0, "values");
        assert_eq!(pool_first.1, relu_first.1, "input gradients");
        assert!(pool_first.0.iter().any(|&b| f32::from_bits(b).is_nan()));
    }

    /// The fused batch normalisation against burn's `batch_norm_train` / `batch_norm` followed
    /// by its ReLU: outputs, batch statistics and the gradients of x, gamma and beta through
    /// autodiff, in both modes, with and without the ReLU, and without autodiff.
    #[test]
    fn batch_normalisation_agrees_with_burn() {
        use burn::tensor::activation::relu as burn_relu;
        use burn::tensor::module::{batch_norm as burn_bn, batch_norm_train as burn_bn_train};
        fn close1(a: Tensor<1>, b: Tensor<1>, what: &str) {
            let [n] = a.dims();
            assert_close(a.reshape([1, n, 1, 1]), b.reshape([1, n, 1, 1]), what);
        }
        let device = autodiff_device();
        for (shape, relu) in [
            ([3, 4, 5, 5], true),
            ([2, 3, 1, 7], false),
            ([4, 2, 2, 2], true),
        ] {
            let c = shape[1];
            let x = (Tensor::<4>::random(shape, Distribution::Default, &device) * 3.0 - 1.0)
                .require_grad();
            let gamma =
                (Tensor::<1>::random([c], Distribution::Default, &device) + 0.5).require_grad();
            let beta = Tensor::<1>::random([c], Distribution::Default, &device).require_grad();
            let mean = Tensor::<1>::random([c], Distribution::Default, &device);
            let var = Tensor::<1>::random([c], Distribution::Default, &device) + 0.3;
            let activate = |t: Tensor<4>| if relu { burn_relu(t) } else { t };
            let u = Tensor::<4>::random(shape, Distribution::Default, &device);
            for batch_stats in [true, false] {
                let what =
                    |part: &str| format!("{shape:?} relu {relu} batch {batch_stats}: {part}");
                let (ours, theirs) = if batch_stats {
                    let (out, m, v) =
                        batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5, relu);
                    let t = burn_bn_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
                    close1(m, t.mean, &what("mean"));
                    close1(v, t.variance, &what("variance"));
                    (out, activate(t.output))
                } else {
                    let operands = [gamma.clone(), beta.clone(), mean.clone(), var.clone()];
                    let theirs = burn_bn(
                        x.clone(),
                        gamma.clone(),
                        beta.clone(),
                        mean.clone(),
                        var.clone(),
                        1e-5,
                    );
                    (
                        batch_norm_eval(x.clone(), operands, 1e-5, relu),
                        activate(theirs),
                    )
                };
                assert_close(ours.clone(), theirs.clone(), &what("output"));
                let g1 = (ours * u.clone()).sum().backward();
                let g2 = (theirs * u.clone()).sum().backward();
                assert_close(
                    x.grad(&g1).unwrap(),
                    x.grad(&g2).unwrap(),
                    &what("x gradient"),
                );
                close1(
                    gamma.grad(&g1).unwrap(),
                    gamma.grad(&g2).unwrap(),
                    &what("gamma gradient"),
                );
                close1(
                    beta.grad(&g1).unwrap(),
                    beta.grad(&g2).unwrap(),
                    &what("beta gradient"),
                );
            }
        }
        // Without autodiff.
        let plain = default_device();
        let x = Tensor::<4>::random([2, 3, 4, 4], Distribution::Default, &plain);
        let ones = Tensor::<1>::ones([3], &plain);
        let zeros = Tensor::<1>::zeros([3], &plain);
        let (ours, _, _) = batch_norm_train(x.clone(), ones.clone(), zeros.clone(), 1e-5, true);
        let theirs = burn_relu(burn_bn_train(x, ones, zeros, 1e-5).output);
        assert_close(ours, theirs, "inference batch norm");
    }

    fn flat(values: &[f32]) -> Tensor<1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &default_device(),
        )
    }

    fn bits(t: Tensor<1>) -> Vec<u32> {
        let values = t.into_data().try_to_vec::<f32>().unwrap();
        values.into_iter().map(f32::to_bits).collect()
    }

    type SgldStepFn =
        fn(&SgldScalars, Tensor<1>, Tensor<1>, Tensor<1>, Option<Tensor<1>>, Vec<f32>) -> SgldStep;

    /// The one-pass step against the same step as burn's tensor operations, bit for bit in the
    /// value and the average (norms to 1e-5): RMSprop from a zero and from a given average,
    /// plain SGLD, lengths across the kernel's lanes and chunks, a value held elsewhere too (it
    /// must stay unchanged) and one held only by the step.
    /// The fused cross-entropy against burn's `log_softmax` and `gather` (the definition), with
    /// rows left out, on widths around the kernel's lanes and blocks: losses and the gradient
    /// through autodiff, weighted per row.
    #[test]
    fn cross_entropy_rows_agree_with_burn() {
        let device = autodiff_device();
        for (rows, width) in [(1, 1), (3, 5), (7, 33), (5, 1031)] {
            let x = (Tensor::<2>::random([rows, width], Distribution::Normal(0.0, 4.0), &device))
                .require_grad();
            let targets: Vec<Option<u32>> = (0..rows)
                .map(|i| (i % 3 != 1).then_some(((i * 7) % width) as u32))
                .collect();
            let weights: Vec<f32> = (0..rows).map(|i| 1.0 + i as f32).collect();
            let weights = Tensor::<1>::from_data(TensorData::new(weights, [rows]), &device);
            let ours = cross_entropy_rows(x.clone(), &targets);
            let theirs = cross_entropy_rows_with_tensor_ops(x.clone(), &targets);
            let (a, b) = (values(ours.clone()), values(theirs.clone()));
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() < 1e-5 * q.abs().max(1.0), "{a:?} vs {b:?}");
            }
            for (i, t) in targets.iter().enumerate() {
                assert!(t.is_some() || a[i] == 0.0, "row {i} has no target: no loss");
            }
            let g1 = (ours * weights.clone()).sum().backward();
            let g2 = (theirs * weights).sum().backward();
            let (d1, d2) = (values(x.grad(&g1).unwrap()), values(x.grad(&g2).unwrap()));
            for (p, q) in d1.iter().zip(&d2) {
                assert!((p - q).abs() < 1e-5, "{rows}x{width}: {p} vs {q}");
            }
        }
    }

    /// The fused SwiGLU gating against burn's `silu(gate) * up`: the output and both inputs'
    /// gradients through autodiff (odd shapes, one input not tracked), and without autodiff.
    #[test]
    fn swiglu_agrees_with_burn() {
        let device = autodiff_device();
        for (shape, track_up) in [([1, 1, 1], true), ([2, 3, 17], true), ([3, 5, 1031], false)] {
            let gate =
                Tensor::<3>::random(shape, Distribution::Normal(0.0, 4.0), &device).require_grad();
            let mut up = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            if track_up {
                up = up.require_grad();
            }
            let weights = Tensor::<3>::random(shape, Distribution::Default, &device);
            let ours = swiglu(gate.clone(), up.clone());
            let theirs = swiglu_with_tensor_ops(gate.clone(), up.clone());
            let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
                for (p, q) in a.iter().zip(&b) {
                    assert!(
                        (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                        "{what}: {p} vs {q}"
                    );
                }
            };
            close(values(ours.clone()), values(theirs.clone()), "output");
            let g1 = (ours * weights.clone()).sum().backward();
            let g2 = (theirs * weights).sum().backward();
            let grads =
                |t: &Tensor<3>| (values(t.grad(&g1).unwrap()), values(t.grad(&g2).unwrap()));
            let (a, b) = grads(&gate);
            close(a, b, "gate gradient");
            if track_up {
                let (a, b) = grads(&up);
                close(a, b, "up gradient");
            } else {
                assert!(
                    up.grad(&g1).is_none(),
                    "an untracked input gets no gradient"
                );
            }
        }
        let gate = Tensor::<2>::random([4, 9], Distribution::Normal(0.0, 3.0), &default_device());
        let up = Tensor::<2>::random([4, 9], Distribution::Default, &default_device());
        let (a, b) = (
            values(swiglu(gate.clone(), up.clone())),
            values(swiglu_with_tensor_ops(gate, up)),
        );
        for (p, q) in a.iter().zip(&b) {
            assert!(
                (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                "inference: {p} vs {q}"
            );
        }
    }

    #[test]
    fn rms_norm_agrees_with_burn() {
        let device = autodiff_device();
        let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    (p - q).abs() <= 2e-5 * (1.0 + q.abs()),
                    "{what}: {p} vs {q}"
                );
            }
        };
        for (shape, track_gamma) in [([1, 1, 1], true), ([2, 3, 17], true), ([3, 70, 128], false)] {
            let x =
                Tensor::<3>::random(shape, Distribution::Normal(0.0, 2.0), &device).require_grad();
            let mut gamma =
                Tensor::<1>::random([shape[2]], Distribution::Normal(1.0, 0.5), &device);
            if track_gamma {
                gamma = gamma.require_grad();
            }
            let weights = Tensor::<3>::random(shape, Distribution::Default, &device);
            let ours = rms_norm(x.clone(), gamma.clone(), 1e-5);
            let theirs = rms_norm_with_tensor_ops(x.clone(), gamma.clone(), 1e-5);
            close(values(ours.clone()), values(theirs.clone()), "output");
            // As burn's own module computes it, too.
            let module = burn::nn::RmsNorm {
                gamma: burn::module::Param::from_tensor(gamma.clone()),
                epsilon: 1e-5,
            };
            close(
                values(ours.clone()),
                values(module.forward(x.clone())),
                "burn's RmsNorm",
            );
            let g1 = (ours * weights.clone()).sum().backward();
            let g2 = (theirs * weights).sum().backward();
            close(
                values(x.grad(&g1).unwrap()),
                values(x.grad(&g2).unwrap()),
                "x gradient",
            );
            if track_gamma {
                close(
                    values(gamma.grad(&g1).unwrap()),
                    values(gamma.grad(&g2).unwrap()),
                    "gamma gradient",
                );
            } else {
                assert!(
                    gamma.grad(&g1).is_none(),
                    "an untracked scale gets no gradient"
                );
            }
        }
        let x = Tensor::<2>::random([4, 9], Distribution::Default, &default_device());
        let gamma = Tensor::<1>::random([9], Distribution::Default, &default_device());
        close(
            values(rms_norm(x.clone(), gamma.clone(), 1e-6)),
            values(rms_norm_with_tensor_ops(x, gamma, 1e-6)),
            "inference",
        );
    }

    #[test]
    fn causal_softmax_agrees_with_burn() {
        let device = autodiff_device();
        let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    (p - q).abs() <= 1e-6 * (1.0 + q.abs()),
                    "{what}: {p} vs {q}"
                );
            }
        };
        // [batch, kv heads, groups x queries, keys]: a square, two groups stacked, queries
        // after earlier keys, one query.
        for (shape, queries) in [
            ([1, 1, 1, 1], 1),
            ([2, 2, 10, 5], 5),
            ([1, 3, 6, 7], 3),
            ([2, 1, 2, 9], 1),
            ([4, 2, 256, 128], 128),
        ] {
            let scores =
                Tensor::<4>::random(shape, Distribution::Normal(0.0, 8.0), &device).require_grad();
            let weights = Tensor::<4>::random(shape, Distribution::Default, &device);
            let divisor = 32f64.sqrt();
            let ours = causal_softmax(scores.clone(), queries, divisor);
            let theirs = causal_softmax_with_tensor_ops(scores.clone(), queries, divisor);
            close(values(ours.clone()), values(theirs.clone()), "output");
            let g1 = (ours * weights.clone()).sum().backward();
            let g2 = (theirs * weights).sum().backward();
            close(
                values(scores.grad(&g1).unwrap()),
                values(scores.grad(&g2).unwrap()),
                "score gradient",
            );
        }
        // An empty sequence (no queries, no keys) passes through, as burn's softmax lets it.
        let empty = Tensor::<4>::zeros([2, 1, 0, 0], &default_device());
        assert_eq!(causal_softmax(empty, 0, 1.0).dims(), [2, 1, 0, 0]);
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    #[test]
    fn sgld_step_equals_the_tensor_operations() {
        let rmsprop = SgldScalars {
            drift: 5e-4,
            pull: 0.05,
            noise: 1e-3f32.sqrt(),
            rmsprop: Some([0.9, 0.1f64 as f32, 0.1]),
        };
        let plain = SgldScalars {
            rmsprop: None,
            ..rmsprop
        };
        for (case, n) in [1usize, 7, 8, 9, 100, (1 << 15) + 3, 3 * (1 << 15) - 5]
            .into_iter()
            .enumerate()
        {
            let seed = 10 * case as u64;
            let w = pseudo_random(n, seed);
            let g: Vec<f32> = pseudo_random(n, seed + 1).iter().map(|x| 3.0 * x).collect();
            let w0 = pseudo_random(n, seed + 2);
            let noise = pseudo_random(n, seed + 3);
            let v: Vec<f32> = pseudo_random(n, seed + 4).iter().map(|x| x * x).collect();
            for (s, average) in [(rmsprop, None), (rmsprop, Some(&v)), (plain, None)] {
                let run = |step: SgldStepFn, value: Tensor<1>| {
                    step(
                        &s,
                        value,
                        flat(&g),
                        flat(&w0),
                        average.map(|v| flat(v)),
                        noise.clone(),
                    )
                };
                let shared = flat(&w);
                let (next, v_next, squared) = run(sgld_step, shared.clone());
                let (expected, v_expected, squared_expected) =
                    run(sgld_step_with_tensor_ops, flat(&w));
                assert_eq!(bits(next), bits(expected), "n = {n}: value");
                assert_eq!(
                    bits(shared),
                    bits(flat(&w)),
                    "n = {n}: the shared value changed"
                );
                assert_eq!(
                    v_next.map(bits),
                    v_expected.map(bits),
                    "n = {n}: the average"
                );
                for (a, b) in squared.iter().zip(squared_expected) {
                    assert!((a - b).abs() <= 1e-5 * b.abs(), "n = {n}: norms {a} vs {b}");
                }
                let (owned, _, _) = run(sgld_step, flat(&w));
                assert_eq!(
                    bits(owned),
                    bits(run(sgld_step_with_tensor_ops, flat(&w)).0)
                );
            }
        }
    }
}
