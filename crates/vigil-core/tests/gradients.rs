//! Autodiff gradients against central finite differences, for parameters and inputs, through
//! the small CNN (max-pool, ReLU, linear) and a BatchNorm ResNet in train mode (gradients through
//! batch statistics). burn is trusted for nothing here: a wrong backward for any op on these
//! paths fails this test.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};
use vigil_core::device::default_device;
use vigil_core::loss::cross_entropy;
use vigil_core::models::{Architecture, BnMode, Classifier, ModelSpec};

/// Adds `delta` to element `index` of the `target`-th float parameter (visiting order).
struct Nudge {
    target: usize,
    index: usize,
    delta: f64,
    seen: usize,
}

impl ModuleMapper for Nudge {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let k = self.seen;
        self.seen += 1;
        if k != self.target {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let device = tensor.device();
        let dims = tensor.dims();
        let mut values = tensor.into_data().try_to_vec::<f64>().unwrap();
        values[self.index] += self.delta;
        let nudged = Tensor::<D>::from_data(TensorData::new(values, dims), (&device, DType::F64));
        Param::from_mapped_value(id, nudged, mapper)
    }
}

/// Casts every float tensor of the module to f64, so central differences are not drowned by
/// f32 rounding (the forward and backward ops are the same kernels at another precision), and
/// jitters it by U(-0.1, 0.1). Fresh BatchNorm layers (bias 0 after a bias-free conv) map
/// all-zero input patches to exactly 0 at the following ReLU, a kink where central differences
/// and autodiff legitimately disagree; jittered biases and statistics move every kink off the
/// evaluation point.
struct ToF64;

impl ModuleMapper for ToF64 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let require = tensor.is_require_grad();
        let jitter = Tensor::<D>::random(
            tensor.dims(),
            Distribution::Uniform(-0.1, 0.1),
            &tensor.device(),
        );
        let mut t = (tensor + jitter).cast(DType::F64);
        if require {
            t = t.detach().require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Collects every float parameter's gradient (flattened) in visiting order; `None` for buffers.
fn param_grads(classifier: &Classifier, grads: &burn::tensor::Gradients) -> Vec<Option<Vec<f64>>> {
    struct Collect<'a> {
        grads: &'a burn::tensor::Gradients,
        out: Vec<Option<Vec<f64>>>,
    }
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = param
                .val()
                .grad(self.grads)
                .map(|g| g.into_data().try_to_vec::<f64>().unwrap());
            self.out.push(g);
        }
    }
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    classifier.network.visit(&mut c);
    c.out
}

fn spec(architecture: Architecture, input: [usize; 3]) -> ModelSpec {
    ModelSpec {
        architecture,
        input_shape: input,
        class_names: (0..3).map(|i| i.to_string()).collect(),
        normalization: None,
    }
}

fn loss_value(classifier: &Classifier, x: Tensor<4>, y: Tensor<1, Int>, bn: BnMode) -> f64 {
    cross_entropy(classifier.forward(x, bn), y).into_scalar::<f64>()
}

/// Checks `picks` coordinates of every parameter that has a gradient, and `picks` input pixels.
fn check(architecture: Architecture, input: [usize; 3], bn: BnMode, seed: u64) {
    let device: Device = default_device().autodiff();
    device.seed(seed);
    let mut classifier = Classifier::new(spec(architecture, input), &device).unwrap();
    classifier.network = classifier.network.map(&mut ToF64);
    let [c, h, w] = input;
    let x = Tensor::<4>::random([4, c, h, w], Distribution::Uniform(0.0, 1.0), &device)
        .cast(DType::F64);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 1], [4]), &device);

    let x_leaf = x.clone().detach().require_grad();
    let loss = cross_entropy(classifier.forward(x_leaf.clone(), bn), y.clone());
    let grads = loss.backward();
    let analytic = param_grads(&classifier, &grads);
    let input_grad = x_leaf
        .grad(&grads)
        .unwrap()
        .into_data()
        .try_to_vec::<f64>()
        .unwrap();

    let names: Vec<String> = vigil_core::optim::param_infos(&classifier.network)
        .into_iter()
        .map(|p| p.path)
        .collect();
    // In f64, eps = 1e-6 balances truncation (eps^2) against rounding (1e-16 / eps); measured
    // worst relative error over all three models: ~1e-4.
    let eps = 1e-6;
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    let mut compare = |fd: f64, ad: f64, what: &str| {
        // Relative error, with a floor far below any gradient worth checking.
        let err = (fd - ad).abs() / (1e-6 + fd.abs().max(ad.abs()));
        worst = worst.max(err);
        assert!(
            err < 1e-3,
            "{what}: finite difference {fd:.9} vs autodiff {ad:.9}"
        );
        checked += 1;
    };
    for (target, grad) in analytic.iter().enumerate() {
        let Some(grad) = grad else { continue };
        for pick in 0..3 {
            let index = (pick * 7919 + target * 31) % grad.len();
            let nudged = |delta| {
                let mut m = Nudge {
                    target,
                    index,
                    delta,
                    seen: 0,
                };
                let moved = Classifier {
                    network: classifier.network.clone().map(&mut m),
                    spec: classifier.spec.clone(),
                };
                loss_value(&moved, x.clone().detach(), y.clone(), bn)
            };
            let fd = (nudged(eps) - nudged(-eps)) / (2.0 * eps);
            compare(fd, grad[index], &format!("{}[{index}]", names[target]));
        }
    }
    let values = x.clone().into_data().try_to_vec::<f64>().unwrap();
    for pick in 0..8 {
        let index = (pick * 104_729 + 13) % values.len();
        let shifted = |delta: f64| {
            let mut v = values.clone();
            v[index] += delta;
            let xs =
                Tensor::<4>::from_data(TensorData::new(v, [4, c, h, w]), (&device, DType::F64));
            loss_value(&classifier, xs, y.clone(), bn)
        };
        let fd = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
        compare(fd, input_grad[index], &format!("input[{index}]"));
    }
    assert!(checked > 10, "too few coordinates checked: {checked}");
    eprintln!("{checked} coordinates, worst relative error {worst:.2e}");
}

// One test, run in sequence: burn's device RNG (initialisation, inputs, jitter) is shared by
// all threads, so parallel tests would draw different values on every run.
#[test]
fn gradients_match_finite_differences() {
    // Small CNN: max-pool, ReLU, linear.
    check(
        Architecture::SmallCnn {
            width: 3,
            hidden: 8,
        },
        [1, 8, 8],
        BnMode::Eval,
        7,
    );
    // BatchNorm ResNet normalising with batch statistics (gradients through mean and variance).
    check(
        Architecture::ResNet18 { width: 2 },
        [1, 28, 28],
        BnMode::BatchStatsFrozen,
        11,
    );
    // HALO PreAct-ResNet with its final BatchNorm, eval mode.
    check(
        Architecture::PreActResNet18Halo { width: 2 },
        [3, 28, 28],
        BnMode::Eval,
        5,
    );
}
