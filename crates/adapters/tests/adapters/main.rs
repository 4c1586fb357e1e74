//! Integration tests of mbx-adapters against a real directory (tempfile) and a real HTTP
//! server (axum on 127.0.0.1:0). One test binary keeps link time down.

mod amqp;
#[path = "../../../../tests/support/brokers.rs"]
mod brokers;
mod conformance;
mod file_receive;
mod file_send;
mod http_send;
mod mqtt;
mod pipeline;
mod receive_conformance;
mod smtp;
mod support;
