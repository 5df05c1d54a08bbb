//! Event time as milliseconds since the Unix epoch, and conversions to and
//! from the wire's `google.protobuf.Timestamp`.

use omnifold_proto::wkt::Timestamp;

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type Millis = i64;

pub const SECOND: Millis = 1_000;
pub const HOUR: Millis = 3_600 * SECOND;
pub const DAY: Millis = 24 * HOUR;

/// Earliest accepted event time (2000-01-01T00:00:00Z).
pub const MIN_EVENT_TIME: Millis = 946_684_800_000;
/// Latest accepted event time (2100-01-01T00:00:00Z).
pub const MAX_EVENT_TIME: Millis = 4_102_444_800_000;

pub fn from_timestamp(ts: &Timestamp) -> Millis {
    ts.seconds.saturating_mul(1_000).saturating_add(i64::from(ts.nanos) / 1_000_000)
}

pub fn to_timestamp(ms: Millis) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1_000), nanos: (ms.rem_euclid(1_000) * 1_000_000) as i32 }
}

/// Whole days from `earlier` to `later`, rounded down; 0 if `later` is earlier.
pub fn days_between(earlier: Millis, later: Millis) -> u32 {
    ((later - earlier).max(0) / DAY).min(u32::MAX as i64) as u32
}

/// An instant as RFC 3339 (`2026-06-01T10:00:00Z`), as the event contract writes it.
pub fn rfc3339(ms: Millis) -> String {
    match serde_json::to_value(to_timestamp(ms)) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{ms} ms after the epoch"),
    }
}
