//! Migrations: the SQL files under `migrations/<dialect>/`, compiled in, applied in order and
//! recorded in `ingest_migrations` (see `migrations/README.md` for the template syntax).

use sqlx::{Executor, Row};

use crate::tables::{INGEST_MIGRATIONS, VIEW, WEBHOOK_MIGRATIONS};
use crate::{Dialect, SqlError, SqlTarget};

/// Which shape Terra's three tables take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Terra's SQL destination: text columns (Postgres, MySQL, SQLite).
    Terra,
    /// Terra's Supabase destination: TIMESTAMPTZ, `payload_id` primary keys, foreign keys.
    Supabase,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Terra => "terra",
            Self::Supabase => "supabase",
        }
    }
}

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

macro_rules! migration {
    ($dir:literal, $version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!(
                "../../../migrations/",
                $dir,
                "/",
                stringify!($version),
                "_",
                $name,
                ".sql"
            )),
        }
    };
}

/// Which tables a migration run is for: each set has its own migrations and its own record of
/// them, so the SQL projection's tables (which a rebuild replaces) and the webhook
/// destination's (which it must never touch) move apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSet {
    /// Terra's tables and the `ingest_*` tables (`migrations/<dialect>/`).
    Projection,
    /// The webhook destination's `webhook_*` tables (`migrations/webhooks/<dialect>/`).
    Webhooks,
}

impl TableSet {
    /// The table that records which migrations of the set are applied.
    fn record_table(self) -> &'static str {
        match self {
            Self::Projection => INGEST_MIGRATIONS,
            Self::Webhooks => WEBHOOK_MIGRATIONS,
        }
    }

    fn migrations(self, dialect: Dialect, variant: Variant) -> Vec<Migration> {
        match self {
            Self::Projection => migrations(dialect, variant),
            Self::Webhooks => match dialect {
                Dialect::Postgres => {
                    vec![
                        migration!("webhooks/postgres", 20261203000100, "webhook_tables"),
                        migration!("webhooks/postgres", 20261204000100, "events_lz4"),
                        migration!("webhooks/postgres", 20261205000100, "first_attempt_inline"),
                        migration!("webhooks/postgres", 20261205000200, "event_body_encoding"),
                        migration!("webhooks/postgres", 20261205000300, "pending_indexes"),
                        migration!("webhooks/postgres", 20261205000400, "ordering_key"),
                        migration!("webhooks/postgres", 20261205000500, "byte_order_keys"),
                    ]
                }
                Dialect::MySql => vec![
                    migration!("webhooks/mysql", 20261203000100, "webhook_tables"),
                    migration!("webhooks/mysql", 20261205000100, "first_attempt_inline"),
                    migration!("webhooks/mysql", 20261205000200, "event_body_encoding"),
                    migration!("webhooks/mysql", 20261205000400, "ordering_key"),
                ],
                Dialect::Sqlite => vec![
                    migration!("webhooks/sqlite", 20261203000100, "webhook_tables"),
                    migration!("webhooks/sqlite", 20261205000100, "first_attempt_inline"),
                    migration!("webhooks/sqlite", 20261205000200, "event_body_encoding"),
                    migration!("webhooks/sqlite", 20261205000300, "pending_indexes"),
                    migration!("webhooks/sqlite", 20261205000400, "ordering_key"),
                ],
            },
        }
    }
}

fn migrations(dialect: Dialect, variant: Variant) -> Vec<Migration> {
    match (dialect, variant) {
        (Dialect::Postgres, Variant::Terra) => vec![
            migration!("postgres", 20261124000100, "terra_tables"),
            migration!("postgres", 20261124000200, "ingest_tables"),
            migration!("postgres", 20261124000300, "payload_position_index"),
            migration!("postgres", 20261124000400, "payload_user_order_index"),
            migration!("postgres", 20261203000100, "terra_not_null"),
            migration!("postgres", 20261204000100, "drop_redundant_user_index"),
        ],
        (Dialect::Postgres, Variant::Supabase) => vec![
            migration!("supabase", 20261124000100, "terra_tables"),
            migration!("postgres", 20261124000200, "ingest_tables"),
            migration!("postgres", 20261124000300, "payload_position_index"),
            migration!("postgres", 20261124000400, "payload_user_order_index"),
            migration!("supabase", 20261203000100, "terra_types"),
            migration!("postgres", 20261204000100, "drop_redundant_user_index"),
        ],
        (Dialect::MySql, _) => vec![
            migration!("mysql", 20261124000100, "terra_tables"),
            migration!("mysql", 20261124000200, "ingest_tables"),
            migration!("mysql", 20261124000300, "payload_position_index"),
            migration!("mysql", 20261124000400, "payload_user_order_index"),
            migration!("mysql", 20261125000100, "utf8mb4_binary"),
            migration!("mysql", 20261203000100, "terra_not_null"),
            migration!("mysql", 20261204000100, "drop_redundant_user_index"),
        ],
        (Dialect::Sqlite, _) => vec![
            migration!("sqlite", 20261124000100, "terra_tables"),
            migration!("sqlite", 20261124000200, "ingest_tables"),
            migration!("sqlite", 20261124000300, "payload_position_index"),
            migration!("sqlite", 20261124000400, "payload_user_order_index"),
            migration!("sqlite", 20261203000100, "terra_not_null"),
            migration!("sqlite", 20261204000100, "drop_redundant_user_index"),
        ],
    }
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<String>,
    pub already: usize,
}

/// Applies every migration the target's tables do not have yet. Safe to run concurrently on
/// Postgres (an advisory lock serialises runners) and to run again.
pub async fn migrate(target: &SqlTarget) -> Result<MigrationReport, SqlError> {
    migrate_set(target, TableSet::Projection).await
}

/// [`migrate`] for one set of tables.
pub async fn migrate_set(target: &SqlTarget, set: TableSet) -> Result<MigrationReport, SqlError> {
    migrate_set_up_to(target, set, i64::MAX).await
}

/// [`migrate`] with only the migrations up to `version`: the schema an earlier release left,
/// for the upgrade tests.
#[doc(hidden)]
pub async fn migrate_up_to(target: &SqlTarget, version: i64) -> Result<MigrationReport, SqlError> {
    migrate_set_up_to(target, TableSet::Projection, version).await
}

/// [`migrate_set`] with only the migrations up to `version`: the schema an earlier release
/// left, for the upgrade tests.
#[doc(hidden)]
pub async fn migrate_set_up_to(
    target: &SqlTarget,
    set: TableSet,
    up_to: i64,
) -> Result<MigrationReport, SqlError> {
    let mut conn = target.pool.acquire().await?;
    let table = target.table(set.record_table());
    if target.dialect == Dialect::Postgres {
        conn.execute(format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", target.schema).as_str())
            .await?;
        conn.execute("SELECT pg_advisory_lock(7120118)").await?;
    }
    if target.dialect == Dialect::Sqlite {
        // a migration's CREATE INDEX sorts the whole table: spilled to a file, not held in
        // memory as the writer's statement journals are (`SqlTarget::connect`)
        conn.execute("PRAGMA temp_store = FILE").await?;
    }
    let result = async {
        let collation = match target.dialect {
            Dialect::MySql => mysql_binary_collation(&mut conn).await?,
            Dialect::Postgres | Dialect::Sqlite => "",
        };
        let table_options = match target.dialect {
            Dialect::MySql => format!(" DEFAULT CHARSET = utf8mb4 COLLATE = {collation}"),
            Dialect::Postgres | Dialect::Sqlite => String::new(),
        };
        conn.execute(
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (version BIGINT PRIMARY KEY, name VARCHAR(200) NOT NULL, variant VARCHAR(16) NOT NULL, applied_at_ms BIGINT NOT NULL){table_options}"
            )
            .as_str(),
        )
        .await?;
        let rows = conn
            .fetch_all(format!("SELECT version, variant FROM {table}").as_str())
            .await?;
        let mut applied_versions = Vec::new();
        for row in rows {
            let version: i64 = row.try_get(0)?;
            let variant: String = row.try_get(1)?;
            if variant != target.variant.as_str() {
                return Err(SqlError::Schema(format!(
                    "the tables were created as the {variant:?} variant; this projector is set up for {:?} (check --supabase)",
                    target.variant.as_str()
                )));
            }
            applied_versions.push(version);
        }
        let mut report = MigrationReport {
            applied: Vec::new(),
            already: 0,
        };
        for migration in set.migrations(target.dialect, target.variant) {
            if migration.version > up_to {
                break;
            }
            if applied_versions.contains(&migration.version) {
                report.already += 1;
                continue;
            }
            let sql = render(target, migration.sql).replace("{binary_collation}", collation);
            // Postgres and SQLite apply a migration atomically; MySQL commits each DDL
            // statement, so a failure there leaves a partial migration to clean up by hand
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            for statement in statements(&sql) {
                tx.execute(statement).await.map_err(|e| {
                    SqlError::Schema(format!(
                        "migration {}_{} failed: {}",
                        migration.version,
                        migration.name,
                        crate::error::classify(&e)
                    ))
                })?;
            }
            let mut record = crate::Stmt::new(
                target.dialect,
                format!("INSERT INTO {table} (version, name, variant, applied_at_ms) VALUES ("),
            );
            record
                .bind(migration.version)
                .push(", ")
                .bind(migration.name)
                .push(", ")
                .bind(target.variant.as_str())
                .push(", ")
                .bind(terra_core::keys::now_ms())
                .push(")");
            tx.execute(record.query()).await?;
            tx.commit().await?;
            report
                .applied
                .push(format!("{}_{}", migration.version, migration.name));
        }
        Ok(report)
    }
    .await;
    if target.dialect == Dialect::Postgres {
        let _ = conn.execute("SELECT pg_advisory_unlock(7120118)").await;
    }
    if target.dialect == Dialect::Sqlite {
        conn.execute("PRAGMA temp_store = MEMORY").await?;
    }
    result
}

/// MySQL/MariaDB collations that compare utf8mb4 text byte for byte, trailing spaces included
/// (NO PAD), in order of preference: MariaDB 10.2+, MySQL 8.0.17+.
const MYSQL_NOPAD_BINARY: [&str; 2] = ["utf8mb4_nopad_bin", "utf8mb4_0900_bin"];

/// The collation terra-ingest's MySQL tables take (`{binary_collation}` of the migrations):
/// the server's binary NO PAD utf8mb4 collation, else `utf8mb4_bin` (older servers: case and
/// 4-byte characters are still kept apart, but `abc` and `abc ` compare equal; a warning says
/// so).
async fn mysql_binary_collation(conn: &mut sqlx::AnyConnection) -> Result<&'static str, SqlError> {
    let rows = conn
        .fetch_all(
            format!(
                "SELECT COLLATION_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME IN ('{}')",
                MYSQL_NOPAD_BINARY.join("', '")
            )
            .as_str(),
        )
        .await?;
    let available: Vec<String> = rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    if let Some(name) = MYSQL_NOPAD_BINARY
        .into_iter()
        .find(|name| available.iter().any(|a| a == name))
    {
        return Ok(name);
    }
    tracing::warn!(
        collation = "utf8mb4_bin",
        "the server has no binary NO PAD utf8mb4 collation (MariaDB 10.2+, MySQL 8.0.17+): user ids differing only in trailing spaces compare equal"
    );
    Ok("utf8mb4_bin")
}

/// Migrations not applied yet to the target's tables (all of them when there are none).
pub async fn pending(target: &SqlTarget) -> Result<Vec<String>, SqlError> {
    pending_set(target, TableSet::Projection).await
}

/// [`pending`] for one set of tables.
pub async fn pending_set(target: &SqlTarget, set: TableSet) -> Result<Vec<String>, SqlError> {
    let all = set.migrations(target.dialect, target.variant);
    if !crate::swap::table_exists(target, set.record_table()).await? {
        return Ok(all
            .iter()
            .map(|m| format!("{}_{}", m.version, m.name))
            .collect());
    }
    let rows = target
        .pool
        .fetch_all(format!("SELECT version FROM {}", target.table(set.record_table())).as_str())
        .await?;
    let applied: Vec<i64> = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    Ok(all
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{}_{}", m.version, m.name))
        .collect())
}

/// The `CREATE VIEW` statement of the migrations (the view is defined there, once), for the
/// target's names: a swap recreates the view over the swapped-in tables with it.
pub(crate) fn view_statement(target: &SqlTarget) -> Result<String, SqlError> {
    let create = format!("CREATE VIEW {{schema}}{{prefix}}{VIEW} ");
    migrations(target.dialect, target.variant)
        .iter()
        .flat_map(|m| statements(m.sql))
        .map(|s| {
            let lines: Vec<&str> = s.lines().filter(|l| !l.trim().starts_with("--")).collect();
            lines.join("\n")
        })
        .find(|s| s.starts_with(&create))
        .map(|s| render(target, &s))
        .ok_or_else(|| SqlError::Schema(format!("no migration creates the view {VIEW}")))
}

/// The template with `{schema}` and `{prefix}` filled in.
fn render(target: &SqlTarget, template: &str) -> String {
    template
        .replace("{schema}", &target.schema_qualifier())
        .replace("{prefix}", &target.prefix)
}

/// Statements of a migration file: split at `;` ending a line; comment lines dropped.
fn statements(sql: &str) -> Vec<&str> {
    sql.split(";\n")
        .map(str::trim)
        .map(|s| s.trim_end_matches(';'))
        .filter(|s| {
            s.lines()
                .any(|l| !l.trim().is_empty() && !l.trim().starts_with("--"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQLite writer keeps statement journals in memory (`SqlTarget::connect`); a
    /// migration sorts on disk and hands the connection back as it found it.
    #[tokio::test]
    async fn sqlite_writers_journal_statements_in_memory_after_a_migration() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let target = SqlTarget::connect(&crate::SqlConfig::new(url)).unwrap();
        let temp_store = |target: SqlTarget| async move {
            let row = target.pool.fetch_one("PRAGMA temp_store").await.unwrap();
            row.try_get::<i64, _>(0).unwrap()
        };
        assert_eq!(temp_store(target.clone()).await, 2, "MEMORY");
        migrate(&target).await.unwrap();
        assert_eq!(
            temp_store(target.clone()).await,
            2,
            "MEMORY after migrating"
        );
        target.close().await;
    }

    #[test]
    fn every_migration_splits_into_statements_without_leftover_templates() {
        for dialect in [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite] {
            for variant in [Variant::Terra, Variant::Supabase] {
                if variant == Variant::Supabase && dialect != Dialect::Postgres {
                    continue;
                }
                let all = TableSet::Projection
                    .migrations(dialect, variant)
                    .into_iter()
                    .chain(TableSet::Webhooks.migrations(dialect, variant));
                for migration in all {
                    let mut rest = migration.sql;
                    while let Some(at) = rest.find('{') {
                        let end = rest[at..].find('}').map_or(rest.len(), |e| at + e + 1);
                        let template = &rest[at..end];
                        let known = ["{schema}", "{prefix}"].contains(&template)
                            || (dialect == Dialect::MySql && template == "{binary_collation}");
                        assert!(known, "{}: {template}", migration.name);
                        rest = &rest[end..];
                    }
                    let parts = statements(migration.sql);
                    assert!(!parts.is_empty(), "{}", migration.name);
                    for part in parts {
                        assert!(!part.trim_end().ends_with(';'), "{part}");
                        let upper = part.to_uppercase();
                        assert!(
                            upper.contains("CREATE TABLE")
                                || upper.contains("CREATE INDEX")
                                || upper.contains("CREATE UNIQUE INDEX")
                                || upper.contains("CREATE VIEW")
                                || upper.contains("ALTER TABLE")
                                // moving rows Terra's columns cannot hold (20261203000100)
                                || upper.contains("INSERT INTO")
                                || upper.contains("DELETE FROM")
                                || upper.contains("DROP VIEW")
                                // an index made redundant by a later one (20261204000100)
                                || upper.contains("DROP INDEX")
                                // pending webhook deliveries keyed (20261205000400)
                                || upper.contains("UPDATE ")
                                || upper.contains("DO $$"),
                            "{part}"
                        );
                    }
                }
            }
        }
    }
}
