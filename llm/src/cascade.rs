//! The semantic layer's cascade (feature `ml`), cheapest reader first:
//!
//! 1. the n-gram model ([`crate::lexical`]) reads every unit of a text in microseconds;
//! 2. a unit it does not find clearly benign goes to the two-layer student transformer
//!    ([`crate::classifier`], [`ClassifierKind::Student`]);
//! 3. a unit the student does not find clearly benign goes to the six-layer model, which decides.
//!
//! Both dismissal bounds were chosen on the validation split so that few of its attacks fall
//! below them; most benign prose does, which keeps the per-window cost of the layer small
//! (figures in docs/performance.md).

use std::ops::Range;
use std::sync::Arc;

use crate::classifier::{ClassifierKind, InjectionClassifier};
use crate::detect::{DetectorLayer, Finding, escape_invisible, excerpt};
use crate::lexical::{LexicalModel, probability};
use crate::models::ModelError;
use crate::normalize::Normalized;
use crate::units::{hidden_texts, learned_score, prefix, truncation_finding};

/// The layer embeds at most this much of a normalised text; past it a `semantic-truncated`
/// finding with score 0 says so (the other layers read everything).
pub const MAX_SCAN_BYTES: usize = 32 * 1024;

/// A pair of adjacent sentences is read only when one of its two sentences scored at least this
/// on its own with the full model (a sentence the n-gram model or the student dismissed counts
/// as 0). Pairs are two thirds of the tokens of a long text; an instruction split over two
/// sentences leaves a trace in at least one of them, and on benign prose neither sentence comes
/// near this.
/// Chosen on the validation split (docs/llm.md, "Cost").
pub const PAIR_BOUND: f32 = 0.05;

/// One scored unit.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitScore {
    /// Byte range in the normalised text.
    pub span: Range<usize>,
    /// The n-gram model's logit.
    pub lexical: f32,
    /// The student's probability, when the n-gram model did not dismiss the unit.
    pub student: Option<f32>,
    /// The full model's probability, when neither the n-gram model nor the student dismissed
    /// the unit.
    pub model: Option<f32>,
}

/// One window the student read: its span, the student's probability, and the full model's when
/// the student passed it on.
type Read = (Range<usize>, f32, Option<f32>);

/// The cascade [`DetectorLayer`] (named `semantic`).
#[derive(Debug)]
pub struct CascadeLayer {
    lexical: LexicalModel,
    student: Arc<InjectionClassifier>,
    classifier: Arc<InjectionClassifier>,
    /// The student's dismissal bound (its calibrated threshold unless set).
    student_bound: f32,
    /// The full model's threshold (its calibrated one unless set).
    threshold: f32,
    max_bytes: usize,
}

impl CascadeLayer {
    /// The shipped models; fails when the runtime or tokenizer is not installed.
    pub fn builtin() -> Result<Self, ModelError> {
        Self::with_models(
            InjectionClassifier::shared_student()?,
            InjectionClassifier::shared()?,
        )
    }

    /// The shipped models whatever their calibration was made for (the calibration's own view;
    /// see [`InjectionClassifier::load_uncalibrated`]).
    pub fn uncalibrated() -> Result<Self, ModelError> {
        let files = crate::models::ModelFiles::locate()?;
        Self::with_models(
            Arc::new(InjectionClassifier::load_uncalibrated(
                &files,
                ClassifierKind::Student,
            )?),
            Arc::new(InjectionClassifier::load_uncalibrated(
                &files,
                ClassifierKind::Full,
            )?),
        )
    }

    fn with_models(
        student: Arc<InjectionClassifier>,
        classifier: Arc<InjectionClassifier>,
    ) -> Result<Self, ModelError> {
        let lexical = LexicalModel::builtin().map_err(|e| ModelError::Data {
            file: e.file,
            message: e.message,
        })?;
        Ok(Self {
            lexical,
            student_bound: student.threshold(),
            threshold: classifier.threshold(),
            student,
            classifier,
            max_bytes: MAX_SCAN_BYTES,
        })
    }

    /// Pass on every unit the student scores at least `bound` (0 passes everything: the
    /// cascade without its student, as the calibration and the bench read it).
    pub fn with_student_bound(mut self, bound: f32) -> Self {
        self.student_bound = bound;
        self
    }

    pub fn student_bound(&self) -> f32 {
        self.student_bound
    }

    /// Read at most the first `bytes` of a text (see [`MAX_SCAN_BYTES`]).
    pub fn with_max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Flag a unit the full model scores at least `threshold` (an operating point other than the
    /// shipped one, as the evaluation reads it; see
    /// [`InjectionClassifier::threshold_at_two_percent`]).
    pub fn with_threshold(mut self, threshold: f32) -> Self {
        self.threshold = threshold;
        self
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    pub fn classifier(&self) -> &InjectionClassifier {
        &self.classifier
    }

    pub fn student(&self) -> &InjectionClassifier {
        &self.student
    }

    /// Every unit of `text` (normalised) with the scores of the stages that read it; units whose
    /// n-gram logit is below `dismiss_below` go to neither transformer.
    pub fn unit_scores(
        &self,
        text: &str,
        dismiss_below: f32,
    ) -> Result<Vec<UnitScore>, ModelError> {
        self.unit_scores_with(text, dismiss_below, PAIR_BOUND)
    }

    /// [`Self::unit_scores`] with the pair bound given ([`PAIR_BOUND`]; 0 scores every pair).
    pub fn unit_scores_with(
        &self,
        text: &str,
        dismiss_below: f32,
        pair_bound: f32,
    ) -> Result<Vec<UnitScore>, ModelError> {
        let units = self.lexical.units(text);
        let sentences = crate::units::sentences(text);
        // A pair spans more than one sentence; the whole of a short text is not a pair.
        let covered = |span: &Range<usize>| {
            sentences
                .iter()
                .filter(|s| s.start >= span.start && s.end <= span.end)
                .count()
        };
        let is_pair: Vec<bool> = units
            .iter()
            .map(|(span, _)| units.len() > 1 && covered(span) > 1)
            .collect();
        // First the sentences (and whole texts) the n-gram model does not dismiss.
        let first: Vec<usize> = (0..units.len())
            .filter(|&i| !is_pair[i] && units[i].1 >= dismiss_below)
            .collect();
        let mut reads: Vec<Option<Vec<Read>>> = vec![None; units.len()];
        self.read_units(text, &units, &first, &mut reads)?;
        // Then the pairs one of whose sentences was unsure on its own.
        let sentence_max = |span: &Range<usize>| {
            units
                .iter()
                .zip(&reads)
                .filter(|((s, _), _)| s.start >= span.start && s.end <= span.end)
                .filter_map(|(_, r)| r.as_ref())
                .flat_map(|r| r.iter().filter_map(|(_, _, p)| *p))
                .fold(0f32, f32::max)
        };
        let second: Vec<usize> = (0..units.len())
            .filter(|&i| {
                is_pair[i] && units[i].1 >= dismiss_below && sentence_max(&units[i].0) >= pair_bound
            })
            .collect();
        self.read_units(text, &units, &second, &mut reads)?;
        let mut out = Vec::with_capacity(units.len());
        for ((span, lexical), read) in units.into_iter().zip(reads) {
            let Some(read) = read else {
                out.push(UnitScore {
                    span,
                    lexical,
                    student: None,
                    model: None,
                });
                continue;
            };
            // A unit without tokens was read and found empty.
            if read.is_empty() {
                out.push(UnitScore {
                    span,
                    lexical,
                    student: Some(0.0),
                    model: None,
                });
            }
            // A long unit comes back as several windows: each is scored on its own span.
            for (window, student, model) in read {
                out.push(UnitScore {
                    span: window,
                    lexical,
                    student: Some(student),
                    model,
                });
            }
        }
        Ok(out)
    }

    /// The student reads the units `which` of `units`; the windows it does not dismiss go on to
    /// the full model. Both read their units in batches.
    fn read_units(
        &self,
        text: &str,
        units: &[(Range<usize>, f32)],
        which: &[usize],
        reads: &mut [Option<Vec<Read>>],
    ) -> Result<(), ModelError> {
        let spans: Vec<Range<usize>> = which.iter().map(|&i| units[i].0.clone()).collect();
        let student = self.student.classify_spans(text, &spans)?;
        let passed: Vec<Range<usize>> = student
            .iter()
            .flatten()
            .filter(|(_, p)| *p >= self.student_bound)
            .map(|(span, _)| span.clone())
            .collect();
        // One list per passed window, in the order they were passed.
        let mut full = self.classifier.classify_spans(text, &passed)?.into_iter();
        for (&i, windows) in which.iter().zip(student) {
            let mut read = Vec::with_capacity(windows.len());
            for (span, p) in windows {
                let model = if p >= self.student_bound {
                    let window = full.next().ok_or_else(|| {
                        ModelError::Output("the full model skipped a window".into())
                    })?;
                    Some(window.into_iter().map(|(_, q)| q).fold(0f32, f32::max))
                } else {
                    None
                };
                read.push((span, p, model));
            }
            if let Some(slot) = reads.get_mut(i) {
                *slot = Some(read);
            }
        }
        Ok(())
    }

    /// Every unit of `text` as the layer reads it (normalised, cut at its byte budget), then the
    /// units of any hidden text (tag characters, decoded payloads; their spans are in that hidden text); units
    /// whose n-gram logit is below `dismiss_below` go to neither transformer.
    pub fn text_scores(
        &self,
        text: &str,
        dismiss_below: f32,
    ) -> Result<Vec<UnitScore>, ModelError> {
        let n = crate::normalize::normalize(text);
        let mut out = self.unit_scores(prefix(&n.text, self.max_bytes), dismiss_below)?;
        for (_, hidden) in hidden_texts(&n) {
            out.extend(self.unit_scores(&hidden, dismiss_below)?);
        }
        Ok(out)
    }

    /// The highest full-model probability over the units of `text` as the layer reads it
    /// (dismissed units count as 0): what the evaluation ranks by.
    pub fn max_probability(&self, text: &str) -> Result<f32, ModelError> {
        Ok(self
            .text_scores(text, self.lexical.dismiss_below())?
            .iter()
            .map(|u| u.model.unwrap_or(0.0))
            .fold(0f32, f32::max))
    }

    fn findings(
        &self,
        original: &str,
        input: &Normalized,
        text: &str,
        hidden_span: Option<&Range<usize>>,
    ) -> Result<Vec<Finding>, ModelError> {
        let threshold = self.threshold();
        let mut best: Option<UnitScore> = None;
        for u in self.unit_scores(text, self.lexical.dismiss_below())? {
            if u.model.unwrap_or(0.0) >= threshold
                && best
                    .as_ref()
                    .is_none_or(|b| u.model.unwrap_or(0.0) > b.model.unwrap_or(0.0))
            {
                best = Some(u);
            }
        }
        let Some(u) = best else {
            return Ok(Vec::new());
        };
        let p = u.model.unwrap_or(0.0);
        let span = match hidden_span {
            Some(s) => s.clone(),
            None => input.original_span(&u.span),
        };
        Ok(vec![Finding {
            layer: "semantic".into(),
            pattern_id: "semantic-classifier".into(),
            matched: escape_invisible(&excerpt(original.get(span.clone()).unwrap_or(""), 200)),
            span,
            score: learned_score((p - threshold) / (1.0 - threshold).max(f32::EPSILON)),
            detail: Some(format!(
                "fine-tuned MiniLM p={p:.3} >= {threshold:.3}; student p={:.3}; n-gram p={:.3}{}",
                u.student.unwrap_or(0.0),
                probability(u.lexical),
                if hidden_span.is_some() {
                    "; hidden text (tag characters or an encoding)"
                } else {
                    ""
                }
            )),
        }])
    }
}

impl DetectorLayer for CascadeLayer {
    fn name(&self) -> &str {
        "semantic"
    }

    fn scan(&self, original: &str, input: &Normalized) -> Vec<Finding> {
        let mut out = Vec::new();
        let text = prefix(&input.text, self.max_bytes);
        out.extend(truncation_finding("semantic", original, input, text.len()));
        let mut result = self.findings(original, input, text, None);
        for (span, hidden) in hidden_texts(input) {
            let hidden = prefix(&hidden, self.max_bytes).to_owned();
            result = result.and_then(|mut found| {
                found.extend(self.findings(original, input, &hidden, Some(&span))?);
                Ok(found)
            });
        }
        match result {
            Ok(found) => out.extend(found),
            // Fail closed: text the model cannot read is suspect, and an attacker must not be
            // able to switch the layer off with input that makes inference fail.
            Err(e) => out.push(Finding {
                layer: "semantic".into(),
                pattern_id: "semantic-error".into(),
                span: 0..original.len(),
                matched: String::new(),
                score: 0.5,
                detail: Some(format!("the semantic layer failed on this text: {e}")),
            }),
        }
        out
    }
}
