use std::fmt;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

/// A point in time, in microseconds since the Unix epoch (UTC). Serialised as RFC 3339.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp_micros())
    }

    /// From microseconds since the epoch.
    pub const fn from_micros(us: i64) -> Self {
        Timestamp(us)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// From milliseconds since the epoch; `None` when out of range.
    pub fn from_millis(ms: i64) -> Option<Self> {
        ms.checked_mul(1000).map(Timestamp)
    }

    /// From (fractional) seconds since the epoch, as SenML uses; `None` when not finite or out of range.
    pub fn from_secs_f64(s: f64) -> Option<Self> {
        let us = (s * 1e6).round();
        (us.is_finite() && us.abs() < 9.0e18).then_some(Timestamp(us as i64))
    }

    /// Parses RFC 3339 (`2026-11-22T10:00:00Z`, offsets allowed).
    pub fn parse_rfc3339(s: &str) -> Result<Self, ModelError> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| Timestamp(d.with_timezone(&Utc).timestamp_micros()))
            .map_err(|e| ModelError::InvalidTimestamp(format!("{s:?} is not RFC 3339: {e}")))
    }

    /// As a chrono UTC date-time.
    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_micros(self.0).single().unwrap_or_default()
    }

    /// RFC 3339 with microsecond precision, in UTC.
    pub fn to_rfc3339(self) -> String {
        self.to_datetime().to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_with_offsets() {
        let t = Timestamp::parse_rfc3339("2026-11-22T19:00:00.123456+09:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T10:00:00.123456Z");
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
        assert_eq!(Timestamp::from_secs_f64(1.5).unwrap().as_micros(), 1_500_000);
        assert!(Timestamp::from_secs_f64(f64::NAN).is_none());
    }
}
