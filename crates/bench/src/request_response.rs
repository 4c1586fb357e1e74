//! `--workload request-response`: HTTP clients → a two-way receive location → a
//! solicit-response port → an echo service on loopback (in this process) → the answer back
//! to the waiting client, through the MessageBox twice (the request and the response), as
//! BizTalk's messaging-only request-response does. The clock is the client's: a round trip
//! runs from sending the request to having read the whole answer.
//!
//! Without a rate (the saturation run): `CLIENTS_AT_SATURATION` clients ask back to back;
//! throughput is round trips completed in the measured interval. With a rate (the light-
//! load run): one client asks at a time, as a lone caller would; latency is its round
//! trips'.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use mbx_messagebox::config::{HostSpec, InitialState, SendPortSpec};
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::MessageBox;

use crate::mbx::{free_port, Hosts, MbxRun, BENCH_HOST};
use crate::measure::{thousands, Latencies, Progress, Throughput};
use crate::{database, BenchError, Measured, RunSpec};

/// Clients asking at once in the saturation run.
pub const CLIENTS_AT_SATURATION: usize = 64;

pub async fn run(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
) -> Result<Measured, BenchError> {
    let db = database::Scratch::create(&spec.database_url, "mbx").await?;
    let result = run_in(spec, run, progress, db.url()).await;
    db.drop_now().await;
    result
}

/// The echo service: answers each POST with its body.
async fn echo_service() -> Result<u16, BenchError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Setup(format!("binding the echo service: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| BenchError::Setup(format!("the echo service's address: {e}")))?
        .port();
    let app = Router::new().route("/echo", post(|body: bytes::Bytes| async move { body }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

async fn setup(mbx: &MessageBox, run: &MbxRun, service: u16) -> Result<(), BenchError> {
    mbx.init(None).await?;
    mbx.host_create(&HostSpec {
        name: BENCH_HOST.to_owned(),
        tracking: run.tracking,
        ..Default::default()
    })
    .await?;
    mbx.receive_port_create("rr", true).await?;
    let mut location = ReceiveLocationSpec::new("rr-http", "rr", "http:///rr");
    location.host = BENCH_HOST.to_owned();
    location
        .settings
        .insert("timeout".to_owned(), "30s".to_owned());
    mbx.receive_location_create(&location).await?;
    mbx.receive_location_set_enabled("rr-http", true).await?;
    let mut port = SendPortSpec::new("svc", &format!("http://127.0.0.1:{service}/echo"))
        .with_filter("mbx.ReceivePortName == \"rr\"")
        .with_state(InitialState::Started);
    port.host = BENCH_HOST.to_owned();
    port.solicit_response = true;
    mbx.send_port_create(&port).await?;
    Ok(())
}

async fn run_in(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
    url: &str,
) -> Result<Measured, BenchError> {
    let mbx = MessageBox::connect(url, 2).await?;
    let service = echo_service().await?;
    setup(&mbx, run, service).await?;
    mbx.pool().close().await;
    let ports: Vec<u16> = (0..run.instances.max(1))
        .map(|_| free_port())
        .collect::<Result<_, _>>()?;
    let hosts = Hosts::start_serving(&run.host_bin, url, &ports, spec.batch).await?;
    let body = bytes::Bytes::from(vec![b'x'; spec.body_size]);
    let (client, addresses) = served_on(&ports, &body).await?;

    let clients = if spec.rate.is_some() {
        1
    } else {
        CLIENTS_AT_SATURATION
    };
    let started = Instant::now();
    let measured = Measuring {
        from: started + spec.warmup,
        until: started + spec.warmup + spec.duration,
        done: Arc::new(AtomicU64::new(0)),
    };
    let mut tasks = Vec::new();
    for c in 0..clients {
        let address = addresses[c % addresses.len()].clone();
        let ask = ask_until(client.clone(), address, body.clone(), measured.clone());
        tasks.push(tokio::spawn(ask));
    }
    show_progress(spec, run, progress, started, &measured).await;
    let mut latencies = Latencies::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t
            .await
            .map_err(|e| BenchError::Setup(format!("client task: {e}")))?;
        latencies.merge(l);
        failed += f;
    }
    let peak_rss_mb = hosts.peak_rss_mb();
    hosts.stop().await;
    let mut notes = vec![format!(
        "{} instance(s), {} client(s) asking back to back, echo service on loopback, round trip at the client",
        run.instances, clients
    )];
    if failed > 0 {
        notes.push(format!("{failed} round trip(s) failed"));
    }
    Ok(Measured {
        throughput: Some(Throughput {
            count: measured.done.load(Ordering::Relaxed),
            seconds: spec.duration.as_secs_f64(),
        }),
        latency: latencies.summary(),
        peak_rss_mb,
        notes,
        details: None,
    })
}

/// An HTTP client and the location's address on each of the hosts' `ports`, once each
/// answers (the location is served once its loop started on each instance).
async fn served_on(
    ports: &[u16],
    body: &bytes::Bytes,
) -> Result<(reqwest::Client, Vec<String>), BenchError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| BenchError::Setup(format!("HTTP client: {e}")))?;
    let addresses: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/rr"))
        .collect();
    for address in &addresses {
        served(&client, address, body).await?;
    }
    Ok((client, addresses))
}

/// The measured interval, and the round trips completed in it.
#[derive(Clone)]
struct Measuring {
    from: Instant,
    until: Instant,
    done: Arc<AtomicU64>,
}

/// One client asking back to back until the end: its round trips' latencies in the
/// measured interval, and how many failed.
async fn ask_until(
    client: reqwest::Client,
    address: String,
    body: bytes::Bytes,
    measured: Measuring,
) -> (Latencies, u64) {
    let mut latencies = Latencies::new();
    let mut failed = 0u64;
    while Instant::now() < measured.until {
        let sent = Instant::now();
        let ok = match client.post(&address).body(body.clone()).send().await {
            Ok(r) if r.status().is_success() => r.bytes().await.is_ok_and(|b| b == body),
            _ => false,
        };
        if !ok {
            failed += 1;
            continue;
        }
        if sent >= measured.from && Instant::now() <= measured.until {
            latencies.record(sent.elapsed());
            measured.done.fetch_add(1, Ordering::Relaxed);
        }
    }
    (latencies, failed)
}

/// The round trips per second so far, every 500 ms until the end.
async fn show_progress(
    spec: &RunSpec,
    run: &MbxRun,
    progress: &Progress,
    started: Instant,
    measured: &Measuring,
) {
    while Instant::now() < measured.until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let measured_s = started.elapsed().saturating_sub(spec.warmup).as_secs_f64();
        progress.update(&format!(
            "{} {:.0}s/{:.0}s {} round trips/s",
            run.label,
            started.elapsed().as_secs_f64(),
            (spec.warmup + spec.duration).as_secs_f64(),
            thousands(if measured_s > 0.0 {
                measured.done.load(Ordering::Relaxed) as f64 / measured_s
            } else {
                0.0
            })
        ));
    }
}

/// Asks until the location answers (its loop starts on each instance shortly after the
/// host is ready).
async fn served(
    client: &reqwest::Client,
    address: &str,
    body: &bytes::Bytes,
) -> Result<(), BenchError> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.post(address).body(body.clone()).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > until {
            return Err(BenchError::Setup(format!(
                "the two-way location {address} did not answer within 30 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
