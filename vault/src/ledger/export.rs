//! The JSONL export with its signed head, and the offline verifier of both (which reads them
//! through the strict JSON parser in `strict_json`).

use std::io::{BufRead, Write};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chain::{GENESIS_MAC, Ledger, LedgerKey, VerifyReport};
use super::entry::{LedgerEntry, canonical_json, now_rfc3339};
use crate::crypto;
use crate::error::{BreakReason, LedgerError, VaultError};
use crate::strict_json;

const HEAD_LABEL: &[u8] = b"secureclaw/v1/export-head\0";
pub const EXPORT_HEAD_FORMAT: &str = "secureclaw-ledger-head";
pub const EXPORT_HEAD_VERSION: u32 = 1;

/// One line of a JSONL export. Keys are in canonical order, so a line is itself canonical JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "secureclaw ledger export line")]
pub struct ExportLine {
    pub entry: LedgerEntry,
    /// HMAC-SHA256(mac_key, prev_mac || canonical(entry)), lowercase hex.
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub mac: String,
    /// The previous entry's mac (64 zeros for seq 1), lowercase hex.
    #[schemars(regex(pattern = "^[0-9a-f]{64}$"))]
    pub prev_mac: String,
}

/// The signed head written next to an export: it fixes how many entries the export (and the
/// ledger at that moment) held and the last MACs, so cutting lines or rolling the database back
/// is detected later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "secureclaw ledger export head")]
pub struct ExportHead {
    /// Always `secureclaw-ledger-head`.
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// The exporting vault's id (hex).
    pub vault_id: String,
    /// The run filter of the export, or null for a full export.
    #[schemars(required)]
    pub run: Option<String>,
    /// Entries in the ledger when exported.
    pub ledger_count: u64,
    /// MAC of the ledger's last entry when exported (hex).
    pub ledger_last_mac: String,
    /// Lines in the export file.
    pub exported_count: u64,
    /// MAC of the export's last line (hex), null when empty.
    #[schemars(required)]
    pub exported_last_mac: Option<String>,
    /// RFC 3339 UTC.
    pub exported_at: String,
    /// HMAC-SHA256(mac_key, "secureclaw/v1/export-head\0" || canonical(head without `mac`)).
    pub mac: String,
}

/// Result of verifying an export file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    pub entries: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// False when no head was given: then cut-off trailing lines cannot be detected.
    pub head_checked: bool,
}

impl Ledger<'_> {
    /// Checks the chain and that it still extends a previously exported head: the entry at
    /// `head.ledger_count` must exist with the recorded MAC (catches a truncated or rolled-back
    /// database, which the in-database head alone cannot).
    pub fn verify_with_head(&self, head: &ExportHead) -> Result<VerifyReport, VaultError> {
        let key = LedgerKey(self.inner.keys.mac_key.clone());
        check_head_mac(&key, head)?;
        let want = hex::decode(&head.ledger_last_mac)
            .map_err(|e| LedgerError::HeadInvalid(e.to_string()))?;
        let mut seen: Option<[u8; 32]> = None;
        let target = head.ledger_count;
        let ours = self.walk(|_, mac, _, seq| {
            if seq == target {
                seen = Some(*mac);
            }
            Ok(())
        })?;
        if ours.count < target {
            return Err(LedgerError::Broken {
                seq: ours.count + 1,
                reason: BreakReason::Truncated {
                    expected: target,
                    found: ours.count,
                },
            }
            .into());
        }
        if target > 0 && seen.is_none_or(|m| !crypto::mac_eq(&m, &want)) {
            return Err(LedgerError::Broken {
                seq: target,
                reason: BreakReason::HeadMacMismatch,
            }
            .into());
        }
        Ok(VerifyReport {
            entries: ours.count,
            last_mac: hex::encode(ours.last_mac),
            head_checked: true,
        })
    }
    /// Writes the ledger (or one run's entries) as JSONL and returns the signed head to keep
    /// beside it. Refuses to export a broken ledger.
    pub fn export(&self, run: Option<&str>, out: &mut dyn Write) -> Result<ExportHead, VaultError> {
        let mut exported = 0u64;
        let mut last: Option<[u8; 32]> = None;
        let io = |e: std::io::Error| VaultError::io("writing the ledger export", e);
        let head = self.walk(|canonical, mac, prev, seq| {
            if let Some(r) = run {
                let probe: RunProbe =
                    serde_json::from_slice(canonical).map_err(|e| LedgerError::Broken {
                        seq,
                        reason: BreakReason::Malformed(e.to_string()),
                    })?;
                if probe.run.as_deref() != Some(r) {
                    return Ok(());
                }
            }
            // Keys in sorted order (entry < mac < prev_mac) keep the line canonical.
            out.write_all(b"{\"entry\":").map_err(io)?;
            out.write_all(canonical).map_err(io)?;
            writeln!(
                out,
                ",\"mac\":\"{}\",\"prev_mac\":\"{}\"}}",
                hex::encode(mac),
                hex::encode(prev)
            )
            .map_err(io)?;
            exported += 1;
            last = Some(*mac);
            Ok(())
        })?;
        out.flush().map_err(io)?;
        let key = LedgerKey(self.inner.keys.mac_key.clone());
        let mut h = ExportHead {
            format: EXPORT_HEAD_FORMAT.into(),
            version: EXPORT_HEAD_VERSION,
            vault_id: hex::encode(self.inner.keys.vault_id),
            run: run.map(str::to_owned),
            ledger_count: head.count,
            ledger_last_mac: hex::encode(head.last_mac),
            exported_count: exported,
            exported_last_mac: last.map(hex::encode),
            exported_at: now_rfc3339()?,
            mac: String::new(),
        };
        h.mac = hex::encode(head_mac(&key, &h)?);
        Ok(h)
    }
}

#[derive(Deserialize)]
struct RunProbe {
    run: Option<String>,
}

fn head_mac(key: &LedgerKey, h: &ExportHead) -> Result<[u8; 32], VaultError> {
    let mut v = serde_json::to_value(h).map_err(|e| VaultError::json("export head", e))?;
    if let Value::Object(m) = &mut v {
        m.remove("mac");
    }
    Ok(crypto::hmac_sha256(
        key.0.as_ref(),
        &[HEAD_LABEL, &canonical_json(&v)],
    ))
}

fn check_head_mac(key: &LedgerKey, h: &ExportHead) -> Result<(), VaultError> {
    if h.format != EXPORT_HEAD_FORMAT || h.version != EXPORT_HEAD_VERSION {
        return Err(LedgerError::HeadInvalid(format!(
            "unknown head format {} v{}",
            h.format, h.version
        ))
        .into());
    }
    let given = hex::decode(&h.mac).map_err(|e| LedgerError::HeadInvalid(format!("mac: {e}")))?;
    if !crypto::mac_eq(&head_mac(key, h)?, &given) {
        return Err(LedgerError::HeadInvalid(
            "its MAC does not verify (edited, or signed by another vault's key)".into(),
        )
        .into());
    }
    Ok(())
}

fn parse_mac(s: &str) -> Option<[u8; 32]> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

/// Why a line of an export is refused before its MAC is even checked. The Python verifier in
/// vault/tools prints the same words; the shared corpus in vault/tests/export-corpus holds both
/// to it.
const MSG_CUT_OFF: &str = "the last line is cut off (file truncated mid-entry)";
const MSG_BLANK: &str = "blank line (an export has no empty lines, not even at the end)";
const MSG_CR: &str = "carriage return before the line feed (CRLF line endings)";
const MSG_UTF8: &str = "the line is not valid UTF-8";
const MSG_NOT_CANONICAL: &str =
    "the line is not in canonical form (keys sorted, no whitespace, minimal escapes)";
/// serde_json's nesting limit (128 levels refused), named so the Python verifier can match it.
const MSG_TOO_DEEP: &str = "malformed JSON: nesting deeper than 127 levels";

/// What a field must hold, for the strict shape check both verifiers share.
#[derive(Clone, Copy)]
pub(super) enum Shape {
    Any,
    Str,
    StrOrNull,
    /// An integer at least this large.
    Int(u64),
    /// Lowercase hex of this many bytes.
    Hex(usize),
    HexOrNull(usize),
    Object,
}

pub(super) const LINE_SHAPE: [(&str, Shape); 3] = [
    ("entry", Shape::Object),
    ("mac", Shape::Hex(32)),
    ("prev_mac", Shape::Hex(32)),
];
pub(super) const ENTRY_SHAPE: [(&str, Shape); 12] = [
    ("seq", Shape::Int(1)),
    ("time", Shape::Str),
    ("actor", Shape::Str),
    ("run", Shape::StrOrNull),
    ("step", Shape::StrOrNull),
    ("kind", Shape::Str),
    ("tier", Shape::Any),
    ("enforcement", Shape::Any),
    ("pre_manifest", Shape::StrOrNull),
    ("post_manifest", Shape::StrOrNull),
    ("inverse", Shape::Any),
    ("result", Shape::Any),
];
pub(super) const HEAD_SHAPE: [(&str, Shape); 10] = [
    ("format", Shape::Str),
    ("version", Shape::Int(0)),
    ("vault_id", Shape::Hex(16)),
    ("run", Shape::StrOrNull),
    ("ledger_count", Shape::Int(0)),
    ("ledger_last_mac", Shape::Hex(32)),
    ("exported_count", Shape::Int(0)),
    ("exported_last_mac", Shape::HexOrNull(32)),
    ("exported_at", Shape::Str),
    ("mac", Shape::Hex(32)),
];

fn shape_ok(v: &Value, shape: Shape) -> bool {
    let hex_ok = |s: &str, n: usize| {
        s.len() == 2 * n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match shape {
        Shape::Any => true,
        Shape::Str => v.is_string(),
        Shape::StrOrNull => v.is_string() || v.is_null(),
        Shape::Int(min) => v.as_u64().is_some_and(|n| n >= min),
        Shape::Hex(n) => v.as_str().is_some_and(|s| hex_ok(s, n)),
        Shape::HexOrNull(n) => v.is_null() || v.as_str().is_some_and(|s| hex_ok(s, n)),
        Shape::Object => v.is_object(),
    }
}

fn shape_message(path: &str, shape: Shape) -> String {
    match shape {
        Shape::Hex(n) | Shape::HexOrNull(n) => {
            format!("field `{path}` must be {} lowercase hex digits", 2 * n)
        }
        Shape::Int(min) => format!("field `{path}` must be an integer of at least {min}"),
        _ => format!("field `{path}` has the wrong type"),
    }
}

/// Exactly `fields`, each of its shape: the first unknown key (in file order) is named, then
/// the first missing one (in `fields` order), then the first of the wrong shape.
fn check_fields(
    obj: &serde_json::Map<String, Value>,
    prefix: &str,
    fields: &[(&str, Shape)],
) -> Result<(), String> {
    let path = |k: &str| format!("{prefix}{k}");
    if let Some(k) = obj.keys().find(|k| !fields.iter().any(|(f, _)| f == k)) {
        return Err(format!("unknown field `{}`", path(k)));
    }
    for (f, shape) in fields {
        match obj.get(*f) {
            None => return Err(format!("missing field `{}`", path(f))),
            Some(v) if !shape_ok(v, *shape) => return Err(shape_message(&path(f), *shape)),
            Some(_) => {}
        }
    }
    Ok(())
}

fn strict_reason(e: &serde_json::Error) -> String {
    let r = strict_json::reason(e);
    if r.starts_with(strict_json::DUPLICATE_KEY) || r.starts_with("number out of range") {
        r
    } else if r == "recursion limit exceeded" {
        MSG_TOO_DEEP.into()
    } else {
        format!("malformed JSON: {r}")
    }
}

/// One export line (without its line feed), parsed strictly: UTF-8, no duplicate keys, integer
/// numbers only, exactly the known fields with the right types, and byte-for-byte canonical.
fn parse_export_line(text: &[u8]) -> Result<(Value, ExportLine), String> {
    if text.is_empty() {
        return Err(MSG_BLANK.into());
    }
    if text.last() == Some(&b'\r') {
        return Err(MSG_CR.into());
    }
    if std::str::from_utf8(text).is_err() {
        return Err(MSG_UTF8.into());
    }
    let value =
        strict_json::parse(text, strict_json::Numbers::Integers).map_err(|e| strict_reason(&e))?;
    let Some(obj) = value.as_object() else {
        return Err("the line is not a JSON object".into());
    };
    check_fields(obj, "", &LINE_SHAPE)?;
    let Some(entry) = obj.get("entry").and_then(Value::as_object) else {
        return Err(shape_message("entry", Shape::Object));
    };
    check_fields(entry, "entry.", &ENTRY_SHAPE)?;
    if canonical_json(&value) != text {
        return Err(MSG_NOT_CANONICAL.into());
    }
    let line: ExportLine = serde_json::from_value(value.clone())
        .map_err(|e| format!("malformed entry: {}", strict_json::reason(&e)))?;
    Ok((value, line))
}

/// Parses an export head as strictly as a line: no duplicate keys, integers only, exactly the
/// head's fields with the right types. Its MAC is checked by [`verify_export`].
pub fn parse_export_head(bytes: &[u8]) -> Result<ExportHead, VaultError> {
    let invalid = |m: String| -> VaultError { LedgerError::HeadInvalid(m).into() };
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("not valid UTF-8".into()))?;
    let value = strict_json::parse(text.as_bytes(), strict_json::Numbers::Integers)
        .map_err(|e| invalid(strict_reason(&e)))?;
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("not a JSON object".into()))?;
    check_fields(obj, "", &HEAD_SHAPE).map_err(invalid)?;
    serde_json::from_value(value).map_err(|e| invalid(strict_json::reason(&e)))
}

/// Verifies an exported JSONL file with the ledger key, and against its signed head when given.
///
/// Every line's MAC is recomputed from its `prev_mac` and canonical entry; consecutive entries
/// must link; a full export must start at seq 1 and have no gaps; a run export may skip other
/// runs' entries but every line must belong to that run. With a head, the line count and last
/// MAC must match it, which detects cut-off lines.
pub fn verify_export(
    reader: impl BufRead,
    key: &LedgerKey,
    head: Option<&ExportHead>,
) -> Result<ExportReport, VaultError> {
    if let Some(h) = head {
        check_head_mac(key, h)?;
    }
    let full = head.is_some_and(|h| h.run.is_none());
    let mut count = 0u64;
    let mut first_seq = None;
    let mut last_seq: Option<u64> = None;
    let mut last_mac: Option<[u8; 32]> = None;
    let mut reader = reader;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| VaultError::io("reading the ledger export", e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let complete = buf.last() == Some(&b'\n');
        let text = if complete {
            &buf[..buf.len() - 1]
        } else {
            &buf[..]
        };
        let bad = |seq: Option<u64>, reason: BreakReason| -> VaultError {
            LedgerError::ExportBroken {
                line: line_no,
                seq,
                reason,
            }
            .into()
        };
        if !complete {
            return Err(bad(None, BreakReason::Malformed(MSG_CUT_OFF.into())));
        }
        let (value, line) =
            parse_export_line(text).map_err(|m| bad(None, BreakReason::Malformed(m)))?;
        let seq = line.entry.seq;
        let (Some(mac), Some(prev)) = (parse_mac(&line.mac), parse_mac(&line.prev_mac)) else {
            return Err(bad(
                Some(seq),
                BreakReason::Malformed("mac and prev_mac must be 64 hex digits".into()),
            ));
        };
        let canonical = canonical_json(value.get("entry").unwrap_or(&Value::Null));
        if !crypto::mac_eq(&key.mac(&prev, &canonical), &mac) {
            return Err(bad(Some(seq), BreakReason::MacMismatch));
        }
        match last_seq {
            None => {
                if full && seq != 1 {
                    return Err(bad(
                        Some(seq),
                        BreakReason::Missing {
                            expected: 1,
                            found: seq,
                        },
                    ));
                }
            }
            Some(p) if seq <= p => {
                return Err(bad(
                    Some(seq),
                    BreakReason::OutOfOrder {
                        previous: p,
                        found: seq,
                    },
                ));
            }
            Some(p) if full && seq != p + 1 => {
                return Err(bad(
                    Some(seq),
                    BreakReason::Missing {
                        expected: p + 1,
                        found: seq,
                    },
                ));
            }
            Some(_) => {}
        }
        let links_previous = last_seq.is_some_and(|p| seq == p + 1);
        if (seq == 1 && prev != GENESIS_MAC) || (links_previous && last_mac != Some(prev)) {
            return Err(bad(Some(seq), BreakReason::BrokenLink));
        }
        if let Some(h) = head
            && let Some(r) = &h.run
            && line.entry.run.as_deref() != Some(r.as_str())
        {
            return Err(bad(
                Some(seq),
                BreakReason::Malformed(format!(
                    "entry is not part of run {r}, which the head names"
                )),
            ));
        }
        count += 1;
        first_seq.get_or_insert(seq);
        last_seq = Some(seq);
        last_mac = Some(mac);
    }
    if let Some(h) = head {
        let got_last = last_mac.map(hex::encode);
        if count < h.exported_count {
            return Err(LedgerError::ExportTruncated {
                expected: h.exported_count,
                found: count,
                expected_last_mac: h.exported_last_mac.clone().unwrap_or_default(),
            }
            .into());
        }
        if count > h.exported_count || got_last != h.exported_last_mac {
            return Err(LedgerError::ExportBroken {
                line: line_no,
                seq: last_seq,
                reason: BreakReason::HeadMacMismatch,
            }
            .into());
        }
        if h.run.is_none()
            && (h.exported_count != h.ledger_count
                || h.exported_last_mac
                    .as_deref()
                    .unwrap_or(&hex::encode(GENESIS_MAC))
                    != h.ledger_last_mac)
        {
            return Err(LedgerError::HeadInvalid(
                "a full export's counts disagree with the ledger's".into(),
            )
            .into());
        }
    }
    Ok(ExportReport {
        entries: count,
        first_seq,
        last_seq,
        head_checked: head.is_some(),
    })
}
