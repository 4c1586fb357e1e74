//! Orchestration definitions as the MessageBox keeps them: one row per orchestration (its
//! application, host, state and current version) and one per version (the document, its
//! digest, and its activation compiled into normal-form filters). Checking a document
//! against the DSL and the mbx profile is `mbx-orchestration`'s, which this crate does not
//! depend on: the caller parses the definition and hands over an [`OrchestrationSpec`];
//! what needs the database — the host, the declared properties the activation filters
//! on, the versions stored before — is checked here, in the transaction that stores it,
//! so a refused definition changes nothing.
//!
//! A version's document never changes: an update with a new version makes it current
//! (it takes new activations), the same version with the same document (by digest) is
//! unchanged, and the same version with another document is refused naming both digests.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};

use crate::config::{self, Change, Declaration};
use crate::filter::{self, Filter};
use crate::states::OrchestrationState;
use crate::update::{FieldChange, Update};
use crate::{Error, MessageBox, PropertyType, Result};

/// One event filter of an activation (`schedule.on`), as the definition gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationFilter {
    /// Where the filter is in the document (a JSON pointer, `/schedule/on/one`), for errors.
    pub at: String,
    /// Promoted property (`type` already `mbx.MessageType`) → the exact value it must have.
    pub with: BTreeMap<String, serde_json::Value>,
    /// The promoted properties its correlation keys read.
    pub correlate: Vec<String>,
}

/// A definition to store: what `mbx orchestration create|update` and `mbx apply` hand
/// over once `mbx-orchestration` has accepted the document.
#[derive(Debug, Clone, PartialEq)]
pub struct OrchestrationSpec {
    /// `document.name`.
    pub name: String,
    /// `document.namespace`: the mbx application.
    pub application: String,
    /// `document.version` (semver).
    pub version: String,
    /// The whole document, as JSON.
    pub document: serde_json::Value,
    /// The host whose instances run it.
    pub host: String,
    /// One host instance at a time per bucket of convoy keys, each bucket under its own
    /// fenced lease (`--ordered`).
    pub ordered: bool,
    /// How many buckets an ordered orchestration's convoy keys hash into (`--buckets`,
    /// default [`config::DEFAULT_ORDERED_BUCKETS`]).
    pub buckets: Option<i32>,
    /// The activation's event filters, in the order written.
    pub activation: Vec<ActivationFilter>,
    /// The shapes of its correlated event filters (activation and listens): the sorted
    /// property names routing computes keys for.
    pub shapes: Vec<Vec<String>>,
}

impl OrchestrationSpec {
    /// An ordered orchestration's buckets (`None` when it is not ordered).
    pub fn ordered_buckets(&self) -> Option<i32> {
        self.ordered
            .then(|| self.buckets.unwrap_or(config::DEFAULT_ORDERED_BUCKETS))
    }

    fn validate(&self) -> Result<()> {
        config::validate_name("orchestration", &self.name)?;
        config::validate_application(&self.application)?;
        if self.version.is_empty() || self.version.len() > VERSION_MAX_BYTES {
            return Err(Error::Invalid(format!(
                "document.version: '{}' is not a version (example: 1.0.0)",
                self.version
            )));
        }
        match (self.ordered, self.buckets) {
            (false, Some(_)) => {
                return Err(Error::Invalid(
                    "--buckets: only an ordered orchestration has buckets; add --ordered".into(),
                ))
            }
            (true, Some(n)) if !(1..=1024).contains(&n) => {
                return Err(Error::Invalid(format!(
                    "--buckets: {n} is out of range 1..1024 (example: 64)"
                )))
            }
            _ => {}
        }
        if self.activation.is_empty() {
            return Err(Error::Invalid(
                "schedule.on: an orchestration needs at least one activating event filter".into(),
            ));
        }
        Ok(())
    }
}

/// Longest version text, in bytes (a semver with pre-release and build parts fits).
pub const VERSION_MAX_BYTES: usize = 128;

/// An activation filter as stored: its normal form (what routing evaluates), its exact
/// values as text, and the promoted properties its correlation reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub filter: Filter,
    #[serde(default)]
    pub with: BTreeMap<String, String>,
    pub correlate: Vec<String>,
}

impl Activation {
    /// Its shape: its `with` properties and its correlations, sorted (process.rs).
    pub fn shape(&self) -> Vec<String> {
        let mut names: Vec<String> = self.with.keys().chain(&self.correlate).cloned().collect();
        names.sort();
        names.dedup();
        names
    }
}

/// An orchestration as `list` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Orchestration {
    pub name: String,
    pub application: String,
    pub host: String,
    pub state: OrchestrationState,
    pub ordered: bool,
    pub buckets: Option<i32>,
    pub current_version: String,
    /// How many versions are stored.
    pub versions: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// One stored version.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OrchestrationVersion {
    pub version: String,
    /// SHA-256 (hex) of the document's canonical JSON.
    pub digest: String,
    /// Whether it takes new activations.
    pub current: bool,
    pub activation: Json<Vec<Activation>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// An orchestration with its versions (newest first) and its current document.
#[derive(Debug, Clone, Serialize)]
pub struct OrchestrationDetail {
    #[serde(flatten)]
    pub orchestration: Orchestration,
    pub versions: Vec<OrchestrationVersion>,
    pub document: serde_json::Value,
}

/// The SHA-256 (lowercase hex) of a document's canonical JSON: object keys sorted by
/// their bytes, no whitespace, strings and numbers as serde_json writes them. Independent
/// of the order the document was written in, so a re-apply of an exported definition
/// has the digest it was stored with.
pub fn digest(document: &serde_json::Value) -> String {
    use sha2::Digest as _;
    let mut canonical = String::new();
    canonical_json(document, &mut canonical);
    sha2::Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn canonical_json(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value as J;
    match value {
        J::Object(map) => {
            let mut entries: Vec<(&String, &J)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&J::String(key.clone()).to_string());
                out.push(':');
                canonical_json(v, out);
            }
            out.push('}');
        }
        J::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// An exact value as a literal of the filter language: a string written as a timestamp
/// when the property is declared one (a YAML document has no timestamp type).
fn literal(value: &serde_json::Value, declared: Option<PropertyType>) -> Option<String> {
    match value {
        serde_json::Value::String(s) if declared == Some(PropertyType::Timestamp) => {
            Some(format!("ts'{s}'"))
        }
        serde_json::Value::String(s) => Some(format!(
            "\"{}\"",
            s.replace('\\', "\\\\").replace('"', "\\\"")
        )),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Refuses a property that is neither declared nor the engine's.
fn require_declared(
    declared: &HashMap<String, PropertyType>,
    property: &str,
    at: &str,
) -> Result<()> {
    if declared.contains_key(property) || mbx_vocabulary::system::is_engine_property(property) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{at}: property '{property}' is not declared; an activation filters on declared properties: declare it first (example: mbx property create {property} --type string)"
    )))
}

/// Compiles each activation filter into the normal form, as a send port's filter is
/// compiled: `with` becomes `P == value and …`, type-checked against the declarations.
async fn compile_activation(
    tx: &mut Transaction<'_, Postgres>,
    spec: &OrchestrationSpec,
) -> Result<Vec<Activation>> {
    let rows = sqlx::query_as::<_, Declaration>("SELECT name, type FROM properties")
        .fetch_all(&mut **tx)
        .await?;
    let declared: HashMap<String, PropertyType> = config::declarations(rows)?;
    let mut out = Vec::with_capacity(spec.activation.len());
    for f in &spec.activation {
        if f.with.is_empty() {
            return Err(Error::Invalid(format!(
                "{}/with: an activating event filter names at least one property (example: `with: {{type: OrderRequest}}`)",
                f.at
            )));
        }
        let mut terms = Vec::with_capacity(f.with.len());
        for (property, value) in &f.with {
            let at = format!("{}/with/{property}", f.at);
            require_declared(&declared, property, &at)?;
            let lit = literal(value, declared.get(property).copied()).ok_or_else(|| {
                Error::Invalid(format!(
                    "{at}: a filter value is a string, a number or a boolean"
                ))
            })?;
            terms.push(format!("{property} == {lit}"));
        }
        for property in &f.correlate {
            require_declared(&declared, property, &format!("{}/correlate", f.at))?;
        }
        let text = terms.join(" and ");
        let filter = filter::compile(&text, &|name| declared.get(name).copied()).map_err(|e| {
            Error::Invalid(format!(
                "{}/with: {} (the activation as a filter: {text})",
                f.at, e.message
            ))
        })?;
        let with = f
            .with
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect();
        out.push(Activation {
            filter,
            with,
            correlate: f.correlate.clone(),
        });
    }
    Ok(out)
}

/// An orchestration's row, locked for a change.
#[derive(sqlx::FromRow)]
struct Locked {
    id: i64,
    application: String,
    host: String,
    state: OrchestrationState,
    current_version: String,
    ordered: bool,
    buckets: Option<i32>,
}

async fn lock(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<Locked> {
    sqlx::query_as::<_, Locked>(
        "SELECT o.id, o.application, h.name AS host, o.state, o.current_version, o.ordered, o.buckets
           FROM orchestrations o JOIN hosts h ON h.id = o.host_id
          WHERE o.name = $1 FOR UPDATE OF o",
    )
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| not_found(name))
}

fn not_found(name: &str) -> Error {
    Error::not_found(
        "orchestration",
        name,
        "`mbx orchestration list` shows them; create one with `mbx orchestration create -f FILE`",
    )
}

async fn insert_version(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    spec: &OrchestrationSpec,
    digest: &str,
    activation: &[Activation],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO orchestration_versions (orchestration_id, version, document, digest, activation, shapes)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(&spec.version)
    .bind(Json(&spec.document))
    .bind(digest)
    .bind(Json(activation))
    .bind(Json(&spec.shapes))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Creates an orchestration with its first version inside `tx`.
pub(crate) async fn orchestration_create_in(
    tx: &mut Transaction<'_, Postgres>,
    spec: &OrchestrationSpec,
) -> Result<()> {
    spec.validate()?;
    // activations are subscriptions: every host's routing table reloads
    crate::begin_routing_change(tx).await?;
    let host_id = config::host_id(tx, &spec.host).await?;
    let activation = compile_activation(tx, spec).await?;
    let res = sqlx::query_scalar::<_, i64>(
        "INSERT INTO orchestrations (name, application, host_id, ordered, buckets, current_version)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id",
    )
    .bind(&spec.name)
    .bind(&spec.application)
    .bind(host_id)
    .bind(spec.ordered)
    .bind(spec.ordered_buckets())
    .bind(&spec.version)
    .fetch_one(&mut **tx)
    .await;
    let id = res.map_err(|e| {
        crate::error::exists_or(
            e,
            "orchestration",
            &spec.name,
            "add a version with `mbx orchestration update -f FILE`",
        )
    })?;
    if let Some(buckets) = spec.ordered_buckets() {
        sqlx::query("INSERT INTO leases (orchestration_id, bucket) SELECT $1, b FROM generate_series(0, $2 - 1) AS b")
            .bind(id)
            .bind(buckets)
            .execute(&mut **tx)
            .await?;
    }
    insert_version(tx, id, spec, &digest(&spec.document), &activation).await
}

/// An update keeps the orchestration's ordering (its buckets hold its instances).
fn same_ordering(old: &Locked, spec: &OrchestrationSpec) -> Result<()> {
    if (old.ordered, old.buckets) != (spec.ordered, spec.ordered_buckets()) {
        let shown = |ordered: bool, buckets: Option<i32>| match (ordered, buckets) {
            (true, Some(n)) => format!("ordered with {n} buckets"),
            _ => "not ordered".to_owned(),
        };
        return Err(Error::Invalid(format!(
            "--ordered/--buckets: orchestration '{}' is {}, this update asks for {}: an orchestration's ordering does not change (give the same flags, or delete it and create it again)",
            spec.name,
            shown(old.ordered, old.buckets),
            shown(spec.ordered, spec.ordered_buckets())
        )));
    }
    Ok(())
}

/// Stores a definition over an existing orchestration inside `tx` (see the module
/// header); the host and application follow the spec. Returns the fields that changed.
pub(crate) async fn orchestration_update_in(
    tx: &mut Transaction<'_, Postgres>,
    spec: &OrchestrationSpec,
) -> Result<Update> {
    spec.validate()?;
    crate::begin_routing_change(tx).await?;
    let old = lock(tx, &spec.name).await?;
    same_ordering(&old, spec)?;
    let host_id = config::host_id(tx, &spec.host).await?;
    let digest = digest(&spec.document);
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT digest FROM orchestration_versions WHERE orchestration_id = $1 AND version = $2",
    )
    .bind(old.id)
    .bind(&spec.version)
    .fetch_optional(&mut **tx)
    .await?;
    match stored {
        Some(d) if d != digest => {
            return Err(Error::Invalid(format!(
                "document.version: orchestration '{}' version {} is stored with digest {d}, this document's is {digest}: a version's document does not change; give the new document a new version",
                spec.name, spec.version
            )))
        }
        Some(_) => {}
        None => {
            let activation = compile_activation(tx, spec).await?;
            insert_version(tx, old.id, spec, &digest, &activation).await?;
        }
    }
    let mut changes = Vec::new();
    let mut field = |name: &str, from: &str, to: &str| {
        if from != to {
            changes.push(FieldChange {
                field: name.into(),
                from: from.into(),
                to: to.into(),
            });
        }
    };
    field("version", &old.current_version, &spec.version);
    field("application", &old.application, &spec.application);
    field("host", &old.host, &spec.host);
    if !changes.is_empty() {
        sqlx::query(
            "UPDATE orchestrations
                SET current_version = $2, application = $3, host_id = $4, updated_at = now()
              WHERE id = $1",
        )
        .bind(old.id)
        .bind(&spec.version)
        .bind(&spec.application)
        .bind(host_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(Update {
        kind: "orchestration",
        object: spec.name.clone(),
        changes,
    })
}

/// Enables or disables an orchestration inside `tx`.
pub(crate) async fn orchestration_set_state_in(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    to: OrchestrationState,
) -> Result<Change> {
    crate::begin_routing_change(tx).await?;
    let old = lock(tx, name).await?;
    if old.state != to {
        sqlx::query("UPDATE orchestrations SET state = $2, updated_at = now() WHERE id = $1")
            .bind(old.id)
            .bind(to)
            .execute(&mut **tx)
            .await?;
    }
    Ok(Change {
        object: name.to_owned(),
        from: old.state.to_string(),
        to: to.to_string(),
        suspended: 0,
    })
}

/// Deletes an orchestration and its versions inside `tx`.
pub(crate) async fn orchestration_delete_in(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<()> {
    crate::begin_routing_change(tx).await?;
    let old = lock(tx, name).await?;
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orchestration_instances
          WHERE orchestration_id = $1 AND state NOT IN ('completed', 'cancelled')",
    )
    .bind(old.id)
    .fetch_one(&mut **tx)
    .await?;
    if live > 0 {
        return Err(Error::Refused(format!(
            "orchestration '{name}' has {live} instances that have not ended; disable it (`mbx orchestration disable {name}`) and wait for them to end, or cancel them (`mbx orchestration delete {name} --cancel-instances`)"
        )));
    }
    // ended instances go with it (their inboxes and subscriptions went when they ended)
    sqlx::query("DELETE FROM orchestration_instances WHERE orchestration_id = $1")
        .bind(old.id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM orchestrations WHERE id = $1")
        .bind(old.id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The columns of [`Orchestration`], over `orchestrations o` joined to `hosts h`.
const ORCHESTRATION_COLUMNS: &str = "o.name, o.application, h.name AS host, o.state, o.ordered,
        o.buckets, o.current_version,
        (SELECT count(*) FROM orchestration_versions v WHERE v.orchestration_id = o.id) AS versions,
        o.created_at, o.updated_at
   FROM orchestrations o JOIN hosts h ON h.id = o.host_id";

/// Every orchestration's current document by name (`mbx export`).
#[derive(sqlx::FromRow)]
pub(crate) struct CurrentDocument {
    pub(crate) name: String,
    pub(crate) host: String,
    pub(crate) application: String,
    pub(crate) state: OrchestrationState,
    pub(crate) ordered: bool,
    pub(crate) buckets: Option<i32>,
    pub(crate) document: Json<serde_json::Value>,
}

pub(crate) async fn current_documents(pool: &sqlx::PgPool) -> Result<Vec<CurrentDocument>> {
    Ok(sqlx::query_as::<_, CurrentDocument>(
        "SELECT o.name, h.name AS host, o.application, o.state, o.ordered, o.buckets, v.document
           FROM orchestrations o
           JOIN hosts h ON h.id = o.host_id
           JOIN orchestration_versions v
             ON v.orchestration_id = o.id AND v.version = o.current_version
          ORDER BY o.name",
    )
    .fetch_all(pool)
    .await?)
}

/// The orchestrations whose activation filters on or correlates by `property`
/// (a declaration they use is not deleted).
pub(crate) async fn property_users(
    tx: &mut Transaction<'_, Postgres>,
    property: &str,
) -> Result<Vec<String>> {
    #[derive(sqlx::FromRow)]
    struct Uses {
        name: String,
        activation: Json<Vec<Activation>>,
    }
    let rows = sqlx::query_as::<_, Uses>(
        "SELECT o.name, v.activation
           FROM orchestrations o JOIN orchestration_versions v ON v.orchestration_id = o.id
          ORDER BY o.name, v.version",
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut users: Vec<String> = rows
        .into_iter()
        .filter(|r| {
            r.activation.0.iter().any(|a| {
                a.filter.properties().any(|p| p == property)
                    || a.correlate.iter().any(|p| p == property)
            })
        })
        .map(|r| r.name)
        .collect();
    users.dedup();
    Ok(users)
}

impl MessageBox {
    /// Creates an orchestration from a checked definition (refused if one of that name
    /// exists: `orchestration_update` adds versions).
    pub async fn orchestration_create(&self, spec: &OrchestrationSpec) -> Result<Orchestration> {
        let mut tx = self.pool.begin().await?;
        orchestration_create_in(&mut tx, spec).await?;
        tx.commit().await?;
        self.orchestration_get(&spec.name).await
    }

    /// Stores a definition over an existing orchestration: a new version becomes current;
    /// the current version again changes nothing; an older one becomes current again.
    pub async fn orchestration_update(&self, spec: &OrchestrationSpec) -> Result<Update> {
        let mut tx = self.pool.begin().await?;
        let update = orchestration_update_in(&mut tx, spec).await?;
        tx.commit().await?;
        Ok(update)
    }

    pub async fn orchestration_list(&self) -> Result<Vec<Orchestration>> {
        Ok(sqlx::query_as::<_, Orchestration>(&format!(
            "SELECT {ORCHESTRATION_COLUMNS} ORDER BY o.name"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn orchestration_get(&self, name: &str) -> Result<Orchestration> {
        sqlx::query_as::<_, Orchestration>(&format!(
            "SELECT {ORCHESTRATION_COLUMNS} WHERE o.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found(name))
    }

    /// An orchestration with its versions (newest first) and current document.
    pub async fn orchestration_show(&self, name: &str) -> Result<OrchestrationDetail> {
        // one snapshot: the orchestration, its versions and its document agree
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let orchestration = sqlx::query_as::<_, Orchestration>(&format!(
            "SELECT {ORCHESTRATION_COLUMNS} WHERE o.name = $1"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found(name))?;
        let versions = sqlx::query_as::<_, OrchestrationVersion>(
            "SELECT v.version, v.digest, v.version = o.current_version AS current, v.activation,
                    v.created_at
               FROM orchestration_versions v JOIN orchestrations o ON o.id = v.orchestration_id
              WHERE o.name = $1
              ORDER BY v.created_at DESC, v.version DESC",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        let document: Json<serde_json::Value> = sqlx::query_scalar(
            "SELECT v.document
               FROM orchestration_versions v JOIN orchestrations o ON o.id = v.orchestration_id
              WHERE o.name = $1 AND v.version = o.current_version",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(OrchestrationDetail {
            orchestration,
            versions,
            document: document.0,
        })
    }

    /// Enable (take new activations) or disable an orchestration.
    pub async fn orchestration_set_state(
        &self,
        name: &str,
        to: OrchestrationState,
    ) -> Result<Change> {
        let mut tx = self.pool.begin().await?;
        let change = orchestration_set_state_in(&mut tx, name, to).await?;
        tx.commit().await?;
        Ok(change)
    }

    /// Deletes an orchestration and every version of it; with `cancel_instances`, its
    /// instances that have not ended are cancelled first, in the same transaction (what
    /// they were held becomes zombies).
    pub async fn orchestration_delete(&self, name: &str, cancel_instances: bool) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if cancel_instances {
            crate::process_admin::cancel_all_of(&mut tx, name).await?;
        }
        orchestration_delete_in(&mut tx, name).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_digest_does_not_depend_on_the_order_keys_were_written_in() {
        let a = json!({"document": {"name": "x", "version": "1.0.0"}, "do": [{"a": {"set": {"b": 1, "a": "é\""}}}]});
        let b: serde_json::Value = serde_json::from_str(
            r#"{"do":[{"a":{"set":{"a":"é\"","b":1}}}],"document":{"version":"1.0.0","name":"x"}}"#,
        )
        .unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_eq!(digest(&a).len(), 64);
        let mut text = String::new();
        canonical_json(&b, &mut text);
        assert_eq!(
            text,
            r#"{"do":[{"a":{"set":{"a":"é\"","b":1}}}],"document":{"name":"x","version":"1.0.0"}}"#
        );
        assert_ne!(digest(&a), digest(&json!({"document": {"name": "y"}})));
    }

    #[test]
    fn exact_values_become_literals_of_the_filter_language() {
        assert_eq!(
            literal(&json!("a \"b\" \\c"), None).unwrap(),
            r#""a \"b\" \\c""#
        );
        assert_eq!(
            literal(&json!(42), Some(PropertyType::Integer)).unwrap(),
            "42"
        );
        assert_eq!(literal(&json!(true), None).unwrap(), "true");
        assert_eq!(
            literal(
                &json!("2026-01-02T03:04:05Z"),
                Some(PropertyType::Timestamp)
            )
            .unwrap(),
            "ts'2026-01-02T03:04:05Z'"
        );
        assert_eq!(literal(&json!(null), None), None);
        // each literal reads back as the value it was made from
        let declared = |_: &str| None;
        let f = filter::compile(
            &format!("A.b == {}", literal(&json!("x\"y\\"), None).unwrap()),
            &declared,
        )
        .unwrap();
        assert_eq!(f.to_string(), r#"A.b == "x\"y\\""#);
    }
}
