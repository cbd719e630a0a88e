//! A TCP forwarder on the machine's side of a namespace's link, so that Chronicle inside
//! the namespace reaches the machine's PostgreSQL (which listens on loopback only)
//! through a path the suite can cut.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct Forwarder {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Listens on `host` (a free port) and forwards every connection to `target`.
    pub async fn start(host: std::net::Ipv4Addr, target: String) -> Self {
        let listener = TcpListener::bind((host, 0))
            .await
            .unwrap_or_else(|e| panic!("listen on {host}: {e}"));
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop, so aborting it ends every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self { addr, task }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
