//! What each setting is called: its key (`ingress.body_limit`), its flag and its
//! `TERRA_INGEST_*` variable, so that every error can name all three. The flags are the one
//! list: a setting flag's clap id is its key, so the names are read from the command-line
//! definition rather than kept twice.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use clap::{Arg, CommandFactory};

/// A flag that sets a setting: its id is the setting's key (`data_dir` is the one top-level
/// key; every other has a section).
pub(crate) fn is_setting(arg: &Arg) -> bool {
    let id = arg.get_id().as_str();
    id == "data_dir" || id.contains('.')
}

/// The flag (`--body-limit`) and variable (`TERRA_INGEST_BODY_LIMIT`) of a setting, where
/// it has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Names {
    pub(crate) flag: Option<String>,
    pub(crate) env: Option<String>,
}

fn table() -> &'static BTreeMap<String, Names> {
    static TABLE: OnceLock<BTreeMap<String, Names>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = BTreeMap::new();
        let mut stack = vec![crate::cli::Cli::command()];
        while let Some(command) = stack.pop() {
            for arg in command.get_arguments().filter(|a| is_setting(a)) {
                table
                    .entry(arg.get_id().to_string())
                    .or_insert_with(|| Names {
                        flag: arg.get_long().map(|long| format!("--{long}")),
                        env: arg.get_env().map(|env| env.to_string_lossy().into_owned()),
                    });
            }
            stack.extend(command.get_subcommands().cloned());
        }
        table
    })
}

/// The flag and variable of `key`; none for settings that only the file (and the nested
/// environment) can give, such as `ingress.sources.<name>`.
pub(crate) fn of(key: &str) -> Names {
    table().get(key).cloned().unwrap_or_default()
}

/// `key (--flag, TERRA_INGEST_VAR)`: how errors name a setting.
pub(crate) fn setting(key: &str) -> String {
    let names = of(key);
    let twins: Vec<String> = names.flag.into_iter().chain(names.env).collect();
    if twins.is_empty() {
        key.to_owned()
    } else {
        format!("{key} ({})", twins.join(", "))
    }
}

/// Where a key of the flat file (before sections) went, for the error an old file gets.
pub(crate) fn moved(old: &str) -> Option<&'static str> {
    const MOVED: &[(&str, &str)] = &[
        (
            "http_addr",
            "[ingress] http_addr (or [projector] http_addr)",
        ),
        ("ops_addr", "[ingress] ops_addr"),
        ("body_limit", "[ingress] body_limit"),
        ("append_timeout_ms", "[ingress] append_timeout_ms"),
        ("header_read_timeout_ms", "[ingress] header_read_timeout_ms"),
        ("body_read_timeout_ms", "[ingress] body_read_timeout_ms"),
        ("request_timeout_ms", "[ingress] request_timeout_ms"),
        ("max_connections", "[ingress] max_connections"),
        ("max_in_flight_requests", "[ingress] max_in_flight_requests"),
        ("max_in_flight_bytes", "[ingress] max_in_flight_bytes"),
        ("replay_cache_entries", "[ingress] replay_cache_entries"),
        ("rejection_logs_per_sec", "[ingress] rejection_logs_per_sec"),
        ("sources", "[ingress.sources.<name>]"),
        ("log", "[log] url"),
        ("kafka", "[log.kafka]"),
        ("batch_size", "[projector] batch_size"),
        ("batch_wait_ms", "[projector] batch_wait_ms"),
        ("batch_linger_ms", "[projector] batch_linger_ms"),
        ("max_lag", "[projector] max_lag"),
        ("sql", "[sql] url"),
        ("sql_file", "[sql] url_file"),
        ("sql_schema", "[sql] schema"),
        ("supabase", "[sql] supabase"),
        ("migrate", "[sql] migrate"),
        ("objects", "[objects] url"),
        ("objects_prefix", "[objects] prefix"),
        ("s3_endpoint", "[objects] s3_endpoint"),
        ("s3_region", "[objects] s3_region"),
        ("s3_path_style", "[objects] s3_path_style"),
        ("s3_allow_http", "[objects] s3_allow_http"),
        ("sqs_queue_url", "[objects] sqs_queue_url"),
        ("sqs_endpoint", "[objects] sqs_endpoint"),
        ("presign_expiry_secs", "[objects] presign_expiry_secs"),
        ("grpc_addr", "[query] grpc_addr"),
        ("grpc_timeout_secs", "[query] timeout_secs"),
        ("grpc_max_in_flight", "[query] max_in_flight"),
        ("grpc_max_watchers", "[query] max_watchers"),
        (
            "grpc_max_concurrent_streams",
            "[query] max_concurrent_streams",
        ),
        ("grpc_keepalive_secs", "[query] keepalive_secs"),
        (
            "grpc_keepalive_timeout_secs",
            "[query] keepalive_timeout_secs",
        ),
        (
            "grpc_max_connection_age_secs",
            "[query] max_connection_age_secs",
        ),
        ("query_pool_size", "[query] pool_size"),
        ("otlp_endpoint", "[telemetry] otlp_endpoint"),
        ("log_format", "[telemetry] log_format"),
    ];
    MOVED
        .iter()
        .find(|(key, _)| *key == old)
        .map(|(_, new)| *new)
}

/// Every setting that has a flag (for the tests that hold the file, the flags and the
/// documentation to one another).
#[cfg(test)]
pub(crate) fn all() -> &'static BTreeMap<String, Names> {
    table()
}
