//! Helpers shared by the data module's tests: scratch folders and gzip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh folder under the system temp dir, removed when dropped.
pub(crate) struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<temp>/vigil-data-test-<pid>-<n>-<label>`, unique per call.
    pub(crate) fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "vigil-data-test-{}-{n}-{label}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Self { path }
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` to `relative` inside the folder, creating parents.
    pub(crate) fn write(&self, relative: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).expect("create parent");
        std::fs::write(&path, bytes).expect("write scratch file");
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Gzips `bytes` in memory.
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// The folder `name` under the data root as a developer has it installed:
/// `$VIGIL_DATA_DIR/<name>` if that variable is set, else `data/<name>` in the
/// nearest ancestor of this crate that has one (tests run in the crate
/// folder, while `scripts/setup-data.sh` fills the repository's `data/`).
pub(crate) fn installed_data_dir(name: &str) -> Option<PathBuf> {
    let env_root =
        std::env::var_os(crate::data::source::DATA_DIR_ENV).filter(|root| !root.is_empty());
    if let Some(root) = env_root {
        return Some(PathBuf::from(root).join(name)).filter(|dir| dir.is_dir());
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|ancestor| ancestor.join("data").join(name))
        .find(|dir| dir.is_dir())
}
