//! What time it is, and waiting for a time: the wall clock in the server, a hand-set one in
//! tests.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

#[async_trait::async_trait]
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// Return once `now() >= at`.
    async fn sleep_until(&self, at: DateTime<Utc>);
}

/// The system clock.
pub struct RealClock;

/// The longest single sleep: the wall clock is read again after it, so a clock that was set
/// or a machine that slept is noticed within this time.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

#[async_trait::async_trait]
impl Clock for RealClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, at: DateTime<Utc>) {
        loop {
            let left = at - Utc::now();
            let Ok(left) = left.to_std() else { return };
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(RECHECK)).await;
        }
    }
}

/// A clock that moves only when told to.
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    moved: tokio::sync::watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        ManualClock {
            now: Mutex::new(at),
            moved: tokio::sync::watch::Sender::new(at),
        }
    }

    /// Move to `at` (never backwards) and wake the sleepers whose time has come.
    pub fn set(&self, at: DateTime<Utc>) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if at > *now {
            *now = at;
        }
        self.moved.send_replace(*now);
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.set(self.now() + by);
    }
}

#[async_trait::async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn sleep_until(&self, at: DateTime<Utc>) {
        let mut moved = self.moved.subscribe();
        // `wait_for` checks the current value first, then each change.
        let _ = moved.wait_for(|now| *now >= at).await;
    }
}
