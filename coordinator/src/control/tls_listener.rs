//! Accepts TCP connections and completes the TLS handshake with the *current* server
//! configuration (certificates reload without a restart), then hands tonic a stream that
//! carries the verified peer's identity as connect info.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use edgecap_common::tasks::Tasks;
use edgecap_tls::PeerIdentity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::enroll::Revoked;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a control connection (request extension in handlers).
#[derive(Clone, Debug)]
pub(crate) struct PeerInfo {
    pub remote: SocketAddr,
    /// The identity in the verified client certificate, or why there is none.
    pub identity: Result<PeerIdentity, String>,
    /// The client certificate's serial (lowercase hex), if it presented one.
    pub serial: Option<String>,
}

impl PeerInfo {
    /// The verified identity, if the client presented a certificate.
    pub fn verified(&self) -> Option<&PeerIdentity> {
        self.identity.as_ref().ok()
    }
}

pub(crate) struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts connections until `tasks` is cancelled; yields handshaken connections. The accept
/// loop and each handshake run as `tasks`.
pub(crate) fn incoming(
    listener: TcpListener,
    config: watch::Receiver<Arc<rustls::ServerConfig>>,
    revoked: Revoked,
    tasks: &Tasks,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    let cancel = tasks.token();
    let handshakes = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config.borrow().clone());
            let tx = tx.clone();
            let revoked = revoked.clone();
            handshakes.spawn(async move {
                let _ = tcp.set_nodelay(true);
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::warn!(%remote, %error, "control connection refused: tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%remote, "control connection refused: tls handshake timed out");
                        return;
                    }
                };
                let leaf = stream.get_ref().1.peer_certificates().and_then(|certs| certs.first());
                let serial = leaf.and_then(|der| edgecap_tls::enroll::serial(der).ok());
                if let Some(serial) = serial.as_ref().filter(|s| revoked.contains(s)) {
                    tracing::warn!(%remote, %serial, "control connection refused: certificate revoked");
                    return;
                }
                let identity = leaf
                    .ok_or_else(|| "no client certificate".to_string())
                    .and_then(|der| edgecap_tls::peer_identity(der).map_err(|e| e.to_string()));
                let _ = tx.send(Ok(TlsConn { stream, info: PeerInfo { remote, identity, serial } })).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
