//! The web console (Group Hub) of one mbx group: `mbx console`.
//!
//! Server-rendered pages (maud) with a little script for the live parts, assets embedded
//! in the binary. It reads and changes the group only through the MessageBox API — the
//! same calls as the CLI — and never talks to a host. Counts come from snapshots a
//! sampler takes in the background ([`sampler`]), so a page never counts a large table.
//!
//! Security: a token (`--token`) is required on any address but loopback; every POST
//! carries a CSRF value bound to the session; a read-only console (`--read-only`, or a
//! database role that cannot write) renders no action and refuses every POST. Every
//! response says `X-Content-Type-Options: nosniff` and a Content-Security-Policy that
//! allows only the console's own assets (no inline script or style) and no framing.

mod actions;
mod auth;
mod error;
mod pages;
pub mod preview;
mod sampler;
mod view;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::routing::{get, post};
use axum::Router;
use mbx_messagebox::MessageBox;
use tracing::info;

pub use error::ConsoleError;

/// How `mbx console` was started.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub listen: SocketAddr,
    /// The token operators log in with (resolved from `--token env:NAME|file:PATH`).
    pub token: Option<String>,
    /// `--read-only`.
    pub read_only: bool,
}

/// Refuses a configuration that would expose the console: any address but loopback
/// needs a token.
pub fn check_config(config: &ConsoleConfig) -> Result<(), ConsoleError> {
    if !config.listen.ip().is_loopback() && config.token.is_none() {
        return Err(ConsoleError::Config(format!(
            "--listen {}: the console serves an address other than loopback only with a token; \
             add --token env:NAME or --token file:PATH (or listen on 127.0.0.1)",
            config.listen
        )));
    }
    if matches!(&config.token, Some(t) if t.len() < 16) {
        return Err(ConsoleError::Config(
            "--token: the token is shorter than 16 characters; use a long random one \
             (example: openssl rand -hex 24 > token; --token file:token)"
                .into(),
        ));
    }
    Ok(())
}

/// A selection of suspended items an operator was asked to confirm: the action runs on
/// exactly these ids, never on the filter run again.
pub(crate) struct Pin {
    pub action: actions::ItemAction,
    pub ids: Vec<i64>,
    pub made: Instant,
}

pub(crate) struct App {
    pub mbx: MessageBox,
    /// When the console started (its charts reach back to here at most).
    pub started: chrono::DateTime<chrono::Utc>,
    pub read_only: bool,
    pub auth: auth::Auth,
    pub samples: RwLock<sampler::Samples>,
    pub pins: Mutex<HashMap<String, Pin>>,
}

/// A bound console, ready to serve.
pub struct Console {
    listener: tokio::net::TcpListener,
    app: Arc<App>,
}

impl Console {
    /// Checks the configuration, takes a first snapshot (so the first page has numbers)
    /// and binds the address.
    pub async fn bind(mbx: MessageBox, config: ConsoleConfig) -> Result<Console, ConsoleError> {
        check_config(&config)?;
        let writable = mbx.can_write().await?;
        let read_only = config.read_only || !writable;
        if !config.read_only && !writable {
            info!("the database role cannot change the MessageBox: the console is read-only");
        }
        let samples = sampler::Samples::first(&mbx).await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| {
                ConsoleError::Config(format!(
                    "--listen {}: cannot listen there ({e}); pick a free port",
                    config.listen
                ))
            })?;
        let app = Arc::new(App {
            mbx,
            started: chrono::Utc::now(),
            read_only,
            auth: auth::Auth::new(config.token.as_deref())?,
            samples: RwLock::new(samples),
            pins: Mutex::new(HashMap::new()),
        });
        Ok(Console { listener, app })
    }

    /// The address it listens on (the port, when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn read_only(&self) -> bool {
        self.app.read_only
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ConsoleError> {
        let sampler = tokio::spawn(sampler::run(self.app.clone()));
        let router = router(self.app.clone());
        let served = axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
        sampler.abort();
        served.map_err(|e| ConsoleError::Config(format!("serving the console: {e}")))
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/live/overview", get(pages::overview_live))
        .route("/ordered", get(pages::ordered))
        .route("/suspended", get(pages::suspended_list))
        .route("/suspended/{id}", get(pages::suspended_detail))
        .route("/suspended/{id}/body", get(pages::suspended_body))
        .route("/suspended/confirm", post(actions::suspended_confirm))
        .route("/suspended/act", post(actions::suspended_act))
        .route("/track", get(pages::track))
        .route("/send-ports/{name}/{action}", post(actions::send_port))
        .route(
            "/receive-locations/{name}/{action}",
            post(actions::receive_location),
        )
        .route("/login", get(pages::login).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/healthz", get(|| async { "ok" }))
        .route("/assets/console.css", get(view::css))
        .route("/assets/console.js", get(view::js))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            auth::guard,
        ))
        // outermost: the guard's refusals and redirects carry the headers too
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

/// What a page may load: only the console's own script, style sheet and live fragments
/// (no inline script or style, no other origin), inline SVG charts, and no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Every response: no MIME sniffing (a message body offered for download is never run as
/// a page) and the [`CONTENT_SECURITY_POLICY`].
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}
