//! Loss traces and the trace file that carries them between vigil and Python.
//!
//! A trace file is a numpy `.npz` archive (vigil writes it uncompressed; it reads numpy's
//! `savez_compressed` output too) with
//! - `trusted` f32 `[chains, draws, n_trusted]`: per-sample losses of the trusted set;
//! - `test` f32 `[chains, draws, n_test]`: per-sample losses of the test set;
//! - `trusted_labels` i64 `[n_trusted]`: the labels the trusted losses were taken against (the
//!   model's predictions at w*), which group the trusted set into classes;
//! - optionally `test_is_anomalous` bool `[n_test]`: ground truth for evaluation only.
//!
//! vigil adds arrays of its own, all optional on reading: `chain_indices` i64 `[chains]` (which
//! chain each slice is, for merging), `trusted_ids` / `test_ids` i64 (indices of the samples in
//! their source sets), `test_labels` i64 (the test losses' labels) and `vigil_settings` u8 (the
//! settings that produced the file, as JSON text). A file with just the four pinned arrays,
//! such as one written by numpy, reads fine: numpy's default dtypes (float64 traces, int32 or
//! int64 labels) are converted exactly ([`crate::npy`]).
//!
//! Every file is checked on reading ([`LossTraces::validate`]): shapes that fit together,
//! finite losses (one NaN would make every score that touches its trace NaN), labels that are
//! class indices, non-negative ids and chain indices. Errors name the array and the position.

use std::io::{Cursor, Read, Seek, Write};
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array3, Axis, Ix1, Ix3, concatenate};
use ndarray_npy::NpzWriter;

use crate::io::{IoError, write_atomic};
use crate::npy::{NpyError, NpzReader};

/// Largest label accepted: vigil's class indices are `u16` (`ImageSet::labels`).
pub const MAX_LABEL: i64 = u16::MAX as i64;

/// A chain index as the trace file stores it (`chain_indices` is int64): refuses indices that
/// do not fit instead of wrapping them to negative numbers.
pub fn chain_index(chain: usize) -> Result<i64, TraceFileError> {
    i64::try_from(chain).map_err(|_| {
        TraceFileError::ChainIndex(format!(
            "chain index {chain} does not fit the trace file's int64 `chain_indices` (at most {})",
            i64::MAX
        ))
    })
}

/// Errors reading, writing or merging trace files; each names the file or the problem.
#[derive(Debug, thiserror::Error)]
pub enum TraceFileError {
    /// The archive or one of its arrays could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// File (or `<bytes>`).
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The arrays do not fit together.
    #[error("{path}: {reason}")]
    Inconsistent {
        /// File (or `<bytes>`).
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// Files that cannot be merged.
    #[error("cannot merge trace files: {0}")]
    Merge(String),
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Encoding the archive failed.
    #[error("cannot encode trace file: {0}")]
    Encode(String),
    /// A chain index that a trace file cannot store.
    #[error("{0}")]
    ChainIndex(String),
}

/// Per-sample loss traces of one run: trusted and test samples over draws and chains.
#[derive(Debug, Clone, PartialEq)]
pub struct LossTraces {
    /// `[chains, draws, n_trusted]`.
    pub trusted: Array3<f32>,
    /// `[chains, draws, n_test]`.
    pub test: Array3<f32>,
    /// Labels of the trusted losses (predictions at w*), `[n_trusted]`.
    pub trusted_labels: Vec<i64>,
    /// Which test samples are anomalous, if known (evaluation only).
    pub test_is_anomalous: Option<Vec<bool>>,
    /// Chain index of each slice along the first axis (`0..chains` if absent).
    pub chain_indices: Option<Vec<i64>>,
    /// Index of each trusted sample in its source set.
    pub trusted_ids: Option<Vec<i64>>,
    /// Index of each test sample in its source set.
    pub test_ids: Option<Vec<i64>>,
    /// Labels of the test losses.
    pub test_labels: Option<Vec<i64>>,
    /// The settings that produced the traces, as JSON text.
    pub settings_json: Option<String>,
}

impl LossTraces {
    /// Traces with the fields every trace file has; anomaly flags, ids, test labels and
    /// settings absent.
    pub fn new(trusted: Array3<f32>, test: Array3<f32>, trusted_labels: Vec<i64>) -> Self {
        Self {
            trusted,
            test,
            trusted_labels,
            test_is_anomalous: None,
            chain_indices: None,
            trusted_ids: None,
            test_ids: None,
            test_labels: None,
            settings_json: None,
        }
    }

    /// Number of chains.
    pub fn chains(&self) -> usize {
        self.trusted.shape()[0]
    }

    /// Number of draws per chain.
    pub fn draws(&self) -> usize {
        self.trusted.shape()[1]
    }

    /// Number of trusted samples.
    pub fn n_trusted(&self) -> usize {
        self.trusted.shape()[2]
    }

    /// Number of test samples.
    pub fn n_test(&self) -> usize {
        self.test.shape()[2]
    }

    /// The chain index of every slice (`0..chains` when the file does not say).
    pub fn chain_indices(&self) -> Vec<i64> {
        self.chain_indices
            .clone()
            .unwrap_or_else(|| (0..self.chains() as i64).collect())
    }

    /// The traces with only some draws of every chain: drop the first `skip` (burn-in), keep
    /// at most `count` of the rest, and of those every `every`-th. A chain's draws do not
    /// depend on how many come after them, so this is what a shorter or more thinned chain
    /// would have recorded: detection against chain length from one long run.
    pub fn select_draws(&self, skip: usize, count: Option<usize>, every: usize) -> LossTraces {
        let start = skip.min(self.draws());
        let end = count.map_or(self.draws(), |c| start.saturating_add(c).min(self.draws()));
        let pick = ndarray::s![.., start..end;every.max(1), ..];
        LossTraces {
            trusted: self.trusted.slice(pick).to_owned(),
            test: self.test.slice(pick).to_owned(),
            ..self.clone()
        }
    }

    /// Checks that every array has the shape the others imply; `path` names the source.
    pub fn validate(&self, path: &Path) -> Result<(), TraceFileError> {
        let bad = |reason: String| {
            Err(TraceFileError::Inconsistent {
                path: path.to_path_buf(),
                reason,
            })
        };
        let (t, s) = (self.trusted.shape(), self.test.shape());
        if t[0] != s[0] || t[1] != s[1] {
            return bad(format!(
                "`trusted` has {} chains x {} draws but `test` {} x {}",
                t[0], t[1], s[0], s[1]
            ));
        }
        if t[0] == 0 || t[1] == 0 {
            return bad("the traces hold no draws".into());
        }
        if self.trusted_labels.len() != t[2] {
            return bad(format!(
                "{} trusted labels for {} trusted samples",
                self.trusted_labels.len(),
                t[2]
            ));
        }
        let per_test = [
            (
                "test_is_anomalous",
                self.test_is_anomalous.as_ref().map(Vec::len),
            ),
            ("test_ids", self.test_ids.as_ref().map(Vec::len)),
            ("test_labels", self.test_labels.as_ref().map(Vec::len)),
        ];
        for (name, len) in per_test {
            if let Some(len) = len
                && len != s[2]
            {
                return bad(format!(
                    "`{name}` has {len} entries for {} test samples",
                    s[2]
                ));
            }
        }
        if let Some(ids) = &self.trusted_ids
            && ids.len() != t[2]
        {
            return bad(format!(
                "`trusted_ids` has {} entries for {} trusted samples",
                ids.len(),
                t[2]
            ));
        }
        if let Some(chains) = &self.chain_indices
            && chains.len() != t[0]
        {
            return bad(format!(
                "`chain_indices` has {} entries for {} chains",
                chains.len(),
                t[0]
            ));
        }
        if let Some(reason) = self.first_bad_value() {
            return bad(reason);
        }
        Ok(())
    }

    /// The first value no score can use, described by array and position: a non-finite loss, a
    /// label that is not a class index, a negative id or chain index.
    pub fn first_bad_value(&self) -> Option<String> {
        let chains = self.chain_indices();
        for (name, traces) in [("trusted", &self.trusted), ("test", &self.test)] {
            if let Some(((slot, draw, sample), v)) =
                traces.indexed_iter().find(|(_, v)| !v.is_finite())
            {
                let chain = chains.get(slot).copied().unwrap_or(slot as i64);
                return Some(format!(
                    "`{name}` holds {v} at chain {chain}, draw {draw}, sample {sample}: every score of that trace would be {v}"
                ));
            }
        }
        let labels = [
            ("trusted_labels", Some(&self.trusted_labels)),
            ("test_labels", self.test_labels.as_ref()),
        ];
        for (name, values) in labels {
            if let Some((i, v)) = values.and_then(|v| {
                v.iter()
                    .enumerate()
                    .find(|(_, l)| !(0..=MAX_LABEL).contains(*l))
            }) {
                return Some(format!(
                    "`{name}` holds {v} at index {i}: labels are class indices from 0 to {MAX_LABEL}"
                ));
            }
        }
        let non_negative = [
            ("trusted_ids", self.trusted_ids.as_ref()),
            ("test_ids", self.test_ids.as_ref()),
            ("chain_indices", self.chain_indices.as_ref()),
        ];
        for (name, values) in non_negative {
            if let Some((i, v)) = values.and_then(|v| v.iter().enumerate().find(|(_, x)| **x < 0)) {
                return Some(format!(
                    "`{name}` holds {v} at index {i}: indices cannot be negative"
                ));
            }
        }
        None
    }

    /// Reads a trace file from any seekable reader; `path` names it in errors. Stored and
    /// deflated archives read alike, arrays in numpy's default dtypes are converted, sizes are
    /// checked before anything is allocated, and the result is [`validate`](Self::validate)d.
    pub fn read_npz<R: Read + Seek>(reader: R, path: &Path) -> Result<Self, TraceFileError> {
        let read_err = |e: NpyError| TraceFileError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut npz = NpzReader::new(reader).map_err(read_err)?;
        for required in ["trusted", "test", "trusted_labels"] {
            if !npz.has(required) {
                return Err(TraceFileError::Read {
                    path: path.to_path_buf(),
                    reason: format!(
                        "no `{required}` array (a trace file needs trusted, test and trusted_labels)"
                    ),
                });
            }
        }
        const TRACE_AXES: &str = "3 [chains, draws, samples]";
        let trusted = npz
            .array_of::<f32, Ix3>("trusted", TRACE_AXES)
            .map_err(read_err)?;
        let test = npz
            .array_of::<f32, Ix3>("test", TRACE_AXES)
            .map_err(read_err)?;
        let trusted_labels = npz
            .array_of::<i64, Ix1>("trusted_labels", "1")
            .map_err(read_err)?;
        let mut optional_i64 = |name: &str| -> Result<Option<Vec<i64>>, TraceFileError> {
            if !npz.has(name) {
                return Ok(None);
            }
            let a = npz.array_of::<i64, Ix1>(name, "1").map_err(read_err)?;
            Ok(Some(a.to_vec()))
        };
        let chain_indices = optional_i64("chain_indices")?;
        let trusted_ids = optional_i64("trusted_ids")?;
        let test_ids = optional_i64("test_ids")?;
        let test_labels = optional_i64("test_labels")?;
        let test_is_anomalous = if npz.has("test_is_anomalous") {
            let a = npz
                .array_of::<bool, Ix1>("test_is_anomalous", "1")
                .map_err(read_err)?;
            Some(a.to_vec())
        } else {
            None
        };
        let settings_json = if npz.has("vigil_settings") {
            let a = npz
                .array_of::<u8, Ix1>("vigil_settings", "1")
                .map_err(read_err)?;
            Some(
                String::from_utf8(a.to_vec()).map_err(|e| TraceFileError::Read {
                    path: path.to_path_buf(),
                    reason: format!("`vigil_settings` is not UTF-8: {e}"),
                })?,
            )
        } else {
            None
        };
        let traces = LossTraces {
            trusted,
            test,
            trusted_labels: trusted_labels.to_vec(),
            test_is_anomalous,
            chain_indices,
            trusted_ids,
            test_ids,
            test_labels,
            settings_json,
        };
        traces.validate(path)?;
        Ok(traces)
    }

    /// Writes the trace file to a seekable writer.
    pub fn write_npz<W: Write + Seek>(&self, writer: W) -> Result<(), TraceFileError> {
        let enc = |e: ndarray_npy::WriteNpzError| TraceFileError::Encode(e.to_string());
        let mut npz = NpzWriter::new(writer);
        npz.add_array("trusted", &self.trusted).map_err(enc)?;
        npz.add_array("test", &self.test).map_err(enc)?;
        npz.add_array("trusted_labels", &Array1::from(self.trusted_labels.clone()))
            .map_err(enc)?;
        if let Some(flags) = &self.test_is_anomalous {
            npz.add_array("test_is_anomalous", &Array1::from(flags.clone()))
                .map_err(enc)?;
        }
        let optional = [
            ("chain_indices", &self.chain_indices),
            ("trusted_ids", &self.trusted_ids),
            ("test_ids", &self.test_ids),
            ("test_labels", &self.test_labels),
        ];
        for (name, values) in optional {
            if let Some(values) = values {
                npz.add_array(name, &Array1::from(values.clone()))
                    .map_err(enc)?;
            }
        }
        if let Some(json) = &self.settings_json {
            npz.add_array("vigil_settings", &Array1::from(json.as_bytes().to_vec()))
                .map_err(enc)?;
        }
        npz.finish().map_err(enc)?;
        Ok(())
    }

    /// Reads a trace file from disk.
    pub fn load(path: &Path) -> Result<Self, TraceFileError> {
        let bytes = std::fs::read(path).map_err(|e| TraceFileError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::read_npz(Cursor::new(bytes), path)
    }

    /// Writes the trace file to disk atomically.
    pub fn save(&self, path: &Path) -> Result<(), TraceFileError> {
        let mut buffer = Cursor::new(Vec::new());
        self.write_npz(&mut buffer)?;
        write_atomic(path, buffer.get_ref())?;
        Ok(())
    }

    /// Joins trace files of the same run (each holding some of its chains) into one, ordered
    /// by chain index. Refuses files with different settings (other than the chain), samples,
    /// labels or draw counts, and chains present twice.
    pub fn merge(mut parts: Vec<(PathBuf, LossTraces)>) -> Result<LossTraces, TraceFileError> {
        let merge_err = |m: String| Err(TraceFileError::Merge(m));
        if parts.is_empty() {
            return merge_err("no files given".into());
        }
        let (first_path, first) = &parts[0];
        let settings = |t: &LossTraces| t.settings_json.as_deref().map(settings_without_chain);
        for (path, part) in &parts[1..] {
            let differs = |what: &str| {
                Err(TraceFileError::Merge(format!(
                    "{} and {} differ in {what}",
                    first_path.display(),
                    path.display()
                )))
            };
            if settings(part) != settings(first) {
                return differs("their settings");
            }
            if part.draws() != first.draws() {
                return differs("the number of draws");
            }
            if part.trusted_labels != first.trusted_labels
                || part.trusted_ids != first.trusted_ids
                || part.n_trusted() != first.n_trusted()
            {
                return differs("their trusted samples");
            }
            if part.test_ids != first.test_ids
                || part.test_labels != first.test_labels
                || part.test_is_anomalous != first.test_is_anomalous
                || part.n_test() != first.n_test()
            {
                return differs("their test samples");
            }
        }
        // One (chain index, part, slice) per chain, sorted by chain index.
        let mut order: Vec<(i64, usize, usize)> = Vec::new();
        for (p, (_, part)) in parts.iter().enumerate() {
            for (slice, chain) in part.chain_indices().into_iter().enumerate() {
                order.push((chain, p, slice));
            }
        }
        order.sort_unstable();
        if let Some(w) = order.windows(2).find(|w| w[0].0 == w[1].0) {
            return merge_err(format!(
                "chain {} appears in {} and {}",
                w[0].0,
                parts[w[0].1].0.display(),
                parts[w[1].1].0.display()
            ));
        }
        let trusted: Vec<_> = order
            .iter()
            .map(|&(_, p, s)| parts[p].1.trusted.slice(ndarray::s![s..s + 1, .., ..]))
            .collect();
        let test: Vec<_> = order
            .iter()
            .map(|&(_, p, s)| parts[p].1.test.slice(ndarray::s![s..s + 1, .., ..]))
            .collect();
        let enc = |e: ndarray::ShapeError| TraceFileError::Merge(e.to_string());
        let trusted = concatenate(Axis(0), &trusted).map_err(enc)?;
        let test = concatenate(Axis(0), &test).map_err(enc)?;
        let mut merged = parts.swap_remove(0).1;
        merged.trusted = trusted;
        merged.test = test;
        merged.chain_indices = Some(order.iter().map(|&(c, _, _)| c).collect());
        merged.settings_json = merged
            .settings_json
            .as_deref()
            .map(settings_without_chain)
            .map(|v| v.to_string());
        Ok(merged)
    }
}

/// The settings JSON with the field naming which chains a file holds removed, so the files of
/// one run compare equal.
fn settings_without_chain(json: &str) -> serde_json::Value {
    let mut value: serde_json::Value =
        serde_json::from_str(json).unwrap_or(serde_json::Value::String(json.to_string()));
    if let Some(map) = value.as_object_mut() {
        map.remove("chains");
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn example(chains: &[i64]) -> LossTraces {
        let c = chains.len();
        let trusted = Array3::from_shape_fn((c, 4, 3), |(k, d, i)| {
            (chains[k] * 100 + d as i64 * 10 + i as i64) as f32
        });
        let test = Array3::from_shape_fn((c, 4, 2), |(k, d, i)| {
            -((chains[k] * 100 + d as i64 * 10 + i as i64) as f32)
        });
        LossTraces {
            trusted,
            test,
            trusted_labels: vec![0, 1, 1],
            test_is_anomalous: Some(vec![false, true]),
            chain_indices: Some(chains.to_vec()),
            trusted_ids: Some(vec![5, 6, 7]),
            test_ids: None,
            test_labels: Some(vec![1, 0]),
            settings_json: Some(format!(r#"{{"seed": 3, "chains": {chains:?}}}"#)),
        }
    }

    #[test]
    fn selecting_draws_skips_limits_and_thins() {
        let traces = example(&[0, 1]);
        let short = traces.select_draws(1, Some(3), 2);
        assert_eq!(short.draws(), 2);
        // Draws 1 and 3 of chain 1, trusted sample 2: 100 + 10 d + 2.
        assert_eq!(short.trusted[[1, 0, 2]], 112.0);
        assert_eq!(short.trusted[[1, 1, 2]], 132.0);
        assert_eq!(short.test[[0, 1, 1]], -31.0);
        assert_eq!(traces.select_draws(0, None, 1), traces);
        assert_eq!(traces.select_draws(0, Some(100), 1), traces);
    }

    #[test]
    fn round_trips_through_npz_bytes() {
        let traces = example(&[0, 1]);
        let mut buffer = Cursor::new(Vec::new());
        traces.write_npz(&mut buffer).unwrap();
        buffer.set_position(0);
        let back = LossTraces::read_npz(buffer, Path::new("<bytes>")).unwrap();
        assert_eq!(back, traces);
    }

    #[test]
    fn merging_orders_chains_and_refuses_mismatches() {
        let parts = vec![
            (PathBuf::from("b"), example(&[2])),
            (PathBuf::from("a"), example(&[0, 1])),
        ];
        let merged = LossTraces::merge(parts).unwrap();
        assert_eq!(merged.chain_indices, Some(vec![0, 1, 2]));
        assert_eq!(merged.trusted, example(&[0, 1, 2]).trusted);
        assert_eq!(merged.test, example(&[0, 1, 2]).test);

        let twice = vec![
            (PathBuf::from("a"), example(&[0])),
            (PathBuf::from("b"), example(&[0])),
        ];
        assert!(
            LossTraces::merge(twice)
                .unwrap_err()
                .to_string()
                .contains("chain 0")
        );
        let mut other = example(&[1]);
        other.settings_json = Some(r#"{"seed": 4, "chains": [1]}"#.into());
        let err = LossTraces::merge(vec![
            (PathBuf::from("a"), example(&[0])),
            ("b".into(), other),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("settings"), "{err}");
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/npz")
            .join(name)
    }

    fn npz_bytes(traces: &LossTraces) -> Vec<u8> {
        let mut buffer = Cursor::new(Vec::new());
        traces.write_npz(&mut buffer).unwrap();
        buffer.into_inner()
    }

    /// Files numpy wrote itself (`tests/fixtures/npz/numpy_traces.py`): savez_compressed with
    /// float64 traces and int32 labels, and savez with Fortran-order float64 traces.
    #[test]
    fn numpys_own_files_read_compressed_or_not_with_default_dtypes() {
        let expected = example(&[0, 1]);
        let compressed = LossTraces::load(&fixture("numpy_compressed.npz")).unwrap();
        assert_eq!(compressed.trusted, expected.trusted);
        assert_eq!(compressed.test, expected.test);
        assert_eq!(compressed.trusted_labels, vec![0, 1, 1]);
        assert_eq!(compressed.test_is_anomalous, Some(vec![false, true]));
        let fortran = LossTraces::load(&fixture("numpy_fortran.npz")).unwrap();
        assert_eq!(fortran.trusted, expected.trusted);
        assert_eq!(fortran.test, expected.test);
    }

    #[test]
    fn labels_outside_class_indices_are_refused_by_array_and_index() {
        for (bad, shown) in [(-1i64, "-1"), (1 << 40, "1099511627776")] {
            let mut traces = example(&[0]);
            traces.trusted_labels[2] = bad;
            let err = LossTraces::read_npz(Cursor::new(npz_bytes(&traces)), Path::new("l.npz"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("l.npz: `trusted_labels` holds {shown} at index 2")),
                "{err}"
            );
        }
        let mut traces = example(&[0]);
        traces.test_labels = Some(vec![0, 70_000]);
        let err = LossTraces::read_npz(Cursor::new(npz_bytes(&traces)), Path::new("l.npz"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`test_labels` holds 70000 at index 1"),
            "{err}"
        );
    }

    #[test]
    fn a_non_finite_loss_is_refused_on_load_naming_array_chain_draw_and_sample() {
        let mut traces = example(&[3, 5]);
        traces.test[[1, 2, 0]] = f32::INFINITY;
        let err = LossTraces::read_npz(Cursor::new(npz_bytes(&traces)), Path::new("n.npz"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("n.npz: `test` holds inf at chain 5, draw 2, sample 0"),
            "{err}"
        );
    }

    #[test]
    fn chain_indices_that_int64_cannot_hold_are_refused() {
        assert_eq!(chain_index(7).unwrap(), 7);
        let err = chain_index(usize::MAX).unwrap_err().to_string();
        assert!(
            err.contains("chain index 18446744073709551615 does not fit"),
            "{err}"
        );
        // A file that already stores a wrapped index is refused on reading.
        let traces = example(&[-1]);
        let err = LossTraces::read_npz(Cursor::new(npz_bytes(&traces)), Path::new("c.npz"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`chain_indices` holds -1 at index 0"), "{err}");
    }

    /// A header claiming 1e15 elements (4 PB) in a file of a few hundred bytes is refused by
    /// name before anything is allocated.
    #[test]
    fn an_array_claiming_more_than_its_file_holds_is_refused_before_allocating() {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let header =
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1000000000, 1000000), }\n";
        for name in ["trusted", "test", "trusted_labels"] {
            zip.start_file(format!("{name}.npy"), options).unwrap();
            let mut npy = b"\x93NUMPY\x01\x00".to_vec();
            npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
            npy.extend_from_slice(header.as_bytes());
            npy.extend_from_slice(&[0; 64]);
            zip.write_all(&npy).unwrap();
        }
        let bytes = zip.finish().unwrap().into_inner();
        let err = LossTraces::read_npz(Cursor::new(bytes), Path::new("big.npz"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("big.npz: array `trusted`: the header claims shape [1, 1000000000, 1000000] (1000000000000000 elements"),
            "{err}"
        );
    }

    #[test]
    fn inconsistent_or_incomplete_files_are_typed_errors() {
        let mut traces = example(&[0]);
        traces.trusted_labels.pop();
        let mut buffer = Cursor::new(Vec::new());
        traces.write_npz(&mut buffer).unwrap();
        buffer.set_position(0);
        let err = LossTraces::read_npz(buffer, Path::new("x.npz")).unwrap_err();
        assert!(err.to_string().contains("2 trusted labels for 3"), "{err}");
        let err = LossTraces::read_npz(Cursor::new(b"not a zip".to_vec()), Path::new("y.npz"))
            .unwrap_err();
        assert!(err.to_string().starts_with("y.npz"), "{err}");
    }
}
