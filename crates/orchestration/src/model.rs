//! A definition in the mbx profile, as the runtime reads it: every task typed, every
//! runtime expression compiled, every duration resolved. Built by `profile::check` from
//! a document the DSL's schema has accepted; nothing here is built any other way.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::expr::Expr;

/// A JSON value whose strings may be runtime expressions (`${ … }`), evaluated where
/// they stand (`set`, `emit`'s data, a call's body and headers).
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Expr(Expr),
    Literal(serde_json::Value),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

/// Where a task goes next (`then`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Exit,
    End,
    /// The named task of the same list.
    Goto(String),
}

/// A duration: fixed when written, or a runtime expression giving an ISO 8601 one.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    Fixed(Duration),
    Expr(Expr),
}

/// What every task may carry (the DSL's `taskBase`).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskBase {
    pub if_: Option<Expr>,
    pub input_from: Option<Template>,
    pub output_as: Option<Template>,
    pub export_as: Option<Template>,
    pub timeout: Option<Wait>,
    pub then: Flow,
}

/// One named task and where it is (its JSON pointer, `/do/0/receiveOrder`).
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub name: String,
    pub reference: String,
    pub base: TaskBase,
    pub kind: TaskKind,
}

/// The tasks of the mbx profile.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    CallHttp(Box<HttpCall>),
    /// `call: NAME@mbx`: a request through the solicit-response send port `NAME` (mbx
    /// extension), its body `with.body`.
    CallPort {
        port: String,
        body: Option<Template>,
    },
    Do(Vec<Task>),
    Fork {
        branches: Vec<Task>,
        compete: bool,
    },
    Emit(Emit),
    For(Box<For>),
    Listen(Listen),
    Raise(ErrorDef),
    Set(Template),
    Switch(Vec<Case>),
    Try(Box<Try>),
    Wait(Wait),
}

/// `call: http`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    pub method: String,
    pub endpoint: Template,
    pub headers: Option<Template>,
    pub query: Option<Template>,
    pub body: Option<Template>,
    pub output: HttpOutput,
    /// Redirections (3xx) are errors unless this is set.
    pub redirect: bool,
}

/// `call: http`'s `output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpOutput {
    Content,
    Response,
    Raw,
}

/// `emit`: a message published when the step commits.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// `source`, `type`, `id`, `subject`, `datacontenttype`, `data`, and promoted
    /// properties by their dotted names.
    pub with: Vec<(String, Template)>,
    /// `x-mbx-republish` (mbx extension): the id of a message this instance consumed,
    /// published again as it is (body bytes and content type), `with` adding to or
    /// changing its properties.
    pub republish: Option<Expr>,
}

/// `for`.
#[derive(Debug, Clone, PartialEq)]
pub struct For {
    pub each: String,
    pub at: String,
    pub in_: Expr,
    pub while_: Option<Expr>,
    pub do_: Vec<Task>,
}

/// How a listen reads what it consumed (`read`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    Data,
    Envelope,
    Raw,
}

/// `listen`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub to: Consume,
    pub read: Read,
}

/// An event consumption strategy (`schedule.on`, `listen.to`).
#[derive(Debug, Clone, PartialEq)]
pub enum Consume {
    One(EventFilter),
    Any {
        filters: Vec<EventFilter>,
        until: Option<Expr>,
    },
    All(Vec<EventFilter>),
}

impl Consume {
    /// The filters, in the order written.
    pub fn filters(&self) -> &[EventFilter] {
        match self {
            Consume::One(f) => std::slice::from_ref(f),
            Consume::Any { filters, .. } | Consume::All(filters) => filters,
        }
    }
}

/// One event filter: exact values of promoted properties, and the correlation.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFilter {
    /// Promoted property (`type` already mapped to `mbx.MessageType`) → the exact value.
    pub with: BTreeMap<String, serde_json::Value>,
    /// The correlation keys by name.
    pub correlate: Vec<Correlation>,
}

/// One correlation key: the promoted property it reads and what it must equal.
#[derive(Debug, Clone, PartialEq)]
pub struct Correlation {
    pub key: String,
    /// The promoted property `from` reads.
    pub property: String,
    /// `expect`: evaluated on the instance; on an activation, absent means the first
    /// message's value becomes the instance's.
    pub expect: Option<Template>,
}

/// `raise.error` and `use.errors`: the DSL's error (RFC 7807).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorDef {
    pub type_: Template,
    pub status: i64,
    pub title: Option<Template>,
    pub detail: Option<Template>,
    pub instance: Option<Template>,
}

/// One `switch` case.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub name: String,
    pub when: Option<Expr>,
    pub then: Flow,
}

/// `try` / `catch`.
#[derive(Debug, Clone, PartialEq)]
pub struct Try {
    pub try_: Vec<Task>,
    pub errors: ErrorFilter,
    pub as_: String,
    pub when: Option<Expr>,
    pub except_when: Option<Expr>,
    pub retry: Option<Retry>,
    pub do_: Vec<Task>,
}

/// `catch.errors.with`: static values an error must have to be caught.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorFilter {
    pub type_: Option<String>,
    pub status: Option<i64>,
    pub instance: Option<String>,
    pub title: Option<String>,
    pub details: Option<String>,
}

/// A retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub when: Option<Expr>,
    pub except_when: Option<Expr>,
    pub delay: Duration,
    pub backoff: Backoff,
    pub attempts: Option<u32>,
    pub attempt_duration: Option<Duration>,
    pub total_duration: Option<Duration>,
    pub jitter: Option<(Duration, Duration)>,
}

/// How the delay grows between retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    Constant,
    Linear,
    Exponential,
}

/// A whole definition in the mbx profile.
#[derive(Debug, Clone)]
pub struct Definition {
    /// `document.namespace`: the mbx application.
    pub namespace: String,
    /// `document.name`: the orchestration's name.
    pub name: String,
    /// `document.version` (semver).
    pub version: String,
    /// `document.dsl`.
    pub dsl: String,
    /// The document as JSON, exactly as written (what is stored and exported).
    pub document: serde_json::Value,
    /// `schedule.on`: the messages that start an instance.
    pub activation: Consume,
    pub input_from: Option<Template>,
    pub output_as: Option<Template>,
    pub timeout: Option<Wait>,
    pub tasks: Vec<Task>,
}

impl EventFilter {
    /// The filter's shape: the sorted names of the properties it fixes (its `with` and
    /// its correlations): a message carrying them has a key routing looks up.
    pub fn shape(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .with
            .keys()
            .cloned()
            .chain(self.correlate.iter().map(|c| c.property.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The exact values as text (how routing compares them).
    pub fn with_text(&self) -> BTreeMap<String, String> {
        self.with
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }
}

impl Definition {
    /// Every shape of the definition's correlated event filters (its activation's and
    /// its listens'), sorted: what routing computes keys for.
    pub fn shapes(&self) -> Vec<Vec<String>> {
        fn listens<'a>(tasks: &'a [Task], out: &mut Vec<&'a EventFilter>) {
            for t in tasks {
                match &t.kind {
                    TaskKind::Listen(l) => out.extend(l.to.filters()),
                    TaskKind::Do(inner) => listens(inner, out),
                    TaskKind::For(f) => listens(&f.do_, out),
                    TaskKind::Fork { branches, .. } => listens(branches, out),
                    TaskKind::Try(t) => {
                        listens(&t.try_, out);
                        listens(&t.do_, out);
                    }
                    _ => {}
                }
            }
        }
        let mut filters: Vec<&EventFilter> = self.activation.filters().iter().collect();
        listens(&self.tasks, &mut filters);
        let mut shapes: Vec<Vec<String>> = filters
            .into_iter()
            .filter(|f| !f.correlate.is_empty())
            .map(EventFilter::shape)
            .collect();
        if self.calls_ports() {
            // a call through a send port waits for the answer carrying its token
            shapes.push(vec![mbx_vocabulary::system::CORRELATION_TOKEN.to_owned()]);
        }
        shapes.sort();
        shapes.dedup();
        shapes
    }

    /// Whether a task calls through a send port (`call: NAME@mbx`).
    pub fn calls_ports(&self) -> bool {
        fn any(tasks: &[Task]) -> bool {
            tasks.iter().any(|t| match &t.kind {
                TaskKind::CallPort { .. } => true,
                TaskKind::Do(inner)
                | TaskKind::Fork {
                    branches: inner, ..
                } => any(inner),
                TaskKind::For(f) => any(&f.do_),
                TaskKind::Try(t) => any(&t.try_) || any(&t.do_),
                _ => false,
            })
        }
        any(&self.tasks)
    }
}
