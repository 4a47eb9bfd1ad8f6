//! The fine-tuned injection classifiers (feature `ml`): MiniLM-L6 transformers with a mean-pooled
//! linear head, fine-tuned on injection data and quantised to int8
//! (`scripts/train_injection_model.py`; data, licences and figures in docs/llm.md).
//!
//! Two ship: the **full** model (all six layers of all-MiniLM-L6-v2) decides, and a **student**
//! (its first two layers, fine-tuned the same way) reads first in the cascade and passes on only
//! what it does not find clearly benign: a third of the cost per token, so most benign prose never
//! reaches the full model.
//!
//! Both are compiled into the binary (`llm/models/`), so a model always matches the threshold
//! shipped beside it; the ONNX Runtime library and the tokenizer come from the models directory,
//! as for the embedder.

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::embed::{load_tokenizer, padded_batch, run_batched, session_builder, token_rows};
use crate::models::{ModelError, ModelFiles};

/// Which of the shipped classifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassifierKind {
    /// Six layers: its threshold flags a unit as an injection.
    Full,
    /// Two layers: its threshold is the bound below which a unit is dismissed as benign.
    Student,
}

impl ClassifierKind {
    /// The ONNX file, as the repository holds it.
    pub fn model_file(self) -> &'static str {
        match self {
            Self::Full => "llm/models/injection-classifier.onnx",
            Self::Student => "llm/models/injection-student.onnx",
        }
    }

    /// Its calibration (chosen on the validation split).
    pub fn meta_file(self) -> &'static str {
        match self {
            Self::Full => "llm/data/injection-classifier.json",
            Self::Student => "llm/data/injection-student.json",
        }
    }

    fn model_bytes(self) -> &'static [u8] {
        match self {
            Self::Full => include_bytes!("../models/injection-classifier.onnx"),
            Self::Student => include_bytes!("../models/injection-student.onnx"),
        }
    }

    /// SHA-256 (hex) of the model compiled into this binary: what its calibration must record.
    pub fn model_sha256(self) -> String {
        sha256_hex(self.model_bytes())
    }

    fn meta_json(self) -> &'static str {
        match self {
            Self::Full => include_str!("../data/injection-classifier.json"),
            Self::Student => include_str!("../data/injection-student.json"),
        }
    }
}

/// Units up to this many tokens are classified whole (the length the model was trained on);
/// longer ones in [`SCAN_WINDOW`]-token windows sharing [`SCAN_OVERLAP`].
pub const WHOLE_UNIT_TOKENS: usize = 128;
/// Tokens per window of an over-long unit: short windows keep one instruction from being diluted
/// by the rest of a paragraph.
pub const SCAN_WINDOW: usize = 64;
/// Tokens shared by consecutive windows: any instruction of up to this many tokens lies whole
/// inside one window.
pub const SCAN_OVERLAP: usize = 32;

/// One window of a unit: its byte range in the text and P(injection).
pub type WindowProbability = (Range<usize>, f32);

/// `llm/data/injection-classifier.json` and `llm/data/injection-student.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClassifierMeta {
    pub format: u32,
    /// SHA-256 of the ONNX file it was calibrated for.
    pub model_sha256: String,
    /// Probability at or above which a unit is an injection (full model) or is passed on to the
    /// full model (student).
    pub threshold: f32,
    /// The full model's threshold for at most 2 % validation false positives: a second operating
    /// point, reported on the test split beside the shipped one, never used to flag.
    #[serde(default)]
    pub threshold_at_two_percent: Option<f32>,
    /// How the model and threshold were made (free text for reviewers).
    pub tuning: String,
}

/// The loaded classifier. `Session::run` needs `&mut`, so calls are serialised by a mutex; ONNX
/// Runtime parallelises inside one call instead.
pub struct InjectionClassifier {
    session: Mutex<Session>,
    tokenizer: Tokenizer,
    cls: u32,
    sep: u32,
    meta: ClassifierMeta,
    kind: ClassifierKind,
}

impl std::fmt::Debug for InjectionClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InjectionClassifier")
            .field("kind", &self.kind)
            .field("threshold", &self.meta.threshold)
            .finish_non_exhaustive()
    }
}

/// Why `meta` cannot be used with `model`: it was chosen for another file.
fn calibration_mismatch(
    kind: ClassifierKind,
    meta: &ClassifierMeta,
    model: &[u8],
) -> Option<ModelError> {
    let digest = sha256_hex(model);
    (digest != meta.model_sha256).then(|| ModelError::Data {
        file: kind.meta_file(),
        message: format!(
            "its threshold was chosen for a model with SHA-256 {}, but {} has {digest}; run \
             `cargo run -p secureclaw-llm --release --features ml --example calibrate-injection` \
             after replacing a model",
            meta.model_sha256,
            kind.model_file()
        ),
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rt(e: impl std::fmt::Display) -> ModelError {
    ModelError::Runtime(e.to_string())
}

impl InjectionClassifier {
    /// The process-wide full model (loaded once: ~0.1 s).
    pub fn shared() -> Result<Arc<Self>, ModelError> {
        static CELL: OnceLock<Result<Arc<InjectionClassifier>, ModelError>> = OnceLock::new();
        CELL.get_or_init(|| Self::load(&ModelFiles::locate()?, ClassifierKind::Full).map(Arc::new))
            .clone()
    }

    /// The process-wide student (loaded once).
    pub fn shared_student() -> Result<Arc<Self>, ModelError> {
        static CELL: OnceLock<Result<Arc<InjectionClassifier>, ModelError>> = OnceLock::new();
        CELL.get_or_init(|| {
            Self::load(&ModelFiles::locate()?, ClassifierKind::Student).map(Arc::new)
        })
        .clone()
    }

    /// Load a shipped model; refused when its calibration was made for another model file.
    pub fn load(files: &ModelFiles, kind: ClassifierKind) -> Result<Self, ModelError> {
        let classifier = Self::load_uncalibrated(files, kind)?;
        match calibration_mismatch(kind, &classifier.meta, kind.model_bytes()) {
            Some(e) => Err(e),
            None => Ok(classifier),
        }
    }

    /// Load a shipped model whatever its calibration was made for: for the calibration, which
    /// reads probabilities only.
    pub fn load_uncalibrated(files: &ModelFiles, kind: ClassifierKind) -> Result<Self, ModelError> {
        let meta_file = kind.meta_file();
        let meta: ClassifierMeta =
            serde_json::from_str(kind.meta_json()).map_err(|e| ModelError::Data {
                file: meta_file,
                message: e.to_string(),
            })?;
        if meta.format != 1 || !(0.0..1.0).contains(&meta.threshold) {
            return Err(ModelError::Data {
                file: meta_file,
                message: format!(
                    "format {} threshold {} (expected format 1, 0 <= threshold < 1)",
                    meta.format, meta.threshold
                ),
            });
        }
        let (tokenizer, cls, sep) = load_tokenizer(files)?;
        let session = session_builder(files)?
            .commit_from_memory(kind.model_bytes())
            .map_err(|e| ModelError::Runtime(format!("loading {}: {e}", kind.model_file())))?;
        Ok(Self {
            session: Mutex::new(session),
            tokenizer,
            cls,
            sep,
            meta,
            kind,
        })
    }

    pub fn threshold(&self) -> f32 {
        self.meta.threshold
    }

    /// See [`ClassifierMeta::threshold_at_two_percent`].
    pub fn threshold_at_two_percent(&self) -> Option<f32> {
        self.meta.threshold_at_two_percent
    }

    pub fn meta(&self) -> &ClassifierMeta {
        &self.meta
    }

    /// P(injection) of each part of `text` (byte ranges of `text`): one list per span, with one
    /// result per window for parts longer than [`WHOLE_UNIT_TOKENS`] (empty for a part without
    /// tokens).
    pub fn classify_spans(
        &self,
        text: &str,
        spans: &[Range<usize>],
    ) -> Result<Vec<Vec<WindowProbability>>, ModelError> {
        let rows = token_rows(
            &self.tokenizer,
            text,
            spans,
            WHOLE_UNIT_TOKENS,
            SCAN_WINDOW,
            SCAN_OVERLAP,
        )?;
        let ids: Vec<Vec<u32>> = rows.iter().map(|r| r.ids.clone()).collect();
        let probs = run_batched(&ids, |batch| self.run(batch))?;
        let mut out = vec![Vec::new(); spans.len()];
        for (row, p) in rows.into_iter().zip(probs) {
            if let Some(list) = out.get_mut(row.unit) {
                list.push((row.span, p));
            }
        }
        Ok(out)
    }

    /// P(injection) of one text, read as one unit (its first window when longer).
    pub fn probability(&self, text: &str) -> Result<f32, ModelError> {
        Ok(self
            .classify_spans(text, std::slice::from_ref(&(0..text.len())))?
            .into_iter()
            .flatten()
            .map(|(_, p)| p)
            .fold(0f32, f32::max))
    }

    fn run(&self, rows: &[&[u32]]) -> Result<Vec<f32>, ModelError> {
        let batch = rows.len();
        let (seq, ids, mask) = padded_batch(rows, self.cls, self.sep);
        let shape = [batch as i64, seq as i64];
        let inputs: Vec<(&str, ort::session::SessionInputValue<'_>)> = vec![
            (
                "input_ids",
                Tensor::from_array((shape, ids)).map_err(rt)?.into(),
            ),
            (
                "attention_mask",
                Tensor::from_array((shape, mask)).map_err(rt)?.into(),
            ),
        ];
        // A poisoned lock only means another scan panicked mid-call; the session holds no state
        // between runs, so keep using it.
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outputs = session.run(inputs).map_err(rt)?;
        if outputs.len() == 0 {
            return Err(ModelError::Output(
                "the classifier returned no output".into(),
            ));
        }
        let (dims, data) = outputs[0].try_extract_tensor::<f32>().map_err(rt)?;
        if data.len() != batch {
            return Err(ModelError::Output(format!(
                "expected {batch} logits, got shape {:?}",
                &dims[..]
            )));
        }
        Ok(data.iter().map(|z| 1.0 / (1.0 + (-z).exp())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: ClassifierKind) -> ClassifierMeta {
        serde_json::from_str(kind.meta_json()).unwrap()
    }

    #[test]
    fn each_shipped_model_matches_the_calibration_beside_it() {
        for kind in [ClassifierKind::Full, ClassifierKind::Student] {
            assert!(
                calibration_mismatch(kind, &meta(kind), kind.model_bytes()).is_none(),
                "{kind:?}: run examples/calibrate-injection after training"
            );
        }
    }

    #[test]
    fn a_threshold_chosen_for_another_model_is_refused() {
        // The student's calibration with the full model's file, and a file changed by one byte.
        let student = meta(ClassifierKind::Student);
        let e = calibration_mismatch(
            ClassifierKind::Student,
            &student,
            ClassifierKind::Full.model_bytes(),
        )
        .unwrap();
        assert!(e.to_string().contains("calibrate-injection"), "{e}");
        let mut changed = ClassifierKind::Full.model_bytes().to_vec();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert!(
            calibration_mismatch(ClassifierKind::Full, &meta(ClassifierKind::Full), &changed)
                .is_some()
        );
    }
}
