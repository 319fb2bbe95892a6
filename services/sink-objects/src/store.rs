//! Opening the object store a URL names: a local folder (`file://PATH` or a plain path), S3 and
//! S3-compatible servers (`s3://bucket`: AWS, MinIO, Supabase Storage), GCS (`gs://bucket`),
//! Azure (`az://container`). Credentials come from the usual environment chains
//! (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, web identity, instance
//! metadata; `GOOGLE_SERVICE_ACCOUNT`/`GOOGLE_APPLICATION_CREDENTIALS`; `AZURE_STORAGE_*`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::signer::Signer;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use terra_eventlog::private_fs;

/// The Supabase Storage bucket Terra's Supabase destination writes to.
pub const SUPABASE_BUCKET: &str = "terra-payloads";

/// Where objects go.
#[derive(Clone, Default)]
pub struct StoreConfig {
    /// `file://PATH`, a plain path, `s3://bucket`, `gs://bucket` or `az://container`.
    pub url: String,
    /// Key prefix under the bucket (no leading or trailing slash needed).
    pub prefix: String,
    /// S3-compatible endpoint (MinIO, Supabase Storage, a test server).
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as MinIO and Supabase want.
    pub s3_path_style: bool,
    /// Allow `http://` endpoints (local servers only).
    pub allow_http: bool,
    /// object_store settings by their configuration-key names (`azure_storage_endpoint`,
    /// `google_service_account_key`, `aws_...`), applied over what the environment gives:
    /// for programs that embed the sink and for tests, which cannot change the environment of
    /// the process they run in. The command line reads the environment only. Values may be
    /// secrets: `Debug` shows the names.
    pub options: Vec<(String, String)>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_path_style", &self.s3_path_style)
            .field("allow_http", &self.allow_http)
            .field(
                "options",
                &self.options.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Applies `options` to an object_store builder through its `with_config`.
fn configure<B, K>(
    mut builder: B,
    options: &[(String, String)],
    with_config: impl Fn(B, K, &str) -> B,
) -> Result<B, StoreError>
where
    K: std::str::FromStr<Err = object_store::Error>,
{
    for (key, value) in options {
        let key = key
            .parse::<K>()
            .map_err(|e| StoreError::Config(format!("object store option {key:?}: {e}")))?;
        builder = with_config(builder, key, value);
    }
    Ok(builder)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store misconfigured: {0}")]
    Config(String),
}

/// An opened store.
#[derive(Clone)]
pub struct Store {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// Pre-signs GET URLs (S3, GCS, Azure); `None` for a local folder.
    pub(crate) signer: Option<Arc<dyn Signer>>,
    /// The folder, for a local store.
    pub(crate) root: Option<PathBuf>,
    /// A local store as itself: it maps keys to file names, and the sink writes the files
    /// (0600, in 0700 folders) rather than `LocalFileSystem`, which leaves both to the umask.
    pub(crate) local: Option<Arc<LocalFileSystem>>,
    pub(crate) prefix: String,
    pub(crate) kind: &'static str,
    /// Puts can be made conditional on what was read (`If-None-Match` / `If-Match` and the
    /// like); false only for S3 with `AWS_CONDITIONAL_PUT=disabled`, for servers that
    /// refuse the headers.
    pub(crate) conditional: bool,
    /// The user-metadata name the stored version goes under: `terra-ingest-version`, but
    /// `terra_ingest_version` on Azure, whose metadata names must be C# identifiers (a `-`
    /// is answered 400 `InvalidMetadata`, by Azure and by Azurite alike).
    pub(crate) version_attribute: &'static str,
}

/// The metadata name of the stored version on S3 and GCS.
pub const VERSION_METADATA: &str = "terra-ingest-version";
/// The same on Azure (metadata names are C# identifiers there).
pub const AZURE_VERSION_METADATA: &str = "terra_ingest_version";

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("kind", &self.kind)
            .field("prefix", &self.prefix)
            .field("conditional", &self.conditional)
            .finish()
    }
}

impl Store {
    pub fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let url = config.url.trim();
        let prefix = config.prefix.trim_matches('/').to_owned();
        if prefix.split('/').any(|s| s == ".." || s == ".") {
            return Err(StoreError::Config(format!(
                "prefix {prefix:?} must not contain . or .. segments"
            )));
        }
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => ("file", url),
        };
        let bucket = rest.split('/').next().unwrap_or("");
        let needs_bucket = || -> Result<(), StoreError> {
            if bucket.is_empty() {
                return Err(StoreError::Config(format!(
                    "objects URL {url:?} names no bucket"
                )));
            }
            Ok(())
        };
        // fail fast in an outage: the projector retries with its own backoff
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let client = ClientOptions::new()
            .with_timeout(Duration::from_secs(30))
            .with_connect_timeout(Duration::from_secs(5))
            .with_allow_http(config.allow_http);
        let bad = |e: object_store::Error| StoreError::Config(e.to_string());
        match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(StoreError::Config("objects URL names no folder".into()));
                }
                let root = PathBuf::from(rest);
                private_fs::create_dir_all(&root).map_err(|e| {
                    StoreError::Config(format!(
                        "cannot create the objects folder {}: {e}",
                        root.display()
                    ))
                })?;
                let root = root.canonicalize().map_err(|e| {
                    StoreError::Config(format!("objects folder {}: {e}", root.display()))
                })?;
                // a folder made by an earlier version: closing it closes everything in it
                private_fs::tighten_and_warn(&root);
                private_fs::tighten_and_warn(&crate::sink::versions_dir(&root));
                let store = Arc::new(LocalFileSystem::new_with_prefix(&root).map_err(bad)?);
                Ok(Self {
                    store: store.clone(),
                    signer: None,
                    local: Some(store),
                    root: Some(root),
                    prefix,
                    kind: "file",
                    version_attribute: VERSION_METADATA,
                    conditional: true,
                })
            }
            "s3" | "s3a" => {
                needs_bucket()?;
                let builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_client_options(client)
                    .with_virtual_hosted_style_request(!config.s3_path_style);
                let mut builder =
                    configure(builder, &config.options, |b, k, v| b.with_config(k, v))?;
                if let Some(endpoint) = &config.s3_endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(region) = &config.s3_region {
                    builder = builder.with_region(region);
                }
                // If-None-Match / If-Match unless the environment turned them off
                let conditional = builder
                    .get_config_value(&AmazonS3ConfigKey::ConditionalPut)
                    .is_none_or(|mode| mode.trim() != "disabled");
                let s3 = Arc::new(builder.build().map_err(bad)?);
                Ok(Self {
                    store: s3.clone(),
                    signer: Some(s3),
                    root: None,
                    local: None,
                    prefix,
                    kind: "s3",
                    version_attribute: VERSION_METADATA,
                    conditional,
                })
            }
            "gs" => {
                needs_bucket()?;
                let builder = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_client_options(client);
                let builder = configure(builder, &config.options, |b, k, v| b.with_config(k, v))?;
                let gcs = Arc::new(builder.build().map_err(bad)?);
                Ok(Self {
                    store: gcs.clone(),
                    signer: Some(gcs),
                    root: None,
                    local: None,
                    prefix,
                    kind: "gcs",
                    version_attribute: VERSION_METADATA,
                    conditional: true,
                })
            }
            "az" | "azure" => {
                needs_bucket()?;
                let builder = MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .with_retry(retry)
                    .with_client_options(client);
                let builder = configure(builder, &config.options, |b, k, v| b.with_config(k, v))?;
                let azure = Arc::new(builder.build().map_err(bad)?);
                Ok(Self {
                    store: azure.clone(),
                    signer: Some(azure),
                    root: None,
                    local: None,
                    prefix,
                    kind: "azure",
                    conditional: true,
                    version_attribute: AZURE_VERSION_METADATA,
                })
            }
            other => Err(StoreError::Config(format!(
                "objects URL scheme {other:?} is not supported: use file://PATH, s3://BUCKET, gs://BUCKET or az://CONTAINER"
            ))),
        }
    }

    /// `file`, `s3`, `gcs` or `azure`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The object key of a payload id under the configured prefix.
    pub fn key(&self, payload_id: &str) -> String {
        terra_core::keys::object_key(&self.prefix, payload_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(url: &str) -> Result<Store, StoreError> {
        Store::open(&StoreConfig {
            url: url.into(),
            s3_region: Some("us-east-1".into()),
            ..StoreConfig::default()
        })
    }

    #[test]
    fn urls_select_the_store() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            open(&format!("file://{}", dir.path().display()))
                .unwrap()
                .kind(),
            "file"
        );
        assert_eq!(
            open(&dir.path().join("plain").display().to_string())
                .unwrap()
                .kind(),
            "file"
        );
        assert_eq!(open("s3://bucket").unwrap().kind(), "s3");
        for bad in ["s3://", "ftp://x/y", "gs://"] {
            let err = open(bad).unwrap_err().to_string();
            assert!(err.contains("objects"), "{bad}: {err}");
        }
    }

    #[test]
    fn keys_come_from_the_core_derivation() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir.path().display().to_string()).unwrap();
        store.prefix = "terra".into();
        assert_eq!(
            store.key("2022-03-16/sleep/u-2026-10-03T21:12:00Z"),
            "terra/2022-03-16/sleep/u-2026-10-03T21:12:00Z.json"
        );
        let err = Store::open(&StoreConfig {
            url: dir.path().display().to_string(),
            prefix: "a/../b".into(),
            ..StoreConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(".."), "{err}");
    }
}
