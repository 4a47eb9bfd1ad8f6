use tokio::io::{AsyncRead, AsyncReadExt};

/// Output kept up to a cap, plus how much was really written.
#[derive(Debug, Default, Clone)]
pub struct CappedOutput {
    pub kept: Vec<u8>,
    pub total: u64,
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
        out.total += n as u64;
        let room = cap.saturating_sub(out.kept.len());
        out.kept.extend_from_slice(&buf[..n.min(room)]);
    }
}
