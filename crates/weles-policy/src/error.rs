//! Policy errors name the file, the place in it (key path, entry, line) and what is wrong.

/// A policy that cannot be used. Loading never half-applies: on error nothing is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {location}: {message}")]
pub struct PolicyError {
    /// The policy file (as the caller named it).
    pub file: String,
    /// Key path (`ima.digests."/bin/sh"[1]`) or `line L, column C`.
    pub location: String,
    pub message: String,
}

impl PolicyError {
    pub fn new(file: &str, location: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError {
            file: file.to_string(),
            location: location.into(),
            message: message.into(),
        }
    }

    pub(crate) fn toml(file: &str, text: &str, e: &toml::de::Error) -> Self {
        let location = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
                format!("line {line}, column {column}")
            }
            None => "document".to_string(),
        };
        PolicyError::new(file, location, e.message().trim().to_string())
    }
}
