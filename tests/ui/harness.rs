//! The browser side of the UI tests: one chromedriver per test binary, one browser session per
//! test, the server they share (planning through a scripted fake LLM), and helpers that wait
//! with a timeout and say what they waited for when it never came.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt as _;
use serde_json::{Value, json};

use crate::fake_anthropic::Fake;
use crate::server::{Api, PASSWORD, Server, unique};

/// Longest wait for anything one page or one tiny run does.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// `/metrics` wants this token on every server these tests start, so a token in the
/// developer's own environment cannot change what the tests see.
pub const METRICS_TOKEN: &str = "ui-tests-metrics-token-0123456789abcdef";

/// The desktop window; screenshots are also taken at [`NARROW`] px wide.
pub const DESKTOP: (u32, u32) = (1280, 900);
pub const NARROW: u32 = 360;

/// What the planner answers every instruction with: a file is written, then a shell step
/// deletes its folder (`rm -r`: tier destructive, so the run parks for approval). The step
/// sleeps first so a test can see its output arrive while the page is open.
pub const PLAN: &str = "version: 1
name: tidy-report
description: Write a report, then remove the report folder.
steps:
  - id: prepare
    write:
      path: report/old.txt
      content: \"old report\\n\"
  - id: remove
    needs: [prepare]
    shell: \"echo starting; sleep 6; echo removing the old report; rm -r report; echo removed\"
";

/// The server the tests of this binary share, and the fake LLM it plans with.
pub struct Shared {
    pub server: Server,
    pub fake: Fake,
}

pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        // Tests run in any order and each may plan once: every answer is the same plan.
        let fake = Fake::start(vec![format!("```yaml\n{PLAN}```\n"); 32]);
        let server = server_with_planner(&fake);
        server.take_first_account();
        Shared { server, fake }
    })
}

/// A server of its own whose planner talks to `fake` only.
pub fn server_with_planner(fake: &Fake) -> Server {
    Server::start(
        &[
            ("ANTHROPIC_BASE_URL", fake.base_url.as_str()),
            ("ANTHROPIC_API_KEY", "test"),
            ("LLM_PROVIDER", "claude"),
            ("LLM_FALLBACK_ORDER", "claude"),
            ("LLM_TIMEOUT_SECONDS", "20"),
            ("SECURECLAW_METRICS_TOKEN", METRICS_TOKEN),
        ],
        &[],
    )
}

/// A server of its own without a planner.
pub fn server_alone() -> Server {
    Server::start(&[("SECURECLAW_METRICS_TOKEN", METRICS_TOKEN)], &[])
}

/// A new account made through the API: its name and a signed-in client.
pub async fn account(server: &Server, prefix: &str) -> (String, Api) {
    let name = unique(prefix);
    let mut api = server.client();
    api.register(&name).await;
    (name, api)
}

/// How many CSP violations browsers reported to `server` (from `/metrics`).
pub async fn csp_violations(server: &Server) -> u64 {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", server.url))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("secureclaw_ui_csp_violations_total"))
        .unwrap_or_else(|| panic!("/metrics has no secureclaw_ui_csp_violations_total:\n{text}"));
    line.split_whitespace().last().unwrap().parse().unwrap()
}

/// Every page seen so far kept the CSP. Reports are sent by the browser after the fact, so
/// give them a moment to arrive first.
pub async fn assert_csp_clean(server: &Server) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        csp_violations(server).await,
        0,
        "a page broke the Content-Security-Policy (inline script or style, or a foreign \
         resource); open the pages in chromium and read its console to see which"
    );
}

pub use crate::server::{code_at as totp, now as unix_now};

/// Where screenshots go: `target/ui-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver, started once for the whole binary. It runs under `sh` in a session and
/// process group of its own (`setsid`), with the browsers it starts; `sh` stops that whole group once this
/// process's end of its stdin closes, so no browser outlives the binary, however it exits.
struct Driver {
    url: String,
    _child: Child,
}

fn driver_url() -> &'static str {
    static DRIVER: OnceLock<Driver> = OnceLock::new();
    &DRIVER.get_or_init(start_driver).url
}

fn start_driver() -> Driver {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let program = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"setsid "$0" "$@" & pid=$!; read _ ; kill -TERM -$pid; wait $pid"#)
        .arg(&program)
        .arg(format!("--port={port}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} (Debian: chromium-driver): {e}"));
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{program} did not listen on port {port} (is chromium-driver installed?)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver {
        url: format!("http://127.0.0.1:{port}"),
        _child: child,
    }
}

/// One browser session on one server.
#[derive(Clone)]
pub struct Browser {
    pub client: Client,
    /// The server's base URL, `http://127.0.0.1:PORT`: chromium keeps the `Secure` session
    /// cookie on loopback over plain HTTP.
    pub base: String,
    test: String,
}

/// Open a browser for `test` on the server at `base`, run `body`, and close the browser even
/// when `body` panics (then a screenshot `FAILED-<test>.png` shows where it stood).
pub async fn with_browser<F, Fut>(test: &str, base: &str, body: F)
where
    F: FnOnce(Browser) -> Fut,
    Fut: Future<Output = ()>,
{
    let _ = std::fs::remove_file(screenshot_dir().join(format!("FAILED-{test}.png")));
    let browser = Browser::open(test, base).await;
    let outcome = AssertUnwindSafe(body(browser.clone())).catch_unwind().await;
    if outcome.is_err() {
        browser.save_failure_shot().await;
    }
    let _ = browser.client.clone().close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

impl Browser {
    async fn open(test: &str, base: &str) -> Browser {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                // A container's small /dev/shm would crash the renderer.
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
            ]}),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(driver_url())
            .await
            .unwrap_or_else(|e| panic!("no browser session from chromedriver: {e}"));
        Browser {
            client,
            base: base.to_string(),
            test: test.to_string(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn goto(&self, path: &str) {
        self.client.goto(&self.url(path)).await.unwrap();
    }

    /// The path (and query) of the page shown now.
    pub async fn path(&self) -> String {
        let u = self.client.current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    /// Run `script` (a function body: `return ...`) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Type `text` into the field `css` (emptied first).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// The element `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.wait(
            &format!("an element {css}"),
            &format!("document.querySelector({})", js_str(css)),
        )
        .await;
        self.client.find(Locator::Css(css)).await.unwrap()
    }

    /// The text of `css` as the user sees it (after waiting for it to appear).
    pub async fn text(&self, css: &str) -> String {
        self.wait_value(
            &format!("the text of {css}"),
            &format!("document.querySelector({})?.textContent", js_str(css)),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string()
    }

    /// Wait until the JavaScript expression `cond` is truthy in the page.
    pub async fn wait(&self, what: &str, cond: &str) {
        self.wait_value(what, &format!("({cond}) ? true : null"))
            .await;
    }

    /// Wait until the JavaScript expression `expr` has a value other than `null`, `undefined`
    /// or `false`, and return it. Errors while a page loads count as "not yet".
    pub async fn wait_value(&self, what: &str, expr: &str) -> Value {
        let script = format!(
            "try {{ const v = ({expr}); return (v === undefined || v === false) ? null : v; }} \
             catch (e) {{ return null; }}"
        );
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(v) = self.client.execute(&script, vec![]).await
                && !v.is_null()
            {
                return v;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("waited {PATIENCE:?} for {what}")).await;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Fail the test: a screenshot, and a message with the page's address and text.
    pub async fn fail(&self, why: &str) -> ! {
        let shot = self.save_failure_shot().await;
        let url = self
            .client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_else(|e| format!("(no URL: {e})"));
        let text = self
            .client
            .execute(
                "return document.body ? document.body.innerText : ''",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let excerpt: String = text.chars().take(1500).collect();
        panic!(
            "{why}\n  page: {url}\n  screenshot: {}\n  page text:\n{excerpt}",
            shot.display()
        );
    }

    async fn save_failure_shot(&self) -> PathBuf {
        let path = screenshot_dir().join(format!("FAILED-{}.png", self.test));
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(&path, png);
        }
        path
    }

    /// Screenshots of the whole page as it is: `NAME-desktop.png` and `NAME-360.png`.
    pub async fn shot(&self, name: &str) {
        let dir = screenshot_dir();
        let png = self.full_page(DESKTOP.0).await;
        std::fs::write(dir.join(format!("{name}-desktop.png")), png).unwrap();
        self.narrow().await;
        let png = self.full_page(NARROW).await;
        std::fs::write(dir.join(format!("{name}-360.png")), png).unwrap();
        self.desktop().await;
    }

    /// A screenshot of the whole page at `width`: chromium's WebDriver only shoots the
    /// viewport, so the window is made as tall as the page first (up to a limit).
    async fn full_page(&self, width: u32) -> Vec<u8> {
        let (_, window_height) = self.client.get_window_size().await.unwrap();
        let sizes = self
            .js("return [window.innerHeight, document.documentElement.scrollHeight]")
            .await;
        let viewport = sizes[0].as_u64().unwrap_or(window_height);
        let page = sizes[1].as_u64().unwrap_or(viewport);
        let frame = window_height.saturating_sub(viewport);
        let height = u32::try_from((page + frame).min(4000)).unwrap();
        self.client.set_window_size(width, height).await.unwrap();
        self.client.screenshot().await.unwrap()
    }

    /// A phone-sized viewport, [`NARROW`] CSS px wide.
    pub async fn narrow(&self) {
        self.client.set_window_size(NARROW, 800).await.unwrap();
        self.wait(
            &format!("the viewport to be {NARROW} px wide"),
            &format!("document.documentElement.clientWidth <= {NARROW}"),
        )
        .await;
    }

    pub async fn desktop(&self) {
        self.client
            .set_window_size(DESKTOP.0, DESKTOP.1)
            .await
            .unwrap();
    }

    /// Sign in through the sign-in page (an account without two-factor sign-in).
    pub async fn sign_in(&self, username: &str) {
        self.goto("/ui/login").await;
        self.fill("#username", username).await;
        self.fill("#password", PASSWORD).await;
        self.click("#login-submit").await;
        self.wait_path("/ui/").await;
    }

    /// Press Tab once, as a keyboard user moves to the next control.
    pub async fn tab(&self) {
        use fantoccini::actions::{InputSource as _, KeyAction, KeyActions};
        let tab = char::from(fantoccini::key::Key::Tab);
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: tab })
            .then(KeyAction::Up { value: tab });
        self.client.perform_actions(keys).await.unwrap();
    }

    /// Wait until the page shown is `path` (query ignored).
    pub async fn wait_path(&self, path: &str) {
        self.wait(
            &format!("the page {path}"),
            &format!(
                "location.pathname === {} && document.readyState === 'complete'",
                js_str(path)
            ),
        )
        .await;
    }

    /// Fetch `path` with the browser's own cookies: status, content type and body.
    pub async fn fetch(&self, path: &str) -> (u16, String, String) {
        let v = self
            .client
            .execute_async(
                "const [path, done] = arguments; \
                 fetch(path, {credentials: 'same-origin'}) \
                   .then(r => r.text().then(t => done([r.status, r.headers.get('content-type') || '', t]))) \
                   .catch(e => done([0, '', String(e)]));",
                vec![json!(path)],
            )
            .await
            .unwrap();
        (
            v[0].as_u64().unwrap() as u16,
            v[1].as_str().unwrap().to_string(),
            v[2].as_str().unwrap().to_string(),
        )
    }
}

/// `s` as a JavaScript string literal.
pub fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}
