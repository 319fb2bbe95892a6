//! Identifiers as Terra's tables hold them, checked once: [`UserId`] (`VARCHAR(36)`) and
//! [`PayloadId`] (what [`crate::keys`] generates). Everything that takes an id from outside
//! (a webhook body, a gRPC request) goes through these.

use std::fmt;

/// An id that does not fit Terra's columns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long; Terra's tables hold at most {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// A Terra user id: 1-36 characters (Terra's `user_id VARCHAR(36)`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(String);

impl UserId {
    /// Longest `user_id` Terra's tables can hold, in characters.
    pub const MAX_CHARS: usize = 36;

    pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        let len = value.chars().count();
        if len == 0 {
            return Err(IdError::Empty { what: "user_id" });
        }
        if len > Self::MAX_CHARS {
            return Err(IdError::TooLong {
                what: "user_id",
                len,
                max: Self::MAX_CHARS,
            });
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A payload id as [`crate::keys`] makes them: 1 to [`crate::keys::MAX_PAYLOAD_ID_LEN`]
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PayloadId(String);

impl PayloadId {
    pub const MAX_LEN: usize = crate::keys::MAX_PAYLOAD_ID_LEN;

    pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        if value.is_empty() {
            return Err(IdError::Empty { what: "payload_id" });
        }
        if value.len() > Self::MAX_LEN {
            return Err(IdError::TooLong {
                what: "payload_id",
                len: value.len(),
                max: Self::MAX_LEN,
            });
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for PayloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_hold_one_to_36_characters() {
        assert_eq!(UserId::parse("u1").unwrap().as_str(), "u1");
        // characters, not bytes
        assert!(UserId::parse("é".repeat(36)).is_ok());
        assert_eq!(
            UserId::parse("").unwrap_err(),
            IdError::Empty { what: "user_id" }
        );
        let err = UserId::parse("x".repeat(37)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "user_id is 37 characters long; Terra's tables hold at most 36"
        );
    }

    #[test]
    fn payload_ids_are_bounded_like_the_keys_that_make_them() {
        assert!(PayloadId::parse("x".repeat(PayloadId::MAX_LEN)).is_ok());
        assert!(PayloadId::parse("x".repeat(PayloadId::MAX_LEN + 1)).is_err());
        assert!(PayloadId::parse("").is_err());
    }
}
