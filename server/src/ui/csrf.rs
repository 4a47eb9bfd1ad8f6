//! The session cookie and CSRF tokens of the web UI.
//!
//! The cookie holds the same signed token the API takes as `Authorization: Bearer`, so a page
//! and an API call made from it are authorised by the same code. Because a browser sends the
//! cookie by itself, every state-changing request that rides on it must also prove it came from
//! one of our pages: forms carry a `csrf` field, `fetch` calls an `X-CSRF-Token` header. The
//! token is an HMAC of the session id under a key held in memory (sessions live in memory too,
//! so a restart ends both). Before sign-in, forms use a random cookie and its HMAC
//! (double submit), so a login or registration cannot be forged from another site either.

use axum::http::{HeaderMap, HeaderValue, header};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// The session cookie: the API token, `HttpOnly; Secure; SameSite=Strict`.
pub const SESSION_COOKIE: &str = "sc_session";
/// The anonymous cookie that binds pre-sign-in forms to this browser.
pub const ANON_COOKIE: &str = "sc_anon";
/// The header `fetch` calls carry their token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field forms carry their token in.
pub const CSRF_FIELD: &str = "csrf";

/// Derives and checks CSRF tokens.
pub struct CsrfKey {
    key: zeroize::Zeroizing<[u8; 32]>,
}

impl CsrfKey {
    /// A fresh random key (tokens do not outlive the process, nor do sessions).
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut())?;
        Ok(CsrfKey { key })
    }

    fn mac(&self, purpose: &str, value: &str) -> String {
        // HMAC takes keys of any length; 32 bytes is always accepted.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.key.as_ref()) else {
            return String::new();
        };
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The token of a signed-in session.
    pub fn for_session(&self, session_id: &str) -> String {
        self.mac("session", session_id)
    }

    /// The token of an anonymous browser (its `sc_anon` cookie).
    pub fn for_anonymous(&self, anon: &str) -> String {
        self.mac("anonymous", anon)
    }

    /// Does `given` match the session's token?
    pub fn check_session(&self, session_id: &str, given: &str) -> bool {
        same(&self.for_session(session_id), given)
    }

    /// Does `given` match the anonymous cookie's token?
    pub fn check_anonymous(&self, anon: &str, given: &str) -> bool {
        !anon.is_empty() && same(&self.for_anonymous(anon), given)
    }
}

fn same(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// A cookie of the request, by name.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` for a value the page's scripts never read.
pub fn set_cookie(name: &str, value: &str, max_age_secs: u64) -> Option<HeaderValue> {
    let c = axum_extra::extract::cookie::Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .secure(true)
        .same_site(axum_extra::extract::cookie::SameSite::Strict)
        .max_age(time::Duration::seconds(
            i64::try_from(max_age_secs).unwrap_or(i64::MAX),
        ))
        .build();
    HeaderValue::from_str(&c.to_string()).ok()
}

/// `Set-Cookie` that removes a cookie.
pub fn clear_cookie(name: &str) -> Option<HeaderValue> {
    set_cookie(name, "", 0)
}

/// A new random value for the anonymous cookie.
pub fn new_anonymous() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b)?;
    Ok(hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_their_session_and_key() {
        let k = CsrfKey::generate().unwrap();
        let t = k.for_session("s1");
        assert!(k.check_session("s1", &t));
        assert!(!k.check_session("s2", &t));
        assert!(!k.check_session("s1", ""));
        assert!(!k.check_session("s1", &t[..t.len() - 1]));
        // Another key (another process) does not accept it.
        assert!(!CsrfKey::generate().unwrap().check_session("s1", &t));
        // A session token is no anonymous token, and an empty cookie has none.
        assert!(!k.check_anonymous("s1", &t));
        assert!(!k.check_anonymous("", &k.for_anonymous("")));
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("xsc_session=evil; sc_session=tok; other=1"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn the_session_cookie_is_http_only_secure_and_strict() {
        let v = set_cookie(SESSION_COOKIE, "tok", 60).unwrap();
        let v = v.to_str().unwrap();
        for part in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(v.contains(part), "{v}");
        }
    }
}
