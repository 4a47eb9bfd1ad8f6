//! Published test vectors, run through the vault's own wrappers (`secureclaw_vault::crypto`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use secureclaw_vault::crypto;
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn hx(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// `["aa", 131]` -> 131 bytes of 0xaa.
fn repeat(v: &Value) -> Vec<u8> {
    let byte = hex::decode(v[0].as_str().unwrap()).unwrap()[0];
    vec![byte; v[1].as_u64().unwrap() as usize]
}

#[test]
fn rfc9106_argon2id() {
    let doc = load("rfc9106_argon2id.json");
    for t in doc["tests"].as_array().unwrap() {
        let mut out = vec![0u8; 32];
        crypto::argon2id(
            &repeat(&t["password_repeat"]),
            &repeat(&t["salt_repeat"]),
            t["memory_kib"].as_u64().unwrap() as u32,
            t["iterations"].as_u64().unwrap() as u32,
            t["parallelism"].as_u64().unwrap() as u32,
            &repeat(&t["secret_repeat"]),
            &repeat(&t["ad_repeat"]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, hx(&t["tag"]), "{}", t["name"]);
    }
}

#[test]
fn rfc5869_hkdf_sha256() {
    let doc = load("rfc5869_hkdf_sha256.json");
    for t in doc["tests"].as_array().unwrap() {
        let okm = hx(&t["okm"]);
        let mut out = vec![0u8; okm.len()];
        crypto::hkdf_sha256(
            &hx(&t["ikm"]),
            Some(&hx(&t["salt"])),
            &hx(&t["info"]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, okm, "{}", t["name"]);
    }
    // The 32-byte sub-key helper is the same construction.
    let t = &doc["tests"][0];
    let k = crypto::derive_key(&hx(&t["ikm"]), &hx(&t["salt"]), "\u{f0}").unwrap();
    let mut direct = [0u8; 32];
    crypto::hkdf_sha256(
        &hx(&t["ikm"]),
        Some(&hx(&t["salt"])),
        "\u{f0}".as_bytes(),
        &mut direct,
    )
    .unwrap();
    assert_eq!(*k, direct);
}

#[test]
fn rfc4231_hmac_sha256() {
    let doc = load("rfc4231_hmac_sha256.json");
    for t in doc["tests"].as_array().unwrap() {
        let key = if t.get("key").is_some() {
            hx(&t["key"])
        } else {
            repeat(&t["key_repeat"])
        };
        let data = match t.get("data") {
            Some(d) => hx(d),
            None => t["data_text"].as_str().unwrap().as_bytes().to_vec(),
        };
        let want = hx(&t["mac"]);
        assert_eq!(
            crypto::hmac_sha256(&key, &[&data]).to_vec(),
            want,
            "{}",
            t["name"]
        );
        // Split input (as the ledger feeds prev_mac and the entry) gives the same MAC.
        let (a, b) = data.split_at(data.len() / 2);
        assert_eq!(crypto::hmac_sha256(&key, &[a, b]).to_vec(), want);
        let mut s = crypto::HmacStream::new(&key);
        s.update(a);
        s.update(b);
        assert_eq!(s.finish().to_vec(), want);
    }
}

fn gcm_case(
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    pt: &[u8],
    ct_tag: &[u8],
) -> (Vec<u8>, Option<Vec<u8>>) {
    let key: [u8; 32] = key.try_into().unwrap();
    let iv: [u8; 12] = iv.try_into().unwrap();
    let c = crypto::Cipher::new(&key);
    (c.seal(&iv, aad, pt).unwrap(), c.open(&iv, aad, ct_tag))
}

#[test]
fn nist_gcm_aes256() {
    let doc = load("nist_gcm_aes256.json");
    for t in doc["tests"].as_array().unwrap() {
        let ct_tag = [hx(&t["ct"]), hx(&t["tag"])].concat();
        let (sealed, opened) = gcm_case(
            &hx(&t["key"]),
            &hx(&t["iv"]),
            &hx(&t["aad"]),
            &hx(&t["pt"]),
            &ct_tag,
        );
        assert_eq!(sealed, ct_tag, "{}", t["name"]);
        assert_eq!(opened, Some(hx(&t["pt"])), "{}", t["name"]);
        let mut bad = ct_tag.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x80;
        assert_eq!(
            gcm_case(
                &hx(&t["key"]),
                &hx(&t["iv"]),
                &hx(&t["aad"]),
                &hx(&t["pt"]),
                &bad
            )
            .1,
            None
        );
    }
}

#[test]
fn wycheproof_aes256_gcm() {
    let doc = load("wycheproof_aes256_gcm.json");
    let (mut valid, mut invalid) = (0, 0);
    for g in doc["testGroups"].as_array().unwrap() {
        for t in g["tests"].as_array().unwrap() {
            let ct_tag = [hx(&t["ct"]), hx(&t["tag"])].concat();
            let (sealed, opened) = gcm_case(
                &hx(&t["key"]),
                &hx(&t["iv"]),
                &hx(&t["aad"]),
                &hx(&t["msg"]),
                &ct_tag,
            );
            match t["result"].as_str().unwrap() {
                "valid" => {
                    valid += 1;
                    assert_eq!(sealed, ct_tag, "tcId {}", t["tcId"]);
                    assert_eq!(opened, Some(hx(&t["msg"])), "tcId {}", t["tcId"]);
                }
                _ => {
                    invalid += 1;
                    assert_eq!(opened, None, "tcId {} must be rejected", t["tcId"]);
                }
            }
        }
    }
    assert!(
        valid >= 30 && invalid >= 20,
        "{valid} valid, {invalid} invalid"
    );
}
