//! `secureclaw sandbox check|build-image`: what each backend really enforces on this machine,
//! and the offline build of the Docker sandbox image.
//!
//! `check` does not trust our own configuration: it runs a probe step in every available
//! backend and reports the layers as the backend read them back (the Docker daemon's inspect
//! of the real container, the native helper's report) together with what the kernel says
//! inside the sandbox (`/proc/self/status`: seccomp mode, no_new_privs, effective
//! capabilities, uid).

use std::path::PathBuf;

use anyhow::Context as _;
use console::style;
use secureclaw_engine::tools::sandbox::{ACCEPTED_MARK, BACKENDS, ExecSpec, Layer, by_name};
use secureclaw_engine::tools::sandbox::{
    DockerSandbox, ImageRecipe, LATEST_IMAGE, build_image, versioned_image,
};
use serde_json::json;

use crate::exit;

#[derive(Debug, clap::Subcommand)]
pub enum SandboxCommand {
    /// Which isolation layers each backend really enforces here.
    ///
    /// Runs a probe step in every backend and reports the layers as the backend read them back
    /// (docker: the daemon's inspect of the real container), plus the kernel's own view from
    /// inside the step (seccomp mode, no_new_privs, capabilities, uid). Exits 1 if a backend
    /// named with --backend (default: native) is unavailable or misses a layer.
    Check {
        /// Backends whose failure makes the command fail [default: native].
        #[arg(long = "backend", value_name = "NAME")]
        required: Vec<String>,
        /// One JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Print the docker backend's seccomp profile (Docker's JSON format).
    ///
    /// Generated from the reviewed policy `sandbox/policy/seccomp.toml`: for review, or for
    /// `docker run --security-opt seccomp=FILE` outside secureclaw, together with
    /// `--security-opt no-new-privileges` and `--cap-drop ALL` (the profile denies `capset`, so
    /// runc must install it after dropping capabilities, which it does only with
    /// no-new-privileges).
    ///
    /// With --server: the profile of the container that runs `secureclaw serve` with the native
    /// sandbox inside (docker/seccomp-server.json), generated from the same step policy plus
    /// `sandbox/policy/seccomp-server.toml`.
    SeccompProfile {
        /// The server container's profile instead of the step containers'.
        #[arg(long)]
        server: bool,
    },
    /// Build the docker backend's image offline (no registry).
    ///
    /// The image is Debian's static busybox (and any --include'd host programs with their
    /// libraries) on an empty base, from sandbox/docker/Dockerfile.offline.
    BuildImage {
        /// Image tag [default: secureclaw-sandbox:<version>, also tagged
        /// secureclaw-sandbox:latest, the docker backend's default (DOCKER_BASE_IMAGE)].
        #[arg(long)]
        tag: Option<String>,
        /// A statically linked busybox (Debian: apt-get install busybox-static).
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// A host program to copy into the image with its shared libraries, or a directory to
        /// copy whole (repeatable), e.g. --include perl --include /usr/lib/x86_64-linux-gnu/perl-base.
        #[arg(long, value_name = "PROGRAM")]
        include: Vec<PathBuf>,
    },
}

impl SandboxCommand {
    /// Whether machine-readable output was asked for.
    pub fn json(&self) -> bool {
        matches!(self, SandboxCommand::Check { json: true, .. })
    }
}

pub fn run(cmd: SandboxCommand) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cmd {
        SandboxCommand::Check { required, json } => rt.block_on(check(required, json)),
        SandboxCommand::SeccompProfile { server: true } => {
            let profile = secureclaw_engine::tools::sandbox::server_profile_pretty()?;
            print!("{profile}");
            Ok(exit::OK)
        }
        SandboxCommand::SeccompProfile { server: false } => {
            let profile = secureclaw_engine::tools::sandbox::repository_profile()
                .map_err(anyhow::Error::msg)?;
            let value: serde_json::Value = serde_json::from_str(profile)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(exit::OK)
        }
        SandboxCommand::BuildImage {
            tag,
            busybox,
            include,
        } => rt.block_on(async move {
            let recipe = ImageRecipe {
                also_tag: if tag.is_none() {
                    vec![LATEST_IMAGE.to_string()]
                } else {
                    Vec::new()
                },
                tag: tag.unwrap_or_else(versioned_image),
                busybox,
                include,
            };
            let docker = DockerSandbox::docker().await?;
            eprintln!("building {} (no registry is contacted)", recipe.tag);
            let id = build_image(docker, &recipe, |line| eprintln!("  {line}"))
                .await
                .with_context(|| format!("building {}", recipe.tag))?;
            for tag in std::iter::once(&recipe.tag).chain(&recipe.also_tag) {
                println!("{tag} {id}");
            }
            Ok(exit::OK)
        }),
    }
}

/// One backend's verdict.
struct Report {
    backend: String,
    available: bool,
    problem: Option<String>,
    isolated: bool,
    layers: Vec<Layer>,
    missing: Vec<String>,
}

impl Report {
    /// The missing layers the operator did not accept (SECURECLAW_SANDBOX_ACCEPT_MISSING).
    fn refused(&self) -> Vec<&String> {
        self.missing
            .iter()
            .filter(|m| !m.ends_with(ACCEPTED_MARK))
            .collect()
    }
}

async fn check(required: Vec<String>, as_json: bool) -> anyhow::Result<u8> {
    let required = if required.is_empty() {
        vec![secureclaw_engine::tools::sandbox::DEFAULT_BACKEND.to_string()]
    } else {
        required
    };
    for name in &required {
        if !BACKENDS.contains(&name.as_str()) {
            anyhow::bail!("unknown backend `{name}` (known: {})", BACKENDS.join(", "));
        }
    }
    let workspace = tempfile::tempdir().context("creating the probe workspace")?;
    let mut reports = Vec::new();
    for name in BACKENDS {
        reports.push(probe(name, workspace.path().to_path_buf()).await);
    }
    let failed = reports.iter().any(|r| {
        required.contains(&r.backend) && (!r.available || (r.isolated && !r.refused().is_empty()))
    });
    if as_json {
        let doc: Vec<_> = reports
            .iter()
            .map(|r| {
                json!({
                    "backend": r.backend,
                    "available": r.available,
                    "problem": r.problem,
                    "isolated": r.isolated,
                    "layers": r.layers,
                    "missing": r.missing,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for r in &reports {
            print_report(r);
        }
    }
    Ok(if failed { exit::FAILED } else { exit::OK })
}

async fn probe(name: &str, workspace: PathBuf) -> Report {
    let unavailable = |problem: String| Report {
        backend: name.to_string(),
        available: false,
        problem: Some(problem),
        isolated: false,
        layers: Vec::new(),
        missing: Vec::new(),
    };
    let sandbox = match by_name(name) {
        Ok(s) => s,
        Err(e) => return unavailable(e.to_string()),
    };
    // Under gVisor the probe also reads the kernel it runs on.
    let under_gvisor = name == "gvisor"
        || (name == "docker"
            && std::env::var(secureclaw_engine::tools::sandbox::DOCKER_RUNTIME_VAR)
                .is_ok_and(|r| r.trim() == "runsc"));
    let command = if under_gvisor {
        format!("cat /proc/self/status; echo {KERNEL_MARK}; cat /proc/version")
    } else {
        "cat /proc/self/status".to_string()
    };
    let mut spec = ExecSpec::shell(&command, workspace);
    // Run even with a missing layer, so the report can say which one.
    spec.allow_degraded = true;
    spec.limits.timeout = std::time::Duration::from_secs(30);
    let outcome = sandbox
        .run(&spec, tokio_util::sync::CancellationToken::new())
        .await;
    // Nothing of the probe (a pooled step cgroup, a container) may outlive the command.
    sandbox.flush().await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return unavailable(e.to_string()),
    };
    let mut layers = outcome.enforcement.layers;
    let mut missing = outcome.enforcement.missing;
    if missing.iter().any(|m| m.starts_with("proc:")) {
        // An empty /proc (a container refused a fresh one): the kernel's own view cannot be
        // read from inside; the `proc` line already says so, and the layers above stand.
        layers.push(Layer {
            name: "kernel view".into(),
            active: false,
            detail: "not readable: the step's /proc is empty".into(),
        });
    } else {
        if !outcome.exit.success() {
            missing.push(format!(
                "probe step {}: {}",
                outcome.exit.describe(),
                String::from_utf8_lossy(&outcome.stderr).trim()
            ));
        }
        let stdout = String::from_utf8_lossy(&outcome.stdout).into_owned();
        let (status, kernel) = stdout
            .split_once(KERNEL_MARK)
            .unwrap_or((stdout.as_str(), ""));
        let mut view = kernel_view(status);
        if under_gvisor {
            // gVisor's kernel keeps no_new_privs but shows no line for it in
            // /proc/self/status (the bundle's `user` layer says it is set); its `Seccomp:` line
            // is real: 2 when the filter is in force inside the sandbox.
            view.retain(|l| l.name != "kernel: no_new_privs");
            view.push(gvisor_kernel(kernel));
        }
        if sandbox.isolated() {
            for layer in view {
                if !layer.active {
                    missing.push(format!("{}: {}", layer.name, layer.detail));
                }
                layers.push(layer);
            }
        }
    }
    Report {
        backend: name.to_string(),
        available: true,
        problem: None,
        isolated: sandbox.isolated(),
        layers,
        missing,
    }
}

/// Separates `/proc/self/status` from the kernel's own words in the gVisor probe's output.
const KERNEL_MARK: &str = "--- kernel ---";

/// Whether the probe ran on gVisor's kernel, not the host's: the `/proc/version` it read is
/// gVisor's, not the host's. (`dmesg` would show gVisor's banner, but the seccomp policy refuses
/// `syslog` to every step.)
fn gvisor_kernel(seen: &str) -> Layer {
    let host = std::fs::read_to_string("/proc/version").unwrap_or_default();
    let version = seen.trim().lines().next().unwrap_or_default().trim();
    Layer {
        name: "kernel: gVisor".into(),
        active: !version.is_empty() && version != host.trim(),
        detail: format!(
            "/proc/version inside: {version} (the host's: {})",
            host.trim()
        ),
    }
}

/// The kernel's own account of the probe process, from `/proc/self/status` inside the sandbox.
fn kernel_view(status: &str) -> Vec<Layer> {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let seccomp = field("Seccomp:");
    let nnp = field("NoNewPrivs:");
    let cap_eff = field("CapEff:");
    let uid = field("Uid:");
    let real_uid = uid.split_whitespace().next().unwrap_or("").to_string();
    vec![
        Layer {
            name: "kernel: seccomp".into(),
            active: seccomp == "2",
            detail: format!("Seccomp: {seccomp} (2 = filter)"),
        },
        Layer {
            name: "kernel: no_new_privs".into(),
            active: nnp == "1",
            detail: format!("NoNewPrivs: {nnp}"),
        },
        Layer {
            name: "kernel: capabilities".into(),
            active: !cap_eff.is_empty() && cap_eff.chars().all(|c| c == '0'),
            detail: format!("CapEff: {cap_eff}"),
        },
        Layer {
            name: "kernel: uid".into(),
            active: !real_uid.is_empty() && real_uid != "0",
            detail: format!("Uid: {uid}"),
        },
    ]
}

fn print_report(r: &Report) {
    let head = if !r.available {
        style("unavailable").red().to_string()
    } else if !r.isolated {
        style("available, NOT isolated").yellow().to_string()
    } else if r.missing.is_empty() {
        style("available, all layers in force").green().to_string()
    } else if r.refused().is_empty() {
        style("available, missing layers accepted by the operator")
            .yellow()
            .to_string()
    } else {
        style("available, DEGRADED").red().to_string()
    };
    println!("{}: {head}", style(&r.backend).bold());
    if let Some(p) = &r.problem {
        println!("    {p}");
    }
    let mut layers = crate::output::table(["", "LAYER", "DETAIL"]);
    for l in &r.layers {
        let mark = if l.active {
            comfy_table::Cell::new("✓").fg(comfy_table::Color::Green)
        } else {
            comfy_table::Cell::new("✗").fg(comfy_table::Color::Red)
        };
        layers.add_row(vec![
            mark,
            comfy_table::Cell::new(&l.name),
            comfy_table::Cell::new(&l.detail).add_attribute(comfy_table::Attribute::Dim),
        ]);
    }
    if !r.layers.is_empty() {
        crate::output::write_table(layers, "    ", &mut std::io::stdout().lock());
    }
    for m in &r.missing {
        if m.ends_with(ACCEPTED_MARK) {
            println!("    {} {m}", style("accepted:").yellow());
        } else {
            println!("    {} {m}", style("missing:").red());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn kernel_view_flags_root_and_capabilities() {
        let confined = "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n";
        assert!(kernel_view(confined).iter().all(|l| l.active));
        let open = "Uid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\nNoNewPrivs:\t0\nSeccomp:\t0\n";
        assert!(kernel_view(open).iter().all(|l| !l.active));
    }
}
