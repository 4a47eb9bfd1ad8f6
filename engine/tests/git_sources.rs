//! Workflow sources read from real git repositories made here with the `git` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use secureclaw_engine::git::{
    GitError, GitSource, SourceSpec, blob_id, provenance_of_file, read_blob,
};

fn sh(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn repo() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    sh(d.path(), &["init", "-q", "-b", "main"]);
    write(d.path(), "flows/a.yaml", "version: 1\n");
    write(d.path(), "flows/sub/b.yml", "b\n");
    write(d.path(), "README.md", "not a workflow\n");
    write(d.path(), "other/c.yaml", "c\n");
    sh(d.path(), &["add", "."]);
    sh(d.path(), &["commit", "-q", "-m", "one"]);
    d
}

fn spec(location: String, dir: Option<&str>, branch: Option<&str>) -> SourceSpec {
    SourceSpec {
        location,
        branch: branch.map(str::to_string),
        dir: dir.map(str::to_string),
        allow_network: false,
    }
}

#[test]
fn a_local_repository_is_read_at_its_commit_not_its_work_tree() {
    let r = repo();
    let cache = tempfile::tempdir().unwrap();
    let src = GitSource::open(
        spec(r.path().display().to_string(), Some("flows"), None),
        cache.path(),
    )
    .unwrap();
    assert!(src.is_git());
    let head = sh(r.path(), &["rev-parse", "HEAD"]);
    assert_eq!(src.fetch().unwrap(), Some(head.clone()));
    // An uncommitted edit is not what the source holds.
    write(r.path(), "flows/a.yaml", "edited, not committed\n");
    let snap = src.snapshot().unwrap();
    assert_eq!(snap.commit.as_deref(), Some(head.as_str()));
    assert_eq!(snap.branch.as_deref(), Some("main"));
    let paths: Vec<&str> = snap.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["flows/a.yaml", "flows/sub/b.yml"]);
    assert_eq!(snap.files[0].bytes, b"version: 1\n");
    assert_eq!(
        snap.files[0].blob.as_deref(),
        Some(sh(r.path(), &["rev-parse", "HEAD:flows/a.yaml"]).as_str())
    );
    let prov = src.provenance(&snap, &snap.files[0], "ops").unwrap();
    assert_eq!(
        (
            prov.commit.as_str(),
            prov.path.as_str(),
            prov.source.as_deref(),
            prov.dirty
        ),
        (head.as_str(), "flows/a.yaml", Some("ops"), false)
    );

    // A new commit is seen at once; the old one can still be read exactly.
    write(r.path(), "flows/a.yaml", "version: 2\n");
    sh(r.path(), &["commit", "-qam", "two"]);
    let new_head = sh(r.path(), &["rev-parse", "HEAD"]);
    assert_eq!(src.fetch().unwrap(), Some(new_head));
    let old = src.read_at(&head, "flows/a.yaml").unwrap();
    assert_eq!(old.bytes, b"version: 1\n");
    assert_eq!(old.blob, Some(blob_id(b"version: 1\n").unwrap()));
    assert!(matches!(
        src.read_at(&head, "flows/none.yaml"),
        Err(GitError::NotInCommit { .. })
    ));
    assert!(matches!(
        src.read_at("HEAD", "flows/a.yaml"),
        Err(GitError::BadCommit(_))
    ));
    assert!(matches!(
        src.read_at(&head, "../etc/passwd"),
        Err(GitError::BadPath(_))
    ));
    assert!(matches!(
        src.read_at(&"0".repeat(40), "flows/a.yaml"),
        Err(GitError::NotInCommit { .. })
    ));
}

#[test]
fn a_branch_is_read_from_its_own_head_and_a_missing_one_is_named() {
    let r = repo();
    sh(r.path(), &["checkout", "-q", "-b", "release"]);
    write(r.path(), "flows/a.yaml", "release\n");
    sh(r.path(), &["commit", "-qam", "release"]);
    sh(r.path(), &["checkout", "-q", "main"]);
    let cache = tempfile::tempdir().unwrap();
    let src = GitSource::open(
        spec(r.path().display().to_string(), None, Some("release")),
        cache.path(),
    )
    .unwrap();
    let snap = src.snapshot().unwrap();
    assert_eq!(snap.branch.as_deref(), Some("release"));
    let a = snap
        .files
        .iter()
        .find(|f| f.path == "flows/a.yaml")
        .unwrap();
    assert_eq!(a.bytes, b"release\n");
    let gone = GitSource::open(
        spec(r.path().display().to_string(), None, Some("nope")),
        cache.path(),
    )
    .unwrap();
    let e = gone.snapshot().unwrap_err();
    assert!(e.to_string().contains("no branch `nope`"), "{e}");
}

#[test]
fn a_file_url_is_mirrored_and_fetched_again_after_a_push() {
    let r = repo();
    let cache = tempfile::tempdir().unwrap();
    let url = format!("file://{}", r.path().display());
    let src = GitSource::open(spec(url, Some("flows"), None), cache.path()).unwrap();
    assert!(
        src.snapshot().is_err(),
        "nothing is read before the first fetch"
    );
    let head = sh(r.path(), &["rev-parse", "HEAD"]);
    assert_eq!(src.fetch().unwrap(), Some(head));
    assert_eq!(src.snapshot().unwrap().files.len(), 2);
    write(r.path(), "flows/new.yaml", "new\n");
    sh(r.path(), &["add", "."]);
    sh(r.path(), &["commit", "-qm", "three"]);
    // Not seen until fetched.
    assert_eq!(src.snapshot().unwrap().files.len(), 2);
    let new_head = sh(r.path(), &["rev-parse", "HEAD"]);
    assert_eq!(src.fetch().unwrap(), Some(new_head.clone()));
    let snap = src.snapshot().unwrap();
    assert_eq!(snap.commit, Some(new_head));
    assert_eq!(snap.files.len(), 3);
    // The mirror is under the cache directory, not next to the repository.
    assert!(std::fs::read_dir(cache.path()).unwrap().count() == 1);
}

#[test]
fn a_plain_directory_is_read_from_disk_without_provenance() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "w.yaml", "w\n");
    write(d.path(), ".hidden/x.yaml", "x\n");
    std::os::unix::fs::symlink("/etc/passwd", d.path().join("link.yaml")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let src = GitSource::open(
        spec(d.path().display().to_string(), None, None),
        cache.path(),
    )
    .unwrap();
    assert!(!src.is_git());
    assert_eq!(src.fetch().unwrap(), None);
    let snap = src.snapshot().unwrap();
    let paths: Vec<&str> = snap.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        ["w.yaml"],
        "hidden entries and symlinks are not part of a source"
    );
    assert!(src.provenance(&snap, &snap.files[0], "d").is_none());
}

#[test]
fn provenance_of_a_file_names_commit_blob_and_dirtiness() {
    let r = repo();
    let file = r.path().join("flows/a.yaml");
    let p = provenance_of_file(&file).unwrap().unwrap();
    assert_eq!(p.commit, sh(r.path(), &["rev-parse", "HEAD"]));
    assert_eq!(p.path, "flows/a.yaml");
    assert_eq!(p.blob, sh(r.path(), &["rev-parse", "HEAD:flows/a.yaml"]));
    assert_eq!(p.branch.as_deref(), Some("main"));
    assert!(!p.dirty);
    assert_eq!(
        read_blob(r.path(), &p.commit, &p.path).unwrap().bytes,
        b"version: 1\n"
    );
    write(r.path(), "other/c.yaml", "changed\n");
    assert!(
        provenance_of_file(&file).unwrap().unwrap().dirty,
        "a tracked change anywhere makes the tree dirty"
    );
    // Untracked files do not.
    sh(r.path(), &["checkout", "-q", "--", "other/c.yaml"]);
    write(r.path(), "untracked.txt", "u\n");
    assert!(!provenance_of_file(&file).unwrap().unwrap().dirty);
    // A file that is not committed, or not in a repository, has no provenance.
    write(r.path(), "flows/new.yaml", "n\n");
    assert!(
        provenance_of_file(&r.path().join("flows/new.yaml"))
            .unwrap()
            .is_none()
    );
    let plain = tempfile::tempdir().unwrap();
    write(plain.path(), "w.yaml", "w\n");
    assert!(
        provenance_of_file(&plain.path().join("w.yaml"))
            .unwrap()
            .is_none()
    );
}
