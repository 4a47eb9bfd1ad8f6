//! The sign-up, TOTP and settings pages of the web UI on a real server, driven like a browser
//! without scripts: GET a page, read its CSRF field, POST the form, follow the 303.

use std::collections::BTreeMap;

use crate::auth::{code_at, now};
use crate::harness::{Api, PASSWORD, Server, shared, unique};

/// A cookie-keeping client that does not follow redirects (the tests check each 303).
struct Browser {
    base: String,
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Browser {
    fn new() -> Browser {
        Browser::on(shared())
    }

    fn on(server: &Server) -> Browser {
        Browser {
            base: server.url.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(std::time::Duration::from_secs(90))
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    /// A browser already signed in with an API token (the cookie holds the same token).
    fn with_session(token: &str) -> Browser {
        let mut b = Browser::new();
        b.cookies.insert("sc_session".into(), token.into());
        b
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, rb: reqwest::RequestBuilder) -> Page {
        let rb = if self.cookies.is_empty() {
            rb
        } else {
            rb.header("cookie", self.cookie_header())
        };
        let res = rb.send().await.unwrap();
        for v in res.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attrs.contains("Max-Age=0") {
                self.cookies.remove(name.trim());
            } else {
                self.cookies.insert(name.trim().into(), value.trim().into());
            }
        }
        Page {
            status: res.status().as_u16(),
            location: res
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_string()),
            body: res.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let rb = self.http.get(format!("{}{path}", self.base));
        self.send(rb).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let rb = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(rb).await
    }

    fn session(&self) -> Option<&str> {
        self.cookies.get("sc_session").map(String::as_str)
    }
}

/// The value of the first `<input ... name="NAME" value="...">` of a page.
fn field(html: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no field {name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

/// The text of the element with `id`.
fn text_of(html: &str, id: &str) -> String {
    let marker = format!(r#"id="{id}""#);
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let after = &html[start..];
    let open_end = after.find('>').unwrap() + 1;
    after[open_end..].split('<').next().unwrap().to_string()
}

/// Session ids of the sessions table, and which one is marked as this session.
fn session_rows(html: &str) -> Vec<(String, bool)> {
    html.split(r#"<tr data-session=""#)
        .skip(1)
        .map(|rest| {
            let id = rest.split('"').next().unwrap().to_string();
            let tag_end = rest.find('>').unwrap();
            (id, rest[..tag_end].contains(r#"class="current""#))
        })
        .collect()
}

/// A 6-digit string that is none of the codes valid around now.
fn wrong_code(secret: &str) -> String {
    let t = now();
    let valid: Vec<String> = (0..5).map(|i| code_at(secret, t + i * 30 - 60)).collect();
    ["000000", "111111", "222222", "333333", "444444", "555555"]
        .iter()
        .find(|c| !valid.contains(&c.to_string()))
        .unwrap()
        .to_string()
}

/// Register through the form; the browser ends signed in, on the TOTP setup page.
async fn register_by_form(b: &mut Browser, username: &str) -> Page {
    let page = b.get("/ui/register").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(r#"id="register-submit""#));
    assert!(b.cookies.contains_key("sc_anon"), "no anonymous cookie");
    let csrf = field(&page.body, "csrf");
    b.post(
        "/ui/register",
        &[
            ("csrf", &csrf),
            ("username", username),
            ("password", PASSWORD),
        ],
    )
    .await
}

/// Sign in through the form; with 2FA on, the answer is the TOTP step page.
async fn login_by_form(b: &mut Browser, username: &str) -> Page {
    let page = b.get("/ui/login").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(r#"id="login-submit""#));
    let csrf = field(&page.body, "csrf");
    b.post(
        "/ui/login",
        &[
            ("csrf", &csrf),
            ("username", username),
            ("password", PASSWORD),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_turn_on_two_factor_and_sign_in_with_a_code() {
    let mut b = Browser::new();
    let name = unique("ui-2fa");
    let res = register_by_form(&mut b, &name).await;
    assert_eq!(res.status, 303, "{}", res.body);
    assert_eq!(res.location.as_deref(), Some("/ui/settings/2fa?new=1"));
    assert!(b.session().is_some(), "registering did not sign in");

    // The setup page draws the QR code on the server and prints the secret.
    let setup = b.get("/ui/settings/2fa?new=1").await;
    assert_eq!(setup.status, 200, "{}", setup.body);
    assert!(
        setup.body.contains(r#"<svg id="totp-qr""#),
        "{}",
        setup.body
    );
    assert!(setup.body.contains(r#"role="img""#));
    assert!(
        !setup.body.contains("style="),
        "inline style breaks the CSP"
    );
    let secret = text_of(&setup.body, "totp-secret");
    assert!(secret.len() >= 16, "{secret}");
    assert!(setup.body.contains(r#"href="/ui/""#), "no way to skip");
    // Reloading shows the same pending secret: the one the app scanned stays valid.
    let again = b.get("/ui/settings/2fa").await;
    assert_eq!(text_of(&again.body, "totp-secret"), secret);

    // A wrong code keeps the page, its error and the same secret.
    let csrf = field(&setup.body, "csrf");
    let wrong = b
        .post(
            "/ui/settings/2fa",
            &[("csrf", &csrf), ("code", &wrong_code(&secret))],
        )
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(
        wrong.body.contains(r#"id="enable-error""#),
        "{}",
        wrong.body
    );
    assert_eq!(text_of(&wrong.body, "totp-secret"), secret);

    let t = now();
    let on = b
        .post(
            "/ui/settings/2fa",
            &[("csrf", &csrf), ("code", &code_at(&secret, t))],
        )
        .await;
    assert_eq!(on.status, 303, "{}", on.body);
    assert!(on.location.unwrap().starts_with("/ui/settings?done=2fa-on"));
    let settings = b.get("/ui/settings?done=2fa-on").await;
    assert_eq!(text_of(&settings.body, "two-factor-status"), "on");
    assert!(settings.body.contains(r#"id="disable-2fa""#));
    assert!(settings.body.contains(r#"id="settings-done""#));

    // Sign out, then in: the password leads to the TOTP step.
    let out = b.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(b.session().is_none(), "signing out kept the cookie");
    let step = login_by_form(&mut b, &name).await;
    assert_eq!(step.status, 200, "{}", step.body);
    assert!(step.body.contains(r#"id="totp-submit""#), "{}", step.body);
    assert!(b.session().is_none());
    let ticket = field(&step.body, "ticket");
    let csrf = field(&step.body, "csrf");
    // The enabling code's step is spent: the app's next code signs in.
    let signed_in = b
        .post(
            "/ui/login/totp",
            &[
                ("csrf", &csrf),
                ("ticket", &ticket),
                ("code", &code_at(&secret, t + 30)),
            ],
        )
        .await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.location.as_deref(), Some("/ui/"));
    assert!(b.session().is_some());
    let me = b.get("/ui/settings").await;
    assert_eq!(me.status, 200);
    assert!(me.body.contains(&name));

    // A wrong code: the error, and a way back to sign in (the ticket is spent).
    let mut other = Browser::new();
    let step = login_by_form(&mut other, &name).await;
    let wrong = other
        .post(
            "/ui/login/totp",
            &[
                ("csrf", &field(&step.body, "csrf")),
                ("ticket", &field(&step.body, "ticket")),
                ("code", &wrong_code(&secret)),
            ],
        )
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.body.contains(r#"id="totp-error""#), "{}", wrong.body);
    assert!(wrong.body.contains(r#"id="login-again""#), "{}", wrong.body);
    assert!(!wrong.body.contains(r#"id="totp-submit""#));
    assert!(other.session().is_none());

    // Turning 2FA off needs a right code; a wrong one is shown by the 2FA section.
    let settings = b.get("/ui/settings").await;
    let refused = b
        .post(
            "/ui/settings/2fa/disable",
            &[
                ("csrf", &field(&settings.body, "csrf")),
                ("code", &wrong_code(&secret)),
            ],
        )
        .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains(r#"id="two-factor-error""#));
    assert_eq!(text_of(&refused.body, "two-factor-status"), "on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_errors_keep_the_form() {
    let name = unique("ui-taken");
    Api::user(shared(), "ui-first").await;
    let mut first = Browser::new();
    assert_eq!(register_by_form(&mut first, &name).await.status, 303);

    let mut b = Browser::new();
    let taken = register_by_form(&mut b, &name).await;
    assert_eq!(taken.status, 409, "{}", taken.body);
    assert!(taken.body.contains(r#"id="register-error""#));
    assert!(taken.body.contains(&format!(r#"value="{name}""#)));
    assert!(b.session().is_none());

    let page = b.get("/ui/register").await;
    let weak = b
        .post(
            "/ui/register",
            &[
                ("csrf", &field(&page.body, "csrf")),
                ("username", &unique("ui-weak")),
                ("password", "short"),
            ],
        )
        .await;
    assert_eq!(weak.status, 400, "{}", weak.body);
    assert!(weak.body.contains(r#"id="register-error""#));
    // The password is never written back into the page.
    assert!(!weak.body.contains(r#"value="short""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_without_their_csrf_token_are_refused() {
    let mut b = Browser::new();
    b.get("/ui/register").await;
    let name = unique("ui-csrf");
    let none = b
        .post(
            "/ui/register",
            &[("username", &name), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(none.status, 403, "{}", none.body);
    let forged = b
        .post(
            "/ui/register",
            &[
                ("csrf", "0000"),
                ("username", &name),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(forged.status, 403);
    assert!(b.session().is_none());

    let api = Api::user(shared(), "ui-csrf-key").await;
    let mut signed_in = Browser::with_session(api.token.as_deref().unwrap());
    let key = signed_in
        .post(
            "/ui/settings/keys",
            &[("provider", "openai"), ("key", "sk-no-csrf")],
        )
        .await;
    assert_eq!(key.status, 403, "{}", key.body);
    let list = api.get("/api/v1/me/keys").await;
    assert_eq!(list.body, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_list_sessions_and_revoke_them() {
    let first = Api::user(shared(), "ui-sessions").await;
    let me = first.get("/api/v1/auth/me").await;
    let name = me.body["username"].as_str().unwrap().to_string();
    let mut second = shared().client();
    second.login(&name).await;

    let mut b = Browser::with_session(first.token.as_deref().unwrap());
    let page = b.get("/ui/settings").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(text_of(&page.body, "two-factor-status"), "off");
    assert!(page.body.contains("this session"));
    let rows = session_rows(&page.body);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows.iter().filter(|(_, current)| *current).count(), 1);
    assert_eq!(
        page.body.matches(r#"class="revoke""#).count(),
        2,
        "a revoke button per row"
    );
    let (other_id, _) = rows.iter().find(|(_, current)| !current).unwrap();
    let (this_id, _) = rows.iter().find(|(_, current)| *current).unwrap();
    let csrf = field(&page.body, "csrf");

    let revoked = b
        .post(
            &format!("/ui/settings/sessions/{other_id}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    assert_eq!(
        revoked.location.as_deref(),
        Some("/ui/settings?done=session-revoked")
    );
    assert_eq!(second.get("/api/v1/auth/me").await.status, 401);
    assert_eq!(first.get("/api/v1/auth/me").await.status, 200);
    let page = b.get("/ui/settings?done=session-revoked").await;
    assert_eq!(session_rows(&page.body).len(), 1);

    // Another user's session is not found, and stays.
    let stranger = Api::user(shared(), "ui-stranger").await;
    let mut s = Browser::with_session(stranger.token.as_deref().unwrap());
    let sp = s.get("/ui/settings").await;
    let (stranger_id, _) = session_rows(&sp.body).remove(0);
    let foreign = b
        .post(
            &format!("/ui/settings/sessions/{stranger_id}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(foreign.status, 404, "{}", foreign.body);
    assert_eq!(stranger.get("/api/v1/auth/me").await.status, 200);

    // Revoking the session in use signs this browser out.
    let own = b
        .post(
            &format!("/ui/settings/sessions/{this_id}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(own.status, 303);
    assert_eq!(own.location.as_deref(), Some("/ui/login"));
    assert!(b.session().is_none());
    assert_eq!(first.get("/api/v1/auth/me").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_key_is_listed_but_never_shown() {
    const KEY: &str = "sk-ui-test-4f1d9c0e7b2a";
    let api = Api::user(shared(), "ui-keys").await;
    let mut b = Browser::with_session(api.token.as_deref().unwrap());
    let page = b.get("/ui/settings").await;
    assert!(page.body.contains(r#"id="no-keys""#));
    assert!(
        page.body
            .contains(r#"id="key-value" name="key" type="password""#)
    );
    let csrf = field(&page.body, "csrf");

    let saved = b
        .post(
            "/ui/settings/keys",
            &[("csrf", &csrf), ("provider", "openai"), ("key", KEY)],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    assert_eq!(
        saved.location.as_deref(),
        Some("/ui/settings?done=key-saved")
    );
    assert!(!saved.location.unwrap().contains(KEY));
    let page = b.get("/ui/settings?done=key-saved").await;
    assert!(
        page.body.contains(r#"data-provider="openai""#),
        "{}",
        page.body
    );
    assert!(page.body.contains("stored on "));
    assert!(page.body.contains(r#"class="delete-key"#));
    assert!(!page.body.contains(KEY), "the key is in the page");

    // A refused key: the error, and still not the key.
    let refused = b
        .post(
            "/ui/settings/keys",
            &[("csrf", &csrf), ("provider", "nosuch"), ("key", KEY)],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains(r#"id="key-error""#));
    assert!(!refused.body.contains(KEY));

    let deleted = b
        .post("/ui/settings/keys/openai/delete", &[("csrf", &csrf)])
        .await;
    assert_eq!(deleted.status, 303, "{}", deleted.body);
    let page = b.get("/ui/settings?done=key-deleted").await;
    assert!(page.body.contains(r#"id="no-keys""#));
    assert_eq!(api.get("/api/v1/me/keys").await.body, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_pages_need_a_session() {
    let mut b = Browser::new();
    let page = b.get("/ui/settings").await;
    assert_eq!(page.status, 303);
    assert_eq!(
        page.location.as_deref(),
        Some("/ui/login?next=%2Fui%2Fsettings")
    );
    let setup = b.get("/ui/settings/2fa").await;
    assert_eq!(setup.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_factor_off_and_set_up_again() {
    let mut api = shared().client();
    let r = api.register(&unique("ui-2fa-off")).await;
    let secret = r.body["totp"]["secret"].as_str().unwrap().to_string();
    let t = now();
    let on = api
        .post(
            "/api/v1/auth/2fa/enable",
            serde_json::json!({"code": code_at(&secret, t)}),
        )
        .await;
    assert_eq!(on.status, 200, "{:?}", on.body);

    let mut b = Browser::with_session(api.token.as_deref().unwrap());
    // With 2FA on, the setup page shows no secret.
    let setup = b.get("/ui/settings/2fa").await;
    assert_eq!(setup.status, 200, "{}", setup.body);
    assert!(!setup.body.contains("totp-qr"));
    assert!(!setup.body.contains(&secret));

    let page = b.get("/ui/settings").await;
    assert_eq!(text_of(&page.body, "two-factor-status"), "on");
    let off = b
        .post(
            "/ui/settings/2fa/disable",
            &[
                ("csrf", &field(&page.body, "csrf")),
                ("code", &code_at(&secret, t + 30)),
            ],
        )
        .await;
    assert_eq!(off.status, 303, "{}", off.body);
    assert_eq!(
        off.location.as_deref(),
        Some("/ui/settings?done=2fa-off&ended=0")
    );
    let page = b.get("/ui/settings?done=2fa-off&ended=0").await;
    assert_eq!(text_of(&page.body, "two-factor-status"), "off");
    assert!(page.body.contains(r#"id="setup-2fa""#));

    // Off drops the secret: setting up again shows a new one, kept across reloads.
    let setup = b.get("/ui/settings/2fa").await;
    assert!(setup.body.contains(r#"<svg id="totp-qr""#));
    let fresh = text_of(&setup.body, "totp-secret");
    assert_ne!(fresh, secret);
    let again = b.get("/ui/settings/2fa").await;
    assert_eq!(text_of(&again.body, "totp-secret"), fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_browsers_skip_the_sign_in_pages() {
    let api = Api::user(shared(), "ui-skip").await;
    let mut b = Browser::with_session(api.token.as_deref().unwrap());
    for path in ["/ui/login", "/ui/register"] {
        let page = b.get(path).await;
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.location.as_deref(), Some("/ui/"), "{path}");
    }
    // The TOTP step exists only as the answer to a password.
    let step = Browser::new().get("/ui/login/totp").await;
    assert_eq!(step.status, 303);
    assert_eq!(step.location.as_deref(), Some("/ui/login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_registration_says_when_to_try_again() {
    let server = Server::start(&[("SECURECLAW_REGISTER_MAX_PER_WINDOW", "1")], &[]);
    let mut first = Browser::on(&server);
    assert_eq!(
        register_by_form(&mut first, &unique("ui-first"))
            .await
            .status,
        303
    );
    let mut b = Browser::on(&server);
    let name = unique("ui-throttled");
    let refused = register_by_form(&mut b, &name).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains(r#"id="register-error""#));
    assert!(refused.body.contains("Try again in "), "{}", refused.body);
    assert!(refused.body.contains(&format!(r#"value="{name}""#)));
    assert!(b.session().is_none());
}
