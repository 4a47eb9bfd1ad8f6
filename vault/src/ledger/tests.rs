//! Tampering with the stored chain (what an attacker holding the data key but not the MAC key
//! could write), the fast canonical form, and the strict shapes.

use serde_json::Value;

use super::chain::ledger_domain;
use super::entry::entry_canonical;
use super::export::{ENTRY_SHAPE, HEAD_SHAPE, LINE_SHAPE, Shape};
use super::{LedgerEntry, LedgerRecord, NewEntry, canonical_json};
use crate::crypto;
use crate::error::{BreakReason, LedgerError, VaultError};
use crate::store::LEDGER;
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
    let line: Value = serde_json::from_slice(out.split(|b| *b == b'\n').next().unwrap()).unwrap();
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
        enforcement: Some(serde_json::json!({"z": 1, "a": [true, null, 1.5, {"y": "x", "b": -3}]})),
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
