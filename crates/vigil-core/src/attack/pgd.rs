//! L-infinity projected gradient steps on inputs, through a frozen model.
//!
//! One step: `x <- clip_[0,1]( proj_{||x - x0||_inf <= eps}( x + alpha * sign(grad) ) )`, the
//! order of the HALO reference (project to the ball, then clip to the image range).

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use crate::loss::cross_entropy_per_sample;
use crate::models::{BnMode, Classifier};

/// A copy of `classifier` on `device` with autodiff enabled and parameters that do not require
/// gradients, so a backward pass computes only the input gradient.
pub fn frozen(classifier: &Classifier, device: &Device) -> Classifier {
    Classifier {
        network: classifier
            .network
            .clone()
            .fork(&device.clone().autodiff())
            .no_grad(),
        spec: classifier.spec.clone(),
    }
}

/// Gradient of the summed cross-entropy with respect to the inputs `x` (no autodiff in the
/// result). `model` should be [`frozen`] and live on an autodiff device.
pub fn input_gradient(
    model: &Classifier,
    x: Tensor<4>,
    labels: Tensor<1, Int>,
    bn: BnMode,
) -> Tensor<4> {
    gradient_wrt_input(x, |x| {
        cross_entropy_per_sample(model.forward(x, bn), labels).sum()
    })
}

/// Gradient of a scalar `objective` of the inputs `x` (no autodiff in the result; zeros if the
/// objective does not depend on `x`). `x` must live on an autodiff device.
pub fn gradient_wrt_input(
    x: Tensor<4>,
    objective: impl FnOnce(Tensor<4>) -> Tensor<1>,
) -> Tensor<4> {
    let x = x.detach().require_grad();
    let grads = objective(x.clone()).backward();
    x.grad(&grads)
        .unwrap_or_else(|| x.clone().without_autodiff().zeros_like())
}

/// One ascent step of size `alpha` along `sign(grad)`, projected to the `eps`-ball around `x0`
/// and clipped to `[0, 1]`.
pub fn linf_step(x: Tensor<4>, x0: Tensor<4>, grad: Tensor<4>, alpha: f64, eps: f64) -> Tensor<4> {
    let stepped = x + grad.sign().mul_scalar(alpha);
    let lower = x0.clone().sub_scalar(eps);
    let upper = x0.add_scalar(eps);
    stepped.max_pair(lower).min_pair(upper).clamp(0.0, 1.0)
}

/// Untargeted L-infinity PGD: `steps` signed-gradient steps of size `alpha` that increase the
/// cross-entropy of `labels`, each projected to the `eps`-ball around `x0` and to `[0, 1]`,
/// starting from `x0` (no random start). Returns the final iterate, without autodiff.
/// `model` should be [`frozen`] and live on an autodiff device.
pub fn pgd_linf(
    model: &Classifier,
    x0: Tensor<4>,
    labels: Tensor<1, Int>,
    eps: f64,
    alpha: f64,
    steps: usize,
    bn: BnMode,
) -> Tensor<4> {
    let x0 = x0.without_autodiff();
    let mut x = x0.clone();
    for _ in 0..steps {
        let grad = input_gradient(model, x.clone().autodiff(), labels.clone(), bn);
        x = linf_step(x, x0.clone(), grad.without_autodiff(), alpha, eps);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use burn::tensor::TensorData;

    fn t(v: Vec<f32>) -> Tensor<4> {
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [1, 1, 1, n]), &default_device())
    }

    #[test]
    fn step_moves_by_sign_then_projects_then_clips() {
        let x0 = t(vec![0.5, 0.5, 0.98, 0.02, 0.5]);
        let x = x0.clone();
        let grad = t(vec![3.0, -0.1, 1.0, -1.0, 0.0]);
        let out = linf_step(x, x0, grad, 0.2, 0.1);
        let got = out.into_data().try_to_vec::<f32>().unwrap();
        // +0.2 capped at +eps; -0.2 capped at -eps; 0.98+0.1 clipped to 1; 0.02-0.1 clipped to 0;
        // sign(0) = 0 leaves the pixel.
        let expected = [0.6, 0.4, 1.0, 0.0, 0.5];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn pgd_raises_the_loss_and_stays_in_the_ball() {
        use burn::tensor::Distribution;
        let device = default_device().autodiff();
        device.seed(1);
        let spec = crate::attack::test_data::tiny_cnn_spec();
        let model = frozen(&Classifier::new(spec, &device).unwrap(), &device);
        let x0 = Tensor::<4>::random([6, 1, 8, 8], Distribution::Uniform(0.0, 1.0), &device);
        let y =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 0, 1, 0, 1], [6]), &device);
        let loss = |x: Tensor<4>| {
            cross_entropy_per_sample(model.forward(x, BnMode::Eval), y.clone())
                .sum()
                .into_scalar::<f32>()
        };
        let eps = 0.05;
        let adv = pgd_linf(&model, x0.clone(), y.clone(), eps, 0.02, 5, BnMode::Eval);
        assert!(loss(adv.clone().autodiff()) > loss(x0.clone()));
        let gap = (adv.clone() - x0.without_autodiff())
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(gap <= eps as f32 + 1e-6, "left the ball: {gap}");
        let range =
            adv.clone().min().into_scalar::<f32>() >= 0.0 && adv.max().into_scalar::<f32>() <= 1.0;
        assert!(range);
    }
}
