//! Job identifiers: UUIDv7 strings, so ids sort by creation time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::LiftError;

const MAX_JOB_ID_LEN: usize = 64;

/// A job's id. New ids are UUIDv7 (time-ordered); parsed ids are checked so they are safe to
/// use inside store keys and queue headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn parse(value: &str) -> Result<Self, LiftError> {
        if value.is_empty() || value.len() > MAX_JOB_ID_LEN {
            return Err(LiftError::InvalidArgument(format!(
                "job id must be 1 to {MAX_JOB_ID_LEN} characters, got {}",
                value.len()
            )));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(LiftError::InvalidArgument(format!(
                "job id {value:?} contains {bad:?}; only a-z, 0-9 and - are allowed"
            )));
        }
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for JobId {
    type Err = LiftError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Deserialization validates too: ids read from messages and records end up in store keys.
impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_valid_and_time_ordered() {
        let first = JobId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = JobId::new();
        assert!(JobId::parse(first.as_str()).is_ok());
        assert!(first < second, "{first} should sort before {second}");
    }

    #[test]
    fn parse_rejects_unsafe_characters_and_lengths() {
        assert!(JobId::parse("").is_err());
        assert!(JobId::parse(&"a".repeat(65)).is_err());
        assert!(JobId::parse(&"a".repeat(64)).is_ok());
        for bad in ["../etc", "ABC", "a b", "a/b", "a_b"] {
            let err = JobId::parse(bad).unwrap_err();
            assert!(matches!(err, LiftError::InvalidArgument(_)), "{bad}");
        }
    }

    #[test]
    fn serde_is_transparent_and_validates() {
        let id = JobId::parse("job-1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"job-1\"");
        let back: JobId = serde_json::from_str("\"job-1\"").unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<JobId>("\"../x\"").is_err());
    }
}
