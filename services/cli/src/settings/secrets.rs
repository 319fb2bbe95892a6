//! Secrets in the settings: every flag that takes one (signing secrets, gRPC bearer tokens,
//! the token-sealing key, a database URL with its password) has a `*-file` twin naming a
//! file to read it from (a mounted Kubernetes secret; surrounding whitespace, such as the
//! trailing newline, removed) and `TERRA_INGEST_*` twins of both; giving the value and the
//! file is an error. Values are held in `SecretString`s and the Kafka table only shows its
//! names, so no `Debug` of a settings type prints a secret.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use secrecy::SecretString;
use serde::Deserialize;

/// One secret from its value or from its file (`value` and `file` are flag/env pairs such as
/// `("sql", "--sql", "TERRA_INGEST_SQL")`).
pub(crate) fn value_or_file(
    value: Option<SecretString>,
    file: Option<&Path>,
    value_names: (&str, &str, &str),
    file_names: (&str, &str, &str),
) -> anyhow::Result<Option<SecretString>> {
    let (setting, flag, env) = value_names;
    let (file_setting, file_flag, file_env) = file_names;
    match (value, file) {
        (Some(_), Some(_)) => {
            bail!("setting {setting}: give {flag} ({env}) or {file_flag} ({file_env}), not both")
        }
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => {
            let text = read_text(path)
                .with_context(|| format!("setting {file_setting} ({file_flag}, {file_env})"))?;
            let text = text.trim();
            if text.is_empty() {
                bail!(
                    "setting {file_setting} ({file_flag}, {file_env}): {} is empty",
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

/// The `[kafka]` table of the config file: librdkafka properties, some of them secrets
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
