//! A TCP fault proxy for tests (issue 6): sits between `mbx-host` processes and
//! PostgreSQL and, on command, passes traffic through, delays it, resets every connection
//! or blackholes it (holds every byte, answers nothing, like a partitioned network, until
//! it heals). Test support only: never shipped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways as it comes.
    Pass,
    /// Forward each chunk after this delay.
    Delay(Duration),
    /// Reset (RST) every open connection and every new one.
    Reset,
    /// Accept and hold: forward nothing, close nothing, until the mode changes.
    Blackhole,
}

/// A running proxy on a loopback port; stops (and drops its connections) with the test's
/// runtime.
pub struct FaultProxy {
    port: u16,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Starts a proxy in [`Mode::Pass`] forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (mode, watch) = watch::channel(Mode::Pass);
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(client, upstream, watch.clone()));
            }
        });
        FaultProxy {
            port,
            mode,
            accepted,
        }
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Switches every connection, open and new, to `mode`.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Connections accepted so far (each reconnect of a client counts).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// `url` (a postgres URL) with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let user = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{user}127.0.0.1:{}{path}", self.port)
    }
}

/// Closes `stream` with a TCP reset instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// One client connection: wait while blackholed, connect upstream, then pump bytes both
/// ways under the current mode.
async fn serve(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    loop {
        let m = *mode.borrow_and_update();
        match m {
            Mode::Reset => return reset(client),
            Mode::Blackhole => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            Mode::Pass | Mode::Delay(_) => break,
        }
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    pump(client, server, mode).await;
}

async fn pump(mut client: TcpStream, mut server: TcpStream, mut mode: watch::Receiver<Mode>) {
    let (mut up, mut down) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let m = *mode.borrow_and_update();
        let delay = match m {
            Mode::Reset => {
                reset(client);
                reset(server);
                return;
            }
            Mode::Blackhole => {
                // hold everything: read nothing, so nothing moves either way
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Pass => None,
            Mode::Delay(d) => Some(d),
        };
        tokio::select! {
            r = client.read(&mut up) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if let Some(d) = delay { tokio::time::sleep(d).await; }
                if server.write_all(&up[..n]).await.is_err() { return; }
            }
            r = server.read(&mut down) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if let Some(d) = delay { tokio::time::sleep(d).await; }
                if client.write_all(&down[..n]).await.is_err() { return; }
            }
            changed = mode.changed() => {
                if changed.is_err() { return; }
            }
        }
    }
}

/// The shared server's address, for the fault proxy.
pub fn server_addr() -> SocketAddr {
    let url = crate::server_url();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport.parse().expect("DATABASE_URL names host:port")
}
