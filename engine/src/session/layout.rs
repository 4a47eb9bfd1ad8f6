//! Where the state dir may sit relative to a workspace.

use std::path::{Path, PathBuf};

/// A path made absolute and free of symlinks and `..`, also when its tail does not exist yet:
/// the longest existing ancestor is canonicalised and the rest appended.
fn canonical_lenient(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match *part {
                    p if p == ".." => {
                        out.pop();
                    }
                    p if p == "." => {}
                    p => out.push(p),
                }
            }
            return Ok(out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return Ok(absolute),
        }
    }
}

/// Where the state dir may be: the default `WORKSPACE/.secureclaw` (hidden from steps) or
/// outside the workspace. Anywhere else inside it, a step could see or change the vault, and a
/// rollback of the step would treat the vault's own files as the step's changes; a workspace
/// inside the state dir would put the vault itself in the steps' reach.
pub fn check_state_layout(workspace: &Path, state: &Path) -> Result<(), String> {
    let ws = canonical_lenient(workspace)
        .map_err(|e| format!("workspace {}: {e}", workspace.display()))?;
    let st = canonical_lenient(state).map_err(|e| format!("state dir {}: {e}", state.display()))?;
    if st == ws.join(crate::workspace::STATE_DIR_NAME) {
        return Ok(());
    }
    if st == ws {
        return Err(format!(
            "the state dir {} is the workspace itself: steps would reach the vault and a rollback could delete it",
            state.display()
        ));
    }
    if st.starts_with(&ws) {
        return Err(format!(
            "the state dir {} is inside the workspace {} (only the default `{}` is hidden from steps)",
            state.display(),
            workspace.display(),
            crate::workspace::STATE_DIR_NAME
        ));
    }
    if ws.starts_with(&st) {
        return Err(format!(
            "the workspace {} is inside the state dir {}: steps would reach the vault",
            workspace.display(),
            state.display()
        ));
    }
    Ok(())
}
