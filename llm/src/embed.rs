//! Sentence embeddings with all-MiniLM-L6-v2 (int8 ONNX) through ONNX Runtime (feature `ml`).
//!
//! Everything is local: the runtime library, the model and the tokenizer are read from the models
//! directory ([`ModelFiles`], installed by `scripts/setup-models.sh`); nothing is downloaded.
//!
//! Embedding = mean of the last hidden states over real tokens (attention mask), L2-normalised,
//! exactly as sentence-transformers does for this model. Texts longer than one window are cut
//! into overlapping token windows ([`Embedder::embed_chunks`]), so an instruction that straddles a
//! window boundary is still seen whole by one of them.

use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::Tensor;
use tokenizers::Tokenizer;

use crate::models::{ModelError, ModelFiles};

/// Longest window, `[CLS]` and `[SEP]` included. The model was trained on 128 and accepts 512;
/// 256 holds a whole paragraph at ~10 ms per window. [`Embedder::embed`] cuts here.
pub const MAX_TOKENS: usize = 256;
/// Embedding width of MiniLM-L6.
pub const DIM: usize = 384;
/// Environment variable: ONNX Runtime threads per call (default 1).
pub const THREADS_VAR: &str = "SECURECLAW_ML_THREADS";

/// Threads for one ONNX call: `SECURECLAW_ML_THREADS` when it is a positive number, else 1. One
/// thread, because the guards run beside builds and sandboxed steps on small machines, where
/// extra inference threads mostly wait for a core; a dedicated scanner can ask for more.
fn threads_from(var: Option<&str>) -> usize {
    var.and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// Most windows per ONNX run: batching amortises the per-call overhead.
const BATCH: usize = 8;

/// Byte range in the text of each token.
type Offsets = Vec<(usize, usize)>;

/// One window of a text and its embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Byte range in the embedded text.
    pub span: Range<usize>,
    /// Unit-length embedding ([`DIM`] values).
    pub embedding: Vec<f32>,
}

/// A loaded model. `Session::run` needs `&mut`, so calls are serialised by a mutex; ONNX Runtime
/// parallelises inside one call instead.
pub struct Embedder {
    session: Mutex<Session>,
    tokenizer: Tokenizer,
    cls: u32,
    sep: u32,
    /// Some exports take `token_type_ids`, some do not.
    token_type_ids: bool,
    files: ModelFiles,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dir", &self.files.dir)
            .finish_non_exhaustive()
    }
}

fn rt(e: impl std::fmt::Display) -> ModelError {
    ModelError::Runtime(e.to_string())
}

impl Embedder {
    /// The process-wide embedder over [`ModelFiles::locate`]. ONNX Runtime's library can be loaded
    /// once per process, so the first outcome (model or error) is kept.
    pub fn shared() -> Result<Arc<Embedder>, ModelError> {
        static CELL: OnceLock<Result<Arc<Embedder>, ModelError>> = OnceLock::new();
        CELL.get_or_init(|| {
            let files = ModelFiles::locate()?;
            Embedder::load(&files).map(Arc::new)
        })
        .clone()
    }

    /// Load the runtime, model and tokenizer from `files`. Prefer [`Embedder::shared`]: a second
    /// call in one process reuses the runtime library loaded by the first.
    pub fn load(files: &ModelFiles) -> Result<Self, ModelError> {
        let (tokenizer, cls, sep) = load_tokenizer(files)?;
        let session = session_builder(files)?
            .commit_from_file(&files.model)
            .map_err(|e| ModelError::Runtime(format!("loading {}: {e}", files.model.display())))?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !names.contains(&required) {
                return Err(ModelError::Output(format!(
                    "{} has no `{required}` input (inputs: {names:?})",
                    files.model.display()
                )));
            }
        }
        let token_type_ids = names.contains(&"token_type_ids");
        Ok(Self {
            session: Mutex::new(session),
            tokenizer,
            cls,
            sep,
            token_type_ids,
            files: files.clone(),
        })
    }

    /// Where the files were loaded from.
    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    /// The embedding of `text` cut to its first window (use [`Embedder::embed_chunks`] for long
    /// text). Used for short items: known attacks, command exemplars, commands.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        let ids = self.token_ids(text)?;
        let window = &ids.0[..ids.0.len().min(MAX_TOKENS - 2)];
        let mut out = self.run(&[window])?;
        out.pop()
            .ok_or_else(|| ModelError::Output("no embedding returned".into()))
    }

    /// Embeddings of every window of `text` (none for text without tokens): windows of `width`
    /// tokens (at most [`MAX_TOKENS`] − 2, special tokens excluded), consecutive ones sharing
    /// `overlap` tokens.
    pub fn embed_chunks(
        &self,
        text: &str,
        width: usize,
        overlap: usize,
    ) -> Result<Vec<Chunk>, ModelError> {
        let whole = std::iter::once(0..text.len()).collect::<Vec<_>>();
        self.embed_spans(text, &whole, width, width, overlap)
    }

    /// Embeddings of parts of `text`: each span of at most `whole` tokens is embedded as one
    /// window, a longer one in windows of `width` tokens sharing `overlap`. All windows of all
    /// spans are batched together (sorted by length, so little padding is computed). Chunk spans
    /// are byte ranges of `text`, in the order of `spans`.
    pub fn embed_spans(
        &self,
        text: &str,
        spans: &[Range<usize>],
        whole: usize,
        width: usize,
        overlap: usize,
    ) -> Result<Vec<Chunk>, ModelError> {
        let rows = token_rows(&self.tokenizer, text, spans, whole, width, overlap)?;
        let (spans, ids): (Vec<_>, Vec<_>) = rows.into_iter().map(|r| (r.span, r.ids)).unzip();
        let embeddings = run_batched(&ids, |batch| self.run(batch))?;
        Ok(spans
            .into_iter()
            .zip(embeddings)
            .map(|(span, embedding)| Chunk { span, embedding })
            .collect())
    }

    /// Number of tokens of `text` (special tokens excluded).
    pub fn count_tokens(&self, text: &str) -> Result<usize, ModelError> {
        Ok(self.token_ids(text)?.0.len())
    }

    /// Token ids without special tokens, and each token's byte range in `text`.
    fn token_ids(&self, text: &str) -> Result<(Vec<u32>, Offsets), ModelError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// One ONNX call over `[CLS] window [SEP]` rows, right-padded to the longest row.
    fn run(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let batch = rows.len();
        let (seq, ids, mask) = padded_batch(rows, self.cls, self.sep);
        let shape = [batch as i64, seq as i64];
        let mut inputs: Vec<(&str, ort::session::SessionInputValue<'_>)> = vec![
            (
                "input_ids",
                Tensor::from_array((shape, ids)).map_err(rt)?.into(),
            ),
            (
                "attention_mask",
                Tensor::from_array((shape, mask.clone()))
                    .map_err(rt)?
                    .into(),
            ),
        ];
        if self.token_type_ids {
            inputs.push((
                "token_type_ids",
                Tensor::from_array((shape, vec![0i64; batch * seq]))
                    .map_err(rt)?
                    .into(),
            ));
        }
        // A poisoned lock only means another scan panicked mid-call; the session itself holds no
        // state between runs, so keep using it.
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outputs = session.run(inputs).map_err(rt)?;
        let value = match outputs.get("last_hidden_state") {
            Some(v) => v,
            // Exports that name it differently still put the hidden states first.
            None if outputs.len() > 0 => &outputs[0],
            None => return Err(ModelError::Output("the model returned no output".into())),
        };
        let hidden = value.try_extract_tensor::<f32>().map_err(rt)?;
        let (dims, data) = hidden;
        if dims.len() != 3
            || dims[0] as usize != batch
            || dims[1] as usize != seq
            || data.len() != batch * seq * DIM
        {
            return Err(ModelError::Output(format!(
                "expected hidden states [{batch}, {seq}, {DIM}], got {:?}",
                &dims[..]
            )));
        }
        let dim = dims[2] as usize;
        if dim != DIM {
            return Err(ModelError::Output(format!(
                "expected {DIM}-wide embeddings, got {dim}"
            )));
        }
        Ok((0..batch)
            .map(|b| {
                let mut sum = vec![0f32; dim];
                let mut n = 0f32;
                for t in 0..seq {
                    if mask[b * seq + t] == 0 {
                        continue;
                    }
                    n += 1.0;
                    let row = &data[(b * seq + t) * dim..(b * seq + t + 1) * dim];
                    for (s, v) in sum.iter_mut().zip(row) {
                        *s += v;
                    }
                }
                for s in &mut sum {
                    *s /= n.max(1.0);
                }
                normalize_l2(&mut sum);
                sum
            })
            .collect())
    }
}

/// The WordPiece tokenizer of `files` with padding and truncation off (the shipped
/// tokenizer.json pads and truncates to 128; the layers window long texts themselves and pad per
/// batch), and its `[CLS]` and `[SEP]` ids.
pub(crate) fn load_tokenizer(files: &ModelFiles) -> Result<(Tokenizer, u32, u32), ModelError> {
    let mut tokenizer =
        Tokenizer::from_file(&files.tokenizer).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let special = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| ModelError::Tokenizer(format!("no {t} token in the vocabulary")))
    };
    let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
    Ok((tokenizer, cls, sep))
}

/// ONNX Runtime's library can be loaded once per process: the first outcome is kept and every
/// model of the process (embedder, injection classifier) runs in that environment.
fn environment(files: &ModelFiles) -> Result<Environment, ModelError> {
    static ENV: OnceLock<Result<Environment, ModelError>> = OnceLock::new();
    ENV.get_or_init(|| {
        ort::init_from(&files.runtime)
            .map_err(|e| ModelError::Runtime(format!("loading {}: {e}", files.runtime.display())))?
            .with_name("secureclaw")
            .with_telemetry(false)
            .build()
            .map_err(rt)
    })
    .clone()
}

/// A session builder with the settings every model here uses.
pub(crate) fn session_builder(files: &ModelFiles) -> Result<SessionBuilder, ModelError> {
    let env = environment(files)?;
    let threads = threads_from(std::env::var(THREADS_VAR).ok().as_deref());
    Session::builder(&env)
        .map_err(rt)?
        // `All` rather than `Level3`: older runtimes reject Level3.
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(rt)?
        .with_intra_threads(threads)
        .map_err(rt)?
        // Spinning workers help a dedicated server; on a shared 2-core machine they fight
        // the rest of the engine (measured: 2 spinning threads 148 ms vs 1 thread 78 ms per
        // 256-token window under load).
        .with_intra_op_spinning(false)
        .map_err(rt)
}

/// One row of tokens: which of the requested spans it belongs to, and its byte range in the text.
pub(crate) struct TokenRow {
    pub unit: usize,
    pub span: Range<usize>,
    pub ids: Vec<u32>,
}

/// Token rows of parts of a text: each span of at most `whole` tokens is one row, a longer one is
/// cut into rows of `width` tokens sharing `overlap`. Each row keeps its byte range in `text`.
pub(crate) fn token_rows(
    tokenizer: &Tokenizer,
    text: &str,
    spans: &[Range<usize>],
    whole: usize,
    width: usize,
    overlap: usize,
) -> Result<Vec<TokenRow>, ModelError> {
    let limit = MAX_TOKENS - 2;
    let (whole, width) = (whole.clamp(1, limit), width.clamp(1, limit));
    let mut rows = Vec::new();
    for (unit, span) in spans.iter().enumerate() {
        let Some(part) = text.get(span.clone()) else {
            continue;
        };
        let enc = tokenizer
            .encode(part, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let (ids, offsets) = (enc.get_ids(), enc.get_offsets());
        let ws = if ids.len() <= whole {
            windows(ids.len(), whole, 0)
        } else {
            windows(ids.len(), width, overlap)
        };
        for w in ws {
            let bytes = span.start + offsets[w.start].0..span.start + offsets[w.end - 1].1;
            rows.push(TokenRow {
                unit,
                span: bytes,
                ids: ids[w].to_vec(),
            });
        }
    }
    Ok(rows)
}

/// Run `run` over `rows` in batches of rows of similar length (a batch is padded to its longest
/// row, so a 20-token sentence padded to 70 would cost 3.5 times its own work); results in the
/// order of `rows`.
pub(crate) fn run_batched<T>(
    rows: &[Vec<u32>],
    mut run: impl FnMut(&[&[u32]]) -> Result<Vec<T>, ModelError>,
) -> Result<Vec<T>, ModelError> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].len());
    let mut out: Vec<Option<T>> = (0..rows.len()).map(|_| None).collect();
    let mut start = 0;
    while start < order.len() {
        let shortest = rows[order[start]].len();
        let mut end = start + 1;
        while end < order.len()
            && end - start < BATCH
            && rows[order[end]].len() * 4 <= shortest * 5 + 8
        {
            end += 1;
        }
        let batch = &order[start..end];
        let slices: Vec<&[u32]> = batch.iter().map(|&i| rows[i].as_slice()).collect();
        for (&i, r) in batch.iter().zip(run(&slices)?) {
            out[i] = Some(r);
        }
        start = end;
    }
    out.into_iter()
        .map(|r| r.ok_or_else(|| ModelError::Output("a window got no result".into())))
        .collect()
}

/// `[CLS] row [SEP]` rows right-padded to the longest: ids and attention mask, row-major.
pub(crate) fn padded_batch(rows: &[&[u32]], cls: u32, sep: u32) -> (usize, Vec<i64>, Vec<i64>) {
    let batch = rows.len();
    let seq = rows.iter().map(|r| r.len() + 2).max().unwrap_or(2);
    let mut ids = vec![0i64; batch * seq];
    let mut mask = vec![0i64; batch * seq];
    for (b, row) in rows.iter().enumerate() {
        let base = b * seq;
        let tokens = std::iter::once(cls)
            .chain(row.iter().copied())
            .chain(std::iter::once(sep));
        for (i, t) in tokens.enumerate() {
            ids[base + i] = i64::from(t);
            mask[base + i] = 1;
        }
    }
    (seq, ids, mask)
}

/// Token windows of `width` over `len` tokens, consecutive ones sharing `overlap` tokens; the last
/// window ends at `len` (so it may overlap its predecessor by more).
pub fn windows(len: usize, width: usize, overlap: usize) -> Vec<Range<usize>> {
    if len == 0 {
        return Vec::new();
    }
    if len <= width {
        return std::iter::once(0..len).collect();
    }
    let stride = width.saturating_sub(overlap).max(1);
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        if start + width >= len {
            out.push(len - width..len);
            break;
        }
        out.push(start..start + width);
        start += stride;
    }
    out
}

/// Scale to unit length (a zero vector stays zero).
pub fn normalize_l2(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in v {
            *x /= norm;
        }
    }
}

pub use crate::units::sentences;

/// Dot product; the cosine for unit vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_setting() {
        assert_eq!(threads_from(None), 1);
        assert_eq!(threads_from(Some("4")), 4);
        assert_eq!(threads_from(Some("0")), 1);
        assert_eq!(threads_from(Some("lots")), 1);
    }

    #[test]
    fn windows_cover_and_overlap() {
        assert!(windows(0, 254, 64).is_empty());
        assert_eq!(windows(10, 254, 64), vec![0..10]);
        assert_eq!(windows(254, 254, 64), vec![0..254]);
        let w = windows(600, 254, 64);
        assert_eq!(w, vec![0..254, 190..444, 346..600]);
        for pair in w.windows(2) {
            assert!(pair[0].end >= pair[1].start + 64);
        }
    }
}
