use tokio::io::{AsyncRead, AsyncReadExt};

/// Output kept up to a cap, plus how much was really written.
#[derive(Debug, Default, Clone)]
pub struct CappedOutput {
    pub kept: Vec<u8>,
    pub total: u64,
}

impl CappedOutput {
    /// Count `bytes` and keep what still fits under `cap`.
    pub fn push(&mut self, bytes: &[u8], cap: usize) {
        self.total += bytes.len() as u64;
        let room = cap.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// How long a backend waits for a step's output after the step ended: a descendant that
/// escaped may hold a pipe open, and the rest is given up on.
pub(crate) const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The output a reader task collected, or nothing if it does not finish within
/// [`DRAIN_GRACE`].
pub(crate) async fn collect(
    task: Option<tokio::task::JoinHandle<std::io::Result<CappedOutput>>>,
) -> CappedOutput {
    let Some(task) = task else {
        return CappedOutput::default();
    };
    match tokio::time::timeout(DRAIN_GRACE, task).await {
        Ok(Ok(Ok(out))) => out,
        _ => CappedOutput::default(),
    }
}

/// Read a stream to its end, keeping at most `cap` bytes: a chatty step cannot grow our memory.
pub async fn read_capped<R: AsyncRead + Unpin>(
    mut reader: R,
    cap: usize,
) -> std::io::Result<CappedOutput> {
    let mut out = CappedOutput::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        out.push(&buf[..n], cap);
    }
}
