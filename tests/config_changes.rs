//! Configuration changes reach a running host through LISTEN/NOTIFY, not only by polling:
//! with a one-minute poll interval, a port created, stopped and started while the host
//! runs takes effect within seconds.

use std::time::Duration;

use mbx_e2e::{database_url, files_in, messagebox, start_host, wait_for, wait_for_alive};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::PgPool;

/// Far longer than the waits below: only a notification can make them pass.
const SLOW_POLL: &[&str] = &["--poll-interval", "60s"];
const WAIT: Duration = Duration::from_secs(10);

async fn publish(mbx: &MessageBox, id: i64) {
    let mut ctx = Context::new();
    ctx.promote("Order.Id", Value::Integer(id))
        .expect("promote");
    mbx.publish(
        &Publisher::default(),
        vec![NewMessage::new(format!("order {id}"), "text/plain", ctx)],
    )
    .await
    .expect("publish");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn ports_created_and_restarted_while_a_host_runs_take_effect_at_once(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let out = tempfile::tempdir().expect("tempdir");
    let _host = start_host(&database_url(&pool), SLOW_POLL);
    wait_for_alive(&mbx, 1).await;
    // the host has read its (empty) configuration; now a port appears
    mbx.send_port_create(
        &SendPortSpec::new(
            "out",
            &format!("file://{}/%MessageID%.txt", out.path().display()),
        )
        .with_filter("exists(Order.Id)")
        .with_state(InitialState::Started),
    )
    .await
    .expect("port");
    publish(&mbx, 1).await;
    wait_for("the new port to deliver", WAIT, || async {
        files_in(out.path(), "txt").len() == 1
    })
    .await;

    mbx.send_port_stop("out").await.expect("stop");
    publish(&mbx, 2).await;
    // stopped: the delivery waits as backlog; started again it is sent at once
    mbx.send_port_start("out").await.expect("start");
    wait_for("the restarted port to deliver", WAIT, || async {
        files_in(out.path(), "txt").len() == 2
    })
    .await;
}
