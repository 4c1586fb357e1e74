//! Orchestrations: durable business processes written as CNCF Serverless Workflow 1.0
//! documents in the mbx profile (docs/orchestrations.md).
//!
//! - `schema` — the DSL's JSON schema, vendored: a definition is valid against it first.
//! - `profile` — the mbx profile: what of the DSL mbx runs, building the typed model.
//! - `model` — the typed definition the runtime reads.
//! - `expr` — runtime expressions: jq through jaq, deterministic (no clock, no env).

pub mod expr;
pub mod model;
pub mod profile;
pub mod runtime;
pub mod schema;

pub use model::Definition;

/// Why a definition was refused: each names where (a JSON pointer) and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("the definition is not YAML: {0}")]
    Yaml(String),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error("{0} (the mbx profile: docs/orchestrations.md)")]
    Profile(#[from] profile::ProfileError),
}

impl Definition {
    /// Parses a definition written in YAML (or JSON): the DSL's schema, then the profile.
    pub fn parse(text: &str) -> Result<Definition, DefinitionError> {
        let document: serde_json::Value =
            yaml_serde::from_str(text).map_err(|e| DefinitionError::Yaml(e.to_string()))?;
        Definition::from_document(&document)
    }

    /// [`Definition::parse`] for a document already read into JSON (`mbx apply`'s).
    pub fn from_document(document: &serde_json::Value) -> Result<Definition, DefinitionError> {
        schema::check(document)?;
        Ok(profile::check(document)?)
    }
}
