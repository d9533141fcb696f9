//! A TCP proxy on loopback that a test can cut and heal: a network path between one process
//! and a server (say one coordinator replica and etcd) that fails while the server itself,
//! and everyone else's path to it, stays up.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Forwards every connection made to [`TcpProxy::addr`] to its target; see the module docs.
/// Dropped, it closes every connection it carries.
pub struct TcpProxy {
    /// Where to connect instead of the target.
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    accept: AbortHandle,
}

/// Whether the path is cut, and the connections carried: one lock, so that no connection
/// slips through a cut made while it is being accepted.
#[derive(Default)]
struct Shared {
    cut: bool,
    carried: Vec<AbortHandle>,
}

impl TcpProxy {
    /// Listens on an ephemeral loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let accept = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let mut shared = shared.lock().expect("proxy lock");
                    if shared.cut {
                        // Cut: accepted and closed at once, as a path that resets.
                        continue;
                    }
                    let carried = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    shared.carried.retain(|c| !c.is_finished());
                    shared.carried.push(carried.abort_handle());
                }
            })
            .abort_handle()
        };
        Self { addr, shared, accept }
    }

    /// Closes every connection carried now and refuses new ones until [`TcpProxy::heal`];
    /// returns how many it closed.
    pub fn cut(&self) -> usize {
        let mut shared = self.shared.lock().expect("proxy lock");
        shared.cut = true;
        let open = shared.carried.iter().filter(|c| !c.is_finished()).count();
        for carried in shared.carried.drain(..) {
            carried.abort();
        }
        open
    }

    /// Carries new connections again.
    pub fn heal(&self) {
        self.shared.lock().expect("proxy lock").cut = false;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = self.cut();
    }
}
