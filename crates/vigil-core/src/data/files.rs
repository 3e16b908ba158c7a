//! Small file-system helpers that attach the path to every I/O error.

use std::path::{Path, PathBuf};

use super::error::{DataError, Result};

/// Reads a whole file, naming it in the error if that fails.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| DataError::io(path, source))
}

/// Reads a whole UTF-8 text file, naming it in the error if that fails.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| DataError::io(path, source))
}

/// Lists the entries of a folder sorted by file name, naming the folder in
/// the error if it cannot be read. Sorting makes every loader independent of
/// the file system's listing order.
pub(crate) fn sorted_entries(folder: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(folder).map_err(|source| DataError::io(folder, source))?;
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(
            entry
                .map_err(|source| DataError::io(folder, source))?
                .path(),
        );
    }
    paths.sort();
    Ok(paths)
}
