//! Rows kept only so that a start happens once are forgotten after [`KEEP_FOR`]: the delivery
//! ids a webhook binding has seen (`seen/NAME/ID`), and, on a store several replicas share,
//! the starts a replica claimed (`once/KEY`: a schedule's fire time, a delivery). A sender
//! redelivers within days (GitHub lets a delivery be redelivered for three days, Standard
//! Webhooks signatures hold for five minutes), so a week bounds these tables without letting
//! a redelivery start a second run. A row's age is its task's: task ids are UUID v7, which
//! carry the time they were made.

use std::time::{Duration, SystemTime};

use secureclaw_engine::session::{AppBatch, AppTable, Session};

use crate::app::AppState;
use crate::error::ApiResult;
use crate::launch::Launched;

/// How long a delivery id or a claimed start is remembered.
pub const KEEP_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the server forgets what is older.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Deletions per commit.
const CHUNK: usize = 500;

/// Sweeps now and every hour until the server stops.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // A failed pass loses nothing (the rows stay a little longer); the next one retries.
            let _ = sweep(&state.session, SystemTime::now(), KEEP_FOR).await;
            tokio::select! {
                () = tokio::time::sleep(SWEEP_EVERY) => {}
                () = state.stopping.cancelled() => return,
            }
        }
    })
}

/// Deletes the rows older than `keep` at `now`; how many.
pub async fn sweep(session: &Session, now: SystemTime, keep: Duration) -> ApiResult<usize> {
    let Some(cutoff) = now.checked_sub(keep) else {
        return Ok(0);
    };
    let mut old: Vec<(AppTable, String)> = Vec::new();
    for key in session.app_keys(AppTable::TriggerDeliveries)? {
        if !key.starts_with("seen/") {
            continue;
        }
        let launched = session.app_get_json::<Launched>(AppTable::TriggerDeliveries, &key)?;
        if launched.is_some_and(|l| made_before(&l.task_id, cutoff)) {
            old.push((AppTable::TriggerDeliveries, key));
        }
    }
    for key in session.app_keys(AppTable::Index)? {
        if !key.starts_with("once/") {
            continue;
        }
        let task = session.app_get(AppTable::Index, &key)?.unwrap_or_default();
        if made_before(&String::from_utf8_lossy(&task), cutoff) {
            old.push((AppTable::Index, key));
        }
    }
    let swept = old.len();
    for chunk in old.chunks(CHUNK) {
        let mut batch = AppBatch::default();
        for (table, key) in chunk {
            batch.delete(*table, key.clone());
        }
        session.app_commit(batch).await?;
    }
    Ok(swept)
}

/// Whether `task_id` (a UUID v7) was made before `cutoff`. An id that carries no time is
/// kept: forgetting it could let a start happen twice.
fn made_before(task_id: &str, cutoff: SystemTime) -> bool {
    let Some(ts) = uuid::Uuid::try_parse(task_id)
        .ok()
        .and_then(|u| u.get_timestamp())
    else {
        return false;
    };
    let (secs, nanos) = ts.to_unix();
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos) < cutoff
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

    use secureclaw_engine::session::{Access, PassphraseSource, SessionOptions};

    use super::*;

    fn task_made(ago: Duration) -> String {
        let at = SystemTime::now() - ago;
        let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
        uuid::Uuid::new_v7(ts).hyphenated().to_string()
    }

    #[tokio::test]
    async fn delivery_ids_and_claimed_starts_are_forgotten_after_a_week_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "retention-test-passphrase").unwrap();
        let session = Session::open(SessionOptions {
            state_dir: dir.path().join("state"),
            passphrase: PassphraseSource::File(pass),
            access: Access::Write { create: true },
            actor: "test:retention".into(),
        })
        .unwrap();
        let day = Duration::from_secs(24 * 3600);
        let launched = |task: String| Launched {
            stream: format!("/api/v1/tasks/{task}/stream"),
            run_id: "run".into(),
            task_id: task,
        };
        let mut batch = AppBatch::default();
        batch
            .put_json(
                AppTable::TriggerDeliveries,
                "seen/gh/old",
                &launched(task_made(8 * day)),
            )
            .unwrap()
            .put_json(
                AppTable::TriggerDeliveries,
                "seen/gh/new",
                &launched(task_made(6 * day)),
            )
            .unwrap()
            .put_json(AppTable::TriggerDeliveries, "log/gh", &Vec::<u8>::new())
            .unwrap();
        batch.put(
            AppTable::Index,
            "once/schedule:a@old",
            task_made(30 * day).into_bytes(),
        );
        batch.put(
            AppTable::Index,
            "once/schedule:a@new",
            task_made(day).into_bytes(),
        );
        // No time in it: kept, whatever its age.
        batch.put(AppTable::Index, "once/odd", b"not-a-uuid".to_vec());
        batch.put(AppTable::Index, "tasks/u/t", Vec::new());
        session.app_commit(batch).await.unwrap();

        assert_eq!(
            sweep(&session, SystemTime::now(), KEEP_FOR).await.unwrap(),
            2
        );
        let mut deliveries = session.app_keys(AppTable::TriggerDeliveries).unwrap();
        deliveries.sort();
        assert_eq!(deliveries, ["log/gh", "seen/gh/new"]);
        let mut index = session.app_keys(AppTable::Index).unwrap();
        index.sort();
        assert_eq!(index, ["once/odd", "once/schedule:a@new", "tasks/u/t"]);
        // A second pass finds nothing more; a week later the rest of the dated rows go.
        assert_eq!(
            sweep(&session, SystemTime::now(), KEEP_FOR).await.unwrap(),
            0
        );
        let later = SystemTime::now() + 7 * day;
        assert_eq!(sweep(&session, later, KEEP_FOR).await.unwrap(), 2);
    }
}
