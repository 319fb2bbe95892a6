//! Errors of the SQL tables, and the line between a record the database refuses (poison: dead
//! letter it, move on) and a database that is not there or not ready (outage: pause, retry,
//! skip nothing). Anything not known to be about the data is treated as an outage, so a
//! misconfiguration stops the projector instead of dead-lettering every record.

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// Settings are wrong (bad URL, schema name, ...): fix the configuration.
    #[error("SQL sink misconfigured: {0}")]
    Config(String),
    /// The database refused this data (constraint, value out of range, bad timestamp).
    #[error("the database rejected the data: {0}")]
    Rejected(String),
    /// The database is unreachable, timed out, deadlocked, or in a state to wait out.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Migrations found a schema they do not recognise.
    #[error("database schema problem: {0}")]
    Schema(String),
}

impl From<sqlx::Error> for SqlError {
    fn from(err: sqlx::Error) -> Self {
        classify(&err)
    }
}

/// Sorts a sqlx error. The text kept is [`crate::describe_error`]'s: the database's wording,
/// code and the names of the constraint, table and column, never a value (database messages
/// can quote the row) and never a URL password.
pub(crate) fn classify(err: &sqlx::Error) -> SqlError {
    let text = crate::describe_error(err);
    match err {
        sqlx::Error::Database(db) => {
            if is_data_error(&db.code().unwrap_or_default()) {
                SqlError::Rejected(text)
            } else {
                SqlError::Unavailable(text)
            }
        }
        sqlx::Error::Configuration(_) => SqlError::Config(text),
        _ => SqlError::Unavailable(text),
    }
}

/// Postgres and MySQL report a five-character SQLSTATE: classes 22 (data exception) and 23
/// (integrity constraint) are about the data. SQLite reports its (extended) result code:
/// CONSTRAINT, MISMATCH, TOOBIG and RANGE are.
fn is_data_error(code: &str) -> bool {
    if code.len() == 5 {
        return code.starts_with("22") || code.starts_with("23");
    }
    match code.parse::<u32>() {
        Ok(number) => matches!(number & 0xff, 18 | 19 | 20 | 25),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_are_poison_everything_else_an_outage() {
        for code in [
            "22001", "23505", "23503", "22007", "23000", "19", "2067", "787", "1299", "20",
        ] {
            assert!(is_data_error(code), "{code}");
        }
        for code in [
            "40P01", "40001", "08006", "57P01", "42P01", "42S02", "53300", "HY000", "5", "6", "10",
            "517", "",
        ] {
            assert!(!is_data_error(code), "{code}");
        }
    }
}
