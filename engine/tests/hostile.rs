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

/// `n` steps, each needing the one before; `cyclic`: the first also needs the last.
fn chain(n: usize, cyclic: bool) -> String {
    let mut text = String::from("version: 1\nname: chain\nsteps:\n");
    for i in 0..n {
        let need = match (i, cyclic) {
            (0, false) => String::new(),
            (0, true) => format!(", needs: [s{}]", n - 1),
            _ => format!(", needs: [s{}]", i - 1),
        };
        text.push_str(&format!(
            "  - {{ id: s{i}{need}, write: {{ path: 'f{i}', content: x }} }}\n"
        ));
    }
    text
}

/// Validation on a thread with an ordinary 2 MiB stack, as the engine's own threads have.
fn on_small_stack(text: String) -> Result<usize, String> {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || check(text.as_bytes()))
        .unwrap()
        .join()
        .expect("validation overflowed its stack or panicked")
}

#[test]
fn a_hundred_thousand_chained_steps_validate_on_a_small_stack() {
    assert_eq!(on_small_stack(chain(100_000, false)), Ok(100_000));
}

#[test]
fn a_cycle_through_a_hundred_thousand_steps_is_reported_as_a_needs_chain() {
    let err = on_small_stack(chain(100_000, true)).unwrap_err();
    assert!(
        err.contains("dependency cycle"),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(
        err.contains("`s0` needs `s99999`"),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(
        err.contains("more links"),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(
        err.len() < 10_000,
        "the cycle is abbreviated, not printed whole"
    );
}
