//! A small run of the real `mbx bench` (seconds, every workload, every peer, scaling and
//! drain), so the benchmark cannot rot. It asserts the report's shape and that every
//! system moved messages — never a speed: figures belong in docs/PERFORMANCE.md.

use mbx_e2e::{server_url, Mbx};

fn amqp_url() -> String {
    std::env::var("MBX_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

#[test]
fn a_small_benchmark_run_reports_every_workload_and_peer() {
    let mbx = Mbx::new(server_url());
    let amqp = amqp_url();
    let out = mbx.ok(&[
        "bench",
        "--workload",
        "all",
        "--duration",
        "1s",
        "--warmup",
        "300ms",
        "--batch",
        "20",
        "--peers",
        "pgmq,rabbitmq,ceiling",
        "--scaling",
        "1,2",
        "--backlog",
        "300",
        "--amqp-url",
        &amqp,
        "--json",
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));

    let results = report["results"].as_array().expect("a results list");
    let row = |workload: &str, system: &str| {
        results
            .iter()
            .find(|r| r["workload"] == workload && r["system"] == system)
            .unwrap_or_else(|| panic!("no result for {workload}/{system}: {out}"))
    };
    for (workload, system) in [
        ("unordered", "mbx"),
        ("unordered", "pgmq"),
        ("unordered", "rabbitmq"),
        ("unordered", "ceiling"),
        ("unordered-tracking-all", "mbx"),
        ("ordered", "mbx"),
        ("fanout", "mbx"),
        ("many-ordered", "mbx"),
        ("ordered-by", "mbx"),
        ("amqp", "mbx"),
    ] {
        let r = row(workload, system);
        let rate = r["msgs_per_s"].as_f64().expect("msgs_per_s");
        assert!(rate > 0.0, "{workload}/{system} moved nothing: {r}");
        for key in ["p50_ms", "p99_ms", "peak_rss_mb"] {
            assert!(r.get(key).is_some(), "{workload}/{system} lacks {key}: {r}");
        }
        if system == "mbx" {
            let rss = r["peak_rss_mb"].as_f64().expect("mbx reports host RSS");
            assert!(rss > 0.0, "{r}");
            // publish → hand-off latency at 50% load, in order
            let (p50, p99, max) = (
                r["p50_ms"].as_f64().expect("p50"),
                r["p99_ms"].as_f64().expect("p99"),
                r["max_ms"].as_f64().expect("max"),
            );
            assert!(0.0 <= p50 && p50 <= p99 && p99 <= max, "{r}");
        }
    }
    let fanout = row("fanout", "mbx");
    let (msgs, deliveries) = (
        fanout["msgs_per_s"].as_f64().unwrap(),
        fanout["deliveries_per_s"].as_f64().unwrap(),
    );
    assert!(
        (deliveries - 10.0 * msgs).abs() < 1e-6 * deliveries.max(1.0),
        "fan-out counts 10 deliveries per message: {fanout}"
    );

    let ratios = report["ratios"].as_array().expect("ratios");
    for peer in ["pgmq", "rabbitmq", "ceiling"] {
        assert!(
            ratios
                .iter()
                .any(|r| r["peer"] == peer && r["ratio"].as_f64().is_some_and(|x| x > 0.0)),
            "no ratio to {peer}: {out}"
        );
    }
    let scaling = report["scaling"].as_array().expect("scaling");
    assert_eq!(
        scaling
            .iter()
            .map(|s| s["instances"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    let drain = &report["drain"];
    assert_eq!(drain["backlog"], 300, "{drain}");
    let spool = drain["spool"].as_array().expect("spool samples");
    assert_eq!(
        spool.last().map(|s| s["deliveries"].clone()),
        Some(serde_json::json!(0)),
        "the drain ends with an empty spool: {drain}"
    );
    assert!(report["machine"]["cores"].as_u64().is_some_and(|c| c > 0));
    assert_eq!(report["postgres"]["fsync"], "on", "durable settings: {out}");
}

#[test]
fn bench_refuses_bad_arguments_in_one_line() {
    let mbx = Mbx::new(server_url());
    let line = mbx.fails(&["bench", "--workload", "sideways"], 2);
    assert!(
        line.contains("--workload") && line.contains("many-ordered"),
        "{line}"
    );
    let line = mbx.fails(&["bench", "--duration", "soon"], 2);
    assert!(
        line.contains("--duration") && line.contains("20s"),
        "{line}"
    );
    let line = mbx.fails(&["bench", "--peers", "kafka"], 2);
    assert!(line.contains("--peers") && line.contains("pgmq"), "{line}");
    let line = mbx.fails(&["bench", "--host-bin", "/nonexistent/mbx-host"], 2);
    assert!(line.contains("--host-bin"), "{line}");
    // a shape knob that would change nothing is refused, naming the workload it shapes
    let line = mbx.fails(&["bench", "--workload", "fanout", "--ports", "10"], 2);
    assert!(
        line.contains("--ports") && line.contains("unordered"),
        "{line}"
    );
    let line = mbx.fails(
        &["bench", "--workload", "unordered", "--subscribers", "5"],
        2,
    );
    assert!(
        line.contains("--subscribers") && line.contains("fanout"),
        "{line}"
    );
    let line = mbx.fails(&["bench", "--workload", "unordered", "--ports", "0"], 2);
    assert!(
        line.contains("--ports") && line.contains("1..10000"),
        "{line}"
    );
    let line = mbx.fails(&["bench", "--body-size", "0"], 2);
    assert!(line.contains("--body-size"), "{line}");
    let line = mbx.fails(&["bench", "--endpoint-latency", "2m"], 2);
    assert!(line.contains("--endpoint-latency"), "{line}");
}

/// The cost-curve knobs shape the run: `--subscribers 3` gives three deliveries per
/// message, `--ports 3` and `--endpoint-latency` are reported with the run.
#[test]
fn the_shape_knobs_shape_the_run() {
    let mbx = Mbx::new(server_url());
    let base = [
        "bench",
        "--duration",
        "1s",
        "--warmup",
        "300ms",
        "--batch",
        "20",
        "--peers",
        "",
        "--scaling",
        "",
        "--backlog",
        "0",
        "--no-half-load",
        "--no-tracking-all",
        "--json",
    ];
    let run = |extra: &[&str]| -> serde_json::Value {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = mbx.ok(&args);
        let report: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
        report["results"][0].clone()
    };
    let fanout = run(&["--workload", "fanout", "--subscribers", "3"]);
    let (msgs, deliveries) = (
        fanout["msgs_per_s"].as_f64().expect("msgs_per_s"),
        fanout["deliveries_per_s"]
            .as_f64()
            .expect("deliveries_per_s"),
    );
    assert!(msgs > 0.0, "{fanout}");
    assert!(
        (deliveries / msgs - 3.0).abs() < 1e-9,
        "three deliveries per message: {fanout}"
    );
    let spread = run(&[
        "--workload",
        "unordered",
        "--ports",
        "3",
        "--endpoint-latency",
        "1ms",
        "--body-size",
        "4096",
    ]);
    let notes = spread["notes"].to_string();
    assert!(
        notes.contains("3 send port(s)") && notes.contains("endpoint latency 1 ms"),
        "{spread}"
    );
    assert!(
        spread["msgs_per_s"].as_f64().is_some_and(|r| r > 0.0),
        "{spread}"
    );
}

/// `mbx bench` is the `mbx-bench` binary next to `mbx` (issue 27): its `--help` (every
/// option, with examples) comes through `mbx`, and `mbx`'s own `--output json` reaches it.
#[test]
fn mbx_bench_runs_the_benchmark_binary() {
    let mbx = Mbx::new(server_url());
    let help = mbx.ok(&["bench", "--help"]);
    for expected in ["--workload", "--endpoint-latency", "Examples", "mbx bench"] {
        assert!(help.contains(expected), "{expected} missing:\n{help}");
    }
    // `--output json` before or after `bench` is mbx-bench's `--json`; a bad argument
    // is still refused in one line, exit 2, by mbx-bench
    let line = mbx.fails(&["--output", "json", "bench", "--runs", "0"], 2);
    assert!(line.contains("--runs"), "{line}");
    let line = mbx.fails(&["bench", "--runs", "0", "--output", "json"], 2);
    assert!(line.contains("--runs"), "{line}");
}
