//! The last-writer-wins order of payload copies.

/// Last-writer-wins order (terra-wire-format §5, design "idempotent projections"): the
/// ordering timestamp (or receipt time), then the log position, then the record index. The
/// one definition every sink compares by; its text form (`ts:partition:offset:index`, what
/// object metadata keeps) is [`std::fmt::Display`] / [`std::str::FromStr`], its columns in
/// SQL `terra_schema::tables::PAYLOAD_VERSION_COLUMNS`, in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub ts_ms: i64,
    pub partition: i64,
    pub offset: i64,
    pub index: i64,
}

impl Version {
    /// From its four parts in significance order (as stored in SQL).
    pub fn from_parts([ts_ms, partition, offset, index]: [i64; 4]) -> Self {
        Self {
            ts_ms,
            partition,
            offset,
            index,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.ts_ms, self.partition, self.offset, self.index
        )
    }
}

/// A text that is not `ts:partition:offset:index`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a version (ts:partition:offset:index)")]
pub struct BadVersion;

impl std::str::FromStr for Version {
    type Err = BadVersion;

    fn from_str(text: &str) -> Result<Self, BadVersion> {
        let mut parts = text.trim().split(':').map(|p| p.parse::<i64>());
        let mut next = || parts.next().and_then(Result::ok).ok_or(BadVersion);
        let version = Self::from_parts([next()?, next()?, next()?, next()?]);
        match parts.next() {
            None => Ok(version),
            Some(_) => Err(BadVersion),
        }
    }
}
