//! Attacks on inputs and training data: backdoor poisoning ([`backdoor`]), a whole backdoor
//! experiment as one call ([`experiment`]), records summarised for a table ([`summary`]),
//! projected-gradient input attacks ([`pgd`]) and the records of their adversarial test sets
//! ([`adversarial`]).

pub mod adversarial;
pub mod backdoor;
pub mod experiment;
pub mod pgd;
pub mod summary;

/// Tiny data and models the attack tests share.
#[cfg(test)]
pub(crate) mod test_data {
    use crate::data::{ImageSet, ImageShape};
    use crate::models::{Architecture, ModelSpec};

    /// `n` images of 1x8x8 in two classes `a`, `b` (labels alternate 0, 1); value number `i`
    /// over the whole set is `pixel(i)`.
    pub(crate) fn two_class_8x8(n: usize, pixel: impl Fn(usize) -> f32) -> ImageSet {
        let pixels = (0..n * 64).map(pixel).collect();
        let labels = (0..n).map(|i| (i % 2) as u16).collect();
        ImageSet::new(
            pixels,
            labels,
            ImageShape::new(1, 8, 8),
            vec!["a".into(), "b".into()],
            "t",
        )
        .unwrap()
    }

    /// A small CNN (width 4, hidden 8) for those images.
    pub(crate) fn tiny_cnn_spec() -> ModelSpec {
        ModelSpec {
            architecture: Architecture::SmallCnn {
                width: 4,
                hidden: 8,
            },
            input_shape: [1, 8, 8],
            class_names: vec!["a".into(), "b".into()],
            normalization: None,
        }
    }
}
