//! HTTP receive's shared listeners: every instance of a host serves the host's enabled
//! HTTP receive locations on its `--http-listen` address (`https:///…` ones on
//! `--https-listen`, with `--tls-cert`; a load balancer fronts the instances). A location
//! itself is an ordinary receive adapter (`mbx_adapters::http::HttpReceiveAdapter`, run
//! by `receive.rs` like every other): it mounts its path here ([`HttpListener`]) and
//! answers its requests through its submitter. This module only binds the sockets (when
//! the first location mounts, so instances without HTTP locations need no port), keeps
//! the connections (`http_server.rs`) and routes each request by (listener, path) to its
//! location: 404 where no location serves the path, 503 with `Retry-After` where the
//! host's location for it is disabled or stopping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use mbx_adapters::http::receive::{unavailable, RETRY_AFTER_S};
use mbx_adapters::http::spool::{Spool, SPOOL_FOLDER};
use mbx_adapters::http::{HttpExchange, HttpListener, HttpMount};
use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::info;

/// Requests waiting for their location to take them up, per location (more are refused
/// with 503 until it catches up; the connection cap bounds them anyway).
const QUEUED_REQUESTS: usize = 1024;

/// The routes of this instance's HTTP receive locations, by listener and path: an
/// `https:///…` location is served only by the TLS listener, an `http:///…` one only by
/// the plain one.
pub(crate) struct HttpReceive {
    routes: RwLock<HashMap<(bool, String), mpsc::Sender<HttpExchange>>>,
    /// Whether the plain and the TLS listener are bound.
    listening: Mutex<(bool, bool)>,
    /// The host's disabled HTTP locations by (listener, path): name.
    disabled: RwLock<HashMap<(bool, String), String>>,
    /// Where bodies above 1 MiB are written as they arrive (made with the first listener).
    spool: std::sync::OnceLock<Arc<Spool>>,
    http_listen: SocketAddr,
    https_listen: SocketAddr,
    /// HTTPS receive's TLS, from `--tls-cert`/`--tls-key` (none: https locations refused).
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The path an HTTP receive address serves: `http:///orders` → `/orders`.
pub(crate) fn path_of(address: &str) -> Option<String> {
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))?;
    let slash = rest.find('/')?;
    let path = &rest[slash..];
    (path.len() > 1).then(|| path.to_owned())
}

/// Unmounts a location's path when its adapter drops its mount.
struct Unmount {
    http: Arc<HttpReceive>,
    key: (bool, String),
    /// The mounted route (another location may have mounted the path since).
    route: mpsc::Sender<HttpExchange>,
}

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Ok(mut routes) = self.http.routes.write() {
            if routes
                .get(&self.key)
                .is_some_and(|r| r.same_channel(&self.route))
            {
                routes.remove(&self.key);
            }
        }
    }
}

impl HttpReceive {
    pub fn new(
        http_listen: SocketAddr,
        https_listen: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        Self {
            routes: Default::default(),
            listening: Default::default(),
            disabled: Default::default(),
            spool: Default::default(),
            http_listen,
            https_listen,
            tls,
        }
    }

    fn route(&self, tls: bool, path: &str) -> Option<mpsc::Sender<HttpExchange>> {
        self.routes
            .read()
            .ok()?
            .get(&(tls, path.to_owned()))
            .cloned()
    }

    /// Replaces the set of the host's disabled HTTP locations (the supervisor's view).
    pub fn set_disabled(&self, disabled: HashMap<(bool, String), String>) {
        if let Ok(mut d) = self.disabled.write() {
            *d = disabled;
        }
    }

    fn disabled(&self, tls: bool, path: &str) -> Option<String> {
        self.disabled
            .read()
            .ok()?
            .get(&(tls, path.to_owned()))
            .cloned()
    }

    /// Binds the plain (`--http-listen`) or the TLS (`--https-listen`) listener once; the
    /// reason when it cannot serve now (no TLS configured, the address taken).
    async fn ensure_listener(self: &Arc<Self>, tls: bool) -> Result<(), String> {
        let mut listening = self.listening.lock().await;
        let bound = if tls {
            &mut listening.1
        } else {
            &mut listening.0
        };
        if *bound {
            return Ok(());
        }
        if self.spool.get().is_none() {
            let root = std::env::temp_dir();
            let spool = Spool::open(&root).map_err(|e| {
                format!(
                    "cannot make the HTTP receive spool folder under {}: {e}; set TMPDIR to a writable folder",
                    root.join(SPOOL_FOLDER).display()
                )
            })?;
            let _ = self.spool.set(Arc::new(spool));
        }
        let acceptor = match (tls, &self.tls) {
            (false, _) => None,
            (true, Some(acceptor)) => Some(acceptor.clone()),
            (true, None) => {
                return Err(
                    "this instance has no TLS: start mbx-host with --tls-cert and --tls-key to serve https:/// locations (never served in clear)"
                        .to_owned(),
                )
            }
        };
        let (addr, flag) = if tls {
            (self.https_listen, "--https-listen")
        } else {
            (self.http_listen, "--http-listen")
        };
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls, "HTTP receive listener ready");
                let app = Router::new()
                    .fallback(handle)
                    .with_state((self.clone(), tls));
                let cap =
                    crate::http_server::connection_cap(crate::http_server::current_fd_limit());
                tokio::spawn(crate::http_server::serve(listener, app, cap, acceptor));
                *bound = true;
                Ok(())
            }
            Err(e) => Err(format!(
                "cannot bind {flag} {addr}: {e}; give each instance on a machine its own address"
            )),
        }
    }
}

/// What the registry hands HTTP receive locations (`Registry::with_http_listener`).
pub(crate) struct Listener(pub Arc<HttpReceive>);

#[async_trait]
impl HttpListener for Listener {
    async fn mount(&self, tls: bool, path: &str, location: &str) -> Result<HttpMount, String> {
        let http = &self.0;
        // an address taken by another process may be freed: the adapter asks again; an
        // instance without TLS stays refused until it is restarted with it
        http.ensure_listener(tls).await?;
        let spool = http
            .spool
            .get()
            .cloned()
            .ok_or_else(|| "the HTTP receive spool folder is not ready".to_owned())?;
        let (tx, rx) = mpsc::channel(QUEUED_REQUESTS);
        let key = (tls, path.to_owned());
        {
            let mut routes = http
                .routes
                .write()
                .map_err(|_| "the HTTP routes are unusable".to_owned())?;
            if routes.get(&key).is_some_and(|other| !other.is_closed()) {
                return Err(format!(
                    "{path} is served by another receive location of this instance; {location} waits for it to stop"
                ));
            }
            routes.insert(key.clone(), tx.clone());
        }
        Ok(HttpMount {
            requests: rx,
            spool,
            guard: Box::new(Unmount {
                http: http.clone(),
                key,
                route: tx,
            }),
        })
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    (status, format!("{text}\n")).into_response()
}

fn retry_soon(why: &str) -> Response {
    unavailable(why, std::time::Duration::from_secs(RETRY_AFTER_S))
}

async fn handle(State((http, tls)): State<(Arc<HttpReceive>, bool)>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let Some(route) = http.route(tls, &path) else {
        if let Some(location) = http.disabled(tls, &path) {
            return retry_soon(&format!(
                "receive location '{location}' is disabled; retry later"
            ));
        }
        return plain(
            StatusCode::NOT_FOUND,
            format!("no receive location serves {path}"),
        );
    };
    let (respond, response) = oneshot::channel();
    if route.try_send(HttpExchange { request, respond }).is_err() {
        return retry_soon("the receive location is busy or stopping; retry");
    }
    match response.await {
        Ok(r) => r,
        // the location stopped before it took the request up
        Err(_) => retry_soon("the receive location is stopping; retry"),
    }
}
