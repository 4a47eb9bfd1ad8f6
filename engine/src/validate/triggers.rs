//! The `on:` block: a trigger is reviewed data, so every mistake that would make it never fire,
//! fire with the wrong inputs, or start a run that cannot begin is reported here, located.

use crate::diag::{Diagnostics, did_you_mean, pointer_segment};
use crate::model::{HookPreset, ScheduleSpec, WebhookTrigger};
use crate::schedule::{CronSchedule, ScheduleError};

use super::Semantics;

/// `X-GitHub-Event` names, to catch a misspelled one (`pushh`) that would silently never match.
/// A name far from all of these is accepted: GitHub adds events.
const GITHUB_EVENTS: &[&str] = &[
    "branch_protection_configuration",
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "code_scanning_alert",
    "commit_comment",
    "create",
    "custom_property",
    "custom_property_values",
    "delete",
    "dependabot_alert",
    "deploy_key",
    "deployment",
    "deployment_protection_rule",
    "deployment_review",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "github_app_authorization",
    "gollum",
    "installation",
    "installation_repositories",
    "installation_target",
    "issue_comment",
    "issues",
    "label",
    "marketplace_purchase",
    "member",
    "membership",
    "merge_group",
    "meta",
    "milestone",
    "org_block",
    "organization",
    "package",
    "page_build",
    "personal_access_token_request",
    "ping",
    "project",
    "project_card",
    "project_column",
    "projects_v2",
    "projects_v2_item",
    "public",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "pull_request_review_thread",
    "push",
    "registry_package",
    "release",
    "repository",
    "repository_advisory",
    "repository_dispatch",
    "repository_import",
    "repository_ruleset",
    "repository_vulnerability_alert",
    "secret_scanning_alert",
    "secret_scanning_alert_location",
    "security_advisory",
    "security_and_analysis",
    "sponsorship",
    "star",
    "status",
    "sub_issues",
    "team",
    "team_add",
    "watch",
    "workflow_dispatch",
    "workflow_job",
    "workflow_run",
];

/// The engine's state dir inside a workspace: never a trigger's business.
const STATE_DIR: &str = ".secureclaw";

/// Globs one workflow may watch: each is compiled and matched against every change, by the CLI
/// and by the server, so a file cannot ask for a million of them.
pub const MAX_WATCH_GLOBS: usize = 256;

/// Misspelled names that get a "did you mean" (each costs a comparison with every candidate);
/// past this, a hostile file's thousands of mistakes are reported without one.
const SUGGESTIONS: usize = 32;

impl Semantics<'_> {
    pub(super) fn triggers(&self, diags: &mut Diagnostics) {
        let on = &self.wf.on;
        if let Some(hook) = &on.webhook {
            self.webhook(hook, diags);
        }
        if let Some(schedule) = &on.schedule {
            self.schedule(schedule, diags);
        }
        self.watch_globs(&on.watch, diags);
        self.inputs_reach_the_run(diags);
    }

    fn webhook(&self, hook: &WebhookTrigger, diags: &mut Diagnostics) {
        let declared: Vec<&str> = self.wf.inputs.keys().map(String::as_str).collect();
        let mut suggested = 0;
        for (name, pointer_text) in &hook.inputs {
            let at = format!("/on/webhook/inputs/{}", pointer_segment(name));
            if !self.wf.inputs.contains_key(name) {
                let d = self.at_key(
                    &at,
                    format!("webhook maps undeclared input `{name}` from the payload"),
                );
                suggested += 1;
                let suggestion = (suggested <= SUGGESTIONS)
                    .then(|| did_you_mean(name, declared.iter().copied()))
                    .flatten();
                diags.push(match suggestion {
                    Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                    None if declared.is_empty() => {
                        d.with_hint("declare it under `inputs:` with its type")
                    }
                    None => d.with_hint(format!(
                        "declare it under `inputs:`; declared: {}",
                        super::abbreviate(&declared)
                    )),
                });
            }
            if let Err(why) = check_json_pointer(pointer_text) {
                diags.push(
                    self.at(&at, format!(
                        "`{}` is not a JSON pointer: {why}",
                        pointer_text.escape_debug()
                    ))
                        .with_hint(
                            "write an RFC 6901 pointer into the payload, e.g. `/ref` or `/pull_request/head/sha`; `~0` stands for `~` and `~1` for `/` in a key",
                        ),
                );
            }
        }
        if let Some(header) = &hook.header {
            if hook.preset != HookPreset::Hmac {
                diags.push(
                    self.at_key(
                        "/on/webhook/header",
                        format!(
                            "`header` is only read by the `hmac` preset, not by `{}`",
                            preset_name(hook.preset)
                        ),
                    )
                    .with_hint(
                        "remove `header` (this preset's headers are fixed), or set `preset: hmac`",
                    ),
                );
            }
            if let Err(why) = check_header_name(header) {
                diags.push(
                    self.at(
                        "/on/webhook/header",
                        format!(
                            "`{}` is not an HTTP header name: {why}",
                            header.escape_debug()
                        ),
                    )
                    .with_hint("e.g. `X-Signature-256`: letters, digits and `-`"),
                );
            }
        }
        if !hook.events.is_empty() && hook.preset != HookPreset::Github {
            diags.push(
                self.at_key(
                    "/on/webhook/events",
                    format!(
                        "`events` is only read by the `github` preset, not by `{}`",
                        preset_name(hook.preset)
                    ),
                )
                .with_hint("remove `events`, or set `preset: github`"),
            );
        }
        if hook.events.len() > GITHUB_EVENTS.len() {
            diags.push(
                self.at_key(
                    "/on/webhook/events",
                    format!(
                        "`events` lists {} names; GitHub sends about {} kinds of event",
                        hook.events.len(),
                        GITHUB_EVENTS.len()
                    ),
                )
                .with_hint("list the few events that should start a run, e.g. `[push]`, or leave `events` out for all but `ping`"),
            );
            return;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (j, event) in hook.events.iter().enumerate() {
            let at = format!("/on/webhook/events/{j}");
            if !seen.insert(event.as_str()) {
                diags.push(
                    self.at(&at, format!("event `{event}` is listed twice"))
                        .with_hint("remove the duplicate"),
                );
                continue;
            }
            if GITHUB_EVENTS.contains(&event.as_str()) {
                continue;
            }
            let well_formed = event.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                && event
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !well_formed {
                diags.push(
                    self.at(&at, format!("`{}` is not a GitHub event name", event.escape_debug()))
                        .with_hint(
                            "event names are lowercase words joined by `_`, as GitHub sends them in `X-GitHub-Event`, e.g. `push` or `pull_request`",
                        ),
                );
            } else if let Some(s) = did_you_mean(event, GITHUB_EVENTS.iter().copied()) {
                diags.push(
                    self.at(&at, format!("unknown GitHub event `{event}`"))
                        .with_hint(format!("did you mean `{s}`?")),
                );
            }
        }
    }

    fn schedule(&self, spec: &ScheduleSpec, diags: &mut Diagnostics) {
        let Err(e) = CronSchedule::parse(&spec.full()) else {
            return;
        };
        let at = match (spec, &e) {
            (ScheduleSpec::Cron(_), _) => "/on/schedule",
            (ScheduleSpec::Full(_), ScheduleError::Cron { .. }) => "/on/schedule/cron",
            (ScheduleSpec::Full(_), ScheduleError::TimeZone(_)) => "/on/schedule/timezone",
        };
        let hint = match &e {
            ScheduleError::TimeZone(name) => match closest_time_zone(name) {
                Some(tz) => format!("did you mean `{tz}`?"),
                None => e.hint().to_string(),
            },
            ScheduleError::Cron { .. } => e.hint().to_string(),
        };
        diags.push(self.at(at, e.to_string()).with_hint(hint));
    }

    /// The same globs the watcher compiles (globset), relative to the workspace.
    fn watch_globs(&self, globs: &[String], diags: &mut Diagnostics) {
        if globs.len() > MAX_WATCH_GLOBS {
            diags.push(
                self.at_key(
                    "/on/watch",
                    format!(
                        "`watch` lists {} globs; at most {MAX_WATCH_GLOBS} are allowed",
                        globs.len()
                    ),
                )
                .with_hint("merge them: `src/**/*.rs` or `{docs,notes}/*.md` cover many files"),
            );
            return;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (j, glob) in globs.iter().enumerate() {
            let at = format!("/on/watch/{j}");
            let components: Vec<&str> = glob.split(['/', '\\']).collect();
            let problem = if glob.trim().is_empty() {
                Some((
                    "an empty glob matches nothing".to_string(),
                    "write a glob such as `src/**/*.rs`",
                ))
            } else if glob.starts_with('/') || glob.starts_with('\\') {
                Some((
                    format!("watch glob `{glob}` is absolute"),
                    "globs are relative to the workspace, e.g. `src/**/*.rs`",
                ))
            } else if glob.starts_with('~') {
                Some((
                    format!("watch glob `{glob}` starts with `~`, which is not expanded"),
                    "globs are relative to the workspace, e.g. `src/**/*.rs`",
                ))
            } else if components.contains(&"..") {
                Some((
                    format!("watch glob `{glob}` reaches outside the workspace with `..`"),
                    "globs are relative to the workspace; only files inside it are watched",
                ))
            } else if components.iter().any(|c| *c == "." || c.is_empty()) {
                Some((
                    format!(
                        "watch glob `{glob}` has an empty or `.` path component, so it never matches"
                    ),
                    "changed paths are matched as `dir/file`; write the glob the same way, e.g. `src/*.rs` for `./src/*.rs`",
                ))
            } else if components.first() == Some(&STATE_DIR) {
                Some((
                    format!("watch glob `{glob}` names the engine's state dir"),
                    "the state dir changes with every run and is never watched; remove it",
                ))
            } else if let Err(e) = globset::Glob::new(glob) {
                Some((
                    format!("invalid watch glob `{}`: {}", glob.escape_debug(), e.kind()),
                    "e.g. `src/**/*.rs`, `docs/*.md` or `{a,b}/*.txt`",
                ))
            } else if !seen.insert(glob.as_str()) {
                Some((
                    format!("watch glob `{glob}` is listed twice"),
                    "remove the duplicate",
                ))
            } else {
                None
            };
            if let Some((message, hint)) = problem {
                diags.push(self.at(&at, message).with_hint(hint));
            }
        }
    }

    /// A trigger starts a run with no one to type `--input`: every input without a default
    /// must come from somewhere, or the run could never start.
    fn inputs_reach_the_run(&self, diags: &mut Diagnostics) {
        let required: Vec<&str> = self
            .wf
            .inputs
            .iter()
            .filter(|(_, spec)| spec.default.is_none())
            .map(|(name, _)| name.as_str())
            .collect();
        if required.is_empty() {
            return;
        }
        let on = &self.wf.on;
        if let Some(hook) = &on.webhook {
            for name in required.iter().filter(|n| !hook.inputs.contains_key(**n)) {
                let at = if hook.inputs.is_empty() {
                    "/on/webhook"
                } else {
                    "/on/webhook/inputs"
                };
                diags.push(
                    self.at_key(at, format!("the webhook cannot start this workflow: required input `{name}` is not mapped from the payload"))
                        .with_hint(format!("add `{name}: /pointer/into/payload` under `on.webhook.inputs`, or give input `{name}` a `default`")),
                );
            }
        }
        let unattended = [
            ("/on/schedule", "a schedule", on.schedule.is_some()),
            ("/on/watch", "a file change", !on.watch.is_empty()),
        ];
        for (at, what, declared) in unattended {
            if !declared {
                continue;
            }
            diags.push(
                self.at_key(
                    at,
                    format!(
                        "{what} cannot start this workflow: nothing supplies required input{} {}",
                        if required.len() == 1 { "" } else { "s" },
                        required
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .with_hint(format!(
                    "give {} a `default` (a triggered run has no `--input`)",
                    if required.len() == 1 {
                        format!("input `{}`", required[0])
                    } else {
                        "each of them".to_string()
                    }
                )),
            );
        }
    }
}

fn preset_name(preset: HookPreset) -> &'static str {
    match preset {
        HookPreset::Github => "github",
        HookPreset::StandardWebhooks => "standard_webhooks",
        HookPreset::Hmac => "hmac",
    }
}

fn closest_time_zone(name: &str) -> Option<&'static str> {
    let wanted = name.to_ascii_lowercase();
    chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| tz.name())
        .map(|tz| (strsim::jaro_winkler(&wanted, &tz.to_ascii_lowercase()), tz))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, tz)| tz)
}

/// An RFC 6901 JSON pointer: empty (the whole document) or `/`-separated reference tokens in
/// which `~` appears only as `~0` or `~1`.
pub fn check_json_pointer(pointer: &str) -> Result<(), &'static str> {
    if pointer.is_empty() {
        return Ok(());
    }
    if !pointer.starts_with('/') {
        return Err("it must be empty or start with `/`");
    }
    let mut bytes = pointer.bytes();
    while let Some(b) = bytes.next() {
        if b == b'~' && !matches!(bytes.next(), Some(b'0' | b'1')) {
            return Err("`~` must be followed by `0` or `1`");
        }
    }
    Ok(())
}

/// An HTTP header field name: an RFC 9110 token.
pub fn check_header_name(name: &str) -> Result<(), &'static str> {
    const MAX_LEN: usize = 256;
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_LEN {
        return Err("it is longer than 256 characters");
    }
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.bytes().all(token) {
        return Err("only letters, digits and !#$%&'*+-.^_`|~ may appear (no spaces or `:`)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_pointers_follow_rfc_6901() {
        for good in ["", "/", "/ref", "/a~1b/~0c", "/pull_request/head/sha", "/0"] {
            assert_eq!(check_json_pointer(good), Ok(()), "{good:?}");
        }
        for bad in ["ref", "a/b", "/a~", "/a~2", "/~x", "#/ref"] {
            assert!(check_json_pointer(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_names_are_tokens() {
        for good in ["X-Signature-256", "x-hub-signature", "X_Sig"] {
            assert_eq!(check_header_name(good), Ok(()), "{good:?}");
        }
        let long = "a".repeat(257);
        for bad in [
            "",
            "X Sig",
            "X-Sig:",
            "X-Sig\r\nInjected: 1",
            "Ünicode",
            long.as_str(),
        ] {
            assert!(check_header_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn misspelled_time_zones_are_recognised() {
        assert_eq!(closest_time_zone("Europe/Pari"), Some("Europe/Paris"));
        assert_eq!(
            closest_time_zone("america/new_york"),
            Some("America/New_York")
        );
        assert_eq!(closest_time_zone("Mars/Olympus"), None);
    }
}
