//! The mbx profile: which parts of the DSL a definition may use, checked over a document
//! the DSL's schema has accepted, building the typed [`Definition`]. A refusal names the
//! JSON pointer of what is outside the profile and what to do instead; the conformance
//! table in docs/orchestrations.md lists every task and field.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::expr::{runtime_expression, Expr};
use crate::model::*;

/// Something outside the mbx profile, or an expression that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ProfileError {
    /// JSON pointer into the document (`/do/1/chargeCard/call`).
    pub path: String,
    pub message: String,
}

type Result<T> = std::result::Result<T, ProfileError>;

fn refuse<T>(path: &str, message: impl Into<String>) -> Result<T> {
    Err(ProfileError {
        path: if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        },
        message: message.into(),
    })
}

/// The prefix every mbx extension key carries (non-portable, named in the conformance table).
pub const EXTENSION_PREFIX: &str = "x-mbx-";

/// The reusable components a definition declares (`use`), resolved by name.
#[derive(Default, Clone)]
struct Uses {
    errors: BTreeMap<String, ErrorDef>,
    /// Kept as written: compiled where a `catch` names them, with its error in scope.
    retries: BTreeMap<String, Value>,
    timeouts: BTreeMap<String, Wait>,
}

/// What a part of the document is checked in: the reusable components, and the
/// variables in scope (`for`'s `each` and `at`, `catch`'s `as`) its expressions may read.
#[derive(Default, Clone)]
pub(crate) struct Cx {
    uses: Uses,
    scope: Vec<String>,
}

impl Cx {
    /// This context with `names` in scope as well.
    fn with(&self, names: &[&str]) -> Cx {
        let mut cx = self.clone();
        cx.scope.extend(names.iter().map(|n| (*n).to_owned()));
        cx
    }
}

/// Checks a schema-valid document against the profile and builds its [`Definition`].
pub fn check(document: &Value) -> Result<Definition> {
    let top = object(document, "")?;
    let doc = object(&top["document"], "/document")?;
    let dsl = text(&doc["dsl"]);
    if !(dsl.starts_with("1.0.") && dsl.len() > 4) {
        return refuse(
            "/document/dsl",
            format!("DSL version {dsl} is not 1.0.x: write `dsl: 1.0.3`"),
        );
    }
    let name = text(&doc["name"]).to_owned();
    let namespace = text(&doc["namespace"]).to_owned();
    mbx_vocabulary::validate_name("orchestration", &name)
        .or_else(|e| refuse("/document/name", e))?;
    mbx_vocabulary::validate_name("application", &namespace)
        .or_else(|e| refuse("/document/namespace", e))?;
    for key in top.keys() {
        if ![
            "document", "input", "use", "do", "timeout", "output", "schedule",
        ]
        .contains(&key.as_str())
        {
            return refuse(&format!("/{key}"), "not in the mbx profile");
        }
    }
    let cx = Cx {
        uses: uses(top.get("use"))?,
        scope: Vec::new(),
    };
    let cx = &cx;
    let activation = schedule(top.get("schedule"), cx)?;
    let input_from = match top.get("input") {
        Some(input) => io(input, "/input", "from", cx)?,
        None => None,
    };
    let output_as = match top.get("output") {
        Some(output) => io(output, "/output", "as", cx)?,
        None => None,
    };
    let timeout = match top.get("timeout") {
        Some(t) => Some(timeout(t, "/timeout", cx)?),
        None => None,
    };
    let tasks = task_list(&top["do"], "/do", cx)?;
    Ok(Definition {
        namespace,
        name,
        version: text(&doc["version"]).to_owned(),
        dsl: dsl.to_owned(),
        document: document.clone(),
        activation,
        input_from,
        output_as,
        timeout,
        tasks,
    })
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    match value.as_object() {
        Some(map) => Ok(map),
        None => refuse(path, "must be an object"),
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn only(map: &Map<String, Value>, path: &str, allowed: &[&str], hint: &str) -> Result<()> {
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            return refuse(
                &format!("{path}/{key}"),
                format!("not in the mbx profile{hint}"),
            );
        }
    }
    Ok(())
}

/// A string that must be a runtime expression.
fn expr(value: &Value, path: &str, cx: &Cx) -> Result<Expr> {
    let code = value
        .as_str()
        .and_then(runtime_expression)
        .map(str::to_owned);
    let code = match code {
        Some(code) => code,
        // `if`, `when`, `in`… may be written without `${ }`: the DSL reads them as jq
        None => match value.as_str() {
            Some(s) if !s.trim().is_empty() => s.to_owned(),
            _ => return refuse(path, "must be a runtime expression (`${ … }`)"),
        },
    };
    Expr::compile_in(&code, &cx.scope)
        .or_else(|e| refuse(path, format!("the jq expression does not compile: {e}")))
}

fn opt_expr(map: &Map<String, Value>, key: &str, path: &str, cx: &Cx) -> Result<Option<Expr>> {
    map.get(key)
        .map(|v| expr(v, &format!("{path}/{key}"), cx))
        .transpose()
}

/// A value whose strings may be runtime expressions.
pub(crate) fn template(value: &Value, path: &str, cx: &Cx) -> Result<Template> {
    Ok(match value {
        Value::String(s) => {
            match runtime_expression(s) {
                Some(code) => Template::Expr(Expr::compile_in(code, &cx.scope).or_else(|e| {
                    refuse(path, format!("the jq expression does not compile: {e}"))
                })?),
                None => Template::Literal(value.clone()),
            }
        }
        Value::Array(items) => Template::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| template(v, &format!("{path}/{i}"), cx))
                .collect::<Result<_>>()?,
        ),
        Value::Object(map) => Template::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), template(v, &format!("{path}/{k}"), cx)?)))
                .collect::<Result<_>>()?,
        ),
        other => Template::Literal(other.clone()),
    })
}

/// `input` / `output` / `export`: only the transformation (`from` or `as`).
fn io(value: &Value, path: &str, key: &str, cx: &Cx) -> Result<Option<Template>> {
    let map = object(value, path)?;
    only(
        map,
        path,
        &[key],
        ": JSON schemas on inputs and outputs are not supported yet",
    )?;
    map.get(key)
        .map(|v| template(v, &format!("{path}/{key}"), cx))
        .transpose()
}

fn uses(value: Option<&Value>) -> Result<Uses> {
    let mut uses = Uses::default();
    let cx = &Cx::default();
    let Some(value) = value else { return Ok(uses) };
    let map = object(value, "/use")?;
    only(
        map,
        "/use",
        &["errors", "retries", "timeouts"],
        ": authentications, catalogs, extensions, functions and secrets are outside it (secrets are `env:`/`file:` references on send ports)",
    )?;
    if let Some(Value::Object(errors)) = map.get("errors") {
        for (name, e) in errors {
            uses.errors.insert(
                name.clone(),
                error_def(e, &format!("/use/errors/{name}"), cx)?,
            );
        }
    }
    if let Some(Value::Object(retries)) = map.get("retries") {
        for (name, r) in retries {
            retry(r, &format!("/use/retries/{name}"), &cx.with(&["error"]))?;
            uses.retries.insert(name.clone(), r.clone());
        }
    }
    if let Some(Value::Object(timeouts)) = map.get("timeouts") {
        for (name, t) in timeouts {
            let path = format!("/use/timeouts/{name}");
            let after = &object(t, &path)?["after"];
            uses.timeouts
                .insert(name.clone(), duration(after, &format!("{path}/after"), cx)?);
        }
    }
    Ok(uses)
}

fn schedule(value: Option<&Value>, cx: &Cx) -> Result<Consume> {
    let Some(value) = value else {
        return refuse(
            "/schedule",
            "an orchestration starts on messages: add `schedule.on` with the messages that activate it",
        );
    };
    let map = object(value, "/schedule")?;
    only(map, "/schedule", &["on"], ": instances are activated by messages (`schedule.on`); a timed start is a receive location's job")?;
    match map.get("on") {
        Some(on) => consume(on, "/schedule/on", true, cx),
        None => refuse(
            "/schedule/on",
            "an orchestration starts on messages: add `schedule.on`",
        ),
    }
}

/// An event consumption strategy; `activating` for `schedule.on`.
fn consume(value: &Value, path: &str, activating: bool, cx: &Cx) -> Result<Consume> {
    let map = object(value, path)?;
    let filters = |key: &str| -> Result<Vec<EventFilter>> {
        let items = map[key].as_array().map(Vec::as_slice).unwrap_or_default();
        if items.is_empty() {
            return refuse(&format!("{path}/{key}"), "name at least one event filter");
        }
        items
            .iter()
            .enumerate()
            .map(|(i, f)| event_filter(f, &format!("{path}/{key}/{i}"), activating, cx))
            .collect()
    };
    if let Some(one) = map.get("one") {
        return Ok(Consume::One(event_filter(
            one,
            &format!("{path}/one"),
            activating,
            cx,
        )?));
    }
    if map.contains_key("all") {
        return Ok(Consume::All(filters("all")?));
    }
    let until = match map.get("until") {
        None => None,
        Some(Value::String(_)) => Some(expr(&map["until"], &format!("{path}/until"), cx)?),
        Some(_) => {
            return refuse(
                &format!("{path}/until"),
                "`until` as events is not supported: write `until` as a runtime expression over what was consumed",
            )
        }
    };
    if activating && until.is_some() {
        return refuse(
            &format!("{path}/until"),
            "an activation takes no `until`: listen for the rest in the workflow",
        );
    }
    Ok(Consume::Any {
        filters: filters("any")?,
        until,
    })
}

/// Characters that would make a filter value a pattern, not an exact value.
const PATTERN_CHARS: [char; 10] = ['^', '$', '*', '+', '?', '[', '(', '|', '\\', '{'];

fn event_filter(value: &Value, path: &str, activating: bool, cx: &Cx) -> Result<EventFilter> {
    let map = object(value, path)?;
    let with_path = format!("{path}/with");
    let mut with = BTreeMap::new();
    for (key, v) in object(&map["with"], &with_path)? {
        let at = format!("{with_path}/{key}");
        let property = match key.as_str() {
            "type" => mbx_vocabulary::system::MESSAGE_TYPE.to_owned(),
            k if k.contains('.') => {
                mbx_vocabulary::validate_property_name(k).or_else(|e| refuse(&at, e))?;
                k.to_owned()
            }
            k => {
                return refuse(
                    &at,
                    format!("`{k}` is not a promoted property: filter on `type` or on a promoted property by its dotted name (`Order.Region`)"),
                )
            }
        };
        match v {
            Value::String(s) if runtime_expression(s).is_some() => {
                return refuse(&at, "filter values are exact: a runtime expression is not allowed here (correlate with `correlate`)")
            }
            Value::String(s) if s.contains(PATTERN_CHARS) => {
                return refuse(&at, format!("filter values are exact, not patterns: `{s}` holds a pattern character"))
            }
            Value::String(_) | Value::Number(_) | Value::Bool(_) => {}
            _ => return refuse(&at, "a filter value is a string, a number or a boolean"),
        }
        with.insert(property, v.clone());
    }
    let correlate = match map.get("correlate") {
        None => Vec::new(),
        Some(c) => correlations(c, &format!("{path}/correlate"), activating, cx)?,
    };
    if !activating && correlate.is_empty() {
        return refuse(
            path,
            "a listen in an instance needs `correlate` with `expect`: without it any instance could take the message",
        );
    }
    Ok(EventFilter { with, correlate })
}

fn correlations(value: &Value, path: &str, activating: bool, cx: &Cx) -> Result<Vec<Correlation>> {
    let mut out = Vec::new();
    for (key, c) in object(value, path)? {
        let at = format!("{path}/{key}");
        let c = object(c, &at)?;
        let property = promoted_property(text(&c["from"])).map_or_else(
            || {
                refuse(
                    &format!("{at}/from"),
                    "`from` reads a promoted property: write `${ .properties[\"Order.Id\"] }`",
                )
            },
            Ok,
        )?;
        let expect = c
            .get("expect")
            .map(|e| template(e, &format!("{at}/expect"), cx))
            .transpose()?;
        if !activating && expect.is_none() {
            return refuse(
                &format!("{at}/expect"),
                "a listen in an instance needs `expect` (the instance's value, e.g. `${ $context.orderId }`)",
            );
        }
        out.push(Correlation {
            key: key.clone(),
            property,
            expect,
        });
    }
    Ok(out)
}

/// The property name when `from` is exactly `${ .properties["Name"] }` (or `.properties."Name"`).
pub(crate) fn promoted_property(from: &str) -> Option<String> {
    let code = runtime_expression(from)?.trim();
    let rest = code.strip_prefix(".properties")?.trim_start();
    let quoted = rest
        .strip_prefix('[')
        .and_then(|r| r.trim().strip_suffix(']'))
        .map(str::trim)
        .or_else(|| rest.strip_prefix('.'))?;
    let name: String = serde_json::from_str(quoted).ok()?;
    mbx_vocabulary::validate_property_name(&name).ok()?;
    Some(name)
}

fn task_list(value: &Value, path: &str, cx: &Cx) -> Result<Vec<Task>> {
    let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut tasks = Vec::with_capacity(items.len());
    let mut names = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let Some((name, def)) = item.as_object().and_then(|m| m.iter().next()) else {
            return refuse(
                &format!("{path}/{i}"),
                "a task is one name mapped to its definition",
            );
        };
        let reference = format!("{path}/{i}/{name}");
        if !names.insert(name.clone()) {
            return refuse(
                &reference,
                format!("a second task named `{name}` in the same list: name it differently"),
            );
        }
        tasks.push(task(name, def, &reference, cx)?);
    }
    let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    for t in &tasks {
        if let Flow::Goto(target) = &t.base.then {
            if !names.contains(&target.as_str()) {
                return refuse(
                    &format!("{}/then", t.reference),
                    format!("no task `{target}` in this list: `then` goes to a task of the same list, or `continue`, `exit`, `end`"),
                );
            }
        }
    }
    Ok(tasks)
}

const BASE_KEYS: [&str; 7] = [
    "if", "input", "output", "export", "timeout", "then", "metadata",
];

fn flow(value: Option<&Value>) -> Flow {
    match value.and_then(Value::as_str) {
        None | Some("continue") => Flow::Continue,
        Some("exit") => Flow::Exit,
        Some("end") => Flow::End,
        Some(name) => Flow::Goto(name.to_owned()),
    }
}

fn task(name: &str, def: &Value, path: &str, cx: &Cx) -> Result<Task> {
    let map = object(def, path)?;
    let base = TaskBase {
        if_: opt_expr(map, "if", path, cx)?,
        input_from: map
            .get("input")
            .map(|v| io(v, &format!("{path}/input"), "from", cx))
            .transpose()?
            .flatten(),
        output_as: map
            .get("output")
            .map(|v| io(v, &format!("{path}/output"), "as", cx))
            .transpose()?
            .flatten(),
        export_as: map
            .get("export")
            .map(|v| io(v, &format!("{path}/export"), "as", cx))
            .transpose()?
            .flatten(),
        timeout: map
            .get("timeout")
            .map(|t| timeout(t, &format!("{path}/timeout"), cx))
            .transpose()?,
        then: flow(map.get("then")),
    };
    let kind = task_kind(map, path, cx)?;
    Ok(Task {
        name: name.to_owned(),
        reference: path.to_owned(),
        base,
        kind,
    })
}

/// The keys a task of each kind may have besides [`BASE_KEYS`].
fn kind_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "call" => &["call", "with"],
        "for" => &["for", "while", "do"],
        "listen" => &["listen"],
        "try" => &["try", "catch"],
        "do" => &["do"],
        "fork" => &["fork"],
        "emit" => &["emit"],
        "raise" => &["raise"],
        "set" => &["set"],
        "switch" => &["switch"],
        "wait" => &["wait"],
        _ => &[],
    }
}

fn task_kind(map: &Map<String, Value>, path: &str, cx: &Cx) -> Result<TaskKind> {
    // `for` tasks also carry `do`, so `for` is looked for before `do`
    let kinds = [
        "call", "for", "listen", "try", "fork", "emit", "raise", "set", "switch", "wait", "do",
    ];
    let Some(kind) = kinds.into_iter().find(|k| map.contains_key(*k)) else {
        if map.contains_key("run") {
            return refuse(&format!("{path}/run"), "`run` (containers, scripts, shells, workflows) is not in the mbx profile: call a send port (`call: NAME@mbx`) or an HTTP endpoint");
        }
        return refuse(path, "not a task of the mbx profile");
    };
    for key in map.keys() {
        if !BASE_KEYS.contains(&key.as_str()) && !kind_keys(kind).contains(&key.as_str()) {
            return refuse(
                &format!("{path}/{key}"),
                format!("not in the mbx profile for a `{kind}` task"),
            );
        }
    }
    let at = |key: &str| format!("{path}/{key}");
    Ok(match kind {
        "call" => call(map, path, cx)?,
        "for" => TaskKind::For(Box::new(for_task(map, path, cx)?)),
        "listen" => {
            let listen = object(&map["listen"], &at("listen"))?;
            only(listen, &at("listen"), &["to", "read"], "")?;
            TaskKind::Listen(Listen {
                to: consume(&listen["to"], &format!("{path}/listen/to"), false, cx)?,
                read: match listen.get("read").and_then(Value::as_str) {
                    Some("envelope") => Read::Envelope,
                    Some("raw") => Read::Raw,
                    _ => Read::Data,
                },
            })
        }
        "try" => TaskKind::Try(Box::new(try_task(map, path, cx)?)),
        "fork" => {
            let fork = object(&map["fork"], &at("fork"))?;
            TaskKind::Fork {
                branches: task_list(&fork["branches"], &format!("{path}/fork/branches"), cx)?,
                compete: fork
                    .get("compete")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        }
        "emit" => TaskKind::Emit(emit(&map["emit"], &at("emit"), cx)?),
        "raise" => TaskKind::Raise(raise(&map["raise"], &at("raise"), cx)?),
        "set" => TaskKind::Set(template(&map["set"], &at("set"), cx)?),
        "switch" => TaskKind::Switch(switch(&map["switch"], &at("switch"), cx)?),
        "wait" => TaskKind::Wait(duration(&map["wait"], &at("wait"), cx)?),
        _ => TaskKind::Do(task_list(&map["do"], &at("do"), cx)?),
    })
}

fn call(map: &Map<String, Value>, path: &str, cx: &Cx) -> Result<TaskKind> {
    let target = text(&map["call"]);
    let with_path = format!("{path}/with");
    let with = match map.get("with") {
        Some(w) => object(w, &with_path)?.clone(),
        None => Map::new(),
    };
    if target == "http" {
        return call_http(&with, &with_path, cx);
    }
    if let Some(port) = target.strip_suffix("@mbx") {
        mbx_vocabulary::validate_name("send port", port)
            .or_else(|e| refuse(&format!("{path}/call"), e))?;
        only(
            &with,
            &with_path,
            &["body"],
            ": a call through a send port takes `with.body` only",
        )?;
        let body = with
            .get("body")
            .map(|b| template(b, &format!("{with_path}/body"), cx))
            .transpose()?;
        return Ok(TaskKind::CallPort {
            port: port.to_owned(),
            body,
        });
    }
    refuse(
        &format!("{path}/call"),
        format!("`call: {target}` is not in the mbx profile: use `call: http`, or `call: NAME@mbx` for a solicit-response send port"),
    )
}

/// `call: http`'s `with`.
fn call_http(with: &Map<String, Value>, with_path: &str, cx: &Cx) -> Result<TaskKind> {
    only(
        with,
        with_path,
        &[
            "method", "endpoint", "headers", "body", "query", "output", "redirect",
        ],
        "",
    )?;
    let endpoint = match &with["endpoint"] {
        Value::Object(e) => {
            only(e, &format!("{with_path}/endpoint"), &["uri"], ": endpoint authentication is not supported yet (put credentials in `headers` from the context)")?;
            template(&e["uri"], &format!("{with_path}/endpoint/uri"), cx)?
        }
        other => template(other, &format!("{with_path}/endpoint"), cx)?,
    };
    let opt = |key: &str| {
        with.get(key)
            .map(|v| template(v, &format!("{with_path}/{key}"), cx))
            .transpose()
    };
    Ok(TaskKind::CallHttp(Box::new(HttpCall {
        method: text(&with["method"]).to_ascii_uppercase(),
        endpoint,
        headers: opt("headers")?,
        query: opt("query")?,
        body: opt("body")?,
        output: match with.get("output").and_then(Value::as_str) {
            Some("response") => HttpOutput::Response,
            Some("raw") => HttpOutput::Raw,
            _ => HttpOutput::Content,
        },
        redirect: with
            .get("redirect")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })))
}

fn for_task(map: &Map<String, Value>, path: &str, cx: &Cx) -> Result<For> {
    let f = object(&map["for"], &format!("{path}/for"))?;
    let each = f.get("each").and_then(Value::as_str).unwrap_or("item");
    let at = f.get("at").and_then(Value::as_str).unwrap_or("index");
    let inner = &cx.with(&[each, at]);
    Ok(For {
        each: each.to_owned(),
        at: at.to_owned(),
        in_: expr(&f["in"], &format!("{path}/for/in"), cx)?,
        while_: opt_expr(map, "while", path, inner)?,
        do_: task_list(&map["do"], &format!("{path}/do"), inner)?,
    })
}

fn try_task(map: &Map<String, Value>, path: &str, cx: &Cx) -> Result<Try> {
    let catch_path = format!("{path}/catch");
    let catch = object(&map["catch"], &catch_path)?;
    let filter = catch
        .get("errors")
        .and_then(|e| e.get("with"))
        .map(|w| -> Result<ErrorFilter> {
            let w = object(w, &format!("{catch_path}/errors/with"))?;
            let s = |k: &str| w.get(k).and_then(Value::as_str).map(str::to_owned);
            Ok(ErrorFilter {
                type_: s("type"),
                status: w.get("status").and_then(Value::as_i64),
                instance: s("instance"),
                title: s("title"),
                details: s("details"),
            })
        })
        .transpose()?
        .unwrap_or_default();
    let as_ = catch.get("as").and_then(Value::as_str).unwrap_or("error");
    // what handles the error sees it by its `as` name
    let caught = &cx.with(&[as_]);
    let retry = match catch.get("retry") {
        None => None,
        Some(Value::String(name)) => match cx.uses.retries.get(name) {
            Some(r) => Some(retry(r, &format!("/use/retries/{name}"), caught)?),
            None => {
                return refuse(
                    &format!("{catch_path}/retry"),
                    format!("no retry policy `{name}` under `use.retries`"),
                )
            }
        },
        Some(r) => Some(retry(r, &format!("{catch_path}/retry"), caught)?),
    };
    Ok(Try {
        try_: task_list(&map["try"], &format!("{path}/try"), cx)?,
        errors: filter,
        as_: as_.to_owned(),
        when: opt_expr(catch, "when", &catch_path, caught)?,
        except_when: opt_expr(catch, "exceptWhen", &catch_path, caught)?,
        retry,
        do_: match catch.get("do") {
            Some(d) => task_list(d, &format!("{catch_path}/do"), caught)?,
            None => Vec::new(),
        },
    })
}

fn emit(value: &Value, path: &str, cx: &Cx) -> Result<Emit> {
    let emit = object(value, path)?;
    let event_path = format!("{path}/event");
    let event = object(&emit["event"], &event_path)?;
    let republish_key = format!("{EXTENSION_PREFIX}republish");
    only(event, &event_path, &["with", republish_key.as_str()], "")?;
    let republish = opt_expr(event, &republish_key, &event_path, cx)?;
    let mut with = Vec::new();
    if let Some(w) = event.get("with") {
        let with_path = format!("{event_path}/with");
        for (key, v) in object(w, &with_path)? {
            let at = format!("{with_path}/{key}");
            match key.as_str() {
                "source" | "type" | "id" | "subject" | "datacontenttype" | "data" => {}
                k if k.contains('.') => {
                    mbx_vocabulary::validate_promotion_target(k).or_else(|e| refuse(&at, e))?;
                }
                k => {
                    return refuse(
                        &at,
                        format!("`{k}` is not carried by mbx: promote it as a property by a dotted name (`Order.{k}`)"),
                    )
                }
            }
            with.push((key.clone(), template(v, &at, cx)?));
        }
    }
    if republish.is_none() && !with.iter().any(|(k, _)| k == "type") {
        return refuse(
            &format!("{event_path}/with"),
            "an emitted event needs `source` and `type`",
        );
    }
    Ok(Emit { with, republish })
}

fn raise(value: &Value, path: &str, cx: &Cx) -> Result<ErrorDef> {
    let error = &object(value, path)?["error"];
    match error {
        Value::String(name) => match cx.uses.errors.get(name) {
            Some(e) => Ok(e.clone()),
            None => refuse(
                &format!("{path}/error"),
                format!("no error `{name}` under `use.errors`"),
            ),
        },
        e => error_def(e, &format!("{path}/error"), cx),
    }
}

fn error_def(value: &Value, path: &str, cx: &Cx) -> Result<ErrorDef> {
    let e = object(value, path)?;
    let opt = |k: &str| {
        e.get(k)
            .map(|v| template(v, &format!("{path}/{k}"), cx))
            .transpose()
    };
    Ok(ErrorDef {
        type_: template(&e["type"], &format!("{path}/type"), cx)?,
        status: e["status"].as_i64().unwrap_or(500),
        title: opt("title")?,
        detail: opt("detail")?,
        instance: opt("instance")?,
    })
}

fn switch(value: &Value, path: &str, cx: &Cx) -> Result<Vec<Case>> {
    let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut cases = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some((name, case)) = item.as_object().and_then(|m| m.iter().next()) else {
            return refuse(
                &format!("{path}/{i}"),
                "a case is one name mapped to its definition",
            );
        };
        let at = format!("{path}/{i}/{name}");
        let case = object(case, &at)?;
        cases.push(Case {
            name: name.clone(),
            when: opt_expr(case, "when", &at, cx)?,
            then: flow(case.get("then")),
        });
    }
    Ok(cases)
}

fn timeout(value: &Value, path: &str, cx: &Cx) -> Result<Wait> {
    match value {
        Value::String(name) => match cx.uses.timeouts.get(name) {
            Some(t) => Ok(t.clone()),
            None => refuse(path, format!("no timeout `{name}` under `use.timeouts`")),
        },
        t => duration(&object(t, path)?["after"], &format!("{path}/after"), cx),
    }
}

fn retry(value: &Value, path: &str, cx: &Cx) -> Result<Retry> {
    let r = object(value, path)?;
    let fixed = |v: Option<&Value>, at: &str| -> Result<Option<Duration>> {
        match v {
            None => Ok(None),
            Some(v) => match duration(v, at, cx)? {
                Wait::Fixed(d) => Ok(Some(d)),
                Wait::Expr(_) => {
                    refuse(at, "a retry's durations are fixed, not runtime expressions")
                }
            },
        }
    };
    let limit = r.get("limit");
    let attempt = limit.and_then(|l| l.get("attempt"));
    let jitter = match r.get("jitter") {
        None => None,
        Some(j) => Some((
            fixed(j.get("from"), &format!("{path}/jitter/from"))?.unwrap_or_default(),
            fixed(j.get("to"), &format!("{path}/jitter/to"))?.unwrap_or_default(),
        )),
    };
    let backoff = match r.get("backoff").and_then(Value::as_object) {
        Some(b) if b.contains_key("exponential") => Backoff::Exponential,
        Some(b) if b.contains_key("linear") => Backoff::Linear,
        _ => Backoff::Constant,
    };
    Ok(Retry {
        when: opt_expr(r, "when", path, cx)?,
        except_when: opt_expr(r, "exceptWhen", path, cx)?,
        delay: fixed(r.get("delay"), &format!("{path}/delay"))?.unwrap_or(Duration::from_secs(1)),
        backoff,
        attempts: attempt
            .and_then(|a| a.get("count"))
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        attempt_duration: fixed(
            attempt.and_then(|a| a.get("duration")),
            &format!("{path}/limit/attempt/duration"),
        )?,
        total_duration: fixed(
            limit.and_then(|l| l.get("duration")),
            &format!("{path}/limit/duration"),
        )?,
        jitter,
    })
}

/// A DSL duration: inline (`{ minutes: 5 }`), ISO 8601 (`PT5M`) or a runtime expression.
pub(crate) fn duration(value: &Value, path: &str, cx: &Cx) -> Result<Wait> {
    match value {
        Value::String(s) if runtime_expression(s).is_some() => {
            Ok(Wait::Expr(expr(value, path, cx)?))
        }
        Value::String(s) => iso_duration(s)
            .map(Wait::Fixed)
            .or_else(|e| refuse(path, e)),
        Value::Object(parts) => {
            let mut ms: u64 = 0;
            for (unit, factor) in [
                ("days", 86_400_000),
                ("hours", 3_600_000),
                ("minutes", 60_000),
                ("seconds", 1_000),
                ("milliseconds", 1),
            ] {
                let n = parts.get(unit).and_then(Value::as_u64).unwrap_or(0);
                ms = ms.saturating_add(n.saturating_mul(factor));
            }
            Ok(Wait::Fixed(Duration::from_millis(ms)))
        }
        _ => refuse(
            path,
            "a duration is `{ minutes: 5 }`, `PT5M` or a runtime expression",
        ),
    }
}

/// An ISO 8601 duration without years or months (they have no fixed length).
pub fn iso_duration(text: &str) -> std::result::Result<Duration, String> {
    let parsed: iso8601::Duration = text
        .parse()
        .map_err(|_| format!("`{text}` is not an ISO 8601 duration (`PT5M`, `P1DT12H`)"))?;
    match parsed {
        iso8601::Duration::Weeks(w) => Ok(Duration::from_secs(u64::from(w) * 7 * 86_400)),
        iso8601::Duration::YMDHMS {
            year,
            month,
            day,
            hour,
            minute,
            second,
            millisecond,
        } => {
            if year != 0 || month != 0 {
                return Err(format!("`{text}` counts years or months, which have no fixed length: write days (`P30D`)"));
            }
            let secs = u64::from(day) * 86_400
                + u64::from(hour) * 3_600
                + u64::from(minute) * 60
                + u64::from(second);
            Ok(Duration::from_secs(secs) + Duration::from_millis(u64::from(millisecond)))
        }
    }
}
