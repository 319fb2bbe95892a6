//! A deterministic dump of a projection's contents (everything but wall-clock write times),
//! to compare two projections of the same log: a rebuild with the live tables, a run that
//! was killed and restarted with a clean one.

use sqlx::{Column, Executor, Row};

use super::{Dialect, SqlError, SqlTarget};

/// Rows of every table, each column as optional text, in a fixed order.
pub type Snapshot = Vec<Vec<Vec<Option<String>>>>;

/// Dumps the projection `target` names.
pub async fn snapshot(target: &SqlTarget) -> Result<Snapshot, SqlError> {
    let t = |base: &str| target.table(base);
    let queries = [
        format!(
            "SELECT user_id, reference_id, CAST(created_at AS TEXT), granted_scopes, provider, state FROM {} ORDER BY user_id",
            t("terra_users")
        ),
        format!(
            "SELECT user_id, data_type, CAST(created_at AS TEXT), payload_id, CAST(start_time AS TEXT), CAST(end_time AS TEXT) FROM {} ORDER BY payload_id, user_id",
            t("terra_data_payloads")
        ),
        format!(
            "SELECT user_id, data_type, payload_type, CAST(created_at AS TEXT), payload_id FROM {} ORDER BY payload_id",
            t("terra_misc_payloads")
        ),
        format!(
            "SELECT row_key, kind, payload_id, user_id, natural_key, envelope_id, log_partition, log_offset, version_ts_ms, body_sha256, start_utc FROM {} ORDER BY row_key",
            t("ingest_payloads")
        ),
        format!(
            "SELECT event_id, user_id, event_type, user_role, state, log_partition, log_offset FROM {} ORDER BY event_id",
            t("ingest_user_events")
        ),
        format!(
            "SELECT user_id, first_seen_ms, state_version_ts_ms, state_partition, state_offset FROM {} ORDER BY user_id",
            t("ingest_users")
        ),
        format!(
            "SELECT log_partition, log_offset, reason, body_sha256 FROM {} ORDER BY log_partition, log_offset",
            t("ingest_dead_letters")
        ),
        format!(
            "SELECT log_partition, next_offset FROM {} ORDER BY log_partition",
            t("ingest_positions")
        ),
    ];
    let mut out = Vec::with_capacity(queries.len());
    for sql in queries {
        out.push(rows(target, &sql).await?);
    }
    Ok(out)
}

/// Every column of every row as optional text. `CAST(x AS TEXT)` is rewritten for MySQL.
pub async fn rows(target: &SqlTarget, sql: &str) -> Result<Vec<Vec<Option<String>>>, SqlError> {
    fetch_rows(target, &target.statement(sql)).await
}

/// Runs a statement with its bound values; every column of every row as optional text
/// (numbers as their decimal text; MySQL's TEXT, which sqlx's Any driver sees as a BLOB, as
/// UTF-8). `CAST(x AS TEXT)` is rewritten for MySQL.
pub async fn fetch_rows(
    target: &SqlTarget,
    stmt: &super::Stmt,
) -> Result<Vec<Vec<Option<String>>>, SqlError> {
    let rewritten;
    let stmt = if target.dialect == Dialect::MySql && stmt.sql.contains("AS TEXT)") {
        rewritten = super::Stmt {
            sql: stmt.sql.replace("AS TEXT)", "AS CHAR)"),
            ..stmt.clone()
        };
        &rewritten
    } else {
        stmt
    };
    if let Some(pg) = &target.pg_reads {
        let fetched = pg.fetch_all(stmt.query_pg()).await?;
        let Some(first) = fetched.first() else {
            return Ok(Vec::new());
        };
        // the columns' types once per result, not per cell
        let kinds: Vec<PgKind> = first
            .columns()
            .iter()
            .map(|c| PgKind::of(c.type_info()))
            .collect();
        return fetched
            .iter()
            .map(|row| {
                kinds
                    .iter()
                    .enumerate()
                    .map(|(i, kind)| kind.text(row, i))
                    .collect()
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(SqlError::from);
    }
    let fetched = target.pool.fetch_all(stmt.query()).await?;
    let mut out = Vec::with_capacity(fetched.len());
    for row in &fetched {
        let mut values = Vec::with_capacity(row.len());
        for i in 0..row.len() {
            use sqlx::ValueRef;
            use sqlx::any::AnyTypeInfoKind as Kind;
            // decode by the column's kind (a failed decode costs an error value per cell)
            let raw = row.try_get_raw(i)?;
            let kind = if raw.is_null() {
                Kind::Null
            } else {
                raw.type_info().kind()
            };
            let value = match kind {
                Kind::Null => None,
                Kind::SmallInt | Kind::Integer | Kind::BigInt => {
                    row.try_get::<Option<i64>, _>(i)?.map(|n| n.to_string())
                }
                // MySQL's TEXT reaches sqlx's Any driver as a BLOB
                Kind::Blob => row
                    .try_get::<Option<Vec<u8>>, _>(i)?
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                Kind::Bool => row.try_get::<Option<bool>, _>(i)?.map(|b| b.to_string()),
                Kind::Real | Kind::Double => {
                    row.try_get::<Option<f64>, _>(i)?.map(|f| f.to_string())
                }
                Kind::Text => row.try_get::<Option<String>, _>(i)?,
            };
            values.push(value);
        }
        out.push(values);
    }
    Ok(out)
}

/// How a Postgres column is read as text.
#[derive(Clone, Copy)]
enum PgKind {
    Int2,
    Int4,
    Int8,
    Bool,
    Float4,
    Float8,
    Bytes,
    /// TEXT, VARCHAR, CHAR, NAME: what every other column is read as (`CAST(x AS TEXT)`)
    Text,
}

impl PgKind {
    fn of(ty: &sqlx::postgres::PgTypeInfo) -> Self {
        use sqlx::TypeInfo;
        match ty.name() {
            "INT2" => Self::Int2,
            "INT4" => Self::Int4,
            "INT8" => Self::Int8,
            "BOOL" => Self::Bool,
            "FLOAT4" => Self::Float4,
            "FLOAT8" => Self::Float8,
            "BYTEA" => Self::Bytes,
            _ => Self::Text,
        }
    }

    /// Column `i` of `row` (whose type is this kind: checked once per result) as text.
    fn text(self, row: &sqlx::postgres::PgRow, i: usize) -> Result<Option<String>, sqlx::Error> {
        Ok(match self {
            Self::Int2 => row
                .try_get_unchecked::<Option<i16>, _>(i)?
                .map(|v| v.to_string()),
            Self::Int4 => row
                .try_get_unchecked::<Option<i32>, _>(i)?
                .map(|v| v.to_string()),
            Self::Int8 => row
                .try_get_unchecked::<Option<i64>, _>(i)?
                .map(|v| v.to_string()),
            Self::Bool => row
                .try_get_unchecked::<Option<bool>, _>(i)?
                .map(|v| v.to_string()),
            Self::Float4 => row
                .try_get_unchecked::<Option<f32>, _>(i)?
                .map(|v| v.to_string()),
            Self::Float8 => row
                .try_get_unchecked::<Option<f64>, _>(i)?
                .map(|v| v.to_string()),
            Self::Bytes => row
                .try_get_unchecked::<Option<Vec<u8>>, _>(i)?
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            Self::Text => row.try_get_unchecked::<Option<String>, _>(i)?,
        })
    }
}
