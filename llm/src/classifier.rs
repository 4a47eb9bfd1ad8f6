//! The fine-tuned injection classifier (feature `ml`): all-MiniLM-L6-v2 (6 layers, 384 wide) with
//! a mean-pooled linear head, fine-tuned on injection data and quantised to int8 (`scripts/train_injection_model.py`; data, licences and figures in docs/llm.md).
//!
//! The model is compiled into the binary (`llm/models/injection-classifier.onnx`), so it always
//! matches the thresholds shipped beside it; the ONNX Runtime library and the tokenizer come from
//! the models directory, as for the embedder.

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::embed::{load_tokenizer, padded_batch, run_batched, session_builder, token_rows};
use crate::models::{ModelError, ModelFiles};

/// The ONNX file, as the repository holds it.
pub const CLASSIFIER_MODEL_FILE: &str = "llm/models/injection-classifier.onnx";
const MODEL_BYTES: &[u8] = include_bytes!("../models/injection-classifier.onnx");
/// Its calibration: the decision threshold chosen on the validation split.
pub const CLASSIFIER_META_FILE: &str = "llm/data/injection-classifier.json";
const META_JSON: &str = include_str!("../data/injection-classifier.json");

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

/// `llm/data/injection-classifier.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClassifierMeta {
    pub format: u32,
    /// SHA-256 of the ONNX file it was calibrated for.
    pub model_sha256: String,
    /// Probability at or above which a unit is an injection.
    pub threshold: f32,
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
}

impl std::fmt::Debug for InjectionClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InjectionClassifier")
            .field("threshold", &self.meta.threshold)
            .finish_non_exhaustive()
    }
}

fn rt(e: impl std::fmt::Display) -> ModelError {
    ModelError::Runtime(e.to_string())
}

impl InjectionClassifier {
    /// The process-wide classifier (loaded once: ~0.1 s).
    pub fn shared() -> Result<Arc<Self>, ModelError> {
        static CELL: OnceLock<Result<Arc<InjectionClassifier>, ModelError>> = OnceLock::new();
        CELL.get_or_init(|| Self::load(&ModelFiles::locate()?).map(Arc::new))
            .clone()
    }

    pub fn load(files: &ModelFiles) -> Result<Self, ModelError> {
        let meta: ClassifierMeta =
            serde_json::from_str(META_JSON).map_err(|e| ModelError::Data {
                file: CLASSIFIER_META_FILE,
                message: e.to_string(),
            })?;
        if meta.format != 1 || !(0.0..1.0).contains(&meta.threshold) {
            return Err(ModelError::Data {
                file: CLASSIFIER_META_FILE,
                message: format!(
                    "format {} threshold {} (expected format 1, 0 <= threshold < 1)",
                    meta.format, meta.threshold
                ),
            });
        }
        let (tokenizer, cls, sep) = load_tokenizer(files)?;
        let session = session_builder(files)?
            .commit_from_memory(MODEL_BYTES)
            .map_err(|e| ModelError::Runtime(format!("loading {CLASSIFIER_MODEL_FILE}: {e}")))?;
        Ok(Self {
            session: Mutex::new(session),
            tokenizer,
            cls,
            sep,
            meta,
        })
    }

    pub fn threshold(&self) -> f32 {
        self.meta.threshold
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
