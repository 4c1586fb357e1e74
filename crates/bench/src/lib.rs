//! `mbx bench`: measures mbx end to end — publish → route → deliver →
//! complete — on the machine it runs on, with its peers in the same run on the same
//! PostgreSQL, and reports throughput, latency, memory, scaling and drain.

pub mod amqp_relay;
pub mod database;
pub mod error;
pub mod mbx;
pub mod measure;
pub mod orchestration;
pub mod peers;
pub mod report;
pub mod request_response;

use std::time::Duration;

pub use error::BenchError;
use measure::{LatencySummary, Throughput};

/// What one system is asked to do in one run. Every system gets the same spec.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The benchmark's own database (created by the run, dropped after).
    pub database_url: String,
    /// RabbitMQ, for the `rabbitmq` peer.
    pub amqp_url: String,
    /// The measured interval (after the warm-up).
    pub duration: Duration,
    /// Run before measuring starts; not counted.
    pub warmup: Duration,
    /// Messages per publish, per claim/read and per completion/delete/ack.
    pub batch: usize,
    /// Body size in bytes (1 KiB).
    pub body_size: usize,
    /// Concurrent consumers (mbx: host instances; pgmq: readers; RabbitMQ: consumers).
    pub consumers: usize,
    /// Concurrent producers.
    pub producers: usize,
    /// Paced publish rate in messages/s (the 50%-load run); `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Closed-loop cap on messages published but not yet consumed.
    pub window: u64,
    /// Time the NULL send ports take per message or batch (an endpoint with a latency);
    /// `None`: none.
    pub endpoint_latency: Option<Duration>,
    /// Send ports of the unordered and many-ordered workloads (each message to one of
    /// them, round-robin); `None`: the workload's own (1 and 100).
    pub ports: Option<usize>,
    /// Ports subscribed to every message in the fanout workload; `None`: 10.
    pub subscribers: Option<usize>,
}

/// What one run of one system measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Completions in the measured interval (deliveries, for fan-out).
    pub throughput: Option<Throughput>,
    /// Publish commit (or confirm) → hand-off to the consumer.
    pub latency: Option<LatencySummary>,
    /// Peak resident memory of the consuming process, where it is a process of ours.
    pub peak_rss_mb: Option<f64>,
    /// How the figure was obtained, where it differs from the common method.
    pub notes: Vec<String>,
    /// Figures of a workload of its own (the orchestration's rows and WAL per instance,
    /// the hosts' RSS around the waiting instances).
    pub details: Option<serde_json::Value>,
}
