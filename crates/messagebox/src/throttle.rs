//! Throttling: the figures a host instance needs to decide whether to slow down,
//! and where it records that it did (for `mbx status`). The threshold on the database's
//! size is group-wide (`mbx_group.throttle_database_size`) with a per-host override
//! (`hosts.throttle_database_size`: NULL the group's, 0 off).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::update::{diff, Update};
use crate::{Error, MessageBox, Result};

/// A host's throttling thresholds and its id (publishes are attributed to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub host_id: i64,
    /// Undelivered, unsuspended deliveries of messages this host published.
    pub throttle_publish: i64,
    /// In-flight messages per instance.
    pub throttle_inflight: i64,
    /// The size of the MessageBox database (bytes) at which its receive locations stop
    /// taking messages: the host's own threshold, else the group's; `None`: off.
    pub throttle_database_size: Option<i64>,
}

/// A host's threshold on the database's size: the group's (the default), off for this
/// host, or its own, in bytes. Written as `group`, `off` or a size (`50GB`, `512MiB`,
/// bytes); serialized as `group`, `off` or the number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatabaseSizeOverride {
    #[default]
    Group,
    Off,
    Bytes(i64),
}

impl DatabaseSizeOverride {
    pub fn is_group(&self) -> bool {
        *self == DatabaseSizeOverride::Group
    }

    /// The column's value: NULL the group's, 0 off, else the bytes.
    pub(crate) fn column(self) -> Option<i64> {
        match self {
            DatabaseSizeOverride::Group => None,
            DatabaseSizeOverride::Off => Some(0),
            DatabaseSizeOverride::Bytes(n) => Some(n),
        }
    }

    pub(crate) fn validate(self, arg: &str) -> Result<()> {
        match self {
            DatabaseSizeOverride::Bytes(n) if n <= 0 => Err(Error::Invalid(format!(
                "{arg}: must be above 0, or off, or group (example: {arg} 50GB)"
            ))),
            _ => Ok(()),
        }
    }
}

impl From<Option<i64>> for DatabaseSizeOverride {
    fn from(column: Option<i64>) -> Self {
        match column {
            None => DatabaseSizeOverride::Group,
            Some(0) => DatabaseSizeOverride::Off,
            Some(n) => DatabaseSizeOverride::Bytes(n),
        }
    }
}

impl fmt::Display for DatabaseSizeOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseSizeOverride::Group => f.write_str("group"),
            DatabaseSizeOverride::Off => f.write_str("off"),
            DatabaseSizeOverride::Bytes(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for DatabaseSizeOverride {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "group" => Ok(DatabaseSizeOverride::Group),
            "off" => Ok(DatabaseSizeOverride::Off),
            other => parse_size(other).map(DatabaseSizeOverride::Bytes),
        }
    }
}

impl Serialize for DatabaseSizeOverride {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DatabaseSizeOverride {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A size as `50GB`, `512MiB` or plain bytes (the syntax of `--max-message-size`), above 0.
pub fn parse_size(text: &str) -> std::result::Result<i64, String> {
    match mbx_vocabulary::parse_size(text)? {
        0 => Err(format!("'{text}' is 0; a size above 0 is needed")),
        // parse_size takes at most SIZE_MAX_BYTES = i64::MAX
        n => i64::try_from(n).map_err(|_| format!("'{text}' is too large")),
    }
}

/// The group-wide settings (`mbx group show`) and the database's size now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct GroupSettings {
    pub group: String,
    /// Bytes; `None`: off.
    pub throttle_database_size: Option<i64>,
    /// Whole days tracking events are kept (maintenance purges older ones).
    pub tracking_retention_days: i32,
    /// `pg_database_size(current_database())` now.
    pub database_size: i64,
}

/// The settings `mbx group set` changes (the diff of an update names its fields).
#[derive(Debug, Clone, Serialize)]
struct GroupLevelSpec {
    /// `off` or the number of bytes.
    throttle_database_size: String,
    tracking_retention_days: i32,
}

impl GroupLevelSpec {
    fn of(threshold: Option<i64>, retention_days: i32) -> Self {
        Self {
            throttle_database_size: threshold.map_or_else(|| "off".to_owned(), |n| n.to_string()),
            tracking_retention_days: retention_days,
        }
    }
}

/// What `mbx group set` changes: each field given (`Some`) is set, the others kept.
#[derive(Debug, Clone, Default)]
pub struct GroupSet {
    /// Bytes, or `None`: off.
    pub throttle_database_size: Option<Option<i64>>,
    /// Whole days, 1 to [`TRACKING_RETENTION_MAX_DAYS`].
    pub tracking_retention_days: Option<i32>,
}

/// The longest tracking retention (about ten years).
pub const TRACKING_RETENTION_MAX_DAYS: i32 = 3650;

impl MessageBox {
    /// The thresholds of host `name`.
    pub async fn host_limits(&self, name: &str) -> Result<HostLimits> {
        let row: Option<(i64, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT h.id, h.throttle_publish, h.throttle_inflight,
                    CASE WHEN h.throttle_database_size IS NULL THEN g.throttle_database_size
                         ELSE nullif(h.throttle_database_size, 0) END
               FROM hosts h LEFT JOIN mbx_group g ON true
              WHERE h.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let (host_id, throttle_publish, throttle_inflight, throttle_database_size) = row
            .ok_or_else(|| {
                Error::not_found(
                    "host",
                    name,
                    format!("create it with `mbx host create {name}`"),
                )
            })?;
        Ok(HostLimits {
            host_id,
            throttle_publish,
            throttle_inflight,
            throttle_database_size,
        })
    }

    /// The size of the MessageBox database in bytes (`pg_database_size`: PostgreSQL walks
    /// the database's folder, so callers read it every few seconds, not per message).
    pub async fn database_size(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT pg_database_size(current_database())")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The group-wide settings and the database's size now.
    pub async fn group_settings(&self) -> Result<GroupSettings> {
        sqlx::query_as::<_, GroupSettings>(
            "SELECT name AS group, throttle_database_size,
                    pg_database_size(current_database()) AS database_size, tracking_retention_days
               FROM mbx_group",
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| {
            Error::Refused("this MessageBox has no group row; run `mbx init`".to_owned())
        })
    }

    /// How long tracking events are kept (the group's setting), in seconds.
    pub async fn tracking_retention_s(&self) -> Result<i64> {
        let days: Option<i32> = sqlx::query_scalar("SELECT tracking_retention_days FROM mbx_group")
            .fetch_optional(&self.pool)
            .await?;
        Ok(
            days.map_or(crate::maintenance::TRACKING_RETENTION_DEFAULT_S, |d| {
                i64::from(d) * 86_400
            }),
        )
    }

    /// Sets the group-wide threshold on the database's size (`None`: off); running
    /// instances pick it up within a second. Returns what changed.
    pub async fn group_set_throttle_database_size(&self, bytes: Option<i64>) -> Result<Update> {
        self.group_set(&GroupSet {
            throttle_database_size: Some(bytes),
            ..GroupSet::default()
        })
        .await
    }

    /// Changes the group-wide settings `set` gives, in one transaction. Returns what
    /// changed.
    pub async fn group_set(&self, set: &GroupSet) -> Result<Update> {
        if let Some(Some(n)) = set.throttle_database_size {
            DatabaseSizeOverride::Bytes(n).validate("--throttle-database-size")?;
        }
        if let Some(days) = set.tracking_retention_days {
            if !(1..=TRACKING_RETENTION_MAX_DAYS).contains(&days) {
                return Err(Error::Invalid(format!(
                    "--tracking-retention: {days} days is out of range; use 1d to {TRACKING_RETENTION_MAX_DAYS}d (example: --tracking-retention 30d)"
                )));
            }
        }
        let mut tx = self.pool.begin().await?;
        #[derive(sqlx::FromRow)]
        struct Current {
            name: String,
            throttle_database_size: Option<i64>,
            tracking_retention_days: i32,
        }
        let row = sqlx::query_as::<_, Current>(
            "SELECT name, throttle_database_size, tracking_retention_days FROM mbx_group FOR UPDATE",
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            Error::Refused("this MessageBox has no group row; run `mbx init`".to_owned())
        })?;
        let (group, old_size, old_days) = (
            row.name,
            row.throttle_database_size,
            row.tracking_retention_days,
        );
        let size = set.throttle_database_size.unwrap_or(old_size);
        let days = set.tracking_retention_days.unwrap_or(old_days);
        let update = Update {
            kind: "group",
            object: group,
            changes: diff(
                &GroupLevelSpec::of(old_size, old_days),
                &GroupLevelSpec::of(size, days),
            ),
        };
        if update.changed() {
            sqlx::query(
                "UPDATE mbx_group SET throttle_database_size = $1, tracking_retention_days = $2",
            )
            .bind(size)
            .bind(days)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(update)
    }

    /// Deliveries not yet delivered (nor suspended: those leave `deliveries`) of messages
    /// host `host_id` published, counted up to `cap` — enough to compare with a threshold
    /// without counting a large backlog in full.
    pub async fn publish_backlog(&self, host_id: i64, cap: i64) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM (
                SELECT 1 FROM deliveries d JOIN messages m ON m.id = d.message_id
                 WHERE m.publisher_host_id = $1 LIMIT $2) b",
        )
        .bind(host_id)
        .bind(cap.max(0))
        .fetch_one(&self.pool)
        .await?)
    }

    /// Records what instance `id` is throttled on (`None`: nothing).
    pub async fn instance_set_throttle(&self, id: Uuid, throttle: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE host_instances SET throttle = $2 WHERE id = $1")
            .bind(id)
            .bind(throttle)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
