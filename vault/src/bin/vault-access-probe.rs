//! Test helper for the concurrent-reader and unlock-agent tests (`vault/tests/access.rs`), each
//! mode run as its own process (the passphrase in `SECURECLAW_PASSPHRASE`):
//!
//! * `hold STATE`: open the vault writable, store a marker value, print `ready`, wait for EOF
//!   on stdin.
//! * `churn STATE`: open writable and commit forever; transaction N stores `runs/latest = N`,
//!   `runs/rNNNNNN` and one ledger entry for that run; prints `committed N` after each.
//! * `probe-read SOCKET` / `probe-agent SOCKET VAULT_ID`: connect to a read or agent socket as
//!   whoever runs this, send a snapshot / GET request, print `bytes N` (what came back).
//! * `agent`: run the unlock agent.
//! * `open-agent STATE`: open for reading with the agent's key; print `opened` or `none`.
//! * `time-read STATE N`: open read-only N times (through the read socket when another process
//!   holds the vault) and verify the ledger; print the median open and verify times (for
//!   docs/performance.md, never asserted).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use secureclaw_vault::{NewEntry, PassphraseSource, Vault, kind};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vault-access-probe: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> Result<&str, Box<dyn std::error::Error>> {
        Ok(args.get(i).ok_or("missing argument")?.as_str())
    };
    let mut out = std::io::stdout().lock();
    match arg(0)? {
        "hold" => {
            let vault = Vault::open(&PathBuf::from(arg(1)?), &pass()?)?;
            vault.put("creds", "token", b"marker-plaintext-held-by-owner")?;
            writeln!(out, "ready")?;
            out.flush()?;
            let mut sink = Vec::new();
            std::io::stdin().read_to_end(&mut sink)?;
        }
        "churn" => {
            let vault = Vault::open(&PathBuf::from(arg(1)?), &pass()?)?;
            writeln!(out, "ready")?;
            out.flush()?;
            for n in 1u64.. {
                let run = format!("r{n:06}");
                vault.write(|tx| {
                    tx.put("runs", "latest", n.to_string().as_bytes())?;
                    tx.put("runs", &run, format!("record of {run}").as_bytes())?;
                    tx.append(NewEntry::new("churn", kind::STEP_FINISHED).run(run.clone()))?;
                    Ok(())
                })?;
                writeln!(out, "committed {n}")?;
                out.flush()?;
            }
        }
        "probe-read" => {
            let mut s = UnixStream::connect(arg(1)?)?;
            // The server may have closed already (a refused peer): then nothing comes back.
            let _ = s.write_all(&[1]);
            writeln!(out, "bytes {}", read_all(&mut s))?;
        }
        "probe-agent" => {
            let mut s = UnixStream::connect(arg(1)?)?;
            let id = hex::decode(arg(2)?)?;
            let _ = s.write_all(&[&[2u8][..], &id].concat());
            writeln!(out, "bytes {}", read_all(&mut s))?;
        }
        "agent" => match secureclaw_vault::agent::serve()? {},
        "open-agent" => match Vault::open_for_reading_with_agent(&PathBuf::from(arg(1)?))? {
            Some(v) => writeln!(out, "opened {}", v.keys("runs")?.len())?,
            None => writeln!(out, "none")?,
        },
        "time-read" => {
            let dir = PathBuf::from(arg(1)?);
            let n: usize = arg(2)?.parse()?;
            let pass = pass()?;
            let (mut opens, mut verifies, mut entries) = (Vec::new(), Vec::new(), 0);
            for _ in 0..n.max(1) {
                let t = std::time::Instant::now();
                let v = Vault::open_read_only(&dir, &pass)?;
                opens.push(t.elapsed());
                let t = std::time::Instant::now();
                entries = v.ledger().verify()?.entries;
                verifies.push(t.elapsed());
            }
            opens.sort();
            verifies.sort();
            writeln!(
                out,
                "entries {entries} open_median_ms {:.2} verify_median_ms {:.2}",
                opens[opens.len() / 2].as_secs_f64() * 1e3,
                verifies[verifies.len() / 2].as_secs_f64() * 1e3
            )?;
        }
        other => return Err(format!("unknown mode {other}").into()),
    }
    Ok(())
}

fn pass() -> Result<zeroize::Zeroizing<String>, Box<dyn std::error::Error>> {
    Ok(PassphraseSource::auto().resolve()?)
}

/// Everything the peer sends until it closes; a reset counts as the end.
fn read_all(s: &mut UnixStream) -> usize {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.len()
}
