//! A person's whole path through the web UI, as the README tells it: register, turn on
//! two-factor sign-in, sign in with a code, describe a task, read the plan, approve it, approve
//! the destructive step on the task page, watch its output arrive, undo the step after a dry
//! run, and download the run's verified ledger.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    Browser, PATIENCE, assert_csp_clean, js_str, shared, totp, unix_now, with_browser,
};
use crate::server::{PASSWORD, unique};

const INSTRUCTION: &str = "Write the old report, then remove the report folder";

/// `document.querySelector(css)` as JavaScript.
fn q(css: &str) -> String {
    format!("document.querySelector({})", js_str(css))
}

/// The trimmed text of `css`, or `null` while it is not there.
fn text_of(css: &str) -> String {
    format!("{}?.textContent.trim()", q(css))
}

#[tokio::test]
async fn register_two_factor_plan_approve_watch_revert_and_export() {
    let shared = shared();
    let server = &shared.server;
    let fake = &shared.fake;
    let name = unique("journey");
    with_browser("journey", &server.url, |b| async move {
        // Register: the account is made and signed in, and the two-factor setup comes next.
        b.goto("/ui/register").await;
        b.fill("#username", &name).await;
        b.fill("#password", PASSWORD).await;
        b.shot("register").await;
        b.click("#register-submit").await;
        b.wait_path("/ui/settings/2fa").await;

        // The QR code is drawn on the server as inline SVG, and the secret is printed too.
        b.wait(
            "the TOTP QR code as an <svg> with content",
            &format!(
                "{0}?.tagName.toLowerCase() === 'svg' && {0}.querySelectorAll('path, rect').length > 0",
                q("#totp-qr")
            ),
        )
        .await;
        let secret: String = b
            .text("#totp-secret")
            .await
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        assert!(
            secret.len() >= 16
                && secret
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)),
            "#totp-secret is not a base32 secret: {secret:?}"
        );
        b.shot("two-factor-setup").await;
        let enabled_at = unix_now();
        b.fill("#totp-code", &totp(&secret, enabled_at)).await;
        b.click("#enable-2fa").await;
        b.wait(
            "the two-factor setup to be accepted (the page left /ui/settings/2fa)",
            "location.pathname !== '/ui/settings/2fa' && document.readyState === 'complete'",
        )
        .await;
        b.goto("/ui/settings").await;
        b.wait(
            "#two-factor to say on",
            &format!(
                "[...document.querySelectorAll('#two-factor *')].some(e => e.children.length === 0 && e.textContent.trim().toLowerCase() === 'on') \
                 && ![...document.querySelectorAll('#two-factor *')].some(e => e.children.length === 0 && e.textContent.trim().toLowerCase() === 'off') \
                 && {}",
                q("#two-factor")
            ),
        )
        .await;
        b.shot("settings").await;

        // Sign out, and in again: the password, then a code.
        b.click("form.logout button[type=submit]").await;
        b.wait_path("/ui/login").await;
        b.fill("#username", &name).await;
        b.fill("#password", PASSWORD).await;
        b.shot("login").await;
        b.click("#login-submit").await;
        b.find("#code").await;
        b.shot("login-totp").await;
        // A code is taken once: use the next period's when the setup's is still current.
        b.fill("#code", &totp(&secret, unix_now().max(enabled_at + 30)))
            .await;
        b.click("#totp-submit").await;
        b.wait_path("/ui/").await;

        // A task from plain words: the planner is asked, and the plan is shown before anything runs.
        b.goto("/ui/tasks/new").await;
        b.fill("#instruction", INSTRUCTION).await;
        b.shot("new-task").await;
        b.click("#plan-submit").await;
        b.wait(
            "the plan preview (#plan-steps on /ui/tasks/ID)",
            &format!(
                "location.pathname.startsWith('/ui/tasks/') && {}",
                q("#plan-steps")
            ),
        )
        .await;
        assert!(
            fake.requests().iter().any(|r| r.contains(INSTRUCTION)),
            "the instruction never reached the planner"
        );
        let path = b.path().await;
        let id = path
            .trim_start_matches("/ui/tasks/")
            .split(['/', '?', '#'])
            .next()
            .unwrap()
            .to_string();
        let workspace = server.data_dir.join("workspaces").join(&id);
        plan_preview(&b).await;
        b.shot("plan-preview").await;

        // Approve the plan: it runs and parks at the destructive step.
        b.click("#approve-plan").await;
        let card = ".approval[data-step=\"remove\"]";
        approval_card(&b, card).await;
        b.wait(
            "#task-state to say the run awaits approval",
            &format!("{}?.toLowerCase().includes('awaiting')", text_of("#task-state")),
        )
        .await;
        b.shot("task-approval").await;
        assert!(
            workspace.join("report/old.txt").exists(),
            "the step before the gate should have run"
        );

        // The card is the server's: a reload shows it again.
        b.client.refresh().await.unwrap();
        approval_card(&b, card).await;

        // The dashboard lists the task first, among those waiting, and counts it in the title.
        b.goto("/ui/").await;
        b.wait(
            "the task in #awaiting",
            &q(&format!("#awaiting tr[data-task=\"{id}\"]")),
        )
        .await;
        let title = b.client.title().await.unwrap();
        assert!(title.starts_with("(1) "), "the title counts no waiting task: {title:?}");
        assert_eq!(
            b.js("const a = document.querySelector('#awaiting'), t = document.querySelector('#tasks'); \
                  return !!(a && t && (a.compareDocumentPosition(t) & Node.DOCUMENT_POSITION_FOLLOWING));")
                .await,
            json!(true),
            "#awaiting must come before #tasks"
        );
        b.shot("dashboard").await;

        // Approve the step; its output then arrives in the open page.
        b.goto(&format!("/ui/tasks/{id}")).await;
        approval_card(&b, card).await;
        let log = "section.step-log[data-step=\"remove\"] pre";
        b.click(&format!("{card} .approve")).await;
        b.wait(
            "the approval card to go once approved",
            &format!("!{} && document.readyState === 'complete'", q(card)),
        )
        .await;
        let early = b.js(&format!("return {} ?? ''", text_of(log))).await;
        assert!(
            !early.as_str().unwrap_or("").contains("removed"),
            "the step had finished before the page could watch it (early output {early}); \
             the test cannot tell live updates from a fresh page"
        );
        b.js("window.stillTheSamePage = true; return null;").await;
        b.wait(
            "the step's output in its log",
            &format!("{}?.includes('removed')", text_of(log)),
        )
        .await;
        b.wait(
            "#task-state to say succeeded",
            &format!("{}?.toLowerCase().includes('succeeded')", text_of("#task-state")),
        )
        .await;
        if b.js("return window.stillTheSamePage === true").await != json!(true) {
            b.fail("the page reloaded to show the output: it should arrive live").await;
        }
        // What the page said while the run was parked no longer stands once it has finished.
        b.wait(
            "the parked run's message to go once the run finished",
            "!Array.from(document.querySelectorAll('.run-message, #steps .reason')).some(e => !e.closest('[hidden]') && !e.hidden && e.textContent.includes('parked'))",
        )
        .await;
        b.shot("task-succeeded").await;
        // What the run changed (the diff, the links to undo a step) comes with a fresh page.
        b.client.refresh().await.unwrap();
        assert!(
            !workspace.join("report").exists(),
            "the approved step did not delete report/"
        );
        for part in [".enforcement", ".egress", "#diff", "#ledger-export", "#ledger-verified"] {
            b.find(part).await;
        }

        // Undo the step: a dry run first that changes nothing, then the real thing.
        b.click(".revert-step[data-step=\"remove\"]").await;
        b.wait(
            "the revert dry run",
            &format!(
                "location.pathname === {} && {}",
                js_str(&format!("/ui/tasks/{id}/revert")),
                q("#revert-preview")
            ),
        )
        .await;
        assert!(
            b.path().await.contains("step=remove"),
            "the dry run is not of the one step: {}",
            b.path().await
        );
        b.find("#revert-drift").await;
        let preview = b.text("#revert-preview").await;
        assert!(preview.contains("remove"), "the preview does not name the step: {preview}");
        assert!(
            !workspace.join("report").exists(),
            "the dry run changed the workspace"
        );
        b.shot("revert-dry-run").await;
        b.click("#revert-confirm").await;
        let deadline = Instant::now() + PATIENCE;
        while std::fs::read_to_string(workspace.join("report/old.txt")).ok().as_deref()
            != Some("old report\n")
        {
            if Instant::now() >= deadline {
                b.fail("the revert never restored report/old.txt").await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The ledger of the run: downloaded as JSONL with the browser's cookie, and verified.
        b.goto(&format!("/ui/tasks/{id}")).await;
        let verified = b.text("#ledger-verified").await.to_lowercase();
        assert!(
            verified.starts_with("verified"),
            "#ledger-verified says {verified:?}"
        );
        b.shot("task-reverted").await;
        // Every page on the way kept the CSP (the download below is no page).
        assert_csp_clean(server).await;
        let href = b
            .wait_value(
                "the href of #ledger-export",
                &format!("{}?.getAttribute('href')", q("#ledger-export")),
            )
            .await;
        let (status, content_type, body) = b.fetch(href.as_str().unwrap()).await;
        let start: String = body.chars().take(300).collect();
        assert_eq!(status, 200, "{content_type} {start}");
        let entries: Vec<Value> = body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("a line of the export is not JSON ({e}): {start}"))
            })
            .collect();
        assert!(
            entries.len() >= 2,
            "the export is not JSONL (one JSON value a line), it starts: {start}"
        );
        for kind in ["run_started", "approval_given", "action_reverted"] {
            assert!(
                entries.iter().any(|e| e.to_string().contains(kind)),
                "the export lacks {kind}"
            );
        }
    })
    .await;
}

/// The plan preview: the graph, the destructive step marked with its rule, reason and undo,
/// where secrets were replaced, and the workflow text to edit.
async fn plan_preview(b: &Browser) {
    b.wait(
        "#dag as an <svg> with both steps",
        &format!(
            "{}?.tagName.toLowerCase() === 'svg' && {} && {}",
            q("#dag"),
            q("#dag [data-step=\"prepare\"]"),
            q("#dag [data-step=\"remove\"]")
        ),
    )
    .await;
    let row = "#plan-steps tr[data-step=\"remove\"]";
    let tier = b.text(&format!("{row} .tier")).await.to_lowercase();
    assert!(
        tier.contains("destructive"),
        "the rm -r step's tier: {tier:?}"
    );
    let rule = b.text(&format!("{row} .rule")).await;
    assert!(
        rule.contains("rm-recursive"),
        "the rm -r step's rule: {rule:?}"
    );
    let reason = b.text(&format!("{row} .reason")).await;
    assert!(!reason.is_empty(), "the rm -r step has no reason");
    let undo = b.text(&format!("{row} .undo")).await.to_lowercase();
    // Revert restores what `rm -r` deleted from the step's snapshot: shown as undoable.
    assert!(
        !undo.is_empty() && !undo.starts_with("none"),
        "the rm -r step's undo: {undo:?}"
    );
    let first = b
        .text("#plan-steps tr[data-step=\"prepare\"] .tier")
        .await
        .to_lowercase();
    assert!(
        !first.contains("destructive"),
        "the write step's tier: {first:?}"
    );
    b.find("#placeholders").await;
    b.wait(
        "#workflow-yaml to hold the planned workflow",
        &format!("{}?.value.includes('rm -r report')", q("#workflow-yaml")),
    )
    .await;

    // An edit that names a step that does not exist is checked in place, with its line.
    let line = b
        .js("const t = document.querySelector('#workflow-yaml'); \
             t.value = t.value.replace('needs: [prepare]', 'needs: [nowhere]'); \
             t.dispatchEvent(new Event('input', {bubbles: true})); \
             return t.value.split('\\n').findIndex(l => l.includes('nowhere')) + 1;")
        .await
        .as_u64()
        .unwrap();
    assert!(line > 0, "the edit did not land in #workflow-yaml");
    b.click("#validate").await;
    let errors = b
        .wait_value(
            "a located error in #validation-errors",
            &format!(
                "{0}?.includes('nowhere') && {0}",
                text_of("#validation-errors")
            ),
        )
        .await;
    let errors = errors.as_str().unwrap_or_default();
    assert!(
        errors.contains(&format!("{line}:")),
        "the error does not give line {line}: {errors}"
    );
}

/// The approval card of the gate: the exact command, its tier and rule, approve and deny.
async fn approval_card(b: &Browser, card: &str) {
    b.wait(
        "the approval card of the rm -r step",
        &format!(
            "{}?.includes('rm -r report')",
            text_of(&format!("#approvals {card} .command"))
        ),
    )
    .await;
    let tier = b.text(&format!("{card} .tier")).await.to_lowercase();
    assert!(tier.contains("destructive"), "the card's tier: {tier:?}");
    let rule = b.text(&format!("{card} .rule")).await;
    assert!(rule.contains("rm-recursive"), "the card's rule: {rule:?}");
    b.find(&format!("{card} .reason")).await;
    b.find(&format!("{card} .approve")).await;
    b.find(&format!("{card} .deny")).await;
}
