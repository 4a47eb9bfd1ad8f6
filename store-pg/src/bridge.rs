//! The engine's storage trait is synchronous (the redb store it was made for needs no runtime)
//! and is called from async code and plain threads alike. The database driver is async: its
//! futures run on a small runtime of their own, and a synchronous caller waits on a channel,
//! which is safe from any thread, inside a runtime or not (`block_on` would panic there).

use std::future::Future;

use crate::error::PgError;

pub(crate) struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl Bridge {
    pub(crate) fn start() -> Result<Self, PgError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("secureclaw-pg")
            .enable_all()
            .build()
            .map_err(PgError::Runtime)?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
        })
    }

    /// Runs `fut` on the store's runtime and waits for its output.
    pub(crate) fn wait<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, PgError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| PgError::RuntimeGone)
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime: let it wind down in
        // the background instead.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
