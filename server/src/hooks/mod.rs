//! Signed webhook triggers: an admin binds a trigger name to a workflow of a registered source
//! (`/api/v1/triggers`), and `POST /api/v1/hooks/{name}` starts it when a delivery's signature
//! holds.
//!
//! ```text
//! POST /hooks/{name} ─► body cap (413) ─► known trigger (404) ─► application/json (415)
//!   ─► signature, timestamp window (401) ─► enabled (403) ─► delivery id seen? (200, first run)
//!   ─► fetch the source, map + type + screen the inputs (422) ─► launch (202, runs on)
//! ```
//!
//! Every delivery that names a trigger, whatever its outcome, goes to the ledger and to the
//! trigger's delivery list. docs/webhooks.md describes the presets and the operator's side.

pub mod receive;
pub mod routes;
pub mod signature;
pub mod source;
pub mod store;

use secureclaw_engine::tools::guard::Detector;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

/// What the trigger handlers share.
pub struct HookService {
    /// Screens every string a payload maps to an input; `None` when the operator turned
    /// injection detection off (`PROMPT_INJECTION_DETECT_ENABLED=false`).
    pub detector: Option<Detector>,
}

impl HookService {
    /// The process's one detector (the engine's screener: unicode and regex layers, and the
    /// semantic layer when this build has it and the model is installed, loaded once), shared
    /// with the runs that screen step output.
    pub fn new(injection_detect: bool) -> Result<Self, String> {
        let detector = if injection_detect {
            let screener = secureclaw_engine::screen::Screener::shared();
            Some(
                screener
                    .detector()
                    .cloned()
                    .ok_or_else(|| format!("the injection detector: {}", screener.status()))?,
            )
        } else {
            None
        };
        Ok(HookService { detector })
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(routes::create_trigger, routes::list_triggers))
        .routes(routes!(routes::get_trigger, routes::delete_trigger))
        .routes(routes!(routes::disable_trigger))
        .routes(routes!(routes::enable_trigger))
        .routes(routes!(routes::rotate_secret))
        .routes(routes!(routes::list_deliveries))
        .routes(routes!(receive::receive))
}

/// The server's clock in Unix seconds.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
