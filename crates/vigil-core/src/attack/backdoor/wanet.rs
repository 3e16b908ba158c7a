//! WaNet (Nguyen and Tran, 2021): a smooth, fixed warping field as the trigger, trained with
//! "noise mode" samples whose warp is randomly perturbed and whose label is kept.
//!
//! Followed: SCLBD/BackdoorBench `attack/wanet.py` (`stage2_training`, `train_step`, commit
//! `3f4b1a92ed6c13e0cd21534df56155cf3ef71f87`), `utils/bd_img_transform/wanet.py`
//! (`imageWarp`, commit `025b7eae39a20d800f5ccbfe713d76313446df96`) and
//! `config/attack/wanet/default.yaml` (`k: 4`, `s: 0.5`, `grid_rescale: 1`, `cross_ratio: 2`,
//! `pratio: 0.1`). For an `H x H` image:
//!
//! ```text
//! ins        = rand(1, 2, k, k) * 2 - 1;  ins = ins / mean(|ins|)
//! noise_grid = interpolate(ins, size=H, mode="bicubic", align_corners=True)   (H x H x 2)
//! identity   = stack(meshgrid(linspace(-1, 1, H)) as (x = column, y = row))
//! grid       = clamp((identity + s * noise_grid / H) * grid_rescale, -1, 1)
//! triggered  = grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
//! noise mode : grid2 = clamp(grid + (rand(H, H, 2) * 2 - 1) / H, -1, 1), fresh per sample
//! ```
//!
//! vigil implements PyTorch's bicubic upsampling (`A = -0.75`, edge indices clamped) and
//! bilinear `grid_sample` by hand and matches PyTorch to float rounding (tests compare with
//! values PyTorch computed). Non-square images use `(H, W)` for the upsampling and identity
//! grid and, like BackdoorBench, divide displacements by `H`.
//!
//! Differences from BackdoorBench, documented:
//! - Randomness: the field comes from `StdRng::seed_from_u64(config.seed)`, not torch's
//!   generator; [`WaNet::from_field`] accepts a field generated elsewhere (e.g. torch's `ins`
//!   before normalisation) to reproduce a given trigger exactly.
//! - Poisoning is static. BackdoorBench poisons on the fly: in every shuffled batch the first
//!   `int(bs * pratio)` samples are warped and relabelled and the next
//!   `int(num_bd * cross_ratio)` get a fresh noise warp, so across epochs every sample is
//!   sometimes poisoned (effective rate `int(128 * 0.1) / 128 = 9.4%` with batch 128). vigil's
//!   [`BackdoorAttack::plan`] fixes `round(rate * N)` poisoned samples (drawn from all classes,
//!   as [`select_poison_indices`] does) and `floor(cross_ratio * that)` noise samples among
//!   the rest, and each noise sample's perturbation is fixed by its index.
//! - BackdoorBench warps normalised tensors; since every sampling point lies inside the image
//!   (the grid is clamped to `[-1, 1]`), bilinear sampling commutes with the per-channel
//!   normalisation, so warping `[0, 1]` images is equivalent. Its saved test images are
//!   quantised to 8 bits (`ToPILImage`); vigil keeps them continuous.
//! - Training augmentation (BackdoorBench's random crop and rotation after warping) is the
//!   trainer's business, not the trigger's.

use std::borrow::Cow;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{
    AttackError, BackdoorAttack, LabelMode, PoisonKind, PoisonPlan, PoisonedSample, TargetRule,
    fits, select_poison_indices,
};
use crate::data::{ImageSet, ImageShape};

/// Registry name of the attack.
const NAME: &str = "wanet";

/// Largest accepted control-grid size `k` (BackdoorBench uses 4).
pub const MAX_K: usize = 1024;

/// PyTorch's cubic convolution coefficient for bicubic interpolation.
const CUBIC_A: f32 = -0.75;

/// Stream constants separating the random draws derived from one seed.
const NOISE_WARP_STREAM: u64 = 0x6e6f_6973_6577_6172;
const NOISE_SELECTION_STREAM: u64 = 0x6372_6f73_7373_656c;

/// WaNet's parameters; defaults are BackdoorBench's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WaNetConfig {
    /// Side of the random control grid (`k`, default 4).
    pub k: usize,
    /// Warping strength (`s`, default 0.5).
    pub s: f64,
    /// Factor applied to the warped grid before clamping (`grid_rescale`, default 1).
    pub grid_rescale: f64,
    /// Noise-mode samples per poisoned sample (`cross_ratio`, default 2; 0 disables).
    pub cross_ratio: f64,
    /// Seed of the warping field and of the noise perturbations.
    pub seed: u64,
}

impl Default for WaNetConfig {
    /// BackdoorBench's `config/attack/wanet/default.yaml`, seed 0.
    fn default() -> Self {
        Self {
            k: 4,
            s: 0.5,
            grid_rescale: 1.0,
            cross_ratio: 2.0,
            seed: 0,
        }
    }
}

impl WaNetConfig {
    /// Checks ranges: `1 <= k <= MAX_K`, finite `s` and `grid_rescale`, finite
    /// `cross_ratio >= 0`.
    pub fn validate(&self) -> Result<(), AttackError> {
        if self.k == 0 || self.k > MAX_K {
            return Err(invalid(format!("k = {} is not in 1..={MAX_K}", self.k)));
        }
        if !self.s.is_finite() || !self.grid_rescale.is_finite() {
            return Err(invalid(format!(
                "s = {} and grid_rescale = {} must be finite",
                self.s, self.grid_rescale
            )));
        }
        if !(self.cross_ratio.is_finite() && self.cross_ratio >= 0.0) {
            return Err(invalid(format!(
                "cross_ratio = {} must be finite and >= 0",
                self.cross_ratio
            )));
        }
        Ok(())
    }
}

/// The WaNet attack: a fixed warp of the image, poison-label, with noise-mode samples.
#[derive(Debug, Clone, PartialEq)]
pub struct WaNet {
    config: WaNetConfig,
    /// The normalised control field, `2 x k x k` (`ins / mean(|ins|)`).
    field: Vec<f32>,
    /// Height and width the cached grid was built for.
    grid_size: (usize, usize),
    /// The trigger's sampling grid for `grid_size`, `H x W x 2` as (x, y) in `[-1, 1]`.
    grid: Vec<f32>,
}

impl WaNet {
    /// WaNet with a field drawn from `StdRng::seed_from_u64(config.seed)`
    /// (`2 k k` uniform values in `[-1, 1)`, in `(channel, row, col)` order), its grid
    /// prepared for images of `shape` (other sizes work, more slowly).
    pub fn new(config: WaNetConfig, shape: ImageShape) -> Result<Self, AttackError> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(config.seed);
        let raw = (0..2 * config.k * config.k)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        Self::from_field(config, raw, shape)
    }

    /// WaNet from a raw field (`2 x k x k`, BackdoorBench's `ins` before it is divided by its
    /// mean absolute value), e.g. to reproduce a trigger generated by PyTorch.
    pub fn from_field(
        config: WaNetConfig,
        raw_field: Vec<f32>,
        shape: ImageShape,
    ) -> Result<Self, AttackError> {
        config.validate()?;
        if raw_field.len() != 2 * config.k * config.k {
            return Err(invalid(format!(
                "the field has {} values, not 2 x {k} x {k}",
                raw_field.len(),
                k = config.k
            )));
        }
        if let Some(bad) = raw_field.iter().find(|v| !v.is_finite()) {
            return Err(invalid(format!("the field holds {bad}")));
        }
        if shape.height == 0 || shape.width == 0 {
            return Err(invalid(format!("image shape {shape} is empty")));
        }
        let field = normalise_by_mean_abs(raw_field);
        let grid_size = (shape.height, shape.width);
        let grid = warp_grid(&config, &field, grid_size);
        Ok(Self {
            config,
            field,
            grid_size,
            grid,
        })
    }

    /// The parameters.
    pub fn config(&self) -> &WaNetConfig {
        &self.config
    }

    /// The trigger's sampling grid for `height x width` images: `H x W x 2`, (x, y) pairs in
    /// `[-1, 1]` as PyTorch's `grid_sample` takes them.
    pub fn grid(&self, height: usize, width: usize) -> Vec<f32> {
        if (height, width) == self.grid_size {
            self.grid.clone()
        } else {
            warp_grid(&self.config, &self.field, (height, width))
        }
    }

    /// Warps `image` with the trigger grid, perturbed per `sample` if `noise`.
    fn warp(&self, image: &[f32], shape: ImageShape, sample: usize, noise: bool, out: &mut [f32]) {
        if !fits(image, shape, out) {
            return;
        }
        let size = (shape.height, shape.width);
        let grid: Cow<'_, [f32]> = if size == self.grid_size && !noise {
            Cow::Borrowed(&self.grid)
        } else {
            let mut grid = self.grid(shape.height, shape.width);
            if noise {
                self.perturb(&mut grid, shape.height, sample);
            }
            Cow::Owned(grid)
        };
        grid_sample_bilinear(image, shape, &grid, out);
    }

    /// Adds noise mode's perturbation `(U[-1, 1) per coordinate) / H` to `grid` and clamps to
    /// `[-1, 1]`; the draws come from a generator seeded by the config seed and `sample`.
    fn perturb(&self, grid: &mut [f32], height: usize, sample: usize) {
        let seed = derived_seed(self.config.seed, NOISE_WARP_STREAM, sample as u64);
        let mut rng = StdRng::seed_from_u64(seed);
        for coordinate in grid.iter_mut() {
            let offset = (rng.random::<f32>() * 2.0 - 1.0) / height as f32;
            *coordinate = (*coordinate + offset).clamp(-1.0, 1.0);
        }
    }
}

impl BackdoorAttack for WaNet {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Warps the image with the trigger grid. If `out`, `image` and `shape` disagree in size
    /// (a caller bug), `out` is left unchanged.
    fn apply_trigger(&self, image: &[f32], shape: ImageShape, sample: usize, out: &mut [f32]) {
        self.warp(image, shape, sample, false, out);
    }

    /// [`PoisonKind::Triggered`]: the trigger; [`PoisonKind::Noise`]: the trigger grid plus a
    /// random perturbation fixed by `sample`.
    fn poison_training_image(
        &self,
        image: &[f32],
        shape: ImageShape,
        sample: usize,
        kind: PoisonKind,
        out: &mut [f32],
    ) {
        self.warp(image, shape, sample, kind == PoisonKind::Noise, out);
    }

    /// `round(rate * N)` poisoned samples as [`select_poison_indices`] picks them (labelled by
    /// `rule`), plus `floor(cross_ratio * poisoned)` noise samples drawn from the other
    /// samples (keeping their labels); sorted by index. Fails with
    /// [`AttackError::InvalidConfig`] if too few samples remain for the noise samples.
    fn plan(
        &self,
        train: &ImageSet,
        rule: TargetRule,
        rate: f64,
        seed: u64,
    ) -> Result<PoisonPlan, AttackError> {
        let poisoned = select_poison_indices(train, rule, LabelMode::PoisonLabel, rate, seed)?;
        let noise = self.select_noise_samples(train.len(), &poisoned, seed)?;
        let num_classes = train.num_classes();
        let mut samples: Vec<PoisonedSample> = poisoned
            .into_iter()
            .map(|index| PoisonedSample {
                index,
                label: rule.target_of(train.label(index), num_classes),
                kind: PoisonKind::Triggered,
            })
            .chain(noise.into_iter().map(|index| PoisonedSample {
                index,
                label: train.label(index),
                kind: PoisonKind::Noise,
            }))
            .collect();
        samples.sort_unstable_by_key(|sample| sample.index);
        Ok(PoisonPlan { samples })
    }
}

impl WaNet {
    /// `floor(cross_ratio * poisoned.len())` indices below `total` not in `poisoned`
    /// (ascending `poisoned` assumed), drawn with a generator derived from `seed`.
    fn select_noise_samples(
        &self,
        total: usize,
        poisoned: &[usize],
        seed: u64,
    ) -> Result<Vec<usize>, AttackError> {
        let count = (self.config.cross_ratio * poisoned.len() as f64).floor() as usize;
        let rest: Vec<usize> = (0..total)
            .filter(|index| poisoned.binary_search(index).is_err())
            .collect();
        if count > rest.len() {
            return Err(invalid(format!(
                "cross_ratio {} asks for {count} noise samples but only {} samples are not \
                 poisoned",
                self.config.cross_ratio,
                rest.len()
            )));
        }
        let mut rng = StdRng::seed_from_u64(derived_seed(seed, NOISE_SELECTION_STREAM, 0));
        Ok(rand::seq::index::sample(&mut rng, rest.len(), count)
            .into_iter()
            .map(|position| rest[position])
            .collect())
    }
}

/// `field / mean(|field|)` (left unchanged if the mean is 0).
fn normalise_by_mean_abs(field: Vec<f32>) -> Vec<f32> {
    let total: f64 = field.iter().map(|v| f64::from(v.abs())).sum();
    let mean = (total / field.len() as f64) as f32;
    if mean > 0.0 {
        field.into_iter().map(|v| v / mean).collect()
    } else {
        field
    }
}

/// The trigger grid for `(height, width)` images: `H x W x 2`, (x, y) per pixel,
/// `clamp((identity + s * upsampled_field / H) * grid_rescale, -1, 1)`.
fn warp_grid(config: &WaNetConfig, field: &[f32], (height, width): (usize, usize)) -> Vec<f32> {
    let k = config.k;
    let plane = k * k;
    let upsampled_x = upsample_bicubic_align_corners(&field[..plane], (k, k), (height, width));
    let upsampled_y = upsample_bicubic_align_corners(&field[plane..], (k, k), (height, width));
    let xs = linspace(-1.0, 1.0, width);
    let ys = linspace(-1.0, 1.0, height);
    let strength = config.s as f32;
    let rescale = config.grid_rescale as f32;
    let size = height as f32;
    let mut grid = Vec::with_capacity(height * width * 2);
    for (row, &identity_y) in ys.iter().enumerate() {
        for (col, &identity_x) in xs.iter().enumerate() {
            let at = row * width + col;
            let x = (identity_x + strength * upsampled_x[at] / size) * rescale;
            let y = (identity_y + strength * upsampled_y[at] / size) * rescale;
            grid.push(x.clamp(-1.0, 1.0));
            grid.push(y.clamp(-1.0, 1.0));
        }
    }
    grid
}

/// `torch.linspace(start, end, steps)` in `f32`, with PyTorch's symmetric formula (the first
/// half counts up from `start`, the second half down from `end`).
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// `F.interpolate(input, size=(out_h, out_w), mode="bicubic", align_corners=True)` for one
/// `in_h x in_w` plane, as PyTorch computes it: source coordinate `o * (in - 1) / (out - 1)`,
/// cubic convolution weights with `A = -0.75`, neighbour indices clamped to the edges.
fn upsample_bicubic_align_corners(
    input: &[f32],
    (in_height, in_width): (usize, usize),
    (out_height, out_width): (usize, usize),
) -> Vec<f32> {
    let rows: Vec<CubicTaps> = (0..out_height)
        .map(|o| CubicTaps::new(o, in_height, out_height))
        .collect();
    let cols: Vec<CubicTaps> = (0..out_width)
        .map(|o| CubicTaps::new(o, in_width, out_width))
        .collect();
    let mut output = Vec::with_capacity(out_height * out_width);
    for row in &rows {
        for col in &cols {
            let mut value = 0.0f32;
            for (&source_row, &row_weight) in row.indices.iter().zip(&row.weights) {
                let line = &input[source_row * in_width..(source_row + 1) * in_width];
                let mut along_row = 0.0f32;
                for (&source_col, &col_weight) in col.indices.iter().zip(&col.weights) {
                    along_row += line[source_col] * col_weight;
                }
                value += along_row * row_weight;
            }
            output.push(value);
        }
    }
    output
}

/// The four source indices and weights of one output coordinate of bicubic interpolation.
struct CubicTaps {
    indices: [usize; 4],
    weights: [f32; 4],
}

impl CubicTaps {
    /// Taps of output index `output` when resizing `input_size` to `output_size` with
    /// `align_corners=True` (PyTorch's `area_pixel_compute_scale`, `guard_index_and_lambda`
    /// and `get_cubic_upsample_coefficients`).
    fn new(output: usize, input_size: usize, output_size: usize) -> Self {
        let scale = if output_size > 1 {
            (input_size - 1) as f32 / (output_size - 1) as f32
        } else {
            0.0
        };
        let real = scale * output as f32;
        let floor = (real.floor() as usize).min(input_size - 1);
        let t = (real - floor as f32).clamp(0.0, 1.0);
        let clamp = |offset: isize| (floor as isize + offset).clamp(0, input_size as isize - 1);
        Self {
            indices: [-1, 0, 1, 2].map(|offset| clamp(offset) as usize),
            weights: [
                cubic_far(t + 1.0),
                cubic_near(t),
                cubic_near(1.0 - t),
                cubic_far(2.0 - t),
            ],
        }
    }
}

/// Cubic convolution kernel for `|x| <= 1` (PyTorch's `cubic_convolution1`).
fn cubic_near(x: f32) -> f32 {
    ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0
}

/// Cubic convolution kernel for `1 < |x| < 2` (PyTorch's `cubic_convolution2`).
fn cubic_far(x: f32) -> f32 {
    ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A
}

/// `F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)`
/// for one `C x H x W` image and an `H x W x 2` grid of (x, y) in `[-1, 1]`; results clamped
/// to `[0, 1]` against float rounding.
fn grid_sample_bilinear(image: &[f32], shape: ImageShape, grid: &[f32], out: &mut [f32]) {
    let (height, width) = (shape.height, shape.width);
    let plane = shape.plane_len();
    for (pixel, point) in grid.chunks_exact(2).enumerate().take(plane) {
        let ix = (point[0] + 1.0) / 2.0 * (width - 1) as f32;
        let iy = (point[1] + 1.0) / 2.0 * (height - 1) as f32;
        let (x0, y0) = (ix.floor(), iy.floor());
        let (x1, y1) = (x0 + 1.0, y0 + 1.0);
        let corners = [
            (x0, y0, (x1 - ix) * (y1 - iy)),
            (x1, y0, (ix - x0) * (y1 - iy)),
            (x0, y1, (x1 - ix) * (iy - y0)),
            (x1, y1, (ix - x0) * (iy - y0)),
        ];
        for channel in 0..shape.channels {
            let source = &image[channel * plane..(channel + 1) * plane];
            let mut value = 0.0f32;
            for &(x, y, weight) in &corners {
                if let Some(at) = pixel_index(x, y, height, width) {
                    value += source[at] * weight;
                }
            }
            out[channel * plane + pixel] = value.clamp(0.0, 1.0);
        }
    }
}

/// Flat index of integer pixel (`x`, `y`) if inside a `height x width` plane (zero padding
/// outside).
fn pixel_index(x: f32, y: f32, height: usize, width: usize) -> Option<usize> {
    let inside = |v: f32, limit: usize| v >= 0.0 && v < limit as f32;
    (inside(x, width) && inside(y, height)).then(|| y as usize * width + x as usize)
}

/// A seed for an independent stream of draws: SplitMix64 over `seed`, `stream` and `index`.
fn derived_seed(seed: u64, stream: u64, index: u64) -> u64 {
    splitmix64(splitmix64(seed ^ stream).wrapping_add(index))
}

/// One SplitMix64 step (Steele, Lea and Flood, 2014): a good 64-bit mixing function.
fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An [`AttackError::InvalidConfig`] of WaNet.
fn invalid(reason: String) -> AttackError {
    AttackError::InvalidConfig {
        attack: NAME.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::backdoor::selection::tests::labelled_set;

    /// Asserts `actual` equals `expected` within `tolerance` everywhere.
    fn assert_close(actual: &[f32], expected: &[f32], tolerance: f32) {
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!((a - e).abs() <= tolerance, "at {i}: {a} vs {e}");
        }
    }

    /// A deterministic non-constant test image.
    fn test_image(shape: ImageShape) -> Vec<f32> {
        (0..shape.num_values())
            .map(|i| ((i * 37) % 256) as f32 / 255.0)
            .collect()
    }

    /// Runs `attack`'s training transform on `image`.
    fn poison(
        attack: &WaNet,
        image: &[f32],
        shape: ImageShape,
        sample: usize,
        kind: PoisonKind,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; image.len()];
        attack.poison_training_image(image, shape, sample, kind, &mut out);
        out
    }

    #[test]
    #[allow(clippy::excessive_precision)] // values pasted as PyTorch printed them
    fn bicubic_matches_pytorch() {
        // tests/fixtures/reference/wanet_ref.py (torch 2.15, CPU, float32):
        // F.interpolate(src[None, None], size=(5, 6), mode="bicubic", align_corners=True)
        let src = [
            0.1, -0.5, 0.9, 0.3, //
            0.7, 0.2, -0.8, 0.4, //
            -0.3, 0.6, 0.05, -0.9,
        ];
        #[rustfmt::skip]
        let expected = [
            0.10000000, -0.41840005, -0.29679984, 0.69680017, 0.81840014, 0.30000001,
            0.49374998, 0.05978121, -0.23716243, -0.12196244, 0.18196273, 0.47187501,
            0.69999999, 0.50199997, -0.05280003, -0.75120008, -0.44239983, 0.40000001,
            0.25624999, 0.49238750, 0.30267492, -0.38155016, -0.52840018, -0.24062499,
            -0.30000001, 0.31020004, 0.61239994, 0.25959975, -0.37800050, -0.89999998,
        ];
        let up = upsample_bicubic_align_corners(&src, (3, 4), (5, 6));
        assert_close(&up, &expected, 1e-6);
    }

    #[test]
    fn bicubic_of_a_constant_is_constant() {
        let up = upsample_bicubic_align_corners(&[0.37; 16], (4, 4), (9, 7));
        assert_close(&up, &[0.37; 63], 1e-6);
        let single = upsample_bicubic_align_corners(&[0.5], (1, 1), (3, 3));
        assert_close(&single, &[0.5; 9], 0.0);
    }

    #[test]
    fn bilinear_sampling_by_hand_on_2x2() {
        // Image [[0, 0.4], [0.8, 1]]. Points (x, y) -> pixel coordinates ((x+1)/2, (y+1)/2):
        // (0, 0) -> (0.5, 0.5): mean 0.55; (0.5, -1) -> (0.75, 0): 0.25*0 + 0.75*0.4 = 0.3;
        // (-1, 1) -> (0, 1): 0.8; (0.2, 0.6) -> (0.6, 0.8):
        // 0.2 * (0.4*0 + 0.6*0.4) + 0.8 * (0.4*0.8 + 0.6*1) = 0.784. PyTorch agrees
        // (tests/fixtures/reference/wanet_ref.py: [0.55, 0.3, 0.8, 0.784]).
        let shape = ImageShape::new(1, 2, 2);
        let image = [0.0, 0.4, 0.8, 1.0];
        let grid = [0.0, 0.0, 0.5, -1.0, -1.0, 1.0, 0.2, 0.6];
        let mut out = [0.0; 4];
        grid_sample_bilinear(&image, shape, &grid, &mut out);
        assert_close(&out, &[0.55, 0.3, 0.8, 0.784], 1e-6);
    }

    #[test]
    fn zero_strength_is_the_identity() {
        for channels in [1, 3] {
            let shape = ImageShape::new(channels, 8, 8);
            let config = WaNetConfig {
                s: 0.0,
                ..WaNetConfig::default()
            };
            let attack = WaNet::new(config, shape).unwrap();
            let image = test_image(shape);
            let out = poison(&attack, &image, shape, 0, PoisonKind::Triggered);
            assert_close(&out, &image, 1e-6);
        }
    }

    /// tests/fixtures/reference/wanet_ref.py: the raw field (torch's `ins` before normalisation), 2 x 4 x 4.
    #[rustfmt::skip]
    const RAW_FIELD: [f32; 32] = [
        0.62, -0.18, 0.95, -0.77, 0.05, 0.33, -0.41, 0.88,
        -0.96, 0.27, 0.14, -0.59, 0.71, -0.02, 0.46, -0.35,
        -0.83, 0.52, 0.09, 0.68, -0.24, 0.91, -0.66, 0.37,
        0.19, -0.48, 0.76, -0.11, 0.58, -0.87, 0.03, 0.44,
    ];

    #[test]
    #[allow(clippy::excessive_precision)] // values pasted as PyTorch printed them
    fn grid_and_warp_match_pytorch() {
        // tests/fixtures/reference/wanet_ref.py with k = 4, H = W = 6, s = 2.0, grid_rescale = 1: BackdoorBench's
        // grid construction, then F.grid_sample(img, grid, align_corners=True) on the 3x6x6
        // image ((c*36 + i*6 + j) * 37 % 256) / 255.
        #[rustfmt::skip]
        let expected_grid = [
            -0.57195258, -1.00000000, -0.59422833, -0.97056133, -0.21148817, -0.61354208,
            0.81931543, -0.90234971, 0.87939048, -0.81187999, 0.46839267, -0.53052855,
            -0.73748267, -0.95580411, -0.43359250, -0.24735013, -0.13572413, -0.06971300,
            0.22343907, -0.83369046, 0.72540009, -0.78220129, 1.00000000, -0.22572085,
            -1.00000000, -0.28080428, -0.43937075, 0.15729269, -0.02199100, 0.19193229,
            -0.08251643, -0.41087544, 0.55492079, -0.41905206, 1.00000000, -0.03253676,
            -1.00000000, 0.26285416, -0.69526333, 0.08873998, 0.06946906, 0.15324262,
            0.26817259, 0.53520483, 0.48176509, 0.47052932, 0.78271753, 0.14079134,
            -1.00000000, 0.86770940, -0.66187292, 0.26844329, -0.02063788, 0.16410717,
            0.47679734, 0.88248825, 0.57394898, 0.98530316, 0.54734647, 0.63559705,
            -0.50981665, 1.00000000, -0.45404971, 0.72066450, -0.19044483, 0.40581495,
            0.50084817, 0.86015284, 0.73639518, 1.00000000, 0.75836033, 1.00000000,
        ];
        #[rustfmt::skip]
        let expected_warp = [
            0.15527211, 0.13737880, 0.15720949, 0.62739760, 0.61903304, 0.37616169,
            0.11861990, 0.47144964, 0.27786627, 0.38836002, 0.55328089, 0.46739715,
            0.76418966, 0.77847952, 0.50337368, 0.13643779, 0.37039059, 0.40300241,
            0.58297020, 0.75154996, 0.29284239, 0.64620316, 0.24802327, 0.26640826,
            0.38135180, 0.70376110, 0.47129118, 0.70803589, 0.87861216, 0.22582453,
            0.51506650, 0.62840748, 0.81733662, 0.66430992, 0.62479883, 0.57763815,
            0.35919368, 0.34130037, 0.36113104, 0.83131921, 0.82295460, 0.58008331,
            0.28441647, 0.15849982, 0.20733772, 0.59228164, 0.75720245, 0.67131877,
            0.76530838, 0.55815297, 0.16137879, 0.34035936, 0.57431215, 0.60692406,
            0.78689182, 0.74273419, 0.20745203, 0.15221003, 0.25124809, 0.47032985,
            0.58527339, 0.90768266, 0.17114463, 0.33050022, 0.17607683, 0.23177531,
            0.71898812, 0.83232903, 0.53319448, 0.29014456, 0.16712371, 0.17509148,
            0.56311524, 0.54522192, 0.56505263, 0.61917847, 0.65544236, 0.78400481,
            0.48833805, 0.36242139, 0.41125929, 0.79620320, 0.81776357, 0.87524033,
            0.16811123, 0.22544442, 0.36530036, 0.54428095, 0.77823377, 0.81084561,
            0.14464323, 0.15547155, 0.41137362, 0.35613161, 0.45516965, 0.67425144,
            0.78919494, 0.13425386, 0.37506622, 0.31604803, 0.31701770, 0.42393649,
            0.69656712, 0.22467294, 0.23290034, 0.33221751, 0.37104529, 0.37901306,
        ];
        let shape = ImageShape::new(3, 6, 6);
        let config = WaNetConfig {
            s: 2.0,
            ..WaNetConfig::default()
        };
        let attack = WaNet::from_field(config, RAW_FIELD.to_vec(), shape).unwrap();
        assert_close(&attack.grid(6, 6), &expected_grid, 2e-6);
        let image = test_image(shape);
        let out = poison(&attack, &image, shape, 0, PoisonKind::Triggered);
        assert_close(&out, &expected_warp, 2e-6);
    }

    #[test]
    fn linspace_matches_pytorch_endpoints_and_symmetry() {
        let values = linspace(-1.0, 1.0, 6);
        assert_eq!(values[0], -1.0);
        assert_eq!(values[5], 1.0);
        for i in 0..6 {
            assert_eq!(values[i], -values[5 - i]);
        }
        assert_eq!(linspace(-1.0, 1.0, 1), vec![-1.0]);
    }

    #[test]
    fn trigger_changes_the_image_stays_in_range_and_is_seeded() {
        let shape = ImageShape::new(3, 8, 8);
        let image = test_image(shape);
        let a = WaNet::new(WaNetConfig::default(), shape).unwrap();
        let b = WaNet::new(WaNetConfig::default(), shape).unwrap();
        let other_seed = WaNetConfig {
            seed: 1,
            ..WaNetConfig::default()
        };
        let c = WaNet::new(other_seed, shape).unwrap();
        let out_a = poison(&a, &image, shape, 0, PoisonKind::Triggered);
        assert_eq!(out_a, poison(&b, &image, shape, 0, PoisonKind::Triggered));
        assert_ne!(out_a, poison(&c, &image, shape, 0, PoisonKind::Triggered));
        assert_ne!(out_a, image);
        assert!(out_a.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(out_a, poison(&a, &image, shape, 5, PoisonKind::Triggered));
    }

    #[test]
    fn noise_samples_differ_from_the_trigger_and_are_fixed_per_sample() {
        let shape = ImageShape::new(1, 8, 8);
        let attack = WaNet::new(WaNetConfig::default(), shape).unwrap();
        let image = test_image(shape);
        let triggered = poison(&attack, &image, shape, 3, PoisonKind::Triggered);
        let noise = poison(&attack, &image, shape, 3, PoisonKind::Noise);
        assert_ne!(noise, triggered);
        assert_eq!(noise, poison(&attack, &image, shape, 3, PoisonKind::Noise));
        assert_ne!(noise, poison(&attack, &image, shape, 4, PoisonKind::Noise));
        assert!(noise.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn other_image_sizes_are_warped_too() {
        let attack = WaNet::new(WaNetConfig::default(), ImageShape::new(3, 8, 8)).unwrap();
        let shape = ImageShape::new(1, 5, 7);
        let image = test_image(shape);
        let out = poison(&attack, &image, shape, 0, PoisonKind::Triggered);
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(attack.grid(5, 7).len(), 5 * 7 * 2);
    }

    #[test]
    fn plan_adds_cross_ratio_noise_samples_with_true_labels() {
        let train = labelled_set(5, 40); // 200 samples
        let attack = WaNet::new(WaNetConfig::default(), train.shape()).unwrap();
        let rule = TargetRule::AllToOne { target: 0 };
        let plan = attack.plan(&train, rule, 0.1, 11).unwrap();
        let triggered: Vec<_> = plan
            .samples
            .iter()
            .filter(|s| s.kind == PoisonKind::Triggered)
            .collect();
        let noise: Vec<_> = plan
            .samples
            .iter()
            .filter(|s| s.kind == PoisonKind::Noise)
            .collect();
        assert_eq!(triggered.len(), 20);
        assert_eq!(noise.len(), 40);
        assert!(triggered.iter().all(|s| s.label == 0));
        assert!(noise.iter().all(|s| s.label == train.label(s.index)));
        assert!(plan.samples.windows(2).all(|w| w[0].index < w[1].index));
        let expected_poisoned =
            select_poison_indices(&train, rule, LabelMode::PoisonLabel, 0.1, 11).unwrap();
        let poisoned: Vec<usize> = triggered.iter().map(|s| s.index).collect();
        assert_eq!(poisoned, expected_poisoned);
        assert_eq!(plan, attack.plan(&train, rule, 0.1, 11).unwrap());
        assert_ne!(plan, attack.plan(&train, rule, 0.1, 12).unwrap());
    }

    #[test]
    fn plan_rejects_too_many_noise_samples() {
        let train = labelled_set(2, 10);
        let attack = WaNet::new(WaNetConfig::default(), train.shape()).unwrap();
        let result = attack.plan(&train, TargetRule::AllToAll, 0.5, 0);
        assert!(matches!(result, Err(AttackError::InvalidConfig { .. })));
    }

    #[test]
    fn invalid_configurations_are_rejected() {
        let shape = ImageShape::new(1, 8, 8);
        let bad = [
            WaNetConfig {
                k: 0,
                ..WaNetConfig::default()
            },
            WaNetConfig {
                s: f64::NAN,
                ..WaNetConfig::default()
            },
            WaNetConfig {
                grid_rescale: f64::INFINITY,
                ..WaNetConfig::default()
            },
            WaNetConfig {
                cross_ratio: -1.0,
                ..WaNetConfig::default()
            },
        ];
        for config in bad {
            assert!(matches!(
                WaNet::new(config, shape),
                Err(AttackError::InvalidConfig { .. })
            ));
        }
        let short = WaNet::from_field(WaNetConfig::default(), vec![0.0; 5], shape);
        assert!(short.is_err());
        assert!(WaNet::new(WaNetConfig::default(), ImageShape::new(1, 0, 8)).is_err());
    }
}
