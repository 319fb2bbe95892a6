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

    /// How a multi-row insert starts. On SQLite `INSERT OR FAIL`: a statement that fails
    /// keeps the rows it inserted before, where the default (`ABORT`) undoes them, which
    /// makes SQLite journal every page the statement changes in case it has to. No caller
    /// commits a transaction after a failed statement (each returns the error and drops the
    /// transaction, which rolls it back; the one insert outside a transaction, registering
    /// the webhook endpoints, is idempotent), so the journal bought nothing: without it, a
    /// Python sqlite3 check of 4,000-row
    /// batches into a table like `ingest_user_events` took 1.7-1.9 s of CPU instead of
    /// 2.3-2.5 s. A conflict an `ON CONFLICT` clause names is still that clause's.
    pub fn insert_into(self) -> &'static str {
        match self {
            Self::Postgres | Self::MySql => "INSERT INTO",
            Self::Sqlite => "INSERT OR FAIL INTO",
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

    /// `(?, ?, ...)` for the values of an `IN` list, padded with copies of the last value to
    /// a power of 4 (1, 4, 16, 64, 256, 1,024): lookups of batches of every size then repeat
    /// a few statement texts, which each connection prepares once and keeps (a list of a new
    /// length is a new statement to parse and plan). Powers of 4, not of 2, so a writer's
    /// statements fit sqlx's statement cache of 100 per connection: the SQL sink has 5
    /// lookups (6 sizes each) beside 11 inserts (5 sizes each, `insert_rows`). The copies
    /// change nothing an `IN` list selects.
    pub fn bind_in_list<V: Into<Val>>(&mut self, values: impl IntoIterator<Item = V>) -> &mut Self {
        let mut values: Vec<Val> = values.into_iter().map(Into::into).collect();
        if let Some(last) = values.last().cloned() {
            let mut size = 1;
            while size < values.len() {
                size *= 4;
            }
            values.resize(size, last);
        }
        self.bind_list(values)
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
        self.query_native()
    }

    /// The same statement for a native connection of database `DB` (the object folder's
    /// SQLite index, `terra-sink-objects`).
    pub fn query_native<'q, DB: sqlx::Database>(
        &'q self,
    ) -> Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
    where
        Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        let mut query = sqlx::query::<DB>(&self.sql);
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn in_lists_are_padded_with_their_last_value_to_a_power_of_four() {
        let mut five = Stmt::new(Dialect::Sqlite, "SELECT 1 WHERE a IN ");
        five.bind_in_list(["a", "b", "c", "d", "e"]);
        assert_eq!(
            five.sql,
            format!("SELECT 1 WHERE a IN ({})", ["?"; 16].join(", "))
        );
        let mut expected: Vec<Val> = ["a", "b", "c", "d"].into_iter().map(Val::from).collect();
        expected.resize(16, Val::from("e"));
        assert_eq!(five.values, expected);
        let mut sixteen = Stmt::new(Dialect::Sqlite, "SELECT 1 WHERE a IN ");
        sixteen.bind_in_list((0..16i64).collect::<Vec<_>>());
        assert_eq!(sixteen.sql, five.sql, "the same text for 5 and 16 values");
        assert_eq!(sixteen.values.len(), 16);
        let mut four = Stmt::new(Dialect::Sqlite, "SELECT 1 WHERE a IN ");
        four.bind_in_list(["a", "b", "c", "d"]);
        assert_eq!(four.values.len(), 4);
        let mut sizes = std::collections::BTreeSet::new();
        for n in 1..=1_024i64 {
            let mut stmt = Stmt::new(Dialect::Sqlite, "");
            stmt.bind_in_list(0..n);
            assert!(stmt.values.len() >= n as usize && stmt.values.len() < 4 * n as usize);
            sizes.insert(stmt.values.len());
        }
        assert_eq!(
            sizes.into_iter().collect::<Vec<_>>(),
            [1, 4, 16, 64, 256, 1_024]
        );
        let mut one = Stmt::new(Dialect::Postgres, "SELECT 1 WHERE a IN ");
        one.bind_in_list(["a"]);
        assert_eq!(one.sql, "SELECT 1 WHERE a IN ($1)");
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
