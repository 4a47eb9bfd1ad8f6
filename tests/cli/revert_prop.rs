//! Property: whatever a `shell` step does to the files (create, overwrite, append, delete,
//! rename, chmod, symlink, mkdir/rmdir, large and binary content, names with spaces, newlines
//! and non-UTF-8 bytes), `secureclaw revert` puts the tree back exactly: content, modes,
//! symlink targets, empty directories.

use crate::common;

use std::path::Path;

use common::tree_fingerprint as tree;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use proptest::prelude::*;

use common::secureclaw as bin;

/// Names as raw bytes: plain, with a space, with a newline, not UTF-8, nested.
const NAMES: &[&[u8]] = &[
    b"a",
    b"b c",
    b"new\nline",
    b"x\xffy",
    b"d",
    b"d/e",
    b"d/f g",
    b"d/sub",
    b"d/sub/z",
    b"empty",
];

/// A shell word producing the name (printf octal escapes survive any byte but a trailing
/// newline, which no name has).
fn word(name: &[u8]) -> String {
    let esc: String = name.iter().map(|b| format!("\\{b:03o}")).collect();
    format!("\"$(printf '{esc}')\"")
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize, u8),
    Append(usize),
    Big(usize),
    Binary(usize),
    Delete(usize),
    Rename(usize, usize),
    Chmod(usize, u32),
    ChmodFile(usize),
    Symlink(usize, usize),
    Mkdir(usize),
    Rmdir(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let n = 0..NAMES.len();
    prop_oneof![
        (n.clone(), any::<u8>()).prop_map(|(a, b)| Op::Write(a, b)),
        n.clone().prop_map(Op::Append),
        n.clone().prop_map(Op::Big),
        n.clone().prop_map(Op::Binary),
        n.clone().prop_map(Op::Delete),
        (n.clone(), n.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        (
            n.clone(),
            prop::sample::select(vec![0o700u32, 0o755, 0o750, 0o777])
        )
            .prop_map(|(a, m)| Op::Chmod(a, m)),
        n.clone().prop_map(Op::ChmodFile),
        (n.clone(), n.clone()).prop_map(|(a, b)| Op::Symlink(a, b)),
        n.clone().prop_map(Op::Mkdir),
        n.prop_map(Op::Rmdir),
    ]
}

fn script(ops: &[Op]) -> String {
    let w = |i: usize| word(NAMES[i]);
    let mut s = String::new();
    for op in ops {
        let line = match op {
            Op::Write(a, b) => format!("printf 'content %s\\n' {b} > {}", w(*a)),
            Op::Append(a) => format!("printf 'more\\n' >> {}", w(*a)),
            Op::Big(a) => format!("head -c 1200000 /dev/urandom > {}", w(*a)),
            Op::Binary(a) => format!("printf '\\000\\377\\001bin' > {}", w(*a)),
            Op::Delete(a) => format!("rm -rf {}", w(*a)),
            Op::Rename(a, b) => format!("mv -T {} {}", w(*a), w(*b)),
            Op::Chmod(a, m) => format!("chmod {m:o} {}", w(*a)),
            Op::ChmodFile(a) => format!("[ -f {0} ] && [ ! -L {0} ] && chmod 444 {0}", w(*a)),
            Op::Symlink(a, b) => format!("ln -sfn {} {}", w(*b), w(*a)),
            Op::Mkdir(a) => format!("mkdir -p {}", w(*a)),
            Op::Rmdir(a) => format!("rmdir {}", w(*a)),
        };
        // Operations that do not apply to the current tree fail harmlessly.
        s.push_str(&format!("{line} 2>/dev/null\n"));
    }
    s.push_str("exit 0\n");
    s
}

fn seed(root: &Path) {
    let p = |n: &[u8]| root.join(std::ffi::OsStr::from_bytes(n));
    std::fs::write(p(b"a"), "alpha\n").unwrap();
    std::fs::create_dir_all(p(b"d/sub")).unwrap();
    std::fs::write(p(b"d/e"), [0u8, 159, 146, 150, 0]).unwrap();
    std::fs::write(p(b"x\xffy"), "not utf-8 name\n").unwrap();
    std::fs::create_dir(p(b"empty")).unwrap();
    std::os::unix::fs::symlink("a", p(b"b c")).unwrap();
    std::fs::set_permissions(p(b"a"), std::fs::Permissions::from_mode(0o640)).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Modest by default so CI stays fast; PROPTEST_CASES=500 for a deeper search.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn revert_restores_any_shell_effects(ops in prop::collection::vec(op(), 1..12)) {
        let ws = tempfile::tempdir().unwrap();
        let wf_dir = tempfile::tempdir().unwrap();
        seed(ws.path());
        let before = tree(ws.path());
        let wf = wf_dir.path().join("wf.yaml");
        let cmd = script(&ops);
        let yaml = format!(
            "version: 1\nname: prop\nsteps:\n  - id: mess\n    shell: {}\n",
            serde_json::to_string(&cmd).unwrap()
        );
        std::fs::write(&wf, yaml).unwrap();
        let out = bin().arg("run").arg(&wf).arg("--workspace").arg(ws.path())
            .args(["--sandbox", "host", "--yes"]).output().unwrap();
        prop_assert!(out.status.success(), "run: {}", String::from_utf8_lossy(&out.stderr));
        let out = bin().args(["revert", "last", "--state-dir"]).arg(ws.path().join(".secureclaw")).output().unwrap();
        prop_assert!(out.status.success(), "revert: {}\n{}\nscript:\n{cmd}",
            String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        prop_assert_eq!(tree(ws.path()), before, "script:\n{}", cmd);
    }
}
