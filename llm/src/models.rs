//! Where the offline model files of the semantic layer live, and what is missing.
//!
//! Compiled with and without the `ml` feature so that every build can say *why* the semantic layer
//! is not running ("not built", "model missing: run scripts/setup-models.sh") instead of silently
//! scanning with the regex layer alone.

use std::path::{Path, PathBuf};

/// The one command that installs the files (see docs/llm.md).
pub const SETUP_COMMAND: &str = "scripts/setup-models.sh";
/// Environment variable naming the models directory.
pub const MODELS_DIR_VAR: &str = "SECURECLAW_MODELS_DIR";
/// Set to `1` to make the `ml` tests fail (instead of skip) when the model is missing (CI).
pub const REQUIRE_MODELS_VAR: &str = "SECURECLAW_REQUIRE_MODELS";

/// all-MiniLM-L6-v2, int8 ONNX export.
pub const MODEL_FILE: &str = "model.onnx";
/// Its WordPiece tokenizer in the Hugging Face `tokenizers` JSON format.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The ONNX Runtime shared library (loaded at run time, never linked).
pub const RUNTIME_FILE: &str = "libonnxruntime.so";

/// Why the semantic layer (or the command risk model) is not available, or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("built without the `ml` feature")]
    NotBuilt,
    #[error("no models directory: set {MODELS_DIR_VAR} (or HOME), then run {SETUP_COMMAND}")]
    NoModelsDir,
    #[error(
        "model missing in {}: {} not found (install with {SETUP_COMMAND})",
        dir.display(),
        missing.join(", ")
    )]
    Missing {
        dir: PathBuf,
        missing: Vec<&'static str>,
    },
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model output: {0}")]
    Output(String),
    /// A shipped data file (`llm/data/*.json`) is malformed.
    #[error("{file}: {message}")]
    Data { file: &'static str, message: String },
    /// The installed model does not reproduce the shipped embeddings (a different model file).
    #[error(
        "the model in {} does not match the shipped embeddings (probe cosine {cosine:.4}); reinstall with {SETUP_COMMAND} --force",
        dir.display()
    )]
    Mismatch { dir: PathBuf, cosine: f32 },
}

impl ModelError {
    /// True when installing the files would fix it (tests skip only on this, unless required).
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Missing { .. } | Self::NoModelsDir)
    }
}

/// The three files, found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub runtime: PathBuf,
    pub model: PathBuf,
    pub tokenizer: PathBuf,
}

/// `$SECURECLAW_MODELS_DIR`, else `${XDG_DATA_HOME:-$HOME/.local/share}/secureclaw/models`.
pub fn models_dir() -> Option<PathBuf> {
    models_dir_from(|k| std::env::var_os(k).map(PathBuf::from))
}

/// [`models_dir`] over any lookup (tests). Empty values count as unset, like the shell's `:-`.
pub fn models_dir_from(lookup: impl Fn(&str) -> Option<PathBuf>) -> Option<PathBuf> {
    let get = |k: &str| lookup(k).filter(|v| !v.as_os_str().is_empty());
    if let Some(dir) = get(MODELS_DIR_VAR) {
        return Some(dir);
    }
    let data = get("XDG_DATA_HOME").or_else(|| get("HOME").map(|h| h.join(".local/share")))?;
    Some(data.join("secureclaw/models"))
}

impl ModelFiles {
    /// The files in [`models_dir`].
    pub fn locate() -> Result<Self, ModelError> {
        Self::in_dir(&models_dir().ok_or(ModelError::NoModelsDir)?)
    }

    /// The files in `dir`, or every one that is missing.
    pub fn in_dir(dir: &Path) -> Result<Self, ModelError> {
        let model = dir.join(MODEL_FILE);
        let tokenizer = dir.join(TOKENIZER_FILE);
        let runtime = find_runtime(dir);
        let mut missing = Vec::new();
        if runtime.is_none() {
            missing.push(RUNTIME_FILE);
        }
        if !model.is_file() {
            missing.push(MODEL_FILE);
        }
        if !tokenizer.is_file() {
            missing.push(TOKENIZER_FILE);
        }
        match runtime {
            Some(runtime) if missing.is_empty() => Ok(Self {
                dir: dir.to_owned(),
                runtime,
                model,
                tokenizer,
            }),
            _ => Err(ModelError::Missing {
                dir: dir.to_owned(),
                missing,
            }),
        }
    }
}

/// `libonnxruntime.so`, else the highest-sorting `libonnxruntime.so.X.Y.Z` (the wheel ships only
/// the versioned name; the setup script adds the plain symlink, a hand install may not).
fn find_runtime(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join(RUNTIME_FILE);
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so."))
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| PathBuf::from(v))
            }
        };
        assert_eq!(
            models_dir_from(env(&[(MODELS_DIR_VAR, "/m"), ("HOME", "/h")])),
            Some(PathBuf::from("/m"))
        );
        assert_eq!(
            models_dir_from(env(&[("XDG_DATA_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/secureclaw/models"))
        );
        assert_eq!(
            models_dir_from(env(&[(MODELS_DIR_VAR, ""), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.local/share/secureclaw/models"))
        );
        assert_eq!(models_dir_from(env(&[])), None);
    }

    #[test]
    fn missing_files_are_all_named_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("sc-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(TOKENIZER_FILE), "{}").unwrap();
        let err = ModelFiles::in_dir(&dir).unwrap_err();
        assert!(err.is_missing());
        let msg = err.to_string();
        assert!(
            msg.contains("libonnxruntime.so, model.onnx not found"),
            "{msg}"
        );
        assert!(msg.contains(SETUP_COMMAND), "{msg}");
        std::fs::write(dir.join("libonnxruntime.so.1.32.0"), "").unwrap();
        std::fs::write(dir.join(MODEL_FILE), "").unwrap();
        let found = ModelFiles::in_dir(&dir).unwrap();
        assert!(found.runtime.ends_with("libonnxruntime.so.1.32.0"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
