//! The interpreter: runs an instance from its persisted [`State`] until it waits, calls
//! out, ends or faults. Pure and deterministic — it reads only the state, the messages
//! held for the instance and the step's database time — so a host that dies mid-step
//! leaves a state another replays to the same result. What it produces besides the new
//! state ([`Effects`]: messages to publish, held messages consumed) commits in the same
//! transaction as that state: a persistence point.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::expr::{Args, EvalError, Expr};
use crate::model::*;

/// The DSL's standard error types.
pub mod errors {
    pub const EXPRESSION: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/expression";
    pub const RUNTIME: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/runtime";
    pub const COMMUNICATION: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/communication";
    pub const TIMEOUT: &str = "https://serverlessworkflow.io/spec/1.0.0/errors/timeout";
}

/// An error as the DSL describes it (RFC 7807), `instance` the task's reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowError {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub instance: String,
}

impl WorkflowError {
    fn new(type_: &str, status: i64, detail: impl Into<String>, instance: &str) -> Self {
        WorkflowError {
            type_: type_.to_owned(),
            status,
            title: None,
            detail: Some(detail.into()),
            instance: instance.to_owned(),
        }
    }

    fn expression(e: EvalError, instance: &str) -> Self {
        WorkflowError::new(errors::EXPRESSION, 400, e.to_string(), instance)
    }
}

/// A message as an instance sees it: its id and its CloudEvent envelope (with
/// `properties`, the promoted properties by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub envelope: Value,
}

impl Event {
    /// A promoted property's value (`mbx.MessageType` is the envelope's `type`).
    pub fn property(&self, name: &str) -> Option<&Value> {
        let prop = self.envelope["properties"].get(name);
        match (prop, name) {
            (None, mbx_vocabulary::system::MESSAGE_TYPE) => self.envelope.get("type"),
            (p, _) => p,
        }
    }

    /// Whether every exact value of `with` is this message's.
    pub fn matches(&self, with: &BTreeMap<String, Value>) -> bool {
        with.iter()
            .all(|(name, want)| self.property(name).is_some_and(|v| same(v, want)))
    }

    fn read(&self, read: Read) -> Value {
        match read {
            Read::Envelope => self.envelope.clone(),
            Read::Data => self.envelope.get("data").cloned().unwrap_or(Value::Null),
            Read::Raw => match self.envelope.get("data") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(other) => Value::String(other.to_string()),
                None => Value::Null,
            },
        }
    }
}

/// Property values compare as text: a promoted `int` 7 equals an expected "7".
fn same(a: &Value, b: &Value) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    a == b || text(a) == text(b)
}

/// Where an instance stands between steps: what is persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub context: Value,
    /// The workflow's raw input (the activating messages).
    pub input: Value,
    pub started_at: f64,
    /// The task lists being run, innermost last; empty once the instance completed (a
    /// faulted one keeps them, standing on its failed task, for a resume).
    pub stack: Vec<Frame>,
    /// How many external calls this instance has prepared (idempotency keys).
    pub calls: u64,
    /// The activation's correlation values (property → value), fixed by the messages
    /// that activated the instance: what makes it the one instance of a convoy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub correlation: BTreeMap<String, Value>,
    /// The tokens of calls through send ports that failed here (their requests
    /// suspended): an answer from an operator's later resume still reaches the instance,
    /// which never takes it, so it becomes a zombie naming the instance when it ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub late_answers: Vec<String>,
}

/// One task list being run and the position in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// The list's reference (`/do`, `/do/2/checkStock/do`, `/do/3/t/try`).
    pub list: String,
    pub index: usize,
    /// The raw input of the task at `index`.
    pub input: Value,
    /// The transformed input of the task at `index`, once it began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub began: Option<Value>,
    /// Variables in scope (`for`'s `each` and `at`, `catch`'s `as`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scope: BTreeMap<String, Value>,
    pub kind: FrameKind,
    /// What the task at `index` waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// The list does not start before this time (a retry's delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<f64>,
}

/// Why a list is being run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FrameKind {
    Do,
    For {
        items: Vec<Value>,
        position: usize,
    },
    Try {
        attempt: u32,
        first_failed_at: Option<f64>,
    },
    Catch,
    /// A fork's branches, run one after another from the same input (docs/orchestrations.md).
    Fork {
        input: Value,
        outputs: Vec<Value>,
        compete: bool,
    },
}

/// What a task waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "snake_case")]
pub enum Pending {
    Listen {
        deadline: Option<f64>,
        consumed: Vec<Value>,
    },
    Timer {
        due: f64,
    },
    Call {
        request: CallRequest,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response: Option<CallResponse>,
    },
}

/// An external call, recorded at a persistence point before it is sent and resent
/// byte-identical on a replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    pub target: CallTarget,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub idempotency_key: String,
    pub output: String,
    pub redirect: bool,
}

/// Where a call goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case")]
pub enum CallTarget {
    Http { url: String },
    SendPort { port: String },
}

/// What came back from a call (`status` 0: it could not be sent at all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// A message the step publishes when it commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Emitted {
    pub message_type: Option<String>,
    pub source: Option<String>,
    /// The CloudEvent `id` given: the publish's source id, so a replay cannot publish twice.
    pub id: Option<String>,
    pub subject: Option<String>,
    pub content_type: String,
    /// The body: JSON written out, or a string's text for a non-JSON content type.
    pub body: Option<String>,
    /// Promoted properties by name (`Order.Id`).
    pub properties: BTreeMap<String, Value>,
    /// `x-mbx-republish`: the id of a consumed message published again as it is.
    pub republish: Option<String>,
}

/// What a step does besides changing the state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    pub emitted: Vec<Emitted>,
    /// The held messages the step consumed, by id.
    pub consumed: Vec<String>,
}

impl Effects {
    /// These effects, then `later`'s.
    pub fn then(mut self, mut later: Effects) -> Effects {
        self.emitted.append(&mut later.emitted);
        self.consumed.append(&mut later.consumed);
        self
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Waiting for a message, or until `wake_at` (a timer or a listen's timeout).
    Waiting {
        wake_at: Option<f64>,
    },
    /// A call to make: commit the state, send, then [`State::answer`] and run again.
    Call(CallRequest),
    Completed(Value),
    Faulted(WorkflowError),
}

/// What a task did when run once.
enum Step {
    /// It finished with this raw output, going on as `then` says (a switch's case may
    /// override it).
    Done(Value, Option<Flow>),
    Push(Box<Frame>),
    Wait(Option<f64>),
    Call(CallRequest),
    Fail(WorkflowError),
}

impl State {
    /// The task path the instance stands on (the top frame's task), if it has not ended.
    pub fn task_path(&self, def: &Definition) -> Option<String> {
        let runner = Runner::new(def, "");
        let top = self.stack.last()?;
        Some(
            runner
                .list(&top.list)
                .get(top.index)
                .map_or_else(|| top.list.clone(), |t| t.reference.clone()),
        )
    }

    /// Whether the instance, standing where it does in `from`, can go on in `to` (an
    /// operator's resume onto another version): every frame's list exists there and its
    /// task has the same path. `Err` names the first path `to` lacks.
    pub fn fits(&self, from: &Definition, to: &Definition) -> Result<(), String> {
        let (old, new) = (Runner::new(from, ""), Runner::new(to, ""));
        for f in &self.stack {
            let path = |r: &Runner<'_>| r.list(&f.list).get(f.index).map(|t| t.reference.clone());
            let was = path(&old);
            let fits = match &was {
                Some(_) => path(&new) == was,
                // past its list's end: the list only has to exist with at least as many tasks
                None => !new.list(&f.list).is_empty() && new.list(&f.list).len() >= f.index,
            };
            if !fits {
                return Err(was.unwrap_or_else(|| f.list.clone()));
            }
        }
        Ok(())
    }

    /// A new instance's state, activated by `events` at `now`.
    pub fn activate(def: &Definition, events: &[Event], now: f64) -> Result<State, WorkflowError> {
        let raw: Value = events.iter().map(|e| e.envelope.clone()).collect();
        let mut state = State {
            context: json!({}),
            input: raw.clone(),
            started_at: now,
            stack: Vec::new(),
            calls: 0,
            correlation: BTreeMap::new(),
            late_answers: Vec::new(),
        };
        for c in def.activation.filters().iter().flat_map(|f| &f.correlate) {
            if let Some(v) = events.iter().find_map(|e| e.property(&c.property)) {
                state
                    .correlation
                    .entry(c.property.clone())
                    .or_insert_with(|| v.clone());
            }
        }
        let input = match &def.input_from {
            Some(t) => eval_template(t, &raw, &state.args(now, &Value::Null, "/input"))
                .map_err(|e| WorkflowError::expression(e, "/input"))?,
            None => raw,
        };
        state
            .stack
            .push(Frame::new("/do", input, BTreeMap::new(), FrameKind::Do));
        Ok(state)
    }

    /// Records the answer to the call the last step asked for.
    pub fn answer(&mut self, response: CallResponse) {
        if let Some(Frame {
            pending: Some(Pending::Call { response: slot, .. }),
            ..
        }) = self.stack.last_mut()
        {
            *slot = Some(response);
        }
    }

    fn args(&self, now: f64, input: &Value, reference: &str) -> Args {
        Args {
            context: self.context.clone(),
            input: input.clone(),
            workflow: json!({ "input": self.input, "startedAt": { "epoch": { "seconds": self.started_at as i64 } } }),
            task: json!({ "reference": reference }),
            runtime: json!({ "name": "mbx", "version": env!("CARGO_PKG_VERSION") }),
            now,
            scope: self
                .stack
                .last()
                .map(|f| f.scope.clone())
                .unwrap_or_default(),
            ..Args::default()
        }
    }
}

impl Frame {
    fn new(list: &str, input: Value, scope: BTreeMap<String, Value>, kind: FrameKind) -> Frame {
        Frame {
            list: list.to_owned(),
            index: 0,
            input,
            began: None,
            scope,
            kind,
            pending: None,
            not_before: None,
        }
    }
}

fn eval_template(t: &Template, input: &Value, args: &Args) -> Result<Value, EvalError> {
    Ok(match t {
        Template::Expr(e) => e.eval(input, args)?,
        Template::Literal(v) => v.clone(),
        Template::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| eval_template(i, input, args))
                .collect::<Result<_, _>>()?,
        ),
        Template::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), eval_template(v, input, args)?)))
                .collect::<Result<_, EvalError>>()?,
        ),
    })
}

fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}

/// Runs instances of one definition.
pub struct Runner<'d> {
    def: &'d Definition,
    lists: HashMap<String, &'d [Task]>,
    instance_id: String,
}

impl<'d> Runner<'d> {
    pub fn new(def: &'d Definition, instance_id: &str) -> Runner<'d> {
        let mut lists = HashMap::new();
        index_lists("/do", &def.tasks, &mut lists);
        Runner {
            def,
            lists,
            instance_id: instance_id.to_owned(),
        }
    }
}

fn index_lists<'d>(reference: &str, tasks: &'d [Task], lists: &mut HashMap<String, &'d [Task]>) {
    lists.insert(reference.to_owned(), tasks);
    for t in tasks {
        match &t.kind {
            TaskKind::Do(inner) => index_lists(&format!("{}/do", t.reference), inner, lists),
            TaskKind::For(f) => index_lists(&format!("{}/do", t.reference), &f.do_, lists),
            TaskKind::Fork { branches, .. } => {
                index_lists(&format!("{}/fork/branches", t.reference), branches, lists)
            }
            TaskKind::Try(t_) => {
                index_lists(&format!("{}/try", t.reference), &t_.try_, lists);
                index_lists(&format!("{}/catch/do", t.reference), &t_.do_, lists);
            }
            _ => {}
        }
    }
}

/// Tasks run in one step before the state is saved anyway (a long `for` becomes several
/// persistence points, each a bounded transaction).
pub const TASKS_PER_STEP: usize = 1_000;

impl Runner<'_> {
    /// Runs the instance from `state` until it waits, calls out, ends or faults. `held`:
    /// the messages routed to this instance and not yet consumed, in publication order.
    pub fn run(&self, state: &mut State, held: &[Event], now: f64) -> (Outcome, Effects) {
        let mut fx = Effects::default();
        for _ in 0..TASKS_PER_STEP {
            if let Some(outcome) = self.advance(state, held, now, &mut fx) {
                return (outcome, fx);
            }
        }
        (Outcome::Waiting { wake_at: Some(now) }, fx)
    }

    /// The task lists' tasks by reference.
    fn list(&self, reference: &str) -> &[Task] {
        self.lists.get(reference).copied().unwrap_or_default()
    }

    /// The task the top frame stands on, if any.
    fn current(&self, state: &State) -> Option<&Task> {
        let top = state.stack.last()?;
        self.list(&top.list).get(top.index)
    }

    /// One move: a task run once, or a list finished. `Some` when the step ends.
    fn advance(
        &self,
        state: &mut State,
        held: &[Event],
        now: f64,
        fx: &mut Effects,
    ) -> Option<Outcome> {
        let top = state.stack.last_mut()?;
        if let Some(not_before) = top.not_before {
            if not_before > now {
                return Some(Outcome::Waiting {
                    wake_at: Some(not_before),
                });
            }
            top.not_before = None;
        }
        let Some(task) = self.current(state) else {
            return self.finish_list(state, now);
        };
        match self.begin(state, task, now) {
            Err(e) => self.unwind(state, e, now),
            Ok(None) => {
                // `if` was false: the task is skipped, its input passed on unchanged
                let top = state.stack.last_mut()?;
                top.index += 1;
                None
            }
            Ok(Some(input)) => match self.run_task(state, task, &input, held, now, fx) {
                Step::Done(raw, flow) => self.complete(state, task, raw, flow, now),
                Step::Push(frame) => {
                    state.stack.push(*frame);
                    None
                }
                Step::Wait(wake_at) => Some(Outcome::Waiting { wake_at }),
                Step::Call(request) => Some(Outcome::Call(request)),
                Step::Fail(e) => self.unwind(state, e, now),
            },
        }
    }

    /// The task's transformed input, computed once when it begins; `None` if its `if`
    /// says to skip it.
    fn begin(
        &self,
        state: &mut State,
        task: &Task,
        now: f64,
    ) -> Result<Option<Value>, WorkflowError> {
        let top = state
            .stack
            .last()
            .ok_or_else(|| runtime_error("no frame", &task.reference))?;
        if let Some(began) = &top.began {
            return Ok(Some(began.clone()));
        }
        let raw = top.input.clone();
        let args = state.args(now, &raw, &task.reference);
        let fail = |e| WorkflowError::expression(e, &task.reference);
        if let Some(cond) = &task.base.if_ {
            if !truthy(&cond.eval(&raw, &args).map_err(fail)?) {
                return Ok(None);
            }
        }
        let input = match &task.base.input_from {
            Some(t) => eval_template(t, &raw, &args).map_err(fail)?,
            None => raw,
        };
        if let Some(top) = state.stack.last_mut() {
            top.began = Some(input.clone());
        }
        Ok(Some(input))
    }

    /// A task finished with `raw` output: `output.as`, `export.as`, then its flow.
    fn complete(
        &self,
        state: &mut State,
        task: &Task,
        raw: Value,
        flow: Option<Flow>,
        now: f64,
    ) -> Option<Outcome> {
        let input = state
            .stack
            .last()
            .and_then(|f| f.began.clone())
            .unwrap_or(Value::Null);
        let args = state.args(now, &input, &task.reference);
        let fail = |e| WorkflowError::expression(e, &task.reference);
        let output = match &task.base.output_as {
            Some(t) => match eval_template(t, &raw, &args) {
                Ok(v) => v,
                Err(e) => return self.unwind(state, fail(e), now),
            },
            None => raw,
        };
        if let Some(t) = &task.base.export_as {
            let mut args = args;
            args.output = output.clone();
            match eval_template(t, &output, &args) {
                Ok(context) => state.context = context,
                Err(e) => return self.unwind(state, fail(e), now),
            }
        }
        if let Some(top) = state.stack.last_mut() {
            top.began = None;
            top.pending = None;
        }
        self.follow(
            state,
            flow.unwrap_or_else(|| task.base.then.clone()),
            output,
            now,
        )
    }

    /// Goes where `flow` says with `output` as the next task's input.
    fn follow(&self, state: &mut State, flow: Flow, output: Value, now: f64) -> Option<Outcome> {
        let len = state
            .stack
            .last()
            .map_or(0, |top| self.list(&top.list).len());
        let target = match &flow {
            Flow::Goto(name) => state
                .stack
                .last()
                .and_then(|top| self.list(&top.list).iter().position(|t| &t.name == name)),
            _ => None,
        };
        let top = state.stack.last_mut()?;
        if let FrameKind::Fork {
            outputs,
            compete,
            input,
        } = &mut top.kind
        {
            // a branch ended: its output is kept, the next branch starts from the fork's input
            outputs.push(output);
            top.input = input.clone();
            top.index = if *compete { len } else { top.index + 1 };
            return None;
        }
        top.input = output.clone();
        match flow {
            Flow::Continue => top.index += 1,
            Flow::Exit => top.index = len,
            Flow::Goto(_) => top.index = target.unwrap_or(len),
            Flow::End => {
                state.stack.clear();
                return Some(self.finish_workflow(state, output, now));
            }
        }
        None
    }

    fn finish_workflow(&self, state: &State, output: Value, now: f64) -> Outcome {
        match &self.def.output_as {
            None => Outcome::Completed(output),
            Some(t) => match eval_template(t, &output, &state.args(now, &Value::Null, "/output")) {
                Ok(v) => Outcome::Completed(v),
                Err(e) => Outcome::Faulted(WorkflowError::expression(e, "/output")),
            },
        }
    }

    /// The top list ran out: the next `for` iteration, or the composite task above it
    /// completes with the list's output.
    fn finish_list(&self, state: &mut State, now: f64) -> Option<Outcome> {
        let frame = state.stack.pop()?;
        let output = match frame.kind {
            FrameKind::For { items, position } => {
                match self.next_iteration(
                    state,
                    &frame.list,
                    items,
                    position + 1,
                    frame.scope,
                    frame.input.clone(),
                    now,
                ) {
                    Ok(Some(next)) => {
                        state.stack.push(next);
                        return None;
                    }
                    Ok(None) => frame.input,
                    Err(e) => return self.unwind(state, e, now),
                }
            }
            FrameKind::Fork {
                outputs, compete, ..
            } if compete => outputs.into_iter().next().unwrap_or(Value::Null),
            FrameKind::Fork { outputs, .. } => Value::Array(outputs),
            FrameKind::Do | FrameKind::Try { .. } | FrameKind::Catch => frame.input,
        };
        if state.stack.is_empty() {
            return Some(self.finish_workflow(state, output, now));
        }
        let task = self.current(state)?;
        self.complete(state, task, output, None, now)
    }
}

/// A nested list to run: the step pushes its frame.
fn push(list: &str, input: &Value, scope: BTreeMap<String, Value>, kind: FrameKind) -> Step {
    Step::Push(Box::new(Frame::new(list, input.clone(), scope, kind)))
}

fn runtime_error(detail: &str, instance: &str) -> WorkflowError {
    WorkflowError::new(errors::RUNTIME, 500, detail, instance)
}

impl Runner<'_> {
    /// The frame of iteration `position` of the `for` task the top frame stands on, or
    /// `None` when the items ran out or `while` says to stop.
    #[allow(clippy::too_many_arguments)]
    fn next_iteration(
        &self,
        state: &State,
        list: &str,
        items: Vec<Value>,
        position: usize,
        scope: BTreeMap<String, Value>,
        input: Value,
        now: f64,
    ) -> Result<Option<Frame>, WorkflowError> {
        let Some(task) = self.current(state) else {
            return Ok(None);
        };
        let TaskKind::For(f) = &task.kind else {
            return Ok(None);
        };
        let Some(item) = items.get(position).cloned() else {
            return Ok(None);
        };
        let mut scope = scope;
        scope.insert(f.each.clone(), item);
        scope.insert(f.at.clone(), Value::from(position));
        if let Some(cond) = &f.while_ {
            let mut args = state.args(now, &input, &task.reference);
            args.scope = scope.clone();
            let go = cond
                .eval(&input, &args)
                .map_err(|e| WorkflowError::expression(e, &task.reference))?;
            if !truthy(&go) {
                return Ok(None);
            }
        }
        Ok(Some(Frame::new(
            list,
            input,
            scope,
            FrameKind::For { items, position },
        )))
    }

    /// Runs `task` once on its transformed `input`.
    fn run_task(
        &self,
        state: &mut State,
        task: &Task,
        input: &Value,
        held: &[Event],
        now: f64,
        fx: &mut Effects,
    ) -> Step {
        let reference = &task.reference;
        let scope = state
            .stack
            .last()
            .map(|f| f.scope.clone())
            .unwrap_or_default();
        let args = state.args(now, input, reference);
        let eval = |t: &Template| {
            eval_template(t, input, &args).map_err(|e| WorkflowError::expression(e, reference))
        };
        match &task.kind {
            TaskKind::Set(t) => match eval(t) {
                Ok(v) => Step::Done(v, None),
                Err(e) => Step::Fail(e),
            },
            TaskKind::Do(_) => push(&format!("{reference}/do"), input, scope, FrameKind::Do),
            TaskKind::Try(_) => push(
                &format!("{reference}/try"),
                input,
                scope,
                FrameKind::Try {
                    attempt: 0,
                    first_failed_at: None,
                },
            ),
            TaskKind::Fork { compete, .. } => push(
                &format!("{reference}/fork/branches"),
                input,
                scope,
                FrameKind::Fork {
                    input: input.clone(),
                    outputs: Vec::new(),
                    compete: *compete,
                },
            ),
            TaskKind::For(f) => self.start_for(state, task, f, input, now),
            TaskKind::Switch(cases) => switch(cases, input, &args, reference),
            TaskKind::Emit(e) => match emitted(e, input, &args, reference) {
                Ok(m) => {
                    fx.emitted.push(m);
                    Step::Done(input.clone(), None)
                }
                Err(e) => Step::Fail(e),
            },
            TaskKind::Raise(e) => Step::Fail(raised(e, input, &args, reference)),
            TaskKind::Wait(w) => self.wait(state, task, w, input, &args, now),
            TaskKind::Listen(l) => self.listen(state, task, l, input, held, now, fx),
            TaskKind::CallHttp(_) | TaskKind::CallPort { .. } => {
                self.call(state, task, input, held, now, fx)
            }
        }
    }

    fn start_for(&self, state: &State, task: &Task, f: &For, input: &Value, now: f64) -> Step {
        let args = state.args(now, input, &task.reference);
        let items = match f.in_.eval(input, &args) {
            Ok(Value::Array(items)) => items,
            Ok(other) => {
                return Step::Fail(runtime_error(
                    &format!("for.in gave {other}, not an array"),
                    &task.reference,
                ))
            }
            Err(e) => return Step::Fail(WorkflowError::expression(e, &task.reference)),
        };
        let scope = state
            .stack
            .last()
            .map(|f| f.scope.clone())
            .unwrap_or_default();
        let list = format!("{}/do", task.reference);
        match self.next_iteration(state, &list, items, 0, scope, input.clone(), now) {
            Ok(Some(frame)) => Step::Push(Box::new(frame)),
            Ok(None) => Step::Done(input.clone(), None),
            Err(e) => Step::Fail(e),
        }
    }

    /// A durable timer: its due time is fixed when the task begins and saved with it.
    fn wait(
        &self,
        state: &mut State,
        task: &Task,
        w: &Wait,
        input: &Value,
        args: &Args,
        now: f64,
    ) -> Step {
        let due = match state.stack.last().and_then(|f| f.pending.clone()) {
            Some(Pending::Timer { due }) => due,
            _ => match duration_secs(w, input, args, &task.reference) {
                Ok(secs) => now + secs,
                Err(e) => return Step::Fail(e),
            },
        };
        if due <= now {
            return Step::Done(input.clone(), None);
        }
        if let Some(top) = state.stack.last_mut() {
            top.pending = Some(Pending::Timer { due });
        }
        Step::Wait(Some(due))
    }
}

/// A duration in seconds: fixed, or an expression giving an ISO 8601 text or seconds.
fn duration_secs(
    w: &Wait,
    input: &Value,
    args: &Args,
    reference: &str,
) -> Result<f64, WorkflowError> {
    match w {
        Wait::Fixed(d) => Ok(d.as_secs_f64()),
        Wait::Expr(e) => match e.eval(input, args) {
            Ok(Value::String(s)) => crate::profile::iso_duration(&s)
                .map(|d| d.as_secs_f64())
                .map_err(|m| runtime_error(&m, reference)),
            Ok(Value::Number(n)) => Ok(n.as_f64().unwrap_or(0.0)),
            Ok(other) => Err(runtime_error(
                &format!("a duration, not {other}"),
                reference,
            )),
            Err(e) => Err(WorkflowError::expression(e, reference)),
        },
    }
}

fn switch(cases: &[Case], input: &Value, args: &Args, reference: &str) -> Step {
    for case in cases {
        let hit = match &case.when {
            None => true,
            Some(cond) => match cond.eval(input, args) {
                Ok(v) => truthy(&v),
                Err(e) => return Step::Fail(WorkflowError::expression(e, reference)),
            },
        };
        if hit {
            return Step::Done(input.clone(), Some(case.then.clone()));
        }
    }
    Step::Done(input.clone(), None)
}

fn raised(e: &ErrorDef, input: &Value, args: &Args, reference: &str) -> WorkflowError {
    let text = |t: &Template| -> Result<String, WorkflowError> {
        match eval_template(t, input, args) {
            Ok(Value::String(s)) => Ok(s),
            Ok(other) => Ok(other.to_string()),
            Err(e) => Err(WorkflowError::expression(e, reference)),
        }
    };
    let opt = |t: &Option<Template>| t.as_ref().map(text).transpose();
    match (
        text(&e.type_),
        opt(&e.title),
        opt(&e.detail),
        opt(&e.instance),
    ) {
        (Ok(type_), Ok(title), Ok(detail), Ok(instance)) => WorkflowError {
            type_,
            status: e.status,
            title,
            detail,
            instance: instance.unwrap_or_else(|| reference.to_owned()),
        },
        (Err(x), ..) | (_, Err(x), ..) | (_, _, Err(x), _) | (.., Err(x)) => x,
    }
}

/// The message an `emit` publishes.
fn emitted(
    e: &Emit,
    input: &Value,
    args: &Args,
    reference: &str,
) -> Result<Emitted, WorkflowError> {
    let fail = |x| WorkflowError::expression(x, reference);
    let mut m = Emitted {
        message_type: None,
        source: None,
        id: None,
        subject: None,
        content_type: "application/json".to_owned(),
        body: None,
        properties: BTreeMap::new(),
        republish: None,
    };
    let mut data = None;
    for (key, t) in &e.with {
        let v = eval_template(t, input, args).map_err(fail)?;
        let text = || match &v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match key.as_str() {
            "type" => m.message_type = Some(text()),
            "source" => m.source = Some(text()),
            "datacontenttype" => m.content_type = text(),
            "data" => data = Some(v),
            "id" => m.id = Some(text()),
            "subject" => m.subject = Some(text()),
            _ => {
                m.properties.insert(key.clone(), v);
            }
        }
    }
    m.body = data.map(|d| match d {
        Value::String(s) if !is_json_document(&m.content_type) => s,
        other => other.to_string(),
    });
    if let Some(r) = &e.republish {
        m.republish = Some(match r.eval(input, args).map_err(fail)? {
            Value::String(s) => s,
            other => other.to_string(),
        });
    }
    Ok(m)
}

/// Whether a content type is one JSON document, so that a string `data` is written as a
/// JSON string; JSON lines (`application/x-ndjson`, `application/jsonl`) and text types
/// take the string's text as it is.
fn is_json_document(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.contains("json") && !essence.ends_with("ndjson") && !essence.ends_with("jsonl")
}

/// The values a message's properties must have for `filter` on this instance: each
/// correlation's `expect`, evaluated now.
fn expectations(
    filter: &EventFilter,
    input: &Value,
    args: &Args,
    reference: &str,
) -> Result<Vec<(String, Value)>, WorkflowError> {
    filter
        .correlate
        .iter()
        .filter_map(|c| c.expect.as_ref().map(|e| (c, e)))
        .map(|(c, e)| {
            eval_template(e, input, args)
                .map(|v| (c.property.clone(), v))
                .map_err(|x| WorkflowError::expression(x, reference))
        })
        .collect()
}

fn takes(event: &Event, filter: &EventFilter, expected: &[(String, Value)]) -> bool {
    event.matches(&filter.with)
        && expected
            .iter()
            .all(|(name, want)| event.property(name).is_some_and(|v| same(v, want)))
}

impl Runner<'_> {
    /// A listen: takes what it waits for from the messages held for the instance, or
    /// waits (until its timeout, if it has one).
    #[allow(clippy::too_many_arguments)]
    fn listen(
        &self,
        state: &mut State,
        task: &Task,
        l: &Listen,
        input: &Value,
        held: &[Event],
        now: f64,
        fx: &mut Effects,
    ) -> Step {
        let reference = &task.reference;
        let args = state.args(now, input, reference);
        let (deadline, mut consumed) = match state.stack.last().and_then(|f| f.pending.clone()) {
            Some(Pending::Listen { deadline, consumed }) => (deadline, consumed),
            _ => match &task.base.timeout {
                None => (None, Vec::new()),
                Some(w) => match duration_secs(w, input, &args, reference) {
                    Ok(secs) => (Some(now + secs), Vec::new()),
                    Err(e) => return Step::Fail(e),
                },
            },
        };
        let mut expected = Vec::new();
        for f in l.to.filters() {
            match expectations(f, input, &args, reference) {
                Ok(e) => expected.push(e),
                Err(e) => return Step::Fail(e),
            }
        }
        match take(l, &expected, held, &mut consumed, &args, fx) {
            Ok(Some(output)) => return Step::Done(output, None),
            Ok(None) => {}
            Err(x) => return Step::Fail(WorkflowError::expression(x, reference)),
        }
        if deadline.is_some_and(|d| d <= now) {
            return Step::Fail(WorkflowError::new(
                errors::TIMEOUT,
                408,
                "the listen timed out",
                reference,
            ));
        }
        if let Some(top) = state.stack.last_mut() {
            top.pending = Some(Pending::Listen { deadline, consumed });
        }
        Step::Wait(deadline)
    }

    /// A call: prepared (and saved) first, sent by the host, then its answer read. A
    /// call through a send port is sent by the step's commit (its request published to
    /// the port); its answer is a message carrying the call's token.
    fn call(
        &self,
        state: &mut State,
        task: &Task,
        input: &Value,
        held: &[Event],
        now: f64,
        fx: &mut Effects,
    ) -> Step {
        let reference = &task.reference;
        match state.stack.last().and_then(|f| f.pending.clone()) {
            Some(Pending::Call {
                response: Some(r),
                request,
            }) => answered(&request, r, reference),
            Some(Pending::Call {
                request,
                response: None,
            }) if matches!(request.target, CallTarget::SendPort { .. }) => {
                let token = &request.idempotency_key;
                let Some(answer) = held.iter().find(|e| {
                    !fx.consumed.contains(&e.id)
                        && e.property(mbx_vocabulary::system::CORRELATION_TOKEN)
                            .is_some_and(|v| v.as_str() == Some(token))
                }) else {
                    return Step::Wait(None);
                };
                fx.consumed.push(answer.id.clone());
                let response = port_answer(answer);
                if answered(&request, response.clone(), reference).is_fail() {
                    state.late_answers.push(token.clone());
                }
                answered(&request, response, reference)
            }
            Some(Pending::Call {
                request,
                response: None,
            }) => Step::Call(request),
            _ => {
                let args = state.args(now, input, reference);
                let key = format!("{}-{}", self.instance_id, state.calls);
                match prepare(task, input, &args, key) {
                    Ok(request) => {
                        state.calls += 1;
                        if let Some(top) = state.stack.last_mut() {
                            top.pending = Some(Pending::Call {
                                request: request.clone(),
                                response: None,
                            });
                        }
                        Step::Call(request)
                    }
                    Err(e) => Step::Fail(e),
                }
            }
        }
    }
}

/// A send port's answer as a call's response: its status (`http.StatusCode`; a port's
/// answer to a suspended request says 502) and its body.
fn port_answer(answer: &Event) -> CallResponse {
    let status = answer
        .property(mbx_vocabulary::STATUS_CODE)
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(200);
    let body = match &answer.envelope["data"] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    CallResponse {
        status,
        headers: BTreeMap::new(),
        body,
    }
}

impl Step {
    fn is_fail(&self) -> bool {
        matches!(self, Step::Fail(_))
    }
}

/// A call through send port `port` with `body`: its content type says what the body is.
fn port_call(port: &str, body: Option<Value>, idempotency_key: String) -> CallRequest {
    let content_type = match &body {
        Some(Value::String(s)) if s.trim_start().starts_with('<') => "application/xml",
        Some(Value::String(_)) => "text/plain; charset=utf-8",
        _ => "application/json",
    };
    CallRequest {
        target: CallTarget::SendPort {
            port: port.to_owned(),
        },
        method: "POST".to_owned(),
        headers: BTreeMap::from([("content-type".to_owned(), content_type.to_owned())]),
        body: body.map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        }),
        idempotency_key,
        output: "content".to_owned(),
        redirect: false,
    }
}

/// The request a call task sends, its expressions evaluated now.
fn prepare(
    task: &Task,
    input: &Value,
    args: &Args,
    idempotency_key: String,
) -> Result<CallRequest, WorkflowError> {
    let reference = &task.reference;
    let eval = |t: &Template| {
        eval_template(t, input, args).map_err(|e| WorkflowError::expression(e, reference))
    };
    let body_text = |v: Value| match v {
        Value::String(s) => s,
        other => other.to_string(),
    };
    match &task.kind {
        TaskKind::CallPort { port, body } => Ok(port_call(
            port,
            body.as_ref().map(eval).transpose()?,
            idempotency_key,
        )),
        TaskKind::CallHttp(h) => {
            let mut url = body_text(eval(&h.endpoint)?);
            let mut headers = BTreeMap::new();
            if let Some(t) = &h.headers {
                for (k, v) in eval(t)?.as_object().into_iter().flatten() {
                    headers.insert(k.clone(), body_text(v.clone()));
                }
            }
            if let Some(t) = &h.query {
                let pairs: Vec<String> = eval(t)?
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{}={}", encode(k), encode(&body_text(v.clone()))))
                    .collect();
                if !pairs.is_empty() {
                    url.push(if url.contains('?') { '&' } else { '?' });
                    url.push_str(&pairs.join("&"));
                }
            }
            let body = h.body.as_ref().map(eval).transpose()?;
            if matches!(body, Some(Value::Object(_) | Value::Array(_))) {
                headers
                    .entry("content-type".to_owned())
                    .or_insert_with(|| "application/json".to_owned());
            }
            Ok(CallRequest {
                target: CallTarget::Http { url },
                method: h.method.clone(),
                headers,
                body: body.map(body_text),
                idempotency_key,
                output: match h.output {
                    HttpOutput::Content => "content",
                    HttpOutput::Response => "response",
                    HttpOutput::Raw => "raw",
                }
                .to_owned(),
                redirect: h.redirect,
            })
        }
        _ => Err(runtime_error("not a call", reference)),
    }
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A call's answer as the task's output, or the `communication` error it is.
fn answered(request: &CallRequest, r: CallResponse, reference: &str) -> Step {
    let failed =
        r.status == 0 || r.status >= 400 || (!request.redirect && (300..400).contains(&r.status));
    if failed {
        let mut e = WorkflowError::new(
            errors::COMMUNICATION,
            if r.status == 0 {
                503
            } else {
                i64::from(r.status)
            },
            r.body.chars().take(500).collect::<String>(),
            reference,
        );
        e.title = Some(format!("the call answered {}", r.status));
        return Step::Fail(e);
    }
    let content = serde_json::from_str(&r.body).unwrap_or_else(|_| Value::String(r.body.clone()));
    let output = match request.output.as_str() {
        "response" => json!({ "statusCode": r.status, "headers": r.headers, "content": content }),
        "raw" => Value::String(r.body),
        _ => content,
    };
    Step::Done(output, None)
}

/// No `try` caught `error`: the instance faults, standing at the failed task (`stack`
/// as it was), which a resume runs again from its input (its call prepared anew, its
/// wait started again).
fn faulted(state: &mut State, stack: Vec<Frame>, error: WorkflowError) -> Outcome {
    state.stack = stack;
    if let Some(top) = state.stack.last_mut() {
        top.began = None;
        top.pending = None;
        top.not_before = None;
    }
    Outcome::Faulted(error)
}

impl Runner<'_> {
    /// An error at the top frame: the nearest `try` that catches it handles it (a retry
    /// after its delay, its `catch.do`, or nothing); none does — the instance faults.
    fn unwind(&self, state: &mut State, error: WorkflowError, now: f64) -> Option<Outcome> {
        let at_fault = state.stack.clone();
        while let Some(frame) = state.stack.pop() {
            let FrameKind::Try {
                attempt,
                first_failed_at,
            } = frame.kind
            else {
                continue;
            };
            let Some(task) = self.current(state) else {
                break;
            };
            let TaskKind::Try(t) = &task.kind else { break };
            let input = state
                .stack
                .last()
                .and_then(|f| f.began.clone())
                .unwrap_or(Value::Null);
            let scope = state
                .stack
                .last()
                .map(|f| f.scope.clone())
                .unwrap_or_default();
            let mut caught_scope = scope.clone();
            caught_scope.insert(
                t.as_.clone(),
                serde_json::to_value(&error).unwrap_or(Value::Null),
            );
            let mut args = state.args(now, &input, &task.reference);
            args.scope = caught_scope.clone();
            if !catches(t, &error, &args) {
                continue;
            }
            let first = first_failed_at.unwrap_or(now);
            if let Some(delay) = t
                .retry
                .as_ref()
                .and_then(|r| retry_delay(r, attempt, first, &error, &args, now, &self.instance_id))
            {
                let mut again = Frame::new(
                    &format!("{}/try", task.reference),
                    input,
                    scope,
                    FrameKind::Try {
                        attempt: attempt + 1,
                        first_failed_at: Some(first),
                    },
                );
                again.not_before = Some(now + delay);
                state.stack.push(again);
                return None;
            }
            if t.do_.is_empty() {
                return self.complete(state, task, input, None, now);
            }
            state.stack.push(Frame::new(
                &format!("{}/catch/do", task.reference),
                input,
                caught_scope,
                FrameKind::Catch,
            ));
            return None;
        }
        Some(faulted(state, at_fault, error))
    }

    /// The correlations this instance is subscribed by now: each listen's filters whose
    /// `expect` can be evaluated on the context alone, with those values. A message that
    /// matches one is held for the instance even before the listen runs.
    pub fn subscriptions(&self, state: &State, now: f64) -> Vec<Subscription> {
        let args = state.args(now, &Value::Null, "");
        let mut out = Vec::new();
        for tasks in self.lists.values() {
            for task in tasks.iter() {
                let TaskKind::Listen(l) = &task.kind else {
                    continue;
                };
                for f in l.to.filters() {
                    let Ok(values) = expectations(f, &Value::Null, &args, &task.reference) else {
                        continue;
                    };
                    if values.is_empty() || values.iter().any(|(_, v)| v.is_null()) {
                        continue;
                    }
                    let sub = Subscription {
                        with: f.with.clone(),
                        correlation: values,
                    };
                    if !out.contains(&sub) {
                        out.push(sub);
                    }
                }
            }
        }
        // the answers of calls through send ports: waited for, or late
        let waited = state.stack.iter().filter_map(|f| match &f.pending {
            Some(Pending::Call {
                request,
                response: None,
            }) if matches!(request.target, CallTarget::SendPort { .. }) => {
                Some(request.idempotency_key.clone())
            }
            _ => None,
        });
        for token in waited.chain(state.late_answers.iter().cloned()) {
            let sub = Subscription {
                with: BTreeMap::new(),
                correlation: vec![(
                    mbx_vocabulary::system::CORRELATION_TOKEN.to_owned(),
                    Value::String(token),
                )],
            };
            if !out.contains(&sub) {
                out.push(sub);
            }
        }
        out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        out
    }
}

/// A correlation subscription of an instance: exact values, static and correlated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub with: BTreeMap<String, Value>,
    pub correlation: Vec<(String, Value)>,
}

fn catches(t: &Try, error: &WorkflowError, args: &Args) -> bool {
    let f = &t.errors;
    let static_ok = f.type_.as_ref().is_none_or(|x| *x == error.type_)
        && f.status.is_none_or(|x| x == error.status)
        && f.instance.as_ref().is_none_or(|x| *x == error.instance)
        && f.title
            .as_ref()
            .is_none_or(|x| Some(x) == error.title.as_ref())
        && f.details
            .as_ref()
            .is_none_or(|x| Some(x) == error.detail.as_ref());
    let err = serde_json::to_value(error).unwrap_or(Value::Null);
    let holds = |e: &Expr| e.eval(&err, args).map(|v| truthy(&v)).unwrap_or(false);
    static_ok && t.when.as_ref().is_none_or(holds) && !t.except_when.as_ref().is_some_and(holds)
}

/// The delay before retry `attempt + 1`, or `None` when the policy gives up.
fn retry_delay(
    r: &Retry,
    attempt: u32,
    first_failed_at: f64,
    error: &WorkflowError,
    args: &Args,
    now: f64,
    instance: &str,
) -> Option<f64> {
    let err = serde_json::to_value(error).unwrap_or(Value::Null);
    let holds = |e: &Expr| e.eval(&err, args).map(|v| truthy(&v)).unwrap_or(false);
    if r.attempts.is_some_and(|n| attempt >= n)
        || r.total_duration
            .is_some_and(|d| now - first_failed_at >= d.as_secs_f64())
        || !r.when.as_ref().is_none_or(holds)
        || r.except_when.as_ref().is_some_and(holds)
    {
        return None;
    }
    let base = r.delay.as_secs_f64();
    let mut delay = match r.backoff {
        Backoff::Constant => base,
        Backoff::Linear => base * f64::from(attempt + 1),
        Backoff::Exponential => base * 2f64.powi(attempt.min(30) as i32),
    };
    if let Some((from, to)) = r.jitter {
        // deterministic jitter: the same instance and attempt always wait the same
        let seed = instance.bytes().fold(u64::from(attempt), |h, b| {
            h.wrapping_mul(31).wrapping_add(u64::from(b))
        });
        let span = (to.as_secs_f64() - from.as_secs_f64()).max(0.0);
        delay += from.as_secs_f64() + span * ((seed % 1_000) as f64 / 1_000.0);
    }
    Some(delay)
}

/// What a listen takes from the held messages now (its output), if it is all there.
/// `consumed`: what an `any … until` took in earlier steps, added to.
fn take(
    l: &Listen,
    expected: &[Vec<(String, Value)>],
    held: &[Event],
    consumed: &mut Vec<Value>,
    args: &Args,
    fx: &mut Effects,
) -> Result<Option<Value>, EvalError> {
    let already = fx.consumed.clone();
    let mut available = held.iter().filter(|e| !already.contains(&e.id));
    let taken: Option<Vec<&Event>> = match &l.to {
        Consume::One(f) => available
            .find(|e| takes(e, f, &expected[0]))
            .map(|e| vec![e]),
        Consume::Any {
            filters,
            until: None,
        } => available
            .find(|e| filters.iter().zip(expected).any(|(f, x)| takes(e, f, x)))
            .map(|e| vec![e]),
        Consume::All(filters) => {
            let candidates: Vec<&Event> = available.collect();
            let mut picked: Vec<&Event> = Vec::new();
            for (f, x) in filters.iter().zip(expected) {
                match candidates
                    .iter()
                    .find(|e| !picked.iter().any(|p| p.id == e.id) && takes(e, f, x))
                {
                    Some(e) => picked.push(e),
                    None => break,
                }
            }
            (picked.len() == filters.len()).then_some(picked)
        }
        Consume::Any {
            filters,
            until: Some(until),
        } => {
            // a sequential convoy: one message after another until `until` holds
            for e in available {
                if !filters.iter().zip(expected).any(|(f, x)| takes(e, f, x)) {
                    continue;
                }
                fx.consumed.push(e.id.clone());
                consumed.push(e.read(l.read));
                let so_far = Value::Array(consumed.clone());
                match until.eval(&so_far, args) {
                    Ok(v) if truthy(&v) => return Ok(Some(so_far)),
                    Ok(_) => {}
                    Err(x) => return Err(x),
                }
            }
            None
        }
    };
    Ok(taken.map(|events| {
        fx.consumed.extend(events.iter().map(|e| e.id.clone()));
        events.iter().map(|e| e.read(l.read)).collect()
    }))
}
