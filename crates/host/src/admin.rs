//! The admin listener: `/healthz` (process up), `/readyz` (MessageBox reachable and its
//! schema current), `/metrics` (Prometheus text).

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::error;

use mbx_messagebox::MessageBox;

use crate::receive::LocationProblems;

/// The process-wide Prometheus recorder (installed once; tests run several hosts in one
/// process).
pub(crate) fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                error!(error = %e, "metrics recorder not installed; /metrics will be empty");
                None
            }
        })
        .clone()
}

/// What the admin endpoints read: the MessageBox (`/readyz`), the receive locations that
/// cannot run here (`/readyz`), the metrics (`/metrics`).
#[derive(Clone)]
struct AdminState {
    mbx: MessageBox,
    problems: LocationProblems,
    metrics: Option<PrometheusHandle>,
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    mbx: MessageBox,
    problems: LocationProblems,
    metrics: Option<PrometheusHandle>,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AdminState {
            mbx,
            problems,
            metrics,
        });
    if let Err(e) = axum::serve(listener, app).await {
        error!(error = %e, "admin listener failed");
    }
}

/// Ready when the MessageBox is reachable with a current schema and every enabled
/// receive location of the host runs here (an HTTP listener whose address is taken, an
/// https location without TLS, an unreadable secret: the balancer should send elsewhere).
async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    if let Err(e) = s.mbx.check_schema().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n"));
    }
    let problems = s.problems.sentences();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
    }
}

async fn render_metrics(State(s): State<AdminState>) -> String {
    s.metrics.as_ref().map(|h| h.render()).unwrap_or_default()
}
