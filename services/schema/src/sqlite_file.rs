//! The SQLite file of a `sqlite://` target, made private before SQLite opens it.

use std::path::Path;
use std::str::FromStr;

use terra_eventlog::private_fs;

use crate::SqlError;

/// Health data at rest: the SQLite file is made 0600 before SQLite opens it (in a folder
/// made 0700 when missing), so its `-wal`, `-shm` and `-journal` files, which SQLite creates
/// with the database file's mode, are 0600 too; files an earlier version left looser are
/// tightened. In-memory databases have no file.
pub(crate) fn make_private(url: &str) -> Result<(), SqlError> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(|e| {
        SqlError::Config(format!(
            "invalid database URL: {}",
            crate::redact(&e.to_string())
        ))
    })?;
    let path = options.get_filename();
    let text = path.to_string_lossy();
    if text.is_empty() || text.starts_with("file:") || url.contains("mode=memory") {
        return Ok(());
    }
    let failed = |e: std::io::Error| {
        SqlError::Config(format!(
            "cannot prepare the SQLite file {}: {e}",
            path.display()
        ))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        private_fs::create_dir_all(parent).map_err(failed)?;
    }
    if url.contains("mode=rwc") {
        match private_fs::options()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(failed(e)),
        }
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        private_fs::tighten_and_warn(Path::new(&name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::{SqlConfig, SqlTarget};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn sqlite_database_wal_and_shm_are_0600_in_a_0700_folder_under_umask_022() {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        let dir = tempfile::tempdir().unwrap();
        // the folder does not exist yet
        let db = dir.path().join("data/terra.db");
        let target =
            SqlTarget::connect(&SqlConfig::new(format!("sqlite://{}", db.display()))).unwrap();
        crate::migrate(&target).await.unwrap();
        let names = ["terra.db", "terra.db-wal", "terra.db-shm"];
        for name in names {
            assert_eq!(mode(&dir.path().join("data").join(name)), 0o600, "{name}");
        }
        assert_eq!(mode(&dir.path().join("data")), 0o700);
        target.close().await;
    }

    #[tokio::test]
    async fn a_sqlite_file_left_readable_by_an_earlier_version_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("terra.db");
        let url = format!("sqlite://{}", db.display());
        let target = SqlTarget::connect(&SqlConfig::new(&url)).unwrap();
        crate::migrate(&target).await.unwrap();
        target.close().await;
        for name in ["terra.db", "terra.db-wal", "terra.db-shm"] {
            let path = dir.path().join(name);
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let target = SqlTarget::connect(&SqlConfig::new(&url)).unwrap();
        assert_eq!(mode(&db), 0o600);
        crate::migrate(&target).await.unwrap();
        for name in ["terra.db", "terra.db-wal", "terra.db-shm"] {
            let path = dir.path().join(name);
            if path.exists() {
                assert_eq!(mode(&path), 0o600, "{name}");
            }
        }
        target.close().await;
    }

    #[test]
    fn in_memory_databases_have_no_file() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://?mode=memory",
        ] {
            make_private(url).unwrap();
        }
    }
}
