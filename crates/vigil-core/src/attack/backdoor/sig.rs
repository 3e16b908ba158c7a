//! SIG (Barni, Kallas and Tondi, 2019): a horizontal sinusoid added to the image, mounted
//! clean-label (only target-class training images are poisoned, and keep their label).
//!
//! Followed: SCLBD/BackdoorBench `utils/bd_img_transform/sig.py` (`sigTriggerAttack`, commit
//! `988bbe39104e8cc0a022bb47aeecb8a777aa7c30`), `attack/sig.py` (`clean_label=True`) and
//! `config/attack/sig/default.yaml` (`sig_delta: 40`, `sig_f: 6`, `pratio: 0.1`, commit
//! `3f4b1a92ed6c13e0cd21534df56155cf3ef71f87`). On the 0..255 scale, for the image held as
//! `H x W (x C)` with `m = W` columns:
//!
//! ```text
//! pattern[i, j] = float32(delta * sin(2 * pi * j * f / m))      (same for every row and channel)
//! out           = uint8(clip(uint32(img) + pattern, 0, 255))    (truncation toward zero)
//! ```
//!
//! By default vigil reproduces that arithmetic exactly (given 8-bit inputs), quirks included:
//! where `sin` should be 0 but is a tiny negative number in floating point (e.g. column 4 of
//! an 8-wide image with f = 6, `sin(6 pi) = -7e-16`), the truncation drops the pixel one level.
//! [`Sig::with_u8_storage`]`(false)` gives the continuous `clip(x + delta / 255 * sin(..))`.

use super::{
    AttackError, BackdoorAttack, LabelMode, PoisonKind, fits, truncated_u8_unit, u8_level,
};
use crate::data::ImageShape;

/// Registry name of the attack.
const NAME: &str = "sig";

/// BackdoorBench's amplitude, on the 0..255 scale.
pub const DEFAULT_DELTA: f64 = 40.0;

/// BackdoorBench's number of periods across the image width.
pub const DEFAULT_FREQUENCY: f64 = 6.0;

/// The SIG attack: `x[i, j] + delta sin(2 pi j f / W)` on the 0..255 scale, clean-label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sig {
    delta: f64,
    frequency: f64,
    /// Amplitude applied at test time (equal to `delta` unless set).
    test_delta: f64,
    store_as_u8: bool,
}

impl Default for Sig {
    /// BackdoorBench's defaults: delta 40, f 6, 8-bit storage.
    fn default() -> Self {
        Self {
            delta: DEFAULT_DELTA,
            frequency: DEFAULT_FREQUENCY,
            test_delta: DEFAULT_DELTA,
            store_as_u8: true,
        }
    }
}

impl Sig {
    /// SIG with amplitude `delta` (0..255 scale) and `frequency` periods across the width,
    /// 8-bit storage. Fails with [`AttackError::InvalidConfig`] unless both are finite.
    pub fn new(delta: f64, frequency: f64) -> Result<Self, AttackError> {
        if !delta.is_finite() || !frequency.is_finite() {
            return Err(AttackError::InvalidConfig {
                attack: NAME.to_string(),
                reason: format!("delta {delta} and frequency {frequency} must be finite"),
            });
        }
        Ok(Self {
            delta,
            frequency,
            test_delta: delta,
            store_as_u8: true,
        })
    }

    /// The same training-time poison, with amplitude `test_delta` for the test-time trigger.
    pub fn with_test_delta(mut self, test_delta: f64) -> Result<Self, AttackError> {
        if !test_delta.is_finite() {
            return Err(AttackError::InvalidConfig {
                attack: NAME.to_string(),
                reason: format!("test delta {test_delta} must be finite"),
            });
        }
        self.test_delta = test_delta;
        Ok(self)
    }

    /// Chooses between BackdoorBench's 8-bit storage (`true`, the default) and the continuous
    /// formula (`false`).
    pub fn with_u8_storage(mut self, store_as_u8: bool) -> Self {
        self.store_as_u8 = store_as_u8;
        self
    }

    /// Amplitude on the 0..255 scale.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    /// Amplitude of the test-time trigger, on the 0..255 scale.
    pub fn test_delta(&self) -> f64 {
        self.test_delta
    }

    /// Periods across the image width.
    pub fn frequency(&self) -> f64 {
        self.frequency
    }

    /// Whether outputs are stored as 8-bit values the way BackdoorBench stores them.
    pub fn stores_as_u8(&self) -> bool {
        self.store_as_u8
    }

    /// The signal of amplitude `delta` added to column `col` of a `width`-wide image, 0..255
    /// scale, as BackdoorBench's float32 pattern array holds it.
    fn signal(&self, delta: f64, col: usize, width: usize) -> f32 {
        let angle = 2.0 * std::f64::consts::PI * col as f64 * self.frequency / width as f64;
        (delta * angle.sin()) as f32
    }

    /// Adds the sinusoid of amplitude `delta`; leaves `out` unchanged on a size mismatch.
    fn add_signal(&self, delta: f64, image: &[f32], shape: ImageShape, out: &mut [f32]) {
        if !fits(image, shape, out) {
            return;
        }
        let signals: Vec<f32> = (0..shape.width)
            .map(|col| self.signal(delta, col, shape.width))
            .collect();
        for (index, (out, &value)) in out.iter_mut().zip(image).enumerate() {
            *out = self.add(value, signals[index % shape.width]);
        }
    }

    /// One triggered value.
    fn add(&self, value: f32, signal: f32) -> f32 {
        if self.store_as_u8 {
            truncated_u8_unit(u8_level(value) + f64::from(signal))
        } else {
            (value + signal / 255.0).clamp(0.0, 1.0)
        }
    }
}

impl BackdoorAttack for Sig {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Clean-label, as BackdoorBench mounts SIG.
    fn label_mode(&self) -> LabelMode {
        LabelMode::CleanLabel
    }

    /// Adds the test-time sinusoid. If `out`, `image` and `shape` disagree in size (a caller
    /// bug), `out` is left unchanged.
    fn apply_trigger(&self, image: &[f32], shape: ImageShape, _sample: usize, out: &mut [f32]) {
        self.add_signal(self.test_delta, image, shape, out);
    }

    /// Adds the training-time sinusoid (amplitude `delta`).
    fn poison_training_image(
        &self,
        image: &[f32],
        shape: ImageShape,
        _sample: usize,
        _kind: PoisonKind,
        out: &mut [f32],
    ) {
        self.add_signal(self.delta, image, shape, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Levels as vigil's loaders store them.
    fn unit(levels: &[u8]) -> Vec<f32> {
        levels.iter().map(|&l| f32::from(l) / 255.0).collect()
    }

    /// Applies `attack` to `image` of `shape`.
    fn run(attack: &Sig, image: &[f32], shape: ImageShape) -> Vec<f32> {
        let mut out = vec![f32::NAN; image.len()];
        attack.apply_trigger(image, shape, 0, &mut out);
        out
    }

    #[test]
    fn u8_mode_matches_backdoorbench_by_hand_and_numpy() {
        // Width 8, f 6: sin(2 pi j 6 / 8) = sin(3 pi j / 2) = 0, -1, 0, 1, 0, -1, 0, 1 for
        // j = 0..8, so +-40 or 0 per column; clipped to 0..255. Column 4: sin(6 pi) is
        // -7.3e-16 in float64, so 100 becomes 99 after truncation (and 90 becomes 89).
        // Checked with tests/fixtures/reference/blended_sig_ref.py running BackdoorBench's sigTrigger (numpy 2.4):
        // [[100, 0, 255, 70, 99, 80, 100, 240], [5, 20, 70, 120, 89, 60, 110, 160]].
        let shape = ImageShape::new(1, 2, 8);
        let image = unit(&[
            100, 0, 255, 30, 100, 120, 100, 200, //
            5, 60, 70, 80, 90, 100, 110, 120,
        ]);
        let out = run(&Sig::default(), &image, shape);
        let expected = unit(&[
            100, 0, 255, 70, 99, 80, 100, 240, //
            5, 20, 70, 120, 89, 60, 110, 160,
        ]);
        assert_eq!(out, expected);
    }

    #[test]
    fn continuous_mode_is_the_plain_formula() {
        let shape = ImageShape::new(3, 2, 8);
        let attack = Sig::default().with_u8_storage(false);
        let out = run(&attack, &vec![0.5; shape.num_values()], shape);
        // Column 1: 0.5 - 40 / 255; column 3: 0.5 + 40 / 255; column 0: 0.5.
        for channel_row in 0..6 {
            let row = &out[channel_row * 8..(channel_row + 1) * 8];
            assert_eq!(row[0], 0.5);
            assert!((row[1] - (0.5 - 40.0 / 255.0)).abs() < 1e-6);
            assert!((row[3] - (0.5 + 40.0 / 255.0)).abs() < 1e-6);
        }
    }

    #[test]
    fn signal_is_constant_down_columns_and_across_channels() {
        let shape = ImageShape::new(3, 4, 8);
        let out = run(&Sig::default(), &vec![0.5; shape.num_values()], shape);
        for row in out.chunks_exact(8) {
            assert_eq!(row, &out[..8]);
        }
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn outputs_are_clipped_and_deterministic() {
        let shape = ImageShape::new(1, 8, 8);
        let big = Sig::new(1000.0, 3.0).unwrap();
        for store in [true, false] {
            let attack = big.with_u8_storage(store);
            let image: Vec<f32> = (0..64).map(|i| i as f32 / 63.0).collect();
            let out = run(&attack, &image, shape);
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
            assert_eq!(out, run(&attack, &image, shape));
        }
    }

    #[test]
    fn test_time_amplitude_is_separate_from_the_training_one() {
        let shape = ImageShape::new(1, 2, 8);
        let image = vec![0.5; shape.num_values()];
        let attack = Sig::new(20.0, 6.0)
            .unwrap()
            .with_u8_storage(false)
            .with_test_delta(60.0)
            .unwrap();
        let mut train = vec![0.0; image.len()];
        attack.poison_training_image(&image, shape, 0, PoisonKind::Triggered, &mut train);
        let test = run(&attack, &image, shape);
        // Column 3 of 8 at f 6: sin(9 pi / 2) = 1, so +20/255 in training, +60/255 at test.
        assert!((train[3] - (0.5 + 20.0 / 255.0)).abs() < 1e-6);
        assert!((test[3] - (0.5 + 60.0 / 255.0)).abs() < 1e-6);
        // By default the two are the same.
        let plain = Sig::default();
        let mut poisoned = vec![0.0; image.len()];
        plain.poison_training_image(&image, shape, 0, PoisonKind::Triggered, &mut poisoned);
        assert_eq!(poisoned, run(&plain, &image, shape));
        assert!(attack.with_test_delta(f64::NAN).is_err());
    }

    #[test]
    fn is_clean_label_and_validates() {
        assert_eq!(Sig::default().label_mode(), LabelMode::CleanLabel);
        assert!(Sig::new(f64::NAN, 6.0).is_err());
        assert!(Sig::new(40.0, f64::INFINITY).is_err());
    }
}
