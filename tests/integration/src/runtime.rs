//! A long-lived tokio runtime on a dedicated thread inside a namespace, for
//! servers (mock DNS, mock HTTP, probe listeners) that outlive one call.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::netns::Netns;

/// A current-thread tokio runtime driven by a thread inside a namespace.
/// Every task spawned on it opens its sockets in that namespace. Dropping
/// it stops the runtime (cancelling its tasks, closing their sockets) and
/// joins the thread.
#[derive(Debug)]
pub struct NsRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts the runtime thread inside `ns`.
    pub fn start(ns: &Netns, label: &str) -> NsRuntime {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let name = ns.name().to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("{label}-{name}"))
            .spawn(move || {
                if let Err(e) = crate::netns::enter(&name) {
                    let _ = handle_tx.send(Err(e));
                    return;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build tokio runtime");
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .expect("spawn runtime thread");
        let handle = handle_rx
            .recv()
            .expect("runtime thread died")
            .unwrap_or_else(|e| panic!("cannot start runtime in namespace: {e:#}"));
        NsRuntime {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Spawns a task on the namespace's runtime.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(fut);
    }

    /// Runs `fut` on the namespace's runtime and waits for its output
    /// (from a thread that is not itself a runtime thread).
    pub fn block_on<T, F>(&self, fut: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().expect("namespace runtime stopped")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
