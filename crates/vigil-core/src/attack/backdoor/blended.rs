//! Blended (Chen et al., 2017): the image alpha-blended with a fixed pattern image,
//! `out = (1 - alpha) x + alpha pattern`.
//!
//! Followed: SCLBD/BackdoorBench `utils/bd_img_transform/blended.py` (`blendedImageAttack`,
//! commit `988bbe39104e8cc0a022bb47aeecb8a777aa7c30`), the `blended` branch of
//! `utils/aggregate_block/bd_attack_generate.py` and `config/attack/blended/default.yaml`
//! (commit `3f4b1a92ed6c13e0cd21534df56155cf3ef71f87`): alpha 0.2 at training and test time;
//! the pattern is `resource/blended/hello_kitty.jpeg` resized to the data size (torchvision
//! `Resize`, PIL bilinear) and read through `ToTensor` (so `byte / 255`, times 255); the
//! blend is computed on the 0..255 scale in float64 and stored as uint8 by
//! `np.clip(v, 0, 255).astype(np.uint8)` (truncation, not rounding).
//!
//! vigil cannot ship the Hello Kitty image. Its default pattern is seeded uniform noise, each
//! value an independent uniform 8-bit level: the random-pattern variant of Chen et al.'s
//! blended injection. Pass BackdoorBench's image to [`Blended::from_png_bytes`] to reproduce
//! its trigger (resized with a triangle filter, i.e. antialiased bilinear like PIL's, though
//! not bit-identical to PIL).
//!
//! Storage: by default ([`Blended::stores_as_u8`]) vigil reproduces BackdoorBench's float
//! arithmetic and truncation exactly (given 8-bit inputs), so outputs are `byte / 255`;
//! [`Blended::with_u8_storage`]`(false)` gives the continuous formula in `f32`, clamped to
//! `[0, 1]`.

use std::path::Path;

use image::imageops::FilterType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{AttackError, BackdoorAttack, decode_pattern, fits, truncated_u8_unit, u8_level};
use crate::data::ImageShape;

/// Registry name of the attack.
const NAME: &str = "blended";

/// BackdoorBench's blending weight of the pattern (`attack_train_blended_alpha` and
/// `attack_test_blended_alpha` in `config/attack/blended/default.yaml`).
pub const DEFAULT_ALPHA: f64 = 0.2;

/// Seed of vigil's default noise pattern.
pub const DEFAULT_PATTERN_SEED: u64 = 0x0b1e_4ded;

/// The Blended attack: a fixed pattern blended into the image with weight `alpha`,
/// poison-label.
#[derive(Debug, Clone, PartialEq)]
pub struct Blended {
    pattern: Vec<f32>,
    pattern_shape: ImageShape,
    alpha: f64,
    store_as_u8: bool,
}

impl Blended {
    /// Blended with `pattern` (`pattern_shape`, values in `[0, 1]`) and weight `alpha` in
    /// `[0, 1]`, storing outputs as 8-bit values like BackdoorBench. Fails with
    /// [`AttackError::InvalidConfig`] on inconsistent or out-of-range input.
    pub fn new(
        pattern: Vec<f32>,
        pattern_shape: ImageShape,
        alpha: f64,
    ) -> Result<Self, AttackError> {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(invalid(format!("alpha {alpha} is not in [0, 1]")));
        }
        if pattern_shape.num_values() == 0 || pattern.len() != pattern_shape.num_values() {
            return Err(invalid(format!(
                "{} pattern values do not make a {pattern_shape} pattern",
                pattern.len()
            )));
        }
        if let Some(bad) = pattern.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(invalid(format!("pattern holds {bad}, outside [0, 1]")));
        }
        Ok(Self {
            pattern,
            pattern_shape,
            alpha,
            store_as_u8: true,
        })
    }

    /// vigil's default trigger for images of `shape`: a noise pattern of independent uniform
    /// 8-bit levels drawn from `StdRng::seed_from_u64(seed)` (use [`DEFAULT_PATTERN_SEED`]),
    /// blended with `alpha` (use [`DEFAULT_ALPHA`]). The same seed gives the same pattern.
    pub fn with_noise_pattern(
        shape: ImageShape,
        seed: u64,
        alpha: f64,
    ) -> Result<Self, AttackError> {
        let mut rng = StdRng::seed_from_u64(seed);
        let pattern = (0..shape.num_values())
            .map(|_| f32::from(rng.random::<u8>()) / 255.0)
            .collect();
        Self::new(pattern, shape, alpha)
    }

    /// Blended with a user image (PNG or JPEG, e.g. BackdoorBench's `hello_kitty.jpeg`) as
    /// the pattern, resized to `shape` with a triangle (bilinear) filter and converted to its
    /// channels (1 or 3). `origin` names the bytes in errors; unreadable images give
    /// [`AttackError::Pattern`].
    pub fn from_png_bytes(
        bytes: &[u8],
        shape: ImageShape,
        alpha: f64,
        origin: &Path,
    ) -> Result<Self, AttackError> {
        let size = Some((shape.height, shape.width));
        let decoded = decode_pattern(bytes, shape.channels, size, FilterType::Triangle, origin)?;
        Self::new(decoded.values, decoded.shape, alpha)
    }

    /// Chooses between BackdoorBench's 8-bit storage (`true`, the default) and the continuous
    /// formula (`false`).
    pub fn with_u8_storage(mut self, store_as_u8: bool) -> Self {
        self.store_as_u8 = store_as_u8;
        self
    }

    /// The pattern, `C x H x W` of [`Blended::pattern_shape`], values in `[0, 1]`.
    pub fn pattern(&self) -> &[f32] {
        &self.pattern
    }

    /// Shape of the pattern. Images of another shape are blended with the pattern sampled
    /// nearest-neighbour (pattern channel `c % C`).
    pub fn pattern_shape(&self) -> ImageShape {
        self.pattern_shape
    }

    /// Weight of the pattern.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Whether outputs are stored as 8-bit values the way BackdoorBench stores them.
    pub fn stores_as_u8(&self) -> bool {
        self.store_as_u8
    }

    /// The pattern value that blends into element (`channel`, `row`, `col`) of an image of
    /// `shape`: the pattern's own value when shapes agree, else its nearest-neighbour sample.
    fn pattern_at(&self, shape: ImageShape, channel: usize, row: usize, col: usize) -> f32 {
        let own = self.pattern_shape;
        let pattern_row = row * own.height / shape.height;
        let pattern_col = col * own.width / shape.width;
        let pattern_channel = channel % own.channels;
        self.pattern[(pattern_channel * own.height + pattern_row) * own.width + pattern_col]
    }

    /// One blended value.
    fn blend(&self, value: f32, pattern: f32) -> f32 {
        if self.store_as_u8 {
            // BackdoorBench: (1 - a) * uint8 image (float64) + a * (ToTensor(pattern) * 255)
            // (float32), clipped and truncated to uint8.
            let pattern_255 = pattern * 255.0;
            let weighted_pattern = f64::from(self.alpha as f32 * pattern_255);
            truncated_u8_unit((1.0 - self.alpha) * u8_level(value) + weighted_pattern)
        } else {
            let alpha = self.alpha as f32;
            ((1.0 - alpha) * value + alpha * pattern).clamp(0.0, 1.0)
        }
    }
}

impl BackdoorAttack for Blended {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Writes `(1 - alpha) image + alpha pattern` (8-bit storage per
    /// [`Blended::stores_as_u8`]). If `out`, `image` and `shape` disagree in size (a caller
    /// bug), `out` is left unchanged.
    fn apply_trigger(&self, image: &[f32], shape: ImageShape, _sample: usize, out: &mut [f32]) {
        if !fits(image, shape, out) {
            return;
        }
        let plane = shape.plane_len();
        for (index, (out, &value)) in out.iter_mut().zip(image).enumerate() {
            let (channel, within) = (index / plane, index % plane);
            let (row, col) = (within / shape.width, within % shape.width);
            *out = self.blend(value, self.pattern_at(shape, channel, row, col));
        }
    }
}

/// An [`AttackError::InvalidConfig`] of Blended.
fn invalid(reason: String) -> AttackError {
    AttackError::InvalidConfig {
        attack: NAME.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::backdoor::badnets::tests::png_bytes;

    /// Applies `attack` to `image` of `shape`.
    fn run(attack: &Blended, image: &[f32], shape: ImageShape) -> Vec<f32> {
        let mut out = vec![f32::NAN; image.len()];
        attack.apply_trigger(image, shape, 0, &mut out);
        out
    }

    /// Levels as vigil's loaders store them.
    fn unit(levels: &[u8]) -> Vec<f32> {
        levels.iter().map(|&l| f32::from(l) / 255.0).collect()
    }

    #[test]
    fn continuous_mode_is_the_exact_formula() {
        let shape = ImageShape::new(3, 8, 8);
        let attack = Blended::with_noise_pattern(shape, 7, 0.2)
            .unwrap()
            .with_u8_storage(false);
        let image: Vec<f32> = (0..shape.num_values())
            .map(|i| (i % 97) as f32 / 96.0)
            .collect();
        let out = run(&attack, &image, shape);
        for ((o, x), p) in out.iter().zip(&image).zip(attack.pattern()) {
            assert_eq!(*o, (1.0 - 0.2f32) * x + 0.2f32 * p);
        }
        assert_ne!(out, image);
    }

    #[test]
    fn u8_mode_matches_backdoorbench_arithmetic() {
        // tests/fixtures/reference/blended_sig_ref.py (numpy 2.4, torch 2.15):
        //   pattern = torch.from_numpy(P).float().div(255).numpy() * 255
        //   np.clip((1 - 0.2) * L + 0.2 * pattern, 0, 255).astype(np.uint8)
        // with L = [0, 7, 100, 200, 255, 254, 13, 77], P = [255, 3, 50, 199, 0, 128, 14, 76]
        // gives [51, 6, 90, 199, 204, 228, 13, 76] (floats 51.0, 6.2000000238, 90.0,
        // 199.7999992, 204.0, 228.80000038, 13.19999995, 76.7999998).
        let shape = ImageShape::new(1, 2, 4);
        let pattern = unit(&[255, 3, 50, 199, 0, 128, 14, 76]);
        let attack = Blended::new(pattern, shape, DEFAULT_ALPHA).unwrap();
        let out = run(&attack, &unit(&[0, 7, 100, 200, 255, 254, 13, 77]), shape);
        assert_eq!(out, unit(&[51, 6, 90, 199, 204, 228, 13, 76]));
    }

    #[test]
    fn noise_pattern_is_deterministic_and_seeded() {
        let shape = ImageShape::new(1, 8, 8);
        let a = Blended::with_noise_pattern(shape, 1, DEFAULT_ALPHA).unwrap();
        let b = Blended::with_noise_pattern(shape, 1, DEFAULT_ALPHA).unwrap();
        let c = Blended::with_noise_pattern(shape, 2, DEFAULT_ALPHA).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.pattern(), c.pattern());
        let image = vec![0.5; shape.num_values()];
        let out = run(&a, &image, shape);
        assert_eq!(out, run(&b, &image, shape));
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(out.iter().any(|&v| v != 0.5));
    }

    #[test]
    fn outputs_stay_in_range_at_the_extremes() {
        let shape = ImageShape::new(3, 4, 4);
        for store in [true, false] {
            let attack = Blended::with_noise_pattern(shape, 3, 1.0)
                .unwrap()
                .with_u8_storage(store);
            for fill in [0.0, 1.0] {
                let out = run(&attack, &vec![fill; shape.num_values()], shape);
                assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
                assert_eq!(out, attack.pattern(), "alpha 1 gives the pattern");
            }
        }
    }

    #[test]
    fn a_differently_sized_image_samples_the_pattern_nearest() {
        let attack = Blended::new(vec![0.0, 1.0], ImageShape::new(1, 1, 2), 1.0)
            .unwrap()
            .with_u8_storage(false);
        let shape = ImageShape::new(3, 2, 4);
        let out = run(&attack, &vec![0.5; shape.num_values()], shape);
        let row = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(out, row.repeat(6));
    }

    #[test]
    fn png_pattern_is_resized_and_converted() {
        let white = [255, 255, 255, 255];
        let bytes = png_bytes(2, 2, &[white; 4]);
        let shape = ImageShape::new(1, 5, 3);
        let attack = Blended::from_png_bytes(&bytes, shape, 0.2, Path::new("w.png")).unwrap();
        assert_eq!(attack.pattern_shape(), shape);
        assert!(attack.pattern().iter().all(|&v| v == 1.0));
    }

    #[test]
    fn invalid_configurations_are_typed_errors() {
        let shape = ImageShape::new(1, 2, 2);
        assert!(matches!(
            Blended::new(vec![0.0; 4], shape, 1.5),
            Err(AttackError::InvalidConfig { .. })
        ));
        assert!(Blended::new(vec![0.0; 3], shape, 0.2).is_err());
        assert!(Blended::new(vec![0.0, 0.0, 0.0, 2.0], shape, 0.2).is_err());
        assert!(Blended::with_noise_pattern(ImageShape::new(0, 2, 2), 0, 0.2).is_err());
        assert!(matches!(
            Blended::from_png_bytes(b"\x89PNG junk", shape, 0.2, Path::new("x.png")),
            Err(AttackError::Pattern { .. })
        ));
    }
}
