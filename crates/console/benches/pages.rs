//! How fast the console's pages answer at scale: 1,000 send ports, 100,000 suspended
//! items (and 1,000 more routing failures) and 20,000 messages waiting; 100 of the ports
//! ordered. A measurement, not a test (docs/PERFORMANCE.md):
//!
//!   MBX_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo bench -p mbx-console --bench pages
//!
//! It creates a scratch database on that server (dropped at the end), fills it through the MessageBox API, serves the console in this process on
//! loopback and requests each page 20 times over HTTP, printing the median, the 95th
//! percentile and the largest time per page.

use std::time::{Duration, Instant};

use mbx_console::{Console, ConsoleConfig};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::{Context, MessageBox, Value};

const PORTS: usize = 1_000;
/// Ports whose messages are suspended (unenlist --force): 50,000 items, 1,000 each.
const SUSPENDING_PORTS: usize = 50;
const PER_SUSPENDING_PORT: usize = 1_000;
/// Routing failures (no subscriber): the other 50,000 items.
const ROUTING_FAILURES: usize = 50_000;
/// Messages waiting on the other ports (stopped): 20 each on 1,000 ports.
const WAITING_PER_PORT: usize = 20;
const RUNS: usize = 20;
const BATCH: usize = 1_000;

fn message(region: &str, i: usize) -> NewMessage {
    let mut ctx = Context::new();
    ctx.promote("Bench.Port", Value::String(region.into()))
        .expect("promote");
    let body = format!(r#"{{"order":{{"id":{i},"region":"{region}","lines":[1,2,3]}}}}"#);
    NewMessage::new(body.into_bytes(), "application/json", ctx)
}

async fn publish_all(mbx: &MessageBox, messages: Vec<NewMessage>) {
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let batch: Vec<NewMessage> = messages.by_ref().take(BATCH).collect();
        mbx.publish(&Publisher::default(), batch)
            .await
            .expect("publish");
    }
}

fn port_name(i: usize) -> String {
    format!("port-{i:04}")
}

async fn fill(mbx: &MessageBox) {
    let started = Instant::now();
    for i in 0..PORTS {
        let name = port_name(i);
        let mut spec = SendPortSpec::new(
            &name,
            &format!("file:///tmp/mbx-console-bench/{name}/%MessageID%.json"),
        )
        .with_filter(&format!("Bench.Port == \"{name}\""))
        .with_state(InitialState::Stopped);
        // one in ten ordered (the ordered-ports page lists 100)
        spec.ordered = i % 10 == 5;
        mbx.send_port_create(&spec).await.expect("send port");
    }
    eprintln!("{PORTS} send ports in {:.1?}", started.elapsed());
    let started = Instant::now();
    let waiting: Vec<NewMessage> = (0..PORTS)
        .flat_map(|p| (0..WAITING_PER_PORT).map(move |i| message(&port_name(p), i)))
        .collect();
    let suspending: Vec<NewMessage> = (0..SUSPENDING_PORTS)
        .flat_map(|p| (0..PER_SUSPENDING_PORT).map(move |i| message(&port_name(p), 100 + i)))
        .collect();
    publish_all(mbx, suspending).await;
    for p in 0..SUSPENDING_PORTS {
        mbx.send_port_unenlist(&port_name(p), true)
            .await
            .expect("unenlist --force");
    }
    let unrouted: Vec<NewMessage> = (0..ROUTING_FAILURES)
        .map(|i| message("nobody", i))
        .collect();
    publish_all(mbx, unrouted).await;
    publish_all(mbx, waiting).await;
    let stats = mbx.stats().await.expect("stats");
    eprintln!(
        "{} suspended items, {} messages in the spool, in {:.1?}",
        stats.suspended_total,
        stats.spool_messages,
        started.elapsed()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The CSRF value the overview's forms carry.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF value")
        + 19;
    page[at..at + 64].to_owned()
}

#[tokio::main]
async fn main() {
    let server = std::env::var("MBX_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let scratch = mbx_bench::database::Scratch::create(&server, "console")
        .await
        .expect("a scratch database");
    let url = scratch.url().to_owned();
    let mbx = MessageBox::connect(&url, 8).await.expect("connect");
    mbx.init(None).await.expect("init");
    fill(&mbx).await;

    let console = Console::bind(
        mbx.clone(),
        ConsoleConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            token: None,
            read_only: false,
        },
    )
    .await
    .expect("console");
    let base = format!("http://{}", console.local_addr().expect("addr"));
    let server_task = tokio::spawn(console.serve(std::future::pending()));
    let http = reqwest::Client::new();
    let item = mbx
        .suspended_ids(&mbx_messagebox::suspended::Selector {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .expect("ids")[0];
    let detail = mbx.suspended_show(item).await.expect("item");
    let deep = mbx
        .suspended_ids(&mbx_messagebox::suspended::Selector {
            limit: Some(90_001),
            ..Default::default()
        })
        .await
        .expect("ids")[90_000];
    let overview = http
        .get(format!("{base}/"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    let took = overview
        .split("snapshot took ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or("?")
        .to_owned();
    assert!(
        overview.contains("data-port=\"port-0099\"")
            && !overview.contains("data-port=\"port-0100\""),
        "the overview's first page holds the first 100 ports"
    );
    let csrf = csrf_of(&overview);
    let pages = [
        ("overview (ports 1-100 of 1,000)", "/".to_owned()),
        ("overview, live part", "/live/overview".to_owned()),
        ("overview, page 10", "/?page=10".to_owned()),
        ("overview, name filter", "/?q=port-09".to_owned()),
        ("suspended, first page", "/suspended".to_owned()),
        (
            "suspended, one port",
            "/suspended?port=port-0007".to_owned(),
        ),
        (
            "suspended, error text (counted)",
            "/suspended?error=no%20subscriber".to_owned(),
        ),
        (
            "suspended, kind + age (counted)",
            "/suspended?kind=failed&older=1s".to_owned(),
        ),
        (
            "suspended, page after item 90,000",
            format!("/suspended?after={deep}"),
        ),
        ("suspended item detail", format!("/suspended/{item}")),
        (
            "tracking",
            format!("/track?message={}", detail.item.message_id),
        ),
        ("ordered ports", "/ordered".to_owned()),
    ];
    println!("| page | median ms | p95 ms | max ms |");
    println!("|---|---:|---:|---:|");
    for (label, path) in pages {
        let mut times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let t = Instant::now();
            let r = http.get(format!("{base}{path}")).send().await.expect("get");
            assert!(r.status().is_success(), "{path}: {}", r.status());
            let _ = r.bytes().await.expect("body");
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "| {label} | {} | {} | {} |",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.95)),
            ms(times[times.len() - 1])
        );
    }
    // confirming "resume all matching" pins every matching id
    let total = mbx.stats().await.expect("stats").suspended_total;
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = http
            .post(format!("{base}/suspended/confirm"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}&do=resume-matching"))
            .send()
            .await
            .expect("post");
        assert!(r.status().is_success(), "confirm: {}", r.status());
        let body = r.text().await.expect("body");
        assert!(
            body.contains(&format!("id=\"confirm-count\">{total}<")),
            "the confirmation counts every item: {}",
            &body[body.find("<main>").unwrap_or(0)..][..600.min(body.len())]
        );
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "| confirm \"resume all {total} matching\" (pins the ids) | {} | {} | {} |",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.95)),
        ms(times[times.len() - 1])
    );
    println!("\nthe sampler's snapshot (all counters, hosts, ports, locations) took {took} ms");
    server_task.abort();
    mbx.pool().close().await;
    scratch.drop_now().await;
}
