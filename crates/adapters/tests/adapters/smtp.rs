//! The SMTP adapter against a real SMTP server on loopback: aiosmtpd (PyPI, installed by
//! .ci/run from tests/requirements.txt), writing what it receives into a Maildir.

use mbx_adapters::{Outcome, Registry, Settings};

pub use crate::brokers::smtp::SmtpSink;
use crate::support::{message, send_all};

#[tokio::test]
async fn text_is_the_mail_other_bodies_are_attached_and_the_message_id_is_stable() {
    let sink = SmtpSink::start().await;
    let adapter = Registry::new()
        .unwrap()
        .send_adapter("mailto:a@example.org")
        .unwrap();
    let mut settings = sink.settings();
    settings.insert(
        "subject".into(),
        "Order %Order.Id% via %SendPortName%".into(),
    );
    let mut text = message("mailto:ops@example.org", settings.clone(), "hello ops");
    text.content_type = "text/plain; charset=utf-8".into();
    text.context.insert("Order.Id", "42");
    let mut xml = message(
        "mailto:ops@example.org,audit@example.org",
        settings.clone(),
        "<order id=\"7\"/>",
    );
    xml.context.insert("Order.Id", "7");
    let reports = send_all(adapter.as_ref(), vec![text.clone(), xml.clone()]).await;
    assert!(
        reports.iter().all(|r| r.outcome == Outcome::Delivered),
        "{reports:?}"
    );
    let mails = sink.mails();
    assert_eq!(mails.len(), 2);
    let find = |id: uuid::Uuid| {
        mails
            .iter()
            .find(|m| m.contains(&format!("Message-ID: <{id}.out-port@mbx>")))
            .unwrap_or_else(|| panic!("a mail with the message id of {id}: {mails:?}"))
            .clone()
    };
    let t = find(text.message_id);
    assert!(t.contains("Subject: Order 42 via out-port"), "{t}");
    assert!(t.contains("hello ops"), "{t}");
    let x = find(xml.message_id);
    assert!(x.contains("To: ops@example.org, audit@example.org"), "{x}");
    assert!(x.contains("Content-Disposition: attachment"), "{x}");
    assert!(
        x.contains(&format!("{}.xml\"", xml.message_id)),
        "named by the message id: {x}"
    );
    assert!(x.contains("<order id=\"7\"/>"), "{x}");
}

#[tokio::test]
async fn header_injection_is_a_final_failure_and_nothing_is_sent() {
    let sink = SmtpSink::start().await;
    let adapter = Registry::new()
        .unwrap()
        .send_adapter("mailto:a@example.org")
        .unwrap();
    let mut settings = sink.settings();
    settings.insert("subject".into(), "Order %Order.Id%".into());
    // a promoted value with CRLF used in the subject
    let mut in_subject = message("mailto:ops@example.org", settings.clone(), "x");
    in_subject
        .context
        .insert("Order.Id", "1\r\nBcc: evil@example.org");
    // a dynamic port's address with an encoded CRLF
    let in_address = message(
        "mailto:ops@example.org%0D%0ABcc:evil@example.org",
        settings.clone(),
        "x",
    );
    // a property the subject needs is missing
    let missing = message("mailto:ops@example.org", settings, "x");
    let reports = send_all(adapter.as_ref(), vec![in_subject, in_address, missing]).await;
    for r in &reports {
        match &r.outcome {
            Outcome::Failed {
                error,
                retryable: false,
            } => {
                assert!(
                    error.contains("header injection") || error.contains("has no Order.Id"),
                    "{error}"
                )
            }
            other => panic!("expected a final failure, got {other:?}"),
        }
    }
    assert!(sink.mails().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_server_that_does_not_answer_is_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let adapter = Registry::new()
        .unwrap()
        .send_adapter("mailto:a@example.org")
        .unwrap();
    let settings: Settings = [
        ("smtp_server".to_owned(), format!("127.0.0.1:{port}")),
        ("tls".to_owned(), "none".to_owned()),
        ("from".to_owned(), "mbx@example.org".to_owned()),
    ]
    .into();
    let reports = send_all(
        adapter.as_ref(),
        vec![message("mailto:a@example.org", settings, "x")],
    )
    .await;
    assert!(
        matches!(
            &reports[0].outcome,
            Outcome::Failed {
                retryable: true,
                ..
            }
        ),
        "{:?}",
        reports[0].outcome
    );
}
