//! The connections of the HTTP receive listener (issue 11 item 7): a flood of idle or slow
//! connections must neither take every file descriptor of the process (PostgreSQL
//! connections and received files need them too) nor keep a well-behaved client out.
//!
//! - **header-read timeout** ([`HEADER_READ_TIMEOUT`]): a connection that has not sent a
//!   whole request head within it is closed (slowloris);
//! - **idle keep-alive timeout** ([`KEEP_ALIVE_IDLE`]): a connection with no request in
//!   progress and no bytes either way for that long is closed;
//! - **a cap** on open connections, below the process's file-descriptor limit (whose soft
//!   value is raised to the hard one at start-up, [`raise_fd_limit`]): at the cap, the
//!   connection idle longest (no request in progress, nothing sent for
//!   [`EVICT_IDLE_AFTER`]) is closed to make room; if none is, the new connection is
//!   closed at once. Both are logged (at most every [`LOG_EVERY`]) and counted
//!   (`mbx_http_connections_evicted_total`, `mbx_http_connections_refused_total`); the
//!   open connections are the gauge `mbx_http_connections`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower_service::Service;
use tracing::{info, warn};

/// A request head must arrive whole within this time of the connection's start (or of
/// its first byte, on a reused connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection with no request in progress and no traffic for this long is closed.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);

/// At the cap, a connection idle at least this long may be closed for a new one.
pub const EVICT_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Refusals and evictions are logged at most this often (with their counts).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// How often a connection looks at its idle time.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// Raises the soft limit of open files to the hard limit; returns the soft limit now.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            warn!(error = %e, "cannot raise the open-file limit");
            current_fd_limit()
        }
    }
}

/// The soft limit of open files of this process.
pub fn current_fd_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// The most connections the listener keeps open with `fd_limit` descriptors: a quarter of
/// them (at least 128) stay for PostgreSQL, received files and the admin listener.
pub fn connection_cap(fd_limit: u64) -> usize {
    let reserve = (fd_limit / 4).max(128);
    usize::try_from(fd_limit.saturating_sub(reserve).max(16)).unwrap_or(usize::MAX)
}

/// One open connection, as the listener sees it.
struct Conn {
    /// Milliseconds since the listener's start of its last byte either way.
    last_ms: AtomicU64,
    /// Requests in progress.
    active: AtomicUsize,
    /// Told to close (evicted for a new connection).
    evict: Notify,
}

struct Registry {
    start: Instant,
    cap: usize,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    logged_ms: AtomicU64,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection: below the cap at once; at the cap by evicting the one idle
    /// longest, if it is idle enough; else not (`None`).
    fn admit(&self) -> Option<(u64, Arc<Conn>)> {
        let now = self.now_ms();
        let mut conns = self.lock();
        if conns.len() >= self.cap {
            let idle_enough = u64::try_from(EVICT_IDLE_AFTER.as_millis()).unwrap_or(u64::MAX);
            let oldest = conns
                .iter()
                .filter(|(_, c)| c.active.load(Ordering::Acquire) == 0)
                // idle longest; of those idle since the same moment, the oldest
                .min_by_key(|(id, c)| (c.last_ms.load(Ordering::Acquire), **id))
                .filter(|(_, c)| {
                    now.saturating_sub(c.last_ms.load(Ordering::Acquire)) >= idle_enough
                })
                .map(|(id, _)| *id);
            match oldest.and_then(|id| conns.remove(&id)) {
                Some(c) => {
                    // gone from the count at once: its task closes it right away
                    c.evict.notify_one();
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("mbx_http_connections_evicted_total").increment(1);
                }
                None => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("mbx_http_connections_refused_total").increment(1);
                    self.log_at_cap(now, conns.len());
                    return None;
                }
            }
            self.log_at_cap(now, conns.len());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            last_ms: AtomicU64::new(now),
            active: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        conns.insert(id, conn.clone());
        metrics::gauge!("mbx_http_connections").set(conns.len() as f64);
        Some((id, conn))
    }

    fn log_at_cap(&self, now: u64, open: usize) {
        let last = self.logged_ms.load(Ordering::Relaxed);
        let every = u64::try_from(LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= every)
            && self
                .logged_ms
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                open,
                cap = self.cap,
                evicted_idle = self.evicted.load(Ordering::Relaxed),
                refused = self.refused.load(Ordering::Relaxed),
                "HTTP receive at its connection cap: closing idle connections for new ones, refusing new ones when none is idle"
            );
        }
    }

    fn forget(&self, id: u64) {
        let mut conns = self.lock();
        conns.remove(&id);
        metrics::gauge!("mbx_http_connections").set(conns.len() as f64);
    }
}

/// The TLS acceptor of HTTPS receive from `--tls-cert` and `--tls-key` (PEM): TLS 1.2 and
/// 1.3 with rustls' safe defaults. A file that cannot be read or holds no certificate or
/// key fails the start with one line naming it.
pub(crate) fn tls_acceptor(files: &crate::TlsFiles) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let cert = files.cert.display();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect())
        .with_context(|| format!("--tls-cert {cert}: cannot read a PEM certificate chain"))?;
    if certs.is_empty() {
        anyhow::bail!(
            "--tls-cert {cert}: no certificate in the file (expected PEM, BEGIN CERTIFICATE)"
        );
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).with_context(|| {
        format!(
            "--tls-key {}: cannot read a PEM private key",
            files.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "--tls-cert {cert} and --tls-key {}: the key does not fit the certificate",
                files.key.display()
            )
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until the process ends, under the limits above; over TLS
/// when `tls` is given (the handshake must finish within the header-read timeout).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    cap: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    info!(cap, "HTTP receive connection cap");
    let registry = Arc::new(Registry {
        start: Instant::now(),
        cap,
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        evicted: AtomicU64::new(0),
        logged_ms: AtomicU64::new(0),
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // out of descriptors despite the cap, or a connection reset before accept
                warn!(error = %e, "HTTP receive cannot accept a connection; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((id, conn)) = registry.admit() else {
            drop(stream);
            continue;
        };
        let (registry, app, tls) = (registry.clone(), app.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let tracked = Tracked {
                inner: stream,
                registry: registry.clone(),
                conn: conn.clone(),
            };
            match tls {
                None => serve_connection(tracked, app, &registry, &conn).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tracked)).await
                    {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, app, &registry, &conn).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            registry.forget(id);
        });
    }
}

async fn serve_connection<S>(stream: S, app: Router, registry: &Arc<Registry>, conn: &Arc<Conn>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut app = app.clone();
            let conn = conn.clone();
            conn.active.fetch_add(1, Ordering::AcqRel);
            async move {
                let response = app.call(request.map(axum::body::Body::new)).await;
                conn.active.fetch_sub(1, Ordering::AcqRel);
                response
            }
        })
    };
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(http);
    let idle_ms = u64::try_from(KEEP_ALIVE_IDLE.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::select! {
            _ = http.as_mut() => return,
            // evicted for a new connection, or idle past the keep-alive timeout: both only
            // without a request in progress, so dropping the connection loses nothing
            _ = conn.evict.notified() => return,
            _ = tokio::time::sleep(IDLE_CHECK) => {
                let idle = registry.now_ms().saturating_sub(conn.last_ms.load(Ordering::Acquire));
                if conn.active.load(Ordering::Acquire) == 0 && idle >= idle_ms {
                    return;
                }
            }
        }
    }
}

/// A connection's socket that records when bytes last went either way.
struct Tracked {
    inner: TcpStream,
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Tracked {
    fn touch(&self) {
        self.conn
            .last_ms
            .store(self.registry.now_ms(), Ordering::Release);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_everything_else() {
        assert_eq!(connection_cap(1024), 768);
        assert_eq!(connection_cap(256), 128);
        assert_eq!(connection_cap(100), 16);
        assert_eq!(connection_cap(1 << 20), (1 << 20) - (1 << 18));
    }
}
