//! Attacks on sign-in against a real server: forged and stale tokens, replayed codes, guessing
//! passwords and codes, floods of registrations.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::auth::{code_at, ledger_of, login, now, register, signed_in};
use crate::harness::{Api, PASSWORD, Server, unique};

const JWT_SECRET: &str = "a-known-test-signing-secret-of-40-chars!";

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

fn sign(claims: &Value, key: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn with_token(server: &Server, token: String) -> Api {
    let mut api = server.client();
    api.token = Some(token);
    api
}

async fn me_status(server: &Server, token: String) -> (u16, String) {
    let r = with_token(server, token).get("/api/v1/auth/me").await;
    (r.status, r.code().to_string())
}

#[tokio::test]
async fn forged_tampered_and_expired_tokens_are_refused() {
    let server = Server::start(&[("JWT_SECRET", JWT_SECRET)], &[]);
    let (ann, _) = register(&server, "ann-jwt").await;
    let (bob, _) = register(&server, "bob-jwt").await;
    let token = ann.token.clone().unwrap();
    let claims = claims_of(&token);
    let bob_id = claims_of(bob.token.as_ref().unwrap())["sub"].clone();

    // The control: a token we sign with the server's key for Ann's live session works, so the
    // refusals below are about what each one changes.
    let mut same = claims.clone();
    same["iat"] = json!(now());
    assert_eq!(me_status(&server, sign(&same, JWT_SECRET)).await.0, 200);

    // alg: none, with and without a signature part.
    let header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = B64.encode(serde_json::to_vec(&claims).unwrap());
    for t in [format!("{header}.{body}."), format!("{header}.{body}")] {
        assert_eq!(me_status(&server, t).await, (401, "unauthorized".into()));
    }
    // Signed with another key.
    let wrong_key = sign(&claims, "another-secret-that-is-32-characters-long");
    assert_eq!(me_status(&server, wrong_key).await.0, 401);
    // Ann's token with Bob's id in `sub`, her signature kept.
    let mut as_bob = claims.clone();
    as_bob["sub"] = bob_id.clone();
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(serde_json::to_vec(&as_bob).unwrap()),
        parts[2]
    );
    assert_eq!(me_status(&server, tampered).await.0, 401);
    // Even with the right key, Bob's id on Ann's session is refused: a session is bound to its
    // user.
    assert_eq!(me_status(&server, sign(&as_bob, JWT_SECRET)).await.0, 401);
    // Expired, signed with the right key, on a live session.
    let mut expired = claims.clone();
    expired["iat"] = json!(now() - 7200);
    expired["exp"] = json!(now() - 3600);
    assert_eq!(me_status(&server, sign(&expired, JWT_SECRET)).await.0, 401);
    // Well signed and unexpired, but for a session the server never started.
    let mut no_session = claims.clone();
    no_session["sid"] = json!(uuid_like());
    assert_eq!(
        me_status(&server, sign(&no_session, JWT_SECRET)).await.0,
        401
    );
    // A login ticket or garbage is no token either.
    assert_eq!(me_status(&server, "not.a.token".into()).await.0, 401);

    // After sign-out, the genuine token is dead too.
    assert_eq!(ann.post("/api/v1/auth/logout", json!({})).await.status, 204);
    assert_eq!(me_status(&server, token).await.0, 401);
    assert_eq!(me_status(&server, sign(&same, JWT_SECRET)).await.0, 401);
}

fn uuid_like() -> String {
    format!("00000000-0000-4000-8000-{:012x}", now())
}

#[tokio::test]
async fn a_restart_ends_every_session() {
    let server = Server::start(&[], &[]);
    let (ann, _) = register(&server, "ann-restart").await;
    assert_eq!(ann.get("/api/v1/auth/me").await.status, 200);
    let token = ann.token.clone().unwrap();
    let server = server.restart(&[], &[]);
    assert_eq!(me_status(&server, token).await.0, 401);
    // The account itself survived.
    let again = signed_in(&server, "ann-restart").await;
    assert_eq!(again.get("/api/v1/auth/me").await.status, 200);
}

#[tokio::test]
async fn guessing_passwords_locks_the_account_even_for_the_right_password() {
    let server = Server::start(
        &[
            ("SECURECLAW_LOGIN_MAX_FAILURES", "3"),
            ("SECURECLAW_LOGIN_BACKOFF_AFTER", "100"),
            ("SECURECLAW_LOCKOUT_SECONDS", "600"),
        ],
        &[],
    );
    let (ann, _) = register(&server, "ann-brute").await;
    let access_token = ann.token.clone().unwrap();
    register(&server, "bob-brute").await;
    let guess = "wrong-guess-number-one";
    for _ in 0..3 {
        assert_eq!(login(&server, "ann-brute", guess).await.status, 401);
    }
    let r = login(&server, "ann-brute", PASSWORD).await;
    assert_eq!((r.status, r.code()), (429, "locked_out"), "{:?}", r.body);
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait > 500 && wait <= 600, "Retry-After {wait}");
    // Another account from the same address is not locked.
    assert_eq!(login(&server, "bob-brute", PASSWORD).await.status, 200);
    // A name with no account locks the same way (no telling them apart).
    for _ in 0..3 {
        assert_eq!(login(&server, "nobody-brute", guess).await.status, 401);
    }
    assert_eq!(
        login(&server, "nobody-brute", guess).await.code(),
        "locked_out"
    );

    let dir = server.stop_keeping_data();
    let ledger = ledger_of(&dir.path().join("data/state"));
    let of = |kind: &str, user: &str| {
        ledger
            .iter()
            .filter(|e| e["kind"] == kind && e.to_string().contains(user))
            .count()
    };
    assert_eq!(of("auth_login_failed", "ann-brute"), 3);
    assert_eq!(of("auth_lockout", "ann-brute"), 1);
    assert_eq!(of("auth_lockout", "nobody-brute"), 1);
    assert!(of("auth_registered", "ann-brute") == 1 && of("auth_login", "bob-brute") >= 1);
    let all = serde_json::to_string(&ledger).unwrap();
    for secret in [PASSWORD, guess, access_token.as_str()] {
        assert!(!all.contains(secret), "the ledger holds a secret: {secret}");
    }
}

#[tokio::test]
async fn failures_back_off_and_a_success_resets_the_count() {
    let server = Server::start(
        &[
            ("SECURECLAW_LOGIN_MAX_FAILURES", "3"),
            ("SECURECLAW_LOGIN_BACKOFF_AFTER", "100"),
        ],
        &[],
    );
    register(&server, "ann-reset").await;
    // Two failures, a success, two failures: never three in a row, never locked.
    for _ in 0..2 {
        for _ in 0..2 {
            assert_eq!(
                login(&server, "ann-reset", "wrong-password-x").await.status,
                401
            );
        }
        assert_eq!(login(&server, "ann-reset", PASSWORD).await.status, 200);
    }
    drop(server);

    let server = Server::start(
        &[
            ("SECURECLAW_LOGIN_BACKOFF_AFTER", "2"),
            ("SECURECLAW_LOGIN_BACKOFF_BASE_SECONDS", "120"),
        ],
        &[],
    );
    register(&server, "ann-backoff").await;
    for _ in 0..2 {
        assert_eq!(
            login(&server, "ann-backoff", "wrong-password-x")
                .await
                .status,
            401
        );
    }
    let r = login(&server, "ann-backoff", PASSWORD).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{:?}", r.body);
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=120).contains(&wait), "Retry-After {wait}");
}

#[tokio::test]
async fn guessing_totp_codes_counts_toward_the_lockout() {
    let server = Server::start(
        &[
            ("SECURECLAW_LOGIN_MAX_FAILURES", "2"),
            ("SECURECLAW_LOGIN_BACKOFF_AFTER", "100"),
        ],
        &[],
    );
    let (ann, secret) = register(&server, "ann-codes").await;
    let on = ann
        .post(
            "/api/v1/auth/2fa/enable",
            json!({"code": code_at(&secret, now())}),
        )
        .await;
    assert_eq!(on.status, 200);
    for _ in 0..2 {
        let r = login(&server, "ann-codes", PASSWORD).await;
        let ticket = r.body["login_token"].as_str().unwrap().to_string();
        let r = server
            .client()
            .post(
                "/api/v1/auth/login/totp",
                json!({"login_token": ticket, "code": "000000"}),
            )
            .await;
        assert_eq!((r.status, r.code()), (401, "invalid_code"));
    }
    let r = login(&server, "ann-codes", PASSWORD).await;
    assert_eq!((r.status, r.code()), (429, "locked_out"), "{:?}", r.body);
}

#[tokio::test]
async fn registrations_per_address_are_capped_and_forwarded_for_is_not_believed() {
    let server = Server::start(&[("SECURECLAW_REGISTER_MAX_PER_WINDOW", "2")], &[]);
    for _ in 0..2 {
        register(&server, &unique("flood")).await;
    }
    let client = server.client();
    let r = client
        .send(
            client
                .request(reqwest::Method::POST, "/api/v1/auth/register")
                .header("x-forwarded-for", "203.0.113.77")
                .json(&json!({"username": unique("flood"), "password": PASSWORD})),
        )
        .await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn one_code_raced_on_four_tickets_signs_in_once() {
    let server = Server::start(&[], &[]);
    let (ann, secret) = register(&server, "ann-race").await;
    let t = now();
    let on = ann
        .post(
            "/api/v1/auth/2fa/enable",
            json!({"code": code_at(&secret, t)}),
        )
        .await;
    assert_eq!(on.status, 200);
    let mut tickets = Vec::new();
    for _ in 0..4 {
        let r = login(&server, "ann-race", PASSWORD).await;
        tickets.push(r.body["login_token"].as_str().unwrap().to_string());
    }
    let code = code_at(&secret, t + 30);
    let attempts = tickets.into_iter().map(|ticket| {
        let client = server.client();
        let code = code.clone();
        async move {
            client
                .post(
                    "/api/v1/auth/login/totp",
                    json!({"login_token": ticket, "code": code}),
                )
                .await
                .status
        }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        3,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn one_address_guessing_many_names_is_slowed() {
    let server = Server::start(
        &[
            ("SECURECLAW_ADDR_BACKOFF_AFTER", "3"),
            ("SECURECLAW_LOGIN_BACKOFF_BASE_SECONDS", "60"),
        ],
        &[],
    );
    register(&server, "ann-spray").await;
    for i in 0..3 {
        let r = login(&server, &format!("sprayed-{i}"), "password-spraying").await;
        assert_eq!(r.status, 401);
    }
    // A name never tried before, even a real account with its right password: the address
    // must wait.
    let r = login(&server, "ann-spray", PASSWORD).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn forwarded_for_is_believed_from_a_trusted_proxy() {
    let server = Server::start(
        &[
            ("SECURECLAW_REGISTER_MAX_PER_WINDOW", "1"),
            ("SECURECLAW_TRUSTED_PROXIES", "127.0.0.1"),
        ],
        &[],
    );
    let client = server.client();
    let register_from = |addr: &'static str| {
        let client = client.clone();
        async move {
            client
                .send(
                    client
                        .request(reqwest::Method::POST, "/api/v1/auth/register")
                        .header("x-forwarded-for", addr)
                        .json(&json!({"username": unique("proxied"), "password": PASSWORD})),
                )
                .await
        }
    };
    assert_eq!(register_from("203.0.113.1").await.status, 201);
    let again = register_from("203.0.113.1").await;
    assert_eq!((again.status, again.code()), (429, "rate_limited"));
    // Another client behind the same proxy has its own allowance.
    assert_eq!(register_from("203.0.113.2").await.status, 201);
}

#[tokio::test]
async fn a_burst_of_parallel_guesses_cannot_outrun_the_lockout() {
    let server = Server::start(
        &[
            ("SECURECLAW_LOGIN_MAX_FAILURES", "3"),
            ("SECURECLAW_LOGIN_BACKOFF_AFTER", "100"),
        ],
        &[],
    );
    register(&server, "ann-burst").await;
    let guesses = (0..12).map(|i| {
        let server = &server;
        async move {
            login(server, "ann-burst", &format!("parallel-guess-{i}"))
                .await
                .status
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(checked <= 3, "{checked} guesses were checked: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    // Then one guess at a time: exactly three guesses in all are ever checked, and after them
    // even the right password is refused.
    let mut total = checked;
    let last = loop {
        let r = login(&server, "ann-burst", "one-more-guess").await;
        if r.status != 401 {
            break r;
        }
        total += 1;
        assert!(total <= 3, "a fourth guess was checked");
    };
    assert_eq!(
        (last.status, last.code()),
        (429, "locked_out"),
        "{:?}",
        last.body
    );
    assert_eq!(total, 3);
    let r = login(&server, "ann-burst", PASSWORD).await;
    assert_eq!((r.status, r.code()), (429, "locked_out"), "{:?}", r.body);
}
