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

/// What a database error means for a projector's sink (the SQL sink's and the webhook
/// fan-out's alike): data it refuses is poison, settings and schemas are fatal, anything else
/// an outage to wait out.
impl From<SqlError> for terra_projector::SinkError {
    fn from(err: SqlError) -> Self {
        match err {
            SqlError::Rejected(why) => Self::Rejected(why),
            SqlError::Config(why) | SqlError::Schema(why) => Self::Fatal(why),
            SqlError::Unavailable(why) => Self::Outage(why),
        }
    }
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
            let mysql_number = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map(|mysql| mysql.number());
            if is_data_error(&db.code().unwrap_or_default(), mysql_number) {
                SqlError::Rejected(text)
            } else {
                SqlError::Unavailable(text)
            }
        }
        sqlx::Error::Configuration(_) => SqlError::Config(text),
        _ => SqlError::Unavailable(text),
    }
}

/// MySQL/MariaDB refusals of a value that carry no data SQLSTATE: 1366 `Incorrect string
/// value` (a character the column's character set cannot hold: `HY000` on MySQL, `22007` on
/// MariaDB) and 1265 `Data truncated` (`01000`: a value an ENUM, SET or number column cannot
/// take, in strict mode). Retrying them fails the same way for ever.
const MYSQL_DATA_ERRORS: [u16; 2] = [1366, 1265];

/// Postgres and MySQL report a five-character SQLSTATE: classes 22 (data exception) and 23
/// (integrity constraint) are about the data, and so are the MySQL error numbers of
/// [`MYSQL_DATA_ERRORS`]. SQLite reports its (extended) result code: CONSTRAINT, MISMATCH,
/// TOOBIG and RANGE are.
fn is_data_error(code: &str, mysql_number: Option<u16>) -> bool {
    if mysql_number.is_some_and(|number| MYSQL_DATA_ERRORS.contains(&number)) {
        return true;
    }
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
            assert!(is_data_error(code, None), "{code}");
        }
        for code in [
            "40P01", "40001", "08006", "57P01", "42P01", "42S02", "53300", "HY000", "5", "6", "10",
            "517", "",
        ] {
            assert!(!is_data_error(code, None), "{code}");
        }
    }

    #[test]
    fn mysql_incorrect_string_value_1366_and_data_truncated_1265_are_poison() {
        // as MySQL and MariaDB report them: number and SQLSTATE
        for (code, number) in [("HY000", 1366), ("22007", 1366), ("01000", 1265)] {
            assert!(is_data_error(code, Some(number)), "{number} {code}");
        }
        // other MySQL errors without a data SQLSTATE stay outages: lock wait timeout, too
        // many connections, unknown column, server gone
        for (code, number) in [
            ("HY000", 1205),
            ("08004", 1040),
            ("42S22", 1054),
            ("HY000", 2006),
        ] {
            assert!(!is_data_error(code, Some(number)), "{number} {code}");
        }
    }
}
