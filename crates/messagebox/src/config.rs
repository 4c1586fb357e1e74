//! Configuration: hosts, declared properties, send ports and send port groups, with the
//! send port state machine (unenlisted, stopped, started, suspended). Every change is one transaction; changes that
//! alter routing take the exclusive routing lock and bump the routing version.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sqlx::{Postgres, Transaction};

use crate::filter::{self, Filter};
use crate::routing::{GroupSubscription, PortSubscription, RoutingTable};
use crate::value::{validate_property_name, PropertyType};
use crate::{begin_routing_change, Error, MessageBox, Result, TrackingLevel, DEFAULT_HOST};

pub use mbx_vocabulary::NAME_MAX_BYTES;

/// The application objects belong to unless `--application` says otherwise.
pub const DEFAULT_APPLICATION: &str = "default";

/// Checks an application name (the rule of object names).
pub fn validate_application(name: &str) -> Result<()> {
    mbx_vocabulary::validate_name("application", name)
        .map_err(|e| Error::Invalid(format!("--application: {e}")))
}

/// Checks an object name (host, port, group, location): letters, digits, `_ . -`.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    mbx_vocabulary::validate_name(kind, name).map_err(Error::Invalid)
}

/// Checks the shape every adapter address has: `scheme:rest`, printable. Which schemes
/// exist and what each accepts is the adapters' registry's to say
/// (`Registry::validate_send`, `validate_receive_location`); `mbx` asks it before it
/// calls here.
pub fn validate_address(arg: &str, address: &str) -> Result<()> {
    let example = "(example: file:///data/out/%MessageID%.xml)";
    let has_scheme = address.split_once(':').is_some_and(|(scheme, rest)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            && !rest.is_empty()
    });
    if !has_scheme {
        return Err(Error::Invalid(format!(
            "{arg}: '{address}' is not a URI: it needs a scheme {example}"
        )));
    }
    if address.chars().any(|c| c.is_control()) {
        return Err(Error::Invalid(format!(
            "{arg}: '{address}' is not a valid address {example}"
        )));
    }
    Ok(())
}

/// A property declaration as stored: `SELECT name, type`.
#[derive(sqlx::FromRow)]
pub(crate) struct Declaration {
    name: String,
    #[sqlx(rename = "type")]
    ty: String,
}

/// Rows of (name, type) as declarations (here, or another group's through its link).
pub(crate) fn declarations<T: FromIterator<(String, PropertyType)>>(
    rows: Vec<Declaration>,
) -> Result<T> {
    rows.into_iter()
        .map(|r| Ok((r.name, r.ty.parse().map_err(Error::Corrupt)?)))
        .collect()
}

/// Compiles a filter against the declared property types.
pub(crate) async fn compile_filter(
    tx: &mut Transaction<'_, Postgres>,
    text: &str,
) -> Result<Filter> {
    let rows = sqlx::query_as::<_, Declaration>("SELECT name, type FROM properties")
        .fetch_all(&mut **tx)
        .await?;
    let mut declared: HashMap<String, PropertyType> = HashMap::new();
    for row in rows {
        declared.insert(row.name, row.ty.parse().map_err(Error::Corrupt)?);
    }
    Ok(filter::compile(text, &|name| declared.get(name).copied())?)
}

/// Loads the subscription set (called under the shared routing lock).
pub(crate) async fn load_routing_table(
    tx: &mut Transaction<'_, Postgres>,
    version: i64,
) -> Result<RoutingTable> {
    let mut table = RoutingTable {
        version,
        ..Default::default()
    };
    #[derive(sqlx::FromRow)]
    struct PortSubscriptionRow {
        port_id: i64,
        filter: sqlx::types::Json<Filter>,
    }
    let rows = sqlx::query_as::<_, PortSubscriptionRow>(
        "SELECT s.port_id, s.filter FROM subscriptions s WHERE s.kind = 'port' ORDER BY s.port_id",
    )
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        table.ports.push(PortSubscription {
            port_id: row.port_id,
            filter: row.filter.0,
        });
    }
    #[derive(sqlx::FromRow)]
    struct GroupSubscriptionRow {
        group_id: i64,
        filter: sqlx::types::Json<Filter>,
        members: Vec<i64>,
    }
    let rows = sqlx::query_as::<_, GroupSubscriptionRow>(
        "SELECT s.group_id, s.filter,
                coalesce(array_agg(m.port_id ORDER BY m.port_id) FILTER (WHERE p.state <> 'unenlisted'), '{}') AS members
           FROM subscriptions s
           LEFT JOIN send_port_group_members m ON m.group_id = s.group_id
           LEFT JOIN send_ports p ON p.id = m.port_id
          WHERE s.kind = 'group'
          GROUP BY s.group_id, s.filter
          ORDER BY s.group_id",
    )
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        table.groups.push(GroupSubscription {
            group_id: row.group_id,
            filter: row.filter.0,
            members: row.members,
        });
    }
    let ordered: Vec<(i64, Option<String>, Option<i32>)> =
        sqlx::query_as("SELECT id, ordered_by, ordered_buckets FROM send_ports WHERE ordered")
            .fetch_all(&mut **tx)
            .await?;
    table.ordered_ports = ordered
        .into_iter()
        .map(|(id, by, buckets)| {
            let how = match by {
                Some(property) => crate::routing::OrderedBy::Key {
                    property,
                    buckets: buckets.unwrap_or(DEFAULT_ORDERED_BUCKETS),
                },
                None => crate::routing::OrderedBy::Port,
            };
            (id, how)
        })
        .collect();
    table.processes = crate::process::load_routes(tx).await?;
    Ok(table)
}

// ------------------------------------------------------------------------------------
// Hosts

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Host {
    pub name: String,
    pub throttle_publish: i64,
    pub throttle_inflight: i64,
    /// The host's threshold on the database's size: `group`, `off` or bytes.
    #[sqlx(try_from = "Option<i64>")]
    pub throttle_database_size: crate::throttle::DatabaseSizeOverride,
    pub tracking: String,
    pub instances_alive: i64,
    pub send_ports: i64,
    pub receive_locations: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostSpec {
    pub name: String,
    pub throttle_publish: Option<i64>,
    pub throttle_inflight: Option<i64>,
    /// `None`: the group's at creation, unchanged by an update.
    pub throttle_database_size: Option<crate::throttle::DatabaseSizeOverride>,
    pub tracking: Option<TrackingLevel>,
}

impl HostSpec {
    pub(crate) fn validate(&self) -> Result<()> {
        validate_name("host", &self.name)?;
        for (arg, v) in [
            ("--throttle-publish", self.throttle_publish),
            ("--throttle-inflight", self.throttle_inflight),
        ] {
            if let Some(v) = v {
                if v <= 0 {
                    return Err(Error::Invalid(format!(
                        "{arg}: must be above 0 (example: {arg} 50000)"
                    )));
                }
            }
        }
        if let Some(t) = self.throttle_database_size {
            t.validate("--throttle-database-size")?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------
// Send ports

crate::states::text_enum! {
    /// How the interval between retries grows.
    Backoff ("backoff") {
        Fixed = "fixed",
        /// Doubling up to the port's longest interval.
        Exponential = "exponential",
    }
}

pub use crate::states::{GroupState, PortState};

/// Which state `create` leaves a port or group in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialState {
    /// Enlisted, not delivering (the default: collects its messages from the start).
    #[default]
    Stopped,
    Started,
    Unenlisted,
}

impl InitialState {
    fn as_str(self) -> &'static str {
        match self {
            InitialState::Stopped => "stopped",
            InitialState::Started => "started",
            InitialState::Unenlisted => "unenlisted",
        }
    }
}

/// Buckets of a port ordered by a property when `--ordered-buckets` is not given.
pub const DEFAULT_ORDERED_BUCKETS: i32 = 64;

/// Everything `send-port create` takes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendPortSpec {
    pub name: String,
    pub host: String,
    /// `None` for a dynamic port.
    pub address: Option<String>,
    pub allow_address: Vec<String>,
    pub filter: Option<String>,
    pub ordered: bool,
    /// Ordered per value of this promoted property (implies `ordered`).
    pub ordered_by: Option<String>,
    /// Hash buckets of `ordered_by`'s keys, each under its own lease (default 64).
    pub ordered_buckets: Option<i32>,
    pub stop_on_failure: bool,
    pub ordered_commit_batch: i32,
    pub retry_count: i32,
    pub retry_interval_s: i64,
    pub retry_backoff: Backoff,
    pub retry_max_interval_s: i64,
    pub backup_address: Option<String>,
    pub backup_retry_count: i32,
    pub backup_retry_interval_s: i64,
    pub route_failed: bool,
    pub tracking: Option<TrackingLevel>,
    pub solicit_response: bool,
    pub settings: BTreeMap<String, String>,
    /// The application the port belongs to (bindings as code).
    pub application: String,
    /// Only `create` reads it; an update keeps the port's state.
    #[serde(skip)]
    pub initial_state: InitialState,
}

impl SendPortSpec {
    /// A static port with the default retry policy (3 retries 5 minutes apart, no backup).
    pub fn new(name: &str, address: &str) -> Self {
        Self {
            name: name.to_owned(),
            host: DEFAULT_HOST.to_owned(),
            address: Some(address.to_owned()),
            allow_address: Vec::new(),
            filter: None,
            ordered: false,
            ordered_by: None,
            ordered_buckets: None,
            stop_on_failure: false,
            ordered_commit_batch: 32,
            retry_count: 3,
            retry_interval_s: 300,
            retry_backoff: Backoff::Fixed,
            retry_max_interval_s: 3600,
            backup_address: None,
            backup_retry_count: 3,
            backup_retry_interval_s: 300,
            route_failed: false,
            tracking: None,
            solicit_response: false,
            settings: BTreeMap::new(),
            application: DEFAULT_APPLICATION.to_owned(),
            initial_state: InitialState::Stopped,
        }
    }

    pub fn with_filter(mut self, filter: &str) -> Self {
        self.filter = Some(filter.to_owned());
        self
    }

    pub fn with_state(mut self, state: InitialState) -> Self {
        self.initial_state = state;
        self
    }

    /// The number of key buckets of a port ordered by a property (`None` otherwise).
    pub fn buckets(&self) -> Option<i32> {
        self.ordered_by
            .as_ref()
            .map(|_| self.ordered_buckets.unwrap_or(DEFAULT_ORDERED_BUCKETS))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        validate_name("send port", &self.name)?;
        validate_application(&self.application)?;
        self.validate_endpoints()?;
        self.validate_ordering()?;
        if self.retry_count < 0 || self.backup_retry_count < 0 {
            return Err(Error::Invalid(
                "--retry-count: must be 0 or more (example: 3)".into(),
            ));
        }
        self.validate_setting_names()
    }

    /// The address, or a dynamic port's allowed prefixes, and the backup address.
    fn validate_endpoints(&self) -> Result<()> {
        match &self.address {
            Some(a) => {
                validate_address("--address", a)?;
                if !self.allow_address.is_empty() {
                    return Err(Error::Invalid(
                        "--allow-address: only a dynamic port lists allowed addresses; add --dynamic or drop --allow-address".into(),
                    ));
                }
            }
            None => {
                if self.allow_address.is_empty() {
                    return Err(Error::Invalid(
                        "--allow-address: a dynamic port must list the address prefixes it may send to (example: --allow-address file:///data/out/)".into(),
                    ));
                }
                for a in &self.allow_address {
                    validate_address("--allow-address", a)?;
                }
            }
        }
        if let Some(b) = &self.backup_address {
            validate_address("--backup-address", b)?;
        }
        Ok(())
    }

    /// What an ordered port may and must have: a fixed address and no backup; buckets
    /// only by a property; stop-on-failure only ordered; the commit batch in range.
    fn validate_ordering(&self) -> Result<()> {
        if self.ordered && self.address.is_none() {
            return Err(Error::Invalid(
                "--ordered: a dynamic send port cannot be ordered (each message may go to a different endpoint); drop --ordered or give a fixed --address".into(),
            ));
        }
        if self.ordered && self.backup_address.is_some() {
            return Err(Error::Invalid(
                "--backup-address: ordered ports do not use backup transports (switching endpoints would break the order); drop --backup-address".into(),
            ));
        }
        self.validate_ordered_by()?;
        if let Some(n) = self.ordered_buckets {
            if self.ordered_by.is_none() {
                return Err(Error::Invalid(
                    "--ordered-buckets: only a port ordered by a property has buckets; add --ordered-by PROP".into(),
                ));
            }
            if !(1..=1024).contains(&n) {
                return Err(Error::Invalid(format!(
                    "--ordered-buckets: {n} is out of range 1..1024 (example: 64)"
                )));
            }
        }
        if self.stop_on_failure && !self.ordered {
            return Err(Error::Invalid(
                "--stop-on-failure: only an ordered port can stop on failure; add --ordered".into(),
            ));
        }
        if !(1..=10_000).contains(&self.ordered_commit_batch) {
            return Err(Error::Invalid(format!(
                "--ordered-commit-batch: {} is out of range 1..10000 (example: 32)",
                self.ordered_commit_batch
            )));
        }
        Ok(())
    }

    /// `--ordered-by`: a property name, on an ordered port that is not forwarding and not
    /// appending to one file.
    fn validate_ordered_by(&self) -> Result<()> {
        let Some(property) = &self.ordered_by else {
            return Ok(());
        };
        mbx_vocabulary::validate_property_name(property).map_err(|e| {
            Error::Invalid(format!(
                "--ordered-by: {e} (example: --ordered-by Order.CustomerId)"
            ))
        })?;
        if !self.ordered {
            return Err(Error::Invalid(
                "--ordered-by: a port ordered by a property is ordered; add --ordered".into(),
            ));
        }
        if self
            .address
            .as_deref()
            .is_some_and(mbx_vocabulary::GroupAddress::is_group_address)
        {
            return Err(Error::Invalid(
                "--ordered-by: forwarding to another group keeps one order per port; use --ordered"
                    .into(),
            ));
        }
        if self.settings.get("append").map(String::as_str) == Some("true") {
            return Err(Error::Invalid(
                "--ordered-by: FILE append mode restores one file to one writer's checkpoint, and keys are sent concurrently; use --ordered, or drop --set append=true".into(),
            ));
        }
        Ok(())
    }

    /// Setting names: letters, digits, `_ - .`, not starting or ending with a dot.
    fn validate_setting_names(&self) -> Result<()> {
        for k in self.settings.keys() {
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                || k.starts_with('.')
                || k.ends_with('.')
            {
                return Err(Error::Invalid(format!(
                    "--set: setting name '{k}' is not valid: letters, digits, '_', '-' or '.' inside (example: --set header.X-Order-Id=Order.Id)"
                )));
            }
        }
        Ok(())
    }
}

/// A send port as `show` and `list` report it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SendPort {
    pub id: i64,
    pub name: String,
    pub host: String,
    pub address: Option<String>,
    pub dynamic: bool,
    pub allow_address: Vec<String>,
    pub filter: Option<String>,
    pub state: PortState,
    pub ordered: bool,
    pub ordered_by: Option<String>,
    pub ordered_buckets: Option<i32>,
    pub stop_on_failure: bool,
    pub ordered_commit_batch: i32,
    pub retry_count: i32,
    pub retry_interval_s: i64,
    pub retry_backoff: Backoff,
    pub retry_max_interval_s: i64,
    pub backup_address: Option<String>,
    pub backup_retry_count: i32,
    pub backup_retry_interval_s: i64,
    pub route_failed: bool,
    pub tracking: TrackingLevel,
    pub solicit_response: bool,
    /// Adapter settings (`--set KEY=VALUE`).
    pub settings: sqlx::types::Json<BTreeMap<String, String>>,
    pub groups: Vec<String>,
    pub application: String,
}

impl SendPort {
    /// The retry policy of `transport` (a backup retries at a fixed interval, as
    /// `deliveries_fail` decides).
    pub fn retry_policy(
        &self,
        transport: crate::delivery::Transport,
    ) -> crate::delivery::RetryPolicy {
        match transport {
            crate::delivery::Transport::Backup if self.backup_address.is_some() => {
                crate::delivery::RetryPolicy {
                    count: self.backup_retry_count,
                    interval_s: self.backup_retry_interval_s,
                    exponential: false,
                    max_interval_s: self.backup_retry_interval_s,
                }
            }
            _ => crate::delivery::RetryPolicy {
                count: self.retry_count,
                interval_s: self.retry_interval_s,
                exponential: self.retry_backoff == Backoff::Exponential,
                max_interval_s: self.retry_max_interval_s,
            },
        }
    }
}

const SEND_PORT_SELECT: &str = "
    SELECT p.id, p.name, h.name AS host, p.address, p.dynamic, p.allow_address,
           p.filter_text AS filter, p.state, p.ordered, p.ordered_by, p.ordered_buckets,
           p.stop_on_failure, p.ordered_commit_batch, p.retry_count, p.retry_interval_s, p.retry_backoff, p.retry_max_interval_s,
           p.backup_address, p.backup_retry_count, p.backup_retry_interval_s, p.route_failed,
           coalesce(p.tracking, h.tracking) AS tracking, p.solicit_response, p.settings,
           coalesce((SELECT array_agg(g.name ORDER BY g.name) FROM send_port_group_members m
                     JOIN send_port_groups g ON g.id = m.group_id WHERE m.port_id = p.id), '{}') AS groups,
           p.application
      FROM send_ports p JOIN hosts h ON h.id = p.host_id";

/// Counts of a port's deliveries that block unenlist/delete.
#[derive(Debug, Clone, Copy, Default, Serialize, sqlx::FromRow)]
pub struct PortWork {
    pub waiting: i64,
    pub in_flight: i64,
    pub suspended: i64,
}

/// A send port group as `list` reports it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SendPortGroup {
    pub id: i64,
    pub name: String,
    pub filter: Option<String>,
    pub state: GroupState,
    pub members: Vec<String>,
    pub application: String,
}

/// What a state change did, for the CLI to print.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub object: String,
    pub from: String,
    pub to: String,
    /// Deliveries suspended by `unenlist --force`.
    pub suspended: i64,
}

impl Change {
    pub fn changed(&self) -> bool {
        self.from != self.to
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct PortRow {
    pub(crate) id: i64,
    pub(crate) state: PortState,
    pub(crate) filter_text: Option<String>,
}

/// Locks a port's row for a state or filter change. `NO KEY UPDATE`, not `UPDATE`: a
/// publish holds a key-share lock on the row (the foreign key of its deliveries) until it
/// commits, and a start or stop must neither wait for publishes nor make them wait (nor
/// deadlock with one that holds the shared routing lock).
pub(crate) async fn lock_port(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<PortRow> {
    sqlx::query_as::<_, PortRow>(
        "SELECT id, state, filter_text FROM send_ports WHERE name = $1 FOR NO KEY UPDATE",
    )
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| Error::not_found("send port", name, "`mbx send-port list` shows the ports"))
}

pub(crate) async fn port_work(
    tx: &mut Transaction<'_, Postgres>,
    port_id: i64,
) -> Result<PortWork> {
    Ok(sqlx::query_as::<_, PortWork>(
        "SELECT (SELECT count(*) FROM deliveries WHERE port_id = $1 AND state = 'ready') AS waiting,
                (SELECT count(*) FROM deliveries WHERE port_id = $1 AND state = 'claimed') AS in_flight,
                (SELECT count(*) FROM suspended_items WHERE port_id = $1) AS suspended",
    )
    .bind(port_id)
    .fetch_one(&mut **tx)
    .await?)
}

pub(crate) async fn host_id(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<i64> {
    sqlx::query_scalar("SELECT id FROM hosts WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| {
            Error::not_found(
                "host",
                name,
                "create it with `mbx host create NAME` or use --host default",
            )
        })
}

/// Inserts or replaces the subscription of a port/group (none when it has no filter).
pub(crate) async fn set_subscription(
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    id: i64,
    filter: Option<&Filter>,
) -> Result<()> {
    let column = if kind == "port" {
        "port_id"
    } else {
        "group_id"
    };
    sqlx::query(&format!("DELETE FROM subscriptions WHERE {column} = $1"))
        .bind(id)
        .execute(&mut **tx)
        .await?;
    if let Some(filter) = filter {
        sqlx::query(&format!(
            "INSERT INTO subscriptions (kind, {column}, filter) VALUES ($1, $2, $3)"
        ))
        .bind(kind)
        .bind(id)
        .bind(sqlx::types::Json(filter))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl MessageBox {
    // --- hosts -------------------------------------------------------------------------

    pub async fn host_create(&self, spec: &HostSpec) -> Result<()> {
        host_insert(&mut *self.pool.acquire().await?, spec).await
    }

    pub async fn host_list(&self) -> Result<Vec<Host>> {
        Ok(sqlx::query_as::<_, Host>(
            "SELECT h.name, h.throttle_publish, h.throttle_inflight, h.throttle_database_size,
                    h.tracking,
                    (SELECT count(*) FROM host_instances i WHERE i.host_id = h.id AND i.state = 'alive') AS instances_alive,
                    (SELECT count(*) FROM send_ports p WHERE p.host_id = h.id) AS send_ports,
                    (SELECT count(*) FROM receive_locations l WHERE l.host_id = h.id) AS receive_locations
               FROM hosts h ORDER BY h.name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes a host; refused while ports, locations or live instances are bound to it.
    pub async fn host_delete(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM hosts WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found("host", name, "`mbx host list` shows the hosts"))?;
        #[derive(sqlx::FromRow)]
        struct Bound {
            ports: i64,
            locations: i64,
            orchestrations: i64,
            alive: i64,
        }
        let Bound {
            ports,
            locations,
            orchestrations,
            alive,
        } = sqlx::query_as(
            "SELECT (SELECT count(*) FROM send_ports WHERE host_id = $1) AS ports,
                    (SELECT count(*) FROM receive_locations WHERE host_id = $1) AS locations,
                    (SELECT count(*) FROM orchestrations WHERE host_id = $1) AS orchestrations,
                    (SELECT count(*) FROM host_instances WHERE host_id = $1 AND state = 'alive') AS alive",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if ports + locations + orchestrations + alive > 0 {
            return Err(Error::Refused(format!(
                "host '{name}' still has {ports} send port(s), {locations} receive location(s), {orchestrations} orchestration(s) and {alive} live instance(s); move or delete them first"
            )));
        }
        sqlx::query("DELETE FROM host_instances WHERE host_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM hosts WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    // --- properties ----------------------------------------------------------------------

    pub async fn property_create(&self, name: &str, ty: PropertyType) -> Result<()> {
        property_insert(&mut *self.pool.acquire().await?, name, ty).await
    }

    pub async fn property_list(&self) -> Result<Vec<(String, PropertyType)>> {
        let rows = sqlx::query_as("SELECT name, type FROM properties ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        declarations(rows)
    }

    /// Declared types of the given properties (undeclared ones are absent: strings).
    pub async fn property_types(&self) -> Result<HashMap<String, PropertyType>> {
        Ok(self.property_list().await?.into_iter().collect())
    }

    /// Deletes a declaration; refused while a filter compares the property or an
    /// orchestration's activation (any version of it) filters on it or correlates by it.
    pub async fn property_delete(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let found = sqlx::query("DELETE FROM properties WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if found == 0 {
            return Err(Error::not_found(
                "property",
                name,
                "`mbx property list` shows the declarations",
            ));
        }
        // every filter counts, enlisted or not: an unenlisted port's filter is compiled
        // again (against the declarations) when it is enlisted
        let filters: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, filter_text FROM send_ports WHERE filter_text IS NOT NULL
             UNION ALL
             SELECT name, filter_text FROM send_port_groups WHERE filter_text IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        let users: Vec<String> = filters
            .into_iter()
            .filter(|(_, text)| {
                filter::parse(text)
                    .and_then(|e| e.normalize())
                    .is_ok_and(|f| f.properties().any(|p| p == name))
            })
            .map(|(owner, _)| owner)
            .collect();
        if !users.is_empty() {
            return Err(Error::Refused(format!(
                "property '{name}' is used by the filters of {}; change those filters first",
                users.join(", ")
            )));
        }
        let orchestrations = crate::orchestrations::property_users(&mut tx, name).await?;
        if !orchestrations.is_empty() {
            return Err(Error::Refused(format!(
                "property '{name}' is used by the activation of orchestration(s) {}; delete them first",
                orchestrations.join(", ")
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    // --- send ports ----------------------------------------------------------------------

    /// Creates a send port: `stopped` (enlisted) unless the spec says otherwise.
    pub async fn send_port_create(&self, spec: &SendPortSpec) -> Result<SendPort> {
        let mut tx = self.pool.begin().await?;
        send_port_create_in(&mut tx, spec).await?;
        let port = fetch_port(&mut tx, &spec.name).await?;
        tx.commit().await?;
        Ok(port)
    }

    pub async fn send_port_show(&self, name: &str) -> Result<SendPort> {
        let mut tx = self.pool.begin().await?;
        let port = fetch_port(&mut tx, name).await?;
        tx.commit().await?;
        Ok(port)
    }

    pub async fn send_port_list(&self) -> Result<Vec<SendPort>> {
        Ok(
            sqlx::query_as::<_, SendPort>(&format!("{SEND_PORT_SELECT} ORDER BY p.name"))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// unenlisted → stopped: the port's filter becomes a subscription.
    pub async fn send_port_enlist(&self, name: &str) -> Result<Change> {
        let mut tx = self.pool.begin().await?;
        let port = lock_port_for_enlist(&mut tx, name).await?;
        let change = if port.state == PortState::Unenlisted {
            enlist_port(&mut tx, &port).await?;
            set_port_state(&mut tx, port.id, PortState::Stopped).await?;
            port_change(name, port.state, PortState::Stopped)
        } else {
            port_change(name, port.state, port.state)
        };
        tx.commit().await?;
        Ok(change)
    }

    /// → started (enlisting if needed): its waiting deliveries become claimable.
    pub async fn send_port_start(&self, name: &str) -> Result<Change> {
        let mut tx = self.pool.begin().await?;
        let port = lock_port_for_enlist(&mut tx, name).await?;
        refuse_if_suspended(name, port.state)?;
        if port.state == PortState::Unenlisted {
            enlist_port(&mut tx, &port).await?;
        }
        set_port_state(&mut tx, port.id, PortState::Started).await?;
        tx.commit().await?;
        Ok(port_change(name, port.state, PortState::Started))
    }

    /// started → stopped: deliveries wait ("waiting: port stopped"); routing is unchanged.
    pub async fn send_port_stop(&self, name: &str) -> Result<Change> {
        let mut tx = self.pool.begin().await?;
        let port = lock_port(&mut tx, name).await?;
        refuse_if_suspended(name, port.state)?;
        let to = if port.state == PortState::Started {
            PortState::Stopped
        } else {
            port.state
        };
        set_port_state(&mut tx, port.id, to).await?;
        tx.commit().await?;
        Ok(port_change(name, port.state, to))
    }

    /// → unenlisted: refused while deliveries wait (with their count) unless `force`,
    /// which suspends the waiting ones (kind `failed`); always refused while some are in
    /// flight.
    pub async fn send_port_unenlist(&self, name: &str, force: bool) -> Result<Change> {
        let mut tx = self.pool.begin().await?;
        begin_routing_change(&mut tx).await?;
        let port = lock_port(&mut tx, name).await?;
        refuse_if_suspended(name, port.state)?;
        if port.state == PortState::Unenlisted {
            tx.commit().await?;
            return Ok(port_change(name, port.state, port.state));
        }
        let work = port_work(&mut tx, port.id).await?;
        if work.in_flight > 0 {
            return Err(Error::Refused(format!(
                "send port '{name}' has {} deliveries in flight; stop it and wait for them to finish",
                work.in_flight
            )));
        }
        let mut suspended = 0;
        if work.waiting > 0 {
            if !force {
                return Err(Error::Refused(format!(
                    "send port '{name}' has {} waiting deliveries; start it to send them, or unenlist with --force to suspend them",
                    work.waiting
                )));
            }
            suspended = crate::suspended::suspend_waiting_of_port(
                self,
                &mut tx,
                port.id,
                "port unenlisted with --force",
            )
            .await?;
        }
        sqlx::query("DELETE FROM subscriptions WHERE port_id = $1")
            .bind(port.id)
            .execute(&mut *tx)
            .await?;
        set_port_state(&mut tx, port.id, PortState::Unenlisted).await?;
        tx.commit().await?;
        let mut c = port_change(name, port.state, PortState::Unenlisted);
        c.suspended = suspended;
        Ok(c)
    }

    /// Replaces a port's filter (`None` removes it: the port then receives nothing): an
    /// update in place of the filter alone.
    pub async fn send_port_set_filter(&self, name: &str, filter: Option<&str>) -> Result<()> {
        let filter = filter.map(str::to_owned);
        self.send_port_update(name, move |spec| {
            spec.filter = filter;
            Ok(())
        })
        .await
        .map(drop)
    }

    /// Deletes a port; refused, with the counts, while it has deliveries or suspended items.
    pub async fn send_port_delete(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        send_port_delete_in(&mut tx, name, false).await?;
        tx.commit().await?;
        Ok(())
    }

    // --- send port groups ------------------------------------------------------------------

    pub async fn group_create(
        &self,
        name: &str,
        filter: Option<&str>,
        state: InitialState,
    ) -> Result<SendPortGroup> {
        self.group_create_in(name, filter, state, DEFAULT_APPLICATION)
            .await
    }

    /// [`group_create`](Self::group_create) in an application.
    pub async fn group_create_in(
        &self,
        name: &str,
        filter: Option<&str>,
        state: InitialState,
        application: &str,
    ) -> Result<SendPortGroup> {
        let mut tx = self.pool.begin().await?;
        group_create_tx(&mut tx, name, filter, state, application).await?;
        let group = fetch_group(&mut tx, name).await?;
        tx.commit().await?;
        Ok(group)
    }

    pub async fn group_list(&self) -> Result<Vec<SendPortGroup>> {
        Ok(
            sqlx::query_as::<_, SendPortGroup>(&format!("{GROUP_SELECT} ORDER BY g.name"))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Adds ports to a group; returns how many were added (already members are skipped).
    pub async fn group_add(&self, name: &str, ports: &[String]) -> Result<u64> {
        self.group_membership(name, ports, true).await
    }

    /// Removes ports from a group; returns how many were removed.
    pub async fn group_remove(&self, name: &str, ports: &[String]) -> Result<u64> {
        self.group_membership(name, ports, false).await
    }

    async fn group_membership(&self, name: &str, ports: &[String], add: bool) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        begin_routing_change(&mut tx).await?;
        let group_id = lock_group(&mut tx, name).await?.0;
        let mut ids = Vec::with_capacity(ports.len());
        for port in ports {
            ids.push(lock_port(&mut tx, port).await?.id);
        }
        let n = if add {
            sqlx::query(
                "INSERT INTO send_port_group_members (group_id, port_id)
                 SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING",
            )
        } else {
            sqlx::query(
                "DELETE FROM send_port_group_members WHERE group_id = $1 AND port_id = ANY($2)",
            )
        }
        .bind(group_id)
        .bind(&ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    pub async fn group_start(&self, name: &str) -> Result<Change> {
        self.group_set_state(name, GroupState::Started).await
    }

    pub async fn group_stop(&self, name: &str) -> Result<Change> {
        self.group_set_state(name, GroupState::Stopped).await
    }

    /// unenlisted → stopped: the group's filter becomes a subscription; what it routes
    /// waits until it starts.
    pub async fn group_enlist(&self, name: &str) -> Result<Change> {
        let mut tx = self.pool.begin().await?;
        begin_routing_change(&mut tx).await?;
        let (id, from, filter_text) = lock_group(&mut tx, name).await?;
        let to = if from == GroupState::Unenlisted {
            enlist_group(&mut tx, id, filter_text.as_deref()).await?;
            set_group_state(&mut tx, id, GroupState::Stopped).await?;
            GroupState::Stopped
        } else {
            from
        };
        tx.commit().await?;
        Ok(change(name, from.as_str(), to.as_str()))
    }

    /// → unenlisted: the group's subscription goes (later publishes no longer route
    /// through it). Refused while deliveries that only this group can release wait (with
    /// their count) unless `force`, which suspends them (kind `failed`); always refused
    /// while some of those are in flight.
    pub async fn group_unenlist(&self, name: &str, force: bool) -> Result<Change> {
        let mut tx = self.pool.begin().await?;
        begin_routing_change(&mut tx).await?;
        let (id, from, _) = lock_group(&mut tx, name).await?;
        if from == GroupState::Unenlisted {
            tx.commit().await?;
            return Ok(change(name, from.as_str(), from.as_str()));
        }
        let (waiting, in_flight) = group_work(&mut tx, id).await?;
        if in_flight > 0 {
            return Err(Error::Refused(format!(
                "send port group '{name}' has {in_flight} deliveries in flight that only it routes; stop it and wait for them to finish"
            )));
        }
        let mut suspended = 0;
        if waiting > 0 {
            if !force {
                return Err(Error::Refused(format!(
                    "send port group '{name}' has {waiting} waiting deliveries that only it routes; start it to send them, or unenlist with --force to suspend them"
                )));
            }
            suspended = suspend_waiting_of_group(self, &mut tx, id).await?;
        }
        set_subscription(&mut tx, "group", id, None).await?;
        set_group_state(&mut tx, id, GroupState::Unenlisted).await?;
        tx.commit().await?;
        let mut c = change(name, from.as_str(), GroupState::Unenlisted.as_str());
        c.suspended = suspended;
        Ok(c)
    }

    /// Deletes a group (its subscription and memberships with it); refused, with the
    /// counts, while deliveries that only this group routes wait or are in flight. Its
    /// member ports stay.
    pub async fn group_delete(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        group_delete_in(&mut tx, name, false).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn group_set_state(&self, name: &str, to: GroupState) -> Result<Change> {
        let mut tx = self.pool.begin().await?;
        // lock order: routing lock, then the group row
        begin_routing_change(&mut tx).await?;
        let (from, to) = group_set_state_in(&mut tx, name, to).await?;
        tx.commit().await?;
        Ok(change(name, from.as_str(), to.as_str()))
    }
}

/// Moves a group to `to` inside `tx` (the caller holds the routing lock): a stopped
/// group that was never enlisted stays unenlisted; started from unenlisted subscribes its
/// filter; unenlisted removes its subscription. Returns (from, to).
pub(crate) async fn group_set_state_in(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    to: GroupState,
) -> Result<(GroupState, GroupState)> {
    let (id, from, filter_text) = lock_group(tx, name).await?;
    let to = if to == GroupState::Stopped && from == GroupState::Unenlisted {
        GroupState::Unenlisted
    } else {
        to
    };
    if from == GroupState::Unenlisted && to == GroupState::Started {
        enlist_group(tx, id, filter_text.as_deref()).await?;
    }
    if to == GroupState::Unenlisted && from != GroupState::Unenlisted {
        set_subscription(tx, "group", id, None).await?;
    }
    set_group_state(tx, id, to).await?;
    Ok((from, to))
}

async fn enlist_group(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    filter_text: Option<&str>,
) -> Result<()> {
    let compiled = match filter_text {
        Some(text) => Some(compile_filter(tx, text).await?),
        None => None,
    };
    set_subscription(tx, "group", id, compiled.as_ref()).await
}

async fn set_group_state(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    to: GroupState,
) -> Result<()> {
    sqlx::query("UPDATE send_port_groups SET state = $2 WHERE id = $1")
        .bind(id)
        .bind(to)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The deliveries only group `id` can release (not routed by their port's own
/// subscription, and no other group of theirs is enlisted): (waiting, in flight).
const ONLY_THROUGH_GROUP: &str = "NOT d.via_port AND $1 = ANY (d.via_groups)
       AND NOT EXISTS (SELECT 1 FROM send_port_groups o
                        WHERE o.id = ANY (d.via_groups) AND o.id <> $1 AND o.state <> 'unenlisted')";

async fn group_work(tx: &mut Transaction<'_, Postgres>, id: i64) -> Result<(i64, i64)> {
    #[derive(sqlx::FromRow)]
    struct GroupWork {
        waiting: i64,
        in_flight: i64,
    }
    let row = sqlx::query_as::<_, GroupWork>(&format!(
        "SELECT count(*) FILTER (WHERE d.state = 'ready') AS waiting,
                count(*) FILTER (WHERE d.state = 'claimed') AS in_flight
           FROM deliveries d WHERE {ONLY_THROUGH_GROUP}"
    ))
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    Ok((row.waiting, row.in_flight))
}

async fn suspend_waiting_of_group(
    mbx: &MessageBox,
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
) -> Result<i64> {
    let ids: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT d.id FROM deliveries d WHERE d.state = 'ready' AND {ONLY_THROUGH_GROUP}
          ORDER BY d.id FOR UPDATE"
    ))
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    let kinds = vec!["failed"; ids.len()];
    let errors = vec!["send port group unenlisted with --force".to_owned(); ids.len()];
    crate::suspended::suspend_deliveries(mbx, tx, &ids, &kinds, &errors, None, false).await?;
    Ok(ids.len() as i64)
}

/// Deletes group `name` inside `tx` (taking the routing lock): refused while deliveries
/// only it routes wait or are in flight, unless `discard` (`mbx apply --prune
/// --discard-messages`), which deletes those deliveries with it.
pub(crate) async fn group_delete_in(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    discard: bool,
) -> Result<()> {
    begin_routing_change(tx).await?;
    let (id, _, _) = lock_group(tx, name).await?;
    let (waiting, in_flight) = group_work(tx, id).await?;
    if waiting + in_flight > 0 {
        if !discard {
            return Err(Error::Refused(format!(
                "send port group '{name}' has {waiting} waiting and {in_flight} in-flight deliveries that only it routes; start it to send them, or `mbx send-port-group unenlist {name} --force` to suspend them first"
            )));
        }
        sqlx::query(&format!(
            "DELETE FROM deliveries d WHERE {ONLY_THROUGH_GROUP}"
        ))
        .bind(id)
        .execute(&mut **tx)
        .await?;
    }
    // memberships and the subscription go with it (ON DELETE CASCADE)
    sqlx::query("DELETE FROM send_port_groups WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Makes a group's members exactly `members` inside `tx` (routing lock held by the
/// caller); the change, if any.
pub(crate) async fn group_set_members_in(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    members: &[String],
) -> Result<Option<crate::update::FieldChange>> {
    let (id, _, _) = lock_group(tx, name).await?;
    let mut current: Vec<String> = sqlx::query_scalar(
        "SELECT p.name FROM send_port_group_members m JOIN send_ports p ON p.id = m.port_id
          WHERE m.group_id = $1 ORDER BY p.name",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    current.sort();
    let mut wanted = members.to_vec();
    wanted.sort();
    wanted.dedup();
    if current == wanted {
        return Ok(None);
    }
    let mut ids = Vec::with_capacity(wanted.len());
    for port in &wanted {
        ids.push(lock_port(tx, port).await?.id);
    }
    sqlx::query("DELETE FROM send_port_group_members WHERE group_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO send_port_group_members (group_id, port_id) SELECT $1, unnest($2::bigint[])",
    )
    .bind(id)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    Ok(Some(crate::update::FieldChange {
        field: "members".into(),
        from: current.join(", "),
        to: wanted.join(", "),
    }))
}

/// Moves a port to `to` (unenlisted, stopped or started) inside `tx` (routing lock held
/// by the caller); the change, if any. A port held after a failure stays held (resume or
/// skip it); unenlisting is refused while deliveries wait or are in flight.
pub(crate) async fn port_set_state_in(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    to: PortState,
) -> Result<Option<crate::update::FieldChange>> {
    let port = lock_port(tx, name).await?;
    let from = port.state;
    if from == to || (from == PortState::Suspended && to == PortState::Started) {
        return Ok(None);
    }
    refuse_if_suspended(name, from)?;
    if to == PortState::Unenlisted {
        let work = port_work(tx, port.id).await?;
        if work.waiting + work.in_flight > 0 {
            return Err(Error::Refused(format!(
                "send port '{name}' has {} waiting and {} in-flight deliveries; it cannot be unenlisted with them (`mbx send-port unenlist {name} --force` suspends them)",
                work.waiting, work.in_flight
            )));
        }
        set_subscription(tx, "port", port.id, None).await?;
    } else if from == PortState::Unenlisted {
        enlist_port(tx, &port).await?;
    }
    set_port_state(tx, port.id, to).await?;
    Ok(Some(crate::update::FieldChange {
        field: "state".into(),
        from: from.to_string(),
        to: to.to_string(),
    }))
}

/// Creates a send port inside `tx`; returns its id.
pub(crate) async fn send_port_create_in(
    tx: &mut Transaction<'_, Postgres>,
    spec: &SendPortSpec,
) -> Result<i64> {
    spec.validate()?;
    let filter = match &spec.filter {
        Some(text) => Some(compile_filter(tx, text).await?),
        None => None,
    };
    let host_id = host_id(tx, &spec.host).await?;
    crate::forward::check_link_addresses(tx, spec).await?;
    let enlisted = spec.initial_state != InitialState::Unenlisted;
    if enlisted && filter.is_some() {
        begin_routing_change(tx).await?;
    }
    let settings: serde_json::Value =
        serde_json::to_value(&spec.settings).map_err(|e| Error::Invalid(format!("--set: {e}")))?;
    let res = sqlx::query_scalar::<_, i64>(
        "INSERT INTO send_ports (name, host_id, address, dynamic, allow_address, filter_text, state,
             ordered, stop_on_failure, ordered_commit_batch, retry_count, retry_interval_s,
             retry_backoff, retry_max_interval_s, backup_address, backup_retry_count,
             backup_retry_interval_s, route_failed, tracking, solicit_response, settings, application,
             ordered_by, ordered_buckets)
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24)
         RETURNING id",
    )
    .bind(&spec.name)
    .bind(host_id)
    .bind(&spec.address)
    .bind(spec.address.is_none())
    .bind(&spec.allow_address)
    .bind(filter.as_ref().map(|f| f.to_string()))
    .bind(spec.initial_state.as_str())
    .bind(spec.ordered)
    .bind(spec.stop_on_failure)
    .bind(spec.ordered_commit_batch)
    .bind(spec.retry_count)
    .bind(spec.retry_interval_s)
    .bind(spec.retry_backoff.as_str())
    .bind(spec.retry_max_interval_s)
    .bind(&spec.backup_address)
    .bind(spec.backup_retry_count)
    .bind(spec.backup_retry_interval_s)
    .bind(spec.route_failed)
    .bind(spec.tracking.map(|t| t.as_str()))
    .bind(spec.solicit_response)
    .bind(settings)
    .bind(&spec.application)
    .bind(&spec.ordered_by)
    .bind(spec.buckets())
    .fetch_one(&mut **tx)
    .await;
    let id = res.map_err(|e| {
        crate::error::exists_or(
            e,
            "send port",
            &spec.name,
            "choose another name or delete it first",
        )
    })?;
    if spec.ordered {
        sqlx::query("INSERT INTO ordered_sequences (port_id) VALUES ($1)")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        // one lease per bucket (a port ordered as a whole has bucket 0 only)
        sqlx::query("INSERT INTO leases (port_id, bucket) SELECT $1, b FROM generate_series(0, $2 - 1) AS b")
            .bind(id)
            .bind(spec.buckets().unwrap_or(1))
            .execute(&mut **tx)
            .await?;
    }
    if enlisted {
        set_subscription(tx, "port", id, filter.as_ref()).await?;
    }
    Ok(id)
}

/// Creates a send port group inside `tx`; returns its id.
pub(crate) async fn group_create_tx(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    filter: Option<&str>,
    state: InitialState,
    application: &str,
) -> Result<i64> {
    validate_name("send port group", name)?;
    validate_application(application)?;
    let compiled = match filter {
        Some(text) => Some(compile_filter(tx, text).await?),
        None => None,
    };
    begin_routing_change(tx).await?;
    let res = sqlx::query_scalar::<_, i64>(
        "INSERT INTO send_port_groups (name, filter_text, state, application) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(name)
    .bind(compiled.as_ref().map(|f| f.to_string()))
    .bind(state.as_str())
    .bind(application)
    .fetch_one(&mut **tx)
    .await;
    let id = res
        .map_err(|e| crate::error::exists_or(e, "send port group", name, "choose another name"))?;
    if state != InitialState::Unenlisted {
        set_subscription(tx, "group", id, compiled.as_ref()).await?;
    }
    Ok(id)
}

pub(crate) async fn host_insert(conn: &mut sqlx::PgConnection, spec: &HostSpec) -> Result<()> {
    spec.validate()?;
    let res = sqlx::query(
        "INSERT INTO hosts (name, throttle_publish, throttle_inflight, tracking,
                            throttle_database_size)
         VALUES ($1, coalesce($2, 50000), coalesce($3, 1000), coalesce($4, 'failures'), $5)",
    )
    .bind(&spec.name)
    .bind(spec.throttle_publish)
    .bind(spec.throttle_inflight)
    .bind(spec.tracking.map(|t| t.as_str()))
    .bind(spec.throttle_database_size.and_then(|t| t.column()))
    .execute(&mut *conn)
    .await;
    res.map(|_| ()).map_err(|e| {
        crate::error::exists_or(e, "host", &spec.name, "`mbx host list` shows the hosts")
    })
}

pub(crate) async fn property_insert(
    conn: &mut sqlx::PgConnection,
    name: &str,
    ty: PropertyType,
) -> Result<()> {
    validate_property_name(name).map_err(|e| Error::Invalid(format!("NAME: {e}")))?;
    if name.starts_with("mbx.") {
        return Err(Error::Invalid(format!(
            "NAME: '{name}' is in the system namespace mbx; declare properties in your own namespace (example: Order.Amount)"
        )));
    }
    let res = sqlx::query("INSERT INTO properties (name, type) VALUES ($1, $2)")
        .bind(name)
        .bind(ty.as_str())
        .execute(&mut *conn)
        .await;
    res.map(|_| ()).map_err(|e| {
        crate::error::exists_or(e, "property", name, "delete it first to change its type")
    })
}

/// Deletes a send port inside `tx`. Refused, with the counts, while it has deliveries or
/// suspended items, unless `discard` (`mbx apply --discard-messages`): they are dropped
/// with it.
pub(crate) async fn send_port_delete_in(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    discard: bool,
) -> Result<PortWork> {
    begin_routing_change(tx).await?;
    let port = lock_port(tx, name).await?;
    let work = port_work(tx, port.id).await?;
    if work.waiting + work.in_flight + work.suspended > 0 {
        if !discard {
            return Err(Error::Refused(format!(
                "send port '{name}' has {} waiting, {} in-flight deliveries and {} suspended items; deliver or terminate them first",
                work.waiting, work.in_flight, work.suspended
            )));
        }
        for sql in [
            "DELETE FROM deliveries WHERE port_id = $1",
            "DELETE FROM suspended_items WHERE port_id = $1",
        ] {
            sqlx::query(sql).bind(port.id).execute(&mut **tx).await?;
        }
    }
    sqlx::query("DELETE FROM send_port_group_members WHERE port_id = $1")
        .bind(port.id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM send_ports WHERE id = $1")
        .bind(port.id)
        .execute(&mut **tx)
        .await?;
    Ok(work)
}

const GROUP_SELECT: &str = "
    SELECT g.id, g.name, g.filter_text AS filter, g.state,
           coalesce((SELECT array_agg(p.name ORDER BY p.name) FROM send_port_group_members m
                     JOIN send_ports p ON p.id = m.port_id WHERE m.group_id = g.id), '{}') AS members,
           g.application
      FROM send_port_groups g";

pub(crate) async fn fetch_port(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<SendPort> {
    sqlx::query_as::<_, SendPort>(&format!("{SEND_PORT_SELECT} WHERE p.name = $1"))
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::not_found("send port", name, "`mbx send-port list` shows the ports"))
}

pub(crate) async fn fetch_group(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<SendPortGroup> {
    sqlx::query_as::<_, SendPortGroup>(&format!("{GROUP_SELECT} WHERE g.name = $1"))
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| group_not_found(name))
}

fn group_not_found(name: &str) -> Error {
    Error::not_found(
        "send port group",
        name,
        "`mbx send-port-group list` shows the groups",
    )
}

pub(crate) async fn lock_group(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<(i64, GroupState, Option<String>)> {
    #[derive(sqlx::FromRow)]
    struct GroupRow {
        id: i64,
        state: GroupState,
        filter_text: Option<String>,
    }
    let row = sqlx::query_as::<_, GroupRow>(
        "SELECT id, state, filter_text FROM send_port_groups WHERE name = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| group_not_found(name))?;
    Ok((row.id, row.state, row.filter_text))
}

/// Locks a port that may be enlisted: lock order is always routing lock, then port row,
/// so a port that looks unenlisted gets the routing lock first.
async fn lock_port_for_enlist(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<PortRow> {
    let state: Option<PortState> =
        sqlx::query_scalar("SELECT state FROM send_ports WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?;
    let routing_locked = state == Some(PortState::Unenlisted);
    if routing_locked {
        begin_routing_change(tx).await?;
    }
    let port = lock_port(tx, name).await?;
    if port.state == PortState::Unenlisted && !routing_locked {
        // it was unenlisted concurrently: rare; the routing lock now comes second
        begin_routing_change(tx).await?;
    }
    Ok(port)
}

/// Turns an enlisting port's filter into its subscription (routing lock already held).
async fn enlist_port(tx: &mut Transaction<'_, Postgres>, port: &PortRow) -> Result<()> {
    let compiled = match &port.filter_text {
        Some(text) => Some(compile_filter(tx, text).await?),
        None => None,
    };
    set_subscription(tx, "port", port.id, compiled.as_ref()).await
}

async fn set_port_state(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    state: PortState,
) -> Result<()> {
    sqlx::query("UPDATE send_ports SET state = $2 WHERE id = $1")
        .bind(id)
        .bind(state)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn refuse_if_suspended(name: &str, state: PortState) -> Result<()> {
    if state == PortState::Suspended {
        return Err(Error::Refused(format!(
            "send port '{name}' is suspended after a failure; `mbx send-port resume {name}` retries the failed message, `mbx send-port skip {name}` suspends it and goes on"
        )));
    }
    Ok(())
}

fn port_change(object: &str, from: PortState, to: PortState) -> Change {
    change(object, from.as_str(), to.as_str())
}

fn change(object: &str, from: &str, to: &str) -> Change {
    Change {
        object: object.to_owned(),
        from: from.to_owned(),
        to: to.to_owned(),
        suspended: 0,
    }
}
