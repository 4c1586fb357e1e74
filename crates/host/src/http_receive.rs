//! HTTP receive's shared listeners: every instance of a host serves the host's enabled
//! HTTP receive locations on its `--http-listen` address (`https:///…` ones on
//! `--https-listen`, with `--tls-cert`; a load balancer fronts the instances). A location
//! itself is an ordinary receive adapter (`mbx_adapters::http::HttpReceiveAdapter`, run
//! by `receive.rs` like every other): it mounts its path here ([`HttpListener`]) and
//! answers its requests through its submitter. This module only binds the sockets (when
//! the first location mounts, so instances without HTTP locations need no port), keeps
//! the connections (`http_server.rs`) and routes each request by (listener, path) to its
//! location. A path that is not mounted at the moment answers 503 with `Retry-After` when
//! one of the host's locations has it (disabled, or enabled and starting, restarting or
//! stopping: senders retry), 404 only when none has (senders give up on it).

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
    /// The host's HTTP locations by (listener, path), enabled or not (the supervisor's
    /// view): what answers a path that is not mounted now.
    known: RwLock<HashMap<(bool, String), KnownPath>>,
    /// Where bodies above 1 MiB are written as they arrive (made with the first listener).
    spool: std::sync::OnceLock<Arc<Spool>>,
    http_listen: SocketAddr,
    https_listen: SocketAddr,
    /// HTTPS receive's TLS, from `--tls-cert`/`--tls-key` (none: https locations refused).
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// One of the host's HTTP receive locations, as the listener knows it while its path is
/// not mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KnownPath {
    pub location: String,
    /// Enabled: it is starting, restarting (`mbx receive-location update`, its instance
    /// registered again) or cannot run now; its path is served again once it mounts.
    pub enabled: bool,
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
            known: Default::default(),
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

    /// Replaces the set of the host's HTTP locations by (listener, path), enabled and
    /// disabled (the supervisor's view, set before it starts or stops their loops).
    pub fn set_known(&self, known: HashMap<(bool, String), KnownPath>) {
        if let Ok(mut k) = self.known.write() {
            *k = known;
        }
    }

    fn known(&self, tls: bool, path: &str) -> Option<KnownPath> {
        self.known
            .read()
            .ok()?
            .get(&(tls, path.to_owned()))
            .cloned()
    }

    /// The answer for a path no location has mounted now: 503 with `Retry-After` when
    /// one of the host's locations has it, 404 when none has.
    fn unmounted(&self, tls: bool, path: &str) -> Response {
        match self.known(tls, path) {
            Some(KnownPath {
                location,
                enabled: false,
            }) => retry_soon(&format!(
                "receive location '{location}' is disabled; retry later"
            )),
            Some(KnownPath {
                location,
                enabled: true,
            }) => retry_soon(&format!(
                "receive location '{location}' is not serving now (starting or restarting); retry"
            )),
            None => plain(
                StatusCode::NOT_FOUND,
                format!("no receive location serves {path}"),
            ),
        }
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
        return http.unmounted(tls, &path);
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::header;

    fn listener() -> Arc<HttpReceive> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Arc::new(HttpReceive::new(any, any, None))
    }

    async fn post(http: &Arc<HttpReceive>, tls: bool, path: &str) -> Response {
        let request = Request::builder()
            .method("POST")
            .uri(path)
            .body(Body::from("x"))
            .expect("a request");
        handle(State((http.clone(), tls)), request).await
    }

    fn known(entries: &[(bool, &str, &str, bool)]) -> HashMap<(bool, String), KnownPath> {
        entries
            .iter()
            .map(|&(tls, path, location, enabled)| {
                (
                    (tls, path.to_owned()),
                    KnownPath {
                        location: location.to_owned(),
                        enabled,
                    },
                )
            })
            .collect()
    }

    /// Mounts `path` as a location would, answering every request 202 until dropped.
    fn mount_accepting(http: &Arc<HttpReceive>, tls: bool, path: &str) -> Unmount {
        let (tx, mut rx) = mpsc::channel::<HttpExchange>(QUEUED_REQUESTS);
        let key = (tls, path.to_owned());
        http.routes
            .write()
            .expect("routes")
            .insert(key.clone(), tx.clone());
        tokio::spawn(async move {
            while let Some(exchange) = rx.recv().await {
                let _ = exchange.respond.send(StatusCode::ACCEPTED.into_response());
            }
        });
        Unmount {
            http: http.clone(),
            key,
            route: tx,
        }
    }

    fn retry_after(response: &Response) -> bool {
        response.status() == StatusCode::SERVICE_UNAVAILABLE
            && response.headers().contains_key(header::RETRY_AFTER)
    }

    /// Between a location's stop and its start again (`mbx receive-location update`, its
    /// instance registered again) its path is not mounted: 503 with `Retry-After`, never
    /// the 404 senders give up on; 404 only for a path none of the host's locations has.
    #[tokio::test]
    async fn a_known_path_that_is_not_mounted_answers_503_and_only_an_unknown_one_404() {
        let http = listener();
        http.set_known(known(&[
            (false, "/orders", "orders-in", true),
            (false, "/paused", "paused-in", false),
            (true, "/secure", "secure-in", true),
        ]));
        let mount = mount_accepting(&http, false, "/orders");
        assert_eq!(
            post(&http, false, "/orders").await.status(),
            StatusCode::ACCEPTED
        );

        // the location restarts: unmounted, not yet mounted again
        drop(mount);
        let restarting = post(&http, false, "/orders").await;
        assert!(retry_after(&restarting), "{:?}", restarting.status());
        let _mount = mount_accepting(&http, false, "/orders");
        assert_eq!(
            post(&http, false, "/orders").await.status(),
            StatusCode::ACCEPTED
        );

        // not mounted yet (an enabled location starting) or disabled: come back
        assert!(retry_after(&post(&http, true, "/secure").await));
        assert!(retry_after(&post(&http, false, "/paused").await));
        // no location of this host has it (on this listener): nothing here
        for (tls, path) in [(false, "/nowhere"), (false, "/secure"), (true, "/orders")] {
            assert_eq!(
                post(&http, tls, path).await.status(),
                StatusCode::NOT_FOUND,
                "{path} (tls: {tls})"
            );
        }
    }

    /// A mounted location that stops before it takes a request up: 503 with `Retry-After`.
    #[tokio::test]
    async fn a_location_stopping_with_its_path_still_mounted_answers_503() {
        let http = listener();
        http.set_known(known(&[(false, "/orders", "orders-in", true)]));
        let (tx, rx) = mpsc::channel::<HttpExchange>(1);
        http.routes
            .write()
            .expect("routes")
            .insert((false, "/orders".to_owned()), tx);
        drop(rx);
        assert!(retry_after(&post(&http, false, "/orders").await));
    }
}
