//! Login tickets: proof that a password was right, waiting for the TOTP code. A ticket is not
//! an access token (no endpoint but `login/totp` takes it), lives a few minutes, and is spent
//! by its first use, right code or not.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

struct Ticket {
    user_id: String,
    expires: Instant,
}

pub struct Tickets {
    ttl: Duration,
    cap: usize,
    by_token: Mutex<HashMap<String, Ticket>>,
}

impl Tickets {
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Tickets {
            ttl,
            cap: cap.max(1),
            by_token: Mutex::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new ticket for `user_id`.
    pub fn issue(&self, user_id: &str) -> Result<String, ApiError> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| ApiError::internal(e.to_string()))?;
        let token = hex::encode(raw);
        let now = Instant::now();
        let mut m = self
            .by_token
            .lock()
            .map_err(|_| ApiError::internal("login tickets unavailable"))?;
        m.retain(|_, t| t.expires > now);
        while m.len() >= self.cap {
            // Under a flood, the ticket closest to expiring goes first.
            let Some(first) = m
                .iter()
                .min_by_key(|(_, t)| t.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            m.remove(&first);
        }
        m.insert(
            token.clone(),
            Ticket {
                user_id: user_id.to_string(),
                expires: now + self.ttl,
            },
        );
        Ok(token)
    }

    /// Spend a ticket: the user it was issued to, if it exists and has not expired.
    pub fn redeem(&self, token: &str) -> Option<String> {
        let mut m = self.by_token.lock().ok()?;
        let t = m.remove(token)?;
        (t.expires > Instant::now()).then_some(t.user_id)
    }

    /// Drop every ticket of a user (their 2FA changed).
    pub fn forget_user(&self, user_id: &str) {
        if let Ok(mut m) = self.by_token.lock() {
            m.retain(|_, t| t.user_id != user_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_spent_by_its_first_use() {
        let t = Tickets::new(Duration::from_secs(60), 10);
        let k = t.issue("u1").unwrap();
        assert_eq!(t.redeem(&k).as_deref(), Some("u1"));
        assert_eq!(t.redeem(&k), None);
        assert_eq!(t.redeem("not-a-ticket"), None);
    }

    #[test]
    fn an_expired_ticket_is_refused_and_the_table_is_bounded() {
        let t = Tickets::new(Duration::ZERO, 2);
        let k = t.issue("u1").unwrap();
        assert_eq!(t.redeem(&k), None);
        let t = Tickets::new(Duration::from_secs(60), 2);
        for _ in 0..10 {
            t.issue("u").unwrap();
        }
        assert!(t.by_token.lock().unwrap().len() <= 2);
    }
}
