//! Definitions: the worked example parses into the typed model; every kind of document
//! outside the mbx profile (or the DSL's schema) is refused naming where and why.

use mbx_orchestration::model::{Consume, Flow, TaskKind};
use mbx_orchestration::{Definition, DefinitionError};

const ORDER_MANAGER: &str = include_str!("../../../demo/order-manager.yaml");

/// A definition activated by `OrderRequest` whose `do` is `tasks` (YAML, indented by 2).
fn with_tasks(tasks: &str) -> String {
    format!(
        "document: {{dsl: 1.0.3, namespace: orders, name: t, version: 1.0.0}}\n\
         schedule:\n  on:\n    one:\n      with:\n        type: OrderRequest\n\
         do:\n{tasks}"
    )
}

fn refused(text: &str) -> String {
    match Definition::parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn assert_refused(text: &str, path: &str, words: &str) {
    let message = refused(text);
    assert!(
        message.starts_with(&format!("{path}:")),
        "expected the path {path} in: {message}"
    );
    assert!(message.contains(words), "expected `{words}` in: {message}");
}

#[test]
fn the_order_manager_is_in_the_profile() {
    let def = Definition::parse(ORDER_MANAGER).expect("the worked example parses");
    assert_eq!(
        (
            def.namespace.as_str(),
            def.name.as_str(),
            def.version.as_str()
        ),
        ("orders", "order-manager", "1.0.0")
    );
    let Consume::One(activation) = &def.activation else {
        panic!("one")
    };
    assert_eq!(activation.with["mbx.MessageType"], "OrderRequest");
    assert_eq!(activation.correlate[0].property, "Order.Id");
    assert!(activation.correlate[0].expect.is_none());
    let names: Vec<&str> = def.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "remember",
            "price",
            "askApproval",
            "awaitApproval",
            "decide",
            "confirm",
            "reject"
        ]
    );
    assert!(matches!(&def.tasks[1].kind, TaskKind::CallHttp(h) if h.method == "POST"));
    let TaskKind::Listen(listen) = &def.tasks[3].kind else {
        panic!("listen")
    };
    assert!(listen.to.filters()[0].correlate[0].expect.is_some());
    assert_eq!(def.tasks[3].reference, "/do/3/awaitApproval");
    assert_eq!(def.tasks[5].base.then, Flow::End);
    assert_eq!(def.document["document"]["name"], "order-manager");
}

#[test]
fn every_task_of_the_profile_parses() {
    let text = with_tasks(
        "  - a: {set: {x: 1}}\n\
         \x20 - b: {wait: PT1S}\n\
         \x20 - c: {wait: {seconds: 2}}\n\
         \x20 - d: {do: [{e: {set: {y: '${ .x }'}}}]}\n\
         \x20 - f: {for: {each: it, in: '${ [1,2] }'}, do: [{g: {set: {z: '${ $it }'}}}]}\n\
         \x20 - h: {fork: {branches: [{i: {set: {p: 1}}}, {j: {set: {q: 2}}}], compete: false}}\n\
         \x20 - k: {call: http, with: {method: post, endpoint: 'http://127.0.0.1:9/x', body: '${ . }'}}\n\
         \x20 - l:\n      try: [{m: {raise: {error: {type: 'https://serverlessworkflow.io/spec/1.0.0/errors/runtime', status: 500}}}}]\n      catch:\n        errors: {with: {status: 500}}\n        retry: {delay: {seconds: 1}, backoff: {exponential: {}}, limit: {attempt: {count: 3}}}\n        do: [{n: {set: {caught: true}}}]\n\
         \x20 - o: {emit: {event: {x-mbx-republish: '${ $context.first.id }', with: {source: 'https://o.example', type: OrderDone, Order.Status: done}}}}\n\
         \x20 - p: {switch: [{yes: {when: '${ .caught }', then: end}}, {no: {then: continue}}]}\n",
    );
    let def = Definition::parse(&text).expect("in the profile");
    assert_eq!(def.tasks.len(), 10);
    let TaskKind::Emit(emit) = &def.tasks[8].kind else {
        panic!("emit")
    };
    assert!(emit.republish.is_some());
    let TaskKind::Try(t) = &def.tasks[7].kind else {
        panic!("try")
    };
    assert_eq!(t.retry.as_ref().and_then(|r| r.attempts), Some(3));
}

#[test]
fn documents_outside_the_dsl_schema_are_refused_by_the_schema() {
    let no_version =
        "document: {dsl: 1.0.3, namespace: orders, name: t}\ndo: [{a: {set: {x: 1}}}]\n";
    let message = refused(no_version);
    assert!(
        message.contains("Serverless Workflow 1.0 schema"),
        "{message}"
    );
    assert!(matches!(
        Definition::parse(no_version),
        Err(DefinitionError::Schema(_))
    ));
    assert!(matches!(
        Definition::parse("document: [unclosed"),
        Err(DefinitionError::Yaml(_))
    ));
}

#[test]
fn tasks_and_calls_outside_the_profile_are_refused_at_their_path() {
    assert_refused(
        &with_tasks("  - build: {run: {shell: {command: ls}}}\n"),
        "/do/0/build/run",
        "`run`",
    );
    assert_refused(
        &with_tasks("  - q: {call: openapi, with: {document: {endpoint: 'https://x.example/o.json'}, operationId: get}}\n"),
        "/do/0/q/call",
        "call: http",
    );
    assert_refused(
        &with_tasks("  - q: {call: myFunction}\n"),
        "/do/0/q/call",
        "NAME@mbx",
    );
    assert_refused(
        &with_tasks("  - q: {call: quote-svc@mbx, with: {headers: {a: b}}}\n"),
        "/do/0/q/with/headers",
        "with.body",
    );
    assert_refused(
        &with_tasks("  - q: {call: Bad Name@mbx}\n"),
        "/do/0/q/call",
        "send port",
    );
}

#[test]
fn an_orchestration_without_activation_is_refused() {
    let text = "document: {dsl: 1.0.3, namespace: orders, name: t, version: 1.0.0}\ndo: [{a: {set: {x: 1}}}]\n";
    assert_refused(text, "/schedule", "schedule.on");
    let timed = "document: {dsl: 1.0.3, namespace: orders, name: t, version: 1.0.0}\nschedule: {every: {minutes: 5}}\ndo: [{a: {set: {x: 1}}}]\n";
    assert_refused(timed, "/schedule/every", "schedule.on");
}

#[test]
fn activation_filters_are_exact_values_of_promoted_properties() {
    let on = |with: &str| {
        format!(
            "document: {{dsl: 1.0.3, namespace: orders, name: t, version: 1.0.0}}\n\
             schedule: {{on: {{one: {{with: {with}}}}}}}\ndo: [{{a: {{set: {{x: 1}}}}}}]\n"
        )
    };
    assert_refused(
        &on("{type: '${ .x }'}"),
        "/schedule/on/one/with/type",
        "exact",
    );
    assert_refused(
        &on("{type: '^Order.*'}"),
        "/schedule/on/one/with/type",
        "pattern",
    );
    assert_refused(
        &on("{source: 'https://a.example'}"),
        "/schedule/on/one/with/source",
        "promoted property",
    );
    let def =
        Definition::parse(&on("{type: OrderRequest, Order.Region: EU}")).expect("exact values");
    assert_eq!(def.activation.filters()[0].with["Order.Region"], "EU");
}

#[test]
fn a_listen_must_be_correlated_from_a_promoted_property() {
    let listen =
        |filter: &str| with_tasks(&format!("  - w: {{listen: {{to: {{one: {filter}}}}}}}\n"));
    assert_refused(
        &listen("{with: {type: Approval}}"),
        "/do/0/w/listen/to/one",
        "correlate",
    );
    assert_refused(
        &listen("{with: {type: Approval}, correlate: {id: {from: '${ .data.id }', expect: '${ $context.id }'}}}"),
        "/do/0/w/listen/to/one/correlate/id/from",
        "promoted property",
    );
    assert_refused(
        &listen(
            "{with: {type: Approval}, correlate: {id: {from: '${ .properties[\"Order.Id\"] }'}}}",
        ),
        "/do/0/w/listen/to/one/correlate/id/expect",
        "expect",
    );
    let ok = listen("{with: {type: Approval}, correlate: {id: {from: '${ .properties[\"Order.Id\"] }', expect: '${ $context.id }'}}}");
    Definition::parse(&ok).expect("a correlated listen");
}

#[test]
fn expressions_must_compile_and_read_nothing_of_the_machine() {
    assert_refused(
        &with_tasks("  - a: {set: {x: '${ .a | | .b }'}}\n"),
        "/do/0/a/set/x",
        "does not compile",
    );
    assert_refused(
        &with_tasks("  - a: {set: {x: '${ $ENV.HOME }'}}\n"),
        "/do/0/a/set/x",
        "does not compile",
    );
    assert_refused(
        &with_tasks("  - a: {set: {x: '${ env.HOME }'}}\n"),
        "/do/0/a/set/x",
        "does not compile",
    );
    assert_refused(
        &with_tasks("  - a: {set: {x: '${ $secrets.k }'}}\n"),
        "/do/0/a/set/x",
        "does not compile",
    );
}

#[test]
fn flow_and_names_are_checked() {
    assert_refused(
        &with_tasks("  - a: {set: {x: 1}, then: nowhere}\n"),
        "/do/0/a/then",
        "no task `nowhere`",
    );
    assert_refused(
        &with_tasks("  - a: {set: {x: 1}}\n  - a: {set: {x: 2}}\n"),
        "/do/1/a",
        "second task named",
    );
}

#[test]
fn durations_have_a_fixed_length() {
    assert_refused(
        &with_tasks("  - a: {wait: P1M}\n"),
        "/do/0/a/wait",
        "months",
    );
}

#[test]
fn reusable_components_outside_the_profile_are_refused() {
    let text = with_tasks("  - a: {set: {x: 1}}\n") + "use: {secrets: [k]}\n";
    assert_refused(&text, "/use/secrets", "secrets");
    let schema = with_tasks("  - a: {set: {x: 1}, input: {schema: {document: {type: object}}}}\n");
    assert_refused(&schema, "/do/0/a/input/schema", "schemas");
}
