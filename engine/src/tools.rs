//! What the command line's tool commands need from the leaf crates, named here so the CLI
//! depends on the engine alone. Each list is the exact set those commands use; a new use
//! is a reviewed addition to this file, not a new dependency edge.

/// `secureclaw guard`: the prompt-injection detector, the secret scrubber, the model files.
pub mod guard {
    pub use secureclaw_llm::models::{
        MODEL_FILE, ModelFiles, RUNTIME_FILE, TOKENIZER_FILE, models_dir,
    };
    pub use secureclaw_llm::{
        Detector, ModelError, ModelTier, RiskRaise, Scrubber, SemanticStatus, Verdict,
        attach_semantic, load_risk_model,
    };
}

/// `secureclaw risk`: the heuristic shell classifier.
pub mod risk {
    pub use secureclaw_risk::{Assessment, Tier, classify_shell};
}

/// `secureclaw sandbox`: backend checks and the offline Docker image build; the helper entry
/// point the binary must call first.
pub mod sandbox {
    pub use secureclaw_sandbox::docker::profile::repository_profile;
    pub use secureclaw_sandbox::docker::server_profile::server_profile_pretty;
    pub use secureclaw_sandbox::docker::{
        DockerSandbox, ImageRecipe, RUNTIME_VAR as DOCKER_RUNTIME_VAR, build_image,
        image::LATEST_IMAGE, versioned_image,
    };
    pub use secureclaw_sandbox::native::accept::ACCEPTED_MARK;
    pub use secureclaw_sandbox::{
        BACKENDS, DEFAULT_BACKEND, ExecSpec, Layer, by_name, run_helper_if_requested,
    };
}

/// `secureclaw show`: how the egress proxy decided a connection attempt.
pub mod egress {
    pub use secureclaw_egress::Decision;
}

/// `secureclaw vault` and `secureclaw ledger`: the vault's own administration API (init,
/// rekey, status, ledger export and offline verification of an export).
pub mod vault {
    pub use secureclaw_vault::{
        ExportHead, KdfParams, Ledger, LedgerError, LedgerKey, PassphraseSource, Vault, VaultError,
        kind, parse_export_head, verify_export,
    };
}
