//! TLS to PostgreSQL (issue 6, security): a private cluster that accepts only TLS
//! connections, with a server certificate for `localhost` signed by a test CA. `mbx` and
//! `mbx-host` connect with `sslmode=verify-full`: the certificate chain and the server's
//! name are both checked, a wrong CA or a wrong name is refused with one line, and a
//! connection without TLS is not possible at all.

use std::time::Duration;

use mbx_e2e::certs::{ca, server_cert};
use mbx_e2e::pg_cluster::{append, PgCluster};
use mbx_e2e::{start_host, wait_for, Mbx, FAST_HOST};
use sqlx::PgPool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_chain_and_the_name_and_plain_connections_are_refused() {
    let certs = tempfile::tempdir().expect("tempdir");
    ca(certs.path(), "test-ca");
    ca(certs.path(), "other-ca");
    server_cert(certs.path(), "test-ca");
    let cluster = PgCluster::start_with(|data| {
        for f in ["server.crt", "server.key"] {
            std::fs::copy(certs.path().join(f), data.join(f)).expect("copy certificate");
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod server.key");
        append(
            &data.join("postgresql.conf"),
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        );
        // TLS or nothing over TCP
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .expect("write pg_hba.conf");
    });
    let port = cluster.port();
    let ca_file = certs.path().join("test-ca.crt").display().to_string();
    let other_ca = certs.path().join("other-ca.crt").display().to_string();
    let url = |host: &str, mode: &str, root: &str| {
        format!("postgres://postgres@{host}:{port}/postgres?sslmode={mode}&sslrootcert={root}")
    };
    let good = url("localhost", "verify-full", &ca_file);

    // without TLS there is no way in
    let plain = format!("postgres://postgres@localhost:{port}/postgres?sslmode=disable");
    let line = Mbx::new(plain).fails(&["init"], 1);
    assert!(
        line.contains("localhost") && line.contains("pg_hba.conf"),
        "the server refuses a connection without TLS, and the line names it: {line}"
    );

    // the right CA and the name the certificate carries
    Mbx::new(good.clone()).ok(&["init"]);
    // the right CA but another name for the same server: refused
    let by_ip = url("127.0.0.1", "verify-full", &ca_file);
    let line = Mbx::new(by_ip).fails(&["status"], 1);
    assert!(
        line.contains("127.0.0.1") && line.contains("not valid for name"),
        "one line naming the server and the name check: {line}"
    );
    // a certificate from a CA the client does not trust: refused
    let line = Mbx::new(url("localhost", "verify-full", &other_ca)).fails(&["status"], 1);
    assert!(
        line.contains("localhost") && line.contains("UnknownIssuer"),
        "one line naming the server and the untrusted issuer: {line}"
    );

    // a host over verify-full registers and stays alive
    let _host = start_host(&good, FAST_HOST);
    let pool = PgPool::connect(&good).await.expect("connect over TLS");
    wait_for(
        "the host instance alive over TLS",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM host_instances WHERE state = 'alive'",
            )
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n == 1)
        },
    )
    .await;
}
