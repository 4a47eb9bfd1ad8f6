// The escape battery's fixture, shared (with `include!`, after cases.rs) by both runners: the
// throwaway tree each case attacks and the evidence checked from the host afterwards.
// Paths are written out in full so the including files need no particular imports.

const TOKEN: &str = "sc-other-step-token-5f2d8a";

/// One case's world: a workspace with a `.git`, a canary directory beside it ({OUT}), a state
/// dir with a planted key ({STATE}), and a host loopback listener counting connections
/// ({PORT}).
#[allow(dead_code)] // `base` is used by the binary runner only
struct Env {
    _root: tempfile::TempDir,
    base: std::path::PathBuf,
    ws: std::path::PathBuf,
    out: std::path::PathBuf,
    state: std::path::PathBuf,
    port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn setup() -> Env {
    let root = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(root.path()).unwrap();
    let ws = base.join("ws");
    let out = base.join("outside");
    let state = base.join("state");
    std::fs::create_dir_all(ws.join(".git/hooks")).unwrap();
    std::fs::write(ws.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::create_dir_all(out.join("ssh")).unwrap();
    std::fs::write(out.join("secret.txt"), "host secret\n").unwrap();
    std::fs::write(
        out.join("ssh/id_ed25519"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("vault.key"), "key material\n").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if conn.is_ok() {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    Env {
        _root: root,
        base,
        ws,
        out,
        state,
        port,
        hits,
    }
}

type Tree = std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>;

impl Env {
    /// The canary directory as it is now (paths and contents).
    fn outside(&self) -> Tree {
        let mut map = Tree::new();
        let mut stack = vec![self.out.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p.clone());
                    map.insert(p, Vec::new());
                } else {
                    map.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
                }
            }
        }
        map
    }

    /// What the attack left behind: the PWNED marker, changes in the canary directory since
    /// `before`, connections on the host listener. Empty means the attack failed.
    fn evidence(&self, before: &Tree) -> Vec<String> {
        let mut evidence = Vec::new();
        if self.ws.join("PWNED").exists() {
            evidence.push("PWNED marker written".to_string());
        }
        let after = self.outside();
        if &after != before {
            let changed: Vec<_> = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .map(|(k, _)| k.display().to_string())
                .collect();
            evidence.push(format!("outside dir changed: {changed:?}"));
        }
        if self.hits.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            evidence.push("host listener accepted a connection".to_string());
        }
        evidence
    }

    /// A case's script with its placeholders filled in.
    fn render(&self, script: &str) -> String {
        script
            .replace("{OUT}", &self.out.display().to_string())
            .replace("{STATE}", &self.state.display().to_string())
            .replace("{PORT}", &self.port.to_string())
            .replace("{TOKEN}", TOKEN)
    }
}
