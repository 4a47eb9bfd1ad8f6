//! JSON parsing that refuses what serde_json lets through by default.
//!
//! serde_json keeps the *last* of duplicated object keys, so `{"entry": forged, "entry": real}`
//! parses as the real entry while another reader may take the forged one. Files an attacker can
//! edit (ledger exports, their heads, the vault header) are parsed here instead: a duplicated key
//! at any depth is an error, and, for ledger exports, so is any number that is not an integer in
//! the range -2^63..2^64-1 (floats, exponents, larger integers), because two verifiers cannot be
//! relied on to print those the same way.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Which numbers a parse accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Numbers {
    /// Integers from -2^63 to 2^64-1 only.
    Integers,
    /// Anything serde_json reads (the caller checks ranges and names the field).
    Any,
}

/// Prefix of the error for a duplicated key; the key follows in backquotes.
pub(crate) const DUPLICATE_KEY: &str = "duplicate key";
/// The error for a number outside [`Numbers::Integers`].
pub(crate) const NUMBER_OUT_OF_RANGE: &str =
    "number out of range (only integers from -2^63 to 2^64-1 are allowed)";

/// Parses one JSON document, refusing duplicated keys at any depth and trailing data.
pub(crate) fn parse(bytes: &[u8], numbers: Numbers) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = StrictSeed(numbers).deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// The reason without serde_json's " at line L column C" suffix (a line of an export is one
/// line; the position is noise there and differs between verifiers).
pub(crate) fn reason(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) if e.line() > 0 => s[..i].to_owned(),
        _ => s,
    }
}

#[derive(Clone, Copy)]
struct StrictSeed(Numbers);

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // serde_json hands over integers beyond i64/u64 as floats too.
        match self.0 {
            Numbers::Integers => Err(E::custom(NUMBER_OUT_OF_RANGE)),
            Numbers::Any => Number::from_f64(v)
                .map(Value::Number)
                .ok_or_else(|| E::custom(NUMBER_OUT_OF_RANGE)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // Every value is parsed first and duplicates are looked for when the object closes,
        // in key order: the order in which Python's object_pairs_hook sees them, so the two
        // verifiers name the same fault when a line has several.
        let mut pairs = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let v = map.next_value_seed(self)?;
            pairs.push((key, v));
        }
        let mut out = Map::new();
        for (key, v) in pairs {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("{DUPLICATE_KEY} `{key}`")));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_every_depth() {
        for doc in [
            r#"{"a":1,"a":2}"#,
            r#"{"x":{"b":1,"c":{"d":[{"e":1,"e":1}]}}}"#,
            r#"[{"k":null,"k":null}]"#,
        ] {
            let e = parse(doc.as_bytes(), Numbers::Any).unwrap_err();
            assert!(reason(&e).starts_with(DUPLICATE_KEY), "{doc}: {e}");
        }
        // The inner fault is named first, as Python's object_pairs_hook does.
        let e = parse(br#"{"a":1,"a":{"b":1,"b":2}}"#, Numbers::Any).unwrap_err();
        assert_eq!(reason(&e), "duplicate key `b`");
        // Keys differing only by an escape are the same key.
        let e = parse(br#"{"a":1,"\u0061":2}"#, Numbers::Any).unwrap_err();
        assert_eq!(reason(&e), "duplicate key `a`");
    }

    #[test]
    fn only_integers_in_range_pass_the_integer_mode() {
        for ok in [
            "0",
            "-9223372036854775808",
            "18446744073709551615",
            "[1,-2]",
        ] {
            parse(ok.as_bytes(), Numbers::Integers).unwrap();
        }
        for bad in [
            // serde_json reads -0 as the float -0.0.
            "-0",
            "1.0",
            "1e3",
            "18446744073709551616",
            "-9223372036854775809",
            "1e400",
            r#"{"a":[0.5]}"#,
        ] {
            let e = parse(bad.as_bytes(), Numbers::Integers).unwrap_err();
            // serde_json refuses 1e400 itself, with its own wording of the same thing.
            assert!(reason(&e).starts_with("number out of range"), "{bad}: {e}");
        }
        assert!(parse(b"2.5", Numbers::Any).is_ok());
    }

    #[test]
    fn trailing_data_and_bad_syntax_fail() {
        for bad in ["{} {}", "{", "[1,]", "nul", ""] {
            assert!(parse(bad.as_bytes(), Numbers::Any).is_err(), "{bad}");
        }
    }
}
