//! `secureclaw sandbox build-image`: the sandbox image, built with no registry.
//!
//! The build context is a root filesystem assembled from this machine's own files: Debian's
//! statically linked busybox (package `busybox-static`) for a shell and the usual tools, plus,
//! on request, host programs together with their ELF closure (the libraries and loader `ldd`
//! names). `sandbox/docker/Dockerfile.offline` turns that into `FROM scratch` + one `COPY`.
//! Users with a registry can use `docker/Dockerfile.sandbox` (Alpine) instead; the hardening
//! is applied per container and does not depend on the image.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures_util::StreamExt;

use super::{docker_error, unavailable};
use crate::SandboxError;

/// The Dockerfile of the offline image (checked in, reviewed like any other file).
pub const DOCKERFILE_OFFLINE: &str = include_str!("../../docker/Dockerfile.offline");

/// The variable naming the image a step gets when its workflow names none.
pub const BASE_IMAGE_VAR: &str = "DOCKER_BASE_IMAGE";
/// Its default: what `build-image` tags besides the versioned tag.
pub const LATEST_IMAGE: &str = "secureclaw-sandbox:latest";

/// The image a step gets when its workflow names none: `DOCKER_BASE_IMAGE`, else
/// `secureclaw-sandbox:latest`.
pub fn default_image() -> String {
    std::env::var(BASE_IMAGE_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| LATEST_IMAGE.to_string())
}

/// The tag `build-image` gives this version's image (and `latest` besides).
pub fn versioned_image() -> String {
    format!("secureclaw-sandbox:{}", env!("CARGO_PKG_VERSION"))
}

/// What goes into the image.
#[derive(Debug, Clone)]
pub struct ImageRecipe {
    pub tag: String,
    /// More tags for the same image (`build-image` adds `secureclaw-sandbox:latest`).
    pub also_tag: Vec<String>,
    /// A statically linked busybox; its applets become `/bin/sh`, `/bin/ls`, ...
    pub busybox: PathBuf,
    /// Host programs copied in at their own path, with their shared libraries; a directory
    /// is copied whole (a language's module tree).
    pub include: Vec<PathBuf>,
}

impl ImageRecipe {
    /// The default recipe: Debian's busybox-static at `/bin/busybox`.
    pub fn new(tag: String) -> Self {
        ImageRecipe {
            tag,
            also_tag: Vec::new(),
            busybox: PathBuf::from("/bin/busybox"),
            include: Vec::new(),
        }
    }
}

/// Build the image and return its id. `progress` receives the daemon's build output lines.
pub async fn build_image(
    docker: &Docker,
    recipe: &ImageRecipe,
    mut progress: impl FnMut(&str),
) -> Result<String, SandboxError> {
    let context = build_context(recipe)?;
    let options = BuildImageOptionsBuilder::default()
        .t(&recipe.tag)
        .rm(true)
        .forcerm(true)
        .networkmode("none")
        .build();
    let mut stream = docker.build_image(
        options,
        None,
        Some(bollard::body_full(bytes::Bytes::from(context))),
    );
    let mut id = None;
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| docker_error("build the sandbox image", e))?;
        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
            return Err(unavailable(format!("image build failed: {detail}")));
        }
        if let Some(line) = info.stream {
            let line = line.trim_end();
            if !line.is_empty() {
                progress(line);
            }
        }
        if let Some(aux) = info.aux.and_then(|a| a.id) {
            id = Some(aux);
        }
    }
    let inspected = docker
        .inspect_image(&recipe.tag)
        .await
        .map_err(|e| docker_error("inspect the built image", e))?;
    for extra in &recipe.also_tag {
        let (repo, tag) = extra.rsplit_once(':').unwrap_or((extra.as_str(), "latest"));
        docker
            .tag_image(
                &recipe.tag,
                Some(
                    bollard::query_parameters::TagImageOptionsBuilder::default()
                        .repo(repo)
                        .tag(tag)
                        .build(),
                ),
            )
            .await
            .map_err(|e| docker_error(&format!("tag the image as {extra}"), e))?;
    }
    Ok(inspected.id.or(id).unwrap_or_else(|| recipe.tag.clone()))
}

/// The tar the daemon builds from: `Dockerfile` and `rootfs/`.
pub fn build_context(recipe: &ImageRecipe) -> Result<Vec<u8>, SandboxError> {
    let busybox = std::fs::read(&recipe.busybox).map_err(|e| {
        unavailable(format!(
            "cannot read busybox at {}: {e} (install Debian's busybox-static: apt-get install busybox-static)",
            recipe.busybox.display()
        ))
    })?;
    if !is_static_elf(&busybox) {
        return Err(unavailable(format!(
            "{} is not a statically linked program; the image has no libc of its own (install busybox-static)",
            recipe.busybox.display()
        )));
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = BTreeSet::new();
    append_file(&mut tar, "Dockerfile", DOCKERFILE_OFFLINE.as_bytes(), 0o644)?;
    for dir in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "workspace"] {
        append_dir(&mut tar, &mut dirs, dir, 0o755)?;
    }
    append_dir(&mut tar, &mut dirs, "tmp", 0o1777)?;
    append_file(&mut tar, "rootfs/bin/busybox", &busybox, 0o755)?;
    // Included host programs win over busybox applets of the same name (`su`, `mount`...).
    let mut included = Vec::new();
    for program in &recipe.include {
        if program.is_dir() {
            included.extend(files_under(program)?);
        } else {
            included.extend(elf_closure(program)?);
        }
    }
    let included_names: BTreeSet<String> = included
        .iter()
        .map(|f| f.to_string_lossy().trim_start_matches('/').to_string())
        .collect();
    for applet in busybox_applets(&recipe.busybox)? {
        let applet = applet.trim_start_matches('/');
        if applet.is_empty()
            || applet == "bin/busybox"
            || applet.contains("..")
            || included_names.contains(applet)
        {
            continue;
        }
        if let Some(parent) = Path::new(applet).parent() {
            append_dir(&mut tar, &mut dirs, &parent.to_string_lossy(), 0o755)?;
        }
        append_symlink(&mut tar, &format!("rootfs/{applet}"), "/bin/busybox")?;
    }
    append_file(
        &mut tar,
        "rootfs/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    append_file(
        &mut tar,
        "rootfs/etc/group",
        b"root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n",
        0o644,
    )?;
    let mut seen = BTreeSet::new();
    for file in included {
        if !seen.insert(file.clone()) {
            continue;
        }
        let data = std::fs::read(&file)
            .map_err(|e| unavailable(format!("cannot read {}: {e}", file.display())))?;
        let mode = file_mode(&file)?;
        let inside = file.to_string_lossy().trim_start_matches('/').to_string();
        if let Some(parent) = Path::new(&inside).parent() {
            append_dir(&mut tar, &mut dirs, &parent.to_string_lossy(), 0o755)?;
        }
        append_file(&mut tar, &format!("rootfs/{inside}"), &data, mode)?;
    }
    tar.into_inner().map_err(SandboxError::Io)
}

/// An ELF file without a PT_INTERP program header names no dynamic loader: it is static.
fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?).into())
    };
    let u64_at = |at: usize| -> Option<usize> {
        usize::try_from(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?)).ok()
    };
    // 64-bit little-endian ELF only (x86_64, aarch64, riscv64: the targets we build for).
    if !bytes.starts_with(b"\x7fELF") || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(entsize), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..count).all(|i| {
        let at = phoff + i * entsize;
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .is_some_and(|b| u32::from_le_bytes(b) != PT_INTERP)
    })
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>, SandboxError> {
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| unavailable(format!("cannot run {}: {e}", busybox.display())))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// A program and every shared object it loads, as `ldd` reports them (real paths).
fn elf_closure(program: &Path) -> Result<Vec<PathBuf>, SandboxError> {
    let program = if program.is_absolute() {
        program.to_path_buf()
    } else {
        which(program).ok_or_else(|| {
            unavailable(format!(
                "--include {}: not found on PATH",
                program.display()
            ))
        })?
    };
    let mut files = vec![program.clone()];
    let out = std::process::Command::new("ldd")
        .arg(&program)
        .output()
        .map_err(|e| unavailable(format!("cannot run ldd: {e}")))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(path) = path {
            let path = PathBuf::from(path);
            // Keep the name the loader asks for, with the content of the file it points to.
            files.push(path);
        }
    }
    Ok(files)
}

/// Every file under `dir` (a module tree such as perl's), symlinks followed to their content.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>, SandboxError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn which(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn file_mode(path: &Path) -> Result<u32, SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

fn header(mode: u32, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(0);
    h
}

fn append_file(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<(), SandboxError> {
    let mut h = header(mode, tar::EntryType::Regular, data.len() as u64);
    tar.append_data(&mut h, path, data)?;
    Ok(())
}

fn append_dir(
    tar: &mut tar::Builder<Vec<u8>>,
    seen: &mut BTreeSet<String>,
    dir: &str,
    mode: u32,
) -> Result<(), SandboxError> {
    let mut prefix = String::from("rootfs");
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        prefix.push('/');
        prefix.push_str(part);
        if seen.insert(prefix.clone()) {
            let mode = if prefix == format!("rootfs/{dir}") {
                mode
            } else {
                0o755
            };
            let mut h = header(mode, tar::EntryType::Directory, 0);
            tar.append_data(&mut h, format!("{prefix}/"), std::io::empty())?;
        }
    }
    Ok(())
}

fn append_symlink(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    target: &str,
) -> Result<(), SandboxError> {
    let mut h = header(0o777, tar::EntryType::Symlink, 0);
    tar.append_link(&mut h, path, target)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn entries(context: &[u8]) -> Vec<(String, u32, tar::EntryType)> {
        let mut archive = tar::Archive::new(context);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path()
                        .unwrap()
                        .to_string_lossy()
                        .trim_end_matches('/')
                        .to_string(),
                    e.header().mode().unwrap(),
                    e.header().entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn context_holds_busybox_its_applets_and_the_dockerfile() {
        if !Path::new("/bin/busybox").exists() {
            panic!(
                "busybox-static is required (apt-get install busybox-static; .ci/run installs it)"
            );
        }
        let context = build_context(&ImageRecipe::new("t".into())).unwrap();
        let list = entries(&context);
        let names: Vec<&str> = list.iter().map(|(n, _, _)| n.as_str()).collect();
        assert!(names.contains(&"Dockerfile"));
        assert!(names.contains(&"rootfs/bin/busybox"));
        assert!(names.contains(&"rootfs/bin/sh"), "{names:?}");
        let tmp = list.iter().find(|(n, _, _)| n == "rootfs/tmp").unwrap();
        assert_eq!(tmp.1, 0o1777);
    }

    #[test]
    fn included_programs_bring_their_libraries_and_setuid_bits() {
        let recipe = ImageRecipe {
            include: vec![PathBuf::from("/bin/su")],
            ..ImageRecipe::new("t".into())
        };
        assert!(
            Path::new("/bin/su").exists(),
            "su comes with Debian's util-linux, which .ci/run installs"
        );
        let context = build_context(&recipe).unwrap();
        let list = entries(&context);
        let su = list.iter().find(|(n, _, _)| n == "rootfs/bin/su").unwrap();
        assert_ne!(su.1 & 0o4000, 0, "setuid bit kept");
        assert!(
            list.iter().any(|(n, _, _)| n.contains("libc.so")),
            "libc copied"
        );
    }

    #[test]
    fn a_dynamic_busybox_is_refused() {
        let recipe = ImageRecipe {
            busybox: PathBuf::from("/bin/ls"),
            ..ImageRecipe::new("t".into())
        };
        let err = build_context(&recipe).unwrap_err().to_string();
        assert!(err.contains("statically linked"), "{err}");
    }
}
