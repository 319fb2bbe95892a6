//! What of a database error, or of a text quoting a database URL, may reach a log line, an
//! error message or a dead-letter reason. Database messages can quote row values (Postgres
//! `invalid input syntax for type timestamp: "…"`, MySQL `Duplicate entry '…' for key …`,
//! `Incorrect string value: '\xF0…' for column …`), and row values are health data: only the
//! message's wording up to the first quoted or `:`-introduced part is kept, with the
//! structured parts that name things, never values (SQLSTATE or SQLite code, MySQL error
//! number, constraint, table, column). URLs lose their password and secret-looking
//! parameters.

use sqlx::error::DatabaseError;

/// The longest wording kept of a database message.
const MAX_SUMMARY: usize = 160;

/// A sqlx error as text that names no value and no password: every error text of the SQL
/// sink goes through here.
pub fn describe_error(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => describe_db_error(db.as_ref()),
        other => redact(&other.to_string()),
    }
}

/// A database's refusal as `<wording> (code C[, mysql error N][, constraint K][, table T][,
/// column C])`.
pub fn describe_db_error(db: &dyn DatabaseError) -> String {
    let message = db.message();
    let summary = summary(message);
    let mut parts = Vec::new();
    if let Some(code) = db.code() {
        parts.push(format!("code {code}"));
    }
    let mut constraint = db.constraint().map(str::to_owned);
    let table = db.table().map(str::to_owned);
    let mut column = None;
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        column = pg.column().map(str::to_owned);
    }
    if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        parts.push(format!("mysql error {}", mysql.number()));
        constraint = constraint.or_else(|| mysql_key(message));
        column = mysql_column(message);
    }
    let mut sqlite_names = None;
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // `UNIQUE constraint failed: t.a, t.b`: SQLite names columns, never values
        sqlite_names = message
            .split_once(": ")
            .map(|(_, names)| names)
            .filter(|names| names.split(", ").all(is_identifier));
    }
    let named = [
        ("constraint", constraint.as_deref()),
        ("table", table.as_deref()),
        ("column", column.as_deref()),
        ("columns", sqlite_names),
    ];
    for (what, name) in named {
        if let Some(name) = name.filter(|n| is_identifier(n)) {
            parts.push(format!("{what} {name}"));
        }
    }
    format!("{summary} ({})", parts.join(", "))
}

/// Words after which Postgres double-quotes a schema name, never a row value (`column
/// "attempts" is of type integer but …`, `relation "t" does not exist`).
const NAMING_WORDS: [&str; 5] = ["column ", "relation ", "table ", "constraint ", "index "];

/// The message up to its first quoted or `:`/`=`-introduced part (where values go). A
/// double-quoted identifier right after a [`NAMING_WORDS`] word is kept, unquoted: it names
/// a column or table (a type mismatch's column was lost, issue 16's webhook duplicate).
fn summary(message: &str) -> String {
    let mut kept = String::new();
    let mut rest = message;
    let end = loop {
        let cut = rest
            .find(['\'', '"', '`', ':', '=', '\\'])
            .unwrap_or(rest.len());
        let (before, after) = rest.split_at(cut);
        kept.push_str(before);
        let named = after.strip_prefix('"').and_then(|quoted| {
            let (name, tail) = quoted.split_once('"')?;
            let after_word = NAMING_WORDS.iter().any(|w| kept.ends_with(w));
            (after_word && is_identifier(name)).then_some((name, tail))
        });
        match named {
            Some((name, tail)) => {
                kept.push_str(name);
                rest = tail;
            }
            None => break kept.len(),
        }
    };
    let message = kept.as_str();
    let mut summary: String = message[..end].chars().take(MAX_SUMMARY).collect();
    summary = summary
        .trim_end_matches(|c: char| c.is_whitespace() || c == ',' || c == '(')
        .to_owned();
    if summary.is_empty() {
        summary = "database error".to_owned();
    }
    summary
}

/// Names only: letters, digits, `_`, `$`, `.` (schema-qualified), at most 128 characters.
fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'.')
}

/// MySQL/MariaDB put the key after the value (`Duplicate entry '…' for key 'PRIMARY'`), and
/// a foreign key's name in `CONSTRAINT `…``: the last one is the server's.
fn mysql_key(message: &str) -> Option<String> {
    if let Some(at) = message.rfind(" for key '") {
        let rest = &message[at + " for key '".len()..];
        return rest
            .strip_suffix('\'')
            .filter(|name| is_identifier(name))
            .map(str::to_owned);
    }
    let at = message.rfind("CONSTRAINT `")?;
    let rest = &message[at + "CONSTRAINT `".len()..];
    rest.split_once('`').map(|(name, _)| name.to_owned())
}

/// The column of `… for column 'c' at row 1`, `… for column `db`.`t`.`c` at row 1` or
/// `Column 'c' cannot be null` (after any value, so the last mention).
fn mysql_column(message: &str) -> Option<String> {
    let lower = message.to_ascii_lowercase();
    let at = lower.rfind("column ")?;
    let rest = &message[at + "column ".len()..];
    let quoted = rest.split(' ').next()?;
    let last = quoted.rsplit('.').next()?;
    let name = last.trim_matches(|c| c == '\'' || c == '`' || c == '"');
    is_identifier(name).then(|| name.to_owned())
}

/// Parameter names whose values are secrets (`password`, `sslpassword`, `sasl.password`,
/// `client_secret`, `token`, `access_token`, `api_key`, `sslkey`, ...).
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "passwd", "pwd", "secret", "token", "credential"]
        .iter()
        .any(|s| name.contains(s))
        || name.ends_with("key")
}

/// Removes passwords from text that may quote URLs (`scheme://user:PASSWORD@host`, with a
/// password that may itself hold `/`, `@`, `:` or percent escapes) and the values of
/// secret-looking parameters (`?password=…`, `&sslpassword=…`, `token=…`, `api_key=…`).
pub fn redact(text: &str) -> String {
    redact_parameters(&redact_userinfo(text))
}

fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // the URL runs to the next whitespace; its userinfo to the last `@` in it (a raw `@`,
        // `/` or `:` in a password then stays inside what is removed)
        let end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        let url = &tail[..end];
        match url.rfind('@') {
            Some(at_sign) if url[..at_sign].contains(':') => {
                let user = url[..at_sign].split(':').next().unwrap_or("");
                out.push_str(user);
                out.push_str(":***@");
                out.push_str(&url[at_sign + 1..]);
            }
            _ => out.push_str(url),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn redact_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let before = &rest[..eq];
        let name_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
            .map_or(0, |i| {
                i + before[i..].chars().next().map_or(1, char::len_utf8)
            });
        let name = &before[name_start..];
        out.push_str(&rest[..=eq]);
        let after = &rest[eq + 1..];
        if name.is_empty() || !is_secret_name(name) {
            rest = after;
            continue;
        }
        let value_len = match after.chars().next() {
            Some(q @ ('\'' | '"')) => after[1..].find(q).map_or(after.len(), |i| i + 2),
            _ => after
                .find(|c: char| c == '&' || c == ';' || c == ',' || c.is_whitespace())
                .unwrap_or(after.len()),
        };
        out.push_str("***");
        rest = &after[value_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn url_passwords_and_secret_parameters_are_redacted() {
        let cases = [
            (
                "bad url postgres://app:s3cret@db:5432/x here",
                "bad url postgres://app:***@db:5432/x here",
            ),
            ("mysql://root@h/db", "mysql://root@h/db"),
            ("no url", "no url"),
            ("postgres://app:pa/ss@db/x", "postgres://app:***@db/x"),
            (
                "postgres://app:p@ss:w/rd@db:5432/x?sslmode=require",
                "postgres://app:***@db:5432/x?sslmode=require",
            ),
            (
                "postgres://app:p%40s%2Fs%3A@db/x",
                "postgres://app:***@db/x",
            ),
            (
                "postgres://db/x?user=app&password=s3cret&sslmode=disable",
                "postgres://db/x?user=app&password=***&sslmode=disable",
            ),
            (
                "postgres://db/x?sslpassword=s3cret",
                "postgres://db/x?sslpassword=***",
            ),
            (
                "s3://b?token=abc&secret=def&api_key=ghi&region=eu",
                "s3://b?token=***&secret=***&api_key=***&region=eu",
            ),
            (
                "host=db password='a b' user=app",
                "host=db password=*** user=app",
            ),
            (
                "\"postgres://u:x\"y@h/db\" failed",
                "\"postgres://u:***@h/db\" failed",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(redact(text), want, "{text}");
        }
    }

    fn secret() -> impl Strategy<Value = String> {
        // printable, no whitespace (a URL cannot hold it raw); `/`, `@`, `:`, `%`, `?`, `#`,
        // `&`, quotes included; a marker so the secret cannot occur in the rest by chance
        "[!-~]{0,24}".prop_map(|s| format!("S3CR3T{s}"))
    }

    proptest! {
        #[test]
        fn no_userinfo_password_survives(
            scheme in "(postgres|postgresql|mysql|mariadb|s3|kafka)",
            user in "[a-z][a-z0-9_]{0,8}",
            password in secret(),
            host in "[a-z]{1,8}(:[0-9]{1,5})?",
            query in "(\\?sslmode=require)?",
            prefix in "[a-z :]{0,10}",
        ) {
            let encoded: String = password
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            for pw in [&password, &encoded] {
                let text = format!("{prefix} {scheme}://{user}:{pw}@{host}/db{query} then");
                let out = redact(&text);
                prop_assert!(!out.contains(pw.as_str()), "{text} -> {out}");
                prop_assert!(out.contains(&format!("{user}:***@")), "{text} -> {out}");
            }
        }

        #[test]
        fn no_secret_parameter_survives(
            name in "(password|sslpassword|PASSWORD|sasl.password|secret|client_secret|token|access_token|key|api_key|sslkey)",
            value in "[!-~&&[^&;,'\"]]{0,24}".prop_map(|s| format!("S3CR3T{s}")),
            lead in "(\\?|&|[a-z]+=[a-z]+&)",
        ) {
            let text = format!("postgres://h/db{lead}{name}={value}&sslmode=disable");
            let out = redact(&text);
            prop_assert!(!out.contains(&value), "{text} -> {out}");
            prop_assert!(out.ends_with("&sslmode=disable"), "{text} -> {out}");
        }
    }

    #[test]
    fn summaries_stop_where_values_start() {
        let cases = [
            (
                "invalid input syntax for type timestamp with time zone: \"2026-13-45 S3CR3T\"",
                "invalid input syntax for type timestamp with time zone",
            ),
            (
                "Duplicate entry 'S3CR3T' for key 'PRIMARY'",
                "Duplicate entry",
            ),
            (
                "Incorrect string value: '\\xF0\\x9F\\x98\\x80' for column `t`.`x`.`c` at row 1",
                "Incorrect string value",
            ),
            (
                "value too long for type character varying(36)",
                "value too long for type character varying(36)",
            ),
            ("'S3CR3T' is odd", "database error"),
            (
                "column \"attempts\" is of type integer but expression is of type text",
                "column attempts is of type integer but expression is of type text",
            ),
            (
                "column \"x\" of relation \"payloads\" does not exist",
                "column x of relation payloads does not exist",
            ),
            // a value in double quotes stays out, after a naming word or not
            ("value \"S3CR3T\" is out of range for type integer", "value"),
            ("column \"S3 CR3T\" is odd", "column"),
        ];
        for (message, want) in cases {
            assert_eq!(summary(message), want, "{message}");
        }
        assert_eq!(
            mysql_key("Duplicate entry 'a for key 'x'' for key 'PRIMARY'").as_deref(),
            Some("PRIMARY")
        );
        assert_eq!(
            mysql_column("Incorrect string value: '\\xF0' for column `db`.`t`.`user_id` at row 1")
                .as_deref(),
            Some("user_id")
        );
        assert_eq!(
            mysql_column("Data too long for column 'user_id' at row 1").as_deref(),
            Some("user_id")
        );
        assert_eq!(
            mysql_column("Column 'provider' cannot be null").as_deref(),
            Some("provider")
        );
    }
}
