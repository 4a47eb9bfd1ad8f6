//! Filters the UI's templates use.

use minijinja::Environment;

pub fn register(env: &mut Environment<'static>) {
    env.add_filter("when", when);
    env.add_filter("short_id", short_id);
    env.add_filter("undo_class", undo_class);
}

/// The API's undo label (`restore`, `compensate`, `pivot`, `none`) in the words every page uses:
/// exact, compensatable or none.
fn undo_class(api_undo: String) -> &'static str {
    match super::pages::new_task::undo_of(&api_undo).0 {
        super::pages::new_task::UndoClass::Exact => "exact",
        super::pages::new_task::UndoClass::Compensatable => "compensatable",
        super::pages::new_task::UndoClass::None => "none",
    }
}

/// An RFC 3339 time as `2026-12-04 08:30:12 UTC` (anything else as given).
fn when(value: String) -> String {
    match time::OffsetDateTime::parse(&value, &time::format_description::well_known::Rfc3339) {
        Ok(t) => {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        Err(_) => value,
    }
}

/// The first 8 characters of an id, for display next to the full one in a link or title.
fn short_id(value: String) -> String {
    value.chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(
            when("2026-12-04T09:30:12+01:00".into()),
            "2026-12-04 08:30:12 UTC"
        );
        assert_eq!(when("not a time".into()), "not a time");
        assert_eq!(short_id("0192abcd-ef".into()), "0192abcd");
    }
}
