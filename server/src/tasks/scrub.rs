//! Output text on its way out of the server.
//!
//! The engine already replaces the values of `secret: true` inputs in events and records; with
//! `PII_SCRUB_ENABLED` the built-in scrubber also replaces what looks like a credential or
//! personal data (API keys, tokens, e-mail addresses...) before a stream or a response carries
//! it.

use secureclaw_engine::tools::guard::Scrubber;

use crate::error::ApiError;

/// The scrubber a response uses: the built-in patterns, or none when scrubbing is off.
#[derive(Clone, Copy)]
pub struct OutputScrubber {
    scrubber: Option<&'static Scrubber>,
}

impl OutputScrubber {
    pub fn new(enabled: bool) -> Result<Self, ApiError> {
        let scrubber = if enabled {
            Some(
                Scrubber::builtin()
                    .map_err(|e| ApiError::internal(format!("loading the scrubber: {e}")))?,
            )
        } else {
            None
        };
        Ok(OutputScrubber { scrubber })
    }

    pub fn text(&self, text: &str) -> String {
        match self.scrubber {
            Some(s) if !text.is_empty() => s.scrub(text).0,
            _ => text.to_string(),
        }
    }

    /// The free-text fields of an event envelope (output, messages, reasons, rendered
    /// commands); ids, kinds and numbers are left alone.
    pub fn event(&self, envelope: &mut serde_json::Value) {
        if self.scrubber.is_none() {
            return;
        }
        if let Some(map) = envelope.as_object_mut() {
            for key in ["text", "message", "reason", "summary", "detail"] {
                if let Some(serde_json::Value::String(s)) = map.get_mut(key) {
                    *s = self.text(s);
                }
            }
        }
    }
}
