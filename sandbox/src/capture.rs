use std::sync::{Arc, Mutex};

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

/// Output a background reader pushes into and the backend takes when the step is over. It lives
/// outside the reader task, so giving up on a stream (a pipe still held open after the step was
/// ended) keeps every byte read before that: the last lines a step printed before a limit ended
/// it are the ones that explain why.
#[derive(Debug, Default, Clone)]
pub(crate) struct SharedOutput(Arc<Mutex<CappedOutput>>);

impl SharedOutput {
    pub(crate) fn push(&self, bytes: &[u8], cap: usize) {
        self.lock().push(bytes, cap);
    }

    /// Everything pushed so far.
    pub(crate) fn take(&self) -> CappedOutput {
        std::mem::take(&mut *self.lock())
    }

    /// The mutex only ever guards a push of bytes, which cannot leave it half done: a poisoned
    /// lock still holds whole output.
    fn lock(&self) -> std::sync::MutexGuard<'_, CappedOutput> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Wait for a reader task to reach the end of its streams, for at most [`DRAIN_GRACE`]; past
/// that it is stopped and what it read stays in its [`SharedOutput`].
pub(crate) async fn drain(mut reader: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(DRAIN_GRACE, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
}

/// A stream being read in the background into a [`SharedOutput`].
pub(crate) struct BackgroundCapture {
    read: SharedOutput,
    task: tokio::task::JoinHandle<()>,
}

/// Start reading `reader` in the background to its end, keeping at most `cap` bytes: a chatty
/// step cannot grow our memory.
pub(crate) fn capture_in_background<R>(mut reader: R, cap: usize) -> BackgroundCapture
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let read = SharedOutput::default();
    let sink = read.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        // The end of the stream or a read error ends the task: what came before is kept.
        while let Ok(n @ 1..) = reader.read(&mut buf).await {
            sink.push(&buf[..n], cap);
        }
    });
    BackgroundCapture { read, task }
}

/// What a background capture read: everything up to the end of the stream, or up to
/// [`DRAIN_GRACE`] from now if the stream does not end by then.
pub(crate) async fn collect(capture: Option<BackgroundCapture>) -> CappedOutput {
    let Some(BackgroundCapture { read, task }) = capture else {
        return CappedOutput::default();
    };
    drain(task).await;
    read.take()
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn a_stream_held_open_keeps_what_was_read_before_the_grace_ran_out() {
        let (mut writer, reader) = tokio::io::duplex(1024);
        let capture = capture_in_background(reader, 1024);
        writer
            .write_all(b"last words before the limit\n")
            .await
            .unwrap();
        // The writer stays open, as a pipe does when a killed step's descendant still holds it.
        let out = collect(Some(capture)).await;
        assert_eq!(out.kept, b"last words before the limit\n");
        assert_eq!(out.total, 28);
        drop(writer);
    }

    #[tokio::test]
    async fn a_closed_stream_is_read_to_its_end_under_the_cap() {
        let (mut writer, reader) = tokio::io::duplex(64);
        let capture = capture_in_background(reader, 10);
        writer.write_all(&[b'x'; 200]).await.unwrap();
        drop(writer);
        let out = collect(Some(capture)).await;
        assert_eq!(out.kept, [b'x'; 10]);
        assert_eq!(out.total, 200);
    }
}
