//! Optional model hook for the engine's risk tiers: "the heuristic tiers may be raised,
//! never lowered, by an optional model under the same `ml` feature; without the model the
//! heuristics stand alone and the run record says so".
//!
//! The model embeds a shell command with MiniLM and compares it with the shipped tier exemplars
//! (`data/risk-exemplars.tsv`, embeddings in `data/risk-exemplars.json`). When the nearest
//! exemplar *above* the heuristic tier beats the nearest one at or below it by the shipped margin,
//! [`CommandRiskModel::assess`] returns a [`RiskRaise`] to that exemplar's tier; otherwise `None`.
//! It can never return a lower tier. The margin was tuned leave-one-out so that no exemplar is
//! raised above its own tier. The point is
//! commands the parser cannot see into (`python -c`, `perl -e`, `node -e` one-liners that delete
//! or upload). The type exists in every build so callers need no `cfg`: without the feature
//! [`CommandRiskModel::builtin`] returns [`ModelError::NotBuilt`].

use std::fmt;

use serde::Serialize;

#[cfg(not(feature = "ml"))]
use crate::models::ModelError;

/// The engine's tiers, lowest first (names as in `secureclaw-risk`'s `Tier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelTier {
    ReadOnly,
    LowWrite,
    Destructive,
    NetworkEgress,
}

impl ModelTier {
    pub const ALL: [ModelTier; 4] = [
        Self::ReadOnly,
        Self::LowWrite,
        Self::Destructive,
        Self::NetworkEgress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "read_only",
            Self::LowWrite => "low_write",
            Self::Destructive => "destructive",
            Self::NetworkEgress => "network_egress",
        }
    }

    /// Parse `read_only`, `low_write`, `destructive`, `network_egress`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for ModelTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A raised tier with the evidence for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RiskRaise {
    /// Always above the heuristic tier passed to [`CommandRiskModel::assess`].
    pub tier: ModelTier,
    /// Cosine similarity to the exemplar, 0..1.
    pub score: f32,
    /// How much closer that exemplar is than the nearest one at or below the heuristic tier.
    pub margin: f32,
    /// Id of the nearest exemplar (`risk-exemplars.tsv:LINE`).
    pub exemplar: String,
    pub exemplar_text: String,
}

/// Whether the risk model is in use (for the run record).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RiskModelStatus {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl fmt::Display for RiskModelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            None if self.active => {
                f.write_str("risk model: active (tiers may be raised, never lowered)")
            }
            Some(r) => write!(f, "risk model: unavailable ({r}); heuristic tiers only"),
            None => f.write_str("risk model: unavailable; heuristic tiers only"),
        }
    }
}

/// Load the built-in model if this build and machine have it; the status says which.
pub fn load_risk_model() -> (Option<CommandRiskModel>, RiskModelStatus) {
    match CommandRiskModel::builtin() {
        Ok(m) => (
            Some(m),
            RiskModelStatus {
                active: true,
                reason: None,
            },
        ),
        Err(e) => (
            None,
            RiskModelStatus {
                active: false,
                reason: Some(
                    crate::semantic::SemanticStatus::unavailable(&e)
                        .reason
                        .unwrap_or_default(),
                ),
            },
        ),
    }
}

#[cfg(not(feature = "ml"))]
/// The model (uninhabited without the `ml` feature).
#[derive(Debug)]
pub struct CommandRiskModel {
    never: std::convert::Infallible,
}

#[cfg(not(feature = "ml"))]
impl CommandRiskModel {
    pub fn builtin() -> Result<Self, ModelError> {
        Err(ModelError::NotBuilt)
    }

    pub fn assess(
        &self,
        _command: &str,
        _heuristic: ModelTier,
    ) -> Result<Option<RiskRaise>, ModelError> {
        match self.never {}
    }
}

#[cfg(feature = "ml")]
pub use ml::*;

#[cfg(feature = "ml")]
mod ml {
    use std::sync::Arc;

    use super::{ModelTier, RiskRaise};
    use crate::embed::{Embedder, dot};
    use crate::models::ModelError;
    use crate::semantic::{EmbeddingFile, StoredEmbedding, check_probe};

    pub const EXEMPLARS_FILE: &str = "llm/data/risk-exemplars.json";
    pub const EXEMPLARS_JSON: &str = include_str!("../data/risk-exemplars.json");

    /// A stored exemplar, its vector and its tier.
    type Exemplar = (StoredEmbedding, Vec<f32>, ModelTier);

    /// Nearest-exemplar tier model over MiniLM embeddings.
    pub struct CommandRiskModel {
        embedder: Arc<Embedder>,
        exemplars: Vec<Exemplar>,
        threshold: f32,
    }

    impl std::fmt::Debug for CommandRiskModel {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CommandRiskModel")
                .field("exemplars", &self.exemplars.len())
                .field("threshold", &self.threshold)
                .finish_non_exhaustive()
        }
    }

    impl CommandRiskModel {
        /// The process-wide model and the shipped exemplars.
        pub fn builtin() -> Result<Self, ModelError> {
            Self::new(Embedder::shared()?)
        }

        pub fn new(embedder: Arc<Embedder>) -> Result<Self, ModelError> {
            let file = EmbeddingFile::parse(EXEMPLARS_FILE, EXEMPLARS_JSON)?;
            check_probe(&embedder, EXEMPLARS_FILE, &file)?;
            let exemplars = file
                .vectors(EXEMPLARS_FILE)?
                .into_iter()
                .map(|(e, v)| {
                    let tier = ModelTier::parse(&e.label).ok_or_else(|| ModelError::Data {
                        file: EXEMPLARS_FILE,
                        message: format!("entry {}: unknown tier {:?}", e.id, e.label),
                    })?;
                    Ok((e, v, tier))
                })
                .collect::<Result<_, ModelError>>()?;
            Ok(Self {
                embedder,
                exemplars,
                threshold: file.threshold,
            })
        }

        /// The margin (cosine lead over the best exemplar at or below the heuristic tier) a
        /// higher-tier exemplar needs to raise a command.
        pub fn margin(&self) -> f32 {
            self.threshold
        }

        /// The nearest exemplar: (its tier, cosine, the exemplar).
        pub fn nearest(
            &self,
            command: &str,
        ) -> Result<(ModelTier, f32, &StoredEmbedding), ModelError> {
            let v = self
                .embedder
                .embed(&crate::normalize::normalize(command).text)?;
            self.exemplars
                .iter()
                .map(|(e, ev, t)| (*t, dot(&v, ev), e))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .ok_or_else(|| ModelError::Data {
                    file: EXEMPLARS_FILE,
                    message: "no exemplars".into(),
                })
        }

        /// `Some` only when an exemplar above `heuristic` beats every exemplar at or below it by
        /// the margin: the model raises, it never lowers.
        pub fn assess(
            &self,
            command: &str,
            heuristic: ModelTier,
        ) -> Result<Option<RiskRaise>, ModelError> {
            let v = self
                .embedder
                .embed(&crate::normalize::normalize(command).text)?;
            let mut above: Option<(f32, &Exemplar)> = None;
            let mut at_or_below = f32::NEG_INFINITY;
            for e in &self.exemplars {
                let c = dot(&v, &e.1);
                if e.2 > heuristic {
                    if above.is_none_or(|(best, _)| c > best) {
                        above = Some((c, e));
                    }
                } else {
                    at_or_below = at_or_below.max(c);
                }
            }
            Ok(above.and_then(|(score, (e, _, tier))| {
                let margin = score - at_or_below;
                (margin >= self.threshold).then(|| RiskRaise {
                    tier: *tier,
                    score,
                    margin,
                    exemplar: e.id.clone(),
                    exemplar_text: e.text.clone(),
                })
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_order_and_parse() {
        assert!(ModelTier::ReadOnly < ModelTier::LowWrite);
        assert!(ModelTier::Destructive < ModelTier::NetworkEgress);
        for t in ModelTier::ALL {
            assert_eq!(ModelTier::parse(t.as_str()), Some(t));
        }
        assert_eq!(ModelTier::parse("nope"), None);
    }

    #[cfg(not(feature = "ml"))]
    #[test]
    fn without_ml_heuristics_stand_alone_and_say_so() {
        let (model, status) = load_risk_model();
        assert!(model.is_none());
        assert!(!status.active);
        assert!(
            status.to_string().contains("heuristic tiers only"),
            "{status}"
        );
        assert!(status.to_string().contains("ml"), "{status}");
    }
}
