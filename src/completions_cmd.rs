//! `completions` and `man`: shell completion scripts and manual pages, generated from the same
//! clap definition the parser uses, so they can never describe a flag that does not exist.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Command, CommandFactory};
use clap_complete::Shell;

use crate::{Cli, exit};

#[derive(Args)]
#[command(after_help = "Install, for example:\n  \
secureclaw completions bash > ~/.local/share/bash-completion/completions/secureclaw\n  \
secureclaw completions zsh  > \"${fpath[1]}/_secureclaw\"\n  \
secureclaw completions fish > ~/.config/fish/completions/secureclaw.fish\n  \
secureclaw completions powershell >> $PROFILE")]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Args)]
#[command(after_help = "Read it with:  secureclaw man | man -l -\n\
Install every page:  secureclaw man --out ~/.local/share/man/man1")]
pub struct ManArgs {
    /// Write `secureclaw.1` and one `secureclaw-SUBCOMMAND.1` page per subcommand into this
    /// directory instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn completions(args: &CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name, &mut script);
    print_all(&script)
}

/// Writes to stdout; a reader that closed the pipe early (`| head`) is not an error.
fn print_all(bytes: &[u8]) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(exit::OK),
    }
}

pub fn man(args: &ManArgs) -> anyhow::Result<u8> {
    let cmd = Cli::command();
    match &args.out {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            return print_all(&page);
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let written = write_pages(cmd, dir)?;
            eprintln!("wrote {written} manual pages to {}", dir.display());
        }
    }
    Ok(exit::OK)
}

/// The page of `cmd` and, recursively, of each visible subcommand, named as `git` names its
/// pages (`secureclaw-vault-init.1`). Returns how many pages were written.
fn write_pages(cmd: Command, dir: &Path) -> anyhow::Result<usize> {
    let mut written = 0;
    let mut todo = vec![(cmd.get_name().to_string(), cmd)];
    while let Some((name, cmd)) = todo.pop() {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let sub_name = format!("{name}-{}", sub.get_name());
            todo.push((sub_name.clone(), sub.clone().name(sub_name)));
        }
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        written += 1;
    }
    Ok(written)
}
