use thiserror::Error;

/// What can stop a benchmark run.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("MessageBox: {0}")]
    MessageBox(#[from] mbx_messagebox::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A peer could not be set up or run (names the peer and what to do).
    #[error("{peer}: {message}")]
    Peer { peer: &'static str, message: String },
    /// Anything else about the setup (names what and what to do).
    #[error("{0}")]
    Setup(String),
}

impl BenchError {
    pub fn peer(peer: &'static str, message: impl std::fmt::Display) -> Self {
        BenchError::Peer {
            peer,
            message: message.to_string(),
        }
    }
}
