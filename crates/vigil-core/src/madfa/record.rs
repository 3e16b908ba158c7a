//! A chain's random draws on disk, so that another implementation of the sampler can replay the
//! chain step for step (`vigil sample --record-steps DIR`; `bench/peer/madfa_replay.py`).
//!
//! The folder holds, per step `s` (0-based), `step-{s:05}.npz` with
//! - `indices` i64 `[batch]`: the minibatch, as indices into the sampling set (task.npz's
//!   `sampling_images`), in batch order;
//! - `noise` f32 `[floats]`: the standard-normal draws `N` of every updated parameter, before the
//!   scaling (the step adds `sqrt(lr) sqrt(G) N`), concatenated in update order;
//!
//! and `manifest.json`: the chain, its settings, the first step recorded, and the parameters in
//! update order (checkpoint path and size). The draws are flat in vigil's layout: Linear weights
//! are `[in, out]`, the transpose of PyTorch's `[out, in]`; other tensors share PyTorch's.
//! Nothing else is random: the chain starts at w* (the model) with the RMSprop average `V = 0`.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use ndarray::Array1;
use ndarray_npy::NpzWriter;

use super::MadError;
use super::chain::{ChainConfig, StepDraws};
use super::traces::TraceFileError;
use crate::io::{write_atomic, write_json_atomic};

/// Writes one chain's [`StepDraws`] into a folder.
#[derive(Debug, Clone)]
pub struct StepRecorder {
    dir: PathBuf,
    chain: usize,
    config: ChainConfig,
    manifest_written: bool,
}

impl StepRecorder {
    /// A recorder of chain `chain` (run with `config`) into `dir`.
    pub fn new(dir: &Path, chain: usize, config: &ChainConfig) -> Self {
        Self {
            dir: dir.to_path_buf(),
            chain,
            config: config.clone(),
            manifest_written: false,
        }
    }

    /// The chain it records.
    pub fn chain(&self) -> usize {
        self.chain
    }

    /// Writes one step's file (and the manifest, with the first step).
    pub fn write(&mut self, draws: &StepDraws<'_>) -> Result<(), MadError> {
        if !self.manifest_written {
            let params: Vec<_> = draws
                .noise
                .iter()
                .map(|(path, n)| serde_json::json!({ "path": path, "numel": n.len() }))
                .collect();
            let manifest = serde_json::json!({
                "chain": self.chain,
                "first_step": draws.step,
                "steps": self.config.total_steps(),
                "config": self.config,
                "noise": "standard normal N, before scaling: the step adds sqrt(lr) sqrt(G) N",
                "layout": "vigil's: Linear weights [in, out] (PyTorch's transposed)",
                "params": params,
            });
            write_json_atomic(&self.dir.join("manifest.json"), &manifest)?;
            self.manifest_written = true;
        }
        let encode = |e: ndarray_npy::WriteNpzError| TraceFileError::Encode(e.to_string());
        let indices: Array1<i64> = draws.indices.iter().map(|&i| i as i64).collect();
        let noise: Array1<f32> = draws
            .noise
            .iter()
            .flat_map(|(_, n)| n.iter().copied())
            .collect();
        let mut buffer = Cursor::new(Vec::new());
        let mut npz = NpzWriter::new(&mut buffer);
        npz.add_array("indices", &indices).map_err(encode)?;
        npz.add_array("noise", &noise).map_err(encode)?;
        npz.finish().map_err(encode)?;
        let path = self.dir.join(format!("step-{:05}.npz", draws.step));
        write_atomic(&path, buffer.get_ref())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray_npy::NpzReader;

    #[test]
    fn writes_the_manifest_and_one_archive_per_step() {
        let dir = crate::train::test_util::scratch("record", "steps");
        let mut recorder = StepRecorder::new(&dir, 0, &ChainConfig::reference());
        let noise = vec![
            ("conv1.weight".to_string(), vec![0.5f32, -1.0]),
            ("conv1.bias".to_string(), vec![2.0f32]),
        ];
        for step in [3, 4] {
            let indices = [7usize, step];
            let draws = StepDraws {
                step,
                indices: &indices,
                noise: &noise,
            };
            recorder.write(&draws).unwrap();
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["first_step"], 3);
        assert_eq!(manifest["params"][1]["path"], "conv1.bias");
        assert_eq!(manifest["params"][0]["numel"], 2);
        let file = std::fs::File::open(dir.join("step-00004.npz")).unwrap();
        let mut npz = NpzReader::new(file).unwrap();
        let indices: Array1<i64> = npz.by_name("indices").unwrap();
        let noise: Array1<f32> = npz.by_name("noise").unwrap();
        assert_eq!(indices.to_vec(), vec![7, 4]);
        assert_eq!(noise.to_vec(), vec![0.5, -1.0, 2.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
