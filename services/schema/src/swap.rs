//! A fresh set of a projection's tables (built under another prefix, e.g. by a rebuild)
//! swapped in for the live ones, atomically where the database allows (one transaction on
//! Postgres and SQLite, one `RENAME TABLE` on MySQL); replaced tables dropped or kept.

use sqlx::{Executor, Row};

use crate::tables::{INGEST_POSITIONS, TABLES, VIEW};
use crate::{Dialect, SqlError, SqlTarget, Stmt};

/// Whether table (or view) `base` of the projection `target` names exists.
pub async fn table_exists(target: &SqlTarget, base: &str) -> Result<bool, SqlError> {
    let name = format!("{}{base}", target.prefix);
    let mut stmt = match target.dialect {
        Dialect::Postgres => Stmt::new(
            target.dialect,
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ",
        ),
        Dialect::MySql => Stmt::new(
            target.dialect,
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND 1 = ",
        ),
        Dialect::Sqlite => Stmt::new(
            target.dialect,
            "SELECT COUNT(*) FROM sqlite_master WHERE type IN ('table', 'view') AND 1 = ",
        ),
    };
    match target.dialect {
        Dialect::Postgres => stmt.bind(&target.schema),
        _ => stmt.bind(1i64),
    };
    stmt.push(if target.dialect == Dialect::Sqlite {
        " AND name = "
    } else {
        " AND table_name = "
    })
    .bind(name);
    let row = target.pool.fetch_one(stmt.query()).await?;
    let count: i64 = row.try_get(0)?;
    Ok(count > 0)
}

/// Renames the live tables to `old_prefix`, the rebuilt ones (`new_prefix`) to the live
/// names, and points the view at the new misc table.
pub async fn swap(live: &SqlTarget, new_prefix: &str, old_prefix: &str) -> Result<(), SqlError> {
    let mut existing = Vec::new();
    for base in TABLES {
        if table_exists(live, base).await? {
            existing.push(*base);
        }
    }
    // the target of a rename is a bare name (same schema / database)
    let name = |prefix: &str, base: &str| format!("\"{prefix}{base}\"");
    // the view as the migrations create it, for the live names
    let view_sql = crate::migrate::view_statement(live)?;
    let drop_views = [
        format!("DROP VIEW IF EXISTS {}", live.table(VIEW)),
        format!(
            "DROP VIEW IF EXISTS {}",
            live.table_with_prefix(new_prefix, VIEW)
        ),
    ];
    match live.dialect {
        Dialect::MySql => {
            let mut conn = live.pool.acquire().await?;
            for statement in &drop_views {
                conn.execute(statement.as_str()).await?;
            }
            let mut renames = Vec::new();
            for base in TABLES {
                if existing.contains(base) {
                    renames.push(format!(
                        "{} TO {}",
                        live.table(base),
                        name(old_prefix, base)
                    ));
                }
                renames.push(format!(
                    "{} TO {}",
                    live.table_with_prefix(new_prefix, base),
                    live.table(base)
                ));
            }
            conn.execute(format!("RENAME TABLE {}", renames.join(", ")).as_str())
                .await?;
            conn.execute(view_sql.as_str()).await?;
        }
        Dialect::Postgres | Dialect::Sqlite => {
            let mut tx = live.pool.begin().await?;
            if live.dialect == Dialect::Postgres && existing.contains(&INGEST_POSITIONS) {
                // writers take the positions first; waiting here lets a batch in flight finish
                tx.execute(
                    format!(
                        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                        live.table(INGEST_POSITIONS)
                    )
                    .as_str(),
                )
                .await?;
            }
            for statement in &drop_views {
                tx.execute(statement.as_str()).await?;
            }
            for base in TABLES {
                if existing.contains(base) {
                    tx.execute(
                        format!(
                            "ALTER TABLE {} RENAME TO {}",
                            live.table(base),
                            name(old_prefix, base)
                        )
                        .as_str(),
                    )
                    .await?;
                }
                tx.execute(
                    format!(
                        "ALTER TABLE {} RENAME TO {}",
                        live.table_with_prefix(new_prefix, base),
                        name(&live.prefix, base)
                    )
                    .as_str(),
                )
                .await?;
            }
            tx.execute(view_sql.as_str()).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Drops every table of a projection (used for replaced tables after a swap).
pub async fn drop_tables(target: &SqlTarget) -> Result<(), SqlError> {
    let mut conn = target.pool.acquire().await?;
    conn.execute(format!("DROP VIEW IF EXISTS {}", target.table(VIEW)).as_str())
        .await?;
    for base in TABLES.iter().rev() {
        let cascade = if target.dialect == Dialect::Postgres {
            " CASCADE"
        } else {
            ""
        };
        conn.execute(format!("DROP TABLE IF EXISTS {}{cascade}", target.table(base)).as_str())
            .await?;
    }
    Ok(())
}
