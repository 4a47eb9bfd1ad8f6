//! The strict Content-Security-Policy is enforced and its violations are counted: the UI's own
//! pages never trip it (checked at the end of every test on the shared server), and a script
//! that does is blocked and shows on `/metrics`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{PATIENCE, account, csp_violations, server_alone, with_browser};

/// Its own server: the deliberate violation must not spoil the zero counted on the shared one.
#[tokio::test]
async fn an_inline_script_is_blocked_and_its_violation_counted() {
    let server = &server_alone();
    let (name, _api) = account(server, "csp-breaker").await;
    with_browser("csp_violation_counted", &server.url, |b| async move {
        b.sign_in(&name).await;
        assert_eq!(
            csp_violations(server).await,
            0,
            "signing in alone reported a violation"
        );
        let ran = b
            .js("const s = document.createElement('script'); \
                 s.textContent = 'window.inlineScriptRan = true'; \
                 document.body.append(s); \
                 return window.inlineScriptRan === true;")
            .await;
        assert_eq!(
            ran,
            json!(false),
            "an inline script ran: the CSP is not enforced"
        );
        let deadline = Instant::now() + PATIENCE;
        while csp_violations(server).await == 0 {
            if Instant::now() >= deadline {
                b.fail(
                    "the blocked inline script never reached secureclaw_ui_csp_violations_total",
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}
