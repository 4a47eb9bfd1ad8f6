//! The chain: appending under one write transaction, the entry MACs, the sealed head, and
//! walking and verifying the stored chain.

use redb::ReadableTable;
use serde::Deserialize;

use super::entry::{LedgerEntry, NewEntry, entry_canonical, now_rfc3339, refuse_non_integers};
use crate::crypto::{self, SecretKey};
use crate::error::{BreakReason, LedgerError, VaultError};
use crate::store::{LEDGER, META, META_LEDGER_HEAD, meta_domain};
use crate::{Inner, header};

const DOMAIN_LEDGER: &[u8] = b"secureclaw/v1/ledger\0";
pub(crate) const GENESIS_MAC: [u8; 32] = [0u8; 32];

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

/// The ledger MAC key, for verifying exports away from the vault. Whoever holds it can also
/// forge entries, so hand it only to a trusted auditor.
pub struct LedgerKey(pub(super) SecretKey);

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

    pub(super) fn mac(&self, prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
        crypto::hmac_sha256(self.0.as_ref(), &[prev, canonical])
    }
}

pub(super) fn ledger_domain(seq: u64) -> Vec<u8> {
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
    let sealed_head = meta
        .get(META_LEDGER_HEAD)
        .map_err(|e| inner.storage(e))?
        .map(|v| v.value().to_vec());
    let chained = chain_after(inner, sealed_head.as_deref(), entries)?;
    let mut table = txn.open_table(LEDGER).map_err(|e| inner.storage(e))?;
    for (seq, sealed) in &chained.sealed {
        table
            .insert(*seq, sealed.as_slice())
            .map_err(|e| inner.storage(e))?;
    }
    meta.insert(META_LEDGER_HEAD, chained.sealed_head.as_slice())
        .map_err(|e| inner.storage(e))?;
    Ok(chained.records)
}

/// Entries chained after a ledger head: what a store writes, in the transaction that read
/// the head, to append them.
#[derive(Debug)]
pub struct ChainedEntries {
    /// `(seq, sealed record)` to store, in order.
    pub sealed: Vec<(u64, Vec<u8>)>,
    /// The new head, sealed, to store in place of the old one.
    pub sealed_head: Vec<u8>,
    /// The new head.
    pub head: LedgerHead,
    /// The entries as appended.
    pub records: Vec<LedgerRecord>,
}

/// Chains `entries` after the head sealed in `sealed_head` (`None`: an empty ledger). Pure: the
/// caller stores the result in the same transaction that read the head, under a lock that keeps
/// any other append out until it commits, or the chain forks.
pub(crate) fn chain_after(
    inner: &Inner,
    sealed_head: Option<&[u8]>,
    entries: Vec<NewEntry>,
) -> Result<ChainedEntries, VaultError> {
    let mut head = read_head(inner, sealed_head)?;
    let time = now_rfc3339()?;
    let mut sealed_out = Vec::with_capacity(entries.len());
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
        sealed_out.push((seq, inner.keys.seal(&ledger_domain(seq), &record)?));
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
    Ok(ChainedEntries {
        sealed: sealed_out,
        sealed_head,
        head,
        records: out,
    })
}

/// What a [`LedgerSource`] calls with each stored record, `(seq, sealed)`.
pub type VisitRecord<'a> = dyn FnMut(u64, &[u8]) -> Result<(), VaultError> + 'a;

/// Where a ledger's sealed records live when not in the vault's own database (a database
/// several machines share). The vault seals, chains and verifies; the source only stores.
pub trait LedgerSource: Send + Sync {
    /// Calls `visit` with every stored record, `(seq, sealed)`, in ascending `seq`, then returns
    /// the sealed head; records and head must come from one consistent snapshot.
    fn read_ledger(&self, visit: &mut VisitRecord<'_>) -> Result<Option<Vec<u8>>, VaultError>;

    /// The sealed head alone.
    fn read_head(&self) -> Result<Option<Vec<u8>>, VaultError>;
}

#[derive(Deserialize)]
struct SeqProbe {
    seq: u64,
}

/// A handle on the vault's ledger, stored in the vault's database or in a [`LedgerSource`].
pub struct Ledger<'v> {
    pub(super) inner: &'v Inner,
    source: Option<&'v dyn LedgerSource>,
}

impl<'v> Ledger<'v> {
    pub(crate) fn new(inner: &'v Inner) -> Self {
        Self {
            inner,
            source: None,
        }
    }

    pub(crate) fn in_source(inner: &'v Inner, source: &'v dyn LedgerSource) -> Self {
        Self {
            inner,
            source: Some(source),
        }
    }

    /// Appends one entry in its own durable transaction.
    pub fn append(&self, entry: NewEntry) -> Result<LedgerRecord, VaultError> {
        let mut out = self.append_batch(vec![entry])?;
        out.pop()
            .ok_or_else(|| VaultError::Crypto("append produced no record".into()))
    }

    /// Appends entries in one durable transaction (one fsync for the whole batch).
    pub fn append_batch(&self, entries: Vec<NewEntry>) -> Result<Vec<LedgerRecord>, VaultError> {
        if self.source.is_some() {
            // The store that holds the source appends, in its own transactions.
            return Err(VaultError::ReadOnly {
                dir: self.inner.dir.clone(),
            });
        }
        let inner = self.inner;
        let txn = inner.begin_write()?;
        let out = append_in(inner, &txn, entries)?;
        inner.commit(txn)?;
        Ok(out)
    }

    /// The current end of the ledger, from its sealed head.
    pub fn head(&self) -> Result<LedgerHead, VaultError> {
        let inner = self.inner;
        if let Some(source) = self.source {
            return read_head(inner, source.read_head()?.as_deref());
        }
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
    pub(super) fn walk(
        &self,
        mut visit: impl FnMut(&[u8], &[u8; 32], &[u8; 32], u64) -> Result<(), VaultError>,
    ) -> Result<LedgerHead, VaultError> {
        let inner = self.inner;
        let mut walker = Walker::new(inner);
        if let Some(source) = self.source {
            let sealed_head =
                source.read_ledger(&mut |seq, sealed| walker.step(seq, sealed, &mut visit))?;
            return walker.finish(sealed_head.as_deref());
        }
        let txn = inner.db.begin_read().map_err(|e| inner.storage(e))?;
        let table = txn.open_table(LEDGER).map_err(|e| inner.storage(e))?;
        let meta = txn.open_table(META).map_err(|e| inner.storage(e))?;
        for row in table.iter().map_err(|e| inner.storage(e))? {
            let (k, v) = row.map_err(|e| inner.storage(e))?;
            walker.step(k.value(), v.value(), &mut visit)?;
        }
        let sealed = meta
            .get(META_LEDGER_HEAD)
            .map_err(|e| inner.storage(e))?
            .map(|v| v.value().to_vec());
        walker.finish(sealed.as_deref())
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

    /// The ledger MAC key, for an auditor who verifies exports offline.
    pub fn key(&self) -> LedgerKey {
        LedgerKey(self.inner.keys.mac_key.clone())
    }
}

/// Checks stored records one by one against the chain, wherever they are stored.
struct Walker<'v> {
    inner: &'v Inner,
    prev: [u8; 32],
    expected: u64,
}

fn broken(seq: u64, reason: BreakReason) -> VaultError {
    LedgerError::Broken { seq, reason }.into()
}

impl<'v> Walker<'v> {
    fn new(inner: &'v Inner) -> Self {
        Self {
            inner,
            prev: GENESIS_MAC,
            expected: 1,
        }
    }

    fn step(
        &mut self,
        seq: u64,
        sealed: &[u8],
        visit: &mut impl FnMut(&[u8], &[u8; 32], &[u8; 32], u64) -> Result<(), VaultError>,
    ) -> Result<(), VaultError> {
        let expected = self.expected;
        if seq != expected {
            return Err(broken(
                expected,
                BreakReason::Missing {
                    expected,
                    found: seq,
                },
            ));
        }
        let record = self
            .inner
            .keys
            .open(&ledger_domain(seq), sealed)
            .ok_or_else(|| broken(seq, BreakReason::Unsealable))?;
        if record.len() < 32 {
            return Err(broken(
                seq,
                BreakReason::Malformed("record too short".into()),
            ));
        }
        let (mac, canonical) = record.split_at(32);
        let calc = crypto::hmac_sha256(self.inner.keys.mac_key.as_ref(), &[&self.prev, canonical]);
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
        visit(canonical, &calc, &self.prev, seq)?;
        self.prev = calc;
        self.expected += 1;
        Ok(())
    }

    /// The walk is complete: the sealed head must name the last record walked.
    fn finish(self, sealed_head: Option<&[u8]>) -> Result<LedgerHead, VaultError> {
        let last = self.expected - 1;
        let head = read_head(self.inner, sealed_head)?;
        if head.count != last || (last > 0 && head.last_mac != self.prev) {
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
}
