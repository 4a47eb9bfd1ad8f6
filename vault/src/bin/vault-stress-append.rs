//! `vault-stress-append STATE_DIR BATCH` with the passphrase in `SECURECLAW_PASSPHRASE`:
//! appends batches of ledger entries forever, printing `committed <last seq>` after each
//! durable commit. Used by the kill -9 crash-safety test.

use std::io::Write;
use std::path::PathBuf;

use secureclaw_vault::{NewEntry, PassphraseSource, Vault, kind};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vault-stress-append: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: vault-stress-append STATE_DIR BATCH")?,
    );
    let batch: usize = args.next().unwrap_or_else(|| "10".into()).parse()?;
    let pass = PassphraseSource::auto().resolve()?;
    let vault = Vault::open(&dir, &pass)?;
    let mut stdout = std::io::stdout().lock();
    for round in 0u64.. {
        let entries = (0..batch)
            .map(|i| {
                NewEntry::new("stress", kind::STEP_FINISHED)
                    .run(format!("run-{round}"))
                    .step(format!("step-{i}"))
                    .result(serde_json::json!({ "ok": true, "round": round }))
            })
            .collect();
        let recs = vault.ledger().append_batch(entries)?;
        if let Some(last) = recs.last() {
            writeln!(stdout, "committed {}", last.entry.seq)?;
            stdout.flush()?;
        }
    }
    Ok(())
}
