//! BadNets (Gu et al., 2017): a small fixed patch stamped on the image.
//!
//! Followed: SCLBD/BackdoorBench `utils/bd_img_transform/patch.py` (`AddMaskPatchTrigger`),
//! `utils/aggregate_block/bd_attack_generate.py` (branch `badnet`), `config/attack/badnet/
//! default.yaml` and `resource/badnet/generate_white_square.py` / `generate_grid.py` (commit
//! `3f4b1a92ed6c13e0cd21534df56155cf3ef71f87`, `patch.py` and `generate_white_square.py` at
//! `59f6cdaa9256652bd8f3c21aa517d348999288cf`). BackdoorBench's trigger is a full-size image
//! (`resource/badnet/trigger_image.png`: 32x32, black, with a 3x3 white square in the
//! bottom-right corner, no margin) resized to the data's size; every value `> 0` replaces the
//! image's value, every `0` keeps it (`img * (trigger == 0) + trigger * (trigger > 0)`, per
//! channel value). Its grid variant is a 3x3 checkerboard of 255 and 1 (1, not 0, because 0
//! means "not part of the trigger").
//!
//! vigil represents the trigger as a [`Patch`] (values plus an opacity per value) placed at a
//! [`PatchPosition`]. [`BadNets::default`] is BackdoorBench's: a 3x3 white square in the
//! bottom-right corner. [`BadNets::from_backdoorbench_trigger_png`] reads BackdoorBench's
//! full-size trigger images with their "non-zero means set" rule. Differences, documented:
//! BackdoorBench resizes its trigger image with PIL's bilinear filter when the data are not
//! 32x32 (so on 28x28 or 64x64 data its square is blurred); vigil keeps the square 3x3 at any
//! size (and resizes user images nearest-neighbour). BackdoorBench has no working MNIST
//! BadNets trigger (its RGB trigger image does not broadcast against 1-channel MNIST arrays);
//! vigil's default is channel-agnostic, a 3x3 white square for 1- and 3-channel data alike.
//! vigil's checkerboard uses 0 for its dark squares (opacity carries the mask).

use std::path::Path;

use image::imageops::FilterType;
use serde::{Deserialize, Serialize};

use super::{AttackError, BackdoorAttack, decode_pattern, fits};
use crate::data::ImageShape;

/// Registry name of the attack.
const NAME: &str = "badnets";

/// Side of BackdoorBench's default square trigger, in pixels.
pub const DEFAULT_PATCH_SIZE: usize = 3;

/// A trigger patch: `C x h x w` values in `[0, 1]` and an opacity in `[0, 1]` for every value
/// (1: the value replaces the image's, 0: the image's value is kept, in between: blended).
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    shape: ImageShape,
    values: Vec<f32>,
    alpha: Vec<f32>,
}

/// Built-in patch patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchPattern {
    /// Every pixel white (BackdoorBench's `trigger_image.png`).
    WhiteSquare,
    /// White where `row + column` is even, black elsewhere (BackdoorBench's
    /// `trigger_image_grid.png`, whose dark squares are 1/255 rather than 0).
    Checkerboard,
}

/// Which parts of a user image make up the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchMask {
    /// The image's alpha channel is the opacity (fully opaque if it has none).
    AlphaChannel,
    /// BackdoorBench's rule: a value `> 0` is part of the trigger, a value `0` is not.
    NonZeroValues,
}

/// Where the patch's top-left corner goes. Corner positions keep `margin` pixels between the
/// patch and the image's edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PatchPosition {
    /// Bottom-right corner (BackdoorBench's default, margin 0).
    BottomRight {
        /// Pixels between the patch and the bottom and right edges.
        margin: usize,
    },
    /// Bottom-left corner.
    BottomLeft {
        /// Pixels between the patch and the bottom and left edges.
        margin: usize,
    },
    /// Top-right corner.
    TopRight {
        /// Pixels between the patch and the top and right edges.
        margin: usize,
    },
    /// Top-left corner.
    TopLeft {
        /// Pixels between the patch and the top and left edges.
        margin: usize,
    },
    /// The patch's top-left pixel at (`row`, `col`).
    At {
        /// Row of the patch's top-left pixel.
        row: usize,
        /// Column of the patch's top-left pixel.
        col: usize,
    },
}

impl Default for PatchPosition {
    /// Bottom-right corner, no margin (BackdoorBench).
    fn default() -> Self {
        PatchPosition::BottomRight { margin: 0 }
    }
}

impl Patch {
    /// A patch from its shape, values and opacities (both `shape.num_values()` long, in
    /// `[0, 1]`). Fails with [`AttackError::InvalidConfig`] otherwise.
    pub fn new(shape: ImageShape, values: Vec<f32>, alpha: Vec<f32>) -> Result<Self, AttackError> {
        if shape.num_values() == 0 {
            return Err(invalid(format!("patch shape {shape} is empty")));
        }
        for (what, data) in [("values", &values), ("opacities", &alpha)] {
            if data.len() != shape.num_values() {
                return Err(invalid(format!(
                    "{} patch {what} do not make a {shape} patch",
                    data.len()
                )));
            }
            if let Some(bad) = data.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                return Err(invalid(format!("patch {what} hold {bad}, outside [0, 1]")));
            }
        }
        Ok(Self {
            shape,
            values,
            alpha,
        })
    }

    /// A fully opaque one-channel `size x size` patch of `pattern` (one channel is applied to
    /// every channel of the image). Fails if `size` is 0.
    pub fn square(pattern: PatchPattern, size: usize) -> Result<Self, AttackError> {
        let shape = ImageShape::new(1, size, size);
        let values = (0..size * size)
            .map(|index| match pattern {
                PatchPattern::WhiteSquare => 1.0,
                PatchPattern::Checkerboard if (index / size + index % size).is_multiple_of(2) => {
                    1.0
                }
                PatchPattern::Checkerboard => 0.0,
            })
            .collect();
        Self::new(shape, values, vec![1.0; size * size])
    }

    /// A patch from a PNG (or JPEG) image: decoded, resized nearest-neighbour to `size`
    /// (height, width) if given, converted to `channels` (1 or 3; RGB to gray as PIL's
    /// `convert("L")`), with opacities from `mask`. `origin` names the bytes in errors.
    /// Fails with [`AttackError::Pattern`] on unreadable images.
    pub fn from_png_bytes(
        bytes: &[u8],
        channels: usize,
        size: Option<(usize, usize)>,
        mask: PatchMask,
        origin: &Path,
    ) -> Result<Self, AttackError> {
        let decoded = decode_pattern(bytes, channels, size, FilterType::Nearest, origin)?;
        let alpha = match mask {
            PatchMask::AlphaChannel => decoded.alpha,
            PatchMask::NonZeroValues => decoded
                .values
                .iter()
                .map(|&value| if value > 0.0 { 1.0 } else { 0.0 })
                .collect(),
        };
        Self::new(decoded.shape, decoded.values, alpha)
    }

    /// Shape of the patch, `C x h x w`.
    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    /// Values, `C x h x w`, in `[0, 1]`.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Opacity of every value, `C x h x w`, in `[0, 1]`.
    pub fn alpha(&self) -> &[f32] {
        &self.alpha
    }
}

/// The BadNets attack: [`Patch`] stamped at [`PatchPosition`], poison-label.
#[derive(Debug, Clone, PartialEq)]
pub struct BadNets {
    /// The trigger.
    pub patch: Patch,
    /// Where it goes.
    pub position: PatchPosition,
}

impl Default for BadNets {
    /// BackdoorBench's default trigger: a 3x3 white square in the bottom-right corner.
    fn default() -> Self {
        Self {
            patch: Patch {
                shape: ImageShape::new(1, DEFAULT_PATCH_SIZE, DEFAULT_PATCH_SIZE),
                values: vec![1.0; DEFAULT_PATCH_SIZE * DEFAULT_PATCH_SIZE],
                alpha: vec![1.0; DEFAULT_PATCH_SIZE * DEFAULT_PATCH_SIZE],
            },
            position: PatchPosition::default(),
        }
    }
}

impl BadNets {
    /// BadNets with `patch` at `position`.
    pub fn new(patch: Patch, position: PatchPosition) -> Self {
        Self { patch, position }
    }

    /// BadNets with a `size x size` built-in `pattern` at `position`. Fails if `size` is 0.
    pub fn square(
        pattern: PatchPattern,
        size: usize,
        position: PatchPosition,
    ) -> Result<Self, AttackError> {
        Ok(Self::new(Patch::square(pattern, size)?, position))
    }

    /// BadNets with a user image as the patch (see [`Patch::from_png_bytes`]) at `position`.
    pub fn from_png_bytes(
        bytes: &[u8],
        channels: usize,
        size: Option<(usize, usize)>,
        mask: PatchMask,
        position: PatchPosition,
        origin: &Path,
    ) -> Result<Self, AttackError> {
        let patch = Patch::from_png_bytes(bytes, channels, size, mask, origin)?;
        Ok(Self::new(patch, position))
    }

    /// BadNets from a BackdoorBench full-size trigger image (`--patch_mask_path`, e.g.
    /// `resource/badnet/trigger_image.png`): resized nearest-neighbour to the data's
    /// `shape` (BackdoorBench: bilinear), values `> 0` set, placed at the top-left.
    pub fn from_backdoorbench_trigger_png(
        bytes: &[u8],
        shape: ImageShape,
        origin: &Path,
    ) -> Result<Self, AttackError> {
        let size = Some((shape.height, shape.width));
        let patch = Patch::from_png_bytes(
            bytes,
            shape.channels,
            size,
            PatchMask::NonZeroValues,
            origin,
        )?;
        Ok(Self::new(patch, PatchPosition::At { row: 0, col: 0 }))
    }

    /// Checks that the patch lies wholly inside images of `shape` and that its channels fit
    /// them (the same count, or one channel for all). [`BackdoorAttack::apply_trigger`]
    /// never fails: it stamps the part of the patch inside the image and maps patch channel
    /// `c % patch_channels` to image channel `c`; call this first to rule that out.
    pub fn check_fits(&self, shape: ImageShape) -> Result<(), AttackError> {
        let patch = self.patch.shape;
        if patch.channels != 1 && patch.channels != shape.channels {
            return Err(invalid(format!(
                "a {}-channel patch does not fit {}-channel images",
                patch.channels, shape.channels
            )));
        }
        let (row, col) = self.top_left(shape);
        let inside =
            |start: isize, len: usize, limit: usize| start >= 0 && start as usize + len <= limit;
        if !inside(row, patch.height, shape.height) || !inside(col, patch.width, shape.width) {
            return Err(invalid(format!(
                "a {}x{} patch at {:?} does not fit inside {}x{} images",
                patch.height, patch.width, self.position, shape.height, shape.width
            )));
        }
        Ok(())
    }

    /// Row and column of the patch's top-left pixel in an image of `shape` (negative when a
    /// corner patch is larger than the image).
    fn top_left(&self, shape: ImageShape) -> (isize, isize) {
        let (height, width) = (shape.height as isize, shape.width as isize);
        let (patch_height, patch_width) = (
            self.patch.shape.height as isize,
            self.patch.shape.width as isize,
        );
        let far = |limit: isize, len: isize, margin: usize| limit - margin as isize - len;
        match self.position {
            PatchPosition::BottomRight { margin } => (
                far(height, patch_height, margin),
                far(width, patch_width, margin),
            ),
            PatchPosition::BottomLeft { margin } => {
                (far(height, patch_height, margin), margin as isize)
            }
            PatchPosition::TopRight { margin } => {
                (margin as isize, far(width, patch_width, margin))
            }
            PatchPosition::TopLeft { margin } => (margin as isize, margin as isize),
            PatchPosition::At { row, col } => (row as isize, col as isize),
        }
    }

    /// Stamps the patch on `out` (already a copy of the image), skipping parts outside it.
    pub(crate) fn stamp(&self, shape: ImageShape, out: &mut [f32]) {
        let patch = self.patch.shape;
        let (top, left) = self.top_left(shape);
        for channel in 0..shape.channels {
            let patch_channel = channel % patch.channels;
            for patch_row in 0..patch.height {
                let Some(row) = offset(top, patch_row, shape.height) else {
                    continue;
                };
                for patch_col in 0..patch.width {
                    let Some(col) = offset(left, patch_col, shape.width) else {
                        continue;
                    };
                    let from = (patch_channel * patch.height + patch_row) * patch.width + patch_col;
                    let to = (channel * shape.height + row) * shape.width + col;
                    out[to] = over(out[to], self.patch.values[from], self.patch.alpha[from]);
                }
            }
        }
    }
}

/// `start + step` if it is a valid index below `limit`.
fn offset(start: isize, step: usize, limit: usize) -> Option<usize> {
    let index = start.checked_add(step as isize)?;
    usize::try_from(index).ok().filter(|&index| index < limit)
}

/// `value` over `under` with opacity `alpha`; exact copies at opacity 0 and 1.
fn over(under: f32, value: f32, alpha: f32) -> f32 {
    if alpha >= 1.0 {
        value
    } else if alpha <= 0.0 {
        under
    } else {
        ((1.0 - alpha) * under + alpha * value).clamp(0.0, 1.0)
    }
}

impl BackdoorAttack for BadNets {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Copies `image` and stamps the patch; values outside the patch are copied exactly.
    /// If `out`, `image` and `shape` disagree in size (a caller bug), `out` is left unchanged.
    fn apply_trigger(&self, image: &[f32], shape: ImageShape, _sample: usize, out: &mut [f32]) {
        if !fits(image, shape, out) {
            return;
        }
        out.copy_from_slice(image);
        self.stamp(shape, out);
    }
}

/// An [`AttackError::InvalidConfig`] of BadNets.
fn invalid(reason: String) -> AttackError {
    AttackError::InvalidConfig {
        attack: NAME.to_string(),
        reason,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A test image whose values are all distinct and inside (0, 1).
    fn ramp(shape: ImageShape) -> Vec<f32> {
        let n = shape.num_values();
        (0..n).map(|i| (i as f32 + 0.5) / n as f32).collect()
    }

    /// Applies `attack` to a ramp image of `shape`.
    fn triggered(attack: &BadNets, shape: ImageShape) -> (Vec<f32>, Vec<f32>) {
        let image = ramp(shape);
        let mut out = vec![f32::NAN; image.len()];
        attack.apply_trigger(&image, shape, 0, &mut out);
        (image, out)
    }

    /// Whether (row, col) lies in the rectangle rows `r0..r0+h`, cols `c0..c0+w`.
    fn in_rect(row: usize, col: usize, (r0, c0, h, w): (usize, usize, usize, usize)) -> bool {
        (r0..r0 + h).contains(&row) && (c0..c0 + w).contains(&col)
    }

    /// Checks: inside `rect` every channel equals `expected(row, col)`, outside it the output
    /// is bit-identical to the input.
    fn assert_stamped(
        shape: ImageShape,
        image: &[f32],
        out: &[f32],
        rect: (usize, usize, usize, usize),
        expected: impl Fn(usize, usize) -> f32,
    ) {
        for channel in 0..shape.channels {
            for row in 0..shape.height {
                for col in 0..shape.width {
                    let i = (channel * shape.height + row) * shape.width + col;
                    if in_rect(row, col, rect) {
                        assert_eq!(out[i], expected(row - rect.0, col - rect.1), "{row},{col}");
                    } else {
                        assert_eq!(out[i].to_bits(), image[i].to_bits(), "{row},{col}");
                    }
                }
            }
        }
    }

    #[test]
    fn default_is_a_white_3x3_square_bottom_right_and_nothing_else_changes() {
        for channels in [1, 3] {
            let shape = ImageShape::new(channels, 8, 8);
            let (image, out) = triggered(&BadNets::default(), shape);
            assert_stamped(shape, &image, &out, (5, 5, 3, 3), |_, _| 1.0);
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
            BadNets::default().check_fits(shape).unwrap();
        }
    }

    #[test]
    fn checkerboard_at_each_corner() {
        let shape = ImageShape::new(3, 8, 8);
        let cases = [
            (PatchPosition::TopLeft { margin: 1 }, (1, 1)),
            (PatchPosition::TopRight { margin: 0 }, (0, 4)),
            (PatchPosition::BottomLeft { margin: 2 }, (2, 2)),
            (PatchPosition::BottomRight { margin: 1 }, (3, 3)),
            (PatchPosition::At { row: 2, col: 3 }, (2, 3)),
        ];
        for (position, (row, col)) in cases {
            let attack = BadNets::square(PatchPattern::Checkerboard, 4, position).unwrap();
            let (image, out) = triggered(&attack, shape);
            let cell = |r: usize, c: usize| if (r + c).is_multiple_of(2) { 1.0 } else { 0.0 };
            assert_stamped(shape, &image, &out, (row, col, 4, 4), cell);
        }
    }

    #[test]
    fn a_patch_partly_outside_is_clipped_without_panicking_and_check_fits_reports_it() {
        let shape = ImageShape::new(1, 8, 8);
        let attack = BadNets::square(
            PatchPattern::WhiteSquare,
            3,
            PatchPosition::At { row: 6, col: 7 },
        )
        .unwrap();
        let (image, out) = triggered(&attack, shape);
        assert_stamped(shape, &image, &out, (6, 7, 2, 1), |_, _| 1.0);
        assert!(matches!(
            attack.check_fits(shape),
            Err(AttackError::InvalidConfig { .. })
        ));
        let huge =
            BadNets::square(PatchPattern::WhiteSquare, 10, PatchPosition::default()).unwrap();
        let (_, out) = triggered(&huge, shape);
        assert!(out.iter().all(|&v| v == 1.0));
        assert!(huge.check_fits(shape).is_err());
    }

    #[test]
    fn partial_opacity_blends_and_zero_opacity_keeps() {
        let shape = ImageShape::new(1, 2, 2);
        let patch = Patch::new(ImageShape::new(1, 1, 2), vec![1.0, 1.0], vec![0.5, 0.0]).unwrap();
        let attack = BadNets::new(patch, PatchPosition::TopLeft { margin: 0 });
        let image = [0.2, 0.4, 0.6, 0.8];
        let mut out = [0.0; 4];
        attack.apply_trigger(&image, shape, 0, &mut out);
        assert_eq!(out, [0.5 * 0.2 + 0.5, 0.4, 0.6, 0.8]);
    }

    #[test]
    fn patch_new_validates() {
        let shape = ImageShape::new(1, 1, 2);
        assert!(Patch::new(shape, vec![0.0], vec![1.0, 1.0]).is_err());
        assert!(Patch::new(shape, vec![0.0, 1.5], vec![1.0, 1.0]).is_err());
        assert!(Patch::new(shape, vec![0.0, 1.0], vec![1.0, f32::NAN]).is_err());
        assert!(Patch::square(PatchPattern::WhiteSquare, 0).is_err());
    }

    #[test]
    fn channel_mismatch_is_reported() {
        let patch = Patch::new(ImageShape::new(3, 1, 1), vec![1.0; 3], vec![1.0; 3]).unwrap();
        let attack = BadNets::new(patch, PatchPosition::default());
        assert!(attack.check_fits(ImageShape::new(1, 4, 4)).is_err());
        assert!(attack.check_fits(ImageShape::new(3, 4, 4)).is_ok());
    }

    /// PNG bytes of an RGBA image given row by row.
    pub(crate) fn png_bytes(width: u32, height: u32, rgba: &[[u8; 4]]) -> Vec<u8> {
        let raw: Vec<u8> = rgba.iter().flatten().copied().collect();
        let img = image::RgbaImage::from_raw(width, height, raw).unwrap();
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
        bytes
    }

    #[test]
    fn png_patch_converts_channels_and_reads_alpha() {
        // 2x1: an opaque red pixel and a half-transparent white one.
        let bytes = png_bytes(2, 1, &[[255, 0, 0, 255], [255, 255, 255, 128]]);
        let origin = Path::new("red.png");
        let rgb = Patch::from_png_bytes(&bytes, 3, None, PatchMask::AlphaChannel, origin).unwrap();
        assert_eq!(rgb.shape(), ImageShape::new(3, 1, 2));
        assert_eq!(rgb.values(), &[1.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
        let half = 128.0 / 255.0;
        assert_eq!(rgb.alpha(), &[1.0, half, 1.0, half, 1.0, half]);
        let gray = Patch::from_png_bytes(&bytes, 1, None, PatchMask::AlphaChannel, origin).unwrap();
        // PIL: L = (19595 * 255 + 2^15) >> 16 = 76 for pure red.
        assert_eq!(gray.values(), &[76.0 / 255.0, 1.0]);
        let masked =
            Patch::from_png_bytes(&bytes, 3, None, PatchMask::NonZeroValues, origin).unwrap();
        assert_eq!(masked.alpha(), &[1.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn png_patch_is_resized_nearest_neighbour() {
        let bytes = png_bytes(
            2,
            2,
            &[
                [0, 0, 0, 255],
                [255, 255, 255, 255],
                [255, 255, 255, 255],
                [0, 0, 0, 255],
            ],
        );
        let patch = Patch::from_png_bytes(
            &bytes,
            1,
            Some((4, 4)),
            PatchMask::AlphaChannel,
            Path::new("p.png"),
        )
        .unwrap();
        #[rustfmt::skip]
        let expected = [
            0.0, 0.0, 1.0, 1.0,
            0.0, 0.0, 1.0, 1.0,
            1.0, 1.0, 0.0, 0.0,
            1.0, 1.0, 0.0, 0.0,
        ];
        assert_eq!(patch.values(), &expected);
    }

    #[test]
    fn bad_images_give_typed_errors() {
        let origin = Path::new("junk.png");
        let junk = Patch::from_png_bytes(b"not an image", 3, None, PatchMask::AlphaChannel, origin);
        assert!(matches!(junk, Err(AttackError::Pattern { .. })));
        let bytes = png_bytes(1, 1, &[[1, 2, 3, 255]]);
        let zero = Patch::from_png_bytes(&bytes, 3, Some((0, 3)), PatchMask::AlphaChannel, origin);
        assert!(matches!(zero, Err(AttackError::Pattern { .. })));
        let two = Patch::from_png_bytes(&bytes, 2, None, PatchMask::AlphaChannel, origin);
        assert!(matches!(two, Err(AttackError::InvalidConfig { .. })));
        let truncated =
            Patch::from_png_bytes(&bytes[..20], 3, None, PatchMask::AlphaChannel, origin);
        assert!(matches!(truncated, Err(AttackError::Pattern { .. })));
    }

    #[test]
    fn backdoorbench_trigger_image_reproduces_the_default() {
        // BackdoorBench's generate_white_square.py at 8x8: black, 3x3 white bottom-right.
        let pixels: Vec<[u8; 4]> = (0..64)
            .map(|i| {
                let (row, col) = (i / 8, i % 8);
                if row >= 5 && col >= 5 {
                    [255, 255, 255, 255]
                } else {
                    [0, 0, 0, 255]
                }
            })
            .collect();
        let bytes = png_bytes(8, 8, &pixels);
        let shape = ImageShape::new(3, 8, 8);
        let attack =
            BadNets::from_backdoorbench_trigger_png(&bytes, shape, Path::new("trigger.png"))
                .unwrap();
        attack.check_fits(shape).unwrap();
        let (_, from_png) = triggered(&attack, shape);
        let (_, default) = triggered(&BadNets::default(), shape);
        assert_eq!(from_png, default);
    }

    #[test]
    fn trigger_is_deterministic() {
        let shape = ImageShape::new(3, 8, 8);
        let attack =
            BadNets::square(PatchPattern::Checkerboard, 3, PatchPosition::default()).unwrap();
        assert_eq!(triggered(&attack, shape), triggered(&attack, shape));
    }
}
