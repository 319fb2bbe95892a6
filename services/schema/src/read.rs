//! Reading the tables: a statement's rows as typed [`Value`]s (one code path for Postgres,
//! MySQL and SQLite), and the rows readers use, decoded once by column name: [`UserRow`],
//! [`UserEventRow`], [`PayloadIndexRow`].

use sqlx::{Column, Executor, Row};

use crate::tables::{INGEST_PAYLOADS, INGEST_USER_EVENTS, INGEST_USERS, TERRA_USERS};
use crate::{Dialect, SqlError, SqlTarget, Stmt};

/// One cell, as the database typed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Text (MySQL's TEXT, which sqlx's Any driver sees as a BLOB, too: as UTF-8).
    Text(String),
}

impl Value {
    /// The cell as text: numbers as their decimal text, NULL as `None`.
    pub fn into_text(self) -> Option<String> {
        match self {
            Self::Null => None,
            Self::Int(n) => Some(n.to_string()),
            Self::Float(f) => Some(f.to_string()),
            Self::Bool(b) => Some(b.to_string()),
            Self::Text(s) => Some(s),
        }
    }

    /// An integer cell (text holding an integer too); `None` for NULL or anything else.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(n) => Some(*n),
            Self::Text(s) => s.parse().ok(),
            _ => None,
        }
    }
}

/// Rows of a statement, each cell typed. `CAST(x AS TEXT)` is rewritten for MySQL. On a
/// [`SqlTarget::reader`] for Postgres the rows come through the native pool.
pub async fn fetch(target: &SqlTarget, stmt: &Stmt) -> Result<Vec<Vec<Value>>, SqlError> {
    let rewritten;
    let stmt = if target.dialect() == Dialect::MySql && stmt.sql.contains("AS TEXT)") {
        rewritten = Stmt {
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
                    .map(|(i, kind)| kind.value(row, i))
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
                    row.try_get::<Option<i64>, _>(i)?.map(Value::Int)
                }
                // MySQL's TEXT reaches sqlx's Any driver as a BLOB
                Kind::Blob => row
                    .try_get::<Option<Vec<u8>>, _>(i)?
                    .map(|b| Value::Text(String::from_utf8_lossy(&b).into_owned())),
                Kind::Bool => row.try_get::<Option<bool>, _>(i)?.map(Value::Bool),
                Kind::Real | Kind::Double => row.try_get::<Option<f64>, _>(i)?.map(Value::Float),
                Kind::Text => row.try_get::<Option<String>, _>(i)?.map(Value::Text),
            };
            values.push(value.unwrap_or(Value::Null));
        }
        out.push(values);
    }
    Ok(out)
}

/// Rows of a statement selecting `T`'s columns, decoded as `T`.
pub async fn fetch_as<T: FromRow>(target: &SqlTarget, stmt: &Stmt) -> Result<Vec<T>, SqlError> {
    Ok(fetch(target, stmt)
        .await?
        .into_iter()
        .map(|row| T::from_row(Cells(row.into_iter())))
        .collect())
}

/// A row type readers select: its column list and how one row of them decodes.
pub trait FromRow: Sized {
    /// The select list, in the order [`FromRow::from_row`] reads it.
    const COLUMNS: &'static str;
    fn from_row(cells: Cells) -> Self;
}

/// The cells of one row, taken in select-list order.
pub struct Cells(std::vec::IntoIter<Value>);

impl Cells {
    fn next(&mut self) -> Value {
        self.0.next().unwrap_or(Value::Null)
    }

    /// Text or `None` for NULL.
    pub fn opt_text(&mut self) -> Option<String> {
        self.next().into_text()
    }

    /// Text, empty for NULL.
    pub fn text(&mut self) -> String {
        self.opt_text().unwrap_or_default()
    }

    /// An integer or `None` for NULL.
    pub fn opt_int(&mut self) -> Option<i64> {
        self.next().as_i64()
    }

    /// An integer, 0 for NULL.
    pub fn int(&mut self) -> i64 {
        self.opt_int().unwrap_or(0)
    }
}

/// A user: Terra's `terra_users` row with what `ingest_users` keeps beside it. Select from
/// [`UserRow::from_clause`].
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub user_id: String,
    pub provider: String,
    pub reference_id: Option<String>,
    pub granted_scopes: Option<String>,
    pub state: String,
    /// As text whatever the column's type (Terra's text, Supabase's TIMESTAMPTZ).
    pub created_at: String,
    pub first_seen_ms: Option<i64>,
    pub updated_at_ms: Option<i64>,
}

impl UserRow {
    /// `terra_users u LEFT JOIN ingest_users i`.
    pub fn from_clause(target: &SqlTarget) -> String {
        format!(
            "{} u LEFT JOIN {} i ON i.user_id = u.user_id",
            target.table(TERRA_USERS),
            target.table(INGEST_USERS)
        )
    }
}

impl FromRow for UserRow {
    /// `CAST(x AS TEXT)` reads typed (Supabase) and text columns alike.
    const COLUMNS: &'static str = "u.user_id, u.provider, u.reference_id, u.granted_scopes, u.state, CAST(u.created_at AS TEXT), i.first_seen_ms, i.updated_at_ms";

    fn from_row(mut c: Cells) -> Self {
        Self {
            user_id: c.text(),
            provider: c.text(),
            reference_id: c.opt_text(),
            granted_scopes: c.opt_text(),
            state: c.text(),
            created_at: c.text(),
            first_seen_ms: c.opt_int(),
            updated_at_ms: c.opt_int(),
        }
    }
}

/// One step of a user's lifecycle (`ingest_user_events`).
#[derive(Debug, Clone, PartialEq)]
pub struct UserEventRow {
    pub event_type: String,
    pub user_role: String,
    pub status: Option<String>,
    pub state: Option<String>,
    pub provider: Option<String>,
    pub reference_id: Option<String>,
    pub scopes: Option<String>,
    pub payload_id: String,
    pub envelope_id: String,
    pub version_ts_ms: i64,
    pub received_at_ms: i64,
    pub log_partition: i64,
    pub log_offset: i64,
    pub event_id: String,
}

impl UserEventRow {
    pub fn table(target: &SqlTarget) -> String {
        target.table(INGEST_USER_EVENTS)
    }
}

impl FromRow for UserEventRow {
    const COLUMNS: &'static str = "event_type, user_role, status, state, provider, reference_id, scopes, payload_id, envelope_id, version_ts_ms, received_at_ms, log_partition, log_offset, event_id";

    fn from_row(mut c: Cells) -> Self {
        Self {
            event_type: c.text(),
            user_role: c.text(),
            status: c.opt_text(),
            state: c.opt_text(),
            provider: c.opt_text(),
            reference_id: c.opt_text(),
            scopes: c.opt_text(),
            payload_id: c.text(),
            envelope_id: c.text(),
            version_ts_ms: c.int(),
            received_at_ms: c.int(),
            log_partition: c.int(),
            log_offset: c.int(),
            event_id: c.text(),
        }
    }
}

/// One payload in the index (`ingest_payloads`).
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadIndexRow {
    pub payload_id: String,
    pub kind: String,
    pub event_type: String,
    pub user_id: Option<String>,
    pub natural_key: String,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub start_utc: Option<String>,
    pub envelope_id: String,
    pub log_partition: i64,
    pub log_offset: i64,
    pub version_ts_ms: i64,
    pub received_at_ms: i64,
    pub body_size: i64,
    pub body_sha256: String,
    /// The last-writer-wins identity (page cursors).
    pub row_key: String,
    pub record_index: i64,
}

impl PayloadIndexRow {
    pub fn table(target: &SqlTarget) -> String {
        target.table(INGEST_PAYLOADS)
    }
}

impl FromRow for PayloadIndexRow {
    const COLUMNS: &'static str = "payload_id, kind, event_type, user_id, natural_key, start_time, end_time, start_utc, envelope_id, log_partition, log_offset, version_ts_ms, received_at_ms, body_size, body_sha256, row_key, record_index";

    fn from_row(mut c: Cells) -> Self {
        Self {
            payload_id: c.text(),
            kind: c.text(),
            event_type: c.text(),
            user_id: c.opt_text(),
            natural_key: c.text(),
            start_time: c.opt_text(),
            end_time: c.opt_text(),
            start_utc: c.opt_text(),
            envelope_id: c.text(),
            log_partition: c.int(),
            log_offset: c.int(),
            version_ts_ms: c.int(),
            received_at_ms: c.int(),
            body_size: c.int(),
            body_sha256: c.text(),
            row_key: c.text(),
            record_index: c.int(),
        }
    }
}

/// How a Postgres column is read.
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

    /// Column `i` of `row` (whose type is this kind: checked once per result).
    fn value(self, row: &sqlx::postgres::PgRow, i: usize) -> Result<Value, sqlx::Error> {
        let value = match self {
            Self::Int2 => row
                .try_get_unchecked::<Option<i16>, _>(i)?
                .map(|v| Value::Int(v.into())),
            Self::Int4 => row
                .try_get_unchecked::<Option<i32>, _>(i)?
                .map(|v| Value::Int(v.into())),
            Self::Int8 => row.try_get_unchecked::<Option<i64>, _>(i)?.map(Value::Int),
            Self::Bool => row
                .try_get_unchecked::<Option<bool>, _>(i)?
                .map(Value::Bool),
            Self::Float4 => row
                .try_get_unchecked::<Option<f32>, _>(i)?
                .map(|v| Value::Float(v.into())),
            Self::Float8 => row
                .try_get_unchecked::<Option<f64>, _>(i)?
                .map(Value::Float),
            Self::Bytes => row
                .try_get_unchecked::<Option<Vec<u8>>, _>(i)?
                .map(|b| Value::Text(String::from_utf8_lossy(&b).into_owned())),
            Self::Text => row
                .try_get_unchecked::<Option<String>, _>(i)?
                .map(Value::Text),
        };
        Ok(value.unwrap_or(Value::Null))
    }
}
