//! The DSL's own JSON schema (Serverless Workflow 1.0.3, `schema/workflow-1.0.3.yaml`,
//! vendored unchanged): every definition must be valid against it before the profile is
//! checked, so what mbx stores stays a portable Serverless Workflow document.

use std::sync::OnceLock;

use serde_json::Value;

/// The schema's text, as published by the CNCF project.
const SCHEMA: &str = include_str!("../schema/workflow-1.0.3.yaml");

fn validator() -> &'static Result<jsonschema::Validator, String> {
    static VALIDATOR: OnceLock<Result<jsonschema::Validator, String>> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value = yaml_serde::from_str(SCHEMA).map_err(|e| e.to_string())?;
        jsonschema::validator_for(&schema).map_err(|e| e.to_string())
    })
}

/// Where a document breaks the DSL's schema: its JSON pointer and the schema's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message} (the Serverless Workflow 1.0 schema)")]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

/// Checks `document` against the DSL's schema; the first error, deepest first.
pub fn check(document: &Value) -> Result<(), SchemaError> {
    let validator = validator().as_ref().map_err(|e| SchemaError {
        path: "/".to_owned(),
        message: format!("the vendored schema does not load: {e}"),
    })?;
    let deepest = validator
        .iter_errors(document)
        .max_by_key(|e| e.instance_path().to_string().matches('/').count());
    match deepest {
        None => Ok(()),
        Some(e) => {
            let path = e.instance_path().to_string();
            let mut message = e.to_string().replace('\n', " ");
            if message.len() > 240 {
                let cut = (0..=240)
                    .rev()
                    .find(|i| message.is_char_boundary(*i))
                    .unwrap_or(0);
                message.truncate(cut);
                message.push('…');
            }
            Err(SchemaError {
                path: if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                },
                message,
            })
        }
    }
}
