//! Webhook signatures: GitHub, Standard Webhooks and a generic HMAC header, checked in
//! constant time against one or more secrets (several while a rotated-out secret is still in its
//! grace period).
//!
//! Pure: no state, no clock (the caller passes `now`), no I/O. The header names and the replay
//! window are data ([`names`], [`TIMESTAMP_TOLERANCE_SECS`]) so they can be reviewed in one place.

use axum::http::HeaderMap;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use secureclaw_engine::model::HookPreset;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Header names each preset reads (lower case, as `HeaderMap` stores them).
pub mod names {
    /// GitHub: `sha256=HEX` of the body.
    pub const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
    /// GitHub: a GUID per delivery (a redelivery keeps it).
    pub const GITHUB_DELIVERY: &str = "x-github-delivery";
    /// GitHub: the event name (`push`, `ping`, ...).
    pub const GITHUB_EVENT: &str = "x-github-event";
    /// Standard Webhooks: the message id (the same on every retry).
    pub const STANDARD_ID: &str = "webhook-id";
    /// Standard Webhooks: seconds since the Unix epoch.
    pub const STANDARD_TIMESTAMP: &str = "webhook-timestamp";
    /// Standard Webhooks: space-separated `v1,BASE64` signatures.
    pub const STANDARD_SIGNATURE: &str = "webhook-signature";
    /// Generic HMAC: the default signature header (`on.webhook.header` overrides it).
    pub const HMAC_SIGNATURE: &str = "x-signature-256";
    /// Generic HMAC: an optional delivery id (without it, deliveries are not de-duplicated).
    pub const HMAC_DELIVERY: &str = "x-delivery-id";
}

/// Standard Webhooks: a timestamp further than this from now, either way, is refused.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;
/// Standard Webhooks: secrets are written `whsec_BASE64`.
pub const STANDARD_SECRET_PREFIX: &str = "whsec_";
/// GitHub and generic HMAC: the scheme prefix before the hex digest.
const SHA256_PREFIX: &str = "sha256=";
/// Standard Webhooks: the only signature version checked (`v1a` is asymmetric, not supported).
const STANDARD_VERSION: &str = "v1";
/// A delivery id longer than this is refused (it becomes a storage key).
pub const MAX_DELIVERY_ID_LEN: usize = 200;

/// Why a delivery was refused. The messages name the check that failed, never the expected
/// value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the `{0}` header is missing")]
    Missing(String),
    #[error("the `{0}` header is not in the preset's format")]
    Malformed(String),
    #[error("no signature matches the body with the trigger's secret")]
    Mismatch,
    #[error("`webhook-timestamp` is not a whole number of seconds")]
    BadTimestamp,
    #[error("`webhook-timestamp` is more than five minutes from the server's clock")]
    Stale,
}

impl SignatureError {
    /// Stable problem code.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing(_) => "signature_missing",
            SignatureError::Malformed(_) => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
            SignatureError::BadTimestamp => "timestamp_invalid",
            SignatureError::Stale => "stale",
        }
    }
}

/// A secret that could not be used with its preset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(pub String);

/// What a verified delivery says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verified {
    /// The sender's delivery id; `None`: the preset has none and this delivery is not
    /// de-duplicated.
    pub delivery: Option<String>,
    /// GitHub's event name.
    pub event: Option<String>,
}

/// How one trigger checks its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheme {
    pub preset: HookPreset,
    /// The generic HMAC preset's header (lower case); ignored by the others.
    pub header: String,
}

impl Scheme {
    pub fn new(preset: HookPreset, header: Option<&str>) -> Self {
        Scheme {
            preset,
            header: header
                .map(str::to_ascii_lowercase)
                .unwrap_or_else(|| names::HMAC_SIGNATURE.to_string()),
        }
    }

    /// The HMAC key a secret stands for: the text itself, or for Standard Webhooks the bytes
    /// of its base64 (after `whsec_`).
    pub fn key(&self, secret: &str) -> Result<Vec<u8>, SecretError> {
        if secret.len() < 16 {
            return Err(SecretError("a secret is at least 16 characters".into()));
        }
        match self.preset {
            HookPreset::StandardWebhooks => {
                let b64 = secret
                    .strip_prefix(STANDARD_SECRET_PREFIX)
                    .unwrap_or(secret);
                let key = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| {
                        SecretError(
                            "a Standard Webhooks secret is `whsec_` and base64 (e.g. what the sender's dashboard shows)"
                                .into(),
                        )
                    })?;
                if key.len() < 16 {
                    return Err(SecretError(
                        "a Standard Webhooks secret holds at least 16 bytes".into(),
                    ));
                }
                Ok(key)
            }
            HookPreset::Github | HookPreset::Hmac => Ok(secret.as_bytes().to_vec()),
        }
    }

    /// A fresh random secret in the preset's format.
    pub fn generate_secret(&self) -> Result<String, SecretError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| SecretError(e.to_string()))?;
        Ok(match self.preset {
            HookPreset::StandardWebhooks => format!(
                "{STANDARD_SECRET_PREFIX}{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            ),
            HookPreset::Github | HookPreset::Hmac => hex::encode(bytes),
        })
    }

    /// Check a delivery against every key in `keys` (the current secret first). `now` is the
    /// server's clock in Unix seconds.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        keys: &[Vec<u8>],
        now: i64,
    ) -> Result<Verified, SignatureError> {
        match self.preset {
            HookPreset::Github => verify_github(headers, body, keys),
            HookPreset::StandardWebhooks => verify_standard(headers, body, keys, now),
            HookPreset::Hmac => verify_hmac(&self.header, headers, body, keys),
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, SignatureError> {
    let value = headers
        .get(name)
        .ok_or_else(|| SignatureError::Missing(name.to_string()))?;
    value
        .to_str()
        .map(str::trim)
        .map_err(|_| SignatureError::Malformed(name.to_string()))
}

fn optional_id(headers: &HeaderMap, name: &str) -> Result<Option<String>, SignatureError> {
    match headers.get(name) {
        None => Ok(None),
        Some(_) => delivery_id(header(headers, name)?, name).map(Some),
    }
}

fn delivery_id(text: &str, name: &str) -> Result<String, SignatureError> {
    let ok = !text.is_empty()
        && text.len() <= MAX_DELIVERY_ID_LEN
        && text.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(text.to_string())
    } else {
        Err(SignatureError::Malformed(name.to_string()))
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of every length, so `new_from_slice` cannot fail; the fallback (an empty
    // key) keeps this total without an unwrap and would only ever fail to match.
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as KeyInit>::new(&Default::default()));
    for p in parts {
        m.update(p);
    }
    m
}

/// True when `expected` is the MAC of `parts` under one of `keys`; each comparison is
/// constant-time (`verify_slice`).
fn any_key_matches(keys: &[Vec<u8>], parts: &[&[u8]], expected: &[u8]) -> bool {
    keys.iter().fold(false, |hit, key| {
        mac(key, parts).verify_slice(expected).is_ok() | hit
    })
}

/// `sha256=HEX` (prefix required) or, for the generic preset, bare hex.
fn hex_digest(text: &str, name: &str, prefix_required: bool) -> Result<Vec<u8>, SignatureError> {
    let digest = match text.strip_prefix(SHA256_PREFIX) {
        Some(d) => d,
        None if prefix_required => return Err(SignatureError::Malformed(name.to_string())),
        None => text,
    };
    match hex::decode(digest) {
        Ok(bytes) if bytes.len() == 32 => Ok(bytes),
        _ => Err(SignatureError::Malformed(name.to_string())),
    }
}

fn verify_github(
    headers: &HeaderMap,
    body: &[u8],
    keys: &[Vec<u8>],
) -> Result<Verified, SignatureError> {
    let given = hex_digest(
        header(headers, names::GITHUB_SIGNATURE)?,
        names::GITHUB_SIGNATURE,
        true,
    )?;
    if !any_key_matches(keys, &[body], &given) {
        return Err(SignatureError::Mismatch);
    }
    Ok(Verified {
        delivery: optional_id(headers, names::GITHUB_DELIVERY)?,
        event: headers
            .get(names::GITHUB_EVENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string()),
    })
}

fn verify_hmac(
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    keys: &[Vec<u8>],
) -> Result<Verified, SignatureError> {
    let given = hex_digest(header(headers, name)?, name, false)?;
    if !any_key_matches(keys, &[body], &given) {
        return Err(SignatureError::Mismatch);
    }
    Ok(Verified {
        delivery: optional_id(headers, names::HMAC_DELIVERY)?,
        event: None,
    })
}

fn verify_standard(
    headers: &HeaderMap,
    body: &[u8],
    keys: &[Vec<u8>],
    now: i64,
) -> Result<Verified, SignatureError> {
    let id = delivery_id(header(headers, names::STANDARD_ID)?, names::STANDARD_ID)?;
    let timestamp = header(headers, names::STANDARD_TIMESTAMP)?;
    let signatures = header(headers, names::STANDARD_SIGNATURE)?;
    let signed: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
    let mut any_v1 = false;
    let mut hit = false;
    for entry in signatures.split(' ').filter(|s| !s.is_empty()) {
        let Some((version, sig)) = entry.split_once(',') else {
            continue;
        };
        if version != STANDARD_VERSION {
            continue;
        }
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig) else {
            continue;
        };
        any_v1 = true;
        hit |= any_key_matches(keys, &signed, &sig);
    }
    if !any_v1 {
        return Err(SignatureError::Malformed(
            names::STANDARD_SIGNATURE.to_string(),
        ));
    }
    if !hit {
        return Err(SignatureError::Mismatch);
    }
    // Checked after the signature, so only an authentic sender learns that its clock is off.
    let sent: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if (now - sent).abs() > TIMESTAMP_TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    Ok(Verified {
        delivery: Some(id),
        event: None,
    })
}

/// The GitHub signature header value for `body` (`sha256=HEX`): for senders, tests and the
/// benchmark.
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    format!(
        "{SHA256_PREFIX}{}",
        hex::encode(mac(secret, &[body]).finalize().into_bytes())
    )
}

/// The Standard Webhooks signature header value (`v1,BASE64`).
pub fn standard_signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let m = mac(
        key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    format!(
        "{STANDARD_VERSION},{}",
        base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIG: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1_614_265_330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn github() -> Scheme {
        Scheme::new(HookPreset::Github, None)
    }

    fn standard() -> Scheme {
        Scheme::new(HookPreset::StandardWebhooks, None)
    }

    fn gh_keys() -> Vec<Vec<u8>> {
        vec![github().key(GITHUB_SECRET).unwrap()]
    }

    fn sw_keys() -> Vec<Vec<u8>> {
        vec![standard().key(SW_SECRET).unwrap()]
    }

    fn sw_headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        headers(&[
            (names::STANDARD_ID, id),
            (names::STANDARD_TIMESTAMP, ts),
            (names::STANDARD_SIGNATURE, sig),
        ])
    }

    #[test]
    fn githubs_documented_example_verifies() {
        assert_eq!(
            github_signature(GITHUB_SECRET.as_bytes(), GITHUB_BODY),
            GITHUB_SIG
        );
        let h = headers(&[
            (names::GITHUB_SIGNATURE, GITHUB_SIG),
            (
                names::GITHUB_DELIVERY,
                "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            ),
            (names::GITHUB_EVENT, "push"),
        ]);
        let v = github().verify(&h, GITHUB_BODY, &gh_keys(), 0).unwrap();
        assert_eq!(
            v.delivery.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        assert_eq!(v.event.as_deref(), Some("push"));
    }

    #[test]
    fn the_standard_webhooks_reference_vector_verifies() {
        assert_eq!(
            standard_signature(&sw_keys()[0], SW_ID, &SW_TS.to_string(), SW_BODY),
            SW_SIG
        );
        let h = sw_headers(SW_ID, &SW_TS.to_string(), SW_SIG);
        let v = standard().verify(&h, SW_BODY, &sw_keys(), SW_TS).unwrap();
        assert_eq!(v.delivery.as_deref(), Some(SW_ID));
    }

    #[test]
    fn github_attacks_are_refused_with_the_check_that_failed() {
        let keys = gh_keys();
        let check = |sig: &str, body: &[u8], keys: &[Vec<u8>]| {
            github()
                .verify(&headers(&[(names::GITHUB_SIGNATURE, sig)]), body, keys, 0)
                .unwrap_err()
        };
        // A flipped byte (last hex digit 7 -> 6).
        let flipped = format!("{}6", &GITHUB_SIG[..GITHUB_SIG.len() - 1]);
        assert_eq!(
            check(&flipped, GITHUB_BODY, &keys),
            SignatureError::Mismatch
        );
        // The right signature for another body.
        assert_eq!(
            check(GITHUB_SIG, b"Hello, World?", &keys),
            SignatureError::Mismatch
        );
        // The wrong secret.
        let other = vec![b"It's a Secret to Nobody".to_vec()];
        assert_eq!(
            check(GITHUB_SIG, GITHUB_BODY, &other),
            SignatureError::Mismatch
        );
        // Truncated, not hex, without the scheme, SHA-1 scheme.
        for bad in [
            &GITHUB_SIG[..GITHUB_SIG.len() - 2],
            "sha256=zz",
            &GITHUB_SIG["sha256=".len()..],
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d",
        ] {
            assert_eq!(
                check(bad, GITHUB_BODY, &keys).code(),
                "signature_malformed",
                "{bad}"
            );
        }
        // No header at all.
        let e = github()
            .verify(&HeaderMap::new(), GITHUB_BODY, &keys, 0)
            .unwrap_err();
        assert_eq!(e, SignatureError::Missing(names::GITHUB_SIGNATURE.into()));
        // The message never holds the expected digest.
        assert!(!e.to_string().contains("757107"));
    }

    #[test]
    fn a_rotated_out_key_still_matches_while_it_is_offered() {
        let keys = vec![b"the-new-secret-0123456789".to_vec(), gh_keys().remove(0)];
        let h = headers(&[(names::GITHUB_SIGNATURE, GITHUB_SIG)]);
        assert!(github().verify(&h, GITHUB_BODY, &keys, 0).is_ok());
        assert!(github().verify(&h, GITHUB_BODY, &keys[..1], 0).is_err());
    }

    #[test]
    fn standard_webhooks_attacks_are_refused() {
        let keys = sw_keys();
        let ts = SW_TS.to_string();
        let verify = |h: &HeaderMap, body: &[u8], now: i64| standard().verify(h, body, &keys, now);
        // Another body, another id, another timestamp under the same signature.
        assert_eq!(
            verify(
                &sw_headers(SW_ID, &ts, SW_SIG),
                br#"{"test": 2432232315}"#,
                SW_TS
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&sw_headers("msg_other", &ts, SW_SIG), SW_BODY, SW_TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&sw_headers(SW_ID, "1614265331", SW_SIG), SW_BODY, SW_TS),
            Err(SignatureError::Mismatch)
        );
        // A `v1a` (asymmetric) signature with the same bytes is not a `v1` one.
        let v1a = SW_SIG.replacen("v1,", "v1a,", 1);
        assert_eq!(
            verify(&sw_headers(SW_ID, &ts, &v1a), SW_BODY, SW_TS)
                .unwrap_err()
                .code(),
            "signature_malformed"
        );
        // Truncated signature.
        assert_eq!(
            verify(
                &sw_headers(SW_ID, &ts, &SW_SIG[..SW_SIG.len() - 4]),
                SW_BODY,
                SW_TS
            ),
            Err(SignatureError::Mismatch)
        );
        // Several signatures: one good one among bad ones passes; only bad ones do not.
        let several = format!("v1,AAAA v1a,{} {SW_SIG}", &SW_SIG[3..]);
        assert!(verify(&sw_headers(SW_ID, &ts, &several), SW_BODY, SW_TS).is_ok());
        assert_eq!(
            verify(&sw_headers(SW_ID, &ts, "v1,AAAA v1,BBBB"), SW_BODY, SW_TS),
            Err(SignatureError::Mismatch)
        );
        // Wrong secret.
        let other = vec![
            standard()
                .key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSx")
                .unwrap(),
        ];
        assert_eq!(
            standard().verify(&sw_headers(SW_ID, &ts, SW_SIG), SW_BODY, &other, SW_TS),
            Err(SignatureError::Mismatch)
        );
        // Each missing header is named.
        for missing in [
            names::STANDARD_ID,
            names::STANDARD_TIMESTAMP,
            names::STANDARD_SIGNATURE,
        ] {
            let mut h = sw_headers(SW_ID, &ts, SW_SIG);
            h.remove(missing);
            assert_eq!(
                verify(&h, SW_BODY, SW_TS),
                Err(SignatureError::Missing(missing.into()))
            );
        }
    }

    #[test]
    fn standard_webhooks_timestamps_hold_five_minutes_either_way() {
        let keys = sw_keys();
        let h = sw_headers(SW_ID, &SW_TS.to_string(), SW_SIG);
        let at = |now: i64| standard().verify(&h, SW_BODY, &keys, now);
        assert!(at(SW_TS + 5 * 60).is_ok());
        assert!(at(SW_TS - 5 * 60).is_ok());
        // Six minutes old, six minutes in the future.
        assert_eq!(at(SW_TS + 6 * 60), Err(SignatureError::Stale));
        assert_eq!(at(SW_TS - 6 * 60), Err(SignatureError::Stale));
        // A signed, non-numeric timestamp.
        let key = &keys[0];
        let sig = standard_signature(key, SW_ID, "soon", SW_BODY);
        let h = sw_headers(SW_ID, "soon", &sig);
        assert_eq!(
            standard().verify(&h, SW_BODY, &keys, SW_TS),
            Err(SignatureError::BadTimestamp)
        );
    }

    #[test]
    fn generic_hmac_reads_its_header_with_or_without_the_scheme() {
        let scheme = Scheme::new(HookPreset::Hmac, Some("X-Acme-Signature"));
        let keys = vec![b"a generic shared secret".to_vec()];
        let full = github_signature(&keys[0], b"{}");
        let bare = full.trim_start_matches("sha256=").to_string();
        for sig in [&full, &bare] {
            let h = headers(&[("x-acme-signature", sig), (names::HMAC_DELIVERY, "d-1")]);
            let v = scheme.verify(&h, b"{}", &keys, 0).unwrap();
            assert_eq!(v.delivery.as_deref(), Some("d-1"));
        }
        // No delivery id: verified, not de-duplicated.
        let h = headers(&[("x-acme-signature", &full)]);
        assert_eq!(scheme.verify(&h, b"{}", &keys, 0).unwrap().delivery, None);
        // The default header is not read when another is configured.
        let h = headers(&[(names::HMAC_SIGNATURE, &full)]);
        assert_eq!(
            scheme.verify(&h, b"{}", &keys, 0),
            Err(SignatureError::Missing("x-acme-signature".into()))
        );
        // A delivery id that would escape its storage key.
        let h = headers(&[("x-acme-signature", &full), (names::HMAC_DELIVERY, "a/b")]);
        assert_eq!(
            scheme.verify(&h, b"{}", &keys, 0).unwrap_err().code(),
            "signature_malformed"
        );
    }

    #[test]
    fn secrets_are_checked_and_generated_in_the_presets_format() {
        assert!(github().key("short").is_err());
        assert!(standard().key("whsec_not base64!!!!!!").is_err());
        let generated = standard().generate_secret().unwrap();
        assert!(generated.starts_with(STANDARD_SECRET_PREFIX));
        assert_eq!(standard().key(&generated).unwrap().len(), 32);
        let hex_secret = github().generate_secret().unwrap();
        assert_eq!(hex_secret.len(), 64);
        assert_ne!(hex_secret, github().generate_secret().unwrap());
    }
}
