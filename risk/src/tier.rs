use std::fmt;
use std::str::FromStr;

/// Risk tiers, ordered by how much confirmation they need.
///
/// `NetworkEgress` sorts above `Destructive`: it is orthogonal in meaning but always needs both
/// an allowlist and a confirmation, so "the highest tier" of a node that both deletes and talks
/// to the network still pauses.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    ReadOnly,
    LowWrite,
    Destructive,
    NetworkEgress,
}

impl Tier {
    pub const ALL: [Tier; 4] = [
        Tier::ReadOnly,
        Tier::LowWrite,
        Tier::Destructive,
        Tier::NetworkEgress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::ReadOnly => "read_only",
            Tier::LowWrite => "low_write",
            Tier::Destructive => "destructive",
            Tier::NetworkEgress => "network_egress",
        }
    }

    /// The tier named `read_only`, `low_write`, `destructive` or `network_egress`.
    pub fn parse(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Whether the default policy pauses before running a node of this tier.
    pub fn needs_approval(self) -> bool {
        matches!(self, Tier::Destructive | Tier::NetworkEgress)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown risk tier `{0}` (expected one of: read_only, low_write, destructive, network_egress)"
)]
pub struct UnknownTier(pub String);

impl FromStr for Tier {
    type Err = UnknownTier;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTier(s.to_string()))
    }
}
