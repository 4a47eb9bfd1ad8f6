//! When a `schedule:` trigger fires: its cron expression read in its time zone.
//!
//! Validation and the server's scheduler use this one parser, so a schedule that validates is
//! one the server can run.

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::model::Schedule;

/// A schedule ready to ask for its next times.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: chrono_tz::Tz,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron expression `{cron}`: {why}")]
    Cron { cron: String, why: String },
    #[error("unknown time zone `{0}` (use an IANA name such as `Europe/Paris` or `UTC`)")]
    TimeZone(String),
}

impl ScheduleError {
    pub fn hint(&self) -> &'static str {
        match self {
            ScheduleError::Cron { .. } => {
                "five fields: minute hour day-of-month month day-of-week, e.g. `0 3 * * *` (03:00 every day); six with seconds first"
            }
            ScheduleError::TimeZone(_) => "the names are those of the IANA time zone database",
        }
    }
}

impl CronSchedule {
    pub fn parse(s: &Schedule) -> Result<CronSchedule, ScheduleError> {
        let tz = match s.timezone.as_deref() {
            None => chrono_tz::UTC,
            Some(name) => name
                .parse::<chrono_tz::Tz>()
                .map_err(|_| ScheduleError::TimeZone(name.to_string()))?,
        };
        let fields = s.cron.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(ScheduleError::Cron {
                cron: s.cron.clone(),
                why: format!("has {fields} fields, expected 5 (or 6 with seconds)"),
            });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(&s.cron)
            .map_err(|e| ScheduleError::Cron {
                cron: s.cron.clone(),
                why: e.to_string(),
            })?;
        // A pattern that never matches (e.g. 30 February) is a mistake, not a schedule.
        let probe = DateTime::<Utc>::UNIX_EPOCH.with_timezone(&tz);
        if cron.find_next_occurrence(&probe, false).is_err() {
            return Err(ScheduleError::Cron {
                cron: s.cron.clone(),
                why: "never matches a real date".into(),
            });
        }
        Ok(CronSchedule { cron, tz })
    }

    /// The first time strictly after `after`, or `None` if there is none.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Whether a time in `(from, to]` was due: what a server that was down from `from` to `to`
    /// missed.
    pub fn missed_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        self.next_after(from).is_some_and(|t| t <= to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MissedRuns;

    fn sched(cron: &str, tz: Option<&str>) -> Schedule {
        Schedule {
            cron: cron.into(),
            timezone: tz.map(str::to_string),
            missed: MissedRuns::Skip,
            overlap: false,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_time_is_read_in_the_time_zone() {
        let s = CronSchedule::parse(&sched("0 3 * * *", Some("Europe/Paris"))).unwrap();
        // 03:00 in Paris in winter is 02:00 UTC; in summer 01:00 UTC.
        assert_eq!(
            s.next_after(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-11T02:00:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-07-10T12:00:00Z")),
            Some(at("2026-07-11T01:00:00Z"))
        );
        let utc = CronSchedule::parse(&sched("*/15 * * * *", None)).unwrap();
        assert_eq!(
            utc.next_after(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-10T12:15:00Z"))
        );
    }

    #[test]
    fn seconds_are_optional_and_missed_times_are_found() {
        let s = CronSchedule::parse(&sched("30 * * * * *", None)).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-10T12:00:00Z")),
            Some(at("2026-01-10T12:00:30Z"))
        );
        let daily = CronSchedule::parse(&sched("0 3 * * *", None)).unwrap();
        assert!(daily.missed_between(at("2026-01-10T02:00:00Z"), at("2026-01-10T04:00:00Z")));
        assert!(!daily.missed_between(at("2026-01-10T04:00:00Z"), at("2026-01-11T02:59:59Z")));
    }

    #[test]
    fn bad_schedules_are_refused_with_the_reason() {
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "* * * * * * *",
            "0 3 31 2 *",
            "nonsense",
        ] {
            let e = CronSchedule::parse(&sched(bad, None)).unwrap_err();
            assert!(matches!(e, ScheduleError::Cron { .. }), "{bad:?}: {e}");
        }
        let e = CronSchedule::parse(&sched("0 3 * * *", Some("Mars/Olympus"))).unwrap_err();
        assert_eq!(e, ScheduleError::TimeZone("Mars/Olympus".into()));
    }
}
