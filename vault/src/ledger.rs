//! The append-only, HMAC-chained ledger, its JSONL export and the offline verifier.
//!
//! Each entry is serialised as canonical JSON ([`canonical_json`]) and chained:
//! `mac_n = HMAC-SHA256(mac_key, mac_{n-1} || canonical_entry_n)` with `mac_0` = 32 zero bytes.
//! The stored record is `mac || canonical_entry`, sealed with AES-256-GCM (AAD = its seq).
//! A sealed head (count, last mac) in the meta table catches deleted tail entries; an exported,
//! signed head catches a rolled-back database or a truncated export. Format: docs/ledger-format.md.

use std::io::{BufRead, Write};

use redb::ReadableTable;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::{self, SecretKey};
use crate::error::{BreakReason, LedgerError, VaultError};
use crate::store::{LEDGER, META, META_LEDGER_HEAD, meta_domain};
use crate::{Inner, header, strict_json};

const DOMAIN_LEDGER: &[u8] = b"secureclaw/v1/ledger\0";
const HEAD_LABEL: &[u8] = b"secureclaw/v1/export-head\0";
pub(crate) const GENESIS_MAC: [u8; 32] = [0u8; 32];
pub const EXPORT_HEAD_FORMAT: &str = "secureclaw-ledger-head";
pub const EXPORT_HEAD_VERSION: u32 = 1;

/// Entry kinds the engine writes. `kind` is a free string so the engine can add more; these are
/// the ones the issue requires.
pub mod kind {
    pub const RUN_STARTED: &str = "run_started";
    pub const RUN_FINISHED: &str = "run_finished";
    pub const STEP_STARTED: &str = "step_started";
    pub const STEP_FINISHED: &str = "step_finished";
    pub const STEP_FAILED: &str = "step_failed";
    pub const APPROVAL_GIVEN: &str = "approval_given";
    pub const REVERT_STARTED: &str = "revert_started";
    pub const REVERT_FINISHED: &str = "revert_finished";
    pub const ACTION_REVERTED: &str = "action_reverted";
    pub const SANDBOX_REFUSED: &str = "sandbox_refused";
    /// The planner turned an instruction into a workflow (provenance: hashes only).
    pub const PLAN_CREATED: &str = "plan_created";
    /// A run stopped at approval gates and was saved to be resumed.
    pub const RUN_PARKED: &str = "run_parked";
    /// A parked run continued.
    pub const RUN_RESUMED: &str = "run_resumed";
}

/// One ledger entry as stored, exported and MAC'd. Every field is always present (absent ones
/// are `null`), so the canonical form has a fixed key set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "secureclaw ledger entry")]
pub struct LedgerEntry {
    /// Position in the ledger, starting at 1, without gaps.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// When the entry was appended, RFC 3339 UTC.
    pub time: String,
    /// Who acted: `engine`, `user:<name>`, `cli`...
    pub actor: String,
    /// Run id, when the entry belongs to a run.
    #[schemars(required)]
    pub run: Option<String>,
    /// Step id within the run.
    #[schemars(required)]
    pub step: Option<String>,
    /// What happened: `run_started`, `step_finished`, `sandbox_refused`...
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub kind: String,
    /// Risk tier (engine-defined JSON).
    #[schemars(required)]
    pub tier: Option<Value>,
    /// Sandbox enforcement report (engine-defined JSON).
    #[schemars(required)]
    pub enforcement: Option<Value>,
    /// Workspace manifest hash before the step.
    #[schemars(required)]
    pub pre_manifest: Option<String>,
    /// Workspace manifest hash after the step.
    #[schemars(required)]
    pub post_manifest: Option<String>,
    /// How to undo the action (engine-defined JSON).
    #[schemars(required)]
    pub inverse: Option<Value>,
    /// Outcome (engine-defined JSON).
    #[schemars(required)]
    pub result: Option<Value>,
}

/// What the engine hands to `append`: an entry without `seq` and `time`, which the ledger
/// assigns inside the write transaction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewEntry {
    pub actor: String,
    pub kind: String,
    pub run: Option<String>,
    pub step: Option<String>,
    pub tier: Option<Value>,
    pub enforcement: Option<Value>,
    pub pre_manifest: Option<String>,
    pub post_manifest: Option<String>,
    pub inverse: Option<Value>,
    pub result: Option<Value>,
}

impl NewEntry {
    pub fn new(actor: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            kind: kind.into(),
            ..Self::default()
        }
    }
    pub fn run(mut self, run: impl Into<String>) -> Self {
        self.run = Some(run.into());
        self
    }
    pub fn step(mut self, step: impl Into<String>) -> Self {
        self.step = Some(step.into());
        self
    }
    pub fn tier(mut self, tier: impl Into<Value>) -> Self {
        self.tier = Some(tier.into());
        self
    }
    pub fn enforcement(mut self, report: Value) -> Self {
        self.enforcement = Some(report);
        self
    }
    pub fn manifests(mut self, pre: Option<String>, post: Option<String>) -> Self {
        self.pre_manifest = pre;
        self.post_manifest = post;
        self
    }
    pub fn inverse(mut self, inverse: Value) -> Self {
        self.inverse = Some(inverse);
        self
    }
    pub fn result(mut self, result: Value) -> Self {
        self.result = Some(result);
        self
    }
}

/// An authenticated entry with its chain MACs.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRecord {
    pub entry: LedgerEntry,
    pub mac: [u8; 32],
    pub prev_mac: [u8; 32],
}

/// The ledger's current end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerHead {
    /// Number of entries (= seq of the last one).
    pub count: u64,
    /// MAC of the last entry (zeros when empty).
    pub last_mac: [u8; 32],
}

/// Result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    pub last_mac: String,
    /// Whether the ledger was also checked against a previously exported head.
    pub head_checked: bool,
}

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

/// The ledger MAC key, for verifying exports away from the vault. Whoever holds it can also
/// forge entries, so hand it only to a trusted auditor.
pub struct LedgerKey(SecretKey);

impl std::fmt::Debug for LedgerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerKey(<redacted>)")
    }
}

impl LedgerKey {
    /// Parses 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(s: &str) -> Result<Self, VaultError> {
        let bytes = zeroize::Zeroizing::new(
            hex::decode(s.trim())
                .map_err(|e| VaultError::InvalidParams(format!("ledger key: {e}")))?,
        );
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(VaultError::InvalidParams(
                "ledger key must be 32 bytes (64 hex digits)".into(),
            ));
        }
        k.copy_from_slice(&bytes);
        Ok(Self(k))
    }

    pub fn to_hex(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(hex::encode(self.0.as_ref()))
    }

    /// Derives the ledger key from the passphrase and the header alone, without opening the
    /// database (which another process may hold).
    pub fn unlock(state_dir: &std::path::Path, passphrase: &str) -> Result<Self, VaultError> {
        let h = header::read(state_dir)?;
        let root = header::unlock(state_dir, &h, passphrase)?;
        let ring = crate::keys::KeyRing::new(h.vault_id, root, 1)?;
        Ok(Self(ring.mac_key.clone()))
    }

    fn mac(&self, prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
        crypto::hmac_sha256(self.0.as_ref(), &[prev, canonical])
    }
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant whitespace,
/// strings and numbers as serde_json writes them. Equal to RFC 8785 (JCS) for ASCII keys and
/// integer numbers, which is all the ledger's own fields use.
pub fn canonical_json(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                if let Some(val) = map.get(k) {
                    write_canonical(val, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is deterministic (", \, control characters; nothing else).
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `canonical_json(to_value(e))` without building a `Value` for the whole entry (appends are
/// allocation-bound otherwise). Keys are written in sorted order; a unit test checks the
/// output equals the generic path, so a new field cannot be forgotten here.
fn entry_canonical(e: &LedgerEntry) -> Result<Vec<u8>, VaultError> {
    fn key(out: &mut Vec<u8>, k: &str, first: bool) {
        if !first {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
    }
    fn opt_str(out: &mut Vec<u8>, v: Option<&String>) {
        match v {
            Some(s) => write_string(s, out),
            None => out.extend_from_slice(b"null"),
        }
    }
    fn opt_val(out: &mut Vec<u8>, v: Option<&Value>) {
        match v {
            Some(v) => write_canonical(v, out),
            None => out.extend_from_slice(b"null"),
        }
    }
    let mut out = Vec::with_capacity(512);
    out.push(b'{');
    key(&mut out, "actor", true);
    write_string(&e.actor, &mut out);
    key(&mut out, "enforcement", false);
    opt_val(&mut out, e.enforcement.as_ref());
    key(&mut out, "inverse", false);
    opt_val(&mut out, e.inverse.as_ref());
    key(&mut out, "kind", false);
    write_string(&e.kind, &mut out);
    key(&mut out, "post_manifest", false);
    opt_str(&mut out, e.post_manifest.as_ref());
    key(&mut out, "pre_manifest", false);
    opt_str(&mut out, e.pre_manifest.as_ref());
    key(&mut out, "result", false);
    opt_val(&mut out, e.result.as_ref());
    key(&mut out, "run", false);
    opt_str(&mut out, e.run.as_ref());
    key(&mut out, "seq", false);
    out.extend_from_slice(e.seq.to_string().as_bytes());
    key(&mut out, "step", false);
    opt_str(&mut out, e.step.as_ref());
    key(&mut out, "tier", false);
    opt_val(&mut out, e.tier.as_ref());
    key(&mut out, "time", false);
    write_string(&e.time, &mut out);
    out.push(b'}');
    Ok(out)
}

pub(crate) fn now_rfc3339() -> Result<String, VaultError> {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| VaultError::Crypto(format!("formatting the clock: {e}")))
}

fn ledger_domain(seq: u64) -> Vec<u8> {
    [DOMAIN_LEDGER, &seq.to_le_bytes()[..]].concat()
}

fn read_head(inner: &Inner, sealed: Option<&[u8]>) -> Result<LedgerHead, VaultError> {
    let Some(sealed) = sealed else {
        return Ok(LedgerHead {
            count: 0,
            last_mac: GENESIS_MAC,
        });
    };
    let broken = || LedgerError::Broken {
        seq: 0,
        reason: BreakReason::Malformed("the sealed ledger head does not open".into()),
    };
    let plain = inner
        .keys
        .open(&meta_domain(META_LEDGER_HEAD), sealed)
        .ok_or_else(broken)?;
    if plain.len() != 40 {
        return Err(broken().into());
    }
    let mut count = [0u8; 8];
    let mut last_mac = [0u8; 32];
    count.copy_from_slice(&plain[..8]);
    last_mac.copy_from_slice(&plain[8..]);
    Ok(LedgerHead {
        count: u64::from_le_bytes(count),
        last_mac,
    })
}

/// Appends inside an open write transaction. redb admits one write transaction at a time, so
/// reading the head and writing the next entries here can never race another append: the chain
/// cannot fork, whichever task or thread appends. The head is read and re-sealed once per call,
/// not per entry.
pub(crate) fn append_in(
    inner: &Inner,
    txn: &redb::WriteTransaction,
    entries: Vec<NewEntry>,
) -> Result<Vec<LedgerRecord>, VaultError> {
    let mut meta = txn.open_table(META).map_err(|e| inner.storage(e))?;
    let mut head = {
        let sealed = meta
            .get(META_LEDGER_HEAD)
            .map_err(|e| inner.storage(e))?
            .map(|v| v.value().to_vec());
        read_head(inner, sealed.as_deref())?
    };
    let mut table = txn.open_table(LEDGER).map_err(|e| inner.storage(e))?;
    let time = now_rfc3339()?;
    let mut out = Vec::with_capacity(entries.len());
    for new in entries {
        let seq = head
            .count
            .checked_add(1)
            .ok_or_else(|| VaultError::InvalidParams("ledger is full".into()))?;
        let entry = LedgerEntry {
            seq,
            time: time.clone(),
            actor: new.actor,
            run: new.run,
            step: new.step,
            kind: new.kind,
            tier: new.tier,
            enforcement: new.enforcement,
            pre_manifest: new.pre_manifest,
            post_manifest: new.post_manifest,
            inverse: new.inverse,
            result: new.result,
        };
        refuse_non_integers(&entry)?;
        let canonical = entry_canonical(&entry)?;
        let mac = crypto::hmac_sha256(inner.keys.mac_key.as_ref(), &[&head.last_mac, &canonical]);
        let record = zeroize::Zeroizing::new([&mac[..], &canonical].concat());
        let sealed = inner.keys.seal(&ledger_domain(seq), &record)?;
        table
            .insert(seq, sealed.as_slice())
            .map_err(|e| inner.storage(e))?;
        out.push(LedgerRecord {
            entry,
            mac,
            prev_mac: head.last_mac,
        });
        head = LedgerHead {
            count: seq,
            last_mac: mac,
        };
    }
    let head_plain = [&head.count.to_le_bytes()[..], &head.last_mac].concat();
    let sealed_head = inner
        .keys
        .seal(&meta_domain(META_LEDGER_HEAD), &head_plain)?;
    meta.insert(META_LEDGER_HEAD, sealed_head.as_slice())
        .map_err(|e| inner.storage(e))?;
    Ok(out)
}

/// Floats have no single printed form that every verifier shares (Python writes `1e+20`, serde_json
/// `1e20`), so an entry carrying one could not be verified independently: refuse it at append.
fn refuse_non_integers(e: &LedgerEntry) -> Result<(), VaultError> {
    fn first_float(v: &Value) -> Option<&serde_json::Number> {
        match v {
            Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => Some(n),
            Value::Array(items) => items.iter().find_map(first_float),
            Value::Object(m) => m.values().find_map(first_float),
            _ => None,
        }
    }
    for (name, v) in [
        ("tier", &e.tier),
        ("enforcement", &e.enforcement),
        ("inverse", &e.inverse),
        ("result", &e.result),
    ] {
        if let Some(n) = v.as_ref().and_then(first_float) {
            return Err(VaultError::InvalidParams(format!(
                "ledger entry `{name}` holds the non-integer number {n}: entries carry integers only"
            )));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct SeqProbe {
    seq: u64,
}

/// A handle on the vault's ledger.
pub struct Ledger<'v> {
    inner: &'v Inner,
}

impl<'v> Ledger<'v> {
    pub(crate) fn new(inner: &'v Inner) -> Self {
        Self { inner }
    }

    /// Appends one entry in its own durable transaction.
    pub fn append(&self, entry: NewEntry) -> Result<LedgerRecord, VaultError> {
        let mut out = self.append_batch(vec![entry])?;
        out.pop()
            .ok_or_else(|| VaultError::Crypto("append produced no record".into()))
    }

    /// Appends entries in one durable transaction (one fsync for the whole batch).
    pub fn append_batch(&self, entries: Vec<NewEntry>) -> Result<Vec<LedgerRecord>, VaultError> {
        let inner = self.inner;
        let txn = inner.begin_write()?;
        let out = append_in(inner, &txn, entries)?;
        inner.commit(txn)?;
        Ok(out)
    }

    /// The current end of the ledger, from its sealed head.
    pub fn head(&self) -> Result<LedgerHead, VaultError> {
        let inner = self.inner;
        let txn = inner.db.begin_read().map_err(|e| inner.storage(e))?;
        let meta = txn.open_table(META).map_err(|e| inner.storage(e))?;
        let sealed = meta
            .get(META_LEDGER_HEAD)
            .map_err(|e| inner.storage(e))?
            .map(|v| v.value().to_vec());
        read_head(inner, sealed.as_deref())
    }

    /// Walks the whole chain in one read snapshot, calling `visit` with each authentic record.
    /// Stops at the first bad entry with [`LedgerError::Broken`].
    fn walk(
        &self,
        mut visit: impl FnMut(&[u8], &[u8; 32], &[u8; 32], u64) -> Result<(), VaultError>,
    ) -> Result<LedgerHead, VaultError> {
        let inner = self.inner;
        let txn = inner.db.begin_read().map_err(|e| inner.storage(e))?;
        let table = txn.open_table(LEDGER).map_err(|e| inner.storage(e))?;
        let meta = txn.open_table(META).map_err(|e| inner.storage(e))?;
        let mut prev = GENESIS_MAC;
        let mut expected = 1u64;
        let broken = |seq: u64, reason: BreakReason| -> VaultError {
            LedgerError::Broken { seq, reason }.into()
        };
        for row in table.iter().map_err(|e| inner.storage(e))? {
            let (k, v) = row.map_err(|e| inner.storage(e))?;
            let seq = k.value();
            if seq != expected {
                return Err(broken(
                    expected,
                    BreakReason::Missing {
                        expected,
                        found: seq,
                    },
                ));
            }
            let record = inner
                .keys
                .open(&ledger_domain(seq), v.value())
                .ok_or_else(|| broken(seq, BreakReason::Unsealable))?;
            if record.len() < 32 {
                return Err(broken(
                    seq,
                    BreakReason::Malformed("record too short".into()),
                ));
            }
            let (mac, canonical) = record.split_at(32);
            let calc = crypto::hmac_sha256(inner.keys.mac_key.as_ref(), &[&prev, canonical]);
            if !crypto::mac_eq(&calc, mac) {
                return Err(broken(seq, BreakReason::MacMismatch));
            }
            let probe: SeqProbe = serde_json::from_slice(canonical)
                .map_err(|e| broken(seq, BreakReason::Malformed(e.to_string())))?;
            if probe.seq != seq {
                return Err(broken(
                    seq,
                    BreakReason::SeqMismatch {
                        outer: seq,
                        inner: probe.seq,
                    },
                ));
            }
            visit(canonical, &calc, &prev, seq)?;
            prev = calc;
            expected += 1;
        }
        let last = expected - 1;
        let sealed = meta
            .get(META_LEDGER_HEAD)
            .map_err(|e| inner.storage(e))?
            .map(|v| v.value().to_vec());
        let head = read_head(inner, sealed.as_deref())?;
        if head.count != last || (last > 0 && head.last_mac != prev) {
            return Err(broken(
                last.min(head.count) + 1,
                BreakReason::HeadMismatch {
                    last,
                    head_count: head.count,
                },
            ));
        }
        Ok(head)
    }

    /// Checks the whole chain; on failure names the first bad entry.
    pub fn verify(&self) -> Result<VerifyReport, VaultError> {
        let head = self.walk(|_, _, _, _| Ok(()))?;
        Ok(VerifyReport {
            entries: head.count,
            last_mac: hex::encode(head.last_mac),
            head_checked: false,
        })
    }

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

    /// All authentic entries (optionally of one run), in order. The whole chain is verified
    /// while reading, so a tampered ledger yields an error rather than partial data.
    pub fn entries(&self, run: Option<&str>) -> Result<Vec<LedgerRecord>, VaultError> {
        let mut out = Vec::new();
        self.walk(|canonical, mac, prev, seq| {
            let entry: LedgerEntry =
                serde_json::from_slice(canonical).map_err(|e| LedgerError::Broken {
                    seq,
                    reason: BreakReason::Malformed(e.to_string()),
                })?;
            if run.is_none() || entry.run.as_deref() == run {
                out.push(LedgerRecord {
                    entry,
                    mac: *mac,
                    prev_mac: *prev,
                });
            }
            Ok(())
        })?;
        Ok(out)
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

    /// The ledger MAC key, for an auditor who verifies exports offline.
    pub fn key(&self) -> LedgerKey {
        LedgerKey(self.inner.keys.mac_key.clone())
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
enum Shape {
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

const LINE_SHAPE: [(&str, Shape); 3] = [
    ("entry", Shape::Object),
    ("mac", Shape::Hex(32)),
    ("prev_mac", Shape::Hex(32)),
];
const ENTRY_SHAPE: [(&str, Shape); 12] = [
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
const HEAD_SHAPE: [(&str, Shape); 10] = [
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::{KdfParams, Vault};

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        salt_len: 16,
    };

    /// Replaces entry `seq` with `mac || canonical`, correctly sealed: what an attacker who had
    /// the data key but not the MAC key could write.
    fn reseal(v: &Vault, seq: u64, mac: [u8; 32], canonical: &[u8]) {
        let inner = &*v.inner;
        let txn = inner.begin_write().unwrap();
        {
            let mut t = txn.open_table(LEDGER).unwrap();
            let sealed = inner
                .keys
                .seal(&ledger_domain(seq), &[&mac[..], canonical].concat())
                .unwrap();
            t.insert(seq, sealed.as_slice()).unwrap();
        }
        inner.commit(txn).unwrap();
    }

    fn three() -> (tempfile::TempDir, Vault, Vec<LedgerRecord>) {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::create(dir.path(), "p", &FAST).unwrap();
        let recs = v
            .ledger()
            .append_batch(
                (0..3)
                    .map(|i| NewEntry::new("t", "step_finished").step(format!("s{i}")))
                    .collect(),
            )
            .unwrap();
        (dir, v, recs)
    }

    #[test]
    fn the_strict_shapes_list_exactly_the_serialised_fields() {
        let keys = |v: Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let names = |s: &[(&str, Shape)]| -> Vec<String> {
            let mut k: Vec<String> = s.iter().map(|(n, _)| (*n).to_owned()).collect();
            k.sort();
            k
        };
        let (_d, v, recs) = three();
        let mut out = Vec::new();
        let head = v.ledger().export(None, &mut out).unwrap();
        assert_eq!(
            keys(serde_json::to_value(&recs[0].entry).unwrap()),
            names(&ENTRY_SHAPE)
        );
        let line: Value =
            serde_json::from_slice(out.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(keys(line), names(&LINE_SHAPE));
        assert_eq!(
            keys(serde_json::to_value(&head).unwrap()),
            names(&HEAD_SHAPE)
        );
    }

    #[test]
    fn fast_canonical_form_equals_the_generic_one() {
        let full = LedgerEntry {
            seq: 42,
            time: "2026-11-25T18:00:00Z".into(),
            actor: "user:é\"\\".into(),
            run: Some("r\u{1}".into()),
            step: Some("s".into()),
            kind: "step_finished".into(),
            tier: Some(serde_json::json!("destructive")),
            enforcement: Some(
                serde_json::json!({"z": 1, "a": [true, null, 1.5, {"y": "x", "b": -3}]}),
            ),
            pre_manifest: Some("aa".into()),
            post_manifest: Some("bb".into()),
            inverse: Some(serde_json::json!({"restore": [{"path": "p", "blob": "00"}]})),
            result: Some(serde_json::json!({"exit_code": 0, "stdout": "line\n\u{7f}"})),
        };
        let empty = LedgerEntry {
            run: None,
            step: None,
            tier: None,
            enforcement: None,
            pre_manifest: None,
            post_manifest: None,
            inverse: None,
            result: None,
            ..full.clone()
        };
        for e in [full, empty] {
            let generic = canonical_json(&serde_json::to_value(&e).unwrap());
            assert_eq!(entry_canonical(&e).unwrap(), generic);
        }
    }

    #[test]
    fn entry_rewritten_without_the_mac_key_is_a_mac_mismatch() {
        let (_d, v, recs) = three();
        let mut e = recs[1].entry.clone();
        e.step = Some("forged".into());
        reseal(&v, 2, recs[1].mac, &entry_canonical(&e).unwrap());
        match v.ledger().verify() {
            Err(VaultError::Ledger(LedgerError::Broken {
                seq: 2,
                reason: BreakReason::MacMismatch,
            })) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn entry_whose_inner_seq_disagrees_with_its_position_is_named() {
        let (_d, v, recs) = three();
        let mut e = recs[2].entry.clone();
        e.seq = 7;
        let canonical = entry_canonical(&e).unwrap();
        let mac = crypto::hmac_sha256(v.inner.keys.mac_key.as_ref(), &[&recs[1].mac, &canonical]);
        reseal(&v, 3, mac, &canonical);
        match v.ledger().verify() {
            Err(VaultError::Ledger(LedgerError::Broken {
                seq: 3,
                reason: BreakReason::SeqMismatch { outer: 3, inner: 7 },
            })) => {}
            other => panic!("{other:?}"),
        }
    }
}
