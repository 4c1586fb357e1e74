//! README command 1: `scripts/mbx-local up` starts a private PostgreSQL,
//! migrates, creates the demo flow and two host instances; a file dropped in `demo/in`
//! arrives in `demo/out` and in the ordered port's log; `down` stops everything and a
//! second `up` starts it again.
//!
//! The script runs as written, with `MBX_HOME` pointing at a temporary folder, the binaries
//! of this test build (`MBX_BIN_DIR`, `MBX_SKIP_BUILD=1`) and free ports.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mbx_e2e::{bin, free_port, Mbx, Run};
use serde_json::Value as Json;

/// A local cluster under a temporary `MBX_HOME`; `down` runs when dropped, even when the
/// test fails, before the folder is removed.
struct Cluster {
    home: tempfile::TempDir,
    pg_port: u16,
    admin_port: u16,
    /// `MBX_GROUPS`: 1, or 2 for the second group the demo forwards into.
    groups: u8,
    console_port: u16,
}

impl Cluster {
    fn new() -> Self {
        let home = tempfile::Builder::new()
            .prefix("mbx-local-")
            .tempdir()
            .expect("tempdir");
        // When the test runs as root, the script runs PostgreSQL as another user, which
        // must be able to reach the data folder below this one.
        set_mode(home.path(), 0o755);
        Self {
            home,
            pg_port: free_port(),
            admin_port: free_port(),
            console_port: free_port(),
            groups: 1,
        }
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    fn script(&self, args: &[&str]) -> Run {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mbx-local");
        let bin_dir = bin("mbx").parent().expect("bin dir").to_path_buf();
        Command::new(script)
            .args(args)
            .current_dir(self.home())
            .env("MBX_HOME", self.home())
            .env("MBX_SKIP_BUILD", "1")
            .env("MBX_BIN_DIR", bin_dir)
            .env("MBX_PG_PORT", self.pg_port.to_string())
            .env("MBX_ADMIN_PORT", self.admin_port.to_string())
            .env("MBX_CONSOLE_PORT", self.console_port.to_string())
            .env("MBX_WAIT_SECONDS", "40")
            .env("MBX_GROUPS", self.groups.to_string())
            .env_remove("MBX_DATABASE_URL")
            .env_remove("MBX_LOG")
            .output()
            .expect("run scripts/mbx-local")
            .into()
    }

    fn ok(&self, args: &[&str]) -> Run {
        let r = self.script(args);
        assert_eq!(
            r.code,
            0,
            "scripts/mbx-local {args:?} failed:\n{}{}\n{}",
            r.stdout,
            r.stderr,
            self.logs()
        );
        r
    }

    /// The tails of the cluster's logs, for failure messages.
    fn logs(&self) -> String {
        let mut all = String::new();
        for name in ["postgres.log", "host-1.log", "host-2.log", "host-3.log"] {
            let path = self.home().join(".mbx/logs").join(name);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            all.push_str(&format!("--- {name} (last lines)\n{tail}\n"));
        }
        all
    }

    fn host_pids(&self) -> Vec<i64> {
        (1..=2)
            .map(|n| {
                let path = self.home().join(format!(".mbx/run/host-{n}.pid"));
                std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                    .trim()
                    .parse()
                    .expect("pid file holds a pid")
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn accepting(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().expect("addr"),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Polls `cond` every 100 ms until it holds or `limit` passes.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The URL the script tells the user to export.
fn exported_url(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("export MBX_DATABASE_URL="))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `export MBX_DATABASE_URL=` line in:\n{stdout}"))
        .to_owned()
}

/// (id, pid, state) of every instance.
fn instances(mbx: &Mbx) -> Vec<(String, i64, String)> {
    let list = mbx.json(&["instance", "list"]);
    list.as_array()
        .expect("instance list is an array")
        .iter()
        .map(|i| {
            (
                i["id"].as_str().expect("id").to_owned(),
                i["pid"].as_i64().expect("pid"),
                i["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect()
}

fn alive_pids(mbx: &Mbx) -> Vec<i64> {
    let mut pids: Vec<i64> = instances(mbx)
        .into_iter()
        .filter(|i| i.2 == "alive")
        .map(|i| i.1)
        .collect();
    pids.sort();
    pids
}

fn named<'a>(list: &'a Json, name: &str) -> &'a Json {
    list.as_array()
        .expect("list is an array")
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no '{name}' in {list:#}"))
}

/// The process is gone (or a zombie nobody reaped yet).
fn exited(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the admin listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read response");
    response
}

/// POSTs `body` and returns the whole response (status line, headers, body); empty when
/// the listener does not take the connection (yet).
fn http_post(port: u16, path: &str, body: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut response = String::new();
    if s.write_all(request.as_bytes()).is_ok() {
        let _ = s.read_to_string(&mut response);
    }
    response
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn mbx_local_up_runs_the_demo_flow_and_down_stops_everything() {
    let cluster = Cluster::new();
    let home = cluster.home().to_path_buf();

    // up: PostgreSQL, init, demo bindings, two alive hosts, and what to do next
    let up = cluster.ok(&["up"]);
    assert!(
        up.stdout.contains("demo/in"),
        "up names demo/in:\n{}",
        up.stdout
    );
    assert!(up.stdout.contains("down"), "up names down:\n{}", up.stdout);
    let url = exported_url(&up.stdout);
    assert!(
        url.contains(&format!(":{}/", cluster.pg_port)),
        "the private PostgreSQL listens on MBX_PG_PORT: {url}"
    );
    assert!(accepting(cluster.pg_port));
    assert!(
        home.join(".mbx/pg/PG_VERSION").exists(),
        "data under .mbx/pg"
    );
    let mbx = Mbx::new(url.clone());

    let mut pids = cluster.host_pids();
    pids.sort();
    assert_eq!(
        alive_pids(&mbx),
        pids,
        "two alive instances, the script's hosts"
    );
    let first_ids: Vec<String> = instances(&mbx).into_iter().map(|i| i.0).collect();

    let locations = mbx.json(&["receive-location", "list"]);
    let demo_in = named(&locations, "demo-in");
    assert_eq!(demo_in["port"], "demo");
    assert_eq!(demo_in["pipeline"], "xml");
    assert_eq!(demo_in["enabled"], true);
    assert_eq!(
        demo_in["address"],
        format!("file://{}/demo/in/*.xml", home.display())
    );
    assert_eq!(demo_in["promote"]["Demo.Region"], "/order/region");
    let ports = mbx.json(&["send-port", "list"]);
    let out = named(&ports, "demo-out");
    assert_eq!(out["state"], "started");
    assert_eq!(
        out["address"],
        format!("file://{}/demo/out/%MessageID%.xml", home.display())
    );
    assert_eq!(out["filter"], r#"mbx.ReceivePortName == "demo""#);
    let ordered = named(&ports, "demo-ordered");
    assert_eq!(ordered["state"], "started");
    assert_eq!(ordered["ordered"], true);
    assert_eq!(
        ordered["address"],
        format!("file://{}/demo/ordered/orders.log", home.display())
    );
    let quotes = named(&locations, "quotes-http");
    assert_eq!(quotes["address"], "http:///quote");
    assert_eq!(quotes["enabled"], true);
    let svc = named(&ports, "quote-svc");
    assert_eq!(svc["solicit_response"], true);
    assert_eq!(svc["state"], "started");

    // the admin listener answers, when the hosts have one
    let admin = home.join(".mbx/run/host-1.admin");
    if admin.exists() {
        let port: u16 = std::fs::read_to_string(&admin)
            .expect("admin port")
            .trim()
            .parse()
            .expect("port number");
        let response = http_get(port, "/healthz");
        let status_line = response.lines().next().unwrap_or_default();
        assert!(status_line.contains(" 200 "), "/healthz: {response}");
    }

    // up again is idempotent: same hosts, nothing duplicated
    let again = cluster.ok(&["up"]);
    assert!(again.stdout.contains("already running"), "{}", again.stdout);
    assert_eq!(cluster.host_pids().len(), 2);
    assert_eq!(alive_pids(&mbx), pids, "no extra host instance");
    // the file flow, the request-response flow, the order scenario and the orchestration
    // demo's outputs (demo-in, quotes-http, orders-in, payments-in; demo-out,
    // demo-ordered, quote-svc, manager-a-results, manager-b-results, demo-approvals,
    // demo-orders)
    assert_eq!(
        mbx.json(&["receive-location", "list"])
            .as_array()
            .map(Vec::len),
        Some(4)
    );
    assert_eq!(
        mbx.json(&["send-port", "list"]).as_array().map(Vec::len),
        Some(7)
    );
    let mut orchestrations: Vec<String> = mbx
        .json(&["orchestration", "list"])
        .as_array()
        .expect("a list")
        .iter()
        .map(|o| o["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    orchestrations.sort();
    assert_eq!(
        orchestrations,
        [
            "order-broker",
            "order-manager",
            "order-manager-a",
            "order-manager-b"
        ]
    );

    let status = cluster.ok(&["status"]);
    assert!(
        status.stdout.contains("host-1: running"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("host-2: running"),
        "{}",
        status.stdout
    );

    // the demo flow, as the output says: drop the sample in demo/in
    let sample = std::fs::read(home.join("demo/sample-order.xml")).expect("sample copied");
    std::fs::copy(
        home.join("demo/sample-order.xml"),
        home.join("demo/in/sample-order.xml"),
    )
    .expect("drop the sample");
    let limit = Duration::from_secs(30);
    wait_for("the order in demo/out", limit, || {
        files_in(&home.join("demo/out"))
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "xml"))
    });
    let delivered = files_in(&home.join("demo/out"));
    let delivered: Vec<&PathBuf> = delivered
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "xml"))
        .collect();
    assert_eq!(delivered.len(), 1, "one file per message: {delivered:?}");
    assert_eq!(std::fs::read(delivered[0]).expect("read"), sample);
    let log = home.join("demo/ordered/orders.log");
    wait_for("the order in demo/ordered/orders.log", limit, || {
        std::fs::read(&log).map(|b| b == sample).unwrap_or(false)
    });
    wait_for("demo/in to be empty", limit, || {
        files_in(&home.join("demo/in")).is_empty()
    });

    // the request-response demo, as the output says: a quote through the MessageBox
    let http: u16 = std::fs::read_to_string(home.join(".mbx/run/host-1.http"))
        .expect("host-1's HTTP port recorded")
        .trim()
        .parse()
        .expect("a port");
    let mut answer = String::new();
    wait_for(
        "a quote from the demo's request-response flow",
        limit,
        || {
            answer = http_post(http, "/quote", r#"{"item":"widget"}"#);
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
        },
    );
    assert!(answer.contains(r#""item": "widget""#), "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    // the orchestration demo, as the README says: a request, then its approval
    for (kind, body) in [
        ("OrderRequest", r#"{"item":"widget"}"#),
        ("OrderApproval", r#"{"approved":true}"#),
    ] {
        let typed = format!("mbx.MessageType={kind}");
        let published = mbx.run_with_stdin(
            &[
                "message",
                "publish",
                "--content-type",
                "application/json",
                "--promote",
                &typed,
                "--promote",
                "Order.Id=A-1",
            ],
            body.as_bytes(),
        );
        assert_eq!(published.code, 0, "{}", published.stderr);
        if kind == "OrderRequest" {
            // the approval is for the instance waiting for it (its correlation fixed)
            wait_for("the approval request", limit, || {
                !files_in(&home.join("demo/approvals")).is_empty()
            });
        }
    }
    wait_for("the order confirmed", limit, || {
        !files_in(&home.join("demo/orders")).is_empty()
    });
    let confirmed = std::fs::read_to_string(&files_in(&home.join("demo/orders"))[0]).expect("read");
    assert!(confirmed.contains(r#""orderId":"A-1""#), "{confirmed}");
    // the seeds' scenario, as the README says: the sample order and its payment dropped,
    // order manager A confirms it (the broker paired them; the amount is below 1000)
    let dropped = Instant::now();
    for sample in ["sample-order.json", "sample-payment.json"] {
        let tmp = home.join(format!("demo/drop/.{sample}"));
        std::fs::copy(home.join("demo").join(sample), &tmp).expect("copy the sample");
        std::fs::rename(&tmp, home.join("demo/drop").join(sample)).expect("drop the sample");
    }
    let ledger = home.join("demo/out/manager-A.jsonl");
    wait_for("order 1001 confirmed by manager A", limit, || {
        std::fs::read_to_string(&ledger).is_ok_and(|l| l.contains(r#""result":"confirmed""#))
    });
    eprintln!(
        "the sample order confirmed {:?} after it was dropped",
        dropped.elapsed()
    );
    let line = std::fs::read_to_string(&ledger).expect("manager A's ledger");
    let result: Json = serde_json::from_str(line.trim_end()).expect("one JSON line");
    assert_eq!(result["orderId"], 1001, "{line}");
    assert_eq!(result["customer"], "Fabrikam", "{line}");
    assert!(line.ends_with('\n'), "a JSON line: {line:?}");
    // the web console, as the output says
    let console: u16 = std::fs::read_to_string(home.join(".mbx/run/console.port"))
        .expect("the console's port recorded")
        .trim()
        .parse()
        .expect("a port");
    assert!(
        up.stdout.contains(&format!("http://127.0.0.1:{console}/")),
        "{}",
        up.stdout
    );
    let mut page = String::new();
    wait_for("the console's overview", limit, || {
        page = http_get(console, "/");
        page.contains("demo-ordered")
    });
    assert!(page.contains("demo-in"), "{page}");
    let console_pid: i64 = std::fs::read_to_string(home.join(".mbx/run/console.pid"))
        .expect("the console's pid")
        .trim()
        .parse()
        .expect("a pid");
    let quote_pid: i64 = std::fs::read_to_string(home.join(".mbx/run/quote.pid"))
        .expect("the quote service's pid")
        .trim()
        .parse()
        .expect("a pid");

    // down: the hosts stop gracefully, then PostgreSQL
    let down = cluster.ok(&["down"]);
    assert!(
        !accepting(cluster.pg_port),
        "PostgreSQL stopped:\n{}",
        down.stdout
    );
    for pid in &pids {
        assert!(exited(*pid), "host pid {pid} still runs after down");
    }
    wait_for("the quote service to stop", limit, || exited(quote_pid));
    wait_for("the console to stop", limit, || exited(console_pid));
    let status = cluster.ok(&["status"]);
    assert!(
        status.stdout.contains("host-1: not running"),
        "{}",
        status.stdout
    );

    // up after down reuses the data; the first instances deregistered (stopped)
    let up = cluster.ok(&["up"]);
    assert_eq!(exported_url(&up.stdout), url, "same URL after a restart");
    let now = instances(&mbx);
    for id in &first_ids {
        let state = now
            .iter()
            .find(|i| &i.0 == id)
            .map(|i| i.2.as_str())
            .unwrap_or("missing");
        assert_eq!(state, "stopped", "instance {id} after down");
    }
    assert_eq!(alive_pids(&mbx).len(), 2);
    cluster.ok(&["down"]);
    assert!(!accepting(cluster.pg_port));
}

#[test]
fn mbx_local_with_two_groups_forwards_the_demo_into_the_second() {
    let mut cluster = Cluster::new();
    cluster.groups = 2;
    let home = cluster.home().to_path_buf();
    let up = cluster.ok(&["up"]);
    assert!(up.stdout.contains("group 'managers'"), "{}", up.stdout);
    let url = exported_url(&up.stdout);
    let second = Mbx::new(url.replace("/mbx", "/mbx_managers"));
    let first = Mbx::new(url);
    assert_eq!(alive_pids(&first).len(), 2);
    assert_eq!(
        alive_pids(&second).len(),
        1,
        "host-3 serves the second group"
    );
    let links = first.json(&["group", "link", "list"]);
    assert_eq!(links[0]["target_group_name"], "managers");

    // a file dropped in the first group arrives in the second, once
    std::fs::copy(
        home.join("demo/sample-order.xml"),
        home.join("demo/in/sample-order.xml"),
    )
    .expect("drop the sample");
    let far = home.join("demo/far");
    wait_for("the order in demo/far", Duration::from_secs(30), || {
        files_in(&far)
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "xml"))
    });
    wait_for("drained in both groups", Duration::from_secs(30), || {
        first.json(&["stats"])["spool_messages"] == 0
            && second.json(&["stats"])["spool_messages"] == 0
    });
    assert_eq!(files_in(&far).len(), 1, "exactly once in the second group");

    // order manager B runs in the second group only: an order of 1000 or more goes there
    let names = |mbx: &Mbx| -> Vec<String> {
        mbx.json(&["orchestration", "list"])
            .as_array()
            .expect("a list")
            .iter()
            .map(|o| o["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert!(!names(&first).contains(&"order-manager-b".to_owned()));
    assert_eq!(names(&second), ["order-manager-b"]);
    let drop = home.join("demo/drop");
    for (name, body) in [
        (
            "big-order.json",
            r#"{"id": 2002, "customer": "Contoso", "amount": 4000}"#,
        ),
        ("big-payment.json", r#"{"payment_for": 2002}"#),
    ] {
        std::fs::write(drop.join(format!(".{name}")), body).expect("write");
        std::fs::rename(drop.join(format!(".{name}")), drop.join(name)).expect("drop");
    }
    let ledger = home.join("demo/out/manager-B.jsonl");
    wait_for(
        "order 2002 confirmed by manager B",
        Duration::from_secs(30),
        || std::fs::read_to_string(&ledger).is_ok_and(|l| l.contains(r#""orderId":2002"#)),
    );
    let result = std::fs::read_to_string(&ledger).expect("manager B's ledger");
    assert!(result.contains(r#""result":"confirmed""#), "{result}");
    let completed = second.json(&[
        "orchestration",
        "instance",
        "list",
        "--orchestration",
        "order-manager-b",
        "--state",
        "completed",
    ]);
    assert_eq!(completed.as_array().map(Vec::len), Some(1), "{completed}");
    let status = cluster.ok(&["status"]);
    assert!(
        status.stdout.contains("host-3: running"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("second group"), "{}", status.stdout);
    cluster.ok(&["down"]);
    assert!(!accepting(cluster.pg_port));
}
