//! mbx adapters: the receive and send contracts, one module per adapter, and the receive
//! pipelines.
//!
//! The contract is written out in `docs/adapter-contract.md`; this crate is its code:
//!
//! - **send side** — [`SendAdapter::send`] takes a batch of [`OutboundMessage`]s and returns
//!   at once; the adapter does its I/O on its own tasks and reports exactly one
//!   [`SendReport`] per message on the [`OutcomeSender`] it was given. An [`Outcome`] is
//!   `Delivered` (the endpoint confirmed) or `Failed { error, retryable }`. No adapter
//!   decides retry policy: the engine does.
//! - **receive side** — a [`ReceiveAdapter`] runs until its shutdown signal fires, hands
//!   batches of [`InboundMessage`]s to the host's [`Submitter`], awaits the commit, and
//!   only then acknowledges its source (FILE: deletes the file).
//! - **registry** — [`registry`] maps a URI scheme to its adapter, in one closed table.
//! - **pipelines** — [`pipeline`] disassembles and promotes (`passthru`, `json`, `xml`).
//!
//! Architecture invariant: this crate knows nothing about PostgreSQL or the MessageBox;
//! `crates/host` glues adapters to `mbx-messagebox`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use tokio::sync::mpsc;
use uuid::Uuid;

pub mod allow;
pub mod amqp;
pub mod body;
mod broker;
pub mod context;
pub mod error;
pub mod file;
pub mod http;
pub mod macros;
pub mod mbx;
pub mod mqtt;
pub mod null;
pub mod pipeline;
pub mod registry;
pub mod settings;
pub mod smtp;

pub use allow::{AllowList, BadPrefix};
pub use body::{Body, ChunkSource, BODY_IN_MEMORY_MAX_BYTES};
pub use context::{system, MessageContext};
pub use error::Side;
pub use error::{ConfigError, ReceiveError, RegistryError, SubmitError};
pub use registry::{adapters_help, Registry, Scheme, SendTransport};
pub use settings::Settings;

/// A promoted value is at most this many bytes.
pub use mbx_vocabulary::PROMOTED_VALUE_MAX_BYTES;

// ------------------------------------------------------------------------------------------
// Send side

/// One message handed to a send adapter: one delivery of one message to one port.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    /// The delivery this attempt belongs to; outcomes are reported against it.
    pub delivery_id: i64,
    /// `mbx.MessageId` of the message.
    pub message_id: Uuid,
    /// The send port's name (`mbx.SendPortName`).
    pub port_name: String,
    /// The resolved address: the port's static address, or the message's
    /// `mbx.OutboundTransportLocation` for a dynamic port (already checked against the
    /// port's allowed prefixes by the engine).
    pub address: String,
    /// The port's adapter settings (`--set KEY=VALUE`).
    pub settings: Settings,
    /// The body, as the send pipeline produced it: in memory, or (above 1 MiB) read from
    /// the MessageBox one chunk at a time.
    pub body: Body,
    /// The body's content type (`mbx.ContentType`).
    pub content_type: String,
    /// The context as the adapter sees it: the message's properties with the per-delivery
    /// values (`mbx.RetryCount`, `mbx.SendPortName`, `mbx.Sequence`, `mbx.Epoch`) overlaid.
    pub context: MessageContext,
    /// On an ordered port: whether its owner may still act (see [`Fence`]); `None` on an
    /// unordered port.
    pub fence: Option<Fence>,
    /// A solicit-response port: the adapter reports the endpoint's answer
    /// ([`Outcome::Responded`]) instead of only confirming the send.
    pub solicit_response: bool,
}

/// Whether the owner of an ordered port may still act on its endpoint: true while it
/// holds the port's lease and renewed it less than TTL − margin ago. The
/// engine checks it before handing each message over; an adapter whose endpoint it can
/// lock (FILE append: the file's lock) checks it again *after* taking the lock, right
/// before each side effect, so a former owner that stalls anywhere before that point
/// changes nothing once the lease has moved, and one that stalls inside the locked
/// section holds the next owner off until it is done.
#[derive(Clone)]
pub struct Fence(Arc<dyn Fn() -> bool + Send + Sync>);

impl Fence {
    pub fn new(may_act: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Fence(Arc::new(may_act))
    }

    /// Whether the owner may still act now.
    pub fn allows(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Fence").field(&self.allows()).finish()
    }
}

/// The result of one send attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint confirmed it has the message (file renamed into place and fsync'd,
    /// HTTP 2xx received, …).
    Delivered,
    /// The attempt failed. `retryable = false` means the message cannot be sent in
    /// principle (bad macro value, address outside the folder, invalid header value): the
    /// engine suspends it `failed-final` at once.
    Failed { error: String, retryable: bool },
    /// The endpoint took the message and answered (a solicit-response port): the engine
    /// publishes the answer and completes the delivery in one transaction.
    Responded(Box<Response>),
}

/// An endpoint's answer to a solicit-response send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The adapter's status code (HTTP: the response status), as `http.StatusCode`.
    pub status: u16,
    pub content_type: String,
    pub body: bytes::Bytes,
}

/// The longest response body a solicit-response send reads (a larger one is a
/// non-retryable failure naming the limit).
pub const RESPONSE_BODY_MAX_BYTES: usize = 100 * 1024 * 1024;

impl Outcome {
    /// A failure from a typed error and its classification.
    pub fn failed(error: impl std::fmt::Display, retryable: bool) -> Self {
        Outcome::Failed {
            error: error.to_string(),
            retryable,
        }
    }

    /// The endpoint has the message (with or without an answer).
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered | Outcome::Responded(_))
    }
}

/// One message's outcome, reported by a send adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReport {
    pub delivery_id: i64,
    pub message_id: Uuid,
    pub outcome: Outcome,
    /// After a delivery, the endpoint's position that includes it (FILE append: the file
    /// and its length). The engine commits it with the completion and, after an ordered
    /// port changes owner, hands the last committed one to [`SendAdapter::restore`].
    pub checkpoint: Option<String>,
}

/// Where a send adapter reports outcomes. The host owns the receiving end; if it is
/// dropped (the host is stopping), adapters drop their reports: the deliveries stay
/// claimed and are released or reclaimed by the engine.
pub type OutcomeSender = mpsc::Sender<SendReport>;

/// Reports `outcome` for `message`; a closed channel is not an error (see [`OutcomeSender`]).
/// Turns the result of one send attempt into its outcome, logging it: `Ok` carries what
/// was delivered to (a path, a status), `Err` the error and whether it is retryable.
pub(crate) fn outcome_of<E: std::fmt::Display>(
    message: &OutboundMessage,
    adapter: &'static str,
    result: Result<String, (E, bool)>,
) -> Outcome {
    match result {
        Ok(detail) => {
            tracing::debug!(
                delivery_id = %message.delivery_id,
                port = %message.port_name,
                adapter,
                %detail,
                "message delivered"
            );
            Outcome::Delivered
        }
        Err((err, retryable)) => {
            tracing::warn!(
                delivery_id = %message.delivery_id,
                port = %message.port_name,
                adapter,
                retryable,
                error = %err,
                "send failed"
            );
            Outcome::failed(&err, retryable)
        }
    }
}

pub(crate) async fn report(outcomes: &OutcomeSender, message: &OutboundMessage, outcome: Outcome) {
    let report = SendReport {
        delivery_id: message.delivery_id,
        message_id: message.message_id,
        outcome,
        checkpoint: None,
    };
    if outcomes.send(report).await.is_err() {
        tracing::debug!(
            delivery_id = %message.delivery_id,
            "outcome receiver closed; report dropped"
        );
    }
}

/// The send side of an adapter (accept a batch, report each message's outcome
/// asynchronously).
#[async_trait]
pub trait SendAdapter: Send + Sync {
    /// The adapter's name as operators see it (`FILE`, `HTTP`).
    fn name(&self) -> &'static str;

    /// Checks an address and the port settings without sending anything, so a port can be
    /// refused at configuration time.
    fn validate(&self, address: &str, settings: &Settings) -> Result<(), ConfigError>;

    /// Accepts a batch and returns at once; MUST be called from within a Tokio runtime.
    /// I/O runs on the adapter's own tasks; exactly one [`SendReport`] per message is sent
    /// on `outcomes`, `Delivered` only after the endpoint confirmed.
    fn send(&self, batch: Vec<OutboundMessage>, outcomes: OutcomeSender);

    /// Whether the endpoint at `address` looks reachable, without sending a message.
    async fn health(&self, address: &str, settings: &Settings) -> Health;

    /// Before a new owner of an ordered port sends, puts the endpoint back to the last
    /// committed `checkpoint` (FILE append: truncate the file to the committed length), so
    /// messages sent but not committed by a crashed owner are not there twice — fenced
    /// like a send: nothing is changed unless `fence` allows it at the moment of the
    /// change. Adapters without positions keep the default: nothing to do.
    async fn restore(&self, checkpoint: &str, fence: &Fence) -> Result<(), String> {
        let _ = (checkpoint, fence);
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Receive side

/// One message as a receive adapter read it, before the receive pipeline.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    /// In memory, or (above 1 MiB) the file the adapter holds until it acknowledges.
    pub body: Body,
    pub content_type: String,
    /// Written (not promoted) properties the adapter sets, e.g. `mbx.SourceFileName`,
    /// `mbx.InboundTransportLocation`, `mbx.InboundTransportType`.
    pub properties: MessageContext,
    /// Properties the adapter promotes from its protocol (`AMQP.RoutingKey`,
    /// `MQTT.Topic`, …), typed like a pipeline's promotions, so filters can route on them.
    pub promoted: MessageContext,
    /// Identifies the source message for idempotent receive: the same
    /// source delivered twice carries the same id. `None` when the source cannot repeat.
    pub source_id: Option<String>,
    /// Which copy of the source this is, where the same source id can come from two
    /// copies (FILE: the claimed file's device, inode and ctime, read after the claim).
    /// Stored with the source id when published, so that a source found still claimed
    /// after its claimant stopped can be told from a new one with the same id (see
    /// [`Submitter::published_copies`]). `None`: no such identity.
    pub source_identity: Option<String>,
    /// The SHA-256 of the body, kept with the source id where a repeat of the id must
    /// come with the same body (HTTP: an `Idempotency-Key`); a repeat with another body
    /// is [`Submitted::SourceReused`]. `None`: the id alone decides.
    pub body_sha256: Option<[u8; 32]>,
}

/// What became of one message of a committed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Safe in the MessageBox: published, or kept as a suspended item (a routing or
    /// receive failure). The adapter acknowledges its source.
    Accepted,
    /// Its source id was published within the dedup window, so it was dropped
    /// (idempotent receive). The adapter acknowledges its source too, but never unseen: FILE moves the
    /// file to `.mbx-duplicates/` with a reason file.
    Duplicate,
    /// Kept as a non-resumable receive failure (it failed the receive pipeline). The
    /// adapter acknowledges its source, or rejects it where the source keeps rejected
    /// messages (AMQP: without requeue, to the queue's dead-letter exchange).
    ReceiveFailure,
    /// Its source id was published within the dedup window with another body (only a
    /// message with a [`InboundMessage::body_sha256`]): refused, nothing kept. The
    /// adapter refuses it at its source (HTTP: 422).
    SourceReused,
}

/// The admission hook ([`Submitter::admit`]): whether the host takes messages now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Take them.
    Open,
    /// Not now (a throttle is on, the host is stopping): `why`, and when to ask again.
    /// A polling adapter waits (its submit would wait too); a server answers its client
    /// at once (HTTP: 503 with `Retry-After`).
    Throttled { why: String, retry_after: Duration },
}

/// What became of a two-way location's request ([`Submitter::request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// Published, and the first message correlated with it came back in time.
    Answered(Reply),
    /// Published, but no answer came within the location's timeout: the request stays in
    /// the MessageBox (its message id), its timeout recorded.
    TimedOut { message_id: Uuid },
    /// Published, but no send port subscribes to it: kept as a routing failure (the
    /// suspended item); no answer can come.
    Unrouted { message_id: Uuid, suspended_id: i64 },
    /// Kept as a receive failure (the reason): no answer will come.
    Failed(String),
    /// Its source id came with the same body within the dedup window: the request was
    /// taken then and is not published again (its answer is not kept).
    Repeated,
    /// Its source id came with another body within the dedup window: refused.
    SourceReused,
}

/// The answer to a two-way request: the first message correlated with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message_id: Uuid,
    /// `http.StatusCode` of the answer, if it has one.
    pub status: Option<u16>,
    pub content_type: String,
    pub body: bytes::Bytes,
}

/// Implemented by the host: publishes a batch in one transaction (running the receive
/// pipeline on each message first).
#[async_trait]
pub trait Submitter: Send + Sync {
    /// Returns `Ok` only once the whole batch is committed in the MessageBox, with one
    /// [`Submitted`] per message, in order. An error means nothing of the batch may be
    /// acknowledged; the adapter retries later. The host may make this wait while it is
    /// throttled.
    async fn submit(&self, batch: Vec<InboundMessage>) -> Result<Vec<Submitted>, SubmitError>;

    /// Records a message the adapter refuses before the pipeline (over the size limit) as
    /// a non-resumable receive failure with `reason`; `m` carries its properties and what
    /// of its body is kept (none, for an oversize one). `Ok` once committed: only then may
    /// the adapter drop or reject the source.
    async fn refuse(&self, m: InboundMessage, reason: &str) -> Result<(), SubmitError>;

    /// The admission hook: whether the host takes messages now. An adapter asks before it
    /// takes work from its source; a server adapter refuses its client while it is not
    /// [`Admission::Open`] (HTTP: 503 with `Retry-After`), a polling one waits before it
    /// takes any ([`admitted`]), leaving it at its source. The default is always open.
    fn admit(&self) -> Admission {
        Admission::Open
    }

    /// A two-way location's request: publishes `m` as a request (`mbx.IsRequestResponse`,
    /// a fresh correlation token) and waits up to `timeout` for the first message
    /// correlated with it. An error: nothing was published (the client may retry). The
    /// default: this submitter takes no requests.
    async fn request(
        &self,
        m: InboundMessage,
        timeout: Duration,
    ) -> Result<Requested, SubmitError> {
        let _ = (m, timeout);
        Err(SubmitError::new("this receive location is not two-way"))
    }

    /// Reports that the location cannot take messages, and why (`None`: it takes them
    /// again) — a source that no longer fits the location's configuration, such as an
    /// ordered location's queue without a single active consumer. The host shows it in
    /// `mbx status`, the console and `/readyz`. Not for passing outages (a broker
    /// restarting): those the adapter retries and logs.
    async fn problem(&self, why: Option<&str>) {
        let _ = why;
    }

    /// Which of `sources` (found still claimed, by a former holder or a dead instance)
    /// were published from that very copy: the same source id with the same
    /// [`InboundMessage::source_identity`], by a committed publish. Their claimant stopped
    /// between its commit and its acknowledge; the adapter finishes the acknowledge (FILE:
    /// deletes the file) instead of putting them back to be received again (they would
    /// be dropped as duplicates). One answer per source, in order. An error: nothing may
    /// be decided, the sources stay claimed. The default knows of none (all put back).
    async fn published_copies(&self, sources: &[ClaimedSource]) -> Result<Vec<bool>, SubmitError> {
        Ok(vec![false; sources.len()])
    }
}

/// Waits while `submitter`'s admission hook is closed (asking again after each
/// `retry_after`): a polling adapter awaits it before it takes work from its source, so
/// a closed admission leaves the messages where they are.
pub async fn admitted(submitter: &dyn Submitter) {
    while let Admission::Throttled { retry_after, .. } = submitter.admit() {
        tokio::time::sleep(retry_after.clamp(Duration::from_millis(10), Duration::from_secs(5)))
            .await;
    }
}

/// A source found still claimed, as [`Submitter::published_copies`] is asked about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedSource {
    /// The source id it would be submitted under.
    pub source_id: String,
    /// Its identity as found (see [`InboundMessage::source_identity`]).
    pub identity: String,
}

/// A future that completes when the adapter must stop (mini-redis style).
pub type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What a receive adapter is told about where it runs.
#[derive(Debug, Clone)]
pub struct ReceiveLocationSpec {
    /// The receive location's name (for logs).
    pub location_name: String,
    /// The location's address, e.g. `file:///data/in/*.xml`.
    pub address: String,
    /// The location's adapter settings (`--set KEY=VALUE`).
    pub settings: Settings,
    /// This host instance's id: marks the sources it claims, so that a dead instance's
    /// claims can be told apart and reclaimed. Letters, digits and `-` only.
    pub instance_id: String,
    /// An ordered location: the adapter runs only while this instance holds
    /// the location's lease, takes its sources strictly in order and never skips one it
    /// could not take; sources still claimed by anyone else are a former holder's, to be
    /// put back first.
    pub ordered: bool,
    /// A two-way (request-response) location: each message is a request whose client
    /// waits for its answer ([`Submitter::request`]); only HTTP receive serves them.
    pub two_way: bool,
}

/// A source left claimed (by this or another instance), as [`ReceiveAdapter::reclaim`]
/// shows it to the host's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimInfo {
    /// The source's name before it was claimed.
    pub original_name: String,
    /// The instance id that claimed it.
    pub claim_id: String,
    /// How long ago it was claimed (as far as the source can tell).
    pub age: Duration,
}

/// The host's decision whether to put a claimed source back (typically: its claim id is
/// not a live instance).
pub type ReclaimFilter = dyn Fn(&ClaimInfo) -> bool + Send + Sync;

/// What a reclaim pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReclaimReport {
    /// Sources put back to be received again.
    pub reclaimed: usize,
    /// Sources found already published from that very copy (their claimant stopped
    /// between commit and acknowledge): acknowledged now (FILE: deleted), not put back.
    pub finished: usize,
    /// Claimed sources the decision left alone, or that could not be put back (logged).
    pub kept: usize,
}

/// The receive side of an adapter (submit batches and await commit).
#[async_trait]
pub trait ReceiveAdapter: Send + Sync {
    fn name(&self) -> &'static str;

    /// Receives until `shutdown` fires: reads batches, submits them, acknowledges the
    /// source only after a successful submit. Operating errors (a folder gone, a submit
    /// failing) are logged and retried; only a broken configuration returns an error.
    async fn run(
        &self,
        submitter: &dyn Submitter,
        shutdown: ShutdownSignal,
    ) -> Result<(), ReceiveError>;

    /// Puts back sources left claimed, for which `should_reclaim` says yes (typically: the
    /// claim id is not a live instance), except those `submitter` says were published
    /// from that very copy ([`Submitter::published_copies`]): those are acknowledged
    /// instead. The host decides when to call it.
    async fn reclaim(
        &self,
        should_reclaim: &ReclaimFilter,
        submitter: &dyn Submitter,
    ) -> Result<ReclaimReport, ReceiveError> {
        let _ = (should_reclaim, submitter);
        Ok(ReclaimReport::default())
    }

    /// Whether the source looks usable.
    async fn health(&self) -> Health;
}

// ------------------------------------------------------------------------------------------
// Health

/// A health check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy { reason: String },
}

impl Health {
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        Health::Unhealthy {
            reason: reason.into(),
        }
    }

    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// Builds a [`Settings`] map from pairs; convenient for tests and the host.
pub fn settings_from<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Settings {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect::<BTreeMap<_, _>>()
}
