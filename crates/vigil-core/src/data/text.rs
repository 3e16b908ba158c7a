//! Text for language models, from package registries only: Debian's fortune databases (the
//! packages `fortunes-min` and `fortunes`, plain text under `/usr/share/games/fortunes`) and
//! JSON-lines files of prompt/response pairs, the format `vigil` reads a text data set in.
//!
//! Parsers take bytes, so they can be fuzzed; every error names the file and the line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where Debian installs the fortune databases.
pub const FORTUNE_DIR: &str = "/usr/share/games/fortunes";

/// Longest text entry accepted, in bytes: far beyond any fortune or chat turn, far below what
/// would exhaust memory once tokenised.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// Errors reading text data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TextError {
    /// The file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// A line or entry is malformed.
    #[error("{path}, line {line}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file holds no entry.
    #[error("{0}: no text entries")]
    Empty(PathBuf),
}

/// One prompt and the response a model should give to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptResponse {
    /// What the model is given.
    pub prompt: String,
    /// What it should answer.
    pub response: String,
}

/// The entries of a fortune database (`strfile`'s text form: entries separated by lines holding
/// only `%`), each with trailing whitespace removed; empty entries are skipped.
pub fn parse_fortunes(path: &Path, bytes: &[u8]) -> Result<Vec<String>, TextError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        TextError::Format {
            path: path.to_path_buf(),
            line,
            reason: "not UTF-8".into(),
        }
    })?;
    let mut entries = Vec::new();
    let mut current = String::new();
    let mut first_line = 1;
    for (i, line) in text.lines().enumerate() {
        if line == "%" {
            push_entry(path, &mut entries, &mut current, first_line)?;
            first_line = i + 2;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    push_entry(path, &mut entries, &mut current, first_line)?;
    if entries.is_empty() {
        return Err(TextError::Empty(path.to_path_buf()));
    }
    Ok(entries)
}

fn push_entry(
    path: &Path,
    entries: &mut Vec<String>,
    current: &mut String,
    line: usize,
) -> Result<(), TextError> {
    let entry = current.trim_end();
    if entry.len() > MAX_ENTRY_BYTES {
        return Err(TextError::Format {
            path: path.to_path_buf(),
            line,
            reason: format!(
                "an entry of {} bytes (at most {MAX_ENTRY_BYTES})",
                entry.len()
            ),
        });
    }
    if !entry.trim().is_empty() {
        entries.push(entry.to_string());
    }
    current.clear();
    Ok(())
}

/// Every fortune of the databases `names` in `dir` (all of them, sorted by name, if `names` is
/// empty; the `.dat` index files and `.u8` links are skipped).
pub fn read_fortunes(dir: &Path, names: &[&str]) -> Result<Vec<String>, TextError> {
    let io = |path: &Path, e: std::io::Error| TextError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let files: Vec<PathBuf> = if names.is_empty() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_none())
            .collect();
        files.sort();
        files
    } else {
        names.iter().map(|n| dir.join(n)).collect()
    };
    if files.is_empty() {
        return Err(TextError::Empty(dir.to_path_buf()));
    }
    let mut all = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| io(&file, e))?;
        all.extend(parse_fortunes(&file, &bytes)?);
    }
    Ok(all)
}

/// The pairs of a JSON-lines file: one `{"prompt": ..., "response": ...}` object per line
/// (blank lines skipped; any other key is an error, so a misspelt one is not silently lost).
pub fn parse_jsonl(path: &Path, bytes: &[u8]) -> Result<Vec<PromptResponse>, TextError> {
    parse_lines(path, bytes)
}

/// The prompts of a JSON-lines file: one `{"prompt": ...}` object per line, a `"response"`
/// allowed and ignored (so a file of pairs gives its prompts); blank lines skipped, any other
/// key an error.
pub fn parse_prompts(path: &Path, bytes: &[u8]) -> Result<Vec<String>, TextError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PromptLine {
        prompt: String,
        #[allow(dead_code)]
        #[serde(default)]
        response: Option<String>,
    }
    let lines: Vec<PromptLine> = parse_lines(path, bytes)?;
    Ok(lines.into_iter().map(|l| l.prompt).collect())
}

/// One JSON object per non-blank line, at least one.
fn parse_lines<T: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<T>, TextError> {
    let mut entries = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let format = |reason: String| TextError::Format {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if line.len() > MAX_ENTRY_BYTES {
            return Err(format(format!(
                "a line of {} bytes (at most {MAX_ENTRY_BYTES})",
                line.len()
            )));
        }
        entries.push(serde_json::from_slice(line).map_err(|e| format(e.to_string()))?);
    }
    if entries.is_empty() {
        return Err(TextError::Empty(path.to_path_buf()));
    }
    Ok(entries)
}

fn read(path: &Path) -> Result<Vec<u8>, TextError> {
    std::fs::read(path).map_err(|e| TextError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads a JSON-lines file of pairs.
pub fn read_jsonl(path: &Path) -> Result<Vec<PromptResponse>, TextError> {
    parse_jsonl(path, &read(path)?)
}

/// Reads a JSON-lines file of prompts ([`parse_prompts`]).
pub fn read_prompts(path: &Path) -> Result<Vec<String>, TextError> {
    parse_prompts(path, &read(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("x")
    }

    #[test]
    fn fortunes_split_on_percent_lines_and_keep_inner_blank_lines() {
        let text = b"First one.\n%\nSecond,\n\ntwo paragraphs.  \n%\n%\n  \n%\nLast";
        let entries = parse_fortunes(p(), text).unwrap();
        assert_eq!(
            entries,
            vec!["First one.", "Second,\n\ntwo paragraphs.", "Last"]
        );
        // A `%` inside a line is text.
        assert_eq!(
            parse_fortunes(p(), b"100% sure\n").unwrap(),
            vec!["100% sure"]
        );
        assert!(matches!(
            parse_fortunes(p(), b"%\n%\n"),
            Err(TextError::Empty(_))
        ));
        let err = parse_fortunes(p(), b"ok\n%\nbad \xff byte").unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn jsonl_pairs_parse_and_bad_lines_are_named() {
        let text = b"{\"prompt\": \"Hi\", \"response\": \"Hello.\"}\n\n{\"prompt\": \"a\", \"response\": \"b\"}\n";
        let pairs = parse_jsonl(p(), text).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].response, "Hello.");
        for (bad, line) in [
            (&b"{\"prompt\": \"Hi\"}\n"[..], "line 1"),
            (
                b"\n{\"prompt\": \"a\", \"response\": \"b\", \"extra\": 1}",
                "line 2",
            ),
            (
                b"{\"prompt\": \"a\", \"response\": \"b\"}\nnot json",
                "line 2",
            ),
        ] {
            let err = parse_jsonl(p(), bad).unwrap_err().to_string();
            assert!(err.contains(line), "{err}");
        }
        assert!(matches!(
            parse_jsonl(p(), b"\n \n"),
            Err(TextError::Empty(_))
        ));
    }

    /// Debian's `fortunes-min` database, when installed (`.ci/run` installs it).
    #[test]
    fn debian_fortunes_read_when_installed() {
        let dir = Path::new(FORTUNE_DIR);
        if !dir.join("fortunes").is_file() {
            eprintln!("skipped: {FORTUNE_DIR}/fortunes not installed (package fortunes-min)");
            return;
        }
        let entries = read_fortunes(dir, &["fortunes"]).unwrap();
        assert!(entries.len() > 300, "{}", entries.len());
        assert!(entries.iter().all(|e| !e.contains("\n%\n")));
    }

    #[test]
    fn prompt_files_take_pairs_or_prompts_alone_and_name_a_bad_line() {
        let bytes = b"{\"prompt\": \"a\"}\n\n{\"prompt\": \"b\", \"response\": \"c\"}\n";
        assert_eq!(parse_prompts(p(), bytes).unwrap(), vec!["a", "b"]);
        let err = parse_prompts(p(), b"{\"prompt\": \"a\"}\n{\"promt\": \"b\"}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x, line 2"), "{err}");
        assert!(matches!(
            parse_prompts(p(), b"\n \n"),
            Err(TextError::Empty(_))
        ));
    }
}
