//! The optional exponential moving average of the weights (HALO's `train_wa.py`, `docs/halo.md`,
//! "Weight average"): after a warm-up the average follows the live weights with decay
//! `min(0.995, (1 + n) / (10 + n))`, `n` steps past the warm-up; during the warm-up it is a plain
//! copy. BatchNorm's running statistics are not averaged: they are copied from the live model.
//!
//! `RobustStep` keeps one when `HaloConfig::weight_average` is set: the run then evaluates,
//! validates and keeps the averaged weights.

use std::path::Path;

use burn::tensor::Device;

use super::HaloError;
use crate::checkpoint::{self, TensorFile};
use crate::models::Classifier;

/// The decay of step `step` (0-based) with `warmup_steps` warm-up steps: 0 (a copy) before the
/// warm-up ends, then `min(max_decay, (1 + n) / (10 + n))` with `n = step - warmup_steps`.
pub fn ema_decay(step: usize, warmup_steps: usize, max_decay: f64) -> f64 {
    if step < warmup_steps {
        return 0.0;
    }
    let n = (step - warmup_steps) as f64;
    max_decay.min((1.0 + n) / (10.0 + n))
}

/// Metadata key of the step a saved average belongs to.
const STEP_KEY: &str = "step";

/// Whether a checkpoint tensor is a BatchNorm running statistic (copied, not averaged).
fn is_running_statistic(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}

/// The averaged weights, by checkpoint name.
#[derive(Debug, Clone)]
pub struct WeightAverage {
    /// Largest decay (0.995 in the reference).
    pub max_decay: f64,
    /// Steps copied before averaging starts (2.5% of all steps in the reference).
    pub warmup_steps: usize,
    tensors: Option<TensorFile>,
}

fn tensors_of(model: &Classifier) -> Result<TensorFile, HaloError> {
    checkpoint::classifier_tensors(model).map_err(|e| HaloError::InvalidConfig(e.to_string()))
}

impl WeightAverage {
    /// An empty average with the reference's decay cap.
    pub fn new(warmup_steps: usize) -> Self {
        Self {
            max_decay: 0.995,
            warmup_steps,
            tensors: None,
        }
    }

    /// Folds the live weights after optimiser step `step` (0-based) into the average.
    pub fn update(&mut self, live: &Classifier, step: usize) -> Result<(), HaloError> {
        let current = tensors_of(live)?;
        let decay = ema_decay(step, self.warmup_steps, self.max_decay) as f32;
        match &mut self.tensors {
            None => self.tensors = Some(current),
            Some(average) => {
                for ((name, _, avg), (_, _, now)) in
                    average.tensors.iter_mut().zip(&current.tensors)
                {
                    if is_running_statistic(name) || decay == 0.0 {
                        avg.copy_from_slice(now);
                    } else {
                        for (a, v) in avg.iter_mut().zip(now) {
                            *a = decay * *a + (1.0 - decay) * v;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether any weights were folded in yet.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_none()
    }

    /// Writes the average for a resume at optimiser step `step` (nothing before the first
    /// update).
    pub fn save(&self, path: &Path, step: usize) -> Result<(), HaloError> {
        let Some(tensors) = &self.tensors else {
            return Ok(());
        };
        let mut file = tensors.clone();
        file.metadata.insert(STEP_KEY.into(), step.to_string());
        file.save(path).map_err(|e| HaloError::AverageFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Reads what [`WeightAverage::save`] wrote at step `step`; an average that had no update
    /// yet (no file, `step` 0) starts empty.
    pub fn load(path: &Path, warmup_steps: usize, step: usize) -> Result<Self, HaloError> {
        let mut average = Self::new(warmup_steps);
        if step == 0 && !path.exists() {
            return Ok(average);
        }
        let fail = |reason: String| HaloError::AverageFile {
            path: path.to_path_buf(),
            reason,
        };
        let file = TensorFile::load(path).map_err(|e| fail(e.to_string()))?;
        let saved = file
            .metadata
            .get(STEP_KEY)
            .and_then(|s| s.parse::<usize>().ok());
        if saved != Some(step) {
            return Err(fail(format!(
                "written at step {saved:?}, the run is at step {step}: the run folder is inconsistent"
            )));
        }
        average.tensors = Some(file);
        Ok(average)
    }

    /// The averaged model, with the live model's BatchNorm statistics, on `device`.
    pub fn model(&self, live: &Classifier, device: &Device) -> Result<Classifier, HaloError> {
        let Some(average) = &self.tensors else {
            return Err(HaloError::InvalidConfig(
                "the weight average has no update yet".into(),
            ));
        };
        let mut file = average.clone();
        let current = tensors_of(live)?;
        for ((name, _, avg), (_, _, now)) in file.tensors.iter_mut().zip(&current.tensors) {
            if is_running_statistic(name) {
                avg.copy_from_slice(now);
            }
        }
        file.metadata = current.metadata;
        file.metadata.remove(STEP_KEY);
        checkpoint::load_with_spec_bytes(
            Path::new("weight average"),
            file.to_bytes(),
            live.spec.clone(),
            device,
        )
        .map_err(|e| HaloError::InvalidConfig(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::test_data::tiny_cnn_spec;
    use crate::device::default_device;
    use rand::SeedableRng;

    #[test]
    fn decay_is_a_copy_during_warm_up_then_rises_to_its_cap() {
        assert_eq!(ema_decay(0, 10, 0.995), 0.0);
        assert_eq!(ema_decay(9, 10, 0.995), 0.0);
        assert!((ema_decay(10, 10, 0.995) - 0.1).abs() < 1e-12);
        assert!((ema_decay(11, 10, 0.995) - 2.0 / 11.0).abs() < 1e-12);
        assert!((ema_decay(1010, 10, 0.995) - 1001.0 / 1010.0).abs() < 1e-12);
        assert_eq!(ema_decay(100_000, 10, 0.995), 0.995);
    }

    #[test]
    fn the_average_mixes_weights_by_the_decay() {
        let device = default_device();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let a = crate::models::test_util::host_seeded(tiny_cnn_spec(), &mut rng, &device);
        let b = crate::models::test_util::host_seeded(tiny_cnn_spec(), &mut rng, &device);
        let mut average = WeightAverage::new(1);
        assert!(average.model(&a, &device).is_err());
        average.update(&a, 0).unwrap(); // warm-up: a copy of a
        average.update(&b, 5).unwrap(); // decay min(0.995, 5 / 14)
        let d = (5.0f64 / 14.0) as f32;
        let got = tensors_of(&average.model(&b, &device).unwrap()).unwrap();
        let (ta, tb) = (tensors_of(&a).unwrap(), tensors_of(&b).unwrap());
        for ((name, _, g), ((_, _, x), (_, _, y))) in
            got.tensors.iter().zip(ta.tensors.iter().zip(&tb.tensors))
        {
            for ((g, x), y) in g.iter().zip(x).zip(y) {
                let want = d * x + (1.0 - d) * y;
                assert!((g - want).abs() < 1e-6, "{name}: {g} vs {want}");
            }
        }
    }

    #[test]
    fn a_saved_average_loads_back_at_its_step_only() {
        let device = default_device();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let a = crate::models::test_util::host_seeded(tiny_cnn_spec(), &mut rng, &device);
        let dir = crate::train::test_util::scratch("average", "save-load");
        let path = dir.join("average.safetensors");
        let empty = WeightAverage::load(&path, 3, 0).unwrap();
        assert!(empty.is_empty());
        let mut average = WeightAverage::new(3);
        average.update(&a, 0).unwrap();
        average.save(&path, 1).unwrap();
        let back = WeightAverage::load(&path, 3, 1).unwrap();
        let (x, y) = (
            tensors_of(&average.model(&a, &device).unwrap()).unwrap(),
            tensors_of(&back.model(&a, &device).unwrap()).unwrap(),
        );
        assert_eq!(x.tensors, y.tensors);
        assert!(matches!(
            WeightAverage::load(&path, 3, 2),
            Err(HaloError::AverageFile { .. })
        ));
    }
}
