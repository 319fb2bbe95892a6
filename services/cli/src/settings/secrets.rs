//! Secrets in the settings: every setting that takes one (signing secrets, gRPC bearer tokens,
//! the token-sealing key, a database URL with its password) has a `*_file` twin (key, flag
//! and `TERRA_INGEST_*` variable) naming a file to read it from (a mounted Kubernetes secret;
//! surrounding whitespace, such as the trailing newline, removed); one layer giving the value
//! and the file is an error, a higher layer giving either replaces both. Values are held in
//! `SecretString`s and the Kafka table only shows its names, so no `Debug` of a settings type
//! prints a secret.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use secrecy::SecretString;
use serde::Deserialize;

use super::names;

/// One secret from its value or from its file, the settings `value_key` and `file_key`
/// (`sql.url`, `sql.url_file`). Both set means one layer gave both: an error naming them.
pub(crate) fn value_or_file(
    value: Option<&SecretString>,
    file: Option<&Path>,
    value_key: &str,
    file_key: &str,
) -> anyhow::Result<Option<SecretString>> {
    match (value, file) {
        (Some(_), Some(_)) => bail!(
            "setting {} or {}: give one, not both",
            names::setting(value_key),
            names::setting(file_key)
        ),
        (Some(value), None) => Ok(Some(value.clone())),
        (None, Some(path)) => {
            let text =
                read_text(path).with_context(|| format!("setting {}", names::setting(file_key)))?;
            let text = text.trim();
            if text.is_empty() {
                bail!(
                    "setting {}: {} is empty",
                    names::setting(file_key),
                    path.display()
                );
            }
            Ok(Some(SecretString::from(text)))
        }
        (None, None) => Ok(None),
    }
}

/// Every non-blank line of a secrets file, trimmed (several during rotation).
pub(crate) fn lines_of(path: &Path) -> anyhow::Result<Vec<String>> {
    Ok(read_text(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))
}

/// `--kafka NAME=VALUE`: one librdkafka property from the command line. `Debug` hides the
/// value (it may be `sasl.password`).
#[derive(Clone)]
pub struct KafkaProperty {
    pub name: String,
    pub value: SecretString,
}

impl std::str::FromStr for KafkaProperty {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => Ok(Self {
                name: name.trim().to_owned(),
                value: SecretString::from(value),
            }),
            _ => Err("expected NAME=VALUE, such as sasl.mechanism=PLAIN".to_owned()),
        }
    }
}

impl std::fmt::Debug for KafkaProperty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=[REDACTED]", self.name)
    }
}

/// The `[log.kafka]` table of the configuration: librdkafka properties, some of them secrets
/// (`sasl.password`, `ssl.key.password`, ...). `Debug` shows the names only.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct KafkaTable(pub BTreeMap<String, String>);

impl std::fmt::Debug for KafkaTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Resolved librdkafka properties. `Debug` shows the names only; the values go to
/// librdkafka (`Deref` to the pairs).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub Vec<(String, String)>);

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

impl std::ops::Deref for KafkaProperties {
    type Target = [(String, String)];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[cfg(test)]
mod tests;
