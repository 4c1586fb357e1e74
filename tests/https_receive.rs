//! HTTPS receive (issue 12): `https:///…` locations are served only over TLS, by an
//! instance started with `--tls-cert`/`--tls-key` (a certificate made by `openssl`), on
//! `--https-listen`; never in clear. An instance without TLS refuses to serve them, and
//! says so where an operator looks: `mbx status` ("NOT RUNNING … no TLS") and `/readyz`
//! (503). The same holds for an HTTP location whose listen address another instance on the
//! machine already took (issue 13).

use std::time::Duration;

use mbx_e2e::certs::{ca, server_cert};
use mbx_e2e::{database_url, free_port, messagebox, start_host, wait_for, Mbx};
use mbx_messagebox::receive::ReceiveLocationSpec;
use mbx_messagebox::MessageBox;
use sqlx::PgPool;

/// Receive port `api` with the enabled location `name` on `address`.
async fn location(mbx: &MessageBox, name: &str, address: &str) {
    if mbx.receive_port_create("api", false).await.is_err() {
        // already there for the second location
    }
    mbx.receive_location_create(&ReceiveLocationSpec::new(name, "api", address))
        .await
        .expect("location");
    mbx.receive_location_set_enabled(name, true)
        .await
        .expect("enable");
}

async fn readyz(admin: u16) -> (u16, String) {
    match reqwest::get(format!("http://127.0.0.1:{admin}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

fn host_args(http: u16, https: u16, admin: u16) -> Vec<String> {
    let mut args = mbx_e2e::http_host_args(http, admin);
    args.extend(["--https-listen".to_owned(), format!("127.0.0.1:{https}")]);
    args
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn https_locations_are_served_over_tls_only(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    location(&mbx, "secure-in", "https:///secure").await;
    let certs = tempfile::tempdir().expect("tempdir");
    ca(certs.path(), "test-ca");
    server_cert(certs.path(), "test-ca");
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let mut args = host_args(http, https, admin);
    for (flag, file) in [("--tls-cert", "server.crt"), ("--tls-key", "server.key")] {
        args.extend([
            flag.to_owned(),
            certs.path().join(file).display().to_string(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _host = start_host(&database_url(&pool), &args);
    wait_for("the host ready", Duration::from_secs(30), || async {
        readyz(admin).await.0 == 200
    })
    .await;

    let ca_pem = std::fs::read(certs.path().join("test-ca.crt")).expect("CA");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).expect("CA certificate"))
        .build()
        .expect("client");
    // the location starts within a poll of the host being ready
    wait_for(
        "a POST over TLS accepted",
        Duration::from_secs(30),
        || async {
            let r = client
                .post(format!("https://localhost:{https}/secure"))
                .body("<order/>")
                .send()
                .await;
            r.is_ok_and(|r| r.status().as_u16() == 202)
        },
    )
    .await;
    // published: with no subscriber it is a routing failure, kept in the MessageBox
    let items = mbx
        .suspended_list(&Default::default())
        .await
        .expect("suspended");
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].kind, "routing-failure");
    // never in clear: plain HTTP to the TLS listener is not answered with a 2xx, and the
    // plain listener does not serve the https location's path
    let plain = reqwest::Client::new();
    let clear = plain
        .post(format!("http://127.0.0.1:{https}/secure"))
        .body("<order/>")
        .send()
        .await;
    assert!(
        clear.as_ref().map_or(true, |r| !r.status().is_success()),
        "a plain request to the TLS listener succeeded: {clear:?}"
    );
    // the plain listener is bound only once an http:/// location starts; with none,
    // nothing answers there, and an https path never does
    let on_plain = plain
        .post(format!("http://127.0.0.1:{http}/secure"))
        .body("<order/>")
        .send()
        .await;
    assert!(
        on_plain
            .as_ref()
            .map_or(true, |r| r.status().as_u16() == 404),
        "{on_plain:?}"
    );
    let status = Mbx::new(database_url(&pool)).ok(&["status"]);
    assert!(
        status.contains("secure-in") && status.contains("runs on 1 instance(s)"),
        "{status}"
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_instance_that_cannot_serve_a_location_says_so_in_status_and_readyz(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    location(&mbx, "secure-in", "https:///secure").await;
    location(&mbx, "orders-in", "http:///orders").await;
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let args = host_args(http, https, admin);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _first = start_host(&database_url(&pool), &args);
    // no TLS on this instance: the https location is refused, visibly
    wait_for(
        "readyz names the https location",
        Duration::from_secs(30),
        || async {
            let (code, text) = readyz(admin).await;
            code == 503 && text.contains("secure-in") && text.contains("no TLS")
        },
    )
    .await;
    let cli = Mbx::new(database_url(&pool));
    let status = cli.ok(&["status"]);
    assert!(
        status.contains("NOT RUNNING") && status.contains("--tls-cert"),
        "{status}"
    );
    assert!(
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{https}/secure"))
            .send()
            .await
            .is_err(),
        "nothing listens on the https address"
    );

    // a second instance on the same machine and --http-listen: its http location cannot
    // bind, and it says so (the first instance serves it)
    let admin2 = free_port();
    let args2 = host_args(http, free_port(), admin2);
    let args2: Vec<&str> = args2.iter().map(String::as_str).collect();
    let _second = start_host(&database_url(&pool), &args2);
    wait_for(
        "the second instance names the taken address",
        Duration::from_secs(30),
        || async {
            let (code, text) = readyz(admin2).await;
            code == 503 && text.contains("orders-in") && text.contains("cannot bind --http-listen")
        },
    )
    .await;
    let json = cli.json(&["status"]);
    let runs = json["location_runs"].as_array().expect("runs").clone();
    let orders: Vec<_> = runs
        .iter()
        .filter(|r| r["location"] == "orders-in")
        .collect();
    assert_eq!(orders.len(), 2, "{runs:?}");
    assert_eq!(
        orders.iter().filter(|r| r["running"] == true).count(),
        1,
        "{runs:?}"
    );
}
