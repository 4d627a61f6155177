//! Policy text -> validated [`Policy`], with errors naming file:line:column.

use std::path::Path;

use super::model::Policy;

/// A policy that could not be loaded; the message names file, line and column.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// Parses and validates policy text; `file` names it in errors.
pub fn parse_policy(_text: &str, _file: &str) -> Result<Policy, PolicyError> {
    unimplemented!("policy parsing")
}

/// Reads and parses a policy file.
pub fn load_policy_file(path: &Path) -> Result<Policy, PolicyError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        file: file.clone(),
        source,
    })?;
    parse_policy(&text, &file)
}
