//! Change in place: `send-port|receive-location|send-port-group|host update`. Each update
//! reads the object's specification under its row lock, lets the caller change it (and
//! check it with what only the caller knows: the adapters' registry), validates it as
//! `create` would, and writes it back in the same transaction. The backlog, the state and
//! an ordered port's sequence stay; a filter change is a routing change (exclusive routing
//! lock, version bump), so a publish sees the old routing or the new, never a mix.
//! Changes that cannot be made in place are refused with the reason and what to do.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{Postgres, Transaction};

use crate::config::{
    compile_filter, host_id, lock_group, lock_port, port_work, set_subscription, Backoff, HostSpec,
    SendPortSpec,
};
use crate::receive::{location_not_found, ReceiveLocationSpec};
use crate::states::{GroupState, PortState};
use crate::{begin_routing_change, Error, MessageBox, Result, TrackingLevel};

/// One field an update changed, with its old and new values as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub from: String,
    pub to: String,
}

/// What an update did: the object and the fields that changed (none: nothing to do).
#[derive(Debug, Clone, Serialize)]
pub struct Update {
    pub kind: &'static str,
    pub object: String,
    pub changes: Vec<FieldChange>,
}

impl Update {
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// A send port group's specification (its state changes by `start`/`stop`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSpec {
    pub name: String,
    pub filter: Option<String>,
    pub application: String,
}

/// The fields in which two specifications differ, by their serialized form (so every
/// field of a spec takes part without being listed here).
pub fn diff<T: Serialize>(old: &T, new: &T) -> Vec<FieldChange> {
    let as_map = |v: &T| match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (old, new) = (as_map(old), as_map(new));
    let text = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => "(none)".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let mut fields: Vec<&String> = old.keys().chain(new.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter(|f| old.get(*f) != new.get(*f))
        .map(|f| FieldChange {
            field: f.clone(),
            from: text(old.get(f)),
            to: text(new.get(f)),
        })
        .collect()
}

fn refuse_rename(kind: &str, old: &str, new: &str) -> Result<()> {
    if old != new {
        return Err(Error::Invalid(format!(
            "NAME: a {kind} cannot be renamed in place ('{old}' → '{new}'); create the new one and delete the old"
        )));
    }
    Ok(())
}

/// A send port's row as [`port_spec`] reads it.
#[derive(sqlx::FromRow)]
struct PortSpecRow {
    name: String,
    host: String,
    address: Option<String>,
    allow_address: Vec<String>,
    filter_text: Option<String>,
    ordered: bool,
    ordered_by: Option<String>,
    ordered_buckets: Option<i32>,
    stop_on_failure: bool,
    ordered_commit_batch: i32,
    retry_count: i32,
    retry_interval_s: i64,
    retry_backoff: Backoff,
    retry_max_interval_s: i64,
    backup_address: Option<String>,
    backup_retry_count: i32,
    backup_retry_interval_s: i64,
    route_failed: bool,
    tracking: Option<TrackingLevel>,
    solicit_response: bool,
    settings: sqlx::types::Json<BTreeMap<String, String>>,
    application: String,
}

/// Reads a send port's specification as `create` would have taken it.
async fn port_spec(tx: &mut Transaction<'_, Postgres>, id: i64) -> Result<SendPortSpec> {
    let row = sqlx::query_as::<_, PortSpecRow>(
        "SELECT p.name, h.name AS host, p.address, p.allow_address, p.filter_text, p.ordered,
                p.stop_on_failure, p.ordered_commit_batch, p.retry_count, p.retry_interval_s,
                p.retry_backoff, p.retry_max_interval_s, p.backup_address, p.backup_retry_count,
                p.backup_retry_interval_s, p.route_failed, p.tracking, p.solicit_response,
                p.settings, p.application, p.ordered_by, p.ordered_buckets
           FROM send_ports p JOIN hosts h ON h.id = p.host_id WHERE p.id = $1",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(SendPortSpec {
        name: row.name,
        host: row.host,
        address: row.address,
        allow_address: row.allow_address,
        filter: row.filter_text,
        ordered: row.ordered,
        ordered_by: row.ordered_by,
        ordered_buckets: row.ordered_buckets,
        stop_on_failure: row.stop_on_failure,
        ordered_commit_batch: row.ordered_commit_batch,
        retry_count: row.retry_count,
        retry_interval_s: row.retry_interval_s,
        retry_backoff: row.retry_backoff,
        retry_max_interval_s: row.retry_max_interval_s,
        backup_address: row.backup_address,
        backup_retry_count: row.backup_retry_count,
        backup_retry_interval_s: row.backup_retry_interval_s,
        route_failed: row.route_failed,
        tracking: row.tracking,
        solicit_response: row.solicit_response,
        settings: row.settings.0,
        application: row.application,
        initial_state: Default::default(),
    })
}

/// Changes a send port in place inside `tx` (see the module's header).
pub(crate) async fn send_port_update_in<F>(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    change: F,
) -> Result<Update>
where
    F: FnOnce(&mut SendPortSpec) -> Result<()>,
{
    // lock order: the routing lock, then the port's row
    begin_routing_change(tx).await?;
    let port = lock_port(tx, name).await?;
    let old = port_spec(tx, port.id).await?;
    let mut new = old.clone();
    change(&mut new)?;
    refuse_rename("send port", &old.name, &new.name)?;
    new.ordered_buckets = new.buckets();
    if (&old.ordered_by, old.ordered_buckets) != (&new.ordered_by, new.ordered_buckets) {
        return Err(Error::Refused(format!(
            "send port '{name}': --ordered-by and --ordered-buckets are fixed at creation (its keys' sequences and leases follow them); create a new port with the same filter and unenlist this one"
        )));
    }
    // a filter is stored in its normal form: compare what would be stored
    let compiled = match &new.filter {
        Some(text) => Some(compile_filter(tx, text).await?),
        None => None,
    };
    new.filter = compiled.as_ref().map(|f| f.to_string());
    new.validate()?;
    crate::forward::check_link_addresses(tx, &new).await?;
    let changes = diff(&old, &new);
    let update = Update {
        kind: "send port",
        object: name.to_owned(),
        changes,
    };
    if !update.changed() {
        return Ok(update);
    }
    if old.ordered != new.ordered {
        change_ordering(tx, port.id, name, &new).await?;
    }
    send_port_write(tx, port.id, &new).await?;
    if old.filter != new.filter && port.state != PortState::Unenlisted {
        set_subscription(tx, "port", port.id, compiled.as_ref()).await?;
    }
    Ok(update)
}

/// A send port turning ordered or unordered: refused with a backlog; turning ordered,
/// the port gets its sequence and lease rows.
async fn change_ordering(
    tx: &mut Transaction<'_, Postgres>,
    port_id: i64,
    name: &str,
    new: &SendPortSpec,
) -> Result<()> {
    let work = port_work(tx, port_id).await?;
    if work.waiting + work.in_flight > 0 {
        let (from, to) = if new.ordered {
            ("unordered", "ordered")
        } else {
            ("ordered", "unordered")
        };
        return Err(Error::Refused(format!(
            "send port '{name}' has {} waiting and {} in-flight deliveries: it cannot turn {from} → {to} with a backlog (their order would be lost or made up); stop its receive side and let it drain, or create a new {to} port with the same filter and unenlist this one",
            work.waiting, work.in_flight
        )));
    }
    if new.ordered {
        sqlx::query("INSERT INTO ordered_sequences (port_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(port_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO leases (port_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(port_id)
            .execute(&mut **tx)
            .await?;
    }
    // turning unordered keeps the lease row and the sequence: ordered again, the port
    // goes on from its last epoch (another group fences a forwarding port's batches on
    // it, and an epoch that went back would be refused there for good)
    Ok(())
}

/// Writes a send port's new specification to its row.
async fn send_port_write(
    tx: &mut Transaction<'_, Postgres>,
    port_id: i64,
    new: &SendPortSpec,
) -> Result<()> {
    let host = host_id(tx, &new.host).await?;
    let settings =
        serde_json::to_value(&new.settings).map_err(|e| Error::Invalid(format!("--set: {e}")))?;
    sqlx::query(
        "UPDATE send_ports SET host_id = $2, address = $3, dynamic = $4, allow_address = $5,
                filter_text = $6, ordered = $7, stop_on_failure = $8, ordered_commit_batch = $9,
                retry_count = $10, retry_interval_s = $11, retry_backoff = $12,
                retry_max_interval_s = $13, backup_address = $14, backup_retry_count = $15,
                backup_retry_interval_s = $16, route_failed = $17, tracking = $18,
                solicit_response = $19, settings = $20, application = $21
          WHERE id = $1",
    )
    .bind(port_id)
    .bind(host)
    .bind(&new.address)
    .bind(new.address.is_none())
    .bind(&new.allow_address)
    .bind(&new.filter)
    .bind(new.ordered)
    .bind(new.stop_on_failure)
    .bind(new.ordered_commit_batch)
    .bind(new.retry_count)
    .bind(new.retry_interval_s)
    .bind(new.retry_backoff.as_str())
    .bind(new.retry_max_interval_s)
    .bind(&new.backup_address)
    .bind(new.backup_retry_count)
    .bind(new.backup_retry_interval_s)
    .bind(new.route_failed)
    .bind(new.tracking.map(|t| t.as_str()))
    .bind(new.solicit_response)
    .bind(settings)
    .bind(&new.application)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Reads a receive location's specification, locking its row; with whether it is enabled.
async fn location_spec(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<(i64, bool, ReceiveLocationSpec)> {
    #[derive(sqlx::FromRow)]
    struct LocationSpecRow {
        id: i64,
        enabled: bool,
        name: String,
        port: String,
        host: String,
        address: String,
        pipeline: String,
        promote: sqlx::types::Json<BTreeMap<String, String>>,
        message_type: Option<String>,
        settings: sqlx::types::Json<BTreeMap<String, String>>,
        ordered: bool,
        max_message_size: i64,
        application: String,
    }
    let row = sqlx::query_as::<_, LocationSpecRow>(
        "SELECT l.id, l.enabled, l.name, r.name AS port, h.name AS host, l.address, l.pipeline,
                l.promote, l.message_type, l.settings, l.ordered, l.max_message_size, l.application
           FROM receive_locations l
           JOIN receive_ports r ON r.id = l.receive_port_id
           JOIN hosts h ON h.id = l.host_id
          WHERE l.name = $1 FOR NO KEY UPDATE OF l",
    )
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| location_not_found(name))?;
    Ok((
        row.id,
        row.enabled,
        ReceiveLocationSpec {
            name: row.name,
            port: row.port,
            host: row.host,
            address: row.address,
            pipeline: row.pipeline,
            promote: row.promote.0,
            message_type: row.message_type,
            settings: row.settings.0,
            ordered: row.ordered,
            max_message_size: u64::try_from(row.max_message_size).unwrap_or(0),
            application: row.application,
        },
    ))
}

/// Changes a receive location in place inside `tx`. An enabled location keeps running:
/// its host restarts it with the new settings. Turning it ordered or unordered needs it
/// disabled (the lease that keeps it on one instance comes or goes).
pub(crate) async fn receive_location_update_in<F>(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    change: F,
) -> Result<Update>
where
    F: FnOnce(&mut ReceiveLocationSpec) -> Result<()>,
{
    let (id, enabled, old) = location_spec(tx, name).await?;
    let mut new = old.clone();
    change(&mut new)?;
    refuse_rename("receive location", &old.name, &new.name)?;
    new.validate()?;
    let update = Update {
        kind: "receive location",
        object: name.to_owned(),
        changes: diff(&old, &new),
    };
    if !update.changed() {
        return Ok(update);
    }
    if old.ordered != new.ordered {
        if enabled {
            return Err(Error::Refused(format!(
                "receive location '{name}' is enabled: --ordered changes only on a disabled location; `mbx receive-location disable {name}`, update, then enable it"
            )));
        }
        if new.ordered {
            sqlx::query("INSERT INTO leases (location_id) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        } else {
            sqlx::query("DELETE FROM leases WHERE location_id = $1")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
    }
    let port_id: i64 = sqlx::query_scalar("SELECT id FROM receive_ports WHERE name = $1")
        .bind(&new.port)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| {
            Error::not_found(
                "receive port",
                new.port.clone(),
                "create it with `mbx receive-port create NAME`",
            )
        })?;
    let host = host_id(tx, &new.host).await?;
    let max = i64::try_from(new.max_message_size)
        .map_err(|_| Error::Invalid("--max-message-size: too large (example: 100MB)".into()))?;
    sqlx::query(
        "UPDATE receive_locations SET receive_port_id = $2, host_id = $3, address = $4,
                pipeline = $5, promote = $6, settings = $7, ordered = $8, max_message_size = $9,
                application = $10, message_type = $11
          WHERE id = $1",
    )
    .bind(id)
    .bind(port_id)
    .bind(host)
    .bind(&new.address)
    .bind(&new.pipeline)
    .bind(sqlx::types::Json(&new.promote))
    .bind(sqlx::types::Json(&new.settings))
    .bind(new.ordered)
    .bind(max)
    .bind(&new.application)
    .bind(&new.message_type)
    .execute(&mut **tx)
    .await?;
    Ok(update)
}

/// Changes a send port group's filter in place inside `tx` (a routing change).
pub(crate) async fn group_update_in<F>(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    change: F,
) -> Result<Update>
where
    F: FnOnce(&mut GroupSpec) -> Result<()>,
{
    begin_routing_change(tx).await?;
    let (id, state, filter) = lock_group(tx, name).await?;
    let application: String =
        sqlx::query_scalar("SELECT application FROM send_port_groups WHERE id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
    let old = GroupSpec {
        name: name.to_owned(),
        filter,
        application,
    };
    let mut new = old.clone();
    change(&mut new)?;
    refuse_rename("send port group", &old.name, &new.name)?;
    let compiled = match &new.filter {
        Some(text) => Some(compile_filter(tx, text).await?),
        None => None,
    };
    new.filter = compiled.as_ref().map(|f| f.to_string());
    crate::config::validate_application(&new.application)?;
    let update = Update {
        kind: "send port group",
        object: name.to_owned(),
        changes: diff(&old, &new),
    };
    if !update.changed() {
        return Ok(update);
    }
    sqlx::query("UPDATE send_port_groups SET filter_text = $2, application = $3 WHERE id = $1")
        .bind(id)
        .bind(&new.filter)
        .bind(&new.application)
        .execute(&mut **tx)
        .await?;
    if state != GroupState::Unenlisted {
        set_subscription(tx, "group", id, compiled.as_ref()).await?;
    }
    Ok(update)
}

/// Changes a host's throttles and tracking level in place inside `tx`.
pub(crate) async fn host_update_in<F>(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    change: F,
) -> Result<Update>
where
    F: FnOnce(&mut HostSpec) -> Result<()>,
{
    #[derive(sqlx::FromRow)]
    struct HostRow {
        id: i64,
        throttle_publish: i64,
        throttle_inflight: i64,
        tracking: TrackingLevel,
        throttle_database_size: Option<i64>,
    }
    let row = sqlx::query_as::<_, HostRow>(
        "SELECT id, throttle_publish, throttle_inflight, tracking, throttle_database_size
           FROM hosts WHERE name = $1 FOR NO KEY UPDATE",
    )
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| Error::not_found("host", name, "`mbx host list` shows the hosts"))?;
    let id = row.id;
    let old = HostSpec {
        name: name.to_owned(),
        throttle_publish: Some(row.throttle_publish),
        throttle_inflight: Some(row.throttle_inflight),
        tracking: Some(row.tracking),
        throttle_database_size: Some(row.throttle_database_size.into()),
    };
    let mut new = old.clone();
    change(&mut new)?;
    refuse_rename("host", &old.name, &new.name)?;
    new.validate()?;
    let update = Update {
        kind: "host",
        object: name.to_owned(),
        changes: diff(&old, &new),
    };
    if update.changed() {
        sqlx::query(
            "UPDATE hosts SET throttle_publish = coalesce($2, throttle_publish),
                    throttle_inflight = coalesce($3, throttle_inflight),
                    tracking = coalesce($4, tracking),
                    throttle_database_size = CASE WHEN $5 THEN $6 ELSE throttle_database_size END
              WHERE id = $1",
        )
        .bind(id)
        .bind(new.throttle_publish)
        .bind(new.throttle_inflight)
        .bind(new.tracking.map(|t| t.as_str()))
        .bind(new.throttle_database_size.is_some())
        .bind(new.throttle_database_size.and_then(|t| t.column()))
        .execute(&mut **tx)
        .await?;
    }
    Ok(update)
}

impl MessageBox {
    /// Moves a receive port to another application.
    /// Changes a receive port in place: its application and/or whether it routes its
    /// failures (`None`: unchanged), under its row lock, in one transaction.
    pub async fn receive_port_update(
        &self,
        name: &str,
        application: Option<&str>,
        route_failed: Option<bool>,
    ) -> Result<Update> {
        if let Some(application) = application {
            crate::config::validate_application(application)?;
        }
        let mut tx = self.pool.begin().await?;
        let (old_application, old_route_failed): (String, bool) = sqlx::query_as(
            "SELECT application, route_failed FROM receive_ports WHERE name = $1 FOR NO KEY UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| crate::receive::receive_port_not_found(name))?;
        let application = application.unwrap_or(&old_application).to_owned();
        let route_failed = route_failed.unwrap_or(old_route_failed);
        let mut changes = Vec::new();
        if old_application != application {
            changes.push(FieldChange {
                field: "application".into(),
                from: old_application.clone(),
                to: application.clone(),
            });
        }
        if old_route_failed != route_failed {
            changes.push(FieldChange {
                field: "route_failed".into(),
                from: old_route_failed.to_string(),
                to: route_failed.to_string(),
            });
        }
        if !changes.is_empty() {
            sqlx::query(
                "UPDATE receive_ports SET application = $2, route_failed = $3 WHERE name = $1",
            )
            .bind(name)
            .bind(&application)
            .bind(route_failed)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Update {
            kind: "receive port",
            object: name.to_owned(),
            changes,
        })
    }

    /// Changes a send port in place: `change` edits its specification (and may refuse it);
    /// the result is validated as at creation and written in one transaction.
    pub async fn send_port_update<F>(&self, name: &str, change: F) -> Result<Update>
    where
        F: FnOnce(&mut SendPortSpec) -> Result<()> + Send,
    {
        let mut tx = self.pool.begin().await?;
        let update = send_port_update_in(&mut tx, name, change).await?;
        tx.commit().await?;
        Ok(update)
    }

    /// Changes a receive location in place (see [`send_port_update`](Self::send_port_update)).
    pub async fn receive_location_update<F>(&self, name: &str, change: F) -> Result<Update>
    where
        F: FnOnce(&mut ReceiveLocationSpec) -> Result<()> + Send,
    {
        let mut tx = self.pool.begin().await?;
        let update = receive_location_update_in(&mut tx, name, change).await?;
        tx.commit().await?;
        Ok(update)
    }

    /// Changes a send port group's filter in place.
    pub async fn group_update<F>(&self, name: &str, change: F) -> Result<Update>
    where
        F: FnOnce(&mut GroupSpec) -> Result<()> + Send,
    {
        let mut tx = self.pool.begin().await?;
        let update = group_update_in(&mut tx, name, change).await?;
        tx.commit().await?;
        Ok(update)
    }

    /// Changes a host's throttles or tracking level in place.
    pub async fn host_update<F>(&self, name: &str, change: F) -> Result<Update>
    where
        F: FnOnce(&mut HostSpec) -> Result<()> + Send,
    {
        let mut tx = self.pool.begin().await?;
        let update = host_update_in(&mut tx, name, change).await?;
        tx.commit().await?;
        Ok(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_each_changed_field_with_both_values() {
        let old = GroupSpec {
            name: "g".into(),
            filter: None,
            application: "default".into(),
        };
        let new = GroupSpec {
            filter: Some("A.B == 1".into()),
            ..old.clone()
        };
        assert_eq!(
            diff(&old, &new),
            vec![FieldChange {
                field: "filter".into(),
                from: "(none)".into(),
                to: "A.B == 1".into()
            }]
        );
        assert!(diff(&old, &old).is_empty());
    }
}
