//! Every signed-in page fits a 360 px wide screen without sideways scrolling, every field on
//! it has a label, and a keyboard user sees where the focus is.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{NARROW, PATIENCE, PLAN, account, assert_csp_clean, shared, with_browser};

const ONE_WRITE: &str = "version: 1
name: one-write
steps:
  - id: note
    write: { path: note.txt, content: \"hello\\n\" }
";

/// Elements wider than the viewport (tag#id.class and right edge), the worst first.
const OVERFLOW: &str = "
const width = document.documentElement.clientWidth;
const out = [];
for (const e of document.body.querySelectorAll('*')) {
  const r = e.getBoundingClientRect();
  if (r.right > width + 0.5 && getComputedStyle(e).position !== 'fixed') {
    out.push([Math.round(r.right), e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
      (e.className && typeof e.className === 'string' ? '.' + e.className.trim().split(/\\s+/).join('.') : '')]);
  }
}
out.sort((a, b) => b[0] - a[0]);
return [document.documentElement.scrollWidth, out.slice(0, 8)];
";

/// The focused control, whether its focus can be seen (an outline or a ring), and whether it
/// is the page's own (in `main`); `null` when no control of the page has the focus.
const FOCUSED: &str = "
const e = document.activeElement;
if (!e || e === document.body) return null;
const cs = getComputedStyle(e);
const seen = (cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) > 0) || cs.boxShadow !== 'none';
return [e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ' \"' + (e.textContent || e.value || '').trim().slice(0, 40) + '\"', seen, !!e.closest('main')];
";

/// Fields a person fills in that have no label (nor an aria-label).
const UNLABELLED: &str = "
const out = [];
for (const e of document.querySelectorAll('input, select, textarea')) {
  if (['hidden', 'submit', 'button', 'reset'].includes(e.type)) continue;
  if ((e.labels && e.labels.length > 0) || e.getAttribute('aria-label') || e.getAttribute('aria-labelledby')) continue;
  out.push(e.outerHTML.slice(0, 160));
}
return out;
";

#[tokio::test]
async fn every_page_fits_360_px_labels_every_field_and_shows_focus() {
    let server = &shared().server;
    let (name, api) = account(server, "layout").await;
    let planned = api.post("/api/v1/tasks", json!({"workflow": PLAN})).await;
    assert_eq!(planned.status, 201, "{:?}", planned.body);
    let planned = planned.body["id"].as_str().unwrap().to_string();
    let ran = api
        .post("/api/v1/tasks", json!({"workflow": ONE_WRITE}))
        .await;
    assert_eq!(ran.status, 201, "{:?}", ran.body);
    let ran = ran.body["id"].as_str().unwrap().to_string();
    let r = api
        .post(&format!("/api/v1/tasks/{ran}/run"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let deadline = Instant::now() + PATIENCE;
    while api.get(&format!("/api/v1/tasks/{ran}")).await.body["state"] != "succeeded" {
        assert!(
            Instant::now() < deadline,
            "the one-step run never succeeded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pages = [
        ("dashboard", "/ui/".to_string()),
        ("new-task", "/ui/tasks/new".to_string()),
        ("plan", format!("/ui/tasks/{planned}")),
        ("task", format!("/ui/tasks/{ran}")),
        ("settings", "/ui/settings".to_string()),
        ("workflows", "/ui/workflows".to_string()),
        ("audit", "/ui/audit".to_string()),
    ];
    with_browser("layout", &server.url, |b| async move {
        b.sign_in(&name).await;
        let mut problems = Vec::new();
        for (label, path) in &pages {
            b.goto(path).await;
            b.wait(
                &format!("the {label} page ({path}) to load"),
                "document.readyState === 'complete' && document.querySelector('main h1')",
            )
            .await;
            if b.js("return document.querySelector('main .error') !== null")
                .await
                == json!(true)
            {
                problems.push(format!(
                    "{path}: is an error page: {}",
                    b.text("main").await
                ));
                continue;
            }
            b.narrow().await;
            // Let scripts that fill the page in (live updates) settle at the new width.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let overflow = b.js(OVERFLOW).await;
            let scroll_width = overflow[0].as_u64().unwrap();
            if scroll_width > u64::from(NARROW) {
                problems.push(format!(
                    "{path}: {scroll_width} px wide at {NARROW} px; widest: {}",
                    overflow[1]
                ));
            }
            b.desktop().await;
            if let Value::Array(fields) = b.js(UNLABELLED).await
                && !fields.is_empty()
            {
                problems.push(format!("{path}: fields without a label: {fields:?}"));
            }
            // Tab leads through the menu into the page's own controls, each showing its focus.
            let mut in_main = 0;
            for _ in 0..40 {
                b.tab().await;
                let focused = b.js(FOCUSED).await;
                if focused.is_null() {
                    // Past the last control the focus leaves the page for the browser's own.
                    continue;
                }
                if focused[1] != json!(true) {
                    problems.push(format!("{path}: focus not visible on {}", focused[0]));
                }
                if focused[2] == json!(true) {
                    in_main += 1;
                    if in_main == 4 {
                        break;
                    }
                }
            }
            let has_controls = b
                .js("return document.querySelector('main a[href], main button:not([disabled]), \
                     main input:not([type=hidden]), main select, main textarea, main summary') !== null")
                .await;
            if in_main == 0 && has_controls == json!(true) {
                problems.push(format!("{path}: Tab never reaches a control of the page"));
            }
            b.js("document.activeElement?.blur(); return null;").await;
            b.shot(&format!("layout-{label}")).await;
        }
        // The pages before sign-in, once signed out.
        b.goto("/ui/").await;
        b.click("form.logout button[type=submit]").await;
        b.wait_path("/ui/login").await;
        for path in ["/ui/login", "/ui/register"] {
            b.goto(path).await;
            b.wait(
                &format!("{path} to load"),
                "document.querySelector('main h1')",
            )
            .await;
            b.narrow().await;
            let overflow = b.js(OVERFLOW).await;
            if overflow[0].as_u64().unwrap() > u64::from(NARROW) {
                problems.push(format!("{path}: too wide at {NARROW} px: {overflow}"));
            }
            b.desktop().await;
            if let Value::Array(fields) = b.js(UNLABELLED).await
                && !fields.is_empty()
            {
                problems.push(format!("{path}: fields without a label: {fields:?}"));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        assert_csp_clean(server).await;
    })
    .await;
}

/// Pairs of words in one box of the step graph that are drawn over each other.
const DAG_OVERLAPS: &str = "
const out = [];
for (const g of document.querySelectorAll('#dag .dag-node')) {
  const texts = [...g.querySelectorAll('text')].map(t => [t.textContent.trim(), t.getBoundingClientRect()]);
  for (let i = 0; i < texts.length; i++) for (let j = i + 1; j < texts.length; j++) {
    const [a, ra] = texts[i], [b, rb] = texts[j];
    if (ra.left < rb.right && rb.left < ra.right && ra.top < rb.bottom && rb.top < ra.bottom) {
      out.push(g.dataset.step + ': \"' + a + '\" over \"' + b + '\"');
    }
  }
}
return out;
";

/// The step graph prints each step's tier and state in words: the words must be readable,
/// not drawn over each other (the longest pair: a destructive step waiting for approval).
#[tokio::test]
async fn the_step_graph_words_do_not_overlap() {
    let server = &shared().server;
    let (name, api) = account(server, "graph").await;
    let task = api.post("/api/v1/tasks", json!({"workflow": PLAN})).await;
    assert_eq!(task.status, 201, "{:?}", task.body);
    let id = task.body["id"].as_str().unwrap().to_string();
    let r = api
        .post(&format!("/api/v1/tasks/{id}/run"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let deadline = Instant::now() + PATIENCE;
    while api.get(&format!("/api/v1/tasks/{id}")).await.body["state"] != "awaiting_approval" {
        assert!(
            Instant::now() < deadline,
            "the run never parked at its gate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    with_browser("graph", &server.url, |b| async move {
        b.sign_in(&name).await;
        b.goto(&format!("/ui/tasks/{id}")).await;
        b.find("#dag .dag-node[data-step=\"remove\"]").await;
        let mut problems = Vec::new();
        for narrow in [false, true] {
            if narrow {
                b.narrow().await;
            }
            if let Value::Array(overlaps) = b.js(DAG_OVERLAPS).await
                && !overlaps.is_empty()
            {
                let width = if narrow { "360 px" } else { "desktop" };
                problems.push(format!("{width}: {overlaps:?}"));
            }
        }
        b.desktop().await;
        assert!(
            problems.is_empty(),
            "words drawn over each other in #dag: {}",
            problems.join("; ")
        );
        assert_csp_clean(server).await;
    })
    .await;
}
