//! Workflows kept in git: a registered source's workflow files at a commit, and the provenance
//! of a file that runs.
//!
//! A source is a git repository (a local path, or a `file://`, `https://` or `ssh://` URL) with
//! an optional branch and directory, or a plain directory. Workflows are always read from a
//! commit, never from a work tree, so what runs is exactly what the commit holds. Remote
//! repositories are fetched into a bare mirror under a cache directory; network URLs are
//! refused unless the source allows the network.

use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};
use sha2::Digest as _;

use crate::record::Provenance;

/// Workflow files larger than this are reported, not read.
pub const MAX_WORKFLOW_BYTES: usize = 1024 * 1024;
/// At most this many workflow files per source.
pub const MAX_WORKFLOW_FILES: usize = 1000;

/// Mirror ref that remembers the remote's default branch.
const MIRROR_HEAD: &str = "refs/secureclaw/remote-head";

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{location}: {why}")]
    Location { location: String, why: String },
    #[error("{location}: network access is not allowed for this source")]
    NetworkRefused { location: String },
    #[error("{what}: {source}")]
    Git {
        what: String,
        #[source]
        source: git2::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not in commit {commit}")]
    NotInCommit { commit: String, path: String },
    #[error("`{0}` is not a full commit id (40 hex digits)")]
    BadCommit(String),
    #[error("`{0}`: workflow paths are relative, `/`-separated, without `..`")]
    BadPath(String),
}

impl GitError {
    /// How to fix it, when there is something to say.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            GitError::NetworkRefused { .. } => Some(
                "register the source with `allow_network: true` if it should be fetched over the network",
            ),
            GitError::Location { .. } => Some(
                "give a local path, or a file://, https:// or ssh:// URL (http:// is refused: it is not authenticated)",
            ),
            GitError::NotInCommit { .. } => {
                Some("check the branch and the directory of the source")
            }
            _ => None,
        }
    }
}

fn git(what: impl Into<String>) -> impl FnOnce(git2::Error) -> GitError {
    let what = what.into();
    move |source| GitError::Git { what, source }
}

/// Where a source is and what of it to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// A local path (a git work tree, a bare repository or a plain directory), or a `file://`,
    /// `https://` or `ssh://` URL (or `user@host:path`).
    pub location: String,
    /// The branch to read (default: the repository's `HEAD`).
    pub branch: Option<String>,
    /// Only workflow files under this directory (relative to the repository's root).
    pub dir: Option<String>,
    /// Whether `https://` and `ssh://` locations may be fetched.
    pub allow_network: bool,
}

/// A workflow file of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Relative to the repository's (or directory's) root, `/`-separated.
    pub path: String,
    /// Git blob id, for files read from a commit.
    pub blob: Option<String>,
    pub bytes: Vec<u8>,
}

/// A source's workflow files as of one commit (or, for a plain directory, as on disk now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub files: Vec<SourceFile>,
    /// Files that were found but not read, and why (too large, too many).
    pub skipped: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A repository on this machine, read in place.
    LocalRepo(PathBuf),
    /// A repository fetched into a mirror under the cache directory.
    Mirrored { url: String, mirror: PathBuf },
    /// A plain directory.
    Directory(PathBuf),
}

/// A registered source.
#[derive(Debug, Clone)]
pub struct GitSource {
    spec: SourceSpec,
    kind: Kind,
}

impl GitSource {
    /// Check the location and decide how to read it. `cache_dir` holds mirrors of remote
    /// repositories (one per location); nothing is fetched yet.
    pub fn open(spec: SourceSpec, cache_dir: &Path) -> Result<GitSource, GitError> {
        if let Some(dir) = &spec.dir {
            check_relative(dir)?;
        }
        if let Some(branch) = &spec.branch
            && !git2::Reference::is_valid_name(&format!("refs/heads/{branch}"))
        {
            return Err(GitError::Location {
                location: spec.location.clone(),
                why: format!("`{branch}` is not a valid branch name"),
            });
        }
        let kind = classify(&spec, cache_dir)?;
        Ok(GitSource { spec, kind })
    }

    pub fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    pub fn is_git(&self) -> bool {
        !matches!(self.kind, Kind::Directory(_))
    }

    /// Bring the source up to date: fetch a mirrored repository (cloning it the first time).
    /// Returns the commit the source now reads; `None` for a plain directory.
    pub fn fetch(&self) -> Result<Option<String>, GitError> {
        match &self.kind {
            Kind::Directory(_) => Ok(None),
            Kind::LocalRepo(_) => Ok(Some(self.head_commit()?.to_string())),
            Kind::Mirrored { url, mirror } => {
                let repo = match Repository::open_bare(mirror) {
                    Ok(r) => r,
                    Err(_) => {
                        std::fs::create_dir_all(mirror).map_err(|source| GitError::Io {
                            path: mirror.clone(),
                            source,
                        })?;
                        Repository::init_bare(mirror).map_err(git(mirror.display().to_string()))?
                    }
                };
                let mut remote = repo
                    .remote_anonymous(url)
                    .map_err(git(format!("remote {url}")))?;
                let mut opts = git2::FetchOptions::new();
                opts.remote_callbacks(credentials());
                opts.prune(git2::FetchPrune::On);
                opts.download_tags(git2::AutotagOption::None);
                let specs = [
                    "+refs/heads/*:refs/heads/*".to_string(),
                    format!("+HEAD:{MIRROR_HEAD}"),
                ];
                remote
                    .fetch(&specs, Some(&mut opts), None)
                    .map_err(git(format!("fetching {url}")))?;
                Ok(Some(self.head_commit()?.to_string()))
            }
        }
    }

    /// The workflow files (`*.yml`, `*.yaml` under the source's directory) at the branch's head.
    pub fn snapshot(&self) -> Result<Snapshot, GitError> {
        match &self.kind {
            Kind::Directory(root) => scan_directory(root, self.spec.dir.as_deref()),
            _ => {
                let repo = self.repo()?;
                let commit = self.head_commit_in(&repo)?;
                let mut snap = scan_commit(&repo, commit, self.spec.dir.as_deref())?;
                snap.branch = self.branch_name(&repo);
                Ok(snap)
            }
        }
    }

    /// One file at a commit the source holds (after a fetch).
    pub fn read_at(&self, commit: &str, path: &str) -> Result<SourceFile, GitError> {
        match &self.kind {
            Kind::Directory(root) => Err(GitError::Location {
                location: root.display().to_string(),
                why: format!("a plain directory has no commit {commit}"),
            }),
            _ => {
                let repo = self.repo()?;
                read_in_repo(&repo, commit, path)
            }
        }
    }

    /// Where `file` of `snapshot` came from, for the run record and the ledger.
    pub fn provenance(
        &self,
        snapshot: &Snapshot,
        file: &SourceFile,
        source_name: &str,
    ) -> Option<Provenance> {
        Some(Provenance {
            repository: self.spec.location.clone(),
            source: Some(source_name.to_string()),
            branch: snapshot.branch.clone(),
            commit: snapshot.commit.clone()?,
            path: file.path.clone(),
            blob: file.blob.clone()?,
            dirty: false,
        })
    }

    fn repo(&self) -> Result<Repository, GitError> {
        match &self.kind {
            Kind::LocalRepo(p) => Repository::open(p).map_err(git(p.display().to_string())),
            Kind::Mirrored { url, mirror } => {
                Repository::open_bare(mirror).map_err(|_| GitError::Location {
                    location: url.clone(),
                    why: "not fetched yet".into(),
                })
            }
            Kind::Directory(p) => Err(GitError::Location {
                location: p.display().to_string(),
                why: "not a git repository".into(),
            }),
        }
    }

    fn head_commit(&self) -> Result<Oid, GitError> {
        let repo = self.repo()?;
        self.head_commit_in(&repo)
    }

    fn head_commit_in(&self, repo: &Repository) -> Result<Oid, GitError> {
        let refname = match (&self.spec.branch, &self.kind) {
            (Some(b), _) => format!("refs/heads/{b}"),
            (None, Kind::Mirrored { .. }) => MIRROR_HEAD.to_string(),
            (None, _) => "HEAD".to_string(),
        };
        let obj = repo
            .revparse_single(&format!("{refname}^{{commit}}"))
            .map_err(|e| GitError::Location {
                location: self.spec.location.clone(),
                why: match &self.spec.branch {
                    Some(b) => format!("no branch `{b}` ({})", e.message()),
                    None => format!("no commit at HEAD ({})", e.message()),
                },
            })?;
        Ok(obj.id())
    }

    fn branch_name(&self, repo: &Repository) -> Option<String> {
        if let Some(b) = &self.spec.branch {
            return Some(b.clone());
        }
        if matches!(self.kind, Kind::Mirrored { .. }) {
            return None;
        }
        repo.head()
            .ok()
            .filter(git2::Reference::is_branch)
            .and_then(|h| h.shorthand().map(str::to_string))
    }
}

fn classify(spec: &SourceSpec, cache_dir: &Path) -> Result<Kind, GitError> {
    let loc = spec.location.trim();
    let bad = |why: &str| GitError::Location {
        location: loc.to_string(),
        why: why.to_string(),
    };
    if loc.is_empty() {
        return Err(bad("empty location"));
    }
    let lower = loc.to_ascii_lowercase();
    let network = lower.starts_with("https://")
        || lower.starts_with("ssh://")
        || lower.starts_with("git://")
        || is_scp_like(loc);
    if lower.starts_with("http://") || lower.starts_with("git://") {
        return Err(bad(
            "unauthenticated transports (http://, git://) are refused",
        ));
    }
    if network || lower.starts_with("file://") {
        if network && !spec.allow_network {
            return Err(GitError::NetworkRefused {
                location: loc.to_string(),
            });
        }
        let digest = hex::encode(sha2::Sha256::digest(loc.as_bytes()));
        return Ok(Kind::Mirrored {
            url: loc.to_string(),
            mirror: cache_dir.join(&digest[..32]),
        });
    }
    if lower.contains("://") {
        return Err(bad("unknown URL scheme"));
    }
    let path = PathBuf::from(loc);
    if !path.is_absolute() {
        return Err(bad("a local source must be an absolute path"));
    }
    let meta = std::fs::metadata(&path).map_err(|source| GitError::Io {
        path: path.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(bad("not a directory"));
    }
    // A path that is itself a repository (work tree or bare); a directory inside some other
    // repository's work tree is a plain directory: registering a repository means its root.
    match Repository::open(&path) {
        Ok(_) => Ok(Kind::LocalRepo(path)),
        Err(_) => Ok(Kind::Directory(path)),
    }
}

/// `user@host:path` (scp-like ssh), as git reads it: a colon before any slash.
fn is_scp_like(loc: &str) -> bool {
    match (loc.find(':'), loc.find('/')) {
        (Some(colon), slash) => colon > 0 && slash.is_none_or(|s| colon < s) && loc.contains('@'),
        _ => false,
    }
}

/// Credentials for fetching: the ssh agent for ssh, git's credential helpers for https.
fn credentials<'a>() -> git2::RemoteCallbacks<'a> {
    let mut cb = git2::RemoteCallbacks::new();
    cb.credentials(|url, user, allowed| {
        if allowed.contains(git2::CredentialType::SSH_KEY) {
            return git2::Cred::ssh_key_from_agent(user.unwrap_or("git"));
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
            && let Ok(config) = git2::Config::open_default()
        {
            return git2::Cred::credential_helper(&config, url, user);
        }
        git2::Cred::default()
    });
    cb
}

fn check_relative(path: &str) -> Result<(), GitError> {
    let ok = !path.starts_with('/')
        && !path.contains('\\')
        && !path.contains('\0')
        && path.split('/').all(|c| c != "..");
    if ok {
        Ok(())
    } else {
        Err(GitError::BadPath(path.to_string()))
    }
}

fn is_workflow_name(name: &str) -> bool {
    name.ends_with(".yml") || name.ends_with(".yaml")
}

/// `dir` normalised to `a/b/` (empty for the root).
fn dir_prefix(dir: Option<&str>) -> String {
    let d = dir.unwrap_or("").trim_matches('/');
    if d.is_empty() || d == "." {
        String::new()
    } else {
        format!("{d}/")
    }
}

fn scan_commit(repo: &Repository, commit: Oid, dir: Option<&str>) -> Result<Snapshot, GitError> {
    let c = repo
        .find_commit(commit)
        .map_err(git(format!("commit {commit}")))?;
    let tree = c.tree().map_err(git(format!("tree of {commit}")))?;
    let prefix = dir_prefix(dir);
    let mut found: Vec<(String, Oid)> = Vec::new();
    tree.walk(TreeWalkMode::PreOrder, |root, entry| {
        let Some(name) = entry.name() else {
            return TreeWalkResult::Ok;
        };
        let path = format!("{root}{name}");
        if entry.kind() == Some(ObjectType::Tree) {
            // Descend only into directories on the way to, or inside, the source's directory.
            let dir = format!("{path}/");
            return if dir.starts_with(&prefix) || prefix.starts_with(&dir) {
                TreeWalkResult::Ok
            } else {
                TreeWalkResult::Skip
            };
        }
        if entry.kind() == Some(ObjectType::Blob)
            && path.starts_with(&prefix)
            && is_workflow_name(name)
        {
            found.push((path, entry.id()));
        }
        TreeWalkResult::Ok
    })
    .map_err(git(format!("walking {commit}")))?;
    found.sort();
    let mut snap = Snapshot {
        commit: Some(commit.to_string()),
        branch: None,
        files: Vec::new(),
        skipped: Vec::new(),
    };
    for (i, (path, oid)) in found.into_iter().enumerate() {
        if i >= MAX_WORKFLOW_FILES {
            snap.skipped.push((
                path,
                format!("more than {MAX_WORKFLOW_FILES} workflow files"),
            ));
            continue;
        }
        let blob = repo.find_blob(oid).map_err(git(format!("blob {oid}")))?;
        if blob.size() > MAX_WORKFLOW_BYTES {
            snap.skipped.push((
                path,
                format!("larger than {MAX_WORKFLOW_BYTES} bytes ({})", blob.size()),
            ));
            continue;
        }
        snap.files.push(SourceFile {
            path,
            blob: Some(oid.to_string()),
            bytes: blob.content().to_vec(),
        });
    }
    Ok(snap)
}

fn scan_directory(root: &Path, dir: Option<&str>) -> Result<Snapshot, GitError> {
    let prefix = dir_prefix(dir);
    let start = root.join(&prefix);
    let mut snap = Snapshot {
        commit: None,
        branch: None,
        files: Vec::new(),
        skipped: Vec::new(),
    };
    let mut stack = vec![start];
    let mut found = Vec::new();
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| GitError::Io {
            path: d.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().to_string();
            // Hidden entries (`.git`, `.secureclaw`) and symlinks (which could point anywhere)
            // are not part of a source.
            if name.starts_with('.') || ft.is_symlink() {
                continue;
            }
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && is_workflow_name(&name) {
                found.push(e.path());
            }
        }
    }
    found.sort();
    for (i, p) in found.into_iter().enumerate() {
        let rel = p
            .strip_prefix(root)
            .map(|r| r.to_string_lossy().replace('\\', "/"))
            .unwrap_or_default();
        if i >= MAX_WORKFLOW_FILES {
            snap.skipped.push((
                rel,
                format!("more than {MAX_WORKFLOW_FILES} workflow files"),
            ));
            continue;
        }
        let bytes = std::fs::read(&p).map_err(|source| GitError::Io {
            path: p.clone(),
            source,
        })?;
        if bytes.len() > MAX_WORKFLOW_BYTES {
            snap.skipped.push((
                rel,
                format!("larger than {MAX_WORKFLOW_BYTES} bytes ({})", bytes.len()),
            ));
            continue;
        }
        snap.files.push(SourceFile {
            path: rel,
            blob: None,
            bytes,
        });
    }
    Ok(snap)
}

fn parse_commit(commit: &str) -> Result<Oid, GitError> {
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(GitError::BadCommit(commit.to_string()));
    }
    Oid::from_str(commit).map_err(|_| GitError::BadCommit(commit.to_string()))
}

fn read_in_repo(repo: &Repository, commit: &str, path: &str) -> Result<SourceFile, GitError> {
    check_relative(path)?;
    let oid = parse_commit(commit)?;
    let not_in = || GitError::NotInCommit {
        commit: commit.to_string(),
        path: path.to_string(),
    };
    let c = repo.find_commit(oid).map_err(|_| not_in())?;
    let tree = c.tree().map_err(git(format!("tree of {commit}")))?;
    let entry = tree.get_path(Path::new(path)).map_err(|_| not_in())?;
    if entry.kind() != Some(ObjectType::Blob) {
        return Err(not_in());
    }
    let blob = repo
        .find_blob(entry.id())
        .map_err(git(format!("blob {}", entry.id())))?;
    Ok(SourceFile {
        path: path.to_string(),
        blob: Some(entry.id().to_string()),
        bytes: blob.content().to_vec(),
    })
}

/// The file at `path` of `commit` in the repository at `repository` (a work tree or a bare
/// repository on this machine): how a recorded run is re-run at exactly its commit. The
/// returned blob id lets the caller check it against the recorded one.
pub fn read_blob(repository: &Path, commit: &str, path: &str) -> Result<SourceFile, GitError> {
    let repo = Repository::open(repository).map_err(git(repository.display().to_string()))?;
    read_in_repo(&repo, commit, path)
}

/// The git blob id of `bytes`, as `git hash-object` computes it.
pub fn blob_id(bytes: &[u8]) -> Result<String, GitError> {
    Oid::hash_object(ObjectType::Blob, bytes)
        .map(|o| o.to_string())
        .map_err(git("hashing"))
}

/// Where a workflow file inside a git work tree comes from: the repository's root, `HEAD`'s
/// commit, the file's path and blob there, and whether the work tree has uncommitted changes
/// to tracked files. `None` when the file is not in a repository, or not in `HEAD`'s tree (a
/// new file: there is no commit that holds it).
pub fn provenance_of_file(file: &Path) -> Result<Option<Provenance>, GitError> {
    let file = file.canonicalize().map_err(|source| GitError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let Some(parent) = file.parent() else {
        return Ok(None);
    };
    let Ok(repo) = Repository::discover(parent) else {
        return Ok(None);
    };
    let Some(workdir) = repo.workdir() else {
        return Ok(None);
    };
    let workdir = workdir.canonicalize().map_err(|source| GitError::Io {
        path: workdir.to_path_buf(),
        source,
    })?;
    let Ok(rel) = file.strip_prefix(&workdir) else {
        return Ok(None);
    };
    let rel = rel.to_string_lossy().replace('\\', "/");
    let Ok(head) = repo.head() else {
        // An empty repository: nothing is committed yet.
        return Ok(None);
    };
    let Ok(commit) = head.peel_to_commit() else {
        return Ok(None);
    };
    let tree = commit.tree().map_err(git("HEAD's tree"))?;
    let Ok(entry) = tree.get_path(Path::new(&rel)) else {
        return Ok(None);
    };
    let mut opts = git2::StatusOptions::new();
    opts.include_untracked(false).include_ignored(false);
    let dirty = !repo
        .statuses(Some(&mut opts))
        .map_err(git("git status"))?
        .is_empty();
    Ok(Some(Provenance {
        repository: workdir.display().to_string(),
        source: None,
        branch: head
            .is_branch()
            .then(|| head.shorthand().map(str::to_string))
            .flatten(),
        commit: commit.id().to_string(),
        path: rel,
        blob: entry.id().to_string(),
        dirty,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(location: &str) -> SourceSpec {
        SourceSpec {
            location: location.into(),
            branch: None,
            dir: None,
            allow_network: false,
        }
    }

    #[test]
    fn network_locations_need_permission_and_plain_http_is_refused() {
        let cache = tempfile::tempdir().unwrap();
        for url in [
            "https://example.invalid/repo.git",
            "ssh://git@example.invalid/repo.git",
            "git@example.invalid:org/repo.git",
        ] {
            let e = GitSource::open(spec(url), cache.path()).unwrap_err();
            assert!(matches!(e, GitError::NetworkRefused { .. }), "{url}: {e}");
            let mut allowed = spec(url);
            allowed.allow_network = true;
            assert!(GitSource::open(allowed, cache.path()).is_ok(), "{url}");
        }
        for url in [
            "http://example.invalid/repo.git",
            "git://example.invalid/repo.git",
            "ftp://x/y",
            "relative/path",
            "",
        ] {
            let mut allowed = spec(url);
            allowed.allow_network = true;
            let e = GitSource::open(allowed, cache.path()).unwrap_err();
            assert!(matches!(e, GitError::Location { .. }), "{url}: {e}");
        }
    }

    #[test]
    fn paths_that_escape_are_refused() {
        let cache = tempfile::tempdir().unwrap();
        for dir in ["../x", "/etc", "a/../../b", "a\\b"] {
            let mut s = spec(&cache.path().display().to_string());
            s.dir = Some(dir.into());
            assert!(matches!(
                GitSource::open(s, cache.path()),
                Err(GitError::BadPath(_))
            ));
        }
        let mut s = spec(&cache.path().display().to_string());
        s.branch = Some("bad..name".into());
        assert!(GitSource::open(s, cache.path()).is_err());
    }

    #[test]
    fn blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            blob_id(b"hello\n").unwrap(),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }
}
