//! Sign-in throttling: exponential backoff and lockout per account and per client address, and
//! a cap on registrations per address. Everything is in memory with a bounded number of
//! entries, so a flood of distinct names or addresses cannot grow it without limit.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// Thresholds, from the environment (documented in docs/auth.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLimits {
    /// `SECURECLAW_LOGIN_BACKOFF_AFTER` (3): failures of one account before each further
    /// attempt must wait.
    pub backoff_after: u32,
    /// `SECURECLAW_LOGIN_MAX_FAILURES` (10): failures of one account that lock it.
    pub max_failures: u32,
    /// `SECURECLAW_LOGIN_WINDOW_SECONDS` (900): failures older than this are forgotten.
    pub window: Duration,
    /// `SECURECLAW_LOCKOUT_SECONDS` (900): how long a locked account stays locked.
    pub lockout: Duration,
    /// `SECURECLAW_LOGIN_BACKOFF_BASE_SECONDS` (1): the first wait; it doubles per failure.
    pub backoff_base: Duration,
    /// `SECURECLAW_LOGIN_BACKOFF_MAX_SECONDS` (300): the longest wait.
    pub backoff_max: Duration,
    /// `SECURECLAW_ADDR_BACKOFF_AFTER` (20): failures from one client address (any account)
    /// before its attempts must wait.
    pub addr_backoff_after: u32,
    /// `SECURECLAW_REGISTER_MAX_PER_WINDOW` (20) accounts per client address per
    /// `SECURECLAW_REGISTER_WINDOW_SECONDS` (3600).
    pub register_max: u32,
    pub register_window: Duration,
    /// `SECURECLAW_AUTH_TRACKED_MAX` (10000): accounts or addresses remembered per table.
    pub tracked_max: usize,
    /// `SECURECLAW_LOGIN_TICKET_SECONDS` (300): how long a password-checked sign-in waits for
    /// its TOTP code.
    pub ticket_ttl: Duration,
}

/// A limit variable that does not hold a usable number.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: expected a whole number of at least {min}")]
pub struct LimitError {
    pub name: String,
    pub value: String,
    pub min: u64,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            backoff_after: 3,
            max_failures: 10,
            window: Duration::from_secs(900),
            lockout: Duration::from_secs(900),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            addr_backoff_after: 20,
            register_max: 20,
            register_window: Duration::from_secs(3600),
            tracked_max: 10_000,
            ticket_ttl: Duration::from_secs(300),
        }
    }
}

impl AuthLimits {
    pub fn from_env() -> Result<Self, LimitError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Defaults, then the variables `get` knows.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, LimitError> {
        let mut l = AuthLimits::default();
        let num = |name: &str, min: u64| -> Result<Option<u64>, LimitError> {
            let Some(v) = get(name).filter(|v| !v.trim().is_empty()) else {
                return Ok(None);
            };
            match v.trim().parse::<u64>() {
                Ok(n) if n >= min => Ok(Some(n)),
                _ => Err(LimitError {
                    name: name.to_string(),
                    value: v,
                    min,
                }),
            }
        };
        let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(n) = num("SECURECLAW_LOGIN_BACKOFF_AFTER", 1)? {
            l.backoff_after = count(n);
        }
        if let Some(n) = num("SECURECLAW_LOGIN_MAX_FAILURES", 1)? {
            l.max_failures = count(n);
        }
        if let Some(n) = num("SECURECLAW_LOGIN_WINDOW_SECONDS", 1)? {
            l.window = Duration::from_secs(n);
        }
        if let Some(n) = num("SECURECLAW_LOCKOUT_SECONDS", 1)? {
            l.lockout = Duration::from_secs(n);
        }
        if let Some(n) = num("SECURECLAW_LOGIN_BACKOFF_BASE_SECONDS", 1)? {
            l.backoff_base = Duration::from_secs(n);
        }
        if let Some(n) = num("SECURECLAW_LOGIN_BACKOFF_MAX_SECONDS", 1)? {
            l.backoff_max = Duration::from_secs(n);
        }
        if let Some(n) = num("SECURECLAW_ADDR_BACKOFF_AFTER", 1)? {
            l.addr_backoff_after = count(n);
        }
        if let Some(n) = num("SECURECLAW_REGISTER_MAX_PER_WINDOW", 1)? {
            l.register_max = count(n);
        }
        if let Some(n) = num("SECURECLAW_REGISTER_WINDOW_SECONDS", 1)? {
            l.register_window = Duration::from_secs(n);
        }
        if let Some(n) = num("SECURECLAW_AUTH_TRACKED_MAX", 100)? {
            l.tracked_max = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = num("SECURECLAW_LOGIN_TICKET_SECONDS", 10)? {
            l.ticket_ttl = Duration::from_secs(n);
        }
        Ok(l)
    }

    /// The wait after `failures` failures once backoff has begun at `after`.
    fn backoff(&self, failures: u32, after: u32) -> Option<Duration> {
        let over = failures.checked_sub(after)?;
        let factor = 1u32.checked_shl(over.min(20)).unwrap_or(u32::MAX);
        Some(
            self.backoff_base
                .saturating_mul(factor)
                .min(self.backoff_max),
        )
    }
}

/// Why an attempt may not go ahead now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many recent failures: wait this long.
    Backoff(Duration),
    /// The account is locked for this long, whatever the password.
    Locked(Duration),
}

impl Refusal {
    pub fn into_error(self) -> ApiError {
        match self {
            Refusal::Backoff(d) => ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many failed sign-ins: wait before trying again",
            )
            .retry_after(whole_seconds(d)),
            Refusal::Locked(d) => ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "locked_out",
                "this account is locked after repeated failed sign-ins",
            )
            .with_hint("wait for the lockout to pass, or ask an administrator")
            .retry_after(whole_seconds(d)),
        }
    }
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// What a recorded failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    Counted,
    /// This failure locked the account (the ledger must hear of it).
    LockedNow,
}

#[derive(Debug, Clone)]
struct Strikes {
    failures: u32,
    first: Instant,
    last: Instant,
    wait_until: Option<Instant>,
    locked_until: Option<Instant>,
}

impl Strikes {
    fn fresh(now: Instant) -> Self {
        Strikes {
            failures: 0,
            first: now,
            last: now,
            wait_until: None,
            locked_until: None,
        }
    }

    fn is_stale(&self, now: Instant, window: Duration) -> bool {
        let locked = self.locked_until.is_some_and(|t| t > now);
        let waiting = self.wait_until.is_some_and(|t| t > now);
        !locked && !waiting && now.duration_since(self.first) >= window
    }
}

/// A bounded map of keys to their strikes.
struct Table<V> {
    entries: HashMap<String, V>,
    cap: usize,
}

impl<V> Table<V> {
    fn new(cap: usize) -> Self {
        Table {
            entries: HashMap::new(),
            cap,
        }
    }

    /// Make room for one more entry: drop the stale ones, then the least recently touched.
    fn make_room(&mut self, stale: impl Fn(&V) -> bool, last: impl Fn(&V) -> Instant) {
        if self.entries.len() < self.cap {
            return;
        }
        self.entries.retain(|_, v| !stale(v));
        while self.entries.len() >= self.cap {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, v)| last(v))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

/// The throttle every sign-in and registration passes through.
pub struct Throttle {
    limits: AuthLimits,
    accounts: Mutex<Table<Strikes>>,
    /// Account names with a password check under way: one at a time per name, or a burst of
    /// parallel guesses would all pass the check before the first failure is counted.
    checking: Mutex<HashSet<String>>,
    addrs: Mutex<Table<Strikes>>,
    registrations: Mutex<Table<(Instant, u32)>>,
}

/// The key of an account in the throttle: the name as typed, folded, whether or not such an
/// account exists (so unknown names behave exactly like known ones). A name longer than any
/// account's is kept as its hash, so each entry stays small.
fn account_key(username: &str) -> String {
    let folded = username.trim().to_lowercase();
    if folded.len() <= super::accounts::MAX_USERNAME_LEN {
        return folded;
    }
    use sha2::Digest as _;
    format!("#{}", hex::encode(sha2::Sha256::digest(folded.as_bytes())))
}

/// The key of a client address: IPv4 as is, IPv6 by its /64 (one host usually holds a whole
/// /64, and could otherwise take a fresh address for each attempt).
fn addr_key(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl Throttle {
    pub fn new(limits: AuthLimits) -> Self {
        let cap = limits.tracked_max.max(1);
        Throttle {
            limits,
            accounts: Mutex::new(Table::new(cap)),
            checking: Mutex::new(HashSet::new()),
            addrs: Mutex::new(Table::new(cap)),
            registrations: Mutex::new(Table::new(cap)),
        }
    }

    pub fn limits(&self) -> &AuthLimits {
        &self.limits
    }

    /// May a sign-in for `username` from `addr` go ahead now?
    pub fn check(&self, username: &str, addr: IpAddr) -> Result<(), Refusal> {
        let now = Instant::now();
        if let Ok(t) = self.accounts.lock()
            && let Some(s) = t.entries.get(&account_key(username))
        {
            if let Some(until) = s.locked_until.filter(|u| *u > now) {
                return Err(Refusal::Locked(until - now));
            }
            if let Some(until) = s.wait_until.filter(|u| *u > now) {
                return Err(Refusal::Backoff(until - now));
            }
        }
        if let Ok(t) = self.addrs.lock()
            && let Some(s) = t.entries.get(&addr_key(addr))
            && let Some(until) = s.wait_until.filter(|u| *u > now)
        {
            return Err(Refusal::Backoff(until - now));
        }
        Ok(())
    }

    /// [`Throttle::check`], and claim the name's one password check until the guard drops;
    /// a second check of the same name meanwhile must wait a second.
    pub fn begin(&self, username: &str, addr: IpAddr) -> Result<Attempt<'_>, Refusal> {
        self.check(username, addr)?;
        let key = account_key(username);
        let mut busy = self
            .checking
            .lock()
            .map_err(|_| Refusal::Backoff(Duration::from_secs(1)))?;
        if !busy.insert(key.clone()) {
            return Err(Refusal::Backoff(Duration::from_secs(1)));
        }
        Ok(Attempt {
            throttle: self,
            key,
        })
    }

    /// Count a failed password or code for `username` from `addr`.
    pub fn fail(&self, username: &str, addr: IpAddr) -> AfterFailure {
        let now = Instant::now();
        let l = &self.limits;
        if let Ok(mut t) = self.addrs.lock() {
            let s = strike(&mut t, addr_key(addr), now, l.window);
            s.wait_until = l.backoff(s.failures, l.addr_backoff_after).map(|d| now + d);
        }
        let Ok(mut t) = self.accounts.lock() else {
            return AfterFailure::Counted;
        };
        let s = strike(&mut t, account_key(username), now, l.window);
        if s.failures >= l.max_failures {
            s.locked_until = Some(now + l.lockout);
            s.failures = 0;
            s.first = now;
            s.wait_until = None;
            return AfterFailure::LockedNow;
        }
        s.wait_until = l.backoff(s.failures, l.backoff_after).map(|d| now + d);
        AfterFailure::Counted
    }

    /// A successful sign-in clears the account's record (not the address's: one good account
    /// must not launder an address that is guessing at others).
    pub fn succeed(&self, username: &str) {
        if let Ok(mut t) = self.accounts.lock() {
            t.entries.remove(&account_key(username));
        }
    }

    /// Count a registration from `addr`, or refuse it when the address has had its share.
    pub fn register(&self, addr: IpAddr) -> Result<(), ApiError> {
        let now = Instant::now();
        let window = self.limits.register_window;
        let Ok(mut t) = self.registrations.lock() else {
            return Err(ApiError::internal("registration throttle unavailable"));
        };
        let key = addr_key(addr);
        if !t.entries.contains_key(&key) {
            t.make_room(
                |(start, _)| now.duration_since(*start) >= window,
                |(s, _)| *s,
            );
        }
        let entry = t.entries.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limits.register_max {
            let wait = window.saturating_sub(now.duration_since(entry.0));
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many accounts created from this address: wait before creating another",
            )
            .retry_after(whole_seconds(wait)));
        }
        entry.1 += 1;
        Ok(())
    }
}

/// A password check under way for one account name (see [`Throttle::begin`]).
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    key: String,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.throttle.checking.lock() {
            busy.remove(&self.key);
        }
    }
}

/// The strikes of `key`, with one more failure counted (a new window if the last one passed).
fn strike(t: &mut Table<Strikes>, key: String, now: Instant, window: Duration) -> &mut Strikes {
    if !t.entries.contains_key(&key) {
        t.make_room(|s| s.is_stale(now, window), |s| s.last);
    }
    let s = t.entries.entry(key).or_insert_with(|| Strikes::fresh(now));
    if s.is_stale(now, window) {
        *s = Strikes::fresh(now);
    }
    s.failures = s.failures.saturating_add(1);
    s.last = now;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> AuthLimits {
        AuthLimits {
            backoff_after: 2,
            max_failures: 4,
            addr_backoff_after: 100,
            backoff_base: Duration::from_secs(1),
            tracked_max: 3,
            ..AuthLimits::default()
        }
    }

    const ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn failures_back_off_then_lock_and_success_resets() {
        let t = Throttle::new(small());
        assert_eq!(t.fail("Ann", ADDR), AfterFailure::Counted);
        assert!(t.check("ann", ADDR).is_ok());
        t.fail("ann", ADDR);
        assert!(matches!(t.check("ann", ADDR), Err(Refusal::Backoff(_))));
        t.fail("ann", ADDR);
        assert_eq!(t.fail("ann", ADDR), AfterFailure::LockedNow);
        assert!(matches!(t.check("ann", ADDR), Err(Refusal::Locked(_))));
        // Another account from the same address is not locked.
        assert!(t.check("bob", ADDR).is_ok());
        t.succeed("ann");
        assert!(t.check("ann", ADDR).is_ok());
    }

    #[test]
    fn one_password_check_per_name_at_a_time() {
        let t = Throttle::new(small());
        let first = t.begin("Ann", ADDR).unwrap();
        assert!(matches!(t.begin("ann", ADDR), Err(Refusal::Backoff(_))));
        assert!(t.begin("bob", ADDR).is_ok());
        drop(first);
        assert!(t.begin("ann", ADDR).is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let l = AuthLimits {
            backoff_max: Duration::from_secs(5),
            ..small()
        };
        assert_eq!(l.backoff(1, 2), None);
        assert_eq!(l.backoff(2, 2), Some(Duration::from_secs(1)));
        assert_eq!(l.backoff(3, 2), Some(Duration::from_secs(2)));
        assert_eq!(l.backoff(4, 2), Some(Duration::from_secs(4)));
        assert_eq!(l.backoff(5, 2), Some(Duration::from_secs(5)));
        assert_eq!(l.backoff(500, 2), Some(Duration::from_secs(5)));
    }

    #[test]
    fn the_tables_stay_bounded() {
        let t = Throttle::new(small());
        for i in 0..50 {
            t.fail(&format!("user{i}"), ADDR);
        }
        assert!(t.accounts.lock().unwrap().entries.len() <= 3);
        for i in 0..50u8 {
            let _ = t.register(IpAddr::from([10, 0, 0, i]));
        }
        assert!(t.registrations.lock().unwrap().entries.len() <= 3);
    }

    #[test]
    fn registrations_are_capped_per_address() {
        let t = Throttle::new(AuthLimits {
            register_max: 2,
            ..small()
        });
        assert!(t.register(ADDR).is_ok());
        assert!(t.register(ADDR).is_ok());
        let e = t.register(ADDR).unwrap_err();
        assert_eq!(e.code, "rate_limited");
        assert!(e.retry_after.is_some());
        assert!(t.register(IpAddr::from([10, 0, 0, 1])).is_ok());
    }

    #[test]
    fn an_ipv6_host_cannot_dodge_by_changing_address_within_its_64() {
        let t = Throttle::new(AuthLimits {
            register_max: 1,
            ..small()
        });
        assert!(t.register("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(t.register("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        assert!(t.register("2001:db8:1:3::1".parse().unwrap()).is_ok());
        assert_eq!(addr_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1");
    }

    #[test]
    fn overlong_names_are_kept_as_short_keys() {
        let long = "a".repeat(100_000);
        assert_eq!(account_key(&long).len(), 65);
        assert_eq!(account_key(" Ann "), "ann");
    }

    #[test]
    fn limits_come_from_the_environment() {
        let l = AuthLimits::from_lookup(|k| {
            (k == "SECURECLAW_LOGIN_MAX_FAILURES").then(|| "3".to_string())
        })
        .unwrap();
        assert_eq!(l.max_failures, 3);
        let e = AuthLimits::from_lookup(|k| {
            (k == "SECURECLAW_LOCKOUT_SECONDS").then(|| "soon".to_string())
        })
        .unwrap_err();
        assert!(e.to_string().contains("SECURECLAW_LOCKOUT_SECONDS"), "{e}");
    }
}
