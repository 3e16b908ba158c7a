//! Atomic file writes: a reader sees the old file or the new one, never half of either.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors of file output, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The file or its temporary sibling could not be written or moved into place.
    #[error("cannot write {path}: {source}")]
    Write {
        /// File being written.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The value could not be serialised to JSON.
    #[error("cannot serialise {path} as JSON: {source}")]
    Json {
        /// File being written.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, flushed to disk,
/// then renamed over `path`. Creates missing parent folders.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let err = |source| IoError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(err)?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), IoError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| IoError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("vigil-io-test-{}", std::process::id()));
        let path = dir.join("sub/out.json");
        write_json_atomic(&path, &serde_json::json!({"a": 1})).unwrap();
        write_json_atomic(&path, &serde_json::json!({"a": 2})).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back["a"], 2);
        let names: Vec<_> = fs::read_dir(dir.join("sub")).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }
}
