//! HTTPS on the API listener, for deployments where the API is not behind a terminating
//! proxy: TLS (rustls) with the configuration current at each connection, so the certificate
//! reloads without a restart, as on the control stream. Handshakes run concurrently (one slow
//! client does not hold up the others), each within a timeout.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edgecap_common::tasks::Tasks;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections, for `axum::serve`.
pub(crate) struct TlsListener {
    connections: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop ended (shutdown): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// Accepts on `tcp` until `tasks` is cancelled; the accept loop and each handshake run as
/// `tasks`.
pub(crate) fn listen(
    tcp: TcpListener,
    config: watch::Receiver<Arc<rustls::ServerConfig>>,
    tasks: &Tasks,
) -> io::Result<TlsListener> {
    let addr = tcp.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let cancel = tasks.token();
    let handshakes = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (stream, remote) = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = tcp.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "API accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config.borrow().clone());
            let tx = tx.clone();
            handshakes.spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, remote)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%remote, %error, "API connection refused: tls handshake failed"),
                    Err(_) => tracing::debug!(%remote, "API connection refused: tls handshake timed out"),
                }
            });
        }
    });
    Ok(TlsListener { connections: rx, addr })
}
