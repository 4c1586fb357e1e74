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
