//! Hand-made models for detector tests: weights set by hand so the logits of any input are known
//! in closed form, and a detector's exact answer can be computed independently of its code.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::Tensor;

use crate::attack::test_data::tiny_cnn_spec;
use crate::data::{ImageSet, ImageShape};
use crate::device::default_device;
use crate::models::host_init::redraw;
use crate::models::{Architecture, Classifier, ModelSpec};

/// Logit 1 per unit of [`corner_trigger_model`]'s hidden feature.
pub(crate) const TRIGGER_GAIN: f32 = 10.0;
/// Where [`corner_trigger_model`]'s hidden feature starts to rise.
pub(crate) const TRIGGER_ONSET: f32 = 0.5;

/// A small CNN on 8x8 one-channel images (width 1, hidden 1, two classes) whose logits are
/// exactly `[1, TRIGGER_GAIN * relu(m - TRIGGER_ONSET)]`, `m` the largest pixel of the image's
/// top-left 4x4 block (for non-negative pixels): a "backdoor" whose trigger is a bright top-left
/// corner. Class 1 wins when `m > TRIGGER_ONSET + 1 / TRIGGER_GAIN = 0.6`.
///
/// How: both convolutions are the identity (centre tap 1), so after ReLU and two 2x2 max-pools
/// the first flattened feature is `m`; fc1 reads only it, with bias `-TRIGGER_ONSET`; fc2 maps
/// the hidden unit to `[0, TRIGGER_GAIN]` with bias `[1, 0]`.
pub(crate) fn corner_trigger_model() -> Classifier {
    let spec = ModelSpec {
        architecture: Architecture::SmallCnn {
            width: 1,
            hidden: 1,
        },
        ..tiny_cnn_spec()
    };
    // burn visits conv1.weight [1,1,3,3], conv1.bias, conv2.weight [2,1,3,3], conv2.bias,
    // fc1.weight [8,1] (row layout [in, out]), fc1.bias, fc2.weight [1,2], fc2.bias, in order.
    let mut centre2 = vec![0.0; 18];
    centre2[4] = 1.0;
    centre2[13] = 1.0;
    let mut centre1 = vec![0.0; 9];
    centre1[4] = 1.0;
    let mut fc1 = vec![0.0; 8];
    fc1[0] = 1.0;
    let values: Vec<Vec<f32>> = vec![
        centre1,
        vec![0.0],
        centre2,
        vec![0.0, 0.0],
        fc1,
        vec![-TRIGGER_ONSET],
        vec![0.0, TRIGGER_GAIN],
        vec![1.0, 0.0],
    ];
    struct Set(std::vec::IntoIter<Vec<f32>>);
    impl ModuleMapper for Set {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let next = self.0.next().expect("one value list per parameter");
            redraw(param, |dims| {
                assert_eq!(dims.iter().product::<usize>(), next.len(), "{dims:?}");
                next
            })
        }
    }
    let mut model = Classifier::new(spec, &default_device()).expect("a valid test spec");
    model.network = model.network.map(&mut Set(values.into_iter()));
    model
}

/// 8x8 one-channel images, `corner_max[i]` the largest pixel of image `i`'s top-left 4x4 block
/// (its pixel (0, 0)) and every other pixel of the image `rest`; labels alternate 0, 1.
pub(crate) fn corner_images(corner_max: &[f32], rest: f32) -> ImageSet {
    let mut pixels = Vec::with_capacity(corner_max.len() * 64);
    for &m in corner_max {
        let start = pixels.len();
        pixels.extend(std::iter::repeat_n(rest.min(m), 64));
        pixels[start] = m;
        // Pixels outside the top-left block may be brighter than the corner.
        for (i, p) in pixels[start..].iter_mut().enumerate() {
            let (row, col) = (i / 8, i % 8);
            if row >= 4 || col >= 4 {
                *p = rest;
            }
        }
    }
    let labels = (0..corner_max.len()).map(|i| (i % 2) as u16).collect();
    ImageSet::new(
        pixels,
        labels,
        ImageShape::new(1, 8, 8),
        vec!["a".into(), "b".into()],
        "corner images",
    )
    .expect("a valid test set")
}

#[test]
fn the_corner_trigger_model_computes_its_closed_form() {
    use crate::models::BnMode;
    let model = corner_trigger_model();
    let set = corner_images(&[0.0, 0.3, 0.55, 0.8, 1.0], 0.9);
    let x = crate::data::images_tensor(&set, &[0, 1, 2, 3, 4], &default_device());
    let logits: Vec<f32> = model
        .forward(x, BnMode::Eval)
        .into_data()
        .iter::<f32>()
        .collect();
    let expected = [0.0f32, 0.3, 0.55, 0.8, 1.0]
        .iter()
        .flat_map(|&m| [1.0, TRIGGER_GAIN * (m - TRIGGER_ONSET).max(0.0)])
        .collect::<Vec<_>>();
    for (a, b) in logits.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-5, "{logits:?} vs {expected:?}");
    }
}
