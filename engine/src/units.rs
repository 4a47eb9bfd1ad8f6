//! Durations (`300s`, `1m30s`, `250ms`) and sizes (`512Mi`, `64m`, `1G`) as they appear in
//! workflow files: kept as the author's text in the model, parsed with a precise error.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The schema pattern for durations; semantic validation gives the friendly error.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+(\.[0-9]+)?\s*(ns|us|ms|s|m|h|d)\s*)+$";
/// The schema pattern for sizes.
pub const SIZE_PATTERN: &str = r"^\s*[0-9]+(\.[0-9]+)?\s*([kKmMgGtT]i?[bB]?|[bB])?\s*$";

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationText(pub String);

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SizeText(pub String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("`{0}` is not a duration")]
    Duration(String),
    #[error("`{0}` is not a size")]
    Size(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

impl UnitError {
    pub fn hint(&self) -> &'static str {
        match self {
            UnitError::Duration(_) => "write a number with a unit: `250ms`, `30s`, `5m`, `1h30m`",
            UnitError::Size(_) => {
                "write a number with a unit: `64Mi`, `512Mi`, `1Gi` (or `64m`, `1G`, bytes without unit)"
            }
            UnitError::Overflow(_) => "use a smaller value",
        }
    }
}

impl DurationText {
    pub fn parse(&self) -> Result<Duration, UnitError> {
        parse_duration(&self.0)
    }
}

impl SizeText {
    pub fn parse(&self) -> Result<u64, UnitError> {
        parse_size(&self.0)
    }
}

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for SizeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A duration in the syntax of [`DURATION_PATTERN`], read by `humantime`: one or more numbers
/// (fractions allowed) each with a unit, optionally separated by spaces.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    // The pattern first: `humantime` also knows months, years and words such as `min`.
    if !matches(&DURATION_RE, text) {
        return Err(UnitError::Duration(text.to_string()));
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    humantime::parse_duration(&compact).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => UnitError::Overflow(text.to_string()),
        _ => UnitError::Duration(text.to_string()),
    })
}

/// A size in the syntax of [`SIZE_PATTERN`], read by `parse-size`: `Ki`/`Mi`/`Gi`/`Ti` are
/// binary, `k`/`M`/`G`/`T` decimal, an optional `B`, bytes without a unit.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    if !matches(&SIZE_RE, text) {
        return Err(UnitError::Size(text.to_string()));
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    parse_size::Config::new()
        .parse_size(&compact)
        .map_err(|e| match e {
            parse_size::Error::PosOverflow => UnitError::Overflow(text.to_string()),
            _ => UnitError::Size(text.to_string()),
        })
}

static DURATION_RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(DURATION_PATTERN).ok());
static SIZE_RE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(SIZE_PATTERN).ok());

/// Whether `text` has the syntax the schema's `pattern` gives, so the parsers accept exactly
/// what the schema documents. The patterns are constants a unit test compiles; were one not to
/// compile, nothing would match and every value would be refused, never let through.
fn matches(re: &LazyLock<Option<Regex>>, text: &str) -> bool {
    re.as_ref().is_some_and(|re| re.is_match(text))
}

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration: a number with a unit (ms, s, m, h, d), e.g. `30s`, `5m`, `1h30m`.",
            "examples": ["30s", "5m", "1h30m"]
        })
    }
}

impl JsonSchema for SizeText {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": SIZE_PATTERN,
            "description": "A size in bytes with an optional unit: `64Mi`, `512Mi`, `1Gi` (binary) or `64M`, `1G` (decimal).",
            "examples": ["64Mi", "512Mi", "1Gi"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300s").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in ["", "s", "5", "5 minutes", "-1s", "1x", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512Mi").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_size("64m").unwrap(), 64_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "Mi", "12 parsecs", "1e999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fractions_spaces_and_every_unit_read_as_documented() {
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("2d").unwrap(),
            Duration::from_secs(2 * 86400)
        );
        assert_eq!(parse_duration("10us").unwrap(), Duration::from_micros(10));
        // humantime knows months and years; the format does not.
        for bad in ["1M", "1y", "1min", ".5s", "5.s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("64M").unwrap(), 64_000_000);
        assert_eq!(parse_size("1.5Ki").unwrap(), 1536);
        assert_eq!(parse_size("2 KiB").unwrap(), 2048);
        assert_eq!(parse_size("1T").unwrap(), 1_000_000_000_000);
        assert!(matches!(
            parse_size("99999999999Ti"),
            Err(UnitError::Overflow(_))
        ));
        for bad in ["1Pi", "1.2.3M", "5.", "M5"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_agree_with_parsers() {
        let d = regex_lite(DURATION_PATTERN);
        let s = regex_lite(SIZE_PATTERN);
        for ok in ["300s", "1m30s", "250ms"] {
            assert!(d(ok) && parse_duration(ok).is_ok(), "{ok}");
        }
        for ok in ["512Mi", "64m", "1GiB", "4096"] {
            assert!(s(ok) && parse_size(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_patterns_compile() {
        assert!(DURATION_RE.is_some() && SIZE_RE.is_some());
    }

    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        let schema = serde_json::json!({"type": "string", "pattern": pattern});
        let v = jsonschema::validator_for(&schema).unwrap();
        move |s: &str| v.is_valid(&serde_json::json!(s))
    }
}
