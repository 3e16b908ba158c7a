//! Image grids as PNG, to look at triggers: e.g. a row of clean images, a row of their
//! triggered versions and a row of [`amplified_difference`]s that make invisible triggers
//! (WaNet, low-amplitude blends) visible.

use std::io::Cursor;

use crate::data::ImageShape;

/// Pixels between neighbouring images and around the grid.
pub const GAP: u32 = 2;

/// Gray level of the gaps and of empty cells (rows shorter than the longest).
const BACKGROUND: u8 = 255;

/// Largest accepted grid width or height, in pixels.
pub const MAX_GRID_SIDE: u32 = 16_384;

/// Errors of building an image grid.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// The images cannot be drawn as asked.
    #[error("cannot draw image grid: {0}")]
    Invalid(String),
    /// PNG encoding failed.
    #[error("cannot encode image grid as PNG: {0}")]
    Encode(#[from] image::ImageError),
}

/// Encodes `rows` of images (each `C x H x W` of `shape`, values in `[0, 1]`, clamped; NaN
/// drawn black) as an RGB PNG: images side by side, rows top to bottom, [`GAP`] white pixels
/// between and around them, each image enlarged `scale` times by pixel repetition
/// (nearest-neighbour). 1-channel images are drawn gray, 3-channel ones in colour. Rows may
/// differ in length; missing cells stay white.
///
/// Fails with [`GridError::Invalid`] if there is nothing to draw, `scale` is 0, the channels
/// are not 1 or 3, an image is not `shape.num_values()` long, or the grid would exceed
/// [`MAX_GRID_SIDE`] pixels a side.
pub fn image_grid_png(
    rows: &[Vec<&[f32]>],
    shape: ImageShape,
    scale: u32,
) -> Result<Vec<u8>, GridError> {
    check_inputs(rows, shape, scale)?;
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let cell_width = side(shape.width, scale)?;
    let cell_height = side(shape.height, scale)?;
    let width = grid_side(columns, cell_width)?;
    let height = grid_side(rows.len(), cell_height)?;
    let mut canvas = image::RgbImage::from_pixel(width, height, image::Rgb([BACKGROUND; 3]));
    for (row_index, row) in rows.iter().enumerate() {
        for (col_index, picture) in row.iter().enumerate() {
            let left = GAP + col_index as u32 * (cell_width + GAP);
            let top = GAP + row_index as u32 * (cell_height + GAP);
            draw(&mut canvas, picture, shape, scale, (left, top));
        }
    }
    let mut bytes = Vec::new();
    canvas.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    Ok(bytes)
}

/// `|triggered - clean|` divided by its largest value, so the strongest change shows as 1
/// (all zeros if the images are equal). Both must have the same length; extra values of the
/// longer one are ignored.
pub fn amplified_difference(clean: &[f32], triggered: &[f32]) -> Vec<f32> {
    let difference: Vec<f32> = clean
        .iter()
        .zip(triggered)
        .map(|(c, t)| (t - c).abs())
        .map(|d| if d.is_nan() { 0.0 } else { d })
        .collect();
    let largest = difference.iter().copied().fold(0.0f32, f32::max);
    if largest > 0.0 {
        difference.into_iter().map(|d| d / largest).collect()
    } else {
        difference
    }
}

/// Checks everything [`image_grid_png`] documents as an error, except sizes.
fn check_inputs(rows: &[Vec<&[f32]>], shape: ImageShape, scale: u32) -> Result<(), GridError> {
    let invalid = |reason: String| Err(GridError::Invalid(reason));
    if rows.iter().all(Vec::is_empty) {
        return invalid("no images".to_string());
    }
    if scale == 0 {
        return invalid("scale must be at least 1".to_string());
    }
    if shape.channels != 1 && shape.channels != 3 {
        return invalid(format!("{} channels (1 or 3 supported)", shape.channels));
    }
    if shape.num_values() == 0 {
        return invalid(format!("image shape {shape} is empty"));
    }
    for (row_index, row) in rows.iter().enumerate() {
        for (col_index, picture) in row.iter().enumerate() {
            if picture.len() != shape.num_values() {
                return invalid(format!(
                    "image ({row_index}, {col_index}) has {} values, not {shape}",
                    picture.len()
                ));
            }
        }
    }
    Ok(())
}

/// `pixels * scale` as a `u32` within [`MAX_GRID_SIDE`].
fn side(pixels: usize, scale: u32) -> Result<u32, GridError> {
    u32::try_from(pixels)
        .ok()
        .and_then(|pixels| pixels.checked_mul(scale))
        .filter(|&side| side <= MAX_GRID_SIDE)
        .ok_or_else(|| GridError::Invalid(format!("{pixels} pixels x scale {scale} is too large")))
}

/// Width (or height) of `cells` cells of `cell` pixels with gaps between and around them.
fn grid_side(cells: usize, cell: u32) -> Result<u32, GridError> {
    u32::try_from(cells)
        .ok()
        .and_then(|cells| cells.checked_mul(cell + GAP))
        .and_then(|inner| inner.checked_add(GAP))
        .filter(|&side| side <= MAX_GRID_SIDE)
        .ok_or_else(|| GridError::Invalid(format!("{cells} cells of {cell} pixels is too large")))
}

/// Draws one image with its top-left corner at `(left, top)`.
fn draw(
    canvas: &mut image::RgbImage,
    picture: &[f32],
    shape: ImageShape,
    scale: u32,
    (left, top): (u32, u32),
) {
    let plane = shape.plane_len();
    for row in 0..shape.height {
        for col in 0..shape.width {
            let at = row * shape.width + col;
            let channel = |c: usize| to_byte(picture[(c % shape.channels) * plane + at]);
            let colour = image::Rgb([channel(0), channel(1), channel(2)]);
            for dy in 0..scale {
                for dx in 0..scale {
                    let x = left + col as u32 * scale + dx;
                    let y = top + row as u32 * scale + dy;
                    canvas.put_pixel(x, y, colour);
                }
            }
        }
    }
}

/// A `[0, 1]` value as an 8-bit level, rounded; out-of-range values clamped, NaN black.
fn to_byte(value: f32) -> u8 {
    if value.is_nan() {
        0
    } else {
        (value.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes PNG bytes into an RGB image.
    fn decode(bytes: &[u8]) -> image::RgbImage {
        image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8()
    }

    #[test]
    fn grid_has_the_expected_size_and_pixels() {
        let shape = ImageShape::new(1, 8, 8);
        let black = vec![0.0; 64];
        let white = vec![1.0; 64];
        let rows = vec![
            vec![black.as_slice(), white.as_slice(), black.as_slice()],
            vec![white.as_slice(), black.as_slice(), white.as_slice()],
            vec![black.as_slice()],
        ];
        let decoded = decode(&image_grid_png(&rows, shape, 3).unwrap());
        // 3 columns of 24 px + 4 gaps of 2; 3 rows likewise.
        assert_eq!(decoded.dimensions(), (3 * 24 + 4 * 2, 3 * 24 + 4 * 2));
        assert_eq!(decoded.get_pixel(0, 0).0, [255; 3], "gap");
        assert_eq!(decoded.get_pixel(2, 2).0, [0; 3], "first image");
        assert_eq!(decoded.get_pixel(2 + 24 + 2, 2).0, [255; 3], "second image");
        assert_eq!(decoded.get_pixel(2 + 23, 2 + 23).0, [0; 3], "scaled corner");
        // Row 3 has one image; its other cells are background.
        assert_eq!(decoded.get_pixel(30, 2 * 26 + 2).0, [255; 3]);
    }

    #[test]
    fn colour_images_keep_their_channels() {
        let shape = ImageShape::new(3, 1, 1);
        let red = [1.0, 0.0, 0.0];
        let decoded = decode(&image_grid_png(&[vec![&red[..]]], shape, 1).unwrap());
        assert_eq!(decoded.dimensions(), (5, 5));
        assert_eq!(decoded.get_pixel(2, 2).0, [255, 0, 0]);
    }

    #[test]
    fn clean_triggered_difference_rows() {
        let shape = ImageShape::new(1, 4, 4);
        let clean = vec![0.5; 16];
        let mut triggered = clean.clone();
        triggered[5] = 0.51;
        let difference = amplified_difference(&clean, &triggered);
        assert_eq!(difference[5], 1.0);
        assert_eq!(difference.iter().filter(|&&d| d == 0.0).count(), 15);
        let rows = vec![
            vec![&clean[..]],
            vec![&triggered[..]],
            vec![&difference[..]],
        ];
        let decoded = decode(&image_grid_png(&rows, shape, 2).unwrap());
        assert_eq!(decoded.dimensions(), (2 + 8 + 2, 4 * 2 + 3 * 8));
        assert_eq!(amplified_difference(&clean, &clean), vec![0.0; 16]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let shape = ImageShape::new(1, 2, 2);
        let image = [0.0; 4];
        let short = [0.0; 3];
        assert!(image_grid_png(&[], shape, 1).is_err());
        assert!(image_grid_png(&[vec![&image[..]]], shape, 0).is_err());
        assert!(image_grid_png(&[vec![&short[..]]], shape, 1).is_err());
        let two_channels = ImageShape::new(2, 1, 2);
        assert!(image_grid_png(&[vec![&image[..]]], two_channels, 1).is_err());
        let huge = image_grid_png(&[vec![&image[..]]], shape, u32::MAX);
        assert!(matches!(huge, Err(GridError::Invalid(_))));
    }
}
