//! Throttling on the database's size: the group-wide threshold, a host's override (its
//! own size, off, or back to the group's), what a host instance reads, and the
//! `database-size` throttle state recorded for `mbx status`.

mod common;

use common::*;
use mbx_messagebox::config::HostSpec;
use mbx_messagebox::throttle::DatabaseSizeOverride;
use mbx_messagebox::Error;
use sqlx::PgPool;

const GB: i64 = 1 << 30;

async fn effective(mbx: &mbx_messagebox::MessageBox, host: &str) -> Option<i64> {
    mbx.host_limits(host)
        .await
        .expect("host_limits")
        .throttle_database_size
}

async fn set_override(mbx: &mbx_messagebox::MessageBox, host: &str, to: DatabaseSizeOverride) {
    mbx.host_update(host, move |s| {
        s.throttle_database_size = Some(to);
        Ok(())
    })
    .await
    .expect("host_update");
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn the_group_threshold_applies_to_every_host_until_one_overrides_it(pool: PgPool) {
    let mbx = mbx(pool).await;
    mbx.host_create(&HostSpec {
        name: "edi".into(),
        ..Default::default()
    })
    .await
    .expect("host");
    assert_eq!(effective(&mbx, "default").await, None, "off by default");
    let g = mbx.group_settings().await.expect("group settings");
    assert_eq!(g.throttle_database_size, None);
    assert!(g.database_size > 0, "{g:?}");
    assert!(mbx.database_size().await.expect("size") > 0);

    let set = mbx
        .group_set_throttle_database_size(Some(50 * GB))
        .await
        .expect("group set");
    assert_eq!(set.changes.len(), 1, "{set:?}");
    assert_eq!(
        (set.changes[0].from.as_str(), set.changes[0].to.as_str()),
        ("off", "53687091200")
    );
    assert!(
        !mbx.group_set_throttle_database_size(Some(50 * GB))
            .await
            .expect("again")
            .changed(),
        "setting it again changes nothing"
    );
    for host in ["default", "edi"] {
        assert_eq!(effective(&mbx, host).await, Some(50 * GB), "{host}");
    }

    // a host's own threshold, or off, wins over the group's; `group` follows it again
    set_override(&mbx, "edi", DatabaseSizeOverride::Bytes(GB)).await;
    assert_eq!(effective(&mbx, "edi").await, Some(GB));
    assert_eq!(effective(&mbx, "default").await, Some(50 * GB));
    set_override(&mbx, "edi", DatabaseSizeOverride::Off).await;
    assert_eq!(effective(&mbx, "edi").await, None);
    let hosts = mbx.host_list().await.expect("hosts");
    let edi = hosts.iter().find(|h| h.name == "edi").expect("edi listed");
    assert_eq!(edi.throttle_database_size, DatabaseSizeOverride::Off);
    set_override(&mbx, "edi", DatabaseSizeOverride::Group).await;
    assert_eq!(effective(&mbx, "edi").await, Some(50 * GB));

    // a host created with its own threshold keeps it when the group's goes off
    mbx.host_create(&HostSpec {
        name: "archive".into(),
        throttle_database_size: Some(DatabaseSizeOverride::Bytes(2 * GB)),
        ..Default::default()
    })
    .await
    .expect("host with its own threshold");
    mbx.group_set_throttle_database_size(None)
        .await
        .expect("group off");
    assert_eq!(effective(&mbx, "archive").await, Some(2 * GB));
    assert_eq!(effective(&mbx, "edi").await, None);

    // the override travels with the bindings, and a file without it means the group's
    let doc = mbx.export_bindings(None).await.expect("export");
    assert_eq!(
        doc.hosts["archive"].throttle_database_size,
        DatabaseSizeOverride::Bytes(2 * GB)
    );
    assert!(doc.hosts["edi"].throttle_database_size.is_group());
    let text = serde_json::to_string(&doc.hosts["archive"]).expect("json");
    assert!(
        text.contains(r#""throttle_database_size":"2147483648""#),
        "{text}"
    );
    let written: mbx_messagebox::bindings::HostBinding = serde_json::from_str(
        r#"{"throttle_publish": 5, "throttle_inflight": 5, "tracking": "off",
            "throttle_database_size": "512MiB"}"#,
    )
    .expect("a size with a unit");
    assert_eq!(
        written.throttle_database_size,
        DatabaseSizeOverride::Bytes(512 << 20)
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn a_threshold_of_zero_is_refused_and_changes_nothing(pool: PgPool) {
    let mbx = mbx(pool).await;
    let err = mbx
        .group_set_throttle_database_size(Some(0))
        .await
        .expect_err("0 bytes");
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("--throttle-database-size")),
        "{err}"
    );
    assert!(err.is_bad_input());
    let err = mbx
        .host_create(&HostSpec {
            name: "edi".into(),
            throttle_database_size: Some(DatabaseSizeOverride::Bytes(-1)),
            ..Default::default()
        })
        .await
        .expect_err("negative");
    assert!(err.is_bad_input(), "{err}");
    assert!(
        mbx.host_list().await.expect("hosts").len() == 1,
        "no host created"
    );
    assert_eq!(
        mbx.group_settings()
            .await
            .expect("settings")
            .throttle_database_size,
        None
    );
}

#[sqlx::test(migrator = "mbx_messagebox::MIGRATOR")]
async fn an_instance_records_that_it_is_throttled_on_the_database_size(pool: PgPool) {
    let mbx = mbx(pool).await;
    let id = instance(&mbx).await;
    for state in [
        "database-size",
        "publish,database-size",
        "database-size,inflight",
        "publish,database-size,inflight",
        "publish",
    ] {
        mbx.instance_set_throttle(id, Some(state))
            .await
            .unwrap_or_else(|e| panic!("{state}: {e}"));
        let list = mbx.instance_list().await.expect("instances");
        assert_eq!(list[0].throttle.as_deref(), Some(state));
    }
    for bad in ["disk", "publish,", ",publish", "publish database-size"] {
        assert!(
            mbx.instance_set_throttle(id, Some(bad)).await.is_err(),
            "{bad} is not a throttle state"
        );
    }
    mbx.instance_set_throttle(id, None).await.expect("none");
}
