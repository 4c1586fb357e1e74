//! Bad input through the real binaries. Send side, through a real `mbx-host`: a dynamic
//! address or a FILE name macro that escapes its folder and a promoted value with CRLF used
//! as an HTTP header are refused — suspended non-resumable with the reason — and nothing is
//! written or sent. Receive side: a file over the location's `--max-message-size` is moved
//! to `.mbx-rejected/` with a reason file and nothing is published; a malformed XML body is
//! suspended with the parser's offset. Start-up: `mbx-host` with a bad argument exits 2 with
//! one line; `mbx` and `mbx-host` on an unreachable database or on a MessageBox with newer
//! migrations say so naming the URL, password hidden, and the fix.
//! (AMQP receive does not exist yet, so its dead-letter row is not tested here.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use mbx_e2e::{
    bin, database_url, eventually, files_in, free_port, messagebox, order_route, start_host,
    wait_for, wait_for_alive, wait_for_empty_spool, FileRoute, Mbx, FAST_HOST,
};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Publisher};
use mbx_messagebox::suspended::{Kind, Selector, SuspendedItem};
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::PgPool;

async fn the_one_failed_final_item(mbx: &MessageBox) -> SuspendedItem {
    failed_final_items(mbx, 1)
        .await
        .into_iter()
        .next()
        .expect("item")
}

/// Waits for `n` items suspended non-resumable (`failed-final`) and returns them.
async fn failed_final_items(mbx: &MessageBox, n: usize) -> Vec<SuspendedItem> {
    let sel = Selector {
        kind: Some(Kind::FailedFinal),
        ..Selector::default()
    };
    wait_for(
        &format!("{n} message(s) to be suspended non-resumable"),
        Duration::from_secs(30),
        || async { mbx.suspended_list(&sel).await.expect("list").len() >= n },
    )
    .await;
    let items = mbx.suspended_list(&sel).await.expect("list");
    assert_eq!(items.len(), n, "{items:?}");
    assert!(items.iter().all(|i| !i.resumable), "{items:?}");
    items
}

/// Every file under `dir`, recursively, as paths relative to it.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_dynamic_address_escaping_its_folder_is_refused_and_nothing_is_written(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let root = tempfile::tempdir().expect("tempdir");
    let allowed = root.path().join("partners");
    std::fs::create_dir_all(&allowed).expect("mkdir");
    let mut port = SendPortSpec::new("dyn", "file:///unused")
        .with_filter("exists(T.Id)")
        .with_state(InitialState::Started);
    port.address = None;
    port.allow_address = vec![format!("file://{}/", allowed.display())];
    mbx.send_port_create(&port).await.expect("dynamic port");
    let _host = start_host(&database_url(&pool), FAST_HOST);
    wait_for_alive(&mbx, 1).await;

    let mut ctx = Context::new();
    ctx.promote("T.Id", Value::Integer(1)).expect("promote");
    let escape = format!("file://{}/../escaped.xml", allowed.display());
    ctx.write(
        mbx_messagebox::context::system::OUTBOUND_TRANSPORT_LOCATION,
        Value::String(escape.clone()),
    )
    .expect("address");
    mbx.publish(
        &Publisher::default(),
        vec![NewMessage::new(b"<x/>".to_vec(), "application/xml", ctx)],
    )
    .await
    .expect("publish");

    let item = the_one_failed_final_item(&mbx).await;
    assert!(
        item.reason.contains("not under an allowed prefix"),
        "{}",
        item.reason
    );
    assert!(
        !root.path().join("escaped.xml").exists(),
        "nothing written outside the allowed folder"
    );
}

/// A dynamic port's allowed folder is compared as a folder, resolved on disk at send time:
/// an address through a symlink inside it that leads outside, and one in a sibling folder
/// whose name only starts like it, are each suspended non-resumable with a reason naming
/// the address and the allow-list, and nothing is written outside; an address really
/// inside is delivered.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_symlink_leading_out_of_the_allowed_folder_is_refused_and_an_address_inside_delivered(
    pool: PgPool,
) {
    let mbx = messagebox(&pool).await;
    let root = tempfile::tempdir().expect("tempdir");
    let allowed = root.path().join("partners");
    let outside = root.path().join("outside");
    let sibling = root.path().join("partners-outside");
    for d in [allowed.join("acme"), outside.clone(), sibling.clone()] {
        std::fs::create_dir_all(&d).expect("mkdir");
    }
    std::os::unix::fs::symlink(&outside, allowed.join("escape")).expect("symlink");
    let prefix = format!("file://{}", allowed.display());
    let mut port = SendPortSpec::new("dyn", "file:///unused")
        .with_filter("exists(T.Id)")
        .with_state(InitialState::Started);
    port.address = None;
    port.allow_address = vec![prefix.clone()];
    mbx.send_port_create(&port).await.expect("dynamic port");
    let _host = start_host(&database_url(&pool), FAST_HOST);
    wait_for_alive(&mbx, 1).await;

    let through_link = format!("file://{}/escape/stolen.xml", allowed.display());
    let beside = format!("file://{}/beside.xml", sibling.display());
    let inside = format!("file://{}/acme/legit.xml", allowed.display());
    let messages = [&through_link, &beside, &inside]
        .into_iter()
        .enumerate()
        .map(|(i, address)| {
            let mut ctx = Context::new();
            ctx.promote("T.Id", Value::Integer(i as i64))
                .expect("promote");
            ctx.write(
                mbx_messagebox::context::system::OUTBOUND_TRANSPORT_LOCATION,
                Value::String(address.clone()),
            )
            .expect("address");
            NewMessage::new(b"<x/>".to_vec(), "application/xml", ctx)
        })
        .collect();
    mbx.publish(&Publisher::default(), messages)
        .await
        .expect("publish");

    let items = failed_final_items(&mbx, 2).await;
    for address in [&through_link, &beside] {
        let item = items
            .iter()
            .find(|i| i.reason.contains(&format!("address '{address}'")))
            .unwrap_or_else(|| panic!("no item names {address}: {items:?}"));
        assert!(
            item.reason.contains("not under an allowed prefix") && item.reason.contains(&prefix),
            "{}",
            item.reason
        );
    }
    let legit = allowed.join("acme").join("legit.xml");
    wait_for(
        "the address inside to be delivered",
        Duration::from_secs(30),
        || async { legit.exists() },
    )
    .await;
    assert_eq!(std::fs::read(&legit).expect("read"), b"<x/>");
    assert!(
        tree(&outside).is_empty(),
        "written outside: {:?}",
        tree(&outside)
    );
    assert!(
        tree(&sibling).is_empty(),
        "written beside: {:?}",
        tree(&sibling)
    );
}

/// A prefix that cannot be compared unambiguously is refused where it is configured —
/// `send-port create`, `send-port update` and `mbx apply` — with exit 2 and one line naming
/// `--allow-address`, the problem and an example; nothing is created or changed.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_ambiguous_allowed_prefix_is_refused_where_it_is_configured(pool: PgPool) {
    let box_ = messagebox(&pool).await;
    let mbx = Mbx::new(database_url(&pool));
    for (prefix, says) in [
        ("https://partner.example/?x=1", "query"),
        ("https://partner.example/api/../admin", "'..'"),
        ("https://partner.example/api/%2e%2e/admin", "'..'"),
        ("https:///api/", "no host"),
        ("file:data/out", "absolute path"),
        ("file:///data/out?x", "'?'"),
        ("gopher://partner.example/", "scheme 'gopher'"),
    ] {
        let line = mbx.fails(
            &[
                "send-port",
                "create",
                "dyn",
                "--dynamic",
                "--allow-address",
                prefix,
                "--filter",
                "exists(T.Id)",
            ],
            2,
        );
        assert!(
            line.starts_with("error: --allow-address: ")
                && line.contains(says)
                && line.contains("(example: --allow-address "),
            "{prefix}: {line}"
        );
    }
    assert!(
        box_.send_port_show("dyn").await.is_err(),
        "a port was created"
    );

    mbx.ok(&[
        "send-port",
        "create",
        "dyn",
        "--dynamic",
        "--allow-address",
        "https://partner.example/api/",
        "--filter",
        "exists(T.Id)",
    ]);
    let line = mbx.fails(
        &[
            "send-port",
            "update",
            "dyn",
            "--allow-address",
            "https://partner.example/api/?x=1",
        ],
        2,
    );
    assert!(
        line.contains("--allow-address") && line.contains("query"),
        "{line}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bindings.yaml");
    std::fs::write(
        &file,
        "mbx_bindings: 1\nsend_ports:\n  dyn:\n    allow_address:\n      - https://partner.example.evil.net/#x\n    filter: exists(T.Id)\n",
    )
    .expect("write");
    let line = mbx.fails(&["apply", "-f", file.to_str().expect("utf-8")], 2);
    assert!(
        line.contains("--allow-address") && line.contains("fragment"),
        "{line}"
    );
    let port = box_.send_port_show("dyn").await.expect("port");
    assert_eq!(
        port.allow_address,
        vec!["https://partner.example/api/".to_owned()]
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn crlf_in_a_promoted_value_used_as_a_header_is_rejected_and_never_sent(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let requests: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let app = {
        let requests = requests.clone();
        Router::new().route(
            "/in",
            post(move |headers: HeaderMap| {
                let requests = requests.clone();
                async move {
                    requests.lock().expect("lock").push(headers);
                    "ok"
                }
            }),
        )
    };
    let port = mbx_e2e::serve_on_loopback(app).await;
    let mut spec = SendPortSpec::new("partner", &format!("http://127.0.0.1:{port}/in"))
        .with_filter("exists(Order.Ref)")
        .with_state(InitialState::Started);
    spec.settings
        .insert("header.X-Order-Ref".into(), "Order.Ref".into());
    mbx.send_port_create(&spec).await.expect("port");
    let _host = start_host(&database_url(&pool), FAST_HOST);
    wait_for_alive(&mbx, 1).await;

    let publish = |value: &str| {
        let mut ctx = Context::new();
        ctx.promote("Order.Ref", Value::String(value.to_owned()))
            .expect("promote");
        NewMessage::new(b"<order/>".to_vec(), "application/xml", ctx)
    };
    mbx.publish(
        &Publisher::default(),
        vec![publish("A-1\r\nX-Injected: yes")],
    )
    .await
    .expect("publish bad");
    let item = the_one_failed_final_item(&mbx).await;
    assert!(
        item.reason.to_lowercase().contains("x-order-ref") && item.reason.contains("CR/LF"),
        "the reason names the header and the problem: {}",
        item.reason
    );

    // a clean value goes through, and nothing injected ever arrived
    mbx.publish(&Publisher::default(), vec![publish("A-2")])
        .await
        .expect("publish good");
    wait_for(
        "the clean message to arrive",
        Duration::from_secs(30),
        || async { !requests.lock().expect("lock").is_empty() },
    )
    .await;
    let got = requests.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "only the clean message was sent: {got:?}");
    assert_eq!(
        got[0].get("x-order-ref").map(|v| v.as_bytes()),
        Some(&b"A-2"[..])
    );
    assert!(got.iter().all(|h| h.get("x-injected").is_none()));
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_file_name_macro_escaping_its_folder_is_refused_and_a_clean_name_is_written(
    pool: PgPool,
) {
    let mbx = messagebox(&pool).await;
    let root = tempfile::tempdir().expect("tempdir");
    let out = root.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let address = format!("file://{}/%SourceFileName%", out.display());
    mbx.send_port_create(
        &SendPortSpec::new("named", &address)
            .with_filter("exists(T.Id)")
            .with_state(InitialState::Started),
    )
    .await
    .expect("port");
    let _host = start_host(&database_url(&pool), FAST_HOST);
    wait_for_alive(&mbx, 1).await;

    let named = |name: &str| {
        let mut ctx = Context::new();
        ctx.promote("T.Id", Value::Integer(1)).expect("promote");
        ctx.write(
            mbx_messagebox::context::system::SOURCE_FILE_NAME,
            Value::String(name.to_owned()),
        )
        .expect("source file name");
        NewMessage::new(name.as_bytes().to_vec(), "application/xml", ctx)
    };
    // a relative escape lands next to out/, an absolute one anywhere: both under root
    let escapes = [
        "../escape.xml".to_owned(),
        root.path().join("absolute.xml").display().to_string(),
    ];
    mbx.publish(
        &Publisher::default(),
        escapes.iter().map(|name| named(name)).collect(),
    )
    .await
    .expect("publish the escapes");
    let items = failed_final_items(&mbx, 2).await;
    for escape in &escapes {
        assert!(
            items.iter().any(|i| i.reason.contains("%SourceFileName%")
                && i.reason.contains(escape.as_str())
                && i.reason.contains("not one path component")),
            "a reason names the macro, the value {escape:?} and the problem: {items:?}"
        );
    }

    // the same port still writes a clean name, and that is all that was ever written
    mbx.publish(&Publisher::default(), vec![named("clean.xml")])
        .await
        .expect("publish the clean one");
    wait_for(
        "the clean message to be written",
        Duration::from_secs(30),
        || async { out.join("clean.xml").exists() },
    )
    .await;
    assert_eq!(
        tree(root.path()),
        [PathBuf::from("out/clean.xml")],
        "nothing was written outside the port's folder"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("clean.xml")).expect("read"),
        "clean.xml"
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_file_over_max_message_size_is_moved_aside_with_a_reason_and_nothing_is_published(
    pool: PgPool,
) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let dir = tempfile::tempdir().expect("tempdir");
    let (inbox, outbox) = (dir.path().join("in"), dir.path().join("out"));
    for d in [&inbox, &outbox] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    // bound with the real CLI, as an operator would
    let cli = Mbx::new(url.clone());
    cli.ok(&["receive-port", "create", "orders"]);
    cli.ok(&[
        "receive-location",
        "create",
        "orders-in",
        "--port",
        "orders",
        "--address",
        &format!("file://{}/*.xml", inbox.display()),
        "--max-message-size",
        "1KiB",
    ]);
    cli.ok(&["receive-location", "enable", "orders-in"]);
    cli.ok(&[
        "send-port",
        "create",
        "out",
        "--address",
        &format!("file://{}/%SourceFileName%", outbox.display()),
        "--filter",
        "mbx.ReceivePortName == 'orders'",
        "--start",
    ]);
    let _host = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 1).await;

    let big = format!("<order>{}</order>", "x".repeat(2000));
    for (name, body) in [("big.xml", big.as_str()), ("small.xml", "<order/>")] {
        // written under a hidden name (never received), then renamed: received whole
        let tmp = inbox.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).expect("write");
        std::fs::rename(&tmp, inbox.join(name)).expect("rename");
    }
    let rejected = inbox.join(".mbx-rejected");
    wait_for(
        "the small file delivered and the big one moved aside with its reason",
        Duration::from_secs(30),
        || async {
            outbox.join("small.xml").exists()
                && rejected.join("big.xml.reason.txt").exists()
                && files_in(&inbox, "xml").is_empty()
        },
    )
    .await;
    wait_for_empty_spool(&mbx, Duration::from_secs(30)).await;

    assert_eq!(
        std::fs::read_to_string(rejected.join("big.xml")).expect("rejected body"),
        big,
        "the rejected file is kept whole"
    );
    let reason = std::fs::read_to_string(rejected.join("big.xml.reason.txt")).expect("reason");
    assert!(
        reason.contains(&format!("{} bytes", big.len()))
            && reason.contains("1024 bytes")
            && reason.contains("max_message_size")
            && reason.contains("orders-in"),
        "the reason names the size, the limit and the location: {reason}"
    );
    assert_eq!(
        files_in(&outbox, "xml"),
        [outbox.join("small.xml")],
        "only the small file was published"
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_malformed_xml_body_is_suspended_with_the_parser_error_and_offset(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let FileRoute { inbox, outbox } = order_route(&mbx, dir.path()).await;
    let _host = start_host(&database_url(&pool), FAST_HOST);
    wait_for_alive(&mbx, 1).await;

    let bad = "<order><id>2</id></oops>";
    for (name, body) in [
        ("good-1.xml", "<order><id>1</id></order>"),
        ("bad.xml", bad),
        ("good-2.xml", "<order><id>3</id></order>"),
    ] {
        let tmp = inbox.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).expect("write");
        std::fs::rename(&tmp, inbox.join(name)).expect("rename");
    }
    wait_for(
        "both good orders delivered and the inbox empty",
        Duration::from_secs(30),
        || async { files_in(&outbox, "xml").len() == 2 && files_in(&inbox, "xml").is_empty() },
    )
    .await;
    let sel = Selector {
        kind: Some(Kind::ReceiveFailure),
        ..Selector::default()
    };
    let items = mbx.suspended_list(&sel).await.expect("list");
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(!items[0].resumable, "{items:?}");
    assert!(
        items[0].reason.contains("malformed xml at byte "),
        "the parser's error and offset: {}",
        items[0].reason
    );
    let body = mbx.suspended_body(items[0].id).await.expect("body");
    assert_eq!(&body[..], bad.as_bytes());
}

/// `mbx-host` run until it exits by itself (within 60 s): its exit code and stderr. An
/// empty `url` leaves `MBX_DATABASE_URL` unset.
async fn host_exit(url: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin("mbx-host"));
    if url.is_empty() {
        cmd.env_remove("MBX_DATABASE_URL");
    } else {
        cmd.env("MBX_DATABASE_URL", url);
    }
    let mut child = cmd
        .args(args)
        .env("MBX_LOG", "warn")
        // what an operator sees, not a developer's backtrace
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mbx-host");
    let exited = eventually(Duration::from_secs(60), || {
        std::future::ready(child.try_wait().expect("try_wait").is_some())
    })
    .await;
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait for mbx-host");
    assert!(exited, "mbx-host {args:?} did not exit by itself");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn mbx_host_with_a_bad_argument_exits_2_with_one_line_naming_it() {
    let url = "postgres://postgres@127.0.0.1:1/unused";
    for (url, args, named) in [
        (url, &["--poll-interval", "soon"][..], "--poll-interval"),
        (url, &["--http-listen", "nowhere"][..], "--http-listen"),
        (url, &["--no-such-flag"][..], "--no-such-flag"),
        // neither MBX_DATABASE_URL nor --database-url: the line names the argument
        ("", &[][..], "--database-url"),
    ] {
        let (code, err) = host_exit(url, args).await;
        assert_eq!(code, Some(2), "mbx-host {args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "mbx-host {args:?}: one line: {err}");
        assert!(
            err.contains(named),
            "mbx-host {args:?}: names {named}: {err}"
        );
    }
}

/// `url` with its user's password set to `password`.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (user_info, host) = rest.split_once('@').expect("the test URL names a user");
    let user = user_info.split(':').next().unwrap_or(user_info);
    format!("{scheme}://{user}:{password}@{host}")
}

/// Whether one line of `err` names `url` with its password hidden and says `fix`, and
/// the password appears nowhere.
fn names_url_and_fix(err: &str, url: &str, fix: &str) -> bool {
    let redacted = mbx_messagebox::redact_url(url);
    !err.contains("s3cret")
        && err
            .lines()
            .any(|l| l.contains(&redacted) && l.to_lowercase().contains(fix))
}

#[tokio::test]
async fn mbx_host_on_an_unreachable_database_names_the_url_and_the_fix() {
    let url = format!("postgres://admin:s3cret@127.0.0.1:{}/nowhere", free_port());
    // it retries an unreachable MessageBox for --startup-timeout (60 s by default)
    let (code, err) = host_exit(
        &url,
        &["--admin-listen", "127.0.0.1:0", "--startup-timeout", "1s"],
    )
    .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        names_url_and_fix(&err, &url, "check"),
        "one line names the URL, password hidden, and what to check: {err}"
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn migrations_newer_than_the_binaries_are_refused_naming_the_url_and_the_fix(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    // a MessageBox migrated by a newer mbx
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000001, 'from a newer mbx', true, '\\x00'::bytea, 0)",
    )
    .execute(&pool)
    .await
    .expect("a newer migration");
    let url = with_password(&database_url(&pool), "s3cret");

    let line = Mbx::new(url.clone()).fails(&["stats"], 1);
    assert!(
        names_url_and_fix(&line, &url, "upgrade") && line.contains("newer"),
        "mbx names the URL, password hidden, and the fix: {line}"
    );
    let (code, err) = host_exit(&url, &["--admin-listen", "127.0.0.1:0"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        names_url_and_fix(&err, &url, "upgrade") && err.contains("newer"),
        "mbx-host names the URL, password hidden, and the fix: {err}"
    );
    // nothing changed: the host neither migrated nor registered
    assert!(mbx.instance_list().await.expect("instances").is_empty());
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(
        migrations as usize,
        mbx_messagebox::MIGRATOR.iter().count() + 1
    );
}

/// Issue 12: a payload must not set an engine property. A promotion into `mbx.*` (other
/// than `mbx.OutboundTransportLocation`) is refused by `mbx` at creation; one that reaches
/// the MessageBox another way (an older binary, a hand-edited row) is refused by the host
/// that loads it: the location does not run, and nothing is published as if it came from
/// another port, while the host's other locations run on.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_promotion_into_the_engine_namespace_is_refused_by_the_host_too(pool: PgPool) {
    use mbx_messagebox::receive::ReceiveLocationSpec;
    let mbx = messagebox(&pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let FileRoute { inbox, outbox } = order_route(&mbx, dir.path()).await;
    let spoof_dir = dir.path().join("spoof");
    std::fs::create_dir_all(&spoof_dir).expect("mkdir");
    let mut spoof = ReceiveLocationSpec::new(
        "spoof-in",
        "orders",
        &format!("file://{}/*.xml", spoof_dir.display()),
    );
    spoof.pipeline = "xml".into();
    spoof.promote.insert("Order.Id".into(), "/order/id".into());
    mbx.receive_location_create(&spoof).await.expect("location");
    // the library refuses the spoofing promotion as `mbx` does…
    let mut refused = spoof.clone();
    refused.name = "spoof-2".into();
    refused
        .promote
        .insert("mbx.ReceivePortName".into(), "/order/port".into());
    let err = mbx.receive_location_create(&refused).await.unwrap_err();
    assert!(err.to_string().contains("set by the engine"), "{err}");
    // …so it is written behind its back, as an older binary could have
    sqlx::query(
        "UPDATE receive_locations SET promote = promote || '{\"mbx.ReceivePortName\": \"/order/port\"}'::jsonb
          WHERE name = 'spoof-in'",
    )
    .execute(&pool)
    .await
    .expect("hand-edit the row");
    mbx.receive_location_set_enabled("spoof-in", true)
        .await
        .expect("enable");
    std::fs::write(
        spoof_dir.join("o-1.xml"),
        "<order><id>1</id><port>payments</port></order>",
    )
    .expect("write");
    std::fs::write(inbox.join("o-2.xml"), "<order><id>2</id></order>").expect("write");

    let _host = start_host(&database_url(&pool), FAST_HOST);
    // the host's other location runs: the control file goes through
    wait_for(
        "the control file delivered",
        Duration::from_secs(30),
        || async { files_in(&outbox, "xml").len() == 1 },
    )
    .await;
    wait_for_empty_spool(&mbx, Duration::from_secs(30)).await;
    // the spoofing location never took its file, and nothing was published under the
    // port name the payload carried
    assert!(
        spoof_dir.join("o-1.xml").exists(),
        "the spoofing location ran"
    );
    let delivered = std::fs::read_to_string(&files_in(&outbox, "xml")[0]).expect("read");
    assert_eq!(delivered, "<order><id>2</id></order>");
    assert!(mbx
        .suspended_list(&Selector::default())
        .await
        .expect("list")
        .is_empty());
}
