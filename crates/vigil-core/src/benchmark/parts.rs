//! The one store of a benchmark's finished stages, shared by every benchmark: each stage's
//! results are saved as `<out>/parts/<group>/<stage>.json` (a group is a model or an attack
//! record) the moment they exist, so a run that is stopped continues where it stopped and
//! computes nothing twice.
//!
//! The `parts` folder is claimed for one run identity (settings and data, [`identity::claim`])
//! before anything is read back; a part carries what the identity cannot pin in advance (the
//! weights of the group's model, a stage's own settings), and the caller refuses a part whose
//! key differs instead of mixing it in.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::BenchmarkError;
use crate::identity::{self, RunIdentity};
use crate::io::write_json_atomic;

/// Name of the folder of parts inside a benchmark's output folder.
pub const PARTS_DIR: &str = "parts";

/// Saved stages of one benchmark run.
#[derive(Debug, Clone)]
pub struct PartStore {
    dir: PathBuf,
}

impl PartStore {
    /// Claims `<out>/parts` for `identity`. `groups` are the group folders this run may reuse:
    /// a folder without an identity that holds one of them is refused (nothing says whose
    /// results they are).
    pub fn open(
        out: &Path,
        identity: &RunIdentity,
        groups: &[&str],
    ) -> Result<Self, BenchmarkError> {
        let dir = out.join(PARTS_DIR);
        let mut reusable = groups.to_vec();
        reusable.push("run.json");
        identity::claim(&dir, identity, &reusable)?;
        Ok(Self { dir })
    }

    /// The file of `stage` of `group`.
    pub fn path(&self, group: &str, stage: &str) -> PathBuf {
        self.dir.join(group).join(format!("{stage}.json"))
    }

    /// The saved `stage` of `group`, if there is one.
    pub fn load<T: DeserializeOwned>(
        &self,
        group: &str,
        stage: &str,
    ) -> Result<Option<T>, BenchmarkError> {
        let path = self.path(group, stage);
        match crate::io::read_if_present(&path) {
            Ok(Some(bytes)) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| BenchmarkError::Part {
                        path,
                        reason: e.to_string(),
                    })
            }
            Ok(None) => Ok(None),
            Err(e) => Err(BenchmarkError::Part {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Saves `stage` of `group` atomically.
    pub fn save<T: Serialize>(
        &self,
        group: &str,
        stage: &str,
        part: &T,
    ) -> Result<(), BenchmarkError> {
        Ok(write_json_atomic(&self.path(group, stage), part)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_a_folder_of_another_run_is_refused() {
        let out = std::env::temp_dir().join(format!("vigil-parts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let identity = RunIdentity::new("test-benchmark", serde_json::json!({ "seed": 1 }));
        let store = PartStore::open(&out, &identity, &["model-a"]).unwrap();
        assert_eq!(store.load::<Vec<u32>>("model-a", "stage").unwrap(), None);
        store.save("model-a", "stage", &vec![1u32, 2]).unwrap();
        assert_eq!(
            store.load::<Vec<u32>>("model-a", "stage").unwrap(),
            Some(vec![1, 2])
        );
        // The same run reopens its store and finds the part.
        let again = PartStore::open(&out, &identity, &["model-a"]).unwrap();
        assert!(
            again
                .load::<Vec<u32>>("model-a", "stage")
                .unwrap()
                .is_some()
        );
        // Other settings are refused, naming the difference.
        let other = RunIdentity::new("test-benchmark", serde_json::json!({ "seed": 2 }));
        let err = PartStore::open(&out, &other, &["model-a"]).unwrap_err();
        assert!(err.to_string().contains("seed"), "{err}");
        // A part that does not parse is an error naming its file, never a silent recompute.
        std::fs::write(store.path("model-a", "broken"), b"{").unwrap();
        let err = store.load::<Vec<u32>>("model-a", "broken").unwrap_err();
        assert!(err.to_string().contains("broken.json"), "{err}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
