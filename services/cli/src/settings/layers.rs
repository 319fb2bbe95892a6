//! The layers, merged by figment into one [`Config`], later wins:
//!
//! 1. the defaults (`Config`'s `Default` impls);
//! 2. other tools' standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT`, `AWS_REGION`,
//!    `AWS_DEFAULT_REGION`;
//! 3. the TOML file (`--config`, `TERRA_INGEST_CONFIG`);
//! 4. the environment: first the nested spelling of any key, `TERRA_INGEST_<SECTION>__<KEY>`
//!    (`TERRA_INGEST_QUERY__TLS_CERT`; `__` between keys, so it never clashes with the flat
//!    names, which have none), then `TERRA_INGEST_KAFKA_*` (librdkafka properties), then the
//!    flags' named twins (`TERRA_INGEST_BODY_LIMIT`), read only for flags the command has;
//! 5. the flags given on the command line.
//!
//! A layer that gives a secret or its file (`sql.url`, `sql.url_file`), or any of a source's
//! secrets, replaces both (all) from the layers below; one layer giving both is an error.

use std::path::Path;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory};
use figment::providers::{Format, Toml};
use figment::value::{Dict, Empty, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::config::Config;
use super::names;

const PREFIX: &str = "TERRA_INGEST_";
const KAFKA_PREFIX: &str = "TERRA_INGEST_KAFKA_";

/// Names of the layers, as errors show them.
const STANDARD: &str = "standard environment variables";
const NESTED_ENV: &str = "TERRA_INGEST_<SECTION>__<KEY> environment variables";
const NAMED_ENV: &str = "TERRA_INGEST_* environment variables";
const FLAGS: &str = "command-line flags";

/// Settings given as a secret or its file (or, for a source, in any of three ways): a layer
/// giving one replaces the others from the layers below. `true`: a list.
const SECRET_GROUPS: &[&[(&str, bool)]] = &[
    &[("sql.url", false), ("sql.url_file", false)],
    &[("query.tokens", true), ("query.token_file", false)],
    &[
        ("query.token_secret", false),
        ("query.token_secret_file", false),
    ],
];
/// A source's secrets, relative to `ingress.sources.<name>`.
const SOURCE_SECRETS: &[(&str, bool)] = &[
    ("secrets", true),
    ("secret_env", true),
    ("secret_files", true),
];
/// Value and file twins that one named layer (flags, their variables) must not both give.
const EXCLUSIVE: &[(&str, &str)] = &[
    ("sql.url", "sql.url_file"),
    ("query.tokens", "query.token_file"),
    ("query.token_secret", "query.token_secret_file"),
    (
        "ingress.sources.default.secrets",
        "ingress.sources.default.secret_files",
    ),
];

/// The setting flags of the command being run and the values given on its command line.
#[derive(Debug, Default)]
pub struct Flags {
    accepted: Vec<Accepted>,
    given: Vec<(String, Vec<String>)>,
}

#[derive(Debug)]
struct Accepted {
    key: String,
    env: Option<String>,
    list: bool,
    delimiter: Option<char>,
}

impl Flags {
    /// The setting flags of the (sub)command `matches` ran, and the values given to them on
    /// the command line (not those clap read from their variables: the environment is a
    /// layer of its own, below the flags).
    pub fn of(command: &Command, matches: &ArgMatches) -> anyhow::Result<Self> {
        let mut flags = Flags::default();
        let mut command = command.clone();
        let mut leaf = matches;
        let mut args: Vec<Arg> = command.get_arguments().cloned().collect();
        while let Some((name, sub_matches)) = leaf.subcommand() {
            command = command
                .find_subcommand(name)
                .with_context(|| format!("no subcommand {name}"))?
                .clone();
            args.extend(command.get_arguments().cloned());
            leaf = sub_matches;
        }
        for arg in args.iter().filter(|a| names::is_setting(a)) {
            let key = arg.get_id().to_string();
            if flags.accepted.iter().any(|a| a.key == key) {
                continue;
            }
            let list = matches!(arg.get_action(), ArgAction::Append);
            // try_get_raw first: it refuses an id the leaf does not know instead of panicking
            if let Ok(Some(raw)) = leaf.try_get_raw(&key)
                && leaf.value_source(&key) == Some(ValueSource::CommandLine)
            {
                let values = raw
                    .map(|v| {
                        v.to_str()
                            .map(str::to_owned)
                            .with_context(|| format!("setting {}: not UTF-8", names::setting(&key)))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                flags.given.push((key.clone(), values));
            }
            flags.accepted.push(Accepted {
                key,
                env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                list,
                delimiter: arg.get_value_delimiter(),
            });
        }
        Ok(flags)
    }

    /// Parses a command line (tests).
    #[cfg(test)]
    pub(crate) fn parse(args: &[&str]) -> anyhow::Result<Self> {
        let command = crate::cli::Cli::command();
        let matches = command
            .clone()
            .try_get_matches_from(std::iter::once("terra-ingest").chain(args.iter().copied()))?;
        Self::of(&command, &matches)
    }
}

/// The configuration of the command `matches` ran: the file, the process's environment and
/// the flags, merged and typed.
pub fn load(file: Option<&Path>, matches: &ArgMatches) -> anyhow::Result<Config> {
    let flags = Flags::of(&crate::cli::Cli::command(), matches)?;
    // variables that are not UTF-8 cannot be settings (std::env::vars would panic on them)
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    load_from(file, &env, &flags)
}

/// [`load`] from the given environment.
pub fn load_from(
    file: Option<&Path>,
    env: &[(String, String)],
    flags: &Flags,
) -> anyhow::Result<Config> {
    let mut figment = Figment::new().merge(Layer::new(STANDARD, standard(env)));
    if let Some(path) = file {
        // figment skips a missing file; a file named but absent is a mistake
        std::fs::metadata(path)
            .with_context(|| format!("failed to read the config file {}", path.display()))?;
        figment = figment.merge(Toml::file_exact(path));
    }
    let figment = figment
        .merge(Layer::new(NESTED_ENV, nested_env(env)))
        .merge(Layer::new(NAMED_ENV, named_env(env, flags)?))
        .merge(Layer::new(FLAGS, given(flags)?));
    figment
        .extract_lossy::<Config>()
        .map_err(|err| anyhow::anyhow!(describe(&err, &figment)))
}

/// Tools' own variables that stand for settings, below the file as they always were.
fn standard(env: &[(String, String)]) -> Dict {
    let mut dict = Dict::new();
    // AWS_REGION over AWS_DEFAULT_REGION, as the AWS SDKs read them
    for (var, key) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry.otlp_endpoint"),
        ("AWS_DEFAULT_REGION", "objects.s3_region"),
        ("AWS_REGION", "objects.s3_region"),
    ] {
        if let Some(value) = lookup(env, var) {
            insert(&mut dict, &key.split('.').collect::<Vec<_>>(), value.into());
        }
    }
    dict
}

/// `TERRA_INGEST_<SECTION>__<KEY>[__<KEY>…]`, lowercased; values as figment parses them
/// (`[a, b]` is a list) except that numbers and booleans stay text until a setting asks for
/// one, so a token of digits is still a string.
fn nested_env(env: &[(String, String)]) -> Dict {
    let mut dict = Dict::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if !rest.contains("__") || name.starts_with(KAFKA_PREFIX) || raw.is_empty() {
            continue;
        }
        let key = rest.to_ascii_lowercase();
        let path: Vec<&str> = key.split("__").collect();
        let value = match raw.parse::<Value>() {
            Ok(value @ (Value::Array(..) | Value::Dict(..))) => value,
            _ => Value::from(raw.clone()),
        };
        insert(&mut dict, &path, value);
    }
    shadow(&mut dict);
    dict
}

/// `TERRA_INGEST_KAFKA_*` (`TERRA_INGEST_KAFKA_SASL_PASSWORD` is `log.kafka."sasl.password"`),
/// then the variables of the flags this command has, split like the flag's values.
fn named_env(env: &[(String, String)], flags: &Flags) -> anyhow::Result<Dict> {
    let mut dict = Dict::new();
    for (name, value) in env {
        if let Some(rest) = name.strip_prefix(KAFKA_PREFIX) {
            let property = rest.to_ascii_lowercase().replace('_', ".");
            insert(
                &mut dict,
                &["log", "kafka", &property],
                value.clone().into(),
            );
        }
    }
    let mut given = Vec::new();
    for flag in &flags.accepted {
        let Some(value) = flag.env.as_deref().and_then(|var| lookup(env, var)) else {
            continue;
        };
        let values: Vec<String> = match flag.delimiter {
            Some(delimiter) => value.split(delimiter).map(str::to_owned).collect(),
            None => vec![value.to_owned()],
        };
        given.push((flag.key.clone(), values));
    }
    layer(&mut dict, flags, &given)?;
    Ok(dict)
}

/// The values given on the command line.
fn given(flags: &Flags) -> anyhow::Result<Dict> {
    let mut dict = Dict::new();
    layer(&mut dict, flags, &flags.given)?;
    Ok(dict)
}

/// Puts flag values (or their variables') into `dict` under their keys.
fn layer(dict: &mut Dict, flags: &Flags, given: &[(String, Vec<String>)]) -> anyhow::Result<()> {
    for (value_key, file_key) in EXCLUSIVE {
        let has = |key: &str| given.iter().any(|(k, _)| k == key);
        if has(value_key) && has(file_key) {
            bail!(
                "setting {} or {}: give one, not both",
                names::setting(value_key),
                names::setting(file_key)
            );
        }
    }
    for (key, values) in given {
        let list = flags.accepted.iter().any(|a| &a.key == key && a.list);
        if key == "log.kafka" {
            for property in values {
                let (name, value) = property.split_once('=').unwrap_or((property, ""));
                insert(dict, &["log", "kafka", name.trim()], value.into());
            }
            continue;
        }
        let value = if list {
            Value::from(values.clone())
        } else {
            Value::from(values.first().cloned().unwrap_or_default())
        };
        insert(dict, &key.split('.').collect::<Vec<_>>(), value);
    }
    shadow(dict);
    Ok(())
}

/// A layer giving one of a secret's spellings blanks the others, so the ones given below
/// do not survive the merge beside it.
fn shadow(dict: &mut Dict) {
    let blank = |list: bool| {
        if list {
            Value::from(Vec::<String>::new())
        } else {
            Value::from(Empty::None)
        }
    };
    let mut groups: Vec<Vec<(String, bool)>> = SECRET_GROUPS
        .iter()
        .map(|group| group.iter().map(|(k, l)| ((*k).to_owned(), *l)).collect())
        .collect();
    if let Some(Value::Dict(_, ingress)) = dict.get("ingress")
        && let Some(Value::Dict(_, sources)) = ingress.get("sources")
    {
        for name in sources.keys() {
            groups.push(
                SOURCE_SECRETS
                    .iter()
                    .map(|(k, l)| (format!("ingress.sources.{name}.{k}"), *l))
                    .collect(),
            );
        }
    }
    for group in groups {
        if group.iter().any(|(key, _)| find(dict, key).is_some()) {
            for (key, list) in &group {
                if find(dict, key).is_none() {
                    insert(dict, &key.split('.').collect::<Vec<_>>(), blank(*list));
                }
            }
        }
    }
}

fn lookup<'a>(env: &'a [(String, String)], var: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(name, _)| name == var)
        .map(|(_, value)| value.as_str())
        .filter(|value| !value.is_empty())
}

fn find<'a>(dict: &'a Dict, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut value = dict.get(parts.next()?)?;
    for part in parts {
        value = value.as_dict()?.get(part)?;
    }
    Some(value)
}

fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// One layer of settings built here (the environment, the flags).
struct Layer {
    name: &'static str,
    dict: Dict,
}

impl Layer {
    fn new(name: &'static str, dict: Dict) -> Self {
        Self { name, dict }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Secret settings: their values never appear in an error.
fn is_secret(key: &str) -> bool {
    // `sql` too: an old flat file's `sql = "postgres://user:password@…"`
    key == "sql"
        || key == "sql.url"
        || key.starts_with("query.tokens")
        || key == "query.token_secret"
        || key.starts_with("log.kafka")
        || (key.starts_with("ingress.sources.") && key.contains(".secrets"))
}

/// A figment error as a setting error: the key with its flag and variable, what is wrong,
/// and the layer that gave the value.
fn describe(err: &figment::Error, figment: &Figment) -> String {
    use figment::error::Kind;
    // an unknown key's path ends with the key itself
    let key = err.path.join(".");
    let source = err.metadata.as_ref().map_or_else(
        || "the defaults".to_owned(),
        |md| match &md.source {
            Some(source) => format!("{} {source}", md.name),
            // the one variable, rather than the layer
            None if md.name == NESTED_ENV => format!(
                "environment variable {PREFIX}{}",
                key.to_ascii_uppercase().replace('.', "__")
            ),
            None => md.name.to_string(),
        },
    );
    if key.is_empty() {
        // the file itself could not be read or parsed
        return format!("config file invalid ({source}): {}", err.kind);
    }
    // a key of the flat file the sections replaced: unknown, or now a section's name
    if let Some(new) = names::moved(&key) {
        return format!(
            "setting {key} ({source}): the file has sections now; this is {new} (see terra-ingest.example.toml)"
        );
    }
    let what = match &err.kind {
        Kind::UnknownField(..) => "unknown key (see terra-ingest.example.toml)".to_owned(),
        _ if is_secret(&key) => "invalid value (not shown: a secret)".to_owned(),
        Kind::Message(message) => match figment.find_value(&key) {
            Ok(Value::String(_, text)) => format!("{text:?}: {message}"),
            _ => message.clone(),
        },
        kind => kind.to_string(),
    };
    format!(
        "setting {}: {what} (from the {source})",
        names::setting(&key)
    )
}

#[cfg(test)]
mod tests;
