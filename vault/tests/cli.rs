//! The CLI subcommands (src/vault_cmds.rs in the root package), compiled here so they are
//! tested before main.rs wires them in.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

/// The names `vault_cmds` imports (the engine re-exports them to the binary).
mod vault_api {
    pub use secureclaw_vault::{
        ExportHead, KdfParams, Ledger, LedgerError, LedgerKey, PassphraseSource, Vault, VaultError,
        parse_export_head, verify_export,
    };
}

#[path = "../../src/vault_cmds.rs"]
#[allow(dead_code)]
mod vault_cmds;

mod common;

use clap::Parser;
use common::*;
use secureclaw_vault::{PassphraseSource, Vault};
use vault_cmds::{LedgerCommand, PassphraseArgs, VaultCommand, run_ledger_to, run_vault_to};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    pass: PassphraseArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    #[command(subcommand)]
    Vault(VaultCommand),
    #[command(subcommand)]
    Ledger(LedgerCommand),
}

fn run(args: &[&str], dir: &std::path::Path) -> (i32, String) {
    let cli =
        Cli::try_parse_from(std::iter::once("secureclaw").chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    let code = match cli.cmd {
        Cmd::Vault(c) => run_vault_to(c, dir, &cli.pass.source(), &mut out),
        Cmd::Ledger(c) => run_ledger_to(c, dir, &cli.pass.source(), &mut out),
    }
    .unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
    (code, String::from_utf8(out).unwrap())
}

#[test]
fn export_verify_and_tamper_through_the_cli() {
    let (dir, v) = new_vault();
    for i in 0..5 {
        v.ledger()
            .append(entry(if i % 2 == 0 { "a" } else { "b" }, &format!("s{i}")))
            .unwrap();
    }
    drop(v);
    let pf = dir.path().join("pass.txt");
    std::fs::write(&pf, format!("{PASS}\n")).unwrap();
    let pfs = pf.to_str().unwrap();
    let d = dir.path();

    let (code, out) = run(&["--passphrase-file", pfs, "ledger", "verify"], d);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ledger OK: 5 entries"), "{out}");

    let exp = d.join("export.jsonl");
    let key = d.join("ledger.key");
    let (code, out) = run(
        &[
            "--passphrase-file",
            pfs,
            "ledger",
            "export",
            "--out",
            exp.to_str().unwrap(),
            "--key-out",
            key.to_str().unwrap(),
        ],
        d,
    );
    assert_eq!(code, 0, "{out}");
    let head = d.join("export.jsonl.head.json");
    assert!(head.is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // Offline with the key file: no passphrase, no database.
    let (code, out) = run(
        &[
            "ledger",
            "verify-export",
            exp.to_str().unwrap(),
            "--head",
            head.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ],
        d,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("export OK: 5 entries (seq 1..=5), matches the signed head"),
        "{out}"
    );

    // With the passphrase instead of the key.
    let (code, _) = run(
        &[
            "--passphrase-file",
            pfs,
            "ledger",
            "verify-export",
            exp.to_str().unwrap(),
        ],
        d,
    );
    assert_eq!(code, 0);

    // Truncated export: exit 1 with a precise message.
    let text = std::fs::read_to_string(&exp).unwrap();
    let cut: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&exp, cut).unwrap();
    let (code, out) = run(
        &[
            "ledger",
            "verify-export",
            exp.to_str().unwrap(),
            "--head",
            head.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ],
        d,
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("EXPORT INVALID") && out.contains("truncated"),
        "{out}"
    );

    // Run export.
    let run_exp = d.join("run-a.jsonl");
    let (code, out) = run(
        &[
            "--passphrase-file",
            pfs,
            "ledger",
            "export",
            "--run",
            "a",
            "--out",
            run_exp.to_str().unwrap(),
        ],
        d,
    );
    assert_eq!(code, 0);
    assert!(out.contains("exported 3 entries (ledger has 5)"), "{out}");

    // Ledger verified against the full head, then broken in the database: exit 1 naming seq.
    let (code, _) = run(
        &[
            "--passphrase-file",
            pfs,
            "ledger",
            "verify",
            "--head",
            head.to_str().unwrap(),
        ],
        d,
    );
    assert_eq!(code, 0);
    set_ledger_row(&raw_db(d), 3, None);
    let (code, out) = run(&["--passphrase-file", pfs, "ledger", "verify"], d);
    assert_eq!(code, 1);
    assert!(
        out.contains("LEDGER BROKEN") && out.contains("seq 3"),
        "{out}"
    );
}

#[test]
fn init_status_rekey_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("state");
    let pf = dir.path().join("pass.txt");
    std::fs::write(&pf, "first pass\n").unwrap();
    let newf = dir.path().join("new.txt");
    std::fs::write(&newf, "second pass\n").unwrap();
    // `init` takes Argon2 parameters from the environment; the defaults are tested elsewhere,
    // so create through the library with fast parameters and test status/rekey here.
    Vault::create(&d, "first pass", &FAST).unwrap();
    let (code, out) = run(
        &["--passphrase-file", pf.to_str().unwrap(), "vault", "status"],
        &d,
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("kdf          argon2id m=64 KiB t=1 p=1 salt=16 bytes"),
        "{out}"
    );
    let (code, out) = run(
        &[
            "--passphrase-file",
            pf.to_str().unwrap(),
            "vault",
            "status",
            "--json",
        ],
        &d,
    );
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["ledger_entries"], 0);
    let (code, _) = run(
        &[
            "--passphrase-file",
            pf.to_str().unwrap(),
            "vault",
            "rekey",
            "--new-passphrase-file",
            newf.to_str().unwrap(),
        ],
        &d,
    );
    assert_eq!(code, 0);
    assert!(Vault::open(&d, "second pass").is_ok());
}

#[test]
fn wrong_passphrase_is_an_error_with_a_clear_message() {
    let (dir, v) = new_vault();
    drop(v);
    let pf = dir.path().join("bad.txt");
    std::fs::write(&pf, "not it").unwrap();
    let cli = Cli::try_parse_from([
        "secureclaw",
        "--passphrase-file",
        pf.to_str().unwrap(),
        "ledger",
        "verify",
    ])
    .unwrap();
    let Cmd::Ledger(c) = cli.cmd else {
        unreachable!()
    };
    let err = run_ledger_to(c, dir.path(), &cli.pass.source(), &mut Vec::new()).unwrap_err();
    assert!(format!("{err:#}").contains("wrong passphrase"), "{err:#}");
    let _ = PassphraseSource::Prompt;
}

/// `vault init` reads the Argon2 parameters from the environment; run it in a child process so
/// the variables (small, for speed) are set without `unsafe` `set_var`.
#[test]
fn init_reads_argon2_params_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "init_child_probe",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SECURECLAW_INIT_PROBE_DIR", &state)
        .env("SECURECLAW_PASSPHRASE", "init pass")
        .env("ARGON2_MEMORY_KB", "128")
        .env("ARGON2_ITERATIONS", "2")
        .env("ARGON2_PARALLELISM", "1")
        .env("ARGON2_SALT_BYTES", "24")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("created vault"), "{stdout}");
    let v = Vault::open(&state, "init pass").unwrap();
    let st = v.status().unwrap();
    assert_eq!(
        (st.kdf.memory_kib, st.kdf.iterations, st.kdf.salt_len),
        (128, 2, 24)
    );
    drop(v);
    // A second init refuses to overwrite.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "init_child_probe",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SECURECLAW_INIT_PROBE_DIR", &state)
        .env("SECURECLAW_PASSPHRASE", "init pass")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("already exists"));
}

/// Not a test of its own: the child process the two tests above start (ignored, so a plain
/// test run neither runs it nor counts it as passed).
#[test]
#[ignore = "child-process helper, started by init_reads_argon2_params_from_the_environment"]
fn init_child_probe() {
    let Some(dir) = std::env::var_os("SECURECLAW_INIT_PROBE_DIR") else {
        panic!("run only as the child of a test: SECURECLAW_INIT_PROBE_DIR is not set");
    };
    let cli = Cli::try_parse_from(["secureclaw", "vault", "init"]).unwrap();
    let Cmd::Vault(c) = cli.cmd else {
        unreachable!()
    };
    let mut out = Vec::new();
    match run_vault_to(c, std::path::Path::new(&dir), &cli.pass.source(), &mut out) {
        Ok(code) => println!("{}exit {code}", String::from_utf8_lossy(&out)),
        Err(e) => println!("error: {e:#}"),
    }
}
