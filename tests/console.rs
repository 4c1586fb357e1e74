//! The web console (`mbx console`) end to end: the real binary against a real MessageBox
//! and real hosts, driven through headless Chromium over WebDriver (tests/support/browser.rs).
//! Also `mbx stats --watch` and the console's refusals at start.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, Locator};
use mbx_e2e::browser::Browser;
use mbx_e2e::{
    bin, database_url, files_in, messagebox, start_host, wait_for, wait_for_alive, with_database,
    Mbx, Reaped, FAST_HOST,
};
use mbx_messagebox::config::{InitialState, SendPortSpec};
use mbx_messagebox::publish::{NewMessage, Published, Publisher};
use mbx_messagebox::states::PortState;
use mbx_messagebox::{Context, MessageBox, Value};
use sqlx::PgPool;

const TOKEN: &str = "console-test-token-0123456789";
const SETTLE: Duration = Duration::from_secs(30);

fn start_console(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> mbx_e2e::Console {
    mbx_e2e::start_console(db_url, args, env, Stdio::inherit())
}

async fn publish(mbx: &MessageBox, region: &str, body: &str, content_type: &str) -> uuid::Uuid {
    let mut ctx = Context::new();
    ctx.promote("Order.Region", Value::String(region.into()))
        .expect("promote");
    let published = mbx
        .publish(
            &Publisher::default(),
            vec![NewMessage::new(body.as_bytes().to_vec(), content_type, ctx)],
        )
        .await
        .expect("publish");
    match published[0] {
        Published::Routed { message_id, .. } | Published::RoutingFailure { message_id, .. } => {
            message_id
        }
        ref other => panic!("not published: {other:?}"),
    }
}

async fn file_port(mbx: &MessageBox, name: &str, outbox: &Path) {
    let address = format!("file://{}/%MessageID%.xml", outbox.display());
    mbx.send_port_create(
        &SendPortSpec::new(name, &address)
            .with_filter(&format!("Order.Region == \"{name}\""))
            .with_state(InitialState::Started),
    )
    .await
    .expect("send port");
}

/// A MessageBox with the started FILE port `eu` writing into a temporary folder (kept
/// while the returned guard lives), and its URL.
async fn with_eu_port(pool: &PgPool) -> (MessageBox, String, tempfile::TempDir) {
    let mbx = messagebox(pool).await;
    let dir = tempfile::tempdir().expect("tempdir");
    file_port(&mbx, "eu", dir.path()).await;
    (mbx, database_url(pool), dir)
}

async fn text(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Clicks what navigates (a link, a form's button) and waits until the next page has
/// loaded: a click returns once dispatched, before the form's POST is answered.
async fn click(client: &Client, css: &str) {
    client
        .execute("window.mbxOldPage = true;", vec![])
        .await
        .expect("mark the page");
    // the overview's live part is replaced every 2 s: an element found just before may be
    // gone when clicked; find it again then
    for attempt in 1.. {
        let element = client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
        match element.click().await {
            Ok(()) => break,
            Err(e) if attempt < 10 && e.to_string().contains("stale") => continue,
            Err(e) => panic!("clicking {css}: {e}"),
        }
    }
    wait_for(
        &format!("the page after clicking {css}"),
        SETTLE,
        || async {
            client
                .execute(
                    "return window.mbxOldPage === undefined && document.readyState === 'complete';",
                    vec![],
                )
                .await
                .map(|v| v == serde_json::json!(true))
                .unwrap_or(false)
        },
    )
    .await;
}

/// POSTs from the page's own script (same origin, with its cookies); returns the status.
async fn post_from_page(client: &Client, path: &str, form: &str) -> i64 {
    client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0], { method: 'POST', credentials: 'same-origin',
                   headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
                   body: arguments[1], redirect: 'manual' })
               .then(r => done(r.status), e => done(-1));",
            vec![path.into(), form.into()],
        )
        .await
        .expect("fetch from the page")
        .as_i64()
        .expect("a status")
}

async fn port_state(mbx: &MessageBox, name: &str) -> PortState {
    mbx.send_port_show(name).await.expect("port").state
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn the_overview_shows_a_ports_backlog_and_follows_it_live(pool: PgPool) {
    let (mbx, url, _dir) = with_eu_port(&pool).await;
    mbx.send_port_stop("eu").await.expect("stop");
    for i in 0..3 {
        publish(&mbx, "eu", &format!("<o>{i}</o>"), "application/xml").await;
    }
    let console = start_console(&url, &[], &[]);
    let browser = Browser::start().await;
    let b = &browser.client;
    b.goto(&format!("{}/", console.url))
        .await
        .expect("open the overview");
    let backlog = "tr[data-port='eu'] td[data-field='backlog']";
    assert_eq!(text(b, backlog).await, "3");
    assert_eq!(
        text(b, "tr[data-port='eu'] [data-field='state']").await,
        "stopped"
    );
    // the page is not reloaded: a marker set now survives the live refresh
    b.execute("window.mbxMarker = 42;", vec![])
        .await
        .expect("marker");
    for i in 3..5 {
        publish(&mbx, "eu", &format!("<o>{i}</o>"), "application/xml").await;
    }
    wait_for(
        "the live overview to show a backlog of 5",
        SETTLE,
        || async { text(b, backlog).await == "5" },
    )
    .await;
    let marker = b
        .execute("return window.mbxMarker;", vec![])
        .await
        .expect("marker");
    assert_eq!(
        marker,
        serde_json::json!(42),
        "the page was reloaded instead of refreshed"
    );
    browser.close().await;
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_suspended_item_resumed_from_its_page_is_delivered(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let _host = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 1).await;
    // nobody subscribes yet: a routing failure
    let message = publish(&mbx, "eu", r#"{"order":{"id":7}}"#, "application/json").await;
    let items = mbx.suspended_ids(&Default::default()).await.expect("items");
    assert_eq!(items.len(), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    file_port(&mbx, "eu", dir.path()).await;

    let console = start_console(&url, &[], &[]);
    let browser = Browser::start().await;
    let b = &browser.client;
    b.goto(&format!("{}/suspended", console.url))
        .await
        .expect("open");
    assert_eq!(text(b, "#match-count strong").await, "1");
    click(b, &format!("tr[data-item='{}'] a", items[0])).await;
    // the detail page: JSON pretty-printed, the context, a download link
    let preview = text(b, "#body-preview").await;
    assert!(preview.contains("\"order\": {"), "preview: {preview}");
    assert!(text(b, "#context").await.contains("Order.Region"));
    assert!(text(b, "#reason").await.contains("no subscriber"));
    click(b, "button[value='resume-selected']").await;
    assert_eq!(text(b, "#confirm-count").await, "1");
    assert!(
        files_in(dir.path(), "xml").is_empty(),
        "nothing before the confirmation"
    );
    click(b, "#confirm").await;
    let flash = text(b, ".flash").await;
    assert!(flash.contains("resumed 1 of 1"), "flash: {flash}");
    wait_for("the resumed message delivered", SETTLE, || async {
        files_in(dir.path(), "xml").len() == 1
    })
    .await;
    let written = std::fs::read_to_string(&files_in(dir.path(), "xml")[0]).expect("read");
    assert_eq!(written, r#"{"order":{"id":7}}"#);
    // the tracking page has its timeline
    b.goto(&format!("{}/track?message={message}", console.url))
        .await
        .expect("track");
    wait_for("the delivery in the timeline", SETTLE, || async {
        b.refresh().await.ok();
        text(b, "#timeline").await.contains("delivered")
    })
    .await;
    browser.close().await;
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_confirmation_acts_on_exactly_the_items_it_counted(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    for i in 0..2 {
        publish(&mbx, "nobody", &format!("<o>{i}</o>"), "application/xml").await;
    }
    publish(&mbx, "elsewhere", "<o>other</o>", "application/xml").await;
    let console = start_console(&database_url(&pool), &[], &[]);
    let browser = Browser::start().await;
    let b = &browser.client;
    b.goto(&format!("{}/suspended?error=nobody", console.url))
        .await
        .expect("open");
    assert_eq!(text(b, "#match-count strong").await, "2");
    click(b, "button[value='terminate-matching']").await;
    assert_eq!(text(b, "#confirm-count").await, "2");
    let form = b
        .execute(
            "const f = document.querySelector('form[action=\"/suspended/act\"]');
             return new URLSearchParams(new FormData(f)).toString();",
            vec![],
        )
        .await
        .expect("the confirmation's form");
    let form = form.as_str().expect("form fields").to_owned();
    // a third matching item arrives while the operator reads the confirmation
    publish(&mbx, "nobody", "<o>late</o>", "application/xml").await;
    click(b, "#confirm").await;
    let flash = text(b, ".flash").await;
    assert!(flash.contains("terminated 2 of 2"), "flash: {flash}");
    let left = mbx.suspended_list(&Default::default()).await.expect("list");
    let reasons: Vec<&str> = left.iter().map(|i| i.reason.as_str()).collect();
    assert_eq!(
        left.len(),
        2,
        "the late item and the other one stay: {reasons:?}"
    );
    // a confirmation is used once
    assert_eq!(post_from_page(b, "/suspended/act", &form).await, 410);
    assert_eq!(
        mbx.suspended_list(&Default::default())
            .await
            .expect("list")
            .len(),
        2
    );
    browser.close().await;
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_port_stopped_from_the_page_stops_and_started_from_it_delivers(pool: PgPool) {
    let (mbx, url, dir) = with_eu_port(&pool).await;
    let _host = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 1).await;
    publish(&mbx, "eu", "<o>1</o>", "application/xml").await;
    wait_for("the first delivery", SETTLE, || async {
        files_in(dir.path(), "xml").len() == 1
    })
    .await;

    let console = start_console(&url, &[], &[]);
    let browser = Browser::start().await;
    let b = &browser.client;
    b.goto(&format!("{}/", console.url)).await.expect("open");
    click(b, "tr[data-port='eu'] button[data-action='Stop']").await;
    let flash = text(b, ".flash").await;
    assert_eq!(flash, "send port eu: started → stopped");
    assert_eq!(port_state(&mbx, "eu").await, PortState::Stopped);
    publish(&mbx, "eu", "<o>2</o>", "application/xml").await;
    wait_for("the overview to show the held message", SETTLE, || async {
        b.refresh().await.ok();
        text(b, "tr[data-port='eu'] td[data-field='backlog']").await == "1"
    })
    .await;
    // the host polls every 200 ms: a stopped port sends nothing in many of its polls
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        files_in(dir.path(), "xml").len(),
        1,
        "a stopped port delivered"
    );
    click(b, "tr[data-port='eu'] button[data-action='Start']").await;
    assert_eq!(text(b, ".flash").await, "send port eu: stopped → started");
    wait_for(
        "the held message delivered once started",
        SETTLE,
        || async { files_in(dir.path(), "xml").len() == 2 },
    )
    .await;
    browser.close().await;
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_post_without_the_token_or_the_csrf_value_is_refused(pool: PgPool) {
    let (mbx, url, _dir) = with_eu_port(&pool).await;
    let console = start_console(
        &url,
        &["--token", "env:MBX_TEST_CONSOLE_TOKEN"],
        &[("MBX_TEST_CONSOLE_TOKEN", TOKEN)],
    );
    let browser = Browser::start().await;
    let b = &browser.client;
    b.goto(&format!("{}/", console.url)).await.expect("open");
    assert!(
        b.current_url().await.expect("url").path() == "/login",
        "not sent to log in"
    );
    // no session: refused
    assert_eq!(
        post_from_page(b, "/send-ports/eu/stop", "return_to=/").await,
        401
    );
    // a wrong token: no session
    b.find(Locator::Css("input[name='token']"))
        .await
        .expect("token field")
        .send_keys("not-the-token-at-all")
        .await
        .expect("type");
    click(b, "form[action='/login'] button").await;
    assert!(text(b, ".error").await.contains("wrong token"));
    // the right one
    b.find(Locator::Css("input[name='token']"))
        .await
        .expect("token field")
        .send_keys(TOKEN)
        .await
        .expect("type");
    click(b, "form[action='/login'] button").await;
    assert_eq!(b.current_url().await.expect("url").path(), "/");
    // logged in, but without the CSRF value, or with a wrong one: refused
    assert_eq!(
        post_from_page(b, "/send-ports/eu/stop", "return_to=/").await,
        403
    );
    let wrong = format!("return_to=/&csrf={}", "ab".repeat(32));
    assert_eq!(post_from_page(b, "/send-ports/eu/stop", &wrong).await, 403);
    assert_eq!(
        port_state(&mbx, "eu").await,
        PortState::Started,
        "a refused POST changed the port"
    );
    // a script with the token but no CSRF value: refused too; reading is allowed
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = http
        .post(format!("{}/send-ports/eu/stop", console.url))
        .bearer_auth(TOKEN)
        .form(&[("return_to", "/")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let r = http
        .get(format!("{}/", console.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{}/suspended", console.url))
        .send()
        .await
        .expect("get");
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["location"].to_str().unwrap()
        ),
        (303, "/login")
    );
    // the page's own form (with its CSRF value) works
    click(b, "tr[data-port='eu'] button[data-action='Stop']").await;
    assert_eq!(port_state(&mbx, "eu").await, PortState::Stopped);
    browser.close().await;
}

/// A port ordered by a property shows on the ordered page as its buckets (how many are
/// held, by how many instances) and its held keys, not as one lease.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn the_ordered_page_shows_a_keyed_ports_buckets_and_held_keys(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    // an endpoint that refuses every connection: the key's head fails and is held
    let mut spec = SendPortSpec::new(
        "accounts",
        &format!("http://127.0.0.1:{}/in", mbx_e2e::free_port()),
    )
    .with_filter("exists(Order.Customer)")
    .with_state(InitialState::Started);
    spec.ordered = true;
    spec.ordered_by = Some("Order.Customer".into());
    spec.ordered_buckets = Some(4);
    spec.stop_on_failure = true;
    spec.retry_count = 0;
    mbx.send_port_create(&spec).await.expect("keyed port");
    let url = database_url(&pool);
    let _host = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 1).await;
    let mut ctx = Context::new();
    ctx.promote("Order.Customer", Value::String("acme".into()))
        .expect("promote");
    mbx.publish(
        &Publisher::default(),
        vec![NewMessage::new(b"x".to_vec(), "text/plain", ctx)],
    )
    .await
    .expect("publish");
    wait_for("the key held and every bucket owned", SETTLE, || async {
        let held: i64 = sqlx::query_scalar("SELECT count(*) FROM ordered_holds")
            .fetch_one(&pool)
            .await
            .expect("holds");
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM leases WHERE port_id IS NOT NULL AND expires_at > now()",
        )
        .fetch_one(&pool)
        .await
        .expect("leases");
        held == 1 && live == 4
    })
    .await;
    let console = start_console(&url, &[], &[]);
    let browser = Browser::start().await;
    let b = &browser.client;
    b.goto(&format!("{}/ordered", console.url))
        .await
        .expect("open");
    let owners = text(b, "tr[data-port='accounts'] td.keyed").await;
    assert!(
        owners.contains("Order.Customer") && owners.contains("4 of 4 buckets held by 1 instance"),
        "{owners}"
    );
    let row = text(b, "tr[data-port='accounts']").await;
    assert!(row.contains("1 key held"), "{row}");
    assert!(
        b.find_all(Locator::Css("tr[data-port='accounts'] form"))
            .await
            .expect("find")
            .is_empty(),
        "no port-wide resume or skip for a port held per key"
    );
    browser.close().await;
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn the_read_only_console_has_no_action(pool: PgPool) {
    let (mbx, url, _dir) = with_eu_port(&pool).await;
    publish(&mbx, "nobody", "<o/>", "application/xml").await; // a suspended item
    let console = start_console(&url, &["--read-only"], &[]);
    let browser = Browser::start().await;
    let b = &browser.client;
    for page in ["/", "/suspended", "/ordered", "/suspended/1"] {
        b.goto(&format!("{}{page}", console.url))
            .await
            .expect("open");
        assert_eq!(text(b, ".badge.readonly").await, "read-only", "{page}");
        let forms = b
            .find_all(Locator::Css("form[method='post']"))
            .await
            .expect("find");
        assert!(forms.is_empty(), "{page} offers {} action(s)", forms.len());
        let checkboxes = b
            .find_all(Locator::Css("input[type='checkbox']"))
            .await
            .expect("find");
        assert!(checkboxes.is_empty(), "{page} offers a selection");
    }
    assert_eq!(
        post_from_page(b, "/send-ports/eu/stop", "return_to=/").await,
        403
    );
    assert_eq!(port_state(&mbx, "eu").await, PortState::Started);
    browser.close().await;

    // a database role that cannot write makes the console read-only by itself
    let db = pool
        .connect_options()
        .get_database()
        .expect("db")
        .to_owned();
    let role = format!(
        "mbx_ro_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    for sql in [
        format!("DROP ROLE IF EXISTS {role}"),
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"),
    ] {
        sqlx::query(&sql).execute(&pool).await.expect("role");
    }
    let ro_url = with_database(
        &mbx_e2e::server_url().replacen("postgres://postgres@", &format!("postgres://{role}@"), 1),
        &db,
    );
    let ro = start_console(&ro_url, &[], &[]);
    let page = reqwest::get(format!("{}/", ro.url))
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(
        page.contains("read-only"),
        "not read-only on a role that cannot write"
    );
    assert!(
        !page.contains("method=\"post\""),
        "actions offered on a read-only role"
    );
    drop(ro);
    for sql in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(&sql).execute(&pool).await.expect("drop role");
    }
}

/// Every response — a page, a live fragment, an asset, a body offered for download, the
/// login page, a redirect to it and a 404 — forbids MIME sniffing and carries a policy that
/// allows only the console's own assets, no inline script or style, and no framing; the
/// pages load their script and style sheet from the console itself (that the script still
/// runs under the policy the browser tests show: the overview follows its port live).
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn every_response_forbids_sniffing_and_allows_only_the_consoles_own_assets(pool: PgPool) {
    let (mbx, url, _dir) = with_eu_port(&pool).await;
    publish(&mbx, "nobody", "<o/>", "application/xml").await; // suspended item 1
    let console = start_console(
        &url,
        &["--token", "env:MBX_TEST_CONSOLE_TOKEN"],
        &[("MBX_TEST_CONSOLE_TOKEN", TOKEN)],
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for (path, token, status) in [
        ("/", true, 200),
        ("/live/overview", true, 200),
        ("/suspended", true, 200),
        ("/suspended/1", true, 200),
        ("/suspended/1/body", true, 200),
        ("/ordered", true, 200),
        ("/track", true, 200),
        ("/assets/console.js", true, 200),
        ("/assets/console.css", true, 200),
        ("/login", false, 200),
        ("/suspended", false, 303),
        ("/no-such-page", true, 404),
    ] {
        let mut request = http.get(format!("{}{path}", console.url));
        if token {
            request = request.bearer_auth(TOKEN);
        }
        let r = request.send().await.expect("get");
        assert_eq!(r.status().as_u16(), status, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp:?} lacks {directive}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp:?}");
        let is_html = header("content-type").starts_with("text/html");
        let body = r.text().await.expect("body");
        if is_html {
            // nothing inline the policy would block
            for inline in ["<script>", "<style", " style=", " onclick="] {
                assert!(!body.contains(inline), "{path} holds {inline}");
            }
        }
    }
}

/// Seed 004: the overview shows the database's size and the group's threshold on it, and
/// an instance throttled on it says so.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn the_overview_shows_the_database_size_and_its_throttle(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    mbx.group_set_throttle_database_size(Some(50 << 30))
        .await
        .expect("threshold");
    let id = mbx
        .instance_register("default", "test-machine", 4242, "0.0.0-test")
        .await
        .expect("instance");
    mbx.instance_set_throttle(id, Some("database-size"))
        .await
        .expect("throttled");
    let console = start_console(&database_url(&pool), &[], &[]);
    let page = reqwest::get(format!("{}/", console.url))
        .await
        .expect("overview")
        .text()
        .await
        .expect("page");
    assert!(page.contains("yes: database-size"), "{page}");
    assert!(page.contains("(receive stops at 50.0 GiB)"), "{page}");
    assert!(page.contains("id=\"database-size\""), "{page}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_console_on_an_open_address_needs_a_token(pool: PgPool) {
    messagebox(&pool).await;
    let mbx = Mbx::new(database_url(&pool));
    let err = mbx.fails(&["console", "--listen", "0.0.0.0:0"], 2);
    assert!(err.contains("--token env:NAME"), "{err}");
    let err = mbx.fails(&["console", "--token", "a-literal-token-value"], 2);
    assert!(
        err.contains("--token") && !err.contains("a-literal-token-value"),
        "{err}"
    );
    let err = mbx.fails(&["console", "--listen", "nowhere"], 2);
    assert!(
        err.contains("--listen: 'nowhere' is not an address"),
        "{err}"
    );
    std::env::set_var("MBX_TEST_SHORT_TOKEN", "short");
    let err = mbx.fails(&["console", "--token", "env:MBX_TEST_SHORT_TOKEN"], 2);
    assert!(err.contains("shorter than 16"), "{err}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn stats_watch_shows_each_ports_delivery_rate(pool: PgPool) {
    let (mbx, url, _dir) = with_eu_port(&pool).await;
    let _host = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 1).await;
    let mut watch = Command::new(bin("mbx"))
        .args([
            "stats",
            "--watch",
            "--interval",
            "500ms",
            "--output",
            "json",
        ])
        .env("MBX_DATABASE_URL", &url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn mbx stats --watch");
    let stdout = watch.stdout.take().expect("stdout");
    let _watch = Reaped(watch);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first: serde_json::Value =
        serde_json::from_str(&rx.recv().await.expect("a first frame")).expect("json frame");
    assert!(
        first["delivered_per_s"].is_null(),
        "the first frame has no rate: {first}"
    );
    assert_eq!(first["stats"]["ports"][0]["name"], "eu");
    // deliveries while the frames go by: some frame shows a rate for the port
    let mut sent = 0;
    let mut best = 0.0f64;
    let deadline = tokio::time::Instant::now() + SETTLE;
    while best <= 0.0 && tokio::time::Instant::now() < deadline {
        for _ in 0..5 {
            publish(&mbx, "eu", &format!("<o>{sent}</o>"), "application/xml").await;
            sent += 1;
        }
        if let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            let frame: serde_json::Value = serde_json::from_str(&line).expect("json frame");
            best = best.max(frame["delivered_per_s"]["eu"].as_f64().unwrap_or(0.0));
        }
    }
    assert!(
        best > 0.0,
        "no frame showed a delivery rate for eu ({sent} published)"
    );
    // the table form: one frame per interval with the rate column
    let out = Command::new("timeout")
        .args([
            "--preserve-status",
            "-s",
            "INT",
            "2",
            bin("mbx").to_str().expect("path"),
            "stats",
            "--watch",
            "--interval",
            "300ms",
        ])
        .env("MBX_DATABASE_URL", &url)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Ctrl-C ends --watch cleanly: {:?}",
        out.status
    );
    assert!(text.matches("DELIVERED/S").count() >= 2, "{text}");
    let err = Mbx::new(url).fails(&["stats", "--watch", "--interval", "1ms"], 2);
    assert!(err.contains("--interval: '1ms'"), "{err}");
}

/// The screenshots in docs/images (overview, a suspended item, a tracking timeline), made
/// by `scripts/console-screenshots`, which sets `MBX_SCREENSHOTS_DIR`; otherwise they go
/// to a temporary folder and are only checked.
#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn console_screenshots(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    let url = database_url(&pool);
    let cli = Mbx::new(url.clone());
    let work = tempfile::tempdir().expect("tempdir");
    let out_dir = std::env::var("MBX_SCREENSHOTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| work.path().join("shots"));
    std::fs::create_dir_all(&out_dir).expect("screenshot folder");
    for name in ["eu", "us"] {
        file_port(&mbx, name, &work.path().join(name)).await;
    }
    std::fs::create_dir_all(work.path().join("eu")).expect("outbox");
    mbx.send_port_stop("us").await.expect("stop");
    let closed = mbx_e2e::free_port();
    cli.ok(&[
        "send-port",
        "create",
        "billing",
        "--start",
        "--address",
        &format!("http://127.0.0.1:{closed}/invoices"),
        "--filter",
        "Order.Region == \"billing\"",
        "--retry-count",
        "0",
    ]);
    std::fs::create_dir_all(work.path().join("in")).expect("inbox");
    cli.ok(&["receive-port", "create", "orders"]);
    cli.ok(&[
        "receive-location",
        "create",
        "orders-in",
        "--port",
        "orders",
        "--pipeline",
        "xml",
        "--address",
        &format!("file://{}/in/*.xml", work.path().display()),
    ]);
    let _host = start_host(&url, FAST_HOST);
    wait_for_alive(&mbx, 1).await;
    let failed = publish(&mbx, "billing",
        r#"{"invoice":{"id":"INV-2026-0042","customer":"Contoso","lines":[{"sku":"A-1","qty":3},{"sku":"B-7","qty":1}],"total":"129.90"}}"#,
        "application/json").await;
    for i in 0..12 {
        publish(
            &mbx,
            "us",
            &format!("<order id=\"{i}\"/>"),
            "application/xml",
        )
        .await;
    }
    let console = start_console(&url, &[], &[]);
    // a few snapshots with deliveries going on, for the charts
    for round in 0..8 {
        for i in 0..(5 + round * 3) {
            publish(
                &mbx,
                "eu",
                &format!("<order id=\"{round}-{i}\"/>"),
                "application/xml",
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    wait_for("the failed invoice suspended", SETTLE, || async {
        !mbx.suspended_ids(&Default::default())
            .await
            .expect("ids")
            .is_empty()
    })
    .await;
    let first = mbx.suspended_ids(&Default::default()).await.expect("ids")[0];
    // resumed once, failed again: a longer timeline
    let by_id = mbx_messagebox::suspended::Selector {
        id: Some(first),
        ..Default::default()
    };
    mbx.suspended_resume(&by_id).await.expect("resume");
    wait_for("the invoice suspended again", SETTLE, || async {
        mbx.suspended_ids(&Default::default())
            .await
            .expect("ids")
            .iter()
            .any(|id| *id != first)
    })
    .await;
    let item = mbx.suspended_ids(&Default::default()).await.expect("ids")[0];
    let browser = Browser::start().await;
    let b = &browser.client;
    let shots = [
        ("console-overview.png", "/".to_owned()),
        ("console-suspended-item.png", format!("/suspended/{item}")),
        ("console-tracking.png", format!("/track?message={failed}")),
    ];
    for (file, path) in shots {
        b.goto(&format!("{}{path}", console.url))
            .await
            .expect("open");
        let png = b.screenshot().await.expect("screenshot");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "{file} is no picture"
        );
        std::fs::write(out_dir.join(file), png).expect("write screenshot");
    }
    browser.close().await;
}
