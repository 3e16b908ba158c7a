//! File output: atomic writes (a reader sees the old file or the new one, never half of
//! either), and the checks a command makes before any work so that its writes cannot destroy its
//! inputs ([`check_outputs`]) or fail hours in ([`check_writable_dir`]).

use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

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
    /// An output path names one of the command's inputs.
    #[error(
        "refusing to write {output}: it is the input {input}; nothing was written. Choose another output path"
    )]
    OutputIsInput {
        /// The output, as given.
        output: PathBuf,
        /// The input it would overwrite, as given.
        input: PathBuf,
    },
    /// Two outputs of one command name the same file.
    #[error(
        "refusing to write {first} and {second}: they are the same file; nothing was written. Choose another output path"
    )]
    OutputsCollide {
        /// One output, as given.
        first: PathBuf,
        /// The other, as given.
        second: PathBuf,
    },
    /// Files cannot be created in an output folder.
    #[error("cannot write into {dir}: {source}; nothing was started")]
    NotWritable {
        /// The output folder.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
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

/// The bytes of `path`, or `None` when it does not exist: a run's state file that is not written
/// yet. Any other failure to read is an error.
pub fn read_if_present(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes `path`; a file already absent is fine.
pub fn remove_if_present(path: &Path) -> Result<(), IoError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(IoError::Write {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
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

/// Refuses a command's outputs when one is also an input or two are the same file, before the
/// command does any work. Paths are compared as the files they name: symbolic links, `.` and
/// `..` resolved (an output that does not exist yet is its nearest existing folder, resolved,
/// joined with the rest of its path), and on Unix two existing paths that are hard links of one
/// file count as the same.
pub fn check_outputs<I, O>(inputs: I, outputs: O) -> Result<(), IoError>
where
    I: IntoIterator,
    I::Item: AsRef<Path>,
    O: IntoIterator,
    O::Item: AsRef<Path>,
{
    let inputs: Vec<(PathBuf, ResolvedPath)> = inputs
        .into_iter()
        .map(|p| (p.as_ref().to_path_buf(), ResolvedPath::of(p.as_ref())))
        .collect();
    let mut seen: Vec<(PathBuf, ResolvedPath)> = Vec::new();
    for output in outputs {
        let output = output.as_ref();
        let resolved = ResolvedPath::of(output);
        if let Some((input, _)) = inputs.iter().find(|(_, r)| r.same_file(&resolved)) {
            return Err(IoError::OutputIsInput {
                output: output.to_path_buf(),
                input: input.clone(),
            });
        }
        if let Some((first, _)) = seen.iter().find(|(_, r)| r.same_file(&resolved)) {
            return Err(IoError::OutputsCollide {
                first: first.clone(),
                second: output.to_path_buf(),
            });
        }
        seen.push((output.to_path_buf(), resolved));
    }
    Ok(())
}

/// The file a path names, for comparing paths that are spelled differently.
#[derive(Debug)]
struct ResolvedPath {
    /// Absolute, with links, `.` and `..` resolved as far as the path exists.
    path: PathBuf,
    /// Device and inode of an existing file (Unix), which hard links share.
    inode: Option<(u64, u64)>,
}

impl ResolvedPath {
    fn of(path: &Path) -> Self {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let components: Vec<Component> = absolute.components().collect();
        // The longest prefix that exists resolves through the file system; what lies below it
        // does not exist yet, so it holds no links and `..` there is plain lexical.
        for existing in (0..=components.len()).rev() {
            let prefix: PathBuf = components[..existing].iter().collect();
            let Ok(mut resolved) = fs::canonicalize(&prefix) else {
                continue;
            };
            let inode = (existing == components.len())
                .then(|| inode(&resolved))
                .flatten();
            for component in &components[existing..] {
                match component {
                    Component::ParentDir => {
                        resolved.pop();
                    }
                    Component::CurDir => {}
                    other => resolved.push(other),
                }
            }
            return Self {
                path: resolved,
                inode,
            };
        }
        Self {
            path: absolute,
            inode: None,
        }
    }

    fn same_file(&self, other: &Self) -> bool {
        self.path == other.path || (self.inode.is_some() && self.inode == other.inode)
    }
}

#[cfg(unix)]
fn inode(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn inode(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// Checks that files can be created in `dir` before a long run starts, so that it cannot fail
/// at its first write hours in: creates the folder, writes and removes a probe file. Leaves
/// nothing behind: folders it had to create are removed again (the run creates them when it
/// writes).
pub fn check_writable_dir(dir: &Path) -> Result<(), IoError> {
    let err = |source| IoError::NotWritable {
        dir: dir.to_path_buf(),
        source,
    };
    let missing: Vec<&Path> = dir
        .ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .take_while(|p| !p.exists())
        .collect();
    let probe = dir.join(format!(".vigil-write-probe-{}", std::process::id()));
    let result = fs::create_dir_all(dir).and_then(|()| {
        let written = fs::File::create(&probe).and_then(|mut f| f.write_all(b"probe"));
        let removed = fs::remove_file(&probe);
        written.and(removed)
    });
    // Deepest first; remove_dir only removes empty folders, so nothing else can be lost.
    for created in missing {
        let _ = fs::remove_dir(created);
    }
    result.map_err(err)
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

    #[test]
    fn absent_files_read_as_none_and_remove_as_done() {
        let dir = scratch("present");
        let path = dir.join("state.json");
        assert_eq!(read_if_present(&path).unwrap(), None);
        remove_if_present(&path).unwrap();
        fs::write(&path, b"{}").unwrap();
        assert_eq!(read_if_present(&path).unwrap(), Some(b"{}".to_vec()));
        remove_if_present(&path).unwrap();
        assert!(!path.exists());
        // A folder is not a file: reading and removing it are errors, not "absent".
        assert!(read_if_present(&dir).is_err());
        assert!(remove_if_present(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A fresh folder for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vigil-io-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_output_equal_to_an_input_is_refused_however_it_is_spelled() {
        let dir = scratch("same-input");
        let input = dir.join("t.npz");
        fs::write(&input, b"traces").unwrap();
        fs::create_dir_all(dir.join("sub")).unwrap();
        for output in [
            input.clone(),
            dir.join("sub/../t.npz"),
            dir.join("./t.npz"),
            dir.join("new/../t.npz"),
        ] {
            let e = check_outputs([&input], [&output]).unwrap_err();
            assert!(
                matches!(&e, IoError::OutputIsInput { output: o, input: i } if o == &output && i == &input),
                "{output:?}: {e}"
            );
            assert!(e.to_string().contains("nothing was written"), "{e}");
        }
        // A relative spelling from the current folder resolves to the same file.
        let relative = pathdiff(&input);
        assert!(check_outputs([&relative], [&input]).is_err());
        // Other names in the same folder, existing or not, are fine.
        assert!(check_outputs([&input], [dir.join("scores.csv"), dir.join("new/x.csv")]).is_ok());
        assert_eq!(fs::read(&input).unwrap(), b"traces");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `path` relative to the current folder when it can be spelled so (else as it is).
    fn pathdiff(path: &Path) -> PathBuf {
        let cwd = std::env::current_dir().unwrap();
        let depth = cwd.components().count() - 1;
        let mut relative: PathBuf = std::iter::repeat_n("..", depth).collect();
        relative.push(path.strip_prefix("/").unwrap_or(path));
        relative
    }

    #[cfg(unix)]
    #[test]
    fn links_to_an_input_are_the_input() {
        let dir = scratch("links");
        let input = dir.join("a.npz");
        fs::write(&input, b"chain 0").unwrap();
        let hard = dir.join("hard.npz");
        fs::hard_link(&input, &hard).unwrap();
        let soft = dir.join("soft.npz");
        std::os::unix::fs::symlink(&input, &soft).unwrap();
        let linked_dir = dir.join("linked");
        std::os::unix::fs::symlink(&dir, &linked_dir).unwrap();
        for output in [&hard, &soft, &linked_dir.join("a.npz")] {
            let e = check_outputs([&input], [output]).unwrap_err();
            assert!(
                matches!(e, IoError::OutputIsInput { .. }),
                "{output:?}: {e}"
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_outputs_naming_one_file_are_refused() {
        let dir = scratch("two-outputs");
        let scores = dir.join("attribution.csv");
        let e = check_outputs::<[&Path; 0], _>([], [&scores, &dir.join("x/../attribution.csv")])
            .unwrap_err();
        assert!(
            matches!(&e, IoError::OutputsCollide { first, .. } if first == &scores),
            "{e}"
        );
        assert!(check_outputs::<[&Path; 0], _>([], [dir.join("a.csv"), dir.join("b.csv")]).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_writable_folder_passes_and_is_left_as_it_was() {
        let dir = scratch("writable");
        let out = dir.join("new/run");
        check_writable_dir(&out).unwrap();
        assert!(
            !dir.join("new").exists(),
            "the probe left its folders behind"
        );
        fs::create_dir_all(&out).unwrap();
        check_writable_dir(&out).unwrap();
        assert_eq!(
            fs::read_dir(&out).unwrap().count(),
            0,
            "probe file left behind"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_under_a_file_is_not_writable() {
        let dir = scratch("not-writable");
        let file = dir.join("plain-file");
        fs::write(&file, b"x").unwrap();
        let e = check_writable_dir(&file.join("run")).unwrap_err();
        assert!(
            matches!(&e, IoError::NotWritable { dir: d, .. } if d == &file.join("run")),
            "{e}"
        );
        assert!(e.to_string().contains("cannot write into"), "{e}");
        assert_eq!(fs::read(&file).unwrap(), b"x");
        fs::remove_dir_all(&dir).unwrap();
    }
}
