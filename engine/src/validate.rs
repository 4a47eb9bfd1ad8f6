//! Validation in layers: input → YAML syntax → JSON Schema → semantics, all reported in one
//! pass. Only a file that yields no document (unreadable, not YAML, not a mapping) stops early;
//! when the schema refuses parts of a document, the semantic checks still run on the parts that
//! are well-formed, and a dependency cycle does not stop the template checks. Every problem is
//! located at file:line:column with a hint.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use fixedbitset::FixedBitSet;
use petgraph::algo::kosaraju_scc;
use petgraph::graph::DiGraph;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diag::{Diagnostic, Diagnostics, Layer, Location, did_you_mean, pointer_segment};
use crate::model::{ActionKind, Step, Workflow};
use crate::template::{CheckScope, Templates, Upstream};
use crate::units::{DurationText, SizeText};
use crate::workspace;
use crate::yaml::{self, SourceMap, YamlLimits};

mod triggers;
pub use triggers::{check_header_name, check_json_pointer};

/// How a step's effect is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InverseClass {
    /// Nothing to undo (`read`).
    None,
    /// Restored from recorded pre-images (`write`, `patch`, `shell`).
    Restore,
    /// Undone by its declared `compensate` action.
    Compensate,
    /// Irreversible: revert flags it for manual review.
    Pivot,
}

pub use crate::risk::NodeRisk;

/// A workflow that passed every layer, with its graph and per-node risk.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Where the text came from: a path, or a name such as `(posted)`; diagnostics use it.
    pub file: PathBuf,
    /// The workflow's identity: SHA-256 of the exact bytes validated (hex).
    pub sha256: String,
    /// The text validated, kept so a run can be resumed, or recorded, without the file.
    pub source: std::sync::Arc<str>,
    pub workflow: Workflow,
    pub map: SourceMap,
    pub index: HashMap<String, usize>,
    /// `needs` of each step, as indices.
    pub deps: Vec<Vec<usize>>,
    /// A topological order of the steps.
    pub order: Vec<usize>,
    pub risk: Vec<NodeRisk>,
    pub inverse: Vec<InverseClass>,
    /// The git origin of the text, set by whoever read it from a repository.
    pub provenance: Option<crate::record::Provenance>,
}

/// Read and validate a workflow file.
pub fn validate_file(path: &Path) -> Result<Validated, Diagnostics> {
    let bytes = std::fs::read(path).map_err(|e| {
        let mut d = Diagnostics::default();
        d.push(
            Diagnostic::new(
                path,
                Location { line: 1, column: 1 },
                Layer::Input,
                "",
                format!("cannot read file: {e}"),
            )
            .with_hint("check the path and permissions"),
        );
        d
    })?;
    validate_bytes(path, &bytes)
}

/// Validate workflow text already in memory; `file` is used in diagnostics.
pub fn validate_bytes(file: &Path, bytes: &[u8]) -> Result<Validated, Diagnostics> {
    let mut diags = Diagnostics::default();
    let from_yaml = |errs: Vec<yaml::YamlError>| {
        let mut d = Diagnostics::default();
        for e in errs {
            let mut diag = Diagnostic::new(file, e.location, Layer::Syntax, "", e.message);
            if let Some(h) = e.hint {
                diag = diag.with_hint(h);
            }
            d.push(diag);
        }
        d
    };
    let text = yaml::decode_utf8(bytes).map_err(|e| from_yaml(vec![e]))?;
    let doc = yaml::parse(text, YamlLimits::default()).map_err(from_yaml)?;
    if !doc.value.is_object() {
        diags.push(
            Diagnostic::new(
                file,
                Location { line: 1, column: 1 },
                Layer::Schema,
                "",
                "a workflow file must be a YAML mapping",
            )
            .with_hint("start with `version: 1`, `name: ...` and `steps:`"),
        );
        return Err(diags);
    }
    crate::schema::check(&doc.value, &doc.map, file, &mut diags);
    let (workflow, partial) = if diags.is_empty() {
        // The document is not needed after this: moving it (not cloning) keeps a 100,000-step
        // file from holding two copies at once.
        match serde_json::from_value::<Workflow>(doc.value) {
            Ok(w) => {
                let partial = vec![false; w.steps.len()];
                (w, partial)
            }
            Err(e) => {
                diags.push(Diagnostic::new(
                    file,
                    Location { line: 1, column: 1 },
                    Layer::Schema,
                    "",
                    format!("{e}"),
                ));
                return Err(diags);
            }
        }
    } else {
        let refused: Vec<&str> = diags.iter().map(|d| d.path.as_str()).collect();
        match salvage(&doc.value, &refused) {
            Some(w) => w,
            None => {
                locate_ends(&mut diags, &doc.map);
                diags.sort();
                return Err(diags);
            }
        }
    };
    let v = Semantics::new(file, text, &workflow, &doc.map, &partial).run(&mut diags);
    locate_ends(&mut diags, &doc.map);
    diags.sort();
    match v {
        Some((index, deps, order, risk, inverse)) if diags.is_empty() => Ok(Validated {
            file: file.to_path_buf(),
            sha256: {
                use sha2::Digest as _;
                hex::encode(sha2::Sha256::digest(bytes))
            },
            source: std::sync::Arc::from(text),
            workflow,
            map: doc.map,
            index,
            deps,
            order,
            risk,
            inverse,
            provenance: None,
        }),
        _ => Err(diags),
    }
}

/// Give each diagnostic the end of the node it points at, so its snippet underlines all of it.
fn locate_ends(diags: &mut Diagnostics, map: &SourceMap) {
    for d in &mut diags.0 {
        if d.end.is_none() {
            d.end = map.end_of(&d.path, d.location);
        }
    }
}

/// The well-formed parts of a document the schema refused, as a workflow the semantic checks
/// can run on: each refused value is removed; a step that still does not read as a step is
/// kept as its `id` and `needs` only (marked in the returned list, so step checks skip it),
/// keeping every step at its index so diagnostics point at the right one; a top-level section
/// that still does not read is left out. `None` when not even that makes a workflow.
fn salvage(doc: &Value, refused: &[&str]) -> Option<(Workflow, Vec<bool>)> {
    let mut value = doc.clone();
    let mut pointers: Vec<&str> = refused
        .iter()
        .copied()
        // The document, the step list and whole steps are kept: they are dealt with below.
        .filter(|p| {
            let segments: Vec<&str> = p.split('/').skip(1).collect();
            !(segments.is_empty() || (segments[0] == "steps" && segments.len() <= 2))
        })
        .collect();
    // Deepest first, so removing a value never shifts one still to be removed.
    pointers.sort_by(|a, b| b.cmp(a));
    pointers.dedup();
    for p in pointers {
        remove_at(&mut value, p);
    }
    let top = value.as_object_mut()?;
    let steps_value = top.remove("steps");
    top.insert("steps".into(), Value::Array(Vec::new()));
    if top.get("version").and_then(Value::as_u64) != Some(1) {
        top.insert("version".into(), Value::from(1));
    }
    if !top.get("name").is_some_and(Value::is_string) {
        top.insert("name".into(), Value::from("workflow"));
    }
    // A refused input or env entry stays declared (as a plain string), so templates using it
    // are not also reported as using something undeclared.
    for (section, stand_in) in [
        ("inputs", serde_json::json!({"type": "string"})),
        ("env", Value::from("")),
    ] {
        if let Some(Value::Object(entries)) = top.get_mut(section) {
            for (name, entry) in entries.iter_mut() {
                let alone = serde_json::json!({
                    "version": 1, "name": "workflow", "steps": [], section: {name.clone(): entry.clone()}
                });
                if serde_json::from_value::<Workflow>(alone).is_err() {
                    *entry = stand_in.clone();
                }
            }
        }
    }
    let keys: Vec<String> = top.keys().cloned().collect();
    for key in keys {
        if matches!(key.as_str(), "version" | "name" | "steps") {
            continue;
        }
        let alone = serde_json::json!({
            "version": 1, "name": "workflow", "steps": [], key.clone(): top[&key].clone()
        });
        if serde_json::from_value::<Workflow>(alone).is_err() {
            top.remove(&key);
        }
    }
    let mut workflow: Workflow = serde_json::from_value(value).ok()?;
    let steps = match steps_value {
        Some(Value::Array(steps)) => steps,
        _ => Vec::new(),
    };
    let mut partial = Vec::with_capacity(steps.len());
    for step in steps {
        match serde_json::from_value::<Step>(step.clone()) {
            Ok(s) => {
                workflow.steps.push(s);
                partial.push(false);
            }
            Err(_) => {
                let id = step.get("id").and_then(Value::as_str).unwrap_or_default();
                let needs: Vec<&str> = step
                    .get("needs")
                    .and_then(Value::as_array)
                    .map(|n| n.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let stub = serde_json::json!({"id": id, "needs": needs, "read": {"path": "."}});
                workflow.steps.push(serde_json::from_value(stub).ok()?);
                partial.push(true);
            }
        }
    }
    Some((workflow, partial))
}

/// Remove the value at a JSON pointer, if there is one.
fn remove_at(value: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent) {
        Some(Value::Object(o)) => {
            o.remove(&last);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < a.len()
            {
                a.remove(i);
            }
        }
        _ => {}
    }
}

/// Links of a dependency cycle spelled out in its diagnostic.
const CYCLE_LINKS_SHOWN: usize = 20;

type Analysis = (
    HashMap<String, usize>,
    Vec<Vec<usize>>,
    Vec<usize>,
    Vec<NodeRisk>,
    Vec<InverseClass>,
);

struct Semantics<'a> {
    file: &'a Path,
    /// The file's text, to point template problems at the `{{ … }}` they are about.
    source: &'a str,
    /// Where each line of `source` starts, found once for the first template problem.
    line_starts: std::cell::OnceCell<Vec<usize>>,
    wf: &'a Workflow,
    map: &'a SourceMap,
    /// Steps the schema refused as a whole, kept as `id` and `needs` only: only the graph
    /// checks look at them.
    partial: &'a [bool],
    templates: Templates,
}

impl<'a> Semantics<'a> {
    fn new(
        file: &'a Path,
        source: &'a str,
        wf: &'a Workflow,
        map: &'a SourceMap,
        partial: &'a [bool],
    ) -> Self {
        Semantics {
            file,
            source,
            line_starts: std::cell::OnceCell::new(),
            wf,
            map,
            partial,
            templates: Templates::new(),
        }
    }

    fn is_partial(&self, i: usize) -> bool {
        self.partial.get(i).copied().unwrap_or(false)
    }

    fn at(&self, pointer: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(
            self.file,
            self.map.value(pointer),
            Layer::Semantic,
            pointer,
            message,
        )
    }

    /// Located at the key whose value is at `pointer` (for a value that is wrong because of its
    /// name, or a block that is wrong as a whole).
    fn at_key(&self, pointer: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(
            self.file,
            self.map.key(pointer),
            Layer::Semantic,
            pointer,
            message,
        )
    }

    fn run(&self, diags: &mut Diagnostics) -> Option<Analysis> {
        let index = self.ids(diags);
        let deps = self.needs(&index, diags);
        let (order, ordered) = self.acyclic_order(&deps, diags);
        self.inputs(diags);
        self.units(diags);
        self.read_only_grants(diags);
        self.triggers(diags);
        for (i, step) in self.wf.steps.iter().enumerate() {
            if self.is_partial(i) {
                continue;
            }
            self.step_paths(i, step, diags);
            self.step_network(i, step, diags);
        }
        let risk: Vec<NodeRisk> = self
            .wf
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| self.risk(i, s, diags))
            .collect();
        let inverse = self.wf.steps.iter().map(inverse_class).collect();
        self.status_conditions(diags);
        self.templates(&index, &deps, &order, ordered, diags);
        (ordered == order.len()).then_some((index, deps, order, risk, inverse))
    }

    /// `success()`, `failure()`, `always()` and `cancelled()` look at the steps upstream of the
    /// one whose `if:` they are in: nowhere else do they mean anything, and `failure()` in a
    /// step with no `needs` (nothing upstream) could never be true.
    fn status_conditions(&self, diags: &mut Diagnostics) {
        let misplaced = |pointer: &str, fns: BTreeSet<&str>, diags: &mut Diagnostics| {
            if let Some(f) = fns.first() {
                diags.push(
                    self.at(
                        pointer,
                        format!("`{f}()` can only be used in an `if:` condition"),
                    )
                    .with_hint(
                        "status functions say whether a step runs; move it to the step's `if:`",
                    ),
                );
            }
        };
        for (name, value) in &self.wf.env {
            let fns = self.templates.status_functions_in(value, false);
            misplaced(&format!("/env/{}", pointer_segment(name)), fns, diags);
        }
        for (i, step) in self.wf.steps.iter().enumerate() {
            for (pointer, text, is_expr) in template_fields(step) {
                let fns = self.templates.status_functions_in(text, is_expr);
                if !is_expr {
                    misplaced(&format!("/steps/{i}{pointer}"), fns, diags);
                } else if fns.contains("failure") && step.needs.is_empty() {
                    diags.push(
                        self.at(
                            &format!("/steps/{i}/if"),
                            format!(
                                "step `{}` has `failure()` in its `if:` but no `needs`: nothing runs before it, so no failure can be seen",
                                step.id
                            ),
                        )
                        .with_hint("list the steps it handles the failure of in `needs`: `failure()` is true when one of them, or a step they need, failed"),
                    );
                }
            }
        }
    }

    fn ids(&self, diags: &mut Diagnostics) -> HashMap<String, usize> {
        let mut index = HashMap::new();
        for (i, step) in self.wf.steps.iter().enumerate() {
            if self.is_partial(i) && step.id.is_empty() {
                continue;
            }
            if let Some(first) = index.insert(step.id.clone(), i) {
                index.insert(step.id.clone(), first);
                let first_loc = self.map.value(&format!("/steps/{first}/id"));
                diags.push(
                    self.at(
                        &format!("/steps/{i}/id"),
                        format!(
                            "duplicate step id `{}` (first used at line {})",
                            step.id, first_loc.line
                        ),
                    )
                    .with_hint("step ids must be unique; rename one of them"),
                );
            }
        }
        index
    }

    fn needs(&self, index: &HashMap<String, usize>, diags: &mut Diagnostics) -> Vec<Vec<usize>> {
        let ids: Vec<&str> = self.wf.steps.iter().map(|s| s.id.as_str()).collect();
        self.wf
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let mut seen = BTreeSet::new();
                let mut out = Vec::new();
                let list = format!("/steps/{i}/needs");
                for (j, need) in step.needs.iter().enumerate() {
                    let item = format!("{list}/{j}");
                    // `needs: build` has no item of its own: point at the value itself.
                    let pointer = if self.map.value(&item) == self.map.value(&list) {
                        list.clone()
                    } else {
                        item
                    };
                    if !seen.insert(need) {
                        diags.push(
                            self.at(&pointer, format!("`{need}` is listed twice in `needs`"))
                                .with_hint("remove the duplicate"),
                        );
                        continue;
                    }
                    match index.get(need) {
                        Some(&k) if k == i => diags.push(
                            self.at(&pointer, format!("step `{need}` needs itself"))
                                .with_hint("remove it from its own `needs`"),
                        ),
                        Some(&k) => out.push(k),
                        None => {
                            let d = self.at(
                                &pointer,
                                format!("step `{}` needs unknown step `{need}`", step.id),
                            );
                            diags.push(match did_you_mean(need, ids.iter().copied()) {
                                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                                None => d.with_hint(format!("known steps: {}", abbreviate(&ids))),
                            });
                        }
                    }
                }
                out
            })
            .collect()
    }

    /// A topological order, and a diagnostic per cycle with the cycle's path. Both passes are
    /// iterative (Kahn's algorithm, then Kosaraju on what it could not order): a chain of
    /// 100,000 `needs` must not cost one stack frame per step. Returns every step and how many
    /// of them, from the front, are in topological order; the rest are on or behind a cycle.
    fn acyclic_order(&self, deps: &[Vec<usize>], diags: &mut Diagnostics) -> (Vec<usize>, usize) {
        let n = deps.len();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut waiting: Vec<usize> = vec![0; n];
        for (i, ds) in deps.iter().enumerate() {
            waiting[i] = ds.len();
            for &d in ds {
                dependents[d].push(i);
            }
        }
        let mut order: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
        let mut next = 0;
        while next < order.len() {
            let v = order[next];
            next += 1;
            for &w in &dependents[v] {
                waiting[w] -= 1;
                if waiting[w] == 0 {
                    order.push(w);
                }
            }
        }
        let ordered = order.len();
        if ordered == n {
            return (order, ordered);
        }
        // Only steps on or behind a cycle are left; find the cycles among them.
        let left: Vec<usize> = (0..n).filter(|&i| waiting[i] > 0).collect();
        order.extend(&left);
        let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(left.len(), 0);
        let mut node = HashMap::with_capacity(left.len());
        for &i in &left {
            node.insert(i, g.add_node(i));
        }
        for &i in &left {
            for d in &deps[i] {
                if let Some(&from) = node.get(d) {
                    g.add_edge(from, node[&i], ());
                }
            }
        }
        let mut sccs: Vec<Vec<usize>> = kosaraju_scc(&g)
            .into_iter()
            .filter(|scc| scc.len() > 1)
            .map(|scc| scc.iter().map(|x| g[*x]).collect())
            .collect();
        sccs.sort();
        for scc in sccs {
            let members: BTreeSet<usize> = scc.into_iter().collect();
            let path = cycle_path(deps, &members);
            let start = path[0];
            let mut chain: Vec<String> = path
                .iter()
                .zip(path.iter().skip(1).chain(std::iter::once(&start)))
                .map(|(&a, &b)| {
                    format!("`{}` needs `{}`", self.wf.steps[a].id, self.wf.steps[b].id)
                })
                .collect();
            // A cycle through thousands of steps is named by its ends, not printed whole.
            if chain.len() > CYCLE_LINKS_SHOWN {
                let hidden = chain.len() - CYCLE_LINKS_SHOWN;
                let tail = chain.split_off(chain.len() - CYCLE_LINKS_SHOWN / 2);
                chain.truncate(CYCLE_LINKS_SHOWN / 2);
                chain.push(format!("… ({hidden} more links) …"));
                chain.extend(tail);
            }
            diags.push(
                self.at(
                    &format!("/steps/{start}/needs"),
                    format!("dependency cycle: {}", chain.join(", ")),
                )
                .with_hint(
                    "a workflow is a DAG; remove one of these `needs` entries to break the cycle",
                ),
            );
        }
        (order, ordered)
    }

    fn inputs(&self, diags: &mut Diagnostics) {
        for (name, spec) in &self.wf.inputs {
            let pointer = format!("/inputs/{}", pointer_segment(name));
            if let Some(default) = &spec.default
                && !spec.kind.accepts(default)
            {
                diags.push(
                    self.at(
                        &format!("{pointer}/default"),
                        format!(
                            "default of input `{name}` is not of type {}",
                            spec.kind.as_str()
                        ),
                    )
                    .with_hint(format!(
                        "write a {} value, or change `type`",
                        spec.kind.as_str()
                    )),
                );
            }
            if !crate::model::ENV_NAME_PATTERN.is_empty() && !valid_name(name) {
                diags.push(
                    Diagnostic::new(
                        self.file,
                        self.map.key(&pointer),
                        Layer::Semantic,
                        pointer.clone(),
                        format!("`{name}` is not a valid input name"),
                    )
                    .with_hint("use letters, digits and `_` so templates can write `inputs.NAME`"),
                );
            }
        }
    }

    fn units(&self, diags: &mut Diagnostics) {
        let mut durations: Vec<(String, &DurationText)> = Vec::new();
        let mut sizes: Vec<(String, &SizeText)> = Vec::new();
        let sb = |prefix: String,
                  s: &'a crate::model::SandboxSettings,
                  d: &mut Vec<(String, &'a DurationText)>,
                  z: &mut Vec<(String, &'a SizeText)>| {
            if let Some(t) = &s.timeout {
                d.push((format!("{prefix}/timeout"), t));
            }
            if let Some(m) = &s.memory {
                z.push((format!("{prefix}/memory"), m));
            }
            if let Some(m) = &s.output_cap {
                z.push((format!("{prefix}/output_cap"), m));
            }
            if let Some(m) = &s.disk {
                z.push((format!("{prefix}/disk"), m));
            }
        };
        sb(
            "/sandbox".into(),
            &self.wf.sandbox,
            &mut durations,
            &mut sizes,
        );
        for (i, step) in self.wf.steps.iter().enumerate() {
            if let Some(s) = &step.sandbox {
                sb(format!("/steps/{i}/sandbox"), s, &mut durations, &mut sizes);
            }
            if let Some(t) = &step.timeout {
                durations.push((format!("/steps/{i}/timeout"), t));
            }
            if let Some(crate::model::RetrySpec::Detailed(r)) = &step.retry {
                if let Some(b) = &r.backoff {
                    durations.push((format!("/steps/{i}/retry/backoff"), b));
                }
                if let Some(b) = &r.max_backoff {
                    durations.push((format!("/steps/{i}/retry/max_backoff"), b));
                }
            }
            if let Some(h) = &step.http {
                if let Some(t) = &h.timeout {
                    durations.push((format!("/steps/{i}/http/timeout"), t));
                }
                if let Some(m) = &h.max_response {
                    sizes.push((format!("/steps/{i}/http/max_response"), m));
                }
            }
            if let Some(m) = step.read.as_ref().and_then(|r| r.max_bytes.as_ref()) {
                sizes.push((format!("/steps/{i}/read/max_bytes"), m));
            }
        }
        for (pointer, d) in durations {
            match d.parse() {
                Err(e) => diags.push(self.at(&pointer, e.to_string()).with_hint(e.hint())),
                Ok(v) if v.is_zero() && pointer.ends_with("timeout") => diags.push(
                    self.at(&pointer, "a timeout of zero would kill every step at once")
                        .with_hint("use a positive duration, e.g. `30s`"),
                ),
                Ok(_) => {}
            }
        }
        for (pointer, s) in sizes {
            match s.parse() {
                Err(e) => diags.push(self.at(&pointer, e.to_string()).with_hint(e.hint())),
                Ok(0) => diags.push(
                    self.at(&pointer, format!("`{s}` is zero"))
                        .with_hint("use a positive size, e.g. `64Mi`"),
                ),
                Ok(_) => {}
            }
        }
    }

    /// `sandbox.read_only` entries: spelled as absolute or `~/…` paths, no `..`, never a home
    /// directory (existence and the state dir are checked when the run starts).
    fn read_only_grants(&self, diags: &mut Diagnostics) {
        let mut lists = vec![("/sandbox".to_string(), &self.wf.sandbox)];
        for (i, step) in self.wf.steps.iter().enumerate() {
            if let Some(s) = &step.sandbox {
                lists.push((format!("/steps/{i}/sandbox"), s));
            }
        }
        for (prefix, s) in lists {
            for (j, entry) in s.read_only.iter().enumerate() {
                if let Err(e) = secureclaw_sandbox::grants::check_syntax(entry) {
                    diags.push(
                        self.at(&format!("{prefix}/read_only/{j}"), e.to_string())
                            .with_hint("e.g. `~/.cargo`, `~/.rustup` or `/opt/toolchain`"),
                    );
                }
            }
        }
    }

    fn step_paths(&self, i: usize, step: &Step, diags: &mut Diagnostics) {
        let mut paths: Vec<(String, &str)> = Vec::new();
        if let Some(r) = &step.read
            && let Some(p) = &r.path
        {
            paths.push((format!("/steps/{i}/read/path"), p));
        }
        if let Some(w) = &step.write {
            paths.push((format!("/steps/{i}/write/path"), &w.path));
        }
        if let Some(p) = &step.patch {
            paths.push((format!("/steps/{i}/patch/path"), &p.path));
            if !Templates::is_template(&p.diff)
                && let Err(e) = diffy::Patch::from_str(&p.diff)
            {
                diags.push(
                    self.at(
                        &format!("/steps/{i}/patch/diff"),
                        format!(
                            "`diff` is not a valid unified diff: {}",
                            // diffy's message starts with what this one already says.
                            e.to_string().trim_start_matches("error parsing patch: ")
                        ),
                    )
                    .with_hint("produce it with `diff -u old new` or `git diff`"),
                );
            }
        }
        for (pointer, p) in paths {
            if Templates::is_template(p) {
                continue;
            }
            // Reading `.git` is harmless; writing it is not.
            let allow_git = pointer.ends_with("/read/path");
            match workspace::lexical(p) {
                Err(workspace::PathError::GitDir(_)) if allow_git => {}
                Err(e) => diags.push(self.at(&pointer, e.to_string()).with_hint(e.hint())),
                Ok(_) => {}
            }
        }
        if let Some(g) = step.read.as_ref().and_then(|r| r.glob.as_ref()) {
            if g.starts_with('/') || g.split('/').any(|c| c == "..") {
                diags.push(
                    self.at(
                        &format!("/steps/{i}/read/glob"),
                        format!("glob `{g}` reaches outside the workspace"),
                    )
                    .with_hint("globs are relative to the workspace"),
                );
            } else if let Err(e) = globset::Glob::new(g) {
                diags.push(self.at(
                    &format!("/steps/{i}/read/glob"),
                    format!("invalid glob `{g}`: {}", e.kind()),
                ));
            }
        }
    }

    fn step_network(&self, i: usize, step: &Step, diags: &mut Diagnostics) {
        for (j, domain) in step.network.iter().enumerate() {
            if let Err(why) = check_domain(domain) {
                diags.push(
                    self.at(&format!("/steps/{i}/network/{j}"), format!("`{domain}` is not an allowed network destination: {why}"))
                        .with_hint("list DNS names such as `api.github.com`, `api.github.com:8443` (that port only) or `*.githubusercontent.com` (its subdomains); IP literals and non-ASCII names are refused"),
                );
            }
        }
        let mut urls: Vec<(String, &str)> = Vec::new();
        if let Some(h) = &step.http {
            urls.push((format!("/steps/{i}/http/url"), &h.url));
        }
        if let Some(h) = step.compensate.as_ref().and_then(|c| c.http.as_ref()) {
            urls.push((format!("/steps/{i}/compensate/http/url"), &h.url));
        }
        for (pointer, url) in urls {
            if Templates::is_template(url) {
                if step.network.is_empty() {
                    diags.push(
                        self.at(
                            &pointer,
                            "an `http` step must list the hosts it may reach in `network`",
                        )
                        .with_hint("add `network: [host.example.com]`"),
                    );
                }
                continue;
            }
            match reqwest::Url::parse(url) {
                Err(e) => diags.push(
                    self.at(&pointer, format!("invalid URL `{url}`: {e}"))
                        .with_hint("write a full URL such as `https://api.example.com/path`"),
                ),
                Ok(u) if !matches!(u.scheme(), "http" | "https") => diags.push(
                    self.at(
                        &pointer,
                        format!("URL scheme `{}` is not allowed", u.scheme()),
                    )
                    .with_hint("use http or https"),
                ),
                Ok(u) => {
                    let host = u.host_str().unwrap_or_default();
                    let with_port = u.port().map(|p| format!("{host}:{p}"));
                    if !crate::actions::url_allowed(&step.network, &u) {
                        diags.push(
                            self.at(
                                &pointer,
                                format!("host `{host}` is not in this step's `network` allowlist"),
                            )
                            .with_hint(format!(
                                "add `{}` to `network`",
                                with_port.as_deref().unwrap_or(host)
                            )),
                        );
                    }
                }
            }
        }
    }

    fn risk(&self, i: usize, step: &Step, diags: &mut Diagnostics) -> NodeRisk {
        let computed = crate::risk::computed_risk(
            step,
            &untemplated(step.shell.as_deref().unwrap_or_default()),
        );
        if let Some(declared) = step.risk
            && declared < computed.tier
        {
            diags.push(
                self.at(&format!("/steps/{i}/risk"), format!("`risk: {declared}` is lower than the computed tier `{}` (rule `{}`: {})", computed.tier, computed.rule, computed.reason))
                    .with_hint("`risk` can only raise a step's tier; remove it or set it to the computed tier or higher"),
            );
        }
        crate::risk::node_risk(step, computed)
    }
    fn templates(
        &self,
        index: &HashMap<String, usize>,
        deps: &[Vec<usize>],
        order: &[usize],
        ordered: usize,
        diags: &mut Diagnostics,
    ) {
        let n = self.wf.steps.len();
        // A step on or behind a cycle has no well-defined upstream: its templates are checked
        // with every other step counted as upstream, so all their other problems still show.
        let on_cycle: std::sync::Arc<FixedBitSet> = {
            let mut all = FixedBitSet::with_capacity(n);
            all.insert_range(..);
            std::sync::Arc::new(all)
        };
        let needs_templates: Vec<bool> = self
            .wf
            .steps
            .iter()
            .map(|s| {
                template_fields(s)
                    .iter()
                    .any(|(_, t, e)| *e || Templates::is_template(t))
            })
            .collect();
        let all_steps: BTreeSet<String> = index.keys().cloned().collect();
        let shared_index = std::sync::Arc::new(index.clone());
        let workflow_env: BTreeSet<String> = self.wf.env.keys().cloned().collect();
        // Workflow-level env values may use inputs only.
        let wf_scope = CheckScope {
            inputs: &self.wf.inputs,
            env_names: BTreeSet::new(),
            all_steps: &all_steps,
            upstream: Upstream::default(),
            this_step: "(workflow env)",
        };
        for (name, value) in &self.wf.env {
            for (msg, hint) in self.templates.check(value, false, &wf_scope) {
                diags.push(
                    self.in_template(
                        self.at(&format!("/env/{}", pointer_segment(name)), msg)
                            .with_hint(hint),
                    ),
                );
            }
        }
        // Ancestor sets in topological order: anc[v] = ∪ (anc[p] ∪ {p}) over parents p. A set is
        // dropped as soon as its last dependent has used it, so a long chain holds two at a time.
        // Only a step with templates, or an ancestor of one, needs its set at all.
        let mut wanted = needs_templates.clone();
        for &v in order.iter().rev() {
            if wanted[v] {
                for &p in &deps[v] {
                    wanted[p] = true;
                }
            }
        }
        let mut dependents_left: Vec<usize> = vec![0; n];
        for (v, ds) in deps.iter().enumerate() {
            if wanted[v] {
                for &d in ds {
                    dependents_left[d] += 1;
                }
            }
        }
        let mut anc: Vec<Option<std::sync::Arc<FixedBitSet>>> = vec![None; n];
        for (position, &v) in order.iter().enumerate() {
            if !wanted[v] {
                continue;
            }
            let set = if position >= ordered {
                let mut all = (*on_cycle).clone();
                all.set(v, false);
                std::sync::Arc::new(all)
            } else {
                self.ancestors(v, deps, &mut anc, &mut dependents_left, n)
            };
            if !needs_templates[v] || self.is_partial(v) {
                continue;
            }
            let step = &self.wf.steps[v];
            let mut env_names = workflow_env.clone();
            env_names.extend(step.env.keys().cloned());
            let scope = CheckScope {
                inputs: &self.wf.inputs,
                env_names,
                all_steps: &all_steps,
                upstream: Upstream {
                    index: shared_index.clone(),
                    ancestors: set,
                },
                this_step: &step.id,
            };
            for (pointer, text, is_expr) in template_fields(step) {
                for (msg, hint) in self.templates.check(text, is_expr, &scope) {
                    diags.push(
                        self.in_template(
                            self.at(&format!("/steps/{v}{pointer}"), msg)
                                .with_hint(hint),
                        ),
                    );
                }
            }
        }
    }
}

impl Semantics<'_> {
    /// A template problem located at its value, moved to the `{{ … }}` or `{% … %}` on the
    /// value's first line that holds the name the message is about (its first `` `name` ``).
    /// A value on later lines (a block scalar) keeps the value's location.
    fn in_template(&self, mut d: Diagnostic) -> Diagnostic {
        let Some(name) = d.message.split('`').nth(1).filter(|n| !n.is_empty()) else {
            return d;
        };
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.source.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        let Some(line) = d
            .location
            .line
            .checked_sub(1)
            .and_then(|i| starts.get(i))
            .and_then(|&start| self.source.get(start..))
            .and_then(|rest| rest.lines().next())
        else {
            return d;
        };
        let from = line
            .char_indices()
            .nth(d.location.column.saturating_sub(1))
            .map_or(line.len(), |(i, _)| i);
        let rest = &line[from..];
        let mut at = 0;
        while let Some(open) = rest[at..]
            .match_indices('{')
            .map(|(i, _)| at + i)
            .find(|&i| rest[i..].starts_with("{{") || rest[i..].starts_with("{%"))
        {
            let close = if rest[open..].starts_with("{{") {
                "}}"
            } else {
                "%}"
            };
            let Some(len) = rest[open..].find(close).map(|i| i + close.len()) else {
                break;
            };
            let segment = &rest[open..open + len];
            if segment.contains(name) {
                let column = d.location.column + rest[..open].chars().count();
                d.location.column = column;
                d.end = Some(Location {
                    line: d.location.line,
                    column: column + segment.chars().count(),
                });
                break;
            }
            at = open + len;
        }
        d
    }

    /// The ancestors of `v` (a step in topological order) from its parents' sets; a parent's
    /// set is dropped once its last dependent has used it.
    fn ancestors(
        &self,
        v: usize,
        deps: &[Vec<usize>],
        anc: &mut [Option<std::sync::Arc<FixedBitSet>>],
        dependents_left: &mut [usize],
        n: usize,
    ) -> std::sync::Arc<FixedBitSet> {
        let mut set = FixedBitSet::with_capacity(n);
        for &p in &deps[v] {
            set.insert(p);
            if let Some(a) = &anc[p] {
                set.union_with(a);
            }
            dependents_left[p] -= 1;
            if dependents_left[p] == 0 {
                anc[p] = None;
            }
        }
        let set = std::sync::Arc::new(set);
        if dependents_left[v] > 0 {
            anc[v] = Some(set.clone());
        }
        set
    }
}

/// The command with each `{{ … }}` replaced by one plain word and `{% … %}`/`{# … #}` removed, so
/// the classifier can parse a templated command before it is rendered. The rendered command is
/// classified again at run time and the higher tier wins.
pub fn untemplated(command: &str) -> String {
    let mut out = String::with_capacity(command.len());
    let mut rest = command;
    while let Some(start) = rest.find(['{']) {
        let (before, tail) = rest.split_at(start);
        out.push_str(before);
        let close = match tail.get(..2) {
            Some("{{") => "}}",
            Some("{%") => "%}",
            Some("{#") => "#}",
            _ => {
                out.push('{');
                rest = &tail[1..];
                continue;
            }
        };
        match tail.find(close) {
            Some(end) => {
                if close == "}}" {
                    out.push_str("TEMPLATE_VALUE");
                }
                rest = &tail[end + 2..];
            }
            None => {
                out.push_str(tail);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn abbreviate(ids: &[&str]) -> String {
    if ids.len() <= 8 {
        ids.join(", ")
    } else {
        format!("{}, … ({} in all)", ids[..8].join(", "), ids.len())
    }
}

/// Every template-bearing string of a step: (pointer relative to the step, text, is_expression).
pub fn template_fields(step: &Step) -> Vec<(String, &str, bool)> {
    let mut out: Vec<(String, &str, bool)> = Vec::new();
    if let Some(c) = &step.condition {
        out.push(("/if".into(), c, true));
    }
    for (k, v) in &step.env {
        out.push((format!("/env/{}", pointer_segment(k)), v, false));
    }
    if let Some(s) = &step.shell {
        out.push(("/shell".into(), s, false));
    }
    if let Some(r) = &step.read {
        if let Some(p) = &r.path {
            out.push(("/read/path".into(), p, false));
        }
        if let Some(g) = &r.glob {
            out.push(("/read/glob".into(), g, false));
        }
    }
    if let Some(w) = &step.write {
        out.push(("/write/path".into(), &w.path, false));
        out.push(("/write/content".into(), &w.content, false));
    }
    if let Some(p) = &step.patch {
        out.push(("/patch/path".into(), &p.path, false));
        out.push(("/patch/diff".into(), &p.diff, false));
    }
    if let Some(h) = &step.http {
        http_fields("/http", h, &mut out);
    }
    if let Some(c) = &step.compensate {
        if let Some(h) = &c.http {
            http_fields("/compensate/http", h, &mut out);
        }
        if let Some(s) = &c.shell {
            out.push(("/compensate/shell".into(), s, false));
        }
    }
    out
}

fn http_fields<'s>(
    prefix: &str,
    h: &'s crate::model::HttpAction,
    out: &mut Vec<(String, &'s str, bool)>,
) {
    out.push((format!("{prefix}/url"), &h.url, false));
    for (k, v) in &h.headers {
        out.push((format!("{prefix}/headers/{}", pointer_segment(k)), v, false));
    }
    if let Some(b) = &h.body {
        out.push((format!("{prefix}/body"), b, false));
    }
    if let Some(j) = &h.json {
        json_strings(&format!("{prefix}/json"), j, out);
    }
}

fn json_strings<'s>(pointer: &str, v: &'s Value, out: &mut Vec<(String, &'s str, bool)>) {
    match v {
        Value::String(s) => out.push((pointer.to_string(), s, false)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| json_strings(&format!("{pointer}/{i}"), x, out)),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| json_strings(&format!("{pointer}/{}", pointer_segment(k)), x, out)),
        _ => {}
    }
}

pub fn inverse_class(step: &Step) -> InverseClass {
    match step.kind() {
        ActionKind::Read => InverseClass::None,
        ActionKind::Write | ActionKind::Patch | ActionKind::Shell => InverseClass::Restore,
        ActionKind::Http if step.compensate.is_some() => InverseClass::Compensate,
        ActionKind::Http => InverseClass::Pivot,
    }
}

/// A cycle through `members` (one strongly connected component), as a list of step indices.
fn cycle_path(deps: &[Vec<usize>], members: &BTreeSet<usize>) -> Vec<usize> {
    let Some(&start) = members.iter().next() else {
        return Vec::new();
    };
    // Walk `needs` edges inside the component until a node repeats; the repeat closes a cycle.
    let mut path = vec![start];
    let mut pos: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let mut cur = start;
    loop {
        let Some(&next) = deps[cur].iter().find(|d| members.contains(d)) else {
            return path;
        };
        if let Some(&p) = pos.get(&next) {
            return path.split_off(p);
        }
        pos.insert(next, path.len());
        path.push(next);
        cur = next;
    }
}

/// A network allowlist entry: an ASCII DNS name, optionally with a port.
pub fn check_domain(entry: &str) -> Result<(), &'static str> {
    check_domain_syntax(entry)?;
    // The egress proxy enforces the same list at run time: never accept what it would refuse.
    secureclaw_egress::Allowlist::parse(&[entry])
        .map(|_| ())
        .map_err(|_| "the egress proxy does not accept this entry")
}

fn check_domain_syntax(entry: &str) -> Result<(), &'static str> {
    let (host, port) = match entry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (entry, None),
    };
    // `*.example.com`: any subdomain (not `example.com` itself); the rest is a plain name.
    let host = host.strip_prefix("*.").unwrap_or(host);
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err("the port is not a number between 1 and 65535");
    }
    if host.is_empty() || host.len() > 253 {
        return Err("empty or too long");
    }
    if !host.is_ascii() {
        return Err(
            "non-ASCII names are refused (write the punycode `xn--` form if you really mean it)",
        );
    }
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return Err("IP literals are refused; name the host");
    }
    if host.contains("://") || host.contains('/') {
        return Err("write the host name only, without scheme or path");
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 {
        return Err("a single-label name is not a public domain");
    }
    for l in &labels {
        if l.is_empty()
            || l.len() > 63
            || l.starts_with('-')
            || l.ends_with('-')
            || !l
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("each label must be lowercase letters, digits or `-`");
        }
    }
    if labels
        .last()
        .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("a numeric top-level label looks like an IP address");
    }
    Ok(())
}
