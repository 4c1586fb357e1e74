//! The interpreter, as pure logic: a state, the messages held for the instance and the
//! step's time in; the new state, the outcome and the effects out. (The MessageBox and
//! the hosts that run it are tested end to end in tests/orchestrations*.rs.)

use mbx_orchestration::runtime::{
    CallResponse, CallTarget, Event, Outcome, Runner, State, Subscription,
};
use mbx_orchestration::Definition;
use serde_json::{json, Value};

const ORDER_MANAGER: &str = include_str!("../../../demo/order-manager.yaml");

fn event(id: &str, message_type: &str, order: &str, data: Value) -> Event {
    Event {
        id: id.to_owned(),
        envelope: json!({
            "specversion": "1.0", "id": id, "type": message_type, "source": "test",
            "datacontenttype": "application/json", "data": data,
            "properties": { "Order.Id": order, "mbx.MessageType": message_type }
        }),
    }
}

fn def(text: &str) -> Definition {
    Definition::parse(text).expect("in the profile")
}

/// A definition activated by `Go` messages correlated on Order.Id, doing `tasks`.
fn workflow(tasks: &str) -> Definition {
    def(&format!(
        "document: {{dsl: 1.0.3, namespace: orders, name: t, version: 1.0.0}}\n\
         schedule:\n  on:\n    one:\n      with: {{type: Go}}\n      correlate: {{orderId: {{from: '${{ .properties[\"Order.Id\"] }}'}}}}\n\
         do:\n{tasks}"
    ))
}

fn ok(status: u16, body: &str) -> CallResponse {
    CallResponse {
        status,
        headers: Default::default(),
        body: body.to_owned(),
    }
}

#[test]
fn the_order_manager_runs_to_its_confirmation() {
    let def = def(ORDER_MANAGER);
    let runner = Runner::new(&def, "i-1");
    let request = event("m1", "OrderRequest", "A-1", json!({"item": "widget"}));
    let mut state =
        State::activate(&def, std::slice::from_ref(&request), 100.0).expect("activates");
    assert_eq!(state.correlation["Order.Id"], "A-1");

    // the quote call is prepared and saved before it is sent
    let (outcome, fx) = runner.run(&mut state, &[], 100.0);
    let Outcome::Call(call) = outcome else {
        panic!("a call: {outcome:?}")
    };
    assert_eq!(
        call.target,
        CallTarget::Http {
            url: "http://127.0.0.1:9290/quote".into()
        }
    );
    assert_eq!(call.body.as_deref(), Some(r#"{"item":"widget"}"#));
    assert_eq!(call.idempotency_key, "i-1-0");
    assert!(fx.emitted.is_empty());

    // a replay before the answer sends the same request again
    let mut replay = state.clone();
    assert_eq!(
        runner.run(&mut replay, &[], 101.0).0,
        Outcome::Call(call.clone())
    );

    state.answer(ok(200, r#"{"item": "widget", "price": 42}"#));
    let (outcome, fx) = runner.run(&mut state, &[], 102.0);
    assert_eq!(
        outcome,
        Outcome::Waiting {
            wake_at: Some(102.0 + 86_400.0)
        }
    );
    assert_eq!(fx.emitted.len(), 1);
    assert_eq!(
        fx.emitted[0].message_type.as_deref(),
        Some("ApprovalRequest")
    );
    assert_eq!(fx.emitted[0].properties["Order.Id"], "A-1");
    assert_eq!(
        fx.emitted[0].body.as_deref(),
        Some(r#"{"orderId":"A-1","total":42}"#)
    );

    // the approval of another order is not this instance's; its own is
    let other = event("m2", "OrderApproval", "B-2", json!({"approved": true}));
    let mine = event("m3", "OrderApproval", "A-1", json!({"approved": true}));
    let (outcome, fx) = runner.run(&mut state.clone(), std::slice::from_ref(&other), 103.0);
    assert!(matches!(outcome, Outcome::Waiting { .. }));
    assert!(fx.consumed.is_empty());
    let (outcome, fx) = runner.run(&mut state, &[other, mine], 103.0);
    assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");
    assert_eq!(fx.consumed, ["m3"]);
    assert_eq!(
        fx.emitted[0].message_type.as_deref(),
        Some("OrderConfirmed")
    );
}

#[test]
fn an_instance_subscribes_to_its_correlation_before_it_listens() {
    let def = def(ORDER_MANAGER);
    let runner = Runner::new(&def, "i-1");
    let mut state = State::activate(&def, &[event("m1", "OrderRequest", "A-1", json!({}))], 0.0)
        .expect("activates");
    assert!(
        runner.subscriptions(&state, 0.0).is_empty(),
        "orderId is not in the context yet"
    );
    runner.run(&mut state, &[], 0.0);
    let subs = runner.subscriptions(&state, 0.0);
    assert_eq!(
        subs,
        [Subscription {
            with: [("mbx.MessageType".to_owned(), json!("OrderApproval"))].into(),
            correlation: vec![("Order.Id".to_owned(), json!("A-1"))],
        }]
    );
}

#[test]
fn a_sequential_convoy_takes_its_messages_in_order_across_steps() {
    let def = workflow(
        "  - keep: {set: {id: '${ .[0].properties[\"Order.Id\"] }'}, export: {as: '${ . }'}}\n\
         \x20 - rest:\n      listen:\n        to:\n          any:\n            - with: {type: Line}\n              correlate: {orderId: {from: '${ .properties[\"Order.Id\"] }', expect: '${ $context.id }'}}\n          until: '${ length >= 3 }'\n",
    );
    let runner = Runner::new(&def, "i");
    let mut state =
        State::activate(&def, &[event("g", "Go", "K", json!(null))], 0.0).expect("activates");
    let lines: Vec<Event> = (1..=3)
        .map(|n| event(&format!("l{n}"), "Line", "K", json!(n)))
        .collect();
    let (outcome, fx) = runner.run(&mut state, &lines[..2], 1.0);
    assert_eq!(outcome, Outcome::Waiting { wake_at: None });
    assert_eq!(fx.consumed, ["l1", "l2"]);
    let (outcome, fx) = runner.run(&mut state, &lines[2..], 2.0);
    assert_eq!(fx.consumed, ["l3"]);
    assert_eq!(outcome, Outcome::Completed(json!([1, 2, 3])));
}

#[test]
fn a_parallel_convoy_waits_for_all() {
    let correlate = "correlate: {orderId: {from: '${ .properties[\"Order.Id\"] }', expect: '${ $context.id }'}}";
    let def = workflow(&format!(
        "  - keep: {{set: {{id: '${{ .[0].properties[\"Order.Id\"] }}'}}, export: {{as: '${{ . }}'}}}}\n\
         \x20 - both: {{listen: {{to: {{all: [{{with: {{type: A}}, {correlate}}}, {{with: {{type: B}}, {correlate}}}]}}}}}}\n"
    ));
    let runner = Runner::new(&def, "i");
    let mut state =
        State::activate(&def, &[event("g", "Go", "K", json!(null))], 0.0).expect("activates");
    let b = event("b", "B", "K", json!("b"));
    let a = event("a", "A", "K", json!("a"));
    let (outcome, fx) = runner.run(&mut state, std::slice::from_ref(&b), 1.0);
    assert!(matches!(outcome, Outcome::Waiting { .. }));
    assert!(
        fx.consumed.is_empty(),
        "nothing is taken until all are there"
    );
    let (outcome, _) = runner.run(&mut state, &[b, a], 2.0);
    assert_eq!(outcome, Outcome::Completed(json!(["a", "b"])));
}

#[test]
fn a_durable_timer_keeps_its_due_time() {
    let def = workflow("  - pause: {wait: PT30S}\n  - done: {set: {ok: true}}\n");
    let runner = Runner::new(&def, "i");
    let mut state =
        State::activate(&def, &[event("g", "Go", "K", json!(null))], 1_000.0).expect("activates");
    assert_eq!(
        runner.run(&mut state, &[], 1_000.0).0,
        Outcome::Waiting {
            wake_at: Some(1_030.0)
        }
    );
    // woken early (a poll), it waits for the same due time; on time, it goes on
    assert_eq!(
        runner.run(&mut state, &[], 1_010.0).0,
        Outcome::Waiting {
            wake_at: Some(1_030.0)
        }
    );
    assert_eq!(
        runner.run(&mut state, &[], 1_030.0).0,
        Outcome::Completed(json!({"ok": true}))
    );
}

#[test]
fn a_failing_call_is_retried_after_its_delay_then_succeeds() {
    let def = workflow(
        "  - attempt:\n      try:\n        - get: {call: http, with: {method: get, endpoint: 'http://127.0.0.1:9/quote'}}\n      catch:\n        errors: {with: {type: 'https://serverlessworkflow.io/spec/1.0.0/errors/communication'}}\n        retry: {delay: {seconds: 2}, backoff: {exponential: {}}, limit: {attempt: {count: 3}}}\n",
    );
    let runner = Runner::new(&def, "i");
    let mut state =
        State::activate(&def, &[event("g", "Go", "K", json!(null))], 0.0).expect("activates");
    let mut keys = Vec::new();
    let mut now = 0.0;
    for wait in [2.0, 4.0] {
        let Outcome::Call(call) = runner.run(&mut state, &[], now).0 else {
            panic!("a call")
        };
        keys.push(call.idempotency_key.clone());
        state.answer(ok(503, "busy"));
        assert_eq!(
            runner.run(&mut state, &[], now).0,
            Outcome::Waiting {
                wake_at: Some(now + wait)
            }
        );
        now += wait;
    }
    let Outcome::Call(_) = runner.run(&mut state, &[], now).0 else {
        panic!("a third call")
    };
    state.answer(ok(200, r#"{"price": 7}"#));
    assert_eq!(
        runner.run(&mut state, &[], now).0,
        Outcome::Completed(json!({"price": 7}))
    );
    assert_eq!(keys, ["i-0", "i-1"], "each attempt its own key");
}

#[test]
fn an_uncaught_error_faults_the_instance_at_its_task() {
    let def = workflow("  - check: {raise: {error: {type: 'https://example.com/errors/bad-order', status: 422, title: bad order}}}\n");
    let runner = Runner::new(&def, "i");
    let mut state =
        State::activate(&def, &[event("g", "Go", "K", json!(null))], 0.0).expect("activates");
    let Outcome::Faulted(e) = runner.run(&mut state, &[], 0.0).0 else {
        panic!("faulted")
    };
    assert_eq!(
        (e.type_.as_str(), e.status, e.instance.as_str()),
        ("https://example.com/errors/bad-order", 422, "/do/0/check")
    );
    assert_eq!(
        state.task_path(&def).as_deref(),
        Some("/do/0/check"),
        "a faulted instance stands on its failed task"
    );
}

#[test]
fn a_faulted_instance_resumes_at_its_task_also_on_a_version_that_has_it() {
    let broken = workflow(
        "  - first: {set: {n: 1}}\n  - check: {set: '${ .n + \"x\" }'}\n  - last: {set: {done: true}}\n",
    );
    let runner = Runner::new(&broken, "i");
    let mut state =
        State::activate(&broken, &[event("g", "Go", "K", json!(null))], 0.0).expect("activates");
    let Outcome::Faulted(e) = runner.run(&mut state, &[], 0.0).0 else {
        panic!("faulted")
    };
    assert_eq!(e.instance, "/do/1/check");
    // the fixed version has the same path; one without `check` does not fit
    let fixed = workflow(
        "  - first: {set: {n: 1}}\n  - check: {set: '${ {n: (.n + 1)} }'}\n  - last: {set: '${ . + {done: true} }'}\n",
    );
    let renamed = workflow("  - first: {set: {n: 1}}\n  - verify: {set: {n: 2}}\n");
    assert_eq!(state.fits(&broken, &fixed), Ok(()));
    assert_eq!(state.fits(&broken, &renamed), Err("/do/1/check".to_owned()));
    assert_eq!(
        Runner::new(&fixed, "i").run(&mut state, &[], 1.0).0,
        Outcome::Completed(json!({"n": 2, "done": true})),
        "resumed from the failed task with its input"
    );
}

#[test]
fn a_listen_that_times_out_raises_timeout_which_a_catch_handles() {
    let def = workflow(
        "  - guarded:\n      try:\n        - approval:\n            listen: {to: {one: {with: {type: Ok}, correlate: {o: {from: '${ .properties[\"Order.Id\"] }', expect: K}}}}}\n            timeout: {after: {seconds: 10}}\n      catch:\n        errors: {with: {status: 408}}\n        as: late\n        do:\n          - note: {set: {timedOut: '${ $late.type }'}}\n",
    );
    let runner = Runner::new(&def, "i");
    let mut state =
        State::activate(&def, &[event("g", "Go", "K", json!(null))], 0.0).expect("activates");
    assert_eq!(
        runner.run(&mut state, &[], 0.0).0,
        Outcome::Waiting {
            wake_at: Some(10.0)
        }
    );
    assert_eq!(
        runner.run(&mut state, &[], 10.0).0,
        Outcome::Completed(
            json!({"timedOut": "https://serverlessworkflow.io/spec/1.0.0/errors/timeout"})
        )
    );
}

#[test]
fn for_switch_fork_and_flow() {
    let def = workflow(
        "  - sum:\n      input: {from: '${ {total: 0} }'}\n      for: {each: n, in: '${ [1, 2, 3] }'}\n      do:\n        - add: {set: '${ .total + $n }', output: {as: '${ {total: .} }'}}\n\
         \x20 - route:\n      switch:\n        - big: {when: '${ .total > 5 }', then: fan}\n        - small: {then: end}\n\
         \x20 - skipped: {set: {never: true}}\n\
         \x20 - fan:\n      fork:\n        branches:\n          - a: {set: '${ .total * 2 }'}\n          - b: {set: '${ .total + 1 }'}\n",
    );
    let runner = Runner::new(&def, "i");
    let mut state =
        State::activate(&def, &[event("g", "Go", "K", json!(null))], 0.0).expect("activates");
    assert_eq!(
        runner.run(&mut state, &[], 0.0).0,
        Outcome::Completed(json!([12, 7]))
    );
}

#[test]
fn a_state_survives_being_saved_and_read_back() {
    let def = def(ORDER_MANAGER);
    let runner = Runner::new(&def, "i-1");
    let mut state = State::activate(&def, &[event("m1", "OrderRequest", "A-1", json!({}))], 0.0)
        .expect("activates");
    runner.run(&mut state, &[], 0.0);
    let saved = serde_json::to_string(&state).expect("serialises");
    let back: State = serde_json::from_str(&saved).expect("reads back");
    assert_eq!(back, state);
}

#[test]
fn emitting_republishes_a_consumed_message_by_id() {
    let def = workflow(
        "  - again: {emit: {event: {x-mbx-republish: '${ .[0].id }', with: {source: 'https://o.example', type: Again, Order.Status: seen}}}}\n",
    );
    let runner = Runner::new(&def, "i");
    let mut state =
        State::activate(&def, &[event("g1", "Go", "K", json!(null))], 0.0).expect("activates");
    let (_, fx) = runner.run(&mut state, &[], 0.0);
    assert_eq!(fx.emitted[0].republish.as_deref(), Some("g1"));
    assert_eq!(fx.emitted[0].properties["Order.Status"], "seen");
}

/// A send port's answer to call `token`: its status and body.
fn port_answer(id: &str, token: &str, status: i64, data: Value) -> Event {
    Event {
        id: id.to_owned(),
        envelope: json!({
            "specversion": "1.0", "id": id, "source": "mbx", "type": null,
            "datacontenttype": "application/json", "data": data,
            "properties": { "mbx.CorrelationToken": token, "http.StatusCode": status,
                            "mbx.IsSolicitResponse": true, "mbx.SendPortName": "quote-svc" }
        }),
    }
}

#[test]
fn a_call_through_a_send_port_waits_for_its_answer_by_token() {
    let def = workflow(
        "  - quote: {call: quote-svc@mbx, with: {body: {item: widget}}}\n  - done: {set: {price: '${ .price }'}}\n",
    );
    assert!(def
        .shapes()
        .contains(&vec!["mbx.CorrelationToken".to_owned()]));
    let runner = Runner::new(&def, "i");
    let mut state =
        State::activate(&def, &[event("g", "Go", "K", json!(null))], 0.0).expect("activates");
    let Outcome::Call(call) = runner.run(&mut state, &[], 0.0).0 else {
        panic!("a call")
    };
    assert_eq!(
        call.target,
        CallTarget::SendPort {
            port: "quote-svc".into()
        }
    );
    assert_eq!(call.body.as_deref(), Some(r#"{"item":"widget"}"#));
    assert_eq!(call.headers["content-type"], "application/json");
    // the request went with the step's commit: a replay waits for the answer, it does not
    // publish the request again
    let mut replay = state.clone();
    assert_eq!(
        runner.run(&mut replay, &[], 1.0).0,
        Outcome::Waiting { wake_at: None }
    );
    let waits = runner.subscriptions(&state, 1.0);
    assert!(waits.contains(&Subscription {
        with: Default::default(),
        correlation: vec![("mbx.CorrelationToken".into(), json!("i-0"))],
    }));
    // an answer to another call is not this one's
    let other = port_answer("a0", "j-0", 200, json!({"price": 1}));
    assert_eq!(
        runner.run(&mut replay, std::slice::from_ref(&other), 1.0).0,
        Outcome::Waiting { wake_at: None }
    );
    let answer = port_answer("a1", "i-0", 200, json!({"price": 42}));
    let (outcome, fx) = runner.run(&mut state, &[other, answer], 2.0);
    assert_eq!(outcome, Outcome::Completed(json!({"price": 42})));
    assert_eq!(
        fx.consumed,
        ["a1"],
        "the answer is consumed, the other left"
    );
}

#[test]
fn a_suspended_port_request_raises_communication_and_keeps_listening_for_a_late_answer() {
    let def = workflow(
        "  - attempt:\n      try:\n        - quote: {call: quote-svc@mbx, with: {body: '<q/>'}}\n      catch:\n        errors: {with: {type: 'https://serverlessworkflow.io/spec/1.0.0/errors/communication'}}\n        as: err\n        do:\n          - failed: {set: {failed: '${ $err.status }'}}\n  - later: {wait: {seconds: 60}}\n",
    );
    let runner = Runner::new(&def, "i");
    let mut state =
        State::activate(&def, &[event("g", "Go", "K", json!(null))], 0.0).expect("activates");
    let Outcome::Call(call) = runner.run(&mut state, &[], 0.0).0 else {
        panic!("a call")
    };
    assert_eq!(call.headers["content-type"], "application/xml");
    let fault = port_answer(
        "f",
        "i-0",
        502,
        json!("send port 'quote-svc' suspended the request"),
    );
    let (outcome, fx) = runner.run(&mut state, &[fault], 1.0);
    assert_eq!(
        outcome,
        Outcome::Waiting {
            wake_at: Some(61.0)
        },
        "the catch handled the communication error"
    );
    assert_eq!(fx.consumed, ["f"]);
    assert_eq!(state.late_answers, ["i-0"]);
    // the instance still subscribes to the token: an answer after an operator's resume
    // reaches it (never taken, a zombie naming it when it ends)
    assert!(runner
        .subscriptions(&state, 1.0)
        .iter()
        .any(|s| s.correlation == vec![("mbx.CorrelationToken".to_owned(), json!("i-0"))]));
}
