//! [`ConfigError`]: one line naming the key and what is wrong with it.

use std::fmt;
use std::path::PathBuf;

use crate::route::RouteError;
use crate::upstream::UpstreamError;

/// Why a config could not be read, parsed or accepted. Displays as one line naming the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not TOML.
    #[error("syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// The line, from 1.
        line: usize,
        /// The column in characters, from 1.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// A key is unknown, missing, of the wrong type or has a bad value.
    #[error("{key}: {message}")]
    Invalid {
        /// The key path, like `routes[0].timeout`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A limit, window, cooldown or timeout is zero.
    #[error("{key}: must be greater than zero")]
    Zero {
        /// The key path.
        key: String,
    },
    /// An upstream URL is not usable.
    #[error("{key}: {source}")]
    Upstream {
        /// The key path, like `routes[0].upstreams[1]`.
        key: String,
        /// What is wrong with the URL.
        source: UpstreamError,
    },
    /// A route prefix is malformed or taken twice.
    #[error("{key}: {source}")]
    Route {
        /// The key path, like `routes[2].prefix`.
        key: String,
        /// What is wrong with the prefix.
        source: RouteError,
    },
    /// A `key_env` names an environment variable that is not set.
    #[error("{key}: environment variable {var} is not set")]
    MissingEnv {
        /// The key path, like `auth.keys[0].key_env`.
        key: String,
        /// The variable.
        var: String,
    },
    /// The section is valid, but this build of the crate lacks the cargo feature it needs.
    #[error("{key}: needs tower-gateway's `{feature}` feature, which this build lacks")]
    MissingFeature {
        /// The key path, like `rate_limit_store`.
        key: String,
        /// The cargo feature to turn on, like `redis`.
        feature: &'static str,
    },
}

impl ConfigError {
    pub(super) fn invalid(key: impl Into<String>, message: impl fmt::Display) -> Self {
        Self::Invalid {
            key: key.into(),
            message: one_line(&message.to_string()),
        }
    }

    pub(super) fn zero(key: impl Into<String>) -> Self {
        Self::Zero { key: key.into() }
    }

    /// A parse error of `toml`, located in `text`.
    pub(super) fn from_toml(error: &toml::de::Error, text: &str) -> Self {
        let message = one_line(error.message());
        match error.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                Self::Syntax {
                    line: before.matches('\n').count() + 1,
                    column: before[line_start..].chars().count() + 1,
                    message,
                }
            }
            None => Self::invalid("config", message),
        }
    }
}

/// The name of the first flag that is set.
pub(super) fn first_set<'a>(flags: &[(&'a str, bool)]) -> Option<&'a str> {
    flags.iter().find(|(_, set)| *set).map(|(name, _)| *name)
}

pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
