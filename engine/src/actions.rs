//! Engine-side actions: `read`, `write`, `patch` (confined to the workspace) and `http`
//! (allowlisted host, timeouts, response size cap, no cross-host redirects).

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::model::HttpAction;
use crate::workspace::{self, Confinement, PathError};

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is {size} bytes, over the {limit}-byte limit")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("patch does not apply to `{path}`: {message}")]
    Patch { path: String, message: String },
    #[error("host `{host}` is not in this step's network allowlist ({allowed})")]
    HostNotAllowed { host: String, allowed: String },
    #[error("HTTP request failed: {0}")]
    Http(String),
    #[error("HTTP {status} from {url}")]
    Status {
        status: u16,
        url: String,
        body: String,
    },
    #[error("response from {url} exceeds {limit} bytes")]
    ResponseTooLarge { url: String, limit: u64 },
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
}

fn io(path: &str) -> impl FnOnce(std::io::Error) -> ActionError + '_ {
    move |source| ActionError::Io {
        path: path.to_string(),
        source,
    }
}

pub fn read_file(jail: &Confinement, rel: &str, limit: u64) -> Result<String, ActionError> {
    use std::io::Read as _;
    let path = workspace::resolve_read(jail, rel)?;
    // Open exactly the checked location: a step running beside this read cannot swap a
    // component for a symlink between the check and the open.
    let inside = path.strip_prefix(jail.root()).unwrap_or(Path::new("."));
    let inside = if inside.as_os_str().is_empty() {
        Path::new(".")
    } else {
        inside
    };
    let root_fd = std::fs::File::open(jail.root()).map_err(io(rel))?;
    let file = match rustix::fs::openat2(
        &root_fd,
        inside,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        rustix::fs::ResolveFlags::BENEATH
            | rustix::fs::ResolveFlags::NO_SYMLINKS
            | rustix::fs::ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => std::fs::File::from(fd),
        // Kernels before 5.6: the checked path, refusing a final symlink at least.
        Err(rustix::io::Errno::NOSYS) => {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
                .map_err(io(rel))?
        }
        Err(e) => return Err(io(rel)(e.into())),
    };
    let meta = file.metadata().map_err(io(rel))?;
    if meta.len() > limit {
        return Err(ActionError::TooLarge {
            path: rel.into(),
            size: meta.len(),
            limit,
        });
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io(rel))?;
    if bytes.len() as u64 > limit {
        return Err(ActionError::TooLarge {
            path: rel.into(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Paths in the workspace matching `pattern`, sorted; `.git` and the state dir excluded.
pub fn glob(jail: &Confinement, pattern: &str) -> Result<Vec<String>, ActionError> {
    let root = jail.root();
    let skip = jail.state_dir();
    let matcher = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| ActionError::Invalid {
            what: "glob",
            message: e.to_string(),
        })?
        .compile_matcher();
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(io(pattern))?;
        for entry in rd.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            if rel.as_os_str() == ".git"
                || rel.as_os_str() == workspace::STATE_DIR_NAME
                || skip.is_some_and(|s| path == s)
            {
                continue;
            }
            let ft = entry.file_type().map_err(io(pattern))?;
            if ft.is_dir() {
                stack.push(path.clone());
            }
            if matcher.is_match(rel) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn write_file(
    jail: &Confinement,
    rel: &str,
    content: &str,
    append: bool,
    mode: Option<&str>,
) -> Result<(), ActionError> {
    let root = jail.root();
    let path = workspace::resolve(jail, rel)?;
    // Who must own what we create: the previous file's owner, or the workspace's.
    let owner = workspace::owner_of(&path).or_else(|| workspace::owner_of(root));
    let mut created_dirs = Vec::new();
    if let Some(parent) = path.parent() {
        created_dirs = parent
            .ancestors()
            .take_while(|d| d.starts_with(root) && !d.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(parent).map_err(io(rel))?;
        // Re-check after creating directories: a racing symlink must not redirect the write.
        workspace::resolve(jail, rel)?;
    }
    let mode = mode
        .map(|m| {
            u32::from_str_radix(m, 8).map_err(|e| ActionError::Invalid {
                what: "mode",
                message: e.to_string(),
            })
        })
        .transpose()?;
    if append {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(rel))?;
        f.write_all(content.as_bytes()).map_err(io(rel))?;
    } else {
        // Write beside and rename, so a crash never leaves a half-written file.
        let tmp = path.with_file_name(format!(
            ".{}.secureclaw-tmp",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        std::fs::write(&tmp, content).map_err(io(rel))?;
        if mode.is_none()
            && let Ok(meta) = std::fs::metadata(&path)
        {
            std::fs::set_permissions(&tmp, meta.permissions()).map_err(io(rel))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(rel))?;
    }
    if let Some(m) = mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).map_err(io(rel))?;
    }
    if let Some(owner) = owner {
        for p in created_dirs.iter().chain(std::iter::once(&path)) {
            workspace::give_to(owner, p);
        }
    }
    Ok(())
}

pub fn patch_file(jail: &Confinement, rel: &str, diff: &str) -> Result<(), ActionError> {
    let path = workspace::resolve(jail, rel)?;
    let original = std::fs::read_to_string(&path).map_err(io(rel))?;
    let patch = diffy::Patch::from_str(diff).map_err(|e| ActionError::Patch {
        path: rel.into(),
        message: e.to_string(),
    })?;
    let patched = diffy::apply(&original, &patch).map_err(|e| ActionError::Patch {
        path: rel.into(),
        message: e.to_string(),
    })?;
    write_file(jail, rel, &patched, false, None)
}

pub struct HttpResult {
    pub status: u16,
    pub body: String,
}

/// An `http` action after templating.
pub struct HttpCall<'a> {
    pub action: &'a HttpAction,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: Option<String>,
    pub json: Option<Value>,
    /// The step's `network` allowlist.
    pub allowed: &'a [String],
    pub timeout: Duration,
    pub limit: u64,
}

/// Perform an `http` action.
pub async fn http(call: HttpCall<'_>) -> Result<HttpResult, ActionError> {
    let HttpCall {
        action,
        url,
        headers,
        body,
        json,
        allowed,
        timeout,
        limit,
    } = call;
    let parsed = reqwest::Url::parse(url).map_err(|e| ActionError::Invalid {
        what: "URL",
        message: e.to_string(),
    })?;
    check_host(&parsed, allowed)?;
    let allowed_owned = allowed.to_vec();
    let pins =
        secureclaw_egress::EgressConfig::pinned_from_env().map_err(|e| ActionError::Invalid {
            what: "egress pin",
            message: e.to_string(),
        })?;
    let client = reqwest::Client::builder()
        // Names are resolved by the same rules as the egress proxy: private, loopback,
        // link-local and metadata addresses are refused (SSRF), unless the operator pinned
        // the name; the address checked is the one connected to.
        .dns_resolver(std::sync::Arc::new(CheckedResolver { pins }))
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        // A redirect must not carry the request to a host nobody approved.
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if check_host(attempt.url(), &allowed_owned).is_err() {
                attempt.error("redirect to a host outside the allowlist")
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(|e| ActionError::Http(e.to_string()))?;
    let method = reqwest::Method::from_bytes(action.method.as_str().as_bytes())
        .map_err(|e| ActionError::Http(e.to_string()))?;
    let mut req = client.request(method, parsed.clone());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    if let Some(j) = json {
        req = req.json(&j);
    } else if let Some(b) = body {
        req = req.body(b);
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| ActionError::Http(without_url(&e)))?;
    let status = resp.status().as_u16();
    let mut bytes = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ActionError::Http(without_url(&e)))?
    {
        if bytes.len() as u64 + chunk.len() as u64 > limit {
            return Err(ActionError::ResponseTooLarge {
                url: url.into(),
                limit,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    let body = String::from_utf8_lossy(&bytes).into_owned();
    let ok = if action.expect.is_empty() {
        (200..300).contains(&status)
    } else {
        action.expect.contains(&status)
    };
    if !ok {
        return Err(ActionError::Status {
            status,
            url: url.into(),
            body,
        });
    }
    Ok(HttpResult { status, body })
}

/// The error and its causes (`error sending request: … tcp connect error: Connection refused`):
/// reqwest's own message names only the stage that failed, the causes say why. A cause whose
/// text the message already holds is not repeated.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    // URLs may carry tokens in their query; the message names the failure, not the URL.
    if let Some(u) = e.url() {
        s = s
            .replace(&format!(" for url ({u})"), "")
            .replace(u.as_str(), "<url>");
    }
    s
}

/// reqwest's resolver for `http` steps: operator pins first, then the system resolver with
/// every answer checked against the egress proxy's forbidden address classes.
struct CheckedResolver {
    pins: secureclaw_egress::Pins,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let pinned: Option<Vec<std::net::SocketAddr>> = self.pins.get(&host).map(|pins| {
            pins.iter()
                .map(|p| std::net::SocketAddr::new(p.addr, p.port.unwrap_or(0)))
                .collect()
        });
        Box::pin(async move {
            if let Some(addrs) = pinned {
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("`{host}` has no address").into());
            }
            for a in &addrs {
                if let Some(class) = secureclaw_egress::address_forbidden(a.ip()) {
                    return Err(format!(
                        "`{host}` resolves to {} ({class}); refused: http steps reach public addresses only",
                        a.ip()
                    )
                    .into());
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `url`'s host and port are on the `network` list, by the egress proxy's rules: a name
/// allows ports 80 and 443, `name:port` that port only, `*.name` the subdomains of `name`.
pub fn url_allowed(allowed: &[String], url: &reqwest::Url) -> bool {
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    secureclaw_egress::Allowlist::parse(allowed).is_ok_and(|list| list.check(host, port).is_ok())
}

fn check_host(url: &reqwest::Url, allowed: &[String]) -> Result<(), ActionError> {
    // The URL parser normalises every IPv4 spelling (`2130706433`, `0x7f.1`) to dotted form
    // and brackets IPv6, so this catches them all.
    let raw = url.host_str().unwrap_or_default();
    if raw.is_empty() || raw.starts_with('[') || raw.parse::<std::net::IpAddr>().is_ok() {
        return Err(ActionError::HostNotAllowed {
            host: url.host_str().unwrap_or_default().into(),
            allowed: format!(
                "{} (IP literals are never allowed; name the host)",
                allowed.join(", ")
            ),
        });
    }
    let host = url.host_str().unwrap_or_default();
    let with_port = url.port_or_known_default().map(|p| format!("{host}:{p}"));
    if url_allowed(allowed, url) {
        Ok(())
    } else {
        Err(ActionError::HostNotAllowed {
            host: with_port.unwrap_or_else(|| host.into()),
            allowed: allowed.join(", "),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use reqwest::dns::Resolve as _;

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_unless_pinned() {
        // `localhost` comes from /etc/hosts: no DNS traffic leaves the machine.
        let open = CheckedResolver {
            pins: Default::default(),
        };
        let err = open
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("refused"), "{err}");
        let pinned = CheckedResolver {
            pins: secureclaw_egress::EgressConfig::parse_pins("localhost=127.0.0.1").unwrap(),
        };
        let addrs: Vec<_> = pinned
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs[0].ip().to_string(), "127.0.0.1");
    }

    #[test]
    fn file_actions_never_touch_the_state_dir() {
        let ws = tempfile::tempdir().unwrap();
        let state = ws.path().join(".secureclaw");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("vault.header.json"), "{\"format\":1}").unwrap();
        std::fs::write(ws.path().join("ok.txt"), "fine").unwrap();
        std::os::unix::fs::symlink(".secureclaw", ws.path().join("st")).unwrap();
        std::os::unix::fs::symlink("ok.txt", ws.path().join("alias")).unwrap();
        let jail = Confinement::new(ws.path(), Some(&state)).unwrap();
        for rel in [
            ".secureclaw/vault.header.json",
            "st/vault.header.json",
            "./st/./vault.header.json",
        ] {
            assert!(read_file(&jail, rel, 1024).is_err(), "{rel}");
            assert!(write_file(&jail, rel, "{}", false, None).is_err(), "{rel}");
            assert!(write_file(&jail, rel, "{}", true, None).is_err(), "{rel}");
            assert!(
                patch_file(
                    &jail,
                    rel,
                    "--- a\n+++ b\n@@ -1 +1 @@\n-{\"format\":1}\n+{}\n"
                )
                .is_err(),
                "{rel}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(state.join("vault.header.json")).unwrap(),
            "{\"format\":1}"
        );
        assert_eq!(read_file(&jail, "alias", 1024).unwrap(), "fine");
        assert!(
            glob(&jail, "**")
                .unwrap()
                .iter()
                .all(|p| !p.starts_with(".secureclaw"))
        );
        assert!(matches!(
            read_file(&jail, "ok.txt", 2),
            Err(ActionError::TooLarge { .. })
        ));
    }

    #[test]
    fn ip_literal_urls_are_refused_in_every_spelling() {
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data/",
        ] {
            let parsed = reqwest::Url::parse(url).unwrap();
            let err = check_host(&parsed, &["example.com".into()]).unwrap_err();
            assert!(matches!(err, ActionError::HostNotAllowed { .. }), "{url}");
        }
        let ok = reqwest::Url::parse("https://example.com/x").unwrap();
        assert!(check_host(&ok, &["example.com".into()]).is_ok());
    }

    #[test]
    fn http_steps_and_the_proxy_read_the_allowlist_alike() {
        let list: Vec<String> = vec![
            "api.example.com".into(),
            "*.cdn.example.com".into(),
            "hooks.example.com:8443".into(),
        ];
        let allowed = |u: &str| url_allowed(&list, &reqwest::Url::parse(u).unwrap());
        assert!(allowed("https://api.example.com/v1"));
        assert!(allowed("http://api.example.com/v1"));
        assert!(
            !allowed("https://api.example.com:8443/"),
            "a bare name allows 80 and 443 only"
        );
        assert!(allowed("https://hooks.example.com:8443/x"));
        assert!(!allowed("https://hooks.example.com/x"));
        assert!(allowed("https://img.cdn.example.com/a.png"));
        assert!(
            !allowed("https://cdn.example.com/"),
            "a wildcard covers subdomains only"
        );
        assert!(!allowed("https://api.example.com.evil.test/"));
        assert!(!allowed("https://evil.test/?api.example.com"));
    }
}
