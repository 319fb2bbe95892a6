//! The services' settings: one typed tree ([`Config`], its defaults in its `Default` impls)
//! merged by figment from the layers (defaults < TOML file < environment < flags; see
//! `layers`), then checked once at start-up by the resolvers, one per part of the system.
//! Every error names the setting that is wrong (its key, flag and variable); no error
//! contains a secret.

mod config;
mod ingress;
mod layers;
mod log;
mod names;
mod projections;
mod query;
mod secrets;
mod webhooks;

pub use config::{
    Config, DEFAULT_DATA_DIR, DEFAULT_GRPC_ADDR, DEFAULT_HTTP_ADDR, DEFAULT_LOG,
    DEFAULT_PROJECTOR_HTTP_ADDR, DEFAULT_QUERY_POOL_SIZE, DEFAULT_S3_REGION, IngressSection,
    LogFormat, LogSection, ObjectsSection, ProjectorSection, QuerySection, SourceSection,
    SqlSection, TelemetrySection, UnsafeTopic,
};
pub(crate) use ingress::private_data_dir;
pub use ingress::{
    GENERATED_SECRET_FILE, IngressSettings, generated_default_secret, read_secret_file,
    resolve_ingress,
};
pub use layers::{Flags, load, load_from};
pub use log::{LogSettings, TelemetrySettings, resolve_log, resolve_telemetry};
pub(crate) use names::setting;
pub use projections::{
    Batches, DEFAULT_SQLITE_FILE, ObjectSettings, SqlSettings, resolve_batches, resolve_objects,
    resolve_sql,
};
pub use query::{QuerySettings, TOKEN_KEY_FILE, resolve_query};
pub use secrets::{KafkaProperties, KafkaProperty, KafkaTable};
pub use webhooks::{EndpointSection, WebhooksSection, configured_endpoint_names, resolve_webhooks};

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod webhook_tests;
