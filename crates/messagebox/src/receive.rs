//! Receive-side configuration: receive ports and receive locations.
//! A location is an adapter address + pipeline + promotions, bound to a host, enabled or
//! disabled; running hosts pick up changes (issue 3's host loops read this table).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{host_id, validate_address, validate_name};
use crate::error::exists_or;
use crate::publish::MAX_MESSAGE_SIZE_DEFAULT_BYTES;
use crate::{Error, MessageBox, Result, DEFAULT_HOST};

/// Everything `receive-location create` takes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReceiveLocationSpec {
    pub name: String,
    pub port: String,
    pub host: String,
    pub address: String,
    pub pipeline: String,
    /// Property name → path in the body (JSON pointer or XML element path).
    pub promote: BTreeMap<String, String>,
    /// `mbx.MessageType` stamped on every message (json and passthru pipelines).
    pub message_type: Option<String>,
    pub settings: BTreeMap<String, String>,
    pub ordered: bool,
    pub max_message_size: u64,
    /// The application the location belongs to (bindings as code).
    pub application: String,
}

impl ReceiveLocationSpec {
    pub fn new(name: &str, port: &str, address: &str) -> Self {
        Self {
            name: name.to_owned(),
            port: port.to_owned(),
            host: DEFAULT_HOST.to_owned(),
            address: address.to_owned(),
            pipeline: "passthru".to_owned(),
            promote: BTreeMap::new(),
            message_type: None,
            settings: BTreeMap::new(),
            ordered: false,
            max_message_size: MAX_MESSAGE_SIZE_DEFAULT_BYTES,
            application: crate::config::DEFAULT_APPLICATION.to_owned(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        validate_name("receive location", &self.name)?;
        crate::config::validate_application(&self.application)?;
        validate_address("--address", &self.address)?;
        // the pipeline, its paths and --ordered are checked by the adapters' registry
        // (`Registry::validate_receive_location`), which knows them; the vocabulary's rule
        // on promotion targets holds here too, so no caller stores a spoofing promotion
        for prop in self.promote.keys() {
            mbx_vocabulary::validate_promotion_target(prop)
                .map_err(|e| Error::Invalid(format!("--promote: {e}")))?;
        }
        if let Some(t) = &self.message_type {
            validate_message_type(&self.pipeline, t)?;
        }
        if self.max_message_size == 0 {
            return Err(Error::Invalid(
                "--max-message-size: must be above 0 (example: 100MB)".into(),
            ));
        }
        Ok(())
    }
}

/// A location's message type: text without control characters, on a pipeline whose body
/// has no root name to take it from.
fn validate_message_type(pipeline: &str, t: &str) -> Result<()> {
    if pipeline == "xml" {
        return Err(Error::Invalid(format!(
            "--message-type {t}: the xml pipeline takes mbx.MessageType from the root element (namespace#root); drop --message-type, or use --pipeline json"
        )));
    }
    // it is promoted on every message: a promoted value's bound holds
    let max = mbx_vocabulary::PROMOTED_VALUE_MAX_BYTES;
    if t.is_empty() || t.len() > max || t.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "--message-type {t:?}: 1 to {max} bytes without control characters (example: --message-type Payment)"
        )));
    }
    Ok(())
}

/// A receive location as `list` reports it and hosts read it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ReceiveLocation {
    pub id: i64,
    pub name: String,
    pub port: String,
    pub two_way: bool,
    pub host: String,
    pub address: String,
    pub pipeline: String,
    pub promote: sqlx::types::Json<BTreeMap<String, String>>,
    pub message_type: Option<String>,
    pub settings: sqlx::types::Json<BTreeMap<String, String>>,
    pub ordered: bool,
    pub max_message_size: i64,
    pub enabled: bool,
    pub application: String,
}

/// A receive port as `list` reports it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ReceivePort {
    pub name: String,
    pub two_way: bool,
    pub locations: Vec<String>,
    pub application: String,
    /// Receive and routing failures also publish an error report.
    pub route_failed: bool,
}

pub(crate) const LOCATION_SELECT: &str = "
    SELECT l.id, l.name, r.name AS port, r.two_way, h.name AS host, l.address, l.pipeline,
           l.promote, l.message_type, l.settings, l.ordered, l.max_message_size, l.enabled,
           l.application
      FROM receive_locations l
      JOIN receive_ports r ON r.id = l.receive_port_id
      JOIN hosts h ON h.id = l.host_id";

/// A receive port that does not exist, with where to look.
pub(crate) fn receive_port_not_found(name: &str) -> Error {
    Error::not_found(
        "receive port",
        name,
        "`mbx receive-port list` shows the ports; `mbx receive-port create NAME` makes one",
    )
}

pub(crate) fn location_not_found(name: &str) -> Error {
    Error::not_found(
        "receive location",
        name,
        "`mbx receive-location list` shows the locations",
    )
}

impl MessageBox {
    pub async fn receive_port_create(&self, name: &str, two_way: bool) -> Result<()> {
        self.receive_port_create_in(name, two_way, crate::config::DEFAULT_APPLICATION)
            .await
    }

    /// [`receive_port_create`](Self::receive_port_create) in an application.
    pub async fn receive_port_create_in(
        &self,
        name: &str,
        two_way: bool,
        application: &str,
    ) -> Result<()> {
        self.receive_port_create_with(name, two_way, false, application)
            .await
    }

    /// A receive port with every option: two-way, `--route-failed`, its application.
    pub async fn receive_port_create_with(
        &self,
        name: &str,
        two_way: bool,
        route_failed: bool,
        application: &str,
    ) -> Result<()> {
        receive_port_insert(
            &mut *self.pool.acquire().await?,
            name,
            two_way,
            route_failed,
            application,
        )
        .await
    }

    pub async fn receive_port_list(&self) -> Result<Vec<ReceivePort>> {
        Ok(sqlx::query_as::<_, ReceivePort>(
            "SELECT r.name, r.two_way,
                    coalesce(array_agg(l.name ORDER BY l.name) FILTER (WHERE l.id IS NOT NULL), '{}') AS locations,
                    r.application, r.route_failed
               FROM receive_ports r LEFT JOIN receive_locations l ON l.receive_port_id = r.id
              GROUP BY r.id ORDER BY r.name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Creates a receive location, disabled (enable it to start receiving).
    pub async fn receive_location_create(
        &self,
        spec: &ReceiveLocationSpec,
    ) -> Result<ReceiveLocation> {
        let mut tx = self.pool.begin().await?;
        receive_location_create_in(&mut tx, spec).await?;
        let loc =
            sqlx::query_as::<_, ReceiveLocation>(&format!("{LOCATION_SELECT} WHERE l.name = $1"))
                .bind(&spec.name)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(loc)
    }

    pub async fn receive_location_list(&self) -> Result<Vec<ReceiveLocation>> {
        Ok(
            sqlx::query_as::<_, ReceiveLocation>(&format!("{LOCATION_SELECT} ORDER BY l.name"))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Enables or disables a location; returns whether it changed.
    pub async fn receive_location_set_enabled(&self, name: &str, enabled: bool) -> Result<bool> {
        let before: bool = sqlx::query_scalar(
            "UPDATE receive_locations l SET enabled = $2
               FROM (SELECT id, enabled AS before FROM receive_locations WHERE name = $1 FOR UPDATE) o
              WHERE l.id = o.id
             RETURNING o.before",
        )
        .bind(name)
        .bind(enabled)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| location_not_found(name))?;
        Ok(before != enabled)
    }

    /// Deletes a receive port; refused while locations feed it (naming them).
    pub async fn receive_port_delete(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        receive_port_delete_in(&mut tx, name).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn receive_location_delete(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let enabled: bool =
            sqlx::query_scalar("SELECT enabled FROM receive_locations WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| location_not_found(name))?;
        if enabled {
            return Err(Error::Refused(format!(
                "receive location '{name}' is enabled; disable it first with `mbx receive-location disable {name}`"
            )));
        }
        sqlx::query("DELETE FROM receive_locations WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Creates a receive port on `conn`.
pub(crate) async fn receive_port_insert(
    conn: &mut sqlx::PgConnection,
    name: &str,
    two_way: bool,
    route_failed: bool,
    application: &str,
) -> Result<()> {
    validate_name("receive port", name)?;
    crate::config::validate_application(application)?;
    match sqlx::query(
        "INSERT INTO receive_ports (name, two_way, route_failed, application) VALUES ($1, $2, $3, $4)",
    )
    .bind(name)
    .bind(two_way)
    .bind(route_failed)
    .bind(application)
        .execute(&mut *conn)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(exists_or(e, "receive port", name, "choose another name")),
    }
}

/// Deletes a receive port inside `tx`; refused while locations feed it.
pub(crate) async fn receive_port_delete_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: &str,
) -> Result<()> {
    let id: i64 = sqlx::query_scalar("SELECT id FROM receive_ports WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| receive_port_not_found(name))?;
    let locations: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM receive_locations WHERE receive_port_id = $1 ORDER BY name",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    if !locations.is_empty() {
        return Err(Error::Refused(format!(
            "receive port '{name}' has receive locations ({}); delete them first with `mbx receive-location delete NAME`",
            locations.join(", ")
        )));
    }
    sqlx::query("DELETE FROM receive_ports WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Creates a receive location inside `tx`, disabled.
pub(crate) async fn receive_location_create_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    spec: &ReceiveLocationSpec,
) -> Result<()> {
    spec.validate()?;
    let port_id: i64 = sqlx::query_scalar("SELECT id FROM receive_ports WHERE name = $1")
        .bind(&spec.port)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| {
            Error::not_found(
                "receive port",
                spec.port.clone(),
                "create it with `mbx receive-port create NAME`",
            )
        })?;
    let host_id = host_id(tx, &spec.host).await?;
    let max = i64::try_from(spec.max_message_size)
        .map_err(|_| Error::Invalid("--max-message-size: too large (example: 100MB)".into()))?;
    let res = sqlx::query(
        "INSERT INTO receive_locations (name, receive_port_id, host_id, address, pipeline, promote, settings,
                                        ordered, max_message_size, application, message_type)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&spec.name)
    .bind(port_id)
    .bind(host_id)
    .bind(&spec.address)
    .bind(&spec.pipeline)
    .bind(sqlx::types::Json(&spec.promote))
    .bind(sqlx::types::Json(&spec.settings))
    .bind(spec.ordered)
    .bind(max)
    .bind(&spec.application)
    .bind(&spec.message_type)
    .execute(&mut **tx)
    .await;
    res.map_err(|e| {
        exists_or(
            e,
            "receive location",
            &spec.name,
            "choose another name or delete it first",
        )
    })?;
    if spec.ordered {
        // one instance at a time receives an ordered location
        sqlx::query(
            "INSERT INTO leases (location_id) SELECT id FROM receive_locations WHERE name = $1",
        )
        .bind(&spec.name)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Whether a receive location runs on one live instance, and if not why.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LocationRun {
    pub location: String,
    pub instance: uuid::Uuid,
    pub running: bool,
    /// Why it does not run (`None` while it runs).
    pub problem: Option<String>,
    /// Since when it has been in this state.
    pub since: chrono::DateTime<chrono::Utc>,
}

/// Longest problem text kept for a location run.
pub const LOCATION_PROBLEM_MAX_BYTES: usize = 1024;

impl MessageBox {
    /// Records that location `location_id` runs on `instance` (`problem: None`) or does not,
    /// and why. The time it entered the state is kept while the state stays the same.
    pub async fn location_run_report(
        &self,
        location_id: i64,
        instance: uuid::Uuid,
        problem: Option<&str>,
    ) -> Result<()> {
        let problem = problem.map(|p| crate::truncate_utf8(p, LOCATION_PROBLEM_MAX_BYTES));
        sqlx::query(
            "INSERT INTO receive_location_runs AS r (location_id, instance_id, running, problem)
             SELECT $1, $2, $3 IS NULL, $3
              WHERE EXISTS (SELECT 1 FROM receive_locations WHERE id = $1)
             ON CONFLICT (location_id, instance_id) DO UPDATE
                SET running = excluded.running, problem = excluded.problem,
                    since = CASE WHEN r.problem IS NOT DISTINCT FROM excluded.problem
                                 THEN r.since ELSE now() END",
        )
        .bind(location_id)
        .bind(instance)
        .bind(problem)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets whether `location_id` runs on `instance` (it stopped there).
    pub async fn location_run_clear(&self, location_id: i64, instance: uuid::Uuid) -> Result<()> {
        sqlx::query(
            "DELETE FROM receive_location_runs WHERE location_id = $1 AND instance_id = $2",
        )
        .bind(location_id)
        .bind(instance)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Where enabled locations run or fail, on live instances, by location then instance.
    pub async fn location_runs(&self) -> Result<Vec<LocationRun>> {
        Ok(sqlx::query_as(
            "SELECT l.name AS location, r.instance_id AS instance, r.running, r.problem, r.since
               FROM receive_location_runs r
               JOIN receive_locations l ON l.id = r.location_id AND l.enabled
               JOIN host_instances i ON i.id = r.instance_id AND i.state = 'alive'
              ORDER BY l.name, r.instance_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
