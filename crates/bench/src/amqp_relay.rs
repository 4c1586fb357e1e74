//! `--workload amqp`: RabbitMQ queue → an AMQP receive location → the MessageBox → an
//! AMQP send port → another RabbitMQ queue. Producers and consumers are the rabbitmq
//! peer's, with the same method (durable queues, persistent messages, publisher confirms
//! per batch, manual acks), so the figure stands beside RabbitMQ alone (its peer run: the
//! same producers and consumers on one queue) measured in the same invocation. Latency is
//! the producer's clock before publishing to the first queue until the delivery from the
//! second arrives: both hops through the broker and the MessageBox between them.

use mbx_messagebox::config::{HostSpec, InitialState, SendPortSpec};
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::MessageBox;

use crate::mbx::{Hosts, MbxRun, BENCH_HOST};
use crate::measure::Progress;
use crate::peers::rabbitmq;
use crate::{database, BenchError, Measured, RunSpec};

/// The password of `--amqp-url`'s user when it is not guest: mbx addresses never carry
/// one, so the hosts read it from this variable (`--set password=env:…`).
pub const PASSWORD_VAR: &str = "MBX_BENCH_AMQP_PASSWORD";

/// The mbx address of `queue` on the broker of `amqp_url`: without credentials for the
/// guest user, else the user with the password by reference.
fn address(amqp_url: &str, queue: &str) -> Result<(String, Option<String>), BenchError> {
    let url =
        reqwest::Url::parse(amqp_url).map_err(|e| BenchError::Setup(format!("--amqp-url: {e}")))?;
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port().unwrap_or(5672);
    let vhost = match url.path() {
        "" | "/" => "%2f".to_owned(),
        p => p.trim_start_matches('/').to_owned(),
    };
    let (user, password) = (url.username(), url.password().unwrap_or(""));
    Ok(
        if user.is_empty() || (user == "guest" && password == "guest") {
            (format!("amqp://{host}:{port}/{vhost}?queue={queue}"), None)
        } else {
            (
                format!("amqp://{user}@{host}:{port}/{vhost}?queue={queue}"),
                Some(format!("env:{PASSWORD_VAR}")),
            )
        },
    )
}

pub async fn run(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
) -> Result<Measured, BenchError> {
    let db = database::Scratch::create(&spec.database_url, "mbx").await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (q_in, q_out) = (format!("mbx-bench-in-{id}"), format!("mbx-bench-out-{id}"));
    let result = run_in(spec, run, progress, db.url(), &q_in, &q_out).await;
    // the queues go with the run, whatever happened
    if let Ok(conn) = rabbitmq::connect(&spec.amqp_url, "cleanup").await {
        if let Ok(ch) = conn.create_channel().await {
            for q in [&q_in, &q_out] {
                let _ = ch
                    .queue_delete(
                        q.as_str().into(),
                        lapin::options::QueueDeleteOptions::default(),
                    )
                    .await;
            }
        }
        let _ = conn.close(200, "bench done".into()).await;
    }
    db.drop_now().await;
    result
}

async fn run_in(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
    url: &str,
    q_in: &str,
    q_out: &str,
) -> Result<Measured, BenchError> {
    let conn = rabbitmq::connect(&spec.amqp_url, "setup").await?;
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| BenchError::Setup(format!("opening a channel: {e}")))?;
    for q in [q_in, q_out] {
        let durable = lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(q.into(), durable, lapin::types::FieldTable::default())
            .await
            .map_err(|e| BenchError::Setup(format!("declaring queue {q}: {e}")))?;
    }
    let _ = conn.close(200, "declared".into()).await;

    let mbx = MessageBox::connect(url, 2).await?;
    mbx.init(None).await?;
    mbx.host_create(&HostSpec {
        name: BENCH_HOST.to_owned(),
        tracking: run.tracking,
        ..Default::default()
    })
    .await?;
    mbx.receive_port_create("in", false).await?;
    let (from, password) = address(&spec.amqp_url, q_in)?;
    let mut location = ReceiveLocationSpec::new("amqp-in", "in", &from);
    location.host = BENCH_HOST.to_owned();
    if let Some(p) = &password {
        location.settings.insert("password".into(), p.clone());
    }
    location
        .settings
        .insert("prefetch".into(), (2 * spec.batch.max(1)).to_string());
    mbx.receive_location_create(&location).await?;
    mbx.receive_location_set_enabled("amqp-in", true).await?;
    let (to, _) = address(&spec.amqp_url, q_out)?;
    let mut port = SendPortSpec::new("amqp-out", &to)
        .with_filter("mbx.ReceivePortName == \"in\"")
        .with_state(InitialState::Started);
    port.host = BENCH_HOST.to_owned();
    if let Some(p) = password {
        port.settings.insert("password".into(), p);
    }
    mbx.send_port_create(&port).await?;
    mbx.pool().close().await;

    let hosts = Hosts::start(&run.host_bin, url, run.instances, spec.batch).await?;
    let measured = rabbitmq::measure_between(spec, progress, q_in, q_out).await;
    let peak_rss_mb = hosts.peak_rss_mb();
    hosts.stop().await;
    let mut measured = measured?;
    measured.peak_rss_mb = peak_rss_mb;
    measured.notes = vec![format!(
        "{} instance(s) relaying queue → AMQP receive (prefetch {}) → MessageBox → AMQP send (confirms) → queue; producers and consumers as the rabbitmq peer's; latency from the producer's clock before the first publish to the delivery from the second queue",
        run.instances,
        2 * spec.batch.max(1)
    )];
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_carry_no_password() {
        let (a, p) = address("amqp://guest:guest@127.0.0.1:5672/%2f", "q").unwrap();
        assert_eq!((a.as_str(), p), ("amqp://127.0.0.1:5672/%2f?queue=q", None));
        let (a, p) = address("amqp://bench:s3cret@mq:5673/prod", "q").unwrap();
        assert_eq!(a, "amqp://bench@mq:5673/prod?queue=q");
        assert_eq!(p.as_deref(), Some("env:MBX_BENCH_AMQP_PASSWORD"));
    }
}
