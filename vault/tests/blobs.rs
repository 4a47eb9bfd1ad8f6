#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test
mod common;

use std::collections::HashSet;
use std::path::PathBuf;

use common::*;
use secureclaw_vault::{BlobId, Vault, VaultError};

fn blob_path(dir: &std::path::Path, id: &BlobId) -> PathBuf {
    let h = id.to_hex();
    dir.join("blobs").join(&h[..2]).join(&h[2..])
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn roundtrip_at_chunk_boundaries_and_multi_megabyte() {
    let (_d, v) = new_vault();
    let chunk = 64 * 1024;
    for len in [
        0,
        1,
        chunk - 1,
        chunk,
        chunk + 1,
        3 * chunk,
        5 * 1024 * 1024 + 7,
    ] {
        let data = pattern(len, 3);
        let id = v.blobs().put(&data).unwrap();
        assert_eq!(v.blobs().get(&id).unwrap(), data, "len {len}");
        // Streaming put of the same content gives the same id (content addressing).
        let id2 = v.blobs().put_reader(std::io::Cursor::new(&data)).unwrap();
        assert_eq!(id, id2, "len {len}");
    }
}

#[test]
fn put_file_streams_and_restore_is_atomic() {
    let (d, v) = new_vault();
    let src = d.path().join("input.bin");
    let data = pattern(3 * 1024 * 1024 + 11, 9);
    std::fs::write(&src, &data).unwrap();
    let id = v.blobs().put_file(&src).unwrap();
    let dest = d.path().join("restored.bin");
    assert_eq!(
        v.blobs().restore_to_path(&id, &dest).unwrap(),
        data.len() as u64
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    // A failed restore leaves the destination untouched and no temp file behind.
    std::fs::write(&dest, b"newer work").unwrap();
    let p = blob_path(d.path(), &id);
    let mut enc = std::fs::read(&p).unwrap();
    let last = enc.len() - 1;
    enc[last] ^= 1;
    std::fs::write(&p, &enc).unwrap();
    assert!(matches!(
        v.blobs().restore_to_path(&id, &dest),
        Err(VaultError::BlobCorrupt { .. })
    ));
    assert_eq!(std::fs::read(&dest).unwrap(), b"newer work");
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("secureclaw-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn identical_content_is_stored_once_and_names_are_keyed() {
    let (d, v) = new_vault();
    let a = v.blobs().put(b"same bytes").unwrap();
    let b = v.blobs().put(b"same bytes").unwrap();
    assert_eq!(a, b);
    assert_eq!(v.blobs().list().unwrap(), vec![a]);
    // The id is not a plain hash of the content: another vault names it differently.
    let (_d2, v2) = new_vault();
    assert_ne!(v2.blobs().put(b"same bytes").unwrap(), a);
    use sha2::Digest;
    assert_ne!(hex::encode(sha2::Sha256::digest(b"same bytes")), a.to_hex());
    assert!(blob_path(d.path(), &a).is_file());
    // Ids parse back from hex.
    assert_eq!(a.to_hex().parse::<BlobId>().unwrap(), a);
    assert!("xyz".parse::<BlobId>().is_err());
}

#[test]
fn any_flipped_bit_in_a_blob_file_is_detected() {
    let (d, v) = new_vault();
    let data = pattern(2 * 64 * 1024 + 100, 1);
    let id = v.blobs().put(&data).unwrap();
    let p = blob_path(d.path(), &id);
    let pristine = std::fs::read(&p).unwrap();
    // Every byte of the header and first chunk framing, then a stride through the rest.
    let positions: Vec<usize> = (0..64)
        .chain((64..pristine.len()).step_by(997))
        .chain([pristine.len() - 1])
        .collect();
    for pos in positions {
        std::fs::write(&p, flip_bit(&pristine, pos)).unwrap();
        match v.blobs().get(&id) {
            Err(VaultError::BlobCorrupt { .. }) => {}
            other => panic!("flip at byte {pos}: {:?}", other.map(|b| b.len())),
        }
    }
}

#[test]
fn truncated_reordered_spliced_or_renamed_blobs_are_detected() {
    let (d, v) = new_vault();
    let chunk_file = 64 * 1024 + 32;
    let a = v.blobs().put(&pattern(3 * 64 * 1024, 1)).unwrap();
    let b = v.blobs().put(&pattern(3 * 64 * 1024, 2)).unwrap();
    let pa = blob_path(d.path(), &a);
    let pb = blob_path(d.path(), &b);
    let fa = std::fs::read(&pa).unwrap();
    let fb = std::fs::read(&pb).unwrap();
    let expect_corrupt = |bytes: &[u8], what: &str| {
        std::fs::write(&pa, bytes).unwrap();
        match v.blobs().get(&a) {
            Err(VaultError::BlobCorrupt { reason, .. }) => reason,
            other => panic!("{what}: {:?}", other.map(|x| x.len())),
        }
    };
    // Cut at a chunk boundary (a valid-looking prefix) and mid-chunk.
    let r = expect_corrupt(&fa[..28 + 2 * chunk_file], "cut at chunk boundary");
    assert!(r.contains("chunk 1"), "{r}");
    expect_corrupt(&fa[..fa.len() - 5], "cut mid-chunk");
    expect_corrupt(&fa[..10], "cut in header");
    expect_corrupt(&[], "empty file");
    // Swap chunks 0 and 1.
    let mut sw = fa.clone();
    let (c0, c1) = (28..28 + chunk_file, 28 + chunk_file..28 + 2 * chunk_file);
    sw[c0.clone()].copy_from_slice(&fa[c1.clone()]);
    sw[c1].copy_from_slice(&fa[c0.clone()]);
    expect_corrupt(&sw, "swapped chunks");
    // Splice a chunk from blob b.
    let mut sp = fa.clone();
    sp[c0.clone()].copy_from_slice(&fb[c0]);
    expect_corrupt(&sp, "spliced chunk");
    // Whole file of b renamed to a's name.
    let r = expect_corrupt(&fb, "renamed blob");
    assert!(r.contains("does not match its id"), "{r}");
    std::fs::write(&pa, &fa).unwrap();
    assert_eq!(v.blobs().get(&a).unwrap(), pattern(3 * 64 * 1024, 1));
    // Missing blob.
    std::fs::remove_file(&pb).unwrap();
    assert!(matches!(v.blobs().get(&b), Err(VaultError::BlobNotFound(x)) if x == b));
}

#[test]
fn gc_removes_only_unreferenced_blobs() {
    let (d, v) = new_vault();
    let keep = v.blobs().put(b"keep me").unwrap();
    let drop1 = v.blobs().put(&pattern(200_000, 4)).unwrap();
    let drop2 = v.blobs().put(b"old pre-image").unwrap();
    let live: HashSet<BlobId> = [keep].into_iter().collect();
    let rep = v.blobs().gc(&live).unwrap();
    assert_eq!((rep.kept, rep.removed), (1, 2));
    assert!(rep.bytes_freed > 200_000);
    assert_eq!(v.blobs().list().unwrap(), vec![keep]);
    assert!(!blob_path(d.path(), &drop1).exists());
    assert!(matches!(
        v.blobs().get(&drop2),
        Err(VaultError::BlobNotFound(_))
    ));
    assert_eq!(v.blobs().get(&keep).unwrap(), b"keep me");
    // Re-storing collected content works.
    assert_eq!(v.blobs().put(b"old pre-image").unwrap(), drop2);
}

#[test]
fn blobs_survive_reopen_and_rekey() {
    let (d, v) = new_vault();
    let id = v.blobs().put(&pattern(100_000, 5)).unwrap();
    v.rekey("another passphrase", None).unwrap();
    drop(v);
    let v = Vault::open(d.path(), "another passphrase").unwrap();
    assert_eq!(v.blobs().get(&id).unwrap(), pattern(100_000, 5));
    let st = v.status().unwrap();
    assert_eq!(st.blob_count, 1);
}
