//! Multi-row inserts: `VALUES` lists under a dialect's parameter limit, and on Postgres one
//! `INSERT … SELECT … FROM UNNEST(…)` of array literals.

use std::fmt::Write as _;

use crate::dialect::{Dialect, Stmt, Val};

/// The row counts of multi-row statements, largest first: `rows` are written in statements
/// of these sizes only, so a projector's inserts repeat a few statement texts, which each
/// connection prepares once and keeps. A `VALUES` list of a new length is a new statement to
/// parse and compile, and SQLite compiles code for every row of it: with the remainders of
/// every batch new, that was 6.5 % of the SQL projection's writer thread (issue 16).
pub(crate) const STATEMENT_ROWS: [usize; 5] = [256, 64, 16, 4, 1];

/// The sizes of the statements `rows` rows are written in: the largest of
/// [`STATEMENT_ROWS`] that fits the parameter limit (`per_statement` rows) while enough rows
/// are left, then smaller ones. At most 3 of each smaller size, so few statements per batch.
pub(crate) fn statement_sizes(mut rows: usize, per_statement: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    for size in STATEMENT_ROWS {
        if size > per_statement && size > 1 {
            continue;
        }
        while rows >= size {
            sizes.push(size);
            rows -= size;
        }
    }
    sizes
}

/// `INSERT INTO table (columns) VALUES (...), (...)` for `rows`, in statements of
/// [`statement_sizes`] rows, none over the dialect's parameter limit. `casts[i]` wraps column
/// `i`'s placeholder.
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
    let sizes = statement_sizes(rows.len(), per_statement);
    let mut statements = Vec::with_capacity(sizes.len());
    let mut rows = rows.into_iter();
    let head = format!(
        "{} {table} ({}) VALUES ",
        dialect.insert_into(),
        columns.join(", ")
    );
    for size in sizes {
        let mut stmt = Stmt::new(dialect, head.clone());
        for (n, row) in rows.by_ref().take(size).enumerate() {
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
    fn inserts_are_chunked_under_the_parameter_limit() {
        let rows: Vec<Vec<Val>> = (0..20_000i64)
            .map(|i| vec![Val::from(i), Val::from("v")])
            .collect();
        let statements = insert_rows(Dialect::Sqlite, "t", &["a", "b"], &[], rows, "");
        // 78 × 256 + 2 × 16 rows
        assert_eq!(statements.len(), 80);
        assert!(
            statements
                .iter()
                .all(|s| s.values.len() <= Dialect::Sqlite.max_params())
        );
        assert_eq!(
            statements.iter().map(|s| s.values.len()).sum::<usize>(),
            40_000
        );
        // the rows in order, none twice
        let firsts: Vec<&Val> = statements
            .iter()
            .flat_map(|s| s.values.iter().step_by(2))
            .collect();
        assert!(
            firsts
                .iter()
                .enumerate()
                .all(|(i, v)| **v == Val::from(i as i64))
        );
    }

    #[test]
    fn statements_come_in_a_few_sizes_whatever_the_row_count() {
        let mut texts = std::collections::HashSet::new();
        for n in 0..3_000usize {
            let sizes = statement_sizes(n, 30_000 / 21);
            assert_eq!(sizes.iter().sum::<usize>(), n, "{n} rows");
            assert!(
                sizes.windows(2).all(|w| w[0] >= w[1]),
                "largest first: {sizes:?}"
            );
            assert!(
                sizes.len() <= n / 256 + 12,
                "{n} rows in {} statements",
                sizes.len()
            );
            texts.extend(sizes);
        }
        assert_eq!(texts.len(), STATEMENT_ROWS.len());
        // a table too wide for the largest size takes the largest that fits
        assert_eq!(statement_sizes(130, 100), vec![64, 64, 1, 1]);
        // one row per statement when even that is over the limit
        assert_eq!(statement_sizes(2, 0), vec![1, 1]);
    }
}
