//! Database roles (`mbx roles create`): the host role runs a real `mbx-host` and publishes
//! but has no DDL; the reader reads and cannot write; the migrator migrates; PUBLIC cannot
//! even connect. Role names carry a random prefix (roles are shared by the whole server)
//! and are dropped at the end.

use mbx_e2e::{
    database_url, messagebox, server_url, start_host, wait_for_alive, with_database, Mbx,
};
use sqlx::{Connection, PgConnection, PgPool};

fn url_as(url: &str, user: &str) -> String {
    // postgres://USER@host:port/db — the test server trusts loopback connections
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let host_part = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    format!("{scheme}://{user}@{host_part}")
}

async fn fails_with_privilege_error(conn: &mut PgConnection, sql: &str) {
    let err = sqlx::query(sql).execute(&mut *conn).await.expect_err(sql);
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn each_role_can_do_its_part_and_no_more(pool: PgPool) {
    let mbx = messagebox(&pool).await;
    mbx.init(None).await.expect("init");
    let url = database_url(&pool);
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let cli = Mbx::new(url.clone());
    let out = cli.ok(&["roles", "create", "--prefix", &prefix]);
    assert!(out.contains(&format!("{prefix}_host")), "{out}");
    // idempotent
    cli.ok(&["roles", "create", "--prefix", &prefix]);
    let (migrator, host, reader, forwarder) = (
        format!("{prefix}_migrator"),
        format!("{prefix}_host"),
        format!("{prefix}_reader"),
        format!("{prefix}_forwarder"),
    );

    let result = async {
        // the host role: DML yes, DDL no, and a real mbx-host runs with it
        let mut h = PgConnection::connect(&url_as(&url, &host))
            .await
            .expect("host connects");
        sqlx::query("SELECT count(*) FROM deliveries")
            .execute(&mut h)
            .await
            .expect("select");
        sqlx::query("INSERT INTO properties (name, type) VALUES ('Roles.Probe', 'string')")
            .execute(&mut h)
            .await
            .expect("insert");
        fails_with_privilege_error(&mut h, "CREATE TABLE intruder (x int)").await;
        let err = sqlx::query("DROP TABLE messages")
            .execute(&mut h)
            .await
            .expect_err("drop");
        assert!(err.to_string().contains("must be owner"), "{err}");
        let host_proc = start_host(&url_as(&url, &host), &["--poll-interval", "200ms"]);
        wait_for_alive(&mbx, 1).await;
        drop(host_proc);

        // the reader: reads, cannot write
        let mut r = PgConnection::connect(&url_as(&url, &reader))
            .await
            .expect("reader connects");
        sqlx::query("SELECT count(*) FROM send_ports")
            .execute(&mut r)
            .await
            .expect("select");
        fails_with_privilege_error(&mut r, "DELETE FROM properties").await;
        let status = Mbx::new(url_as(&url, &reader)).ok(&["status"]);
        assert!(status.contains("hosts:"), "{status}");

        // the forwarder (what another group's link connects as): it can publish into this
        // group's receive ports through the mbx_forward_* functions, and nothing else
        let mut f = PgConnection::connect(&url_as(&url, &forwarder))
            .await
            .expect("forwarder connects");
        let group: String = sqlx::query_scalar("SELECT group_name FROM mbx_forward_hello()")
            .fetch_one(&mut f)
            .await
            .expect("hello");
        assert_eq!(group, "default");
        sqlx::query("SELECT * FROM mbx_forward_declarations()")
            .execute(&mut f)
            .await
            .expect("declarations");
        for sql in [
            "SELECT count(*) FROM messages",
            "SELECT count(*) FROM forward_inbox",
            "INSERT INTO forward_inbox (source_group, source_group_name, send_port, source_message_id, message_id, receive_port) VALUES (gen_random_uuid(), 'x', 'p', gen_random_uuid(), gen_random_uuid(), 'r')",
            "UPDATE send_ports SET state = 'stopped'",
            "DELETE FROM suspended_items",
        ] {
            fails_with_privilege_error(&mut f, sql).await;
        }
        let target = mbx_messagebox::forward::ForwardTarget::connect(&url_as(&url, &forwarder))
            .await
            .expect("a link connects as the forwarder");
        assert_eq!(target.group_name, "default");

        // the migrator owns the schema: `mbx init` is a no-op that succeeds
        Mbx::new(url_as(&url, &migrator)).ok(&["init"]);

        // anyone else: no CONNECT on the database any more
        let mut admin = PgConnection::connect(&server_url()).await.expect("admin");
        let other = format!("{prefix}_other");
        sqlx::query(&format!("CREATE ROLE {other} LOGIN"))
            .execute(&mut admin)
            .await
            .expect("create other");
        let refused = PgConnection::connect(&url_as(&url, &other)).await;
        let _ = sqlx::query(&format!("DROP ROLE {other}"))
            .execute(&mut admin)
            .await;
        let err = refused.expect_err("PUBLIC cannot connect");
        assert!(err.to_string().contains("permission denied"), "{err}");
    }
    .await;

    // drop the roles again (their privileges first, in this database)
    let mut conn = PgConnection::connect(&url).await.expect("owner");
    sqlx::query(&format!("REASSIGN OWNED BY {migrator} TO CURRENT_USER"))
        .execute(&mut conn)
        .await
        .expect("reassign");
    for role in [&host, &reader, &forwarder, &migrator] {
        sqlx::query(&format!("DROP OWNED BY {role}"))
            .execute(&mut conn)
            .await
            .expect("drop owned");
    }
    let mut admin = PgConnection::connect(&with_database(&server_url(), "postgres"))
        .await
        .expect("admin");
    for role in [&migrator, &host, &reader, &forwarder] {
        sqlx::query(&format!("DROP ROLE {role}"))
            .execute(&mut admin)
            .await
            .expect("drop role");
    }
    result
}
