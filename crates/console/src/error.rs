//! The console's error: a bad start (configuration) or a failed page or action, shown to
//! the operator as one line with the status that fits.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The console cannot start as configured (names the flag and the fix).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    MessageBox(#[from] mbx_messagebox::Error),
    /// A request the console cannot answer (a bad id, an unknown action).
    #[error("{1}")]
    Request(StatusCode, String),
}

impl ConsoleError {
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ConsoleError::Request(StatusCode::BAD_REQUEST, message.into())
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ConsoleError::Request(status, _) => *status,
            ConsoleError::MessageBox(mbx_messagebox::Error::NotFound { .. }) => {
                StatusCode::NOT_FOUND
            }
            ConsoleError::MessageBox(e) if e.is_bad_input() => StatusCode::BAD_REQUEST,
            ConsoleError::MessageBox(mbx_messagebox::Error::Refused(_)) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "console request failed");
        }
        (status, crate::view::error_page(status, &self.to_string())).into_response()
    }
}
