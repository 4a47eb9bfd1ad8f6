//! Hostile and huge inputs: each gets a clear error or validates; never a panic or a hang.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::path::Path;

use secureclaw_engine::testing::dag_workflow;
use secureclaw_engine::validate::validate_bytes;

fn check(bytes: &[u8]) -> Result<usize, String> {
    validate_bytes(Path::new("hostile.yaml"), bytes)
        .map(|v| v.order.len())
        .map_err(|d| d.to_string())
}

#[test]
fn ten_thousand_nodes_validate() {
    assert_eq!(check(dag_workflow(10_000).as_bytes()), Ok(10_000));
}

#[test]
fn a_ten_megabyte_file_validates_or_fails_clearly() {
    let big = "x".repeat(10 * 1024 * 1024);
    let text = format!(
        "version: 1\nname: big\nsteps:\n  - id: a\n    write: {{ path: big.txt, content: \"{big}\" }}\n"
    );
    assert_eq!(check(text.as_bytes()), Ok(1));
    let huge = "x".repeat(17 * 1024 * 1024);
    let err = check(huge.as_bytes()).unwrap_err();
    assert!(err.contains("the limit is"), "{err}");
}

#[test]
fn deep_nesting_is_an_error() {
    for depth in [70, 1_000, 200_000] {
        let text = format!(
            "version: 1\nname: deep\nsteps: {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let err = check(text.as_bytes()).unwrap_err();
        assert!(
            err.contains("nesting") || err.contains("recursion"),
            "{depth}: {err}"
        );
    }
    let text = format!(
        "version: 1\nname: deep\nsteps:\n{}",
        (0..100)
            .map(|i| format!("{}- \n", "  ".repeat(i + 1)))
            .collect::<String>()
    );
    assert!(check(text.as_bytes()).is_err());
}

#[test]
fn alias_bombs_are_refused() {
    let mut text = String::from("version: 1\nname: bomb\nx0: &x0 [a, a, a, a, a, a, a, a]\n");
    for i in 1..12 {
        text.push_str(&format!(
            "x{i}: &x{i} [*x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}]\n",
            p = i - 1
        ));
    }
    text.push_str("steps: *x11\n");
    let err = check(text.as_bytes()).unwrap_err();
    assert!(err.contains("expands to more than"), "{err}");
}

#[test]
fn garbage_never_panics() {
    let samples: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\0\0\0".to_vec(),
        b"{{{{{{".to_vec(),
        b"version: 1\nname: x\nsteps: [{id: a, shell: '{{ steps.a.output }}'}]\n".to_vec(),
        b"version: 1\nname: x\nsteps: [{id: a, shell: '{% for x in steps %}{% endfor %}'}]\n".to_vec(),
        b"version: 1\nname: x\nsteps: [{id: a, patch: {path: a, diff: 'not a diff'}}]\n".to_vec(),
        b"version: 1\nname: x\nsteps: [{id: a, read: {glob: '[[['}}]\n".to_vec(),
        b"version: 1\nname: x\nsteps: [{id: a, http: {url: 'https://'}, network: ['']}]\n".to_vec(),
        b"version: 1\nname: x\nsteps: [{id: a, shell: x, timeout: 99999999999999999999999999d}]\n".to_vec(),
        b"version: 1\nname: x\nsteps: [{id: a, shell: x, sandbox: {memory: 99999999999999999999Ti}}]\n".to_vec(),
        b"? [complex]\n: key\n".to_vec(),
        b"!!binary abc".to_vec(),
        b"version: !custom 1\n".to_vec(),
        vec![0xff; 1000],
        "version: 1\nname: \u{202e}x\nsteps: []\n".as_bytes().to_vec(),
    ];
    for s in samples {
        let _ = check(&s);
    }
}

#[test]
fn many_errors_are_all_reported() {
    let mut text = String::from("version: 1\nname: x\nsteps:\n");
    for i in 0..500 {
        text.push_str(&format!(
            "  - {{ id: s{i}, needs: [missing{i}], shell: 'true' }}\n"
        ));
    }
    let err = check(text.as_bytes()).unwrap_err();
    assert_eq!(err.matches("needs unknown step").count(), 500);
}
