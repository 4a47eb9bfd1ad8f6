//! RFC 6238 codes (SHA-1, 6 digits, 30 s steps, one step of skew either way), each accepted at
//! most once: an account remembers the last step it accepted and refuses that step and any
//! earlier one.

use serde::Serialize;
use totp_rs::{Algorithm, Builder, Secret, Totp};
use utoipa::ToSchema;

use super::accounts::TotpState;
use crate::error::ApiError;

const DIGITS: u8 = 6;
const STEP_SECONDS: u64 = 30;
const SKEW_STEPS: u16 = 1;

/// What an authenticator app needs to produce codes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TotpSetup {
    /// `otpauth://totp/ISSUER:USER?secret=...&issuer=ISSUER` (a QR code of it is what apps
    /// scan).
    pub otpauth_url: String,
    /// The same secret, base32, for typing in by hand.
    pub secret: String,
    /// Whether sign-in asks for a code yet (`POST /api/v1/auth/2fa/enable` turns it on).
    pub enabled: bool,
}

/// A fresh, not yet enabled, TOTP state.
pub fn fresh_state() -> TotpState {
    TotpState {
        secret: Secret::generate().to_base32(),
        enabled: false,
        last_step: None,
    }
}

fn totp(secret: &str, issuer: &str, username: &str) -> Result<Totp, ApiError> {
    let secret = Secret::try_from_base32(secret)
        .map_err(|e| ApiError::internal(format!("TOTP secret: {e:?}")))?;
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS)
        .with_skew(SKEW_STEPS)
        .with_step_duration(STEP_SECONDS)
        .with_secret(secret)
        .with_issuer(Some(issuer))
        .with_account_name(username)
        .build()
        .map_err(|e| ApiError::internal(format!("TOTP parameters: {e}")))
}

/// The setup an authenticator app scans.
pub fn setup(state: &TotpState, issuer: &str, username: &str) -> Result<TotpSetup, ApiError> {
    Ok(TotpSetup {
        otpauth_url: totp(&state.secret, issuer, username)?
            .to_url()
            .map_err(|e| ApiError::internal(format!("TOTP URL: {e}")))?,
        secret: state.secret.clone(),
        enabled: state.enabled,
    })
}

/// Why a code was refused (recorded in the ledger; the client hears only "wrong code").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeRefused {
    Wrong,
    Replayed,
}

impl CodeRefused {
    pub fn reason(self) -> &'static str {
        match self {
            CodeRefused::Wrong => "bad code",
            CodeRefused::Replayed => "replayed code",
        }
    }
}

/// Check `code` at `unix_time` against the state; on success, the step it matched (store it
/// in `last_step`).
pub fn check(
    state: &TotpState,
    issuer: &str,
    username: &str,
    code: &str,
    unix_time: u64,
) -> Result<Result<u64, CodeRefused>, ApiError> {
    let code = code.trim();
    if code.len() != usize::from(DIGITS) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Err(CodeRefused::Wrong));
    }
    let t = totp(&state.secret, issuer, username)?;
    let now_step = unix_time / STEP_SECONDS;
    let skew = u64::from(SKEW_STEPS);
    let mut replayed = false;
    for step in now_step.saturating_sub(skew)..=now_step + skew {
        if !constant_time_eq(
            t.generate(step * STEP_SECONDS).to_string().as_bytes(),
            code.as_bytes(),
        ) {
            continue;
        }
        if state.last_step.is_some_and(|last| step <= last) {
            replayed = true;
            continue;
        }
        return Ok(Ok(step));
    }
    Ok(Err(if replayed {
        CodeRefused::Replayed
    } else {
        CodeRefused::Wrong
    }))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_at(state: &TotpState, t: u64) -> String {
        totp(&state.secret, "Issuer", "ann")
            .unwrap()
            .generate(t)
            .to_string()
    }

    #[test]
    fn a_code_is_accepted_once_and_earlier_steps_never() {
        let mut s = fresh_state();
        let t = 1_700_000_000;
        let code = code_at(&s, t);
        let step = check(&s, "Issuer", "ann", &code, t).unwrap().unwrap();
        assert_eq!(step, t / 30);
        s.last_step = Some(step);
        assert_eq!(
            check(&s, "Issuer", "ann", &code, t).unwrap(),
            Err(CodeRefused::Replayed)
        );
        let earlier = code_at(&s, t - 30);
        assert!(check(&s, "Issuer", "ann", &earlier, t).unwrap().is_err());
        let next = code_at(&s, t + 30);
        assert_eq!(
            check(&s, "Issuer", "ann", &next, t + 30).unwrap(),
            Ok(step + 1)
        );
    }

    #[test]
    fn skew_is_one_step_either_way() {
        let s = fresh_state();
        let t = 1_700_000_010;
        assert!(
            check(&s, "I", "ann", &code_at(&s, t - 30), t)
                .unwrap()
                .is_ok()
        );
        assert!(
            check(&s, "I", "ann", &code_at(&s, t + 30), t)
                .unwrap()
                .is_ok()
        );
        assert!(
            check(&s, "I", "ann", &code_at(&s, t - 90), t)
                .unwrap()
                .is_err()
        );
        assert!(check(&s, "I", "ann", "12345", t).unwrap().is_err());
        assert!(check(&s, "I", "ann", "abcdef", t).unwrap().is_err());
    }

    #[test]
    fn the_setup_url_names_the_issuer() {
        let s = fresh_state();
        let u = setup(&s, "SecureClawAgent", "ann").unwrap();
        assert!(
            u.otpauth_url
                .starts_with("otpauth://totp/SecureClawAgent:ann?"),
            "{}",
            u.otpauth_url
        );
        assert!(u.otpauth_url.contains(&format!("secret={}", s.secret)));
    }
}
