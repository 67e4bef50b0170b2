//! One shutdown path: SIGTERM or Ctrl-C cancels a token that every task watches.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT. A second signal exits at once with 130.
///
/// The handlers are registered before this returns (not inside the spawned task), so a signal
/// that arrives right after start-up, before the task first runs, still drains instead of
/// killing the process with the default action. Call it inside the runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    let mut signals = Signals::register();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("shutdown signal received, draining");
        trigger.cancel();
        signals.next().await;
        tracing::warn!("second shutdown signal, exiting now");
        std::process::exit(130);
    });
    token
}

/// SIGTERM and SIGINT, registered once.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let register = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(err) => {
                    tracing::warn!(error = %err, signal = name, "cannot listen for signal");
                    None
                }
            };
            Self {
                term: register(SignalKind::terminate(), "SIGTERM"),
                int: register(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.term) => {}
                () = recv(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
