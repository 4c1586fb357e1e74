//! Orders as the orchestration tests publish them: a message type and an `Order.Id`
//! promoted, a JSON body.

use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::{Context, MessageBox, Value};

/// A message of `message_type` for order `order`, its body JSON `data`.
pub fn message(message_type: &str, order: &str, data: serde_json::Value) -> NewMessage {
    let mut context = Context::new();
    context
        .promote("mbx.MessageType", Value::String(message_type.to_owned()))
        .expect("type");
    context
        .promote("Order.Id", Value::String(order.to_owned()))
        .expect("order id");
    NewMessage::new(data.to_string(), "application/json", context)
}

/// Publishes `messages` in one transaction.
pub async fn publish(mbx: &MessageBox, messages: Vec<NewMessage>) {
    mbx.publish(&Publisher::default(), messages)
        .await
        .expect("publish");
}

/// Declares `Order.Id`, creates the orchestration `yaml` (written to `dir/flow.yaml`), and
/// a started FILE port `results` writing every message whose type is one of `types` to
/// `dir/out/` (returned).
pub fn bind(
    cli: &crate::Mbx,
    dir: &std::path::Path,
    yaml: &str,
    types: &[&str],
) -> std::path::PathBuf {
    cli.ok(&["property", "create", "Order.Id", "--type", "string"]);
    let file = dir.join("flow.yaml");
    std::fs::write(&file, yaml).expect("write definition");
    cli.ok(&[
        "orchestration",
        "create",
        "-f",
        file.to_str().expect("path"),
    ]);
    results_port(cli, dir, types)
}

/// A started FILE port `results` writing every message whose type is one of `types` to
/// `dir/out/` (returned).
pub fn results_port(cli: &crate::Mbx, dir: &std::path::Path, types: &[&str]) -> std::path::PathBuf {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("out/");
    let filter = types
        .iter()
        .map(|t| format!("mbx.MessageType == '{t}'"))
        .collect::<Vec<_>>()
        .join(" or ");
    cli.ok(&[
        "send-port",
        "create",
        "results",
        "--start",
        "--filter",
        &filter,
        "--address",
        &format!("file://{}/%MessageID%.json", out.display()),
    ]);
    out
}

/// How many orchestration instances are in `state`.
pub async fn instances_in(pool: &sqlx::PgPool, state: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orchestration_instances WHERE state = $1")
        .bind(state)
        .fetch_one(pool)
        .await
        .expect("count the instances")
}

/// Waits up to `within` until exactly `n` orchestration instances are in `state`.
pub async fn wait_instances(pool: &sqlx::PgPool, state: &str, n: i64, within: std::time::Duration) {
    crate::wait_for(&format!("{n} instance(s) {state}"), within, || async {
        instances_in(pool, state).await == n
    })
    .await
}
