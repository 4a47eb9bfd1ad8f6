//! Real git repositories made in a test, and a fresh server with an admin who registers them
//! as workflow sources.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{Api, Server, unique};

/// A git work tree in a temporary directory, on branch `main`.
pub struct GitRepo {
    dir: tempfile::TempDir,
}

impl GitRepo {
    pub fn new() -> GitRepo {
        let repo = GitRepo {
            dir: tempfile::tempdir().unwrap(),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn location(&self) -> String {
        self.path().display().to_string()
    }

    /// Run git in the work tree; its trimmed stdout.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(self.path())
            .env("GIT_AUTHOR_NAME", "test")
            .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
            .env("GIT_COMMITTER_NAME", "test")
            .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
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

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Stage everything and commit; the new commit's id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// The blob id of `path` at `rev`.
    pub fn blob(&self, rev: &str, path: &str) -> String {
        self.git(&["rev-parse", &format!("{rev}:{path}")])
    }
}

/// A fresh server and its admin (the first user registered there is the admin).
pub async fn admin_server(env: &[(&str, &str)], args: &[&str]) -> (Server, Api) {
    let server = Server::start(env, args);
    let mut admin = server.client();
    admin.register(&unique("admin")).await;
    (server, admin)
}

/// Register a source; panics unless the server answers 201. Its reply.
pub async fn add_source(admin: &Api, name: &str, location: &str, extra: Value) -> Value {
    let mut body = json!({"name": name, "location": location});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = admin.post("/api/v1/sources", body).await;
    assert_eq!(r.status, 201, "register source {name}: {:?}", r.body);
    r.body
}
