//! Wake-ups for followers of runs other nodes execute. A commit that stores run events sends
//! `NOTIFY sc_events` with the runs' tags: a keyed hash of each run id, cut to 16 hex digits,
//! so the database and its other clients learn which runs have new events only as opaque
//! tags. One `LISTEN` per node bumps the followers of each tag it names; a notification
//! without tags (too many runs in one commit, or an older node) and a re-made connection
//! bump every follower.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use secureclaw_vault::Vault;
use sqlx::PgPool;
use tokio::sync::watch;

/// The channel a commit that stores run events notifies.
pub(crate) const EVENTS_CHANNEL: &str = "sc_events";
/// Hex digits of a run's tag: a collision costs one extra read, nothing else.
const TAG_LEN: usize = 16;
/// Payload bytes at most (PostgreSQL allows 8000); beyond it the payload is empty.
const PAYLOAD_MAX: usize = 7000;

/// The tag of `run` in notifications: a keyed hash, so the payload names no run.
pub(crate) fn run_tag(vault: &Vault, run: &str) -> String {
    let mut tag = vault.keyed_digest("event-notify", run.as_bytes());
    tag.truncate(TAG_LEN);
    tag
}

/// The payload naming `runs` (distinct tags, comma-separated), or empty when it would be too
/// long: then every follower wakes.
pub(crate) fn payload<'a>(vault: &Vault, runs: impl IntoIterator<Item = &'a str>) -> String {
    let mut tags: Vec<String> = runs.into_iter().map(|r| run_tag(vault, r)).collect();
    tags.sort();
    tags.dedup();
    let joined = tags.join(",");
    if joined.len() > PAYLOAD_MAX {
        String::new()
    } else {
        joined
    }
}

/// The followers of this node, by run tag.
#[derive(Default)]
pub(crate) struct Followers(Mutex<HashMap<String, watch::Sender<u64>>>);

impl Followers {
    /// Changes each time a notification names `tag` (or names none).
    pub(crate) fn follow(&self, tag: String) -> watch::Receiver<u64> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(tag)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Bumps the followers of `tags`, or every follower for `None`; forgets tags nobody
    /// follows any more.
    fn wake(&self, tags: Option<&str>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, tx| tx.receiver_count() > 0);
        let bump = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
        match tags {
            Some(tags) => {
                for tag in tags.split(',') {
                    if let Some(tx) = map.get(tag) {
                        bump(tx);
                    }
                }
            }
            None => map.values().for_each(bump),
        }
    }
}

pub(crate) async fn listen(pool: PgPool) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
    listener.listen(EVENTS_CHANNEL).await?;
    Ok(listener)
}

/// Wakes `followers` on each notification, for as long as the store's runtime lives.
pub(crate) async fn follow(
    pool: PgPool,
    mut listener: Option<sqlx::postgres::PgListener>,
    followers: std::sync::Arc<Followers>,
) {
    loop {
        if let Some(l) = &mut listener {
            // `recv` re-connects by itself; it errs only when it cannot.
            while let Ok(n) = l.recv().await {
                let tags = Some(n.payload()).filter(|p| !p.is_empty());
                followers.wake(tags);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        listener = listen(pool.clone()).await.ok();
        // Events may have been committed while nobody listened.
        followers.wake(None);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn followers_wake_for_their_tag_or_for_none_and_are_forgotten_once_gone() {
        let followers = Followers::default();
        let mut a = followers.follow("aa".into());
        let b = followers.follow("bb".into());
        followers.wake(Some("aa,cc"));
        assert!(a.has_changed().unwrap());
        assert!(!b.has_changed().unwrap());
        a.borrow_and_update();
        followers.wake(None);
        assert!(a.has_changed().unwrap() && b.has_changed().unwrap());
        drop(b);
        followers.wake(Some("aa"));
        assert_eq!(followers.0.lock().unwrap().len(), 1);
    }
}
