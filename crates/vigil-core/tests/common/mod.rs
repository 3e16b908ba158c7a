//! Data shared by the integration tests.

use vigil_core::data::{ImageSet, ImageShape};

/// 3 classes of 8x8 images, class k brighter in row band k, with deterministic noise.
pub fn band_dataset(n: usize, salt: u64) -> ImageSet {
    let shape = ImageShape::new(1, 8, 8);
    let mut pixels = Vec::with_capacity(n * 64);
    let mut labels = Vec::with_capacity(n);
    let mut s = 0x9E37_79B9u64 ^ salt;
    for i in 0..n {
        let k = (i % 3) as u16;
        labels.push(k);
        for r in 0..8 {
            for _ in 0..8 {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let noise = (s >> 40) as f32 / (1u64 << 24) as f32 * 0.3;
                let band = if r / 3 == k as usize { 0.6 } else { 0.0 };
                pixels.push(band + noise);
            }
        }
    }
    let names = vec!["a".into(), "b".into(), "c".into()];
    ImageSet::new(pixels, labels, shape, names, "synthetic").unwrap()
}
