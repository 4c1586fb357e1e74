//! Every statement read into a named `sqlx::FromRow` struct (or a scalar) runs in some
//! test of this crate: a struct that does not match its SELECT (a column missing or
//! misnamed, or of another type) shows only when the statement runs. These run the ones
//! the other tests here do not reach: bindings applied over existing objects, a receive
//! location's update and enable, a receive failure reported on a `--route-failed` port,
//! replies taken, a forward accepted and published, the keyed claim, the roles, and an
//! orchestration's life (create, new version, show, list, disable, export and apply,
//! the property and host it holds on to, delete).

mod common;

use common::*;
use mbx_messagebox::bindings::{ApplyOptions, Step};
use mbx_messagebox::config::InitialState;
use mbx_messagebox::context::system;
use mbx_messagebox::delivery::ClaimLimits;
use mbx_messagebox::forward::{ForwardBody, ForwardTarget, Forwarded};
use mbx_messagebox::orchestrations::{ActivationFilter, OrchestrationSpec};
use mbx_messagebox::publish::Publisher;
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::security::RoleNames;
use mbx_messagebox::states::OrchestrationState;
use mbx_messagebox::{Context, PropertyType, Value};
use sqlx::PgPool;
use uuid::Uuid;

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn bindings_apply_over_existing_objects_reads_each_of_them(pool: PgPool) {
    let mbx = mbx(pool).await;
    mbx.receive_port_create("in", false).await.unwrap();
    mbx.receive_location_create(&ReceiveLocationSpec::new(
        "in-file",
        "in",
        "file:///tmp/mbx-test/in",
    ))
    .await
    .unwrap();
    port(
        &mbx,
        "out",
        Some("Order.Region == 'x'"),
        InitialState::Started,
    )
    .await;
    mbx.group_create("team", None, InitialState::Started)
        .await
        .unwrap();
    let mut doc = mbx.export_bindings(None).await.unwrap();
    doc.send_ports.get_mut("out").unwrap().retry_count = 7;
    doc.receive_locations.get_mut("in-file").unwrap().pipeline = "json".into();
    let plan = mbx
        .apply_bindings(&doc, &[], ApplyOptions::default())
        .await
        .unwrap();
    let changed = |kind: &str, name: &str, field: &str| {
        plan.iter().any(|s| {
            matches!(s, Step::Update { kind: k, name: n, changes }
                if *k == kind && n == name && changes.iter().any(|c| c.field == field))
        })
    };
    assert!(changed("send port", "out", "retry_count"), "{plan:?}");
    assert!(
        changed("receive location", "in-file", "pipeline"),
        "{plan:?}"
    );
    assert!(
        !plan.iter().any(|s| matches!(s, Step::Create { .. })),
        "everything exists already: {plan:?}"
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_receive_location_is_enabled_and_disabled(pool: PgPool) {
    let mbx = mbx(pool).await;
    mbx.receive_port_create("in", false).await.unwrap();
    mbx.receive_location_create(&ReceiveLocationSpec::new(
        "in-file",
        "in",
        "file:///tmp/mbx-test/in",
    ))
    .await
    .unwrap();
    assert!(mbx
        .receive_location_set_enabled("in-file", true)
        .await
        .unwrap());
    assert!(!mbx
        .receive_location_set_enabled("in-file", true)
        .await
        .unwrap());
    assert!(mbx
        .receive_location_set_enabled("in-file", false)
        .await
        .unwrap());
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_receive_failure_on_a_route_failed_port_is_reported(pool: PgPool) {
    let mbx = mbx(pool).await;
    mbx.receive_port_create_with("in", false, true, "default")
        .await
        .unwrap();
    let location = mbx
        .receive_location_create(&ReceiveLocationSpec::new(
            "in-file",
            "in",
            "file:///tmp/mbx-test/in",
        ))
        .await
        .unwrap();
    let reports = started(
        &mbx,
        "reports",
        "ErrorReport.FailureCode == 'receive-failure'",
    )
    .await;
    let publisher = Publisher {
        receive_location_id: Some(location.id),
        ..Publisher::default()
    };
    mbx.suspend_receive_failure(&publisher, msg(&[]), "json: expected value at offset 3")
        .await
        .unwrap();
    // the report carries the failed message's content type and body
    let report = claim_one(&mbx, instance(&mbx).await, reports).await;
    assert_eq!(report.content_type, "application/xml");
    assert_eq!(report.body.as_deref(), Some(&b"<order/>"[..]));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn replies_are_taken_by_the_waiting_instance(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    let waiting = instance(&mbx).await;
    let with = |token: &str, flag: &str| {
        msg(&[
            (system::CORRELATION_TOKEN, Value::String(token.into())),
            (flag, Value::Boolean(true)),
        ])
    };
    for token in ["t1", "t2"] {
        mbx.request_publish(
            &Publisher::default(),
            with(token, system::IS_REQUEST_RESPONSE),
            waiting,
            token,
        )
        .await
        .unwrap();
        publish(&mbx, with(token, system::IS_SOLICIT_RESPONSE)).await;
    }
    let (replies, late) = mbx.replies_take(waiting, |t| t == "t1").await.unwrap();
    assert_eq!(late, 1, "t2's client no longer waits");
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].correlation_token, "t1");
    assert_eq!(replies[0].content_type, "application/xml");
    assert_eq!(&replies[0].body[..], b"<order/>");
}

/// This group links to itself: the statements are the same as to another group's.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_forward_is_accepted_and_published_from_the_inbox(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    mbx.receive_port_create("from-broker", false).await.unwrap();
    mbx.property_create("Order.Qty", PropertyType::Integer)
        .await
        .unwrap();
    let (group_id, group_name) = mbx.group_identity().await.unwrap();
    let target = ForwardTarget::connect(&database_url(&pool)).await.unwrap();
    assert_eq!(
        (target.group_id, target.group_name.as_str()),
        (group_id, group_name.as_str())
    );
    let declared = target.declarations().await.unwrap();
    assert_eq!(declared.get("Order.Qty"), Some(&PropertyType::Integer));
    let mut context = Context::new();
    context.promote("Order.Qty", Value::Integer(3)).unwrap();
    let batch = [Forwarded {
        source_message_id: Uuid::now_v7(),
        content_type: "application/json".into(),
        context,
        body: ForwardBody::Bytes("{\"qty\":3}".into()),
    }];
    let source = (Uuid::new_v4(), "broker");
    let accepted = target
        .accept(&mbx, source, "p", "from-broker", None, &batch, &[])
        .await
        .unwrap();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].source_message_id, batch[0].source_message_id);
    assert!(!accepted[0].duplicate);
    assert_eq!(
        mbx.inbox_publish(&Publisher::default(), 10).await.unwrap(),
        1
    );
    let body: Vec<u8> = sqlx::query_scalar("SELECT body FROM messages WHERE id = $1")
        .bind(accepted[0].message_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(body, b"{\"qty\":3}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn the_keyed_claim_returns_each_deliverys_key_epoch_and_bucket(pool: PgPool) {
    use mbx_messagebox::ordered::LEASE_TTL_MS;
    let mbx = mbx(pool).await;
    let mut spec = spec("by-customer", Some("Order.Customer == 'c1'"));
    spec.ordered = true;
    spec.ordered_by = Some("Order.Customer".into());
    spec.ordered_buckets = Some(1);
    let port_id = create(&mbx, spec.with_state(InitialState::Started)).await;
    let me = instance(&mbx).await;
    let held = mbx
        .port_buckets_acquire(me, port_id, 1, LEASE_TTL_MS)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    publish(&mbx, msg(&[("Order.Customer", s("c1"))])).await;
    let claimed = mbx
        .deliveries_claim_keyed(me, port_id, &held, 10, ClaimLimits::count(10))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].order_key.as_deref(), Some("c1"));
    assert_eq!(claimed[0].epoch, Some(held[0].epoch));
    assert_eq!(claimed[0].bucket, held[0].bucket);
    assert_eq!(claimed[0].port_name, "by-customer");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn the_roles_take_over_every_function(pool: PgPool) {
    let mbx = mbx(pool.clone()).await;
    // roles are shared by the whole server: a random prefix, dropped at the end
    let prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..10]);
    let names = RoleNames::with_prefix(&prefix).unwrap();
    mbx.roles_apply(&names).await.unwrap();
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT pg_get_userbyid(proowner)::text FROM pg_proc WHERE proname = 'mbx_forward_hello'",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    // the roles' privileges here first, then the roles
    sqlx::query(&format!(
        "REASSIGN OWNED BY {} TO CURRENT_USER",
        names.migrator
    ))
    .execute(&pool)
    .await
    .unwrap();
    for role in [
        &names.host,
        &names.reader,
        &names.forwarder,
        &names.migrator,
    ] {
        sqlx::query(&format!("DROP OWNED BY {role}"))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(&format!("DROP ROLE {role}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    assert_eq!(owner.as_deref(), Some(names.migrator.as_str()));
}

/// A definition as `mbx` hands it over once `mbx-orchestration` accepted it.
fn orchestration(version: &str, with: serde_json::Value) -> OrchestrationSpec {
    OrchestrationSpec {
        name: "om".into(),
        application: "orders".into(),
        version: version.into(),
        document: serde_json::json!({
            "document": {"dsl": "1.0.3", "namespace": "orders", "name": "om", "version": version},
            "schedule": {"on": {"one": {"with": with}}},
            "do": [{"a": {"set": {"x": 1}}}],
        }),
        host: "default".into(),
        ordered: false,
        buckets: None,
        activation: vec![ActivationFilter {
            at: "/schedule/on/one".into(),
            with: serde_json::from_value(with).unwrap(),
            correlate: vec!["Order.Id".into()],
        }],
        shapes: vec![vec!["Order.Id".into(), "mbx.MessageType".into()]],
    }
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_orchestration_is_stored_versioned_exported_applied_and_deleted(pool: PgPool) {
    let mbx = mbx(pool).await;
    mbx.property_create("Order.Id", PropertyType::String)
        .await
        .unwrap();
    mbx.property_create("Order.Qty", PropertyType::Integer)
        .await
        .unwrap();
    let with = serde_json::json!({"mbx.MessageType": "OrderRequest", "Order.Qty": 3});
    let created = mbx
        .orchestration_create(&orchestration("1.0.0", with.clone()))
        .await
        .unwrap();
    assert_eq!(created.current_version, "1.0.0");
    assert_eq!(created.state, OrchestrationState::Enabled);
    // a wrong-typed value is refused with the filter's own words, and changes nothing
    let wrong = serde_json::json!({"mbx.MessageType": "OrderRequest", "Order.Qty": "three"});
    let err = mbx
        .orchestration_update(&orchestration("2.0.0", wrong))
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(err.to_string().contains("declared integer"), "{err}");
    let update = mbx
        .orchestration_update(&orchestration("1.1.0", with.clone()))
        .await
        .unwrap();
    assert_eq!(update.changes[0].to, "1.1.0", "{update:?}");
    let shown = mbx.orchestration_show("om").await.unwrap();
    assert_eq!(shown.versions.len(), 2);
    assert!(shown
        .versions
        .iter()
        .any(|v| v.current && v.version == "1.1.0"));
    assert_eq!(shown.document["document"]["version"], "1.1.0");
    assert_eq!(mbx.orchestration_list().await.unwrap()[0].versions, 2);
    // a property or host the orchestration uses stays
    assert!(mbx.property_delete("Order.Id").await.is_err());
    assert!(mbx.host_delete("default").await.is_err());
    mbx.orchestration_set_state("om", OrchestrationState::Disabled)
        .await
        .unwrap();
    let mut doc = mbx.export_bindings(None).await.unwrap();
    let exported = doc.orchestrations["om"].clone();
    assert!(!exported.enabled);
    assert_eq!(exported.definition["document"]["version"], "1.1.0");
    // applied again with a new version and enabled: an update of both
    let next = orchestration("1.2.0", with);
    doc.orchestrations.get_mut("om").unwrap().definition = next.document.clone();
    doc.orchestrations.get_mut("om").unwrap().enabled = true;
    let plan = mbx
        .apply_bindings(&doc, std::slice::from_ref(&next), ApplyOptions::default())
        .await
        .unwrap();
    assert!(
        matches!(&plan[..], [Step::Update { kind: "orchestration", changes, .. }] if changes.len() == 2),
        "{plan:?}"
    );
    // pruned with its application when the file no longer has it
    doc.orchestrations.clear();
    doc.receive_ports.insert(
        "orders-in".into(),
        mbx_messagebox::bindings::ReceivePortBinding {
            application: "orders".into(),
            two_way: false,
            route_failed: false,
        },
    );
    let options = ApplyOptions {
        prune: true,
        ..ApplyOptions::default()
    };
    let plan = mbx.apply_bindings(&doc, &[], options).await.unwrap();
    assert!(
        plan.iter()
            .any(|s| matches!(s, Step::Delete { kind: "orchestration", name, .. } if name == "om")),
        "{plan:?}"
    );
    assert!(mbx.orchestration_list().await.unwrap().is_empty());
    mbx.orchestration_create(&orchestration(
        "1.0.0",
        serde_json::json!({"mbx.MessageType": "X"}),
    ))
    .await
    .unwrap();
    mbx.orchestration_delete("om", false).await.unwrap();
    assert!(mbx
        .orchestration_show("om")
        .await
        .unwrap_err()
        .is_bad_input());
}
