//! Fixtures shared by the runner's unit tests.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A peer on a loopback port that accepts one connection and then says
/// nothing: it holds the connection open until [`SilentServer::finish`], so
/// a client's only way out is its own timeout.
pub(crate) struct SilentServer {
    addr: SocketAddr,
    done: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl SilentServer {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (done, done_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.expect("accept");
            // Silent until the test is done.
            let _ = done_rx.await;
            drop(conn);
        });
        SilentServer { addr, done, task }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the held connection and checks that the server accepted one
    /// and ended cleanly.
    pub(crate) async fn finish(self) {
        let _ = self.done.send(());
        self.task.await.expect("silent server");
    }
}
