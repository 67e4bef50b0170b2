//! Serving HTTP with a bounded graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `app` on `listener` until `shutdown` fires, then stops accepting and waits up to
/// `grace` for open requests and upgraded connections to finish before dropping them.
///
/// Handlers can read the peer address with `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(addr = %addr, "http server listening");
    let token = shutdown.clone();
    // Replies and pushes are small writes: without TCP_NODELAY, Nagle's algorithm holds one
    // back until the peer's delayed ACK (~40 ms on Linux) whenever an earlier one is unacked.
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::trace!(error = %e, "TCP_NODELAY not set");
        }
    });
    let mut server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(token.cancelled_owned())
        .await
    });
    tokio::select! {
        result = &mut server => return result.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(grace, &mut server).await {
        Ok(result) => result.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        Err(_) => {
            tracing::warn!(grace = ?grace, "grace period elapsed, dropping open connections");
            server.abort();
            Ok(())
        }
    }
}
