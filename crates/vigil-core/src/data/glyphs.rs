//! Letters rendered from font files into small grayscale images: outlier and out-of-distribution
//! data that needs no download (the fonts come from Debian packages).
//!
//! Each image is one character of one font, drawn white on black like Fashion-MNIST's objects,
//! its longer side scaled to a seeded fraction of the image (MNIST fits digits in 20 of 28 pixels:
//! 0.71) and its box centred with a seeded offset. Two disjoint presets keep training outliers and
//! test OOD data apart, by font family and by letter ([`LetterSet`]).

use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontRef, PxScale, point};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::dataset::{ImageSet, ImageShape, Label};
use super::error::{DataError, Result};

/// Where Debian's font packages install TrueType and OpenType files.
pub const SYSTEM_FONT_DIR: &str = "/usr/share/fonts";

/// A font file's name and bytes.
#[derive(Debug, Clone)]
pub struct FontFile {
    /// File name without folder (e.g. `DejaVuSans-Bold.ttf`).
    pub name: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// How to draw the characters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GlyphStyle {
    /// Side of the square images, in pixels.
    pub side: usize,
    /// Range of the glyph box's longer side, as a fraction of `side`.
    pub box_fraction: (f64, f64),
    /// Largest offset of the box centre from the image centre, as a fraction of `side`.
    pub max_offset: f64,
    /// Images per (font, character), each with its own size and offset.
    pub variants: usize,
    /// Seed of the sizes and offsets.
    pub seed: u64,
}

impl GlyphStyle {
    /// 28x28 images, glyphs 0.55-0.8 of the side, offsets up to 0.08 of it, `variants` each.
    pub fn mnist_like(variants: usize, seed: u64) -> Self {
        Self {
            side: 28,
            box_fraction: (0.55, 0.8),
            max_offset: 0.08,
            variants,
            seed,
        }
    }
}

/// Renders every character of `chars` in every font of `fonts` (`style.variants` images each;
/// a font without a glyph for a character is skipped for it). Labels index `chars`; the class
/// names are the characters. Fails on a font that does not parse or when nothing is drawn.
pub fn render(
    fonts: &[FontFile],
    chars: &[char],
    style: &GlyphStyle,
    name: &str,
) -> Result<ImageSet> {
    let side = style.side;
    let invalid = |reason: String| DataError::Glyphs {
        set: name.to_string(),
        reason,
    };
    if side == 0 || style.variants == 0 || chars.is_empty() || fonts.is_empty() {
        return Err(invalid(
            "needs fonts, characters, a positive side and at least one variant".into(),
        ));
    }
    let (lo, hi) = style.box_fraction;
    let sizes_ok = 0.0 < lo && lo <= hi && hi <= 1.0;
    if !(sizes_ok && (0.0..0.5).contains(&style.max_offset)) {
        return Err(invalid(format!(
            "box fraction {lo}-{hi} must lie in (0, 1] and the offset {} in [0, 0.5)",
            style.max_offset
        )));
    }
    let mut pixels = Vec::new();
    let mut labels: Vec<Label> = Vec::new();
    let mut rng = StdRng::seed_from_u64(style.seed);
    for file in fonts {
        let font = FontRef::try_from_slice(&file.bytes)
            .map_err(|e| invalid(format!("font {}: {e}", file.name)))?;
        for (label, &c) in chars.iter().enumerate() {
            let id = font.glyph_id(c);
            if id.0 == 0 {
                continue;
            }
            // Measure at a reference size, then scale so the longer side fits the drawn box.
            let reference = 100.0f32;
            let Some(measured) =
                font.outline_glyph(id.with_scale_and_position(reference, point(0.0, 0.0)))
            else {
                continue;
            };
            let bounds = measured.px_bounds();
            let longer = bounds.width().max(bounds.height());
            if longer <= 0.0 {
                continue;
            }
            for _ in 0..style.variants {
                let fraction = rng.random_range(lo..=hi);
                let scale = reference * (fraction * side as f64) as f32 / longer;
                let glyph = id.with_scale_and_position(PxScale::from(scale), point(0.0, 0.0));
                let Some(outlined) = font.outline_glyph(glyph) else {
                    continue;
                };
                let b = outlined.px_bounds();
                let offset = style.max_offset * side as f64;
                let cx = side as f64 / 2.0 + rng.random_range(-offset..=offset);
                let cy = side as f64 / 2.0 + rng.random_range(-offset..=offset);
                let left = (cx - f64::from(b.width()) / 2.0).round() as i64;
                let top = (cy - f64::from(b.height()) / 2.0).round() as i64;
                let mut image = vec![0.0f32; side * side];
                outlined.draw(|x, y, coverage| {
                    let (px, py) = (left + i64::from(x), top + i64::from(y));
                    if (0..side as i64).contains(&px) && (0..side as i64).contains(&py) {
                        let v = &mut image[py as usize * side + px as usize];
                        *v = (*v + coverage).clamp(0.0, 1.0);
                    }
                });
                if image.iter().any(|&v| v > 0.0) {
                    pixels.extend_from_slice(&image);
                    labels.push(label as Label);
                }
            }
        }
    }
    if labels.is_empty() {
        return Err(invalid(
            "no character could be drawn in any of the fonts".into(),
        ));
    }
    let class_names = chars.iter().map(|c| c.to_string()).collect();
    ImageSet::new(
        pixels,
        labels,
        ImageShape::new(1, side, side),
        class_names,
        name,
    )
}

/// The `.ttf` and `.otf` files under `dir` (recursively) whose file names start with one of
/// `prefixes`, sorted by name so a glyph set does not depend on directory order.
pub fn font_files(dir: &Path, prefixes: &[&str]) -> Result<Vec<FontFile>> {
    let mut paths = Vec::new();
    collect(dir, &mut paths)?;
    let mut fonts = Vec::new();
    for path in paths {
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let lower = name.to_ascii_lowercase();
        if !(lower.ends_with(".ttf") || lower.ends_with(".otf")) {
            continue;
        }
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        fonts.push(FontFile { name, bytes });
    }
    fonts.sort_by(|a, b| a.name.cmp(&b.name));
    fonts.dedup_by(|a, b| a.name == b.name);
    Ok(fonts)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The two disjoint letter sets: training outliers and test OOD data differ in font family and
/// in letters, so a detector tested on the second has not seen its shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetterSet {
    /// Upper-case A-Z in DejaVu and Liberation fonts (Debian `fonts-dejavu-core`,
    /// `fonts-dejavu-extra`, `fonts-liberation2`): the outliers of outlier exposure.
    TrainingOutliers,
    /// Lower-case a-z in GNU FreeFont (Debian `fonts-freefont-ttf`): a test OOD set.
    TestOod,
}

impl LetterSet {
    /// File-name prefixes of the fonts.
    pub fn font_prefixes(self) -> &'static [&'static str] {
        match self {
            LetterSet::TrainingOutliers => &["DejaVu", "Liberation"],
            LetterSet::TestOod => &["Free"],
        }
    }

    /// The characters.
    pub fn chars(self) -> Vec<char> {
        match self {
            LetterSet::TrainingOutliers => ('A'..='Z').collect(),
            LetterSet::TestOod => ('a'..='z').collect(),
        }
    }

    /// The Debian packages that provide the fonts.
    pub fn packages(self) -> &'static str {
        match self {
            LetterSet::TrainingOutliers => "fonts-dejavu-core fonts-dejavu-extra fonts-liberation2",
            LetterSet::TestOod => "fonts-freefont-ttf",
        }
    }

    /// The set's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            LetterSet::TrainingOutliers => "letters-train",
            LetterSet::TestOod => "letters-test",
        }
    }

    /// Renders the set from the fonts under `font_dir` (usually [`SYSTEM_FONT_DIR`]) with
    /// `style`; says which packages to install when no font of the set is there.
    pub fn render(self, font_dir: &Path, style: &GlyphStyle) -> Result<ImageSet> {
        let fonts = font_files(font_dir, self.font_prefixes())?;
        if fonts.is_empty() {
            return Err(DataError::Glyphs {
                set: self.name().to_string(),
                reason: format!(
                    "no {} fonts under {}: install the Debian packages {} (scripts/setup-data.sh does)",
                    self.font_prefixes().join(" or "),
                    font_dir.display(),
                    self.packages()
                ),
            });
        }
        render(&fonts, &self.chars(), style, self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dejavu() -> Option<Vec<FontFile>> {
        let fonts = font_files(Path::new(SYSTEM_FONT_DIR), &["DejaVuSans."]).ok()?;
        (!fonts.is_empty()).then_some(fonts)
    }

    #[test]
    fn letters_are_drawn_centred_white_on_black_and_reproducibly() {
        let Some(fonts) = dejavu() else {
            eprintln!("skipped: no DejaVuSans.ttf under {SYSTEM_FONT_DIR}");
            return;
        };
        let style = GlyphStyle {
            max_offset: 0.0,
            box_fraction: (0.7, 0.7),
            ..GlyphStyle::mnist_like(2, 3)
        };
        let set = render(&fonts, &['A', 'o'], &style, "t").unwrap();
        assert_eq!(set.len(), 4);
        assert_eq!(set.class_names(), ["A", "o"]);
        for i in 0..set.len() {
            let image = set.image(i);
            assert!(image.iter().all(|v| (0.0..=1.0).contains(v)));
            // The glyph's box: longer side 0.7 * 28 = 19.6 px, centred.
            let rows: Vec<usize> = (0..28)
                .filter(|r| image[r * 28..(r + 1) * 28].iter().any(|&v| v > 0.0))
                .collect();
            let cols: Vec<usize> = (0..28)
                .filter(|c| (0..28).any(|r| image[r * 28 + c] > 0.0))
                .collect();
            let (h, w) = (rows.len(), cols.len());
            assert!((18..=22).contains(&h.max(w)), "box {h}x{w}");
            let centre = |v: &[usize]| (v[0] + v[v.len() - 1]) as f64 / 2.0;
            assert!((centre(&rows) - 13.5).abs() <= 1.5 && (centre(&cols) - 13.5).abs() <= 1.5);
            // Mostly background: a letter, not a filled square.
            let ink = image.iter().filter(|&&v| v > 0.5).count();
            assert!(ink > 20 && ink < 28 * 28 / 2, "ink {ink}");
        }
        let again = render(&fonts, &['A', 'o'], &style, "t").unwrap();
        assert_eq!(again.image(3), set.image(3));
    }

    #[test]
    fn bad_fonts_and_settings_are_errors() {
        let junk = [FontFile {
            name: "junk.ttf".into(),
            bytes: vec![0, 1, 2, 3],
        }];
        assert!(render(&junk, &['A'], &GlyphStyle::mnist_like(1, 0), "t").is_err());
        if let Some(fonts) = dejavu() {
            let bad = GlyphStyle {
                box_fraction: (0.9, 0.5),
                ..GlyphStyle::mnist_like(1, 0)
            };
            assert!(render(&fonts, &['A'], &bad, "t").is_err());
            assert!(render(&fonts, &[], &GlyphStyle::mnist_like(1, 0), "t").is_err());
        }
        let empty = std::env::temp_dir().join(format!("vigil-nofonts-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let err = LetterSet::TestOod
            .render(&empty, &GlyphStyle::mnist_like(1, 0))
            .unwrap_err();
        assert!(err.to_string().contains("fonts-freefont-ttf"), "{err}");
        std::fs::remove_dir_all(&empty).unwrap();
    }
}
