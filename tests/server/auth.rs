//! Accounts and sign-in on a real server: TOTP, sessions, limits, roles, provider keys, and the
//! ledger entries they leave.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{Api, PASSPHRASE, PASSWORD, Server, shared, unique};

// The other test modules take these from here.
pub use crate::harness::{code_at, now};

/// Register `username` and return the client (signed in) and the TOTP secret.
pub async fn register(server: &Server, username: &str) -> (Api, String) {
    let mut api = server.client();
    let r = api.register(username).await;
    let secret = r.body["totp"]["secret"].as_str().unwrap().to_string();
    (api, secret)
}

pub async fn login(server: &Server, username: &str, password: &str) -> crate::harness::Reply {
    server
        .client()
        .post(
            "/api/v1/auth/login",
            json!({"username": username, "password": password}),
        )
        .await
}

/// A client holding the token of a fresh password sign-in.
pub async fn signed_in(server: &Server, username: &str) -> Api {
    let r = login(server, username, PASSWORD).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut api = server.client();
    api.token = Some(r.body["access_token"].as_str().unwrap().to_string());
    api
}

/// The entries of a server's whole ledger, read with `secureclaw ledger export` once it has
/// stopped.
pub fn ledger_of(state_dir: &Path) -> Vec<Value> {
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("ledger.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_secureclaw"))
        .args(["ledger", "export", "--state-dir"])
        .arg(state_dir)
        .arg("--out")
        .arg(&file)
        .env("SECURECLAW_PASSPHRASE", PASSPHRASE)
        .status()
        .unwrap();
    assert!(status.success(), "ledger export failed");
    std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["entry"].clone())
        .collect()
}

#[tokio::test]
async fn registration_returns_a_totp_setup_that_is_not_yet_required() {
    let server = shared();
    let name = unique("setup");
    let (_api, secret) = register(server, &name).await;
    let r = login(server, &name, PASSWORD).await;
    assert_eq!(r.status, 200);
    assert!(r.body["access_token"].is_string());
    assert!(r.body.get("totp_required").is_none());
    let again = server
        .client()
        .post(
            "/api/v1/auth/register",
            json!({"username": unique("setup"), "password": PASSWORD}),
        )
        .await;
    let url = again.body["totp"]["otpauth_url"].as_str().unwrap();
    assert!(url.starts_with("otpauth://totp/SecureClawAgent:"), "{url}");
    assert!(url.contains("issuer=SecureClawAgent"), "{url}");
    assert_eq!(again.body["totp"]["enabled"], false);
    assert_eq!(secret.len(), 32, "a 160-bit secret in base32");
}

#[tokio::test]
async fn two_factor_sign_in_spends_each_code_once() {
    let server = shared();
    let name = unique("totp");
    let (api, secret) = register(server, &name).await;
    let other = signed_in(server, &name).await;
    let t = now();
    let first = code_at(&secret, t);

    // Enabling needs a right code, and ends the user's other sessions but not this one.
    let wrong = api
        .post("/api/v1/auth/2fa/enable", json!({"code": "000000"}))
        .await;
    assert_eq!((wrong.status, wrong.code()), (401, "invalid_code"));
    let on = api
        .post("/api/v1/auth/2fa/enable", json!({"code": first}))
        .await;
    assert_eq!(on.status, 200, "{:?}", on.body);
    assert_eq!(on.body["enabled"], true);
    assert_eq!(on.body["sessions_ended"], 1);
    assert_eq!(other.get("/api/v1/auth/me").await.status, 401);
    assert_eq!(api.get("/api/v1/auth/me").await.status, 200);

    // The password alone now yields a ticket, not a token, and the ticket is no token.
    let r = login(server, &name, PASSWORD).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["totp_required"], true);
    assert!(r.body.get("access_token").is_none());
    let ticket = r.body["login_token"].as_str().unwrap().to_string();
    let mut as_bearer = server.client();
    as_bearer.token = Some(ticket.clone());
    assert_eq!(as_bearer.get("/api/v1/auth/me").await.status, 401);

    // The code that enabled 2FA does not sign in: codes are spent across enable and login.
    let replay = server
        .client()
        .post(
            "/api/v1/auth/login/totp",
            json!({"login_token": ticket, "code": first}),
        )
        .await;
    assert_eq!((replay.status, replay.code()), (401, "invalid_code"));
    // That spent the ticket.
    let next = code_at(&secret, t + 30);
    let spent = server
        .client()
        .post(
            "/api/v1/auth/login/totp",
            json!({"login_token": ticket, "code": next}),
        )
        .await;
    assert_eq!((spent.status, spent.code()), (401, "invalid_login_token"));

    // A new ticket and the next step's code sign in.
    let ticket = login(server, &name, PASSWORD).await.body["login_token"]
        .as_str()
        .unwrap()
        .to_string();
    let ok = server
        .client()
        .post(
            "/api/v1/auth/login/totp",
            json!({"login_token": ticket, "code": next}),
        )
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let mut signed = server.client();
    signed.token = Some(ok.body["access_token"].as_str().unwrap().to_string());
    assert_eq!(signed.get("/api/v1/auth/me").await.body["username"], name);

    // The same code again, with a fresh ticket: refused.
    let ticket = login(server, &name, PASSWORD).await.body["login_token"]
        .as_str()
        .unwrap()
        .to_string();
    let again = server
        .client()
        .post(
            "/api/v1/auth/login/totp",
            json!({"login_token": ticket, "code": next}),
        )
        .await;
    assert_eq!((again.status, again.code()), (401, "invalid_code"));
}

#[tokio::test]
async fn disabling_two_factor_needs_a_current_code() {
    let server = shared();
    let name = unique("totpoff");
    let (api, secret) = register(server, &name).await;
    let t = now();
    let on = api
        .post(
            "/api/v1/auth/2fa/enable",
            json!({"code": code_at(&secret, t)}),
        )
        .await;
    assert_eq!(on.status, 200);
    let again = api
        .post(
            "/api/v1/auth/2fa/enable",
            json!({"code": code_at(&secret, t + 30)}),
        )
        .await;
    assert_eq!((again.status, again.code()), (409, "totp_already_enabled"));
    let wrong = api
        .post("/api/v1/auth/2fa/disable", json!({"code": "123456x"}))
        .await;
    assert_eq!((wrong.status, wrong.code()), (401, "invalid_code"));
    let off = api
        .post(
            "/api/v1/auth/2fa/disable",
            json!({"code": code_at(&secret, t + 30)}),
        )
        .await;
    assert_eq!(off.status, 200, "{:?}", off.body);
    assert_eq!(off.body["enabled"], false);
    let r = login(server, &name, PASSWORD).await;
    assert!(r.body["access_token"].is_string(), "{:?}", r.body);
    // Enabling again needs a fresh setup: the old secret is gone.
    let stale = api
        .post(
            "/api/v1/auth/2fa/enable",
            json!({"code": code_at(&secret, t + 60)}),
        )
        .await;
    assert_eq!((stale.status, stale.code()), (409, "totp_not_set_up"));
    let setup = api.post("/api/v1/auth/2fa/setup", json!({})).await;
    assert_eq!(setup.status, 200);
    assert_ne!(setup.body["secret"].as_str().unwrap(), secret);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let server = shared();
    let name = unique("enum");
    register(server, &name).await;
    let wrong = login(server, &name, "not the password at all").await;
    let unknown = login(server, &unique("nobody"), "not the password at all").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.status, unknown.status);
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.content_type(), "application/problem+json");
    // Names and passwords longer than any account's get the same answer too.
    let huge = login(server, &"n".repeat(200_000), &"p".repeat(200_000)).await;
    assert_eq!(huge.body, wrong.body);
}

#[tokio::test]
async fn malformed_json_and_unknown_fields_are_400_problems() {
    let api = shared().client();
    let bad = api
        .send(
            api.request(reqwest::Method::POST, "/api/v1/auth/login")
                .header("content-type", "application/json")
                .body("{\"username\": \"x\", "),
        )
        .await;
    assert_eq!((bad.status, bad.code()), (400, "malformed_json"));
    assert_eq!(bad.content_type(), "application/problem+json");
    let extra = api
        .post(
            "/api/v1/auth/login",
            json!({"username": "x", "password": "y", "admin": true}),
        )
        .await;
    assert_eq!(extra.status, 400, "{:?}", extra.body);
    assert_eq!(extra.content_type(), "application/problem+json");
    assert!(extra.body["detail"].as_str().unwrap().contains("admin"));
    let extra = api
        .post(
            "/api/v1/auth/register",
            json!({"username": unique("extra"), "password": PASSWORD, "admin": true}),
        )
        .await;
    assert_eq!(extra.status, 400, "registration cannot smuggle in admin");
}

#[tokio::test]
async fn users_see_and_revoke_only_their_own_sessions() {
    let server = shared();
    let ann_name = unique("ann");
    let (ann, _) = register(server, &ann_name).await;
    let ann2 = signed_in(server, &ann_name).await;
    let (bob, _) = register(server, &unique("bob")).await;

    let list = ann.get("/api/v1/auth/sessions").await;
    assert_eq!(list.status, 200);
    let sessions = list.body.as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    let other_id = sessions.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Bob sees none of Ann's sessions and cannot end one.
    let bobs = bob.get("/api/v1/auth/sessions").await;
    assert_eq!(bobs.body.as_array().unwrap().len(), 1);
    assert!(!bobs.body.to_string().contains(&other_id));
    let r = bob
        .send(bob.request(
            reqwest::Method::DELETE,
            &format!("/api/v1/auth/sessions/{other_id}"),
        ))
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    assert_eq!(ann2.get("/api/v1/auth/me").await.status, 200);

    // Ann can.
    let r = ann
        .send(ann.request(
            reqwest::Method::DELETE,
            &format!("/api/v1/auth/sessions/{other_id}"),
        ))
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(ann2.get("/api/v1/auth/me").await.status, 401);
    assert_eq!(ann.get("/api/v1/auth/me").await.status, 200);
}

#[tokio::test]
async fn provider_keys_are_write_only_and_per_user() {
    let server = shared();
    let (ann, _) = register(server, &unique("keys")).await;
    let (bob, _) = register(server, &unique("keys")).await;
    let key = "sk-test-0123456789-write-only";
    let put = ann
        .send(
            ann.request(reqwest::Method::PUT, "/api/v1/me/keys/anthropic")
                .json(&json!({"key": key})),
        )
        .await;
    assert_eq!(put.status, 204, "{:?}", put.body);
    let list = ann.get("/api/v1/me/keys").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body[0]["provider"], "anthropic");
    assert!(list.body[0]["set_at"].is_string());
    assert!(!list.body.to_string().contains(key));
    assert_eq!(bob.get("/api/v1/me/keys").await.body, json!([]));

    let unknown = ann
        .send(
            ann.request(reqwest::Method::PUT, "/api/v1/me/keys/mystery")
                .json(&json!({"key": key})),
        )
        .await;
    assert_eq!((unknown.status, unknown.code()), (400, "unknown_provider"));
    let anonymous = server
        .client()
        .send(
            server
                .client()
                .request(reqwest::Method::PUT, "/api/v1/me/keys/openai")
                .json(&json!({"key": key})),
        )
        .await;
    assert_eq!(anonymous.status, 401);

    let gone = bob
        .send(bob.request(reqwest::Method::DELETE, "/api/v1/me/keys/anthropic"))
        .await;
    assert_eq!(gone.status, 404, "Bob has no key to delete");
    let del = ann
        .send(ann.request(reqwest::Method::DELETE, "/api/v1/me/keys/anthropic"))
        .await;
    assert_eq!(del.status, 204);
    assert_eq!(ann.get("/api/v1/me/keys").await.body, json!([]));
}

/// The CLI creates an admin on a data dir; the server started on it signs that admin in, and
/// only admins reach the admin endpoints.
#[tokio::test]
async fn an_admin_made_with_the_cli_manages_roles_and_others_get_403() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_secureclaw"))
        .args(["user", "add", "boss", "--admin", "--password-file"])
        .arg(&password_file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("SECURECLAW_PASSPHRASE", PASSPHRASE)
        .env("ARGON2_MEMORY_KB", "8192")
        .env("ARGON2_ITERATIONS", "1")
        .env_remove("SECURECLAW_STATE_DIR")
        .env("HOME", dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let server = Server::start_in(dir, &[], &[]);

    let boss = signed_in(&server, "boss").await;
    let me = boss.get("/api/v1/auth/me").await;
    assert_eq!(me.body["admin"], true);
    let (bob, _) = register(&server, "bob-user").await;
    let bob_id = bob.get("/api/v1/auth/me").await.body["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(bob.get("/api/v1/auth/me").await.body["admin"], false);

    let r = bob.get("/api/v1/admin/users").await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let r = bob
        .post(
            &format!("/api/v1/admin/users/{bob_id}/roles"),
            json!({"roles": ["approver"]}),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    assert_eq!(server.client().get("/api/v1/admin/users").await.status, 401);

    let users = boss.get("/api/v1/admin/users").await;
    assert_eq!(users.status, 200);
    let names: Vec<&str> = users
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob-user", "boss"]);
    assert!(!users.body.to_string().contains("argon2"));
    assert!(!users.body.to_string().contains("secret"));

    let bad = boss
        .post(
            &format!("/api/v1/admin/users/{bob_id}/roles"),
            json!({"roles": ["Approver!"]}),
        )
        .await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_roles"));
    let set = boss
        .post(
            &format!("/api/v1/admin/users/{bob_id}/roles"),
            json!({"roles": ["approver"]}),
        )
        .await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    assert_eq!(
        bob.get("/api/v1/auth/me").await.body["roles"],
        json!(["approver"])
    );
    let missing = boss
        .post(
            "/api/v1/admin/users/no-such-user/roles",
            json!({"roles": []}),
        )
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn the_ledger_records_each_auth_event_without_its_secrets() {
    let server = Server::start(&[], &[]);
    let (ann, secret) = register(&server, "ann-ledger").await;
    let second = signed_in(&server, "ann-ledger").await;
    let key = "sk-ledger-test-key-0123456789";
    let put = ann
        .send(
            ann.request(reqwest::Method::PUT, "/api/v1/me/keys/openai")
                .json(&json!({"key": key})),
        )
        .await;
    assert_eq!(put.status, 204);
    let sessions = ann.get("/api/v1/auth/sessions").await;
    let other = sessions
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let revoke = ann
        .send(ann.request(
            reqwest::Method::DELETE,
            &format!("/api/v1/auth/sessions/{other}"),
        ))
        .await;
    assert_eq!(revoke.status, 204);

    let t = now();
    let on = ann
        .post(
            "/api/v1/auth/2fa/enable",
            json!({"code": code_at(&secret, t)}),
        )
        .await;
    assert_eq!(on.status, 200);
    let ticket = login(&server, "ann-ledger", PASSWORD).await.body["login_token"]
        .as_str()
        .unwrap()
        .to_string();
    let replay = server
        .client()
        .post(
            "/api/v1/auth/login/totp",
            json!({"login_token": ticket, "code": code_at(&secret, t)}),
        )
        .await;
    assert_eq!(replay.code(), "invalid_code");
    let off = ann
        .post(
            "/api/v1/auth/2fa/disable",
            json!({"code": code_at(&secret, t + 30)}),
        )
        .await;
    assert_eq!(off.status, 200, "{:?}", off.body);
    assert_eq!(ann.post("/api/v1/auth/logout", json!({})).await.status, 204);

    let first = ann.token.clone().unwrap();
    let second = second.token.clone().unwrap();
    let dir = server.stop_keeping_data();
    let ledger = ledger_of(&dir.path().join("data/state"));
    let kinds: Vec<&str> = ledger.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
    assert_eq!(count("auth_registered"), 1, "{kinds:?}");
    assert_eq!(count("auth_login"), 2, "{kinds:?}");
    assert_eq!(count("auth_login_failed"), 1, "{kinds:?}");
    assert_eq!(count("auth_2fa_changed"), 2, "{kinds:?}");
    assert_eq!(count("auth_logout"), 2, "{kinds:?}");
    assert_eq!(count("auth_key_set"), 1, "{kinds:?}");
    let of = |k: &'static str| ledger.iter().filter(move |e| e["kind"] == k);
    assert_eq!(
        of("auth_login_failed").next().unwrap()["result"]["reason"],
        "replayed code"
    );
    let toggles: Vec<&Value> = of("auth_2fa_changed")
        .map(|e| &e["result"]["enabled"])
        .collect();
    assert_eq!(toggles, [&json!(true), &json!(false)]);
    let all = serde_json::to_string(&ledger).unwrap();
    for s in [PASSWORD, key, &secret, &first, &second, &ticket] {
        assert!(!all.contains(s), "the ledger holds a secret: {s}");
    }
}
