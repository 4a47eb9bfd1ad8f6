//! Watch mode's file watcher: reports debounced batches of changed paths.
//!
//! What never counts as a change:
//! - the state dir, `.git`, and any other path the caller names;
//! - what git would ignore: `.gitignore` files of the workspace and its parents up to the
//!   repository root, `.ignore` files (which win over `.gitignore`), `.git/info/exclude` and
//!   the user's global git excludes;
//! - editors' swap, backup and atomic-save files ([`EDITOR_LEFTOVERS`]);
//! - a run's own writes: after a run, [`ChangeWatcher::settle`] waits for a fence event the
//!   watcher writes itself, so every event the run caused has been read by then (the kernel
//!   queues one watcher's events in order), and hands back what changed meanwhile for the
//!   caller to judge (see [`foreign_changes`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// File names editors leave beside the files they edit: vim swap files (`.x.swp`, `.x.swx`,
/// `.x.swo`) and its write probe `4913`, backups (`x~`), Emacs lock and auto-save files
/// (`.#x`, `#x#`), JetBrains IDEs' safe-write files (`x___jb_tmp___`, `x___jb_old___`), Kate's
/// swap files (`.x.kate-swp`), and the temporary files of atomic saves (`x.tmp`, and the
/// `.x.tmp.123` / `x.tmp.123` names some tools give them).
pub const EDITOR_LEFTOVERS: &[&str] = &[
    "*.swp",
    "*.swx",
    "*.swo",
    "*~",
    ".#*",
    "#*#",
    "4913",
    "*___jb_tmp___",
    "*___jb_old___",
    "*.kate-swp",
    "*.tmp",
    "*.tmp.*",
];

/// Ignore files read in each directory, weakest first.
const IGNORE_FILES: &[&str] = &[".gitignore", ".ignore"];

/// How long [`ChangeWatcher::settle`] waits for its fence before it gives up and takes what
/// has arrived (a watcher backend that does not order events, or one that lost them).
const FENCE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {source}")]
    Notify {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("invalid watch glob `{glob}`: {source}")]
    Glob {
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error("cannot make the watcher's fence directory: {0}")]
    Fence(#[source] std::io::Error),
}

/// Whether a file name is an editor's leftover rather than a file someone edited.
pub fn is_editor_leftover(path: &Path) -> bool {
    static SET: std::sync::OnceLock<Option<GlobSet>> = std::sync::OnceLock::new();
    let set = SET.get_or_init(|| {
        let mut b = GlobSetBuilder::new();
        for g in EDITOR_LEFTOVERS {
            b.add(Glob::new(g).ok()?);
        }
        b.build().ok()
    });
    match (set, path.file_name()) {
        (Some(set), Some(name)) => set.is_match(Path::new(name)),
        _ => false,
    }
}

/// What git would ignore under one workspace.
struct IgnoreRules {
    /// Per-directory matchers, deepest directory first, `.ignore` before `.gitignore` within a
    /// directory: the first one with an opinion decides.
    dirs: Vec<(PathBuf, Gitignore)>,
    /// `.git/info/exclude` and the global excludes, rooted at the repository (or workspace).
    repo: Vec<(PathBuf, Gitignore)>,
}

impl IgnoreRules {
    fn load(workspace: &Path) -> IgnoreRules {
        let mut files: Vec<PathBuf> = Vec::new();
        // Ancestors up to the repository root: their rules reach into the workspace.
        let mut repo_root = None;
        for dir in workspace.ancestors().skip(1) {
            for name in IGNORE_FILES {
                let f = dir.join(name);
                if f.is_file() {
                    files.push(f);
                }
            }
            if dir.join(".git").exists() {
                repo_root = Some(dir.to_path_buf());
                break;
            }
        }
        if workspace.join(".git").exists() {
            repo_root = Some(workspace.to_path_buf());
        }
        // The workspace itself, skipping what is already ignored (as git does).
        let walk = ignore::WalkBuilder::new(workspace)
            .hidden(false)
            .parents(true)
            .filter_entry(|e| e.file_name() != ".git")
            .build();
        for entry in walk.flatten() {
            let name = entry.file_name();
            if IGNORE_FILES.iter().any(|n| name == *n)
                && entry.file_type().is_some_and(|t| t.is_file())
            {
                files.push(entry.into_path());
            }
        }
        let mut dirs: Vec<(PathBuf, Gitignore, usize)> = files
            .into_iter()
            .filter_map(|f| {
                let rank = IGNORE_FILES
                    .iter()
                    .position(|n| f.file_name().is_some_and(|x| x == *n))?;
                let dir = f.parent()?.to_path_buf();
                let (gi, _partial_errors) = Gitignore::new(&f);
                Some((dir, gi, rank))
            })
            .collect();
        // Deepest first; within one directory `.ignore` (higher rank) first.
        dirs.sort_by(|a, b| {
            b.0.components()
                .count()
                .cmp(&a.0.components().count())
                .then(b.2.cmp(&a.2))
        });
        let root = repo_root.unwrap_or_else(|| workspace.to_path_buf());
        let mut repo = Vec::new();
        let exclude = root.join(".git/info/exclude");
        if exclude.is_file() {
            let mut b = GitignoreBuilder::new(&root);
            b.add(&exclude);
            if let Ok(gi) = b.build() {
                repo.push((root.clone(), gi));
            }
        }
        let (global, _partial_errors) = GitignoreBuilder::new(&root).build_global();
        if !global.is_empty() {
            repo.push((root, global));
        }
        IgnoreRules {
            dirs: dirs.into_iter().map(|(d, gi, _)| (d, gi)).collect(),
            repo,
        }
    }

    fn is_ignored(&self, path: &Path) -> bool {
        let is_dir = path.is_dir();
        for (root, gi) in self.dirs.iter().chain(self.repo.iter()) {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            if rel.as_os_str().is_empty() {
                continue;
            }
            match gi.matched_path_or_any_parents(rel, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => {}
            }
        }
        false
    }
}

pub struct ChangeWatcher {
    watcher: RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<PathBuf>,
    workflow_file: PathBuf,
    workspace: PathBuf,
    /// Whether the workspace is watched (recursively) yet: only once there are globs to match.
    workspace_watched: bool,
    ignore: Vec<PathBuf>,
    globs: GlobSet,
    rules: IgnoreRules,
    fence_dir: Option<PathBuf>,
    fences: AtomicU64,
}

impl ChangeWatcher {
    /// Watch `workflow_file`, and the files under `workspace` matching `globs`.
    pub fn new(
        workflow_file: &Path,
        workspace: &Path,
        globs: &[String],
        ignore: Vec<PathBuf>,
    ) -> Result<Self, WatchError> {
        let mut w = Self::workspace_only(workspace, globs, ignore)?;
        let workflow_file = workflow_file
            .canonicalize()
            .unwrap_or_else(|_| workflow_file.to_path_buf());
        // Watch the directory, not the file: editors replace files by rename.
        let dir = workflow_file
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        // Inside a workspace watched recursively the directory is watched already; watching
        // it again non-recursively would stop notify from following new subdirectories there.
        if !(w.workspace_watched && dir.starts_with(&w.workspace)) {
            w.watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Notify {
                    path: dir.clone(),
                    source,
                })?;
        }
        w.workflow_file = workflow_file;
        Ok(w)
    }

    /// Watch only the files under `workspace` matching `globs` (a workflow that lives
    /// elsewhere, e.g. in a git repository the server reads).
    pub fn workspace_only(
        workspace: &Path,
        globs: &[String],
        ignore: Vec<PathBuf>,
    ) -> Result<Self, WatchError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if matches!(ev.kind, notify::EventKind::Access(_)) {
                    return;
                }
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        })
        .map_err(|source| WatchError::Notify {
            path: workspace.to_path_buf(),
            source,
        })?;
        let workspace = workspace
            .canonicalize()
            .unwrap_or_else(|_| workspace.to_path_buf());
        let fence_dir = make_fence_dir()?;
        // Without a fence the watcher still works; `settle` then waits out its timeout.
        let fence_dir = watcher
            .watch(&fence_dir, RecursiveMode::NonRecursive)
            .ok()
            .map(|()| fence_dir);
        let ignore = ignore
            .into_iter()
            .map(|p| p.canonicalize().unwrap_or(p))
            .collect();
        let mut w = ChangeWatcher {
            watcher,
            rx,
            workflow_file: PathBuf::new(),
            rules: IgnoreRules::load(&workspace),
            workspace,
            workspace_watched: false,
            ignore,
            globs: GlobSet::empty(),
            fence_dir,
            fences: AtomicU64::new(0),
        };
        w.set_globs(globs)?;
        Ok(w)
    }

    /// Match changes under the workspace against `globs` from now on (the workflow file, if
    /// any, still counts). On an error the previous globs stay.
    pub fn set_globs(&mut self, globs: &[String]) -> Result<(), WatchError> {
        let mut builder = GlobSetBuilder::new();
        for g in globs {
            builder.add(Glob::new(g).map_err(|source| WatchError::Glob {
                glob: g.clone(),
                source,
            })?);
        }
        let set = builder.build().map_err(|source| WatchError::Glob {
            glob: globs.join(", "),
            source,
        })?;
        if !globs.is_empty() && !self.workspace_watched {
            self.watcher
                .watch(&self.workspace, RecursiveMode::Recursive)
                .map_err(|source| WatchError::Notify {
                    path: self.workspace.clone(),
                    source,
                })?;
            self.workspace_watched = true;
        }
        self.globs = set;
        Ok(())
    }

    /// Whether a change to `path` should start a run.
    pub fn relevant(&self, path: &Path) -> bool {
        if !self.workflow_file.as_os_str().is_empty() && path == self.workflow_file {
            return true;
        }
        if self.fence_dir.as_ref().is_some_and(|f| path.starts_with(f)) {
            return false;
        }
        if self.ignore.iter().any(|i| path.starts_with(i)) {
            return false;
        }
        let Ok(rel) = path.strip_prefix(&self.workspace) else {
            return false;
        };
        if rel.components().any(|c| c.as_os_str() == ".git") {
            return false;
        }
        if is_editor_leftover(path) {
            return false;
        }
        if self.rules.is_ignored(path) {
            return false;
        }
        self.globs.is_match(rel)
    }

    /// Read an event; an edited ignore file reloads the rules first.
    fn take(&mut self, p: &Path) {
        let edits_rules = p
            .file_name()
            .is_some_and(|n| IGNORE_FILES.iter().any(|i| n == *i))
            || p.ends_with(".git/info/exclude");
        if edits_rules {
            self.rules = IgnoreRules::load(&self.workspace);
        }
    }

    /// Wait for the next relevant change, then collect further changes until `quiet` passes
    /// without one. Returns the changed paths, or `None` if the watcher stopped.
    pub async fn next_batch(&mut self, quiet: Duration) -> Option<Vec<PathBuf>> {
        let mut batch = Vec::new();
        while batch.is_empty() {
            let p = self.rx.recv().await?;
            self.take(&p);
            if self.relevant(&p) {
                batch.push(p);
            }
        }
        loop {
            match tokio::time::timeout(quiet, self.rx.recv()).await {
                Ok(Some(p)) => {
                    self.take(&p);
                    if self.relevant(&p) && !batch.contains(&p) {
                        batch.push(p);
                    }
                }
                Ok(None) | Err(_) => return Some(batch),
            }
        }
    }

    /// After a run: read every event up to now (fenced, so none of the run's writes is still
    /// on its way) and return the relevant paths that changed, the run's own writes included.
    pub async fn settle(&mut self) -> Vec<PathBuf> {
        let mut changed = Vec::new();
        let fence = self.write_fence();
        let deadline = tokio::time::Instant::now() + FENCE_TIMEOUT;
        loop {
            let next = match &fence {
                Some(_) => tokio::time::timeout_at(deadline, self.rx.recv()).await,
                None => Ok(self.rx.try_recv().ok()),
            };
            let p = match next {
                Ok(Some(p)) => p,
                Ok(None) | Err(_) => break,
            };
            if fence.as_ref().is_some_and(|f| *f == p) {
                break;
            }
            self.take(&p);
            if self.relevant(&p) && !changed.contains(&p) {
                changed.push(p);
            }
        }
        if let Some(f) = fence {
            let _ = std::fs::remove_file(f);
        }
        changed
    }

    /// After a run: discard what changed while it ran (the run's own writes), except the
    /// workflow file itself. Returns true if the workflow file changed meanwhile.
    pub async fn drain_after_run(&mut self) -> bool {
        let changed = self.settle().await;
        changed.contains(&self.workflow_file)
    }

    fn write_fence(&self) -> Option<PathBuf> {
        let dir = self.fence_dir.as_ref()?;
        let n = self.fences.fetch_add(1, Ordering::Relaxed);
        let f = dir.join(format!("fence-{n}"));
        std::fs::write(&f, b"").ok().map(|()| f)
    }

    pub fn workspace(&self) -> &Path {
        &self.workspace
    }
}

impl Drop for ChangeWatcher {
    fn drop(&mut self) {
        if let Some(d) = &self.fence_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn make_fence_dir() -> Result<PathBuf, WatchError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir()
        .join(format!(
            "secureclaw-watch-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::new_v4().simple()
        ))
        .canonicalize_parent();
    std::fs::create_dir(&dir).map_err(WatchError::Fence)?;
    Ok(dir)
}

trait CanonicalParent {
    fn canonicalize_parent(self) -> PathBuf;
}

impl CanonicalParent for PathBuf {
    /// Events name canonical paths (`/tmp` may be a link): so must the fence.
    fn canonicalize_parent(self) -> PathBuf {
        match (self.parent().map(Path::canonicalize), self.file_name()) {
            (Some(Ok(p)), Some(name)) => p.join(name),
            _ => self,
        }
    }
}

/// What watch mode watches under the workspace when it is not told (besides the workflow
/// file itself, which always counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchScope {
    /// The paths the workflow declares: its `on.watch` globs, the paths and globs its `read`
    /// steps read and the files its `patch` steps patch. Empty when it declares none (only the
    /// workflow file is watched then).
    Declared(Vec<DeclaredPath>),
    /// The whole workspace, because the workflow's inputs cannot all be known from the file;
    /// `reason` says why.
    Workspace { reason: String },
}

/// One workspace path a workflow declares, relative to the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredPath {
    /// One file, named literally.
    File(String),
    /// The files a glob matches.
    Glob(String),
}

impl DeclaredPath {
    /// The glob that matches it.
    pub fn glob(&self) -> String {
        match self {
            DeclaredPath::File(path) => globset::escape(path),
            DeclaredPath::Glob(glob) => glob.clone(),
        }
    }
}

impl std::fmt::Display for DeclaredPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeclaredPath::File(text) | DeclaredPath::Glob(text) => f.write_str(text),
        }
    }
}

impl WatchScope {
    /// The globs to hand to [`ChangeWatcher::set_globs`].
    pub fn globs(&self) -> Vec<String> {
        match self {
            WatchScope::Declared(paths) => paths.iter().map(DeclaredPath::glob).collect(),
            WatchScope::Workspace { .. } => vec!["**".to_string()],
        }
    }
}

/// The workspace paths `wf` declares it depends on.
///
/// A shell step may read anything, so a workflow with one watches the whole workspace unless
/// its `on.watch` says what matters. A `read` or `patch` path made from a template is only
/// known at run time: the whole workspace again.
pub fn declared_scope(wf: &crate::model::Workflow) -> WatchScope {
    use crate::template::Templates;
    let mut paths: Vec<DeclaredPath> = Vec::new();
    let mut add = |p: DeclaredPath| {
        if !paths.contains(&p) {
            paths.push(p);
        }
    };
    for g in &wf.on.watch {
        add(DeclaredPath::Glob(relative(g).to_string()));
    }
    for step in &wf.steps {
        let files = step
            .read
            .as_ref()
            .and_then(|r| r.path.as_deref())
            .into_iter()
            .chain(step.patch.as_ref().map(|p| p.path.as_str()));
        let pattern = step.read.as_ref().and_then(|r| r.glob.as_deref());
        if files.clone().chain(pattern).any(Templates::is_template) {
            return WatchScope::Workspace {
                reason: format!("step `{}` names a path with a template", step.id),
            };
        }
        for path in files {
            add(DeclaredPath::File(relative(path).to_string()));
        }
        if let Some(pattern) = pattern {
            add(DeclaredPath::Glob(relative(pattern).to_string()));
        }
    }
    if wf.on.watch.is_empty()
        && let Some(step) = wf.steps.iter().find(|s| s.shell.is_some())
    {
        return WatchScope::Workspace {
            reason: format!(
                "shell step `{}` declares no inputs: name them in `on.watch` or with --path",
                step.id
            ),
        };
    }
    WatchScope::Declared(paths)
}

/// A workspace path as the watcher matches it: without a leading `./`.
fn relative(path: &str) -> &str {
    let mut p = path;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest.trim_start_matches('/');
    }
    p
}

/// What the watcher last saw in each path it has looked at: SHA-256 of the content, `None`
/// when absent.
pub type Seen = std::collections::HashMap<PathBuf, Option<String>>;

/// SHA-256 of a file's content now, `None` when it cannot be read (gone).
pub fn content_hash(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&b)))
}

/// Of the paths that changed while a run went on, those the run did not write.
///
/// - A path the run recorded changing is its own while it is still as the run left it (`left`
///   maps a path to its SHA-256 after the run, `None` when the run deleted it).
/// - A path the run did not record is nobody's change when it is gone (a scratch file made
///   and removed during the run) or holds what the watcher saw there last (`seen`: a file
///   written again with the same bytes).
/// - A directory is never a change by itself (the files in it are).
///
/// Whatever remains is someone else's change. `seen` learns the current state of every path.
pub fn foreign_changes(
    changed: &[PathBuf],
    left: &std::collections::BTreeMap<PathBuf, Option<String>>,
    seen: &mut Seen,
) -> Vec<PathBuf> {
    let mut foreign = Vec::new();
    for p in changed.iter().filter(|p| !p.is_dir()) {
        let now = content_hash(p);
        let theirs = match left.get(p) {
            Some(after) => *after != now,
            None => now.is_some() && seen.get(p) != Some(&now),
        };
        if theirs {
            foreign.push(p.clone());
        }
        seen.insert(p.clone(), now);
    }
    foreign
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editor_leftovers_are_not_edits() {
        for name in [
            ".notes.md.swp",
            ".notes.md.swx",
            ".notes.md.swo",
            "notes.md~",
            ".#notes.md",
            "#notes.md#",
            "4913",
            "notes.md.tmp",
            "notes.md.tmp.8812",
            "notes.md___jb_tmp___",
            "notes.md___jb_old___",
            ".notes.md.kate-swp",
        ] {
            assert!(
                is_editor_leftover(Path::new("src").join(name).as_path()),
                "{name}"
            );
        }
        for name in ["notes.md", "swp", "4914", "tmp.md", "a#b", "template.rs"] {
            assert!(!is_editor_leftover(Path::new(name)), "{name}");
        }
    }

    fn workflow(yaml: &str) -> crate::model::Workflow {
        match crate::validate::validate_bytes(Path::new("wf.yaml"), yaml.as_bytes()) {
            Ok(v) => v.workflow,
            Err(d) => panic!("{d:?}"),
        }
    }

    #[test]
    fn declared_scope_lists_reads_patches_and_watch_globs() {
        let wf = workflow(
            r#"
version: 1
name: d
on: { watch: ["docs/**"] }
steps:
  - { id: one, read: { path: "./src/[main].rs" } }
  - { id: all, read: { glob: "src/**/*.rs" } }
  - id: fix
    patch: { path: Cargo.toml, diff: "--- a\n+++ b\n" }
  - { id: again, read: { path: Cargo.toml } }
  - { id: build, shell: make }
"#,
        );
        let WatchScope::Declared(paths) = declared_scope(&wf) else {
            panic!("{:?}", declared_scope(&wf));
        };
        let shown: Vec<String> = paths.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["docs/**", "src/[main].rs", "src/**/*.rs", "Cargo.toml"]
        );
        // A literal path matches itself only, brackets and all.
        let globs = declared_scope(&wf).globs();
        let set = {
            let mut b = GlobSetBuilder::new();
            for g in &globs {
                b.add(Glob::new(g).unwrap());
            }
            b.build().unwrap()
        };
        assert!(set.is_match("src/[main].rs"));
        let literal = Glob::new(&DeclaredPath::File("src/[main].rs".into()).glob())
            .unwrap()
            .compile_matcher();
        assert!(literal.is_match("src/[main].rs"));
        assert!(!literal.is_match("src/m.rs"));
        assert!(set.is_match("Cargo.toml"));
        assert!(!set.is_match("README.md"));
    }

    #[test]
    fn shell_steps_or_templated_paths_widen_the_scope_to_the_workspace() {
        let shell = workflow("version: 1\nname: s\nsteps:\n  - { id: build, shell: make }\n");
        assert!(
            matches!(&declared_scope(&shell), WatchScope::Workspace { reason } if reason.contains("`build`")),
            "{:?}",
            declared_scope(&shell)
        );
        let templated = workflow(
            "version: 1\nname: t\ninputs: { f: { type: string } }\nsteps:\n  - { id: r, read: { path: '{{ inputs.f }}' } }\n",
        );
        assert!(matches!(
            declared_scope(&templated),
            WatchScope::Workspace { .. }
        ));
        let writes_only = workflow(
            "version: 1\nname: w\nsteps:\n  - { id: w, write: { path: out.txt, content: x } }\n",
        );
        assert_eq!(
            declared_scope(&writes_only),
            WatchScope::Declared(Vec::new())
        );
    }

    #[test]
    fn git_ignore_rules_nest_and_negate() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(ws.join(".git/info")).unwrap();
        std::fs::create_dir_all(ws.join("src/gen")).unwrap();
        std::fs::create_dir_all(ws.join("build")).unwrap();
        std::fs::write(ws.join(".gitignore"), "build/\n*.log\n!keep.log\n").unwrap();
        std::fs::write(ws.join("src/.gitignore"), "gen/\n").unwrap();
        std::fs::write(ws.join("src/.ignore"), "!gen/wanted.rs\n").unwrap();
        std::fs::write(ws.join(".git/info/exclude"), "local.txt\n").unwrap();
        let rules = IgnoreRules::load(&ws);
        for ignored in [
            "build/out.bin",
            "a.log",
            "src/b.log",
            "src/gen/x.rs",
            "local.txt",
        ] {
            assert!(rules.is_ignored(&ws.join(ignored)), "{ignored}");
        }
        for kept in ["keep.log", "src/main.rs", "src/gen/wanted.rs", "README.md"] {
            assert!(!rules.is_ignored(&ws.join(kept)), "{kept}");
        }
    }

    #[test]
    fn a_workspace_inside_a_repository_reads_the_parents_rules() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        std::fs::create_dir_all(repo.join("docs")).unwrap();
        std::fs::write(repo.join(".gitignore"), "*.pdf\n").unwrap();
        let rules = IgnoreRules::load(&repo.join("docs"));
        assert!(rules.is_ignored(&repo.join("docs/book.pdf")));
        assert!(!rules.is_ignored(&repo.join("docs/book.md")));
    }

    #[test]
    fn changes_the_run_left_as_it_wrote_them_are_its_own() {
        use std::collections::BTreeMap;
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        let sha = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
        std::fs::write(ws.join("out.txt"), "run wrote this").unwrap();
        std::fs::write(ws.join("edited.txt"), "someone edited after the run").unwrap();
        std::fs::write(ws.join("user.txt"), "a user's file").unwrap();
        std::fs::write(ws.join("same.txt"), "written again, same bytes").unwrap();
        let mut seen = Seen::new();
        seen.insert(ws.join("same.txt"), Some(sha(b"written again, same bytes")));
        seen.insert(ws.join("user.txt"), Some(sha(b"what it held before")));
        let mut left = BTreeMap::new();
        left.insert(ws.join("out.txt"), Some(sha(b"run wrote this")));
        left.insert(ws.join("edited.txt"), Some(sha(b"what the run wrote")));
        left.insert(ws.join("removed.txt"), None);
        let changed: Vec<PathBuf> = [
            "out.txt",
            "edited.txt",
            "user.txt",
            "removed.txt",
            "scratch",
            "same.txt",
        ]
        .iter()
        .map(|n| ws.join(n))
        .collect();
        assert_eq!(
            foreign_changes(&changed, &left, &mut seen),
            vec![ws.join("edited.txt"), ws.join("user.txt")]
        );
        // Now seen as they are: the same paths again, unchanged, are nobody's change.
        assert!(foreign_changes(&changed, &BTreeMap::new(), &mut seen).is_empty());
    }

    #[tokio::test]
    async fn settle_reads_every_event_up_to_its_fence() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().canonicalize().unwrap();
        let mut w = ChangeWatcher::workspace_only(&ws, &["**/*.txt".into()], Vec::new()).unwrap();
        for i in 0..50 {
            std::fs::write(ws.join(format!("f{i}.txt")), "x").unwrap();
        }
        let seen = w.settle().await;
        assert_eq!(seen.len(), 50, "{seen:?}");
        // Nothing is left over to start a run later.
        let next = tokio::time::timeout(
            Duration::from_millis(300),
            w.next_batch(Duration::from_millis(50)),
        )
        .await;
        assert!(next.is_err(), "{next:?}");
    }

    #[tokio::test]
    async fn new_directories_beside_the_workflow_file_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().canonicalize().unwrap();
        let wf = ws.join("wf.yaml");
        std::fs::write(&wf, "x").unwrap();
        let mut w = ChangeWatcher::new(&wf, &ws, &["**".into()], Vec::new()).unwrap();
        std::fs::create_dir(ws.join("fresh")).unwrap();
        let made = w.next_batch(Duration::from_millis(100)).await.unwrap();
        assert_eq!(made, vec![ws.join("fresh")]);
        std::fs::write(ws.join("fresh/new.txt"), "x").unwrap();
        let written = tokio::time::timeout(
            Duration::from_secs(5),
            w.next_batch(Duration::from_millis(100)),
        )
        .await;
        assert_eq!(written.ok().flatten(), Some(vec![ws.join("fresh/new.txt")]));
    }

    #[tokio::test]
    async fn set_globs_starts_watching_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().canonicalize().unwrap();
        let wf = ws.join("wf.yaml");
        std::fs::write(&wf, "x").unwrap();
        std::fs::create_dir(ws.join("src")).unwrap();
        let mut w = ChangeWatcher::new(&wf, &ws, &[], Vec::new()).unwrap();
        w.set_globs(&["src/*.rs".into()]).unwrap();
        std::fs::write(ws.join("README.md"), "x").unwrap();
        std::fs::write(ws.join("src/lib.rs"), "x").unwrap();
        let batch = w.next_batch(Duration::from_millis(100)).await.unwrap();
        assert_eq!(batch, vec![ws.join("src/lib.rs")]);
        assert!(w.set_globs(&["src/[".into()]).is_err());
    }

    #[tokio::test]
    async fn ignored_and_leftover_files_do_not_make_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().canonicalize().unwrap();
        std::fs::write(ws.join(".gitignore"), "ignored/\n*.bak\n").unwrap();
        std::fs::create_dir(ws.join("ignored")).unwrap();
        let mut w = ChangeWatcher::workspace_only(&ws, &["**".into()], Vec::new()).unwrap();
        std::fs::write(ws.join("ignored/x.txt"), "x").unwrap();
        std::fs::write(ws.join("a.bak"), "x").unwrap();
        std::fs::write(ws.join(".a.txt.swp"), "x").unwrap();
        std::fs::write(ws.join("a.txt~"), "x").unwrap();
        std::fs::write(ws.join("real.txt"), "x").unwrap();
        let batch = w.next_batch(Duration::from_millis(200)).await.unwrap();
        assert_eq!(batch, vec![ws.join("real.txt")]);
    }
}
