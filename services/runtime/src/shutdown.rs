//! Shutdown: one [`CancellationToken`] for the whole process. The binary cancels it on
//! SIGTERM (Kubernetes) or Ctrl-C, or when a part stops on its own (a failed projector), and
//! every part waits on a child or clone of it: no futures and watch channels converted into
//! each other.

pub use tokio_util::sync::{CancellationToken, DropGuard};

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight work");
}

/// Cancels `token` on SIGTERM or Ctrl-C (from a task of its own).
pub fn cancel_on_signal(token: &CancellationToken) {
    let token = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = signal() => token.cancel(),
            () = token.cancelled() => {}
        }
    });
}
