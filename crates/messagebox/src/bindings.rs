//! Bindings as code: the configuration of a group as one document — hosts, property
//! declarations, group links, receive ports and locations, send ports and send port
//! groups, orchestrations — that [`MessageBox::export_bindings`] writes and [`MessageBox::apply_bindings`] makes
//! the MessageBox match, in one transaction, returning the plan it carried out (a dry run
//! rolls it back). Maps keyed by name, so the order is stable and diffs are small. Secrets
//! appear only as the references they are stored as. The YAML form is the CLI's.
//!
//! An orchestration appears with its current definition; applying one needs the
//! definition checked by `mbx-orchestration` (which this crate does not depend on): the
//! caller passes each as an [`OrchestrationSpec`] beside the document.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};

use crate::config::{self, Backoff, HostSpec, InitialState, SendPortSpec, DEFAULT_APPLICATION};
use crate::orchestrations::{self, OrchestrationSpec};
use crate::receive::ReceiveLocationSpec;
use crate::states::{GroupState, OrchestrationState, PortState};
use crate::update::{self, diff, FieldChange, GroupSpec};
use crate::{begin_routing_change, Error, MessageBox, PropertyType, Result, TrackingLevel};

/// The format's version (`mbx_bindings: 1`).
pub const BINDINGS_VERSION: u32 = 1;

fn default_app() -> String {
    DEFAULT_APPLICATION.to_owned()
}
fn default_host() -> String {
    crate::DEFAULT_HOST.to_owned()
}
fn is_default_app(a: &String) -> bool {
    a == DEFAULT_APPLICATION
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// The whole document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bindings {
    pub mbx_bindings: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, HostBinding>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, PropertyType>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, LinkBinding>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub receive_ports: BTreeMap<String, ReceivePortBinding>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub receive_locations: BTreeMap<String, LocationBinding>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub send_ports: BTreeMap<String, SendPortBinding>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub send_port_groups: BTreeMap<String, GroupBinding>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub orchestrations: BTreeMap<String, OrchestrationBinding>,
}

/// An orchestration: its host, whether it takes new activations, and its current
/// definition (the Serverless Workflow document, as a mapping; its `document.namespace`
/// is the application).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestrationBinding {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// One host instance at a time per bucket of convoy keys (`--ordered`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ordered: bool,
    /// An ordered orchestration's buckets (`--buckets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<i32>,
    pub definition: serde_json::Value,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostBinding {
    pub throttle_publish: i64,
    pub throttle_inflight: i64,
    /// `group` (the default: the group's threshold), `off`, or a size (`50GB`).
    #[serde(
        default,
        skip_serializing_if = "crate::throttle::DatabaseSizeOverride::is_group"
    )]
    pub throttle_database_size: crate::throttle::DatabaseSizeOverride,
    pub tracking: TrackingLevel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkBinding {
    /// `env:NAME`, `file:PATH`, or a URL without a password.
    pub target_url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceivePortBinding {
    #[serde(default = "default_app", skip_serializing_if = "is_default_app")]
    pub application: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub two_way: bool,
    /// Receive and routing failures also publish an error report.
    #[serde(default, skip_serializing_if = "is_false")]
    pub route_failed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationBinding {
    #[serde(default = "default_app", skip_serializing_if = "is_default_app")]
    pub application: String,
    pub port: String,
    #[serde(default = "default_host")]
    pub host: String,
    pub address: String,
    #[serde(default = "default_pipeline")]
    pub pipeline: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub promote: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ordered: bool,
    #[serde(default = "default_max_size")]
    pub max_message_size: u64,
    #[serde(default)]
    pub enabled: bool,
}

fn default_pipeline() -> String {
    "passthru".to_owned()
}
fn default_max_size() -> u64 {
    crate::publish::MAX_MESSAGE_SIZE_DEFAULT_BYTES
}

/// A send port's state as a document gives it (suspended is the engine's, never desired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Unenlisted,
    #[default]
    Stopped,
    Started,
}

impl DesiredState {
    fn port_state(self) -> PortState {
        match self {
            DesiredState::Unenlisted => PortState::Unenlisted,
            DesiredState::Stopped => PortState::Stopped,
            DesiredState::Started => PortState::Started,
        }
    }

    fn group_state(self) -> GroupState {
        match self {
            DesiredState::Unenlisted => GroupState::Unenlisted,
            DesiredState::Stopped => GroupState::Stopped,
            DesiredState::Started => GroupState::Started,
        }
    }

    fn initial(self) -> InitialState {
        match self {
            DesiredState::Unenlisted => InitialState::Unenlisted,
            DesiredState::Stopped => InitialState::Stopped,
            DesiredState::Started => InitialState::Started,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendPortBinding {
    #[serde(default = "default_app", skip_serializing_if = "is_default_app")]
    pub application: String,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_address: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default)]
    pub state: DesiredState,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ordered: bool,
    /// Ordered per value of this promoted property.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_buckets: Option<i32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stop_on_failure: bool,
    #[serde(default = "default_commit_batch")]
    pub ordered_commit_batch: i32,
    #[serde(default = "default_retry_count")]
    pub retry_count: i32,
    #[serde(default = "default_interval")]
    pub retry_interval_s: i64,
    #[serde(default = "default_backoff")]
    pub retry_backoff: Backoff,
    #[serde(default = "default_max_interval")]
    pub retry_max_interval_s: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_address: Option<String>,
    #[serde(default = "default_retry_count")]
    pub backup_retry_count: i32,
    #[serde(default = "default_interval")]
    pub backup_retry_interval_s: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<TrackingLevel>,
    /// Publishes the endpoint's answer.
    #[serde(default, skip_serializing_if = "is_false")]
    pub solicit_response: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
}

fn default_commit_batch() -> i32 {
    32
}
fn default_retry_count() -> i32 {
    3
}
fn default_interval() -> i64 {
    300
}
fn default_max_interval() -> i64 {
    3600
}
fn default_backoff() -> Backoff {
    Backoff::Fixed
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupBinding {
    #[serde(default = "default_app", skip_serializing_if = "is_default_app")]
    pub application: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default)]
    pub state: DesiredState,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

impl SendPortBinding {
    /// The port as `create` takes it.
    pub fn spec(&self, name: &str) -> SendPortSpec {
        SendPortSpec {
            name: name.to_owned(),
            host: self.host.clone(),
            address: self.address.clone(),
            allow_address: self.allow_address.clone(),
            filter: self.filter.clone(),
            ordered: self.ordered || self.ordered_by.is_some(),
            ordered_by: self.ordered_by.clone(),
            ordered_buckets: self.ordered_buckets,
            stop_on_failure: self.stop_on_failure,
            ordered_commit_batch: self.ordered_commit_batch,
            retry_count: self.retry_count,
            retry_interval_s: self.retry_interval_s,
            retry_backoff: self.retry_backoff,
            retry_max_interval_s: self.retry_max_interval_s,
            backup_address: self.backup_address.clone(),
            backup_retry_count: self.backup_retry_count,
            backup_retry_interval_s: self.backup_retry_interval_s,
            route_failed: false,
            tracking: self.tracking,
            solicit_response: self.solicit_response,
            settings: self.settings.clone(),
            application: self.application.clone(),
            initial_state: self.state.initial(),
        }
    }

    fn from_port(p: &config::SendPort, tracking: Option<TrackingLevel>) -> Self {
        SendPortBinding {
            application: p.application.clone(),
            host: p.host.clone(),
            address: p.address.clone(),
            allow_address: p.allow_address.clone(),
            filter: p.filter.clone(),
            state: match p.state {
                PortState::Unenlisted => DesiredState::Unenlisted,
                PortState::Stopped => DesiredState::Stopped,
                // a port held after a failure is a started port
                PortState::Started | PortState::Suspended => DesiredState::Started,
            },
            ordered: p.ordered,
            ordered_by: p.ordered_by.clone(),
            ordered_buckets: p
                .ordered_buckets
                .filter(|&n| n != config::DEFAULT_ORDERED_BUCKETS),
            stop_on_failure: p.stop_on_failure,
            ordered_commit_batch: p.ordered_commit_batch,
            retry_count: p.retry_count,
            retry_interval_s: p.retry_interval_s,
            retry_backoff: p.retry_backoff,
            retry_max_interval_s: p.retry_max_interval_s,
            backup_address: p.backup_address.clone(),
            backup_retry_count: p.backup_retry_count,
            backup_retry_interval_s: p.backup_retry_interval_s,
            tracking,
            solicit_response: p.solicit_response,
            settings: p.settings.0.clone(),
        }
    }
}

impl LocationBinding {
    pub fn spec(&self, name: &str) -> ReceiveLocationSpec {
        ReceiveLocationSpec {
            name: name.to_owned(),
            port: self.port.clone(),
            host: self.host.clone(),
            address: self.address.clone(),
            pipeline: self.pipeline.clone(),
            promote: self.promote.clone(),
            message_type: self.message_type.clone(),
            settings: self.settings.clone(),
            ordered: self.ordered,
            max_message_size: self.max_message_size,
            application: self.application.clone(),
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Step {
    Create {
        kind: &'static str,
        name: String,
    },
    Update {
        kind: &'static str,
        name: String,
        changes: Vec<FieldChange>,
    },
    Delete {
        kind: &'static str,
        name: String,
        /// Messages deleted with it (`--discard-messages`).
        messages: i64,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Create { kind, name } => write!(f, "create {kind} '{name}'"),
            Step::Update {
                kind,
                name,
                changes,
            } => {
                write!(f, "update {kind} '{name}':")?;
                for c in changes {
                    write!(f, "\n    {}: {} → {}", c.field, c.from, c.to)?;
                }
                Ok(())
            }
            Step::Delete {
                kind,
                name,
                messages,
            } => {
                write!(f, "delete {kind} '{name}'")?;
                if *messages > 0 {
                    write!(f, " with its {messages} messages")?;
                }
                Ok(())
            }
        }
    }
}

/// How to apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Work out and return the plan, change nothing.
    pub dry_run: bool,
    /// Delete objects of the file's applications that the file does not have.
    pub prune: bool,
    /// A pruned send port may take its waiting and suspended messages with it.
    pub discard_messages: bool,
}

/// An error in the document: which object (its section and name) it is about, for the
/// caller to point at the line.
#[derive(Debug, thiserror::Error)]
#[error("{section}.{name}: {error}")]
pub struct ObjectError {
    pub section: &'static str,
    pub name: String,
    #[source]
    pub error: Error,
}

fn at<'a>(section: &'static str, name: &'a str) -> impl FnOnce(Error) -> ObjectError + 'a {
    move |error| ObjectError {
        section,
        name: name.to_owned(),
        error,
    }
}

/// What apply failed on: the document's object, or the MessageBox.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error(transparent)]
    MessageBox(#[from] Error),
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        ApplyError::MessageBox(e.into())
    }
}

impl MessageBox {
    /// The group's configuration as a document; with `application`, only that
    /// application's ports, locations and groups, and the hosts and links they use (every
    /// property declaration: filters in other groups may compare them).
    pub async fn export_bindings(&self, application: Option<&str>) -> Result<Bindings> {
        let mut doc = Bindings {
            mbx_bindings: BINDINGS_VERSION,
            ..Default::default()
        };
        for (name, ty) in self.property_list().await? {
            doc.properties.insert(name, ty);
        }
        self.export_receive(&mut doc, application).await?;
        self.export_send(&mut doc, application).await?;
        self.export_orchestrations(&mut doc, application).await?;
        self.export_hosts(&mut doc, application).await?;
        self.export_links(&mut doc, application).await?;
        Ok(doc)
    }

    /// The application's receive ports and locations into `doc`.
    async fn export_receive(&self, doc: &mut Bindings, application: Option<&str>) -> Result<()> {
        let mine = |app: &str| application.is_none_or(|a| a == app);
        for p in self.receive_port_list().await? {
            if mine(&p.application) {
                doc.receive_ports.insert(
                    p.name.clone(),
                    ReceivePortBinding {
                        application: p.application.clone(),
                        two_way: p.two_way,
                        route_failed: p.route_failed,
                    },
                );
            }
        }
        for l in self.receive_location_list().await? {
            if mine(&l.application) {
                doc.receive_locations.insert(
                    l.name.clone(),
                    LocationBinding {
                        application: l.application.clone(),
                        port: l.port.clone(),
                        host: l.host.clone(),
                        address: l.address.clone(),
                        pipeline: l.pipeline.clone(),
                        promote: l.promote.0.clone(),
                        message_type: l.message_type.clone(),
                        settings: l.settings.0.clone(),
                        ordered: l.ordered,
                        max_message_size: u64::try_from(l.max_message_size).unwrap_or(0),
                        enabled: l.enabled,
                    },
                );
            }
        }
        Ok(())
    }

    /// The application's send ports and send port groups into `doc`.
    async fn export_send(&self, doc: &mut Bindings, application: Option<&str>) -> Result<()> {
        let mine = |app: &str| application.is_none_or(|a| a == app);
        // a port's own tracking level (the list shows the effective one)
        #[derive(sqlx::FromRow)]
        struct OwnTracking {
            name: String,
            tracking: Option<TrackingLevel>,
        }
        let own_tracking: BTreeMap<String, Option<TrackingLevel>> =
            sqlx::query_as::<_, OwnTracking>("SELECT name, tracking FROM send_ports")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| (r.name, r.tracking))
                .collect();
        for p in self.send_port_list().await? {
            if mine(&p.application) {
                let tracking = own_tracking.get(&p.name).copied().flatten();
                doc.send_ports
                    .insert(p.name.clone(), SendPortBinding::from_port(&p, tracking));
            }
        }
        for g in self.group_list().await? {
            if mine(&g.application) {
                doc.send_port_groups.insert(
                    g.name.clone(),
                    GroupBinding {
                        application: g.application.clone(),
                        filter: g.filter.clone(),
                        state: match g.state {
                            GroupState::Unenlisted => DesiredState::Unenlisted,
                            GroupState::Stopped => DesiredState::Stopped,
                            GroupState::Started => DesiredState::Started,
                        },
                        members: g.members.clone(),
                    },
                );
            }
        }
        Ok(())
    }

    /// The application's orchestrations, each with its current definition, into `doc`.
    async fn export_orchestrations(
        &self,
        doc: &mut Bindings,
        application: Option<&str>,
    ) -> Result<()> {
        for o in orchestrations::current_documents(&self.pool).await? {
            if application.is_none_or(|a| a == o.application) {
                doc.orchestrations.insert(
                    o.name,
                    OrchestrationBinding {
                        host: o.host,
                        enabled: o.state == OrchestrationState::Enabled,
                        ordered: o.ordered,
                        buckets: o.buckets,
                        definition: o.document.0,
                    },
                );
            }
        }
        Ok(())
    }

    /// Into `doc`, every host (or, for one application, the hosts its ports,
    /// locations and orchestrations run on).
    async fn export_hosts(&self, doc: &mut Bindings, application: Option<&str>) -> Result<()> {
        let used_hosts: BTreeSet<String> = doc
            .send_ports
            .values()
            .map(|p| p.host.clone())
            .chain(doc.receive_locations.values().map(|l| l.host.clone()))
            .chain(doc.orchestrations.values().map(|o| o.host.clone()))
            .collect();
        for h in self.host_list().await? {
            if application.is_none() || used_hosts.contains(&h.name) {
                doc.hosts.insert(
                    h.name.clone(),
                    HostBinding {
                        throttle_publish: h.throttle_publish,
                        throttle_inflight: h.throttle_inflight,
                        throttle_database_size: h.throttle_database_size,
                        tracking: h.tracking.parse().map_err(Error::Corrupt)?,
                    },
                );
            }
        }
        Ok(())
    }

    /// Into `doc`, every group link (or, for one application, the links its send ports
    /// forward through).
    async fn export_links(&self, doc: &mut Bindings, application: Option<&str>) -> Result<()> {
        let used_links: BTreeSet<String> = doc
            .send_ports
            .values()
            .flat_map(|p| [p.address.as_deref(), p.backup_address.as_deref()])
            .flatten()
            .filter_map(|a| mbx_vocabulary::GroupAddress::parse(a).ok())
            .map(|a| a.link)
            .collect();
        for l in self.link_list().await? {
            if application.is_none() || used_links.contains(&l.name) {
                doc.links.insert(
                    l.name.clone(),
                    LinkBinding {
                        target_url: l.database_url.clone(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Makes the MessageBox match `doc` in one transaction (see the module header);
    /// returns the plan. New links are checked (connected to) before the transaction.
    /// `orchestrations` are the document's orchestrations, checked, one per entry.
    pub async fn apply_bindings(
        &self,
        doc: &Bindings,
        orchestrations: &[OrchestrationSpec],
        options: ApplyOptions,
    ) -> std::result::Result<Vec<Step>, ApplyError> {
        if doc.mbx_bindings != BINDINGS_VERSION {
            return Err(Error::Invalid(format!(
                "mbx_bindings: version {} is not known (this mbx reads {BINDINGS_VERSION})",
                doc.mbx_bindings
            ))
            .into());
        }
        let existing_links: BTreeMap<String, String> = self
            .link_list()
            .await?
            .into_iter()
            .map(|l| (l.name, l.database_url))
            .collect();
        let mut checked_links = BTreeMap::new();
        for (name, link) in &doc.links {
            if existing_links.get(name) != Some(&link.target_url) {
                let target = self
                    .link_check(&link.target_url)
                    .await
                    .map_err(at("links", name))?;
                checked_links.insert(name.clone(), target);
            }
        }
        let mut plan = Vec::new();
        let mut tx = self.pool.begin().await?;
        // every change below may touch routing: the routing lock first, once
        begin_routing_change(&mut tx).await?;
        apply_hosts(&mut tx, doc, &mut plan).await?;
        apply_properties(&mut tx, doc, &mut plan).await?;
        apply_links(&mut tx, doc, &existing_links, &checked_links, &mut plan).await?;
        apply_receive_ports(&mut tx, doc, &mut plan).await?;
        apply_receive_locations(&mut tx, doc, &mut plan).await?;
        apply_send_ports(&mut tx, doc, &mut plan).await?;
        apply_send_port_groups(&mut tx, doc, &mut plan).await?;
        apply_orchestrations(&mut tx, doc, orchestrations, &mut plan).await?;
        if options.prune {
            // the applications of everything in the file, orchestrations' included
            let apps: Vec<String> = file_applications(doc)
                .into_iter()
                .chain(orchestrations.iter().map(|s| s.application.clone()))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            prune(&mut tx, doc, &apps, options, &mut plan).await?;
            prune_orchestrations(&mut tx, doc, &apps, &mut plan).await?;
        }
        if options.dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(plan)
    }
}

/// Creates the file's new hosts and updates the others.
async fn apply_hosts(
    tx: &mut Transaction<'_, Postgres>,
    doc: &Bindings,
    plan: &mut Vec<Step>,
) -> std::result::Result<(), ApplyError> {
    let hosts: BTreeSet<String> = sqlx::query_scalar("SELECT name FROM hosts")
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
    for (name, h) in &doc.hosts {
        let spec = HostSpec {
            name: name.clone(),
            throttle_publish: Some(h.throttle_publish),
            throttle_inflight: Some(h.throttle_inflight),
            throttle_database_size: Some(h.throttle_database_size),
            tracking: Some(h.tracking),
        };
        if hosts.contains(name) {
            let u = update::host_update_in(tx, name, |s| {
                *s = spec;
                Ok(())
            })
            .await
            .map_err(at("hosts", name))?;
            push_update(plan, "host", name, u.changes);
        } else {
            config::host_insert(tx, &spec)
                .await
                .map_err(at("hosts", name))?;
            plan.push(Step::Create {
                kind: "host",
                name: name.clone(),
            });
        }
    }
    Ok(())
}

/// Declares the file's new properties; a declared one keeps its type.
async fn apply_properties(
    tx: &mut Transaction<'_, Postgres>,
    doc: &Bindings,
    plan: &mut Vec<Step>,
) -> std::result::Result<(), ApplyError> {
    let declared: BTreeMap<String, String> = sqlx::query_as("SELECT name, type FROM properties")
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
    for (name, ty) in &doc.properties {
        match declared.get(name) {
            Some(t) if t == ty.as_str() => {}
            Some(t) => {
                return Err(at("properties", name)(Error::Refused(format!(
                    "declared as {t} in this group, the file says {ty}; a declaration's type does not change in place (delete it with `mbx property delete {name}` once no filter uses it)"
                )))
                .into())
            }
            None => {
                config::property_insert(tx, name, *ty)
                    .await
                    .map_err(at("properties", name))?;
                plan.push(Step::Create {
                    kind: "property",
                    name: name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Creates or re-points the group links whose URL is new (`checked_links`: those
/// connected to before the transaction, with the group each reaches).
async fn apply_links(
    tx: &mut Transaction<'_, Postgres>,
    doc: &Bindings,
    existing_links: &BTreeMap<String, String>,
    checked_links: &BTreeMap<String, (uuid::Uuid, String)>,
    plan: &mut Vec<Step>,
) -> std::result::Result<(), ApplyError> {
    for (name, link) in &doc.links {
        let Some((group_id, group_name)) = checked_links.get(name) else {
            continue;
        };
        // a link its ports forward through may get a new URL, not another group: what
        // was accepted there is deduplicated there only
        if existing_links.contains_key(name) {
            let stored: Option<uuid::Uuid> =
                sqlx::query_scalar("SELECT target_group_id FROM group_links WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut **tx)
                    .await?;
            let users = crate::forward::link_users(tx, name).await?;
            if stored.is_some_and(|g| g != *group_id) && !users.is_empty() {
                return Err(at("links", name)(Error::Refused(format!(
                    "the new URL reaches another group ('{group_name}') while send port(s) {} forward through this link; point them elsewhere first, or add a new link",
                    users.join(", ")
                )))
                .into());
            }
        }
        crate::forward::link_upsert(tx, name, &link.target_url, *group_id, group_name)
            .await
            .map_err(at("links", name))?;
        if existing_links.contains_key(name) {
            plan.push(Step::Update {
                kind: "group link",
                name: name.clone(),
                changes: vec![FieldChange {
                    field: "target_url".into(),
                    from: existing_links[name].clone(),
                    to: link.target_url.clone(),
                }],
            });
        } else {
            plan.push(Step::Create {
                kind: "group link",
                name: name.clone(),
            });
        }
    }
    Ok(())
}

fn push_update(plan: &mut Vec<Step>, kind: &'static str, name: &str, changes: Vec<FieldChange>) {
    if !changes.is_empty() {
        plan.push(Step::Update {
            kind,
            name: name.to_owned(),
            changes,
        });
    }
}

/// Creates the file's new receive ports and updates the others.
async fn apply_receive_ports(
    tx: &mut Transaction<'_, Postgres>,
    doc: &Bindings,
    plan: &mut Vec<Step>,
) -> std::result::Result<(), ApplyError> {
    #[derive(sqlx::FromRow)]
    struct ReceivePortRow {
        name: String,
        two_way: bool,
        application: String,
        route_failed: bool,
    }
    let ports: BTreeMap<String, (bool, String, bool)> = sqlx::query_as::<_, ReceivePortRow>(
        "SELECT name, two_way, application, route_failed FROM receive_ports",
    )
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|r| (r.name, (r.two_way, r.application, r.route_failed)))
    .collect();
    for (name, p) in &doc.receive_ports {
        match ports.get(name) {
            None => {
                crate::receive::receive_port_insert(
                    tx,
                    name,
                    p.two_way,
                    p.route_failed,
                    &p.application,
                )
                .await
                .map_err(at("receive_ports", name))?;
                plan.push(Step::Create {
                    kind: "receive port",
                    name: name.clone(),
                });
            }
            Some((two_way, application, route_failed)) => {
                let old = ReceivePortBinding {
                    application: application.clone(),
                    two_way: *two_way,
                    route_failed: *route_failed,
                };
                let changes = diff(&old, p);
                if !changes.is_empty() {
                    crate::config::validate_application(&p.application)
                        .map_err(at("receive_ports", name))?;
                    sqlx::query(
                        "UPDATE receive_ports SET two_way = $2, application = $3, route_failed = $4
                          WHERE name = $1",
                    )
                    .bind(name)
                    .bind(p.two_way)
                    .bind(&p.application)
                    .bind(p.route_failed)
                    .execute(&mut **tx)
                    .await?;
                    push_update(plan, "receive port", name, changes);
                }
            }
        }
    }
    Ok(())
}

/// Creates the file's new receive locations and updates the others, enabled or not as
/// the file says.
async fn apply_receive_locations(
    tx: &mut Transaction<'_, Postgres>,
    doc: &Bindings,
    plan: &mut Vec<Step>,
) -> std::result::Result<(), ApplyError> {
    let locations: BTreeMap<String, bool> =
        sqlx::query_as("SELECT name, enabled FROM receive_locations")
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
    for (name, l) in &doc.receive_locations {
        let spec = l.spec(name);
        let mut changes = match locations.get(name) {
            None => {
                crate::receive::receive_location_create_in(tx, &spec)
                    .await
                    .map_err(at("receive_locations", name))?;
                plan.push(Step::Create {
                    kind: "receive location",
                    name: name.clone(),
                });
                Vec::new()
            }
            Some(_) => {
                update::receive_location_update_in(tx, name, |s| {
                    *s = spec;
                    Ok(())
                })
                .await
                .map_err(at("receive_locations", name))?
                .changes
            }
        };
        let was = locations.get(name).copied().unwrap_or(false);
        if was != l.enabled {
            sqlx::query("UPDATE receive_locations SET enabled = $2 WHERE name = $1")
                .bind(name)
                .bind(l.enabled)
                .execute(&mut **tx)
                .await?;
            if locations.contains_key(name) {
                changes.push(FieldChange {
                    field: "enabled".into(),
                    from: was.to_string(),
                    to: l.enabled.to_string(),
                });
            }
        }
        push_update(plan, "receive location", name, changes);
    }
    Ok(())
}

/// Creates the file's new send ports and updates the others, in the state the file says.
async fn apply_send_ports(
    tx: &mut Transaction<'_, Postgres>,
    doc: &Bindings,
    plan: &mut Vec<Step>,
) -> std::result::Result<(), ApplyError> {
    #[derive(sqlx::FromRow)]
    struct PortStateRow {
        name: String,
        state: PortState,
    }
    let ports: BTreeMap<String, PortState> =
        sqlx::query_as::<_, PortStateRow>("SELECT name, state FROM send_ports")
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|r| (r.name, r.state))
            .collect();
    for (name, p) in &doc.send_ports {
        let spec = p.spec(name);
        match ports.get(name) {
            None => {
                config::send_port_create_in(tx, &spec)
                    .await
                    .map_err(at("send_ports", name))?;
                plan.push(Step::Create {
                    kind: "send port",
                    name: name.clone(),
                });
            }
            Some(state) => {
                let mut changes = update::send_port_update_in(tx, name, |s| {
                    *s = spec;
                    Ok(())
                })
                .await
                .map_err(at("send_ports", name))?
                .changes;
                let _ = state;
                if let Some(c) = config::port_set_state_in(tx, name, p.state.port_state())
                    .await
                    .map_err(at("send_ports", name))?
                {
                    changes.push(c);
                }
                push_update(plan, "send port", name, changes);
            }
        }
    }
    Ok(())
}

/// Creates the file's new send port groups and updates the others: filter, application,
/// state and members.
async fn apply_send_port_groups(
    tx: &mut Transaction<'_, Postgres>,
    doc: &Bindings,
    plan: &mut Vec<Step>,
) -> std::result::Result<(), ApplyError> {
    #[derive(sqlx::FromRow)]
    struct GroupStateRow {
        name: String,
        state: GroupState,
    }
    let groups: BTreeMap<String, GroupState> =
        sqlx::query_as::<_, GroupStateRow>("SELECT name, state FROM send_port_groups")
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|r| (r.name, r.state))
            .collect();
    for (name, g) in &doc.send_port_groups {
        let mut changes = match groups.get(name) {
            None => {
                config::group_create_tx(
                    tx,
                    name,
                    g.filter.as_deref(),
                    g.state.initial(),
                    &g.application,
                )
                .await
                .map_err(at("send_port_groups", name))?;
                plan.push(Step::Create {
                    kind: "send port group",
                    name: name.clone(),
                });
                Vec::new()
            }
            Some(state) => {
                let wanted = GroupSpec {
                    name: name.clone(),
                    filter: g.filter.clone(),
                    application: g.application.clone(),
                };
                let mut changes = update::group_update_in(tx, name, |s| {
                    *s = wanted;
                    Ok(())
                })
                .await
                .map_err(at("send_port_groups", name))?
                .changes;
                let (from, to) = config::group_set_state_in(tx, name, g.state.group_state())
                    .await
                    .map_err(at("send_port_groups", name))?;
                if from != *state || from != to {
                    changes.push(FieldChange {
                        field: "state".into(),
                        from: from.to_string(),
                        to: to.to_string(),
                    });
                }
                changes
            }
        };
        if let Some(c) = config::group_set_members_in(tx, name, &g.members)
            .await
            .map_err(at("send_port_groups", name))?
        {
            if groups.contains_key(name) {
                changes.push(c);
            }
        }
        push_update(plan, "send port group", name, changes);
    }
    Ok(())
}

/// Creates the file's new orchestrations and stores the definitions of the others (a new
/// version becomes current), enabled or not as the file says.
async fn apply_orchestrations(
    tx: &mut Transaction<'_, Postgres>,
    doc: &Bindings,
    specs: &[OrchestrationSpec],
    plan: &mut Vec<Step>,
) -> std::result::Result<(), ApplyError> {
    let existing: BTreeSet<String> = sqlx::query_scalar("SELECT name FROM orchestrations")
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
    for (name, o) in &doc.orchestrations {
        let spec = specs
            .iter()
            .find(|s| s.name == *name && s.host == o.host && s.document == o.definition)
            .ok_or_else(|| {
                at("orchestrations", name)(Error::Invalid(
                    "its definition was not checked (no specification of it was given with the document)".into(),
                ))
            })?;
        let mut changes = if existing.contains(name) {
            orchestrations::orchestration_update_in(tx, spec)
                .await
                .map_err(at("orchestrations", name))?
                .changes
        } else {
            orchestrations::orchestration_create_in(tx, spec)
                .await
                .map_err(at("orchestrations", name))?;
            plan.push(Step::Create {
                kind: "orchestration",
                name: name.clone(),
            });
            Vec::new()
        };
        let state = if o.enabled {
            OrchestrationState::Enabled
        } else {
            OrchestrationState::Disabled
        };
        let c = orchestrations::orchestration_set_state_in(tx, name, state)
            .await
            .map_err(at("orchestrations", name))?;
        if c.from != c.to && existing.contains(name) {
            changes.push(FieldChange {
                field: "state".into(),
                from: c.from,
                to: c.to,
            });
        }
        push_update(plan, "orchestration", name, changes);
    }
    Ok(())
}

/// Deletes the orchestrations of the file's applications that the file does not have.
async fn prune_orchestrations(
    tx: &mut Transaction<'_, Postgres>,
    doc: &Bindings,
    apps: &[String],
    plan: &mut Vec<Step>,
) -> std::result::Result<(), ApplyError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM orchestrations WHERE application = ANY($1) ORDER BY name",
    )
    .bind(apps)
    .fetch_all(&mut **tx)
    .await?;
    for name in names {
        if !doc.orchestrations.contains_key(&name) {
            orchestrations::orchestration_delete_in(tx, &name)
                .await
                .map_err(at("orchestrations", &name))?;
            plan.push(Step::Delete {
                kind: "orchestration",
                name,
                messages: 0,
            });
        }
    }
    Ok(())
}

/// The applications of the file's ports, locations and groups.
fn file_applications(doc: &Bindings) -> BTreeSet<String> {
    doc.receive_ports
        .values()
        .map(|p| p.application.clone())
        .chain(
            doc.receive_locations
                .values()
                .map(|l| l.application.clone()),
        )
        .chain(doc.send_ports.values().map(|p| p.application.clone()))
        .chain(doc.send_port_groups.values().map(|g| g.application.clone()))
        .collect()
}

/// Deletes what the file's applications (`apps`) have here and the file does not.
async fn prune(
    tx: &mut Transaction<'_, Postgres>,
    doc: &Bindings,
    apps: &[String],
    options: ApplyOptions,
    plan: &mut Vec<Step>,
) -> std::result::Result<(), ApplyError> {
    let gone =
        |table: &str| format!("SELECT name FROM {table} WHERE application = ANY($1) ORDER BY name");
    let names = |rows: Vec<String>, keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        rows.into_iter().filter(|n| !keep(n)).collect()
    };
    let groups: Vec<String> = sqlx::query_scalar(&gone("send_port_groups"))
        .bind(apps)
        .fetch_all(&mut **tx)
        .await?;
    for name in names(groups, &|n| doc.send_port_groups.contains_key(n)) {
        config::group_delete_in(tx, &name, options.discard_messages)
            .await
            .map_err(|e| match e {
                Error::Refused(why) => Error::Refused(format!(
                    "{why}; or apply with --discard-messages to delete them with the group"
                )),
                other => other,
            })?;
        plan.push(Step::Delete {
            kind: "send port group",
            name,
            messages: 0,
        });
    }
    let ports: Vec<String> = sqlx::query_scalar(&gone("send_ports"))
        .bind(apps)
        .fetch_all(&mut **tx)
        .await?;
    for name in names(ports, &|n| doc.send_ports.contains_key(n)) {
        let work = config::send_port_delete_in(tx, &name, options.discard_messages)
            .await
            .map_err(|e| match e {
                Error::Refused(why) => Error::Refused(format!(
                    "{why}; or apply with --discard-messages to delete them with the port"
                )),
                other => other,
            })
            .map_err(at("send_ports", &name))?;
        plan.push(Step::Delete {
            kind: "send port",
            name,
            messages: work.waiting + work.in_flight + work.suspended,
        });
    }
    let locations: Vec<String> = sqlx::query_scalar(&gone("receive_locations"))
        .bind(apps)
        .fetch_all(&mut **tx)
        .await?;
    for name in names(locations, &|n| doc.receive_locations.contains_key(n)) {
        sqlx::query("DELETE FROM receive_locations WHERE name = $1")
            .bind(&name)
            .execute(&mut **tx)
            .await?;
        plan.push(Step::Delete {
            kind: "receive location",
            name,
            messages: 0,
        });
    }
    let receive_ports: Vec<String> = sqlx::query_scalar(&gone("receive_ports"))
        .bind(apps)
        .fetch_all(&mut **tx)
        .await?;
    for name in names(receive_ports, &|n| doc.receive_ports.contains_key(n)) {
        crate::receive::receive_port_delete_in(tx, &name)
            .await
            .map_err(at("receive_ports", &name))?;
        plan.push(Step::Delete {
            kind: "receive port",
            name,
            messages: 0,
        });
    }
    Ok(())
}
