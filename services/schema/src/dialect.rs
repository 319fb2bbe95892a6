//! The SQL that differs between Postgres, MySQL/MariaDB and SQLite: bind placeholders,
//! upserts, `FOR UPDATE`, `GREATEST`. Statements are built as text with placeholders only;
//! every value is bound.

use std::fmt::Write as _;

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Arguments};

use crate::SqlError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    /// The dialect a database URL names.
    pub fn of_url(url: &str) -> Result<Self, SqlError> {
        let scheme = url.split(':').next().unwrap_or("");
        match scheme {
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "mysql" | "mariadb" => Ok(Self::MySql),
            "sqlite" => Ok(Self::Sqlite),
            other => Err(SqlError::Config(format!(
                "database URL scheme {other:?} is not supported: use postgres://, mysql:// (MariaDB too) or sqlite://"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::MySql => "mysql",
            Self::Sqlite => "sqlite",
        }
    }

    /// `FOR UPDATE` where the database has row locks.
    pub fn for_update(self) -> &'static str {
        match self {
            Self::Postgres | Self::MySql => " FOR UPDATE",
            Self::Sqlite => "",
        }
    }

    /// ` ON CONFLICT (key) DO NOTHING` or its MySQL twin.
    pub fn on_conflict_ignore(self, key: &[&str]) -> String {
        match self {
            Self::Postgres | Self::Sqlite => {
                format!(" ON CONFLICT ({}) DO NOTHING", key.join(", "))
            }
            Self::MySql => format!(" ON DUPLICATE KEY UPDATE {0} = {0}", key[0]),
        }
    }

    /// ` ON CONFLICT (key) DO UPDATE SET c = excluded.c, ...` or its MySQL twin.
    pub fn on_conflict_update(self, key: &[&str], columns: &[&str]) -> String {
        let sets: Vec<String> = columns
            .iter()
            .map(|c| match self {
                Self::Postgres | Self::Sqlite => format!("{c} = excluded.{c}"),
                Self::MySql => format!("{c} = VALUES({c})"),
            })
            .collect();
        match self {
            Self::Postgres | Self::Sqlite => {
                format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    key.join(", "),
                    sets.join(", ")
                )
            }
            Self::MySql => format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", ")),
        }
    }

    /// An upsert that keeps the larger of the stored and the new value of `column`.
    pub fn on_conflict_max(self, table_alias: &str, key: &str, column: &str, also: &str) -> String {
        match self {
            Self::Postgres => format!(
                " ON CONFLICT ({key}) DO UPDATE SET {column} = GREATEST({table_alias}.{column}, excluded.{column}), {also} = excluded.{also}"
            ),
            Self::Sqlite => format!(
                " ON CONFLICT ({key}) DO UPDATE SET {column} = MAX({column}, excluded.{column}), {also} = excluded.{also}"
            ),
            Self::MySql => format!(
                " ON DUPLICATE KEY UPDATE {column} = GREATEST({column}, VALUES({column})), {also} = VALUES({also})"
            ),
        }
    }

    /// Most bind parameters one statement may carry (SQLite's limit is the smallest).
    pub fn max_params(self) -> usize {
        match self {
            Self::Postgres | Self::MySql => 60_000,
            Self::Sqlite => 30_000,
        }
    }
}

/// A bound value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Text(Option<String>),
    Int(Option<i64>),
    Blob(Vec<u8>),
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Self::Text(Some(v.to_owned()))
    }
}
impl From<String> for Val {
    fn from(v: String) -> Self {
        Self::Text(Some(v))
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Self::Text(Some(v.clone()))
    }
}
impl From<Option<String>> for Val {
    fn from(v: Option<String>) -> Self {
        Self::Text(v)
    }
}
impl From<Option<&str>> for Val {
    fn from(v: Option<&str>) -> Self {
        Self::Text(v.map(str::to_owned))
    }
}
impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}
impl From<Option<i64>> for Val {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}

/// SQL text under construction with its bound values, placeholders in the dialect's form
/// (`$1` on Postgres, `?` elsewhere).
#[derive(Clone)]
pub struct Stmt {
    pub(crate) dialect: Dialect,
    pub(crate) sql: String,
    pub(crate) values: Vec<Val>,
}

impl Stmt {
    pub fn new(dialect: Dialect, sql: impl Into<String>) -> Self {
        Self {
            dialect,
            sql: sql.into(),
            values: Vec::new(),
        }
    }

    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends a placeholder bound to `value`, wrapped in `cast` (`CAST(? AS TIMESTAMPTZ)`)
    /// when given.
    pub fn bind_cast(&mut self, value: impl Into<Val>, cast: Option<&str>) -> &mut Self {
        self.values.push(value.into());
        // written in place: a statement of thousands of rows has tens of thousands of these
        if cast.is_some() {
            self.sql.push_str("CAST(");
        }
        match self.dialect {
            Dialect::Postgres => {
                let _ = write!(self.sql, "${}", self.values.len());
            }
            Dialect::MySql | Dialect::Sqlite => self.sql.push('?'),
        }
        if let Some(ty) = cast {
            let _ = write!(self.sql, " AS {ty})");
        }
        self
    }

    pub fn bind(&mut self, value: impl Into<Val>) -> &mut Self {
        self.bind_cast(value, None)
    }

    /// `(?, ?, ...)` for a list of values.
    pub fn bind_list<V: Into<Val>>(&mut self, values: impl IntoIterator<Item = V>) -> &mut Self {
        self.push("(");
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(value);
        }
        self.push(")")
    }

    /// The sqlx query with every value bound.
    pub fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut args = AnyArguments::default();
        for value in &self.values {
            // adding to AnyArguments cannot fail for these types
            let _ = match value {
                Val::Text(v) => args.add(v.clone()),
                Val::Int(v) => args.add(*v),
                Val::Blob(v) => args.add(v.clone()),
            };
        }
        sqlx::query_with(&self.sql, args)
    }

    /// The same statement for a native Postgres connection (see `SqlTarget::reader`).
    pub fn query_pg(&self) -> Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let mut query = sqlx::query(&self.sql);
        for value in &self.values {
            query = match value {
                Val::Text(v) => query.bind(v.as_deref()),
                Val::Int(v) => query.bind(*v),
                Val::Blob(v) => query.bind(v.as_slice()),
            };
        }
        query
    }
}

/// `INSERT INTO table (columns) VALUES (...), (...)` for `rows`, chunked so no statement
/// exceeds the dialect's parameter limit. `casts[i]` wraps column `i`'s placeholder.
pub fn insert_rows(
    dialect: Dialect,
    table: &str,
    columns: &[&str],
    casts: &[Option<&str>],
    rows: Vec<Vec<Val>>,
    suffix: &str,
) -> Vec<Stmt> {
    debug_assert!(casts.is_empty() || casts.len() == columns.len());
    let per_statement = (dialect.max_params() / columns.len()).max(1);
    let mut statements = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let mut stmt = Stmt::new(
            dialect,
            format!("INSERT INTO {table} ({}) VALUES ", columns.join(", ")),
        );
        for (n, row) in rows.by_ref().take(per_statement).enumerate() {
            debug_assert_eq!(row.len(), columns.len());
            stmt.push(if n == 0 { "(" } else { ", (" });
            for (i, value) in row.into_iter().enumerate() {
                if i > 0 {
                    stmt.push(", ");
                }
                stmt.bind_cast(value, casts.get(i).copied().flatten());
            }
            stmt.push(")");
        }
        stmt.push(suffix);
        statements.push(stmt);
    }
    statements
}

/// The statements inserting `rows` (no casts): on Postgres one [`insert_unnest`], elsewhere
/// [`insert_rows`]' `VALUES` lists under the parameter limit.
pub fn insert_all(
    dialect: Dialect,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Val>>,
    suffix: &str,
) -> Vec<Stmt> {
    match dialect {
        _ if rows.is_empty() => Vec::new(),
        Dialect::Postgres => vec![insert_unnest(table, columns, &rows, suffix)],
        Dialect::MySql | Dialect::Sqlite => insert_rows(dialect, table, columns, &[], rows, suffix),
    }
}

/// Postgres only: `INSERT INTO table (columns) SELECT ... FROM UNNEST($1::text[], ...)`, each
/// column's values bound as one array literal (`text[]`, `bigint[]` or `bytea[]` after the
/// column's values in the first row). One statement text for any number of rows, prepared
/// once per connection, and Postgres parses and plans a parameter per column instead of a
/// `VALUES` list of thousands of rows: in `psql`, 4,000 rows of `webhook_deliveries` took
/// 108 ms as `VALUES` (57-60 ms of it parsing and planning: the same statement that then
/// inserted nothing) and 59 ms through `UNNEST` (22 ms). A column whose value is the same in
/// every row (a chunk's endpoint, state, timestamps, NULLs) is bound once as a scalar
/// instead (`$n::bigint` in the select list): Postgres parses every element of an array, and
/// in `psql` 102,400 rows of `webhook_deliveries` with 12 of their 17 columns constant took
/// 0.92 s against 1.06-1.12 s all as arrays. The first column stays an array when every
/// column is constant, so that the rows are still counted.
pub fn insert_unnest(table: &str, columns: &[&str], rows: &[Vec<Val>], suffix: &str) -> Stmt {
    let constant: Vec<bool> = (0..columns.len())
        .map(|i| {
            let first = rows.first().and_then(|row| row.get(i));
            rows.iter().all(|row| row.get(i) == first)
        })
        .collect();
    let any_array = constant.iter().any(|c| !c);
    let mut stmt = Stmt::new(
        Dialect::Postgres,
        format!("INSERT INTO {table} ({}) SELECT ", columns.join(", ")),
    );
    let is_array = |i: usize| !constant[i] || (!any_array && i == 0);
    let mut arrays = Vec::new();
    for i in 0..columns.len() {
        let first = rows.first().and_then(|row| row.get(i));
        let ty = match first {
            Some(Val::Int(_)) => "bigint",
            Some(Val::Blob(_)) => "bytea",
            Some(Val::Text(_)) | None => "text",
        };
        if i > 0 {
            stmt.push(", ");
        }
        if is_array(i) {
            let _ = write!(stmt.sql, "u.c{i}");
            let mut literal = String::from("{");
            for (n, row) in rows.iter().enumerate() {
                if n > 0 {
                    literal.push(',');
                }
                array_element(&mut literal, row.get(i));
            }
            literal.push('}');
            arrays.push((i, ty, literal));
        } else {
            stmt.bind(first.cloned().unwrap_or(Val::Text(None)));
            let _ = write!(stmt.sql, "::{ty}");
        }
    }
    stmt.push(" FROM UNNEST(");
    for (n, (_, ty, literal)) in arrays.iter().enumerate() {
        if n > 0 {
            stmt.push(", ");
        }
        stmt.bind(literal.clone());
        let _ = write!(stmt.sql, "::{ty}[]");
    }
    stmt.push(") AS u(");
    for (n, (i, _, _)) in arrays.iter().enumerate() {
        if n > 0 {
            stmt.push(", ");
        }
        let _ = write!(stmt.sql, "c{i}");
    }
    stmt.push(")");
    if !suffix.is_empty() {
        stmt.push(" ");
        stmt.push(suffix.trim_start());
    }
    stmt
}

/// One element of a Postgres array literal: `NULL`, a number, or a double-quoted string with
/// `"` and `\` escaped (a blob as `\x` and its hex, bytea's input form).
fn array_element(out: &mut String, value: Option<&Val>) {
    match value {
        Some(Val::Int(Some(n))) => {
            let _ = write!(out, "{n}");
        }
        Some(Val::Text(Some(text))) => {
            out.push('"');
            for c in text.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        Some(Val::Blob(bytes)) => {
            out.push_str("\"\\\\x");
            out.push_str(&hex_of(bytes));
            out.push('"');
        }
        Some(Val::Int(None) | Val::Text(None)) | None => out.push_str("NULL"),
    }
}

fn hex_of(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        hex.push(DIGITS[usize::from(b >> 4)]);
        hex.push(DIGITS[usize::from(b & 15)]);
    }
    String::from_utf8(hex).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnest_binds_one_array_literal_per_column() {
        let rows = vec![
            vec![
                Val::from(1i64),
                Val::from(r#"a "quoted", {braced} \ NULL"#),
                Val::Blob(vec![0, 255]),
            ],
            vec![
                Val::from(None::<i64>),
                Val::from(None::<String>),
                Val::Blob(vec![]),
            ],
            vec![Val::from(-7i64), Val::from("NULL"), Val::Blob(vec![16])],
        ];
        let stmt = insert_unnest("t", &["a", "b", "c"], &rows, "RETURNING a");
        assert_eq!(
            stmt.sql,
            "INSERT INTO t (a, b, c) SELECT u.c0, u.c1, u.c2 FROM UNNEST($1::bigint[], $2::text[], $3::bytea[]) AS u(c0, c1, c2) RETURNING a"
        );
        let texts: Vec<&str> = stmt
            .values
            .iter()
            .map(|v| match v {
                Val::Text(Some(t)) => t.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            texts,
            vec![
                "{1,NULL,-7}",
                r#"{"a \"quoted\", {braced} \\ NULL",NULL,"NULL"}"#,
                r#"{"\\x00ff","\\x","\\x10"}"#,
            ]
        );
    }

    #[test]
    fn unnest_binds_a_column_constant_in_every_row_once() {
        let row = |n: i64| vec![Val::from("e"), Val::from(n), Val::from(None::<i64>)];
        let stmt = insert_unnest("t", &["a", "b", "c"], &[row(1), row(2)], "");
        assert_eq!(
            stmt.sql,
            "INSERT INTO t (a, b, c) SELECT $1::text, u.c1, $2::bigint FROM UNNEST($3::bigint[]) AS u(c1)"
        );
        assert_eq!(
            stmt.values,
            [
                Val::from("e"),
                Val::from(None::<i64>),
                Val::from("{1,2}".to_owned())
            ]
        );
        // every column constant (one row): the first stays an array, so the row is counted
        let stmt = insert_unnest("t", &["a", "b", "c"], &[row(1)], "");
        assert_eq!(
            stmt.sql,
            "INSERT INTO t (a, b, c) SELECT u.c0, $1::bigint, $2::bigint FROM UNNEST($3::text[]) AS u(c0)"
        );
        assert_eq!(
            stmt.values,
            [
                Val::from(1i64),
                Val::from(None::<i64>),
                Val::from("{\"e\"}".to_owned())
            ]
        );
    }

    #[test]
    fn placeholders_follow_the_dialect() {
        let mut pg = Stmt::new(Dialect::Postgres, "SELECT 1 WHERE a = ");
        pg.bind("x").push(" AND b IN ").bind_list([1i64, 2]);
        assert_eq!(pg.sql, "SELECT 1 WHERE a = $1 AND b IN ($2, $3)");
        let mut my = Stmt::new(Dialect::MySql, "SELECT 1 WHERE a = ");
        my.bind_cast("x", Some("TIMESTAMPTZ"));
        assert_eq!(my.sql, "SELECT 1 WHERE a = CAST(? AS TIMESTAMPTZ)");
    }

    #[test]
    fn inserts_are_chunked_under_the_parameter_limit() {
        let rows: Vec<Vec<Val>> = (0..20_000i64)
            .map(|i| vec![Val::from(i), Val::from("v")])
            .collect();
        let statements = insert_rows(Dialect::Sqlite, "t", &["a", "b"], &[], rows, "");
        assert_eq!(statements.len(), 2);
        assert!(
            statements
                .iter()
                .all(|s| s.values.len() <= Dialect::Sqlite.max_params())
        );
        assert_eq!(
            statements.iter().map(|s| s.values.len()).sum::<usize>(),
            40_000
        );
    }

    #[test]
    fn upserts_per_dialect() {
        assert_eq!(
            Dialect::MySql.on_conflict_update(&["k"], &["a", "b"]),
            " ON DUPLICATE KEY UPDATE a = VALUES(a), b = VALUES(b)"
        );
        assert_eq!(
            Dialect::Postgres.on_conflict_ignore(&["k"]),
            " ON CONFLICT (k) DO NOTHING"
        );
    }
}
