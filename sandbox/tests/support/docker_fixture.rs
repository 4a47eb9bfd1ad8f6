//! The docker backend on this machine's daemon: the default offline image (busybox only,
//! built by the same code as `secureclaw sandbox build-image`), once per test process, under a
//! tag of the test binary's own so concurrent builds of other binaries never replace it.

use secureclaw_sandbox::docker::{DockerSandbox, ImageRecipe, build_image};

pub async fn image(tag: &'static str) -> String {
    static IMAGE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    IMAGE
        .get_or_init(|| async {
            let docker = DockerSandbox::docker().await.unwrap();
            build_image(docker, &ImageRecipe::new(tag.to_string()), |_| {})
                .await
                .unwrap();
            tag.to_string()
        })
        .await
        .clone()
}

/// A workspace owned by the default step user 1000:1000, who must own it to write.
pub fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(1000), Some(1000)).unwrap();
    dir
}
