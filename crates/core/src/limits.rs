//! Bounds on what one event may carry: amounts, quantities, points, lines
//! and how far its event time may run ahead of the log. Checked once, when
//! an event is validated, so every sum the fold computes from validated
//! events fits in an `i64` with room to spare (`[fold.limits]`).

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::time::{HOUR, Millis};

/// Hard ceilings for the configurable limits: whatever an operator sets,
/// 500 lines of the largest amount and quantity still sum in an `i64`.
const CEILING_AMOUNT: i64 = 1_000_000_000_000_000; // 10^15 minor units
const CEILING_QUANTITY: u32 = 1_000_000;
const CEILING_POINTS: i64 = 1_000_000_000_000; // 10^12
const CEILING_LINES: usize = 10_000;

/// `[fold.limits]`: the largest values one event may carry. A value above
/// its limit sends the event to the dead-letter topic with the field, the
/// value and the limit in the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest amount of money in one field, and largest list value of one
    /// order (Σ unit price × quantity), in minor units of its currency.
    pub max_amount_minor: i64,
    /// Most units on one order, return or cart line.
    pub max_quantity: u32,
    /// Most points one redemption or adjustment may move.
    pub max_points: i64,
    /// Most lines on one order, return or cart.
    pub max_lines: usize,
    /// How far an event's `occurredAt` may be ahead of the time its Kafka
    /// record was written. Further ahead is a producer's clock gone wrong:
    /// refused, so it can neither date points into the future nor push the
    /// partition's event time (and with it the dedupe window) ahead.
    pub max_clock_skew_hours: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_amount_minor: 1_000_000_000_000, // 10^12: ten billion yuan
            max_quantity: 100_000,
            max_points: 1_000_000_000,
            max_lines: 500,
            max_clock_skew_hours: 24,
        }
    }
}

impl Limits {
    pub(crate) fn validate(self) -> Result<Self, Error> {
        let bad = |name: &str, max: String| Error::Config(format!("limits: {name} must be 1 to {max}"));
        if !(1..=CEILING_AMOUNT).contains(&self.max_amount_minor) {
            return Err(bad("max_amount_minor", CEILING_AMOUNT.to_string()));
        }
        if !(1..=CEILING_QUANTITY).contains(&self.max_quantity) {
            return Err(bad("max_quantity", CEILING_QUANTITY.to_string()));
        }
        if !(1..=CEILING_POINTS).contains(&self.max_points) {
            return Err(bad("max_points", CEILING_POINTS.to_string()));
        }
        if !(1..=CEILING_LINES).contains(&self.max_lines) {
            return Err(bad("max_lines", CEILING_LINES.to_string()));
        }
        if !(1..=87_600).contains(&self.max_clock_skew_hours) {
            return Err(bad("max_clock_skew_hours", "87600".into()));
        }
        Ok(self)
    }

    /// An amount of money in `field`: 0 to `max_amount_minor`.
    pub(crate) fn amount(&self, field: &'static str, v: i64) -> Result<i64, Error> {
        if v < 0 {
            return Err(Error::invalid(field, format!("must not be negative, got {v}")));
        }
        self.at_most(field, i128::from(v), i128::from(self.max_amount_minor), "max_amount_minor")?;
        Ok(v)
    }

    /// A quantity in `field`: 1 to `max_quantity`.
    pub(crate) fn quantity(&self, field: &'static str, q: i32) -> Result<u32, Error> {
        if q <= 0 {
            return Err(Error::invalid(field, format!("must be at least 1, got {q}")));
        }
        self.at_most(field, i128::from(q), i128::from(self.max_quantity), "max_quantity")?;
        Ok(q as u32)
    }

    /// Points moved by one command in `field`: magnitude 1 to `max_points`.
    pub(crate) fn points(&self, field: &'static str, v: i64) -> Result<i64, Error> {
        if v == 0 {
            return Err(Error::invalid(field, "must not be zero"));
        }
        self.at_most(field, i128::from(v).abs(), i128::from(self.max_points), "max_points")?;
        Ok(v)
    }

    /// At most `max_lines` entries in `field`.
    pub(crate) fn lines(&self, field: &'static str, n: usize) -> Result<(), Error> {
        self.at_most(field, n as i128, self.max_lines as i128, "max_lines").map_err(|_| {
            Error::invalid(
                field,
                format!("{n} lines, more than the {} allowed (fold.limits.max_lines)", self.max_lines),
            )
        })
    }

    /// A list value (Σ unit price × quantity), computed without overflow.
    pub(crate) fn list_value(&self, field: &'static str, value: i128) -> Result<i64, Error> {
        self.at_most(field, value, i128::from(self.max_amount_minor), "max_amount_minor")?;
        // At most the limit, which fits in an i64.
        Ok(value as i64)
    }

    fn at_most(&self, field: &'static str, v: i128, max: i128, key: &str) -> Result<(), Error> {
        if v > max {
            return Err(Error::invalid(field, format!("{v} is above the limit of {max} (fold.limits.{key})")));
        }
        Ok(())
    }

    /// Refuses an event dated further ahead of its Kafka record's timestamp
    /// than `max_clock_skew_hours` (records without a timestamp, as in
    /// files, are not checked).
    pub fn check_event_time(&self, occurred_at: Millis, record_time: Option<Millis>) -> Result<(), Error> {
        let Some(written) = record_time.filter(|t| *t > 0) else {
            return Ok(());
        };
        let skew = i64::from(self.max_clock_skew_hours) * HOUR;
        if occurred_at > written.saturating_add(skew) {
            let ahead_h = (occurred_at - written) / HOUR;
            return Err(Error::invalid(
                "occurredAt",
                format!(
                    "is {ahead_h} hours after the record was written to Kafka; an event cannot happen in the future \
                     (the producer's clock is wrong?); at most {} hours (fold.limits.max_clock_skew_hours)",
                    self.max_clock_skew_hours
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_field_the_value_and_the_key() {
        let l = Limits::default();
        let e = l.amount("orderPlaced.totalMinor", 1_000_000_000_001).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid field `orderPlaced.totalMinor`: 1000000000001 is above the limit of 1000000000000 \
             (fold.limits.max_amount_minor)"
        );
        let e = l.points("pointsAdjusted.delta", i64::MIN).unwrap_err().to_string();
        assert!(e.contains("9223372036854775808 is above the limit of 1000000000 (fold.limits.max_points)"), "{e}");
        assert!(l.points("pointsAdjusted.delta", -1_000_000_000).is_ok());
        assert!(l.quantity("q", 100_001).unwrap_err().to_string().contains("max_quantity"));
        assert!(l.quantity("q", 0).is_err());
        assert!(l.lines("orderPlaced.lines", 501).unwrap_err().to_string().contains("501 lines"));
    }

    #[test]
    fn event_time_may_not_run_ahead_of_the_log() {
        let l = Limits::default();
        let written = 1_767_225_600_000;
        assert!(l.check_event_time(written + 24 * HOUR, Some(written)).is_ok());
        let e = l.check_event_time(written + 25 * HOUR, Some(written)).unwrap_err().to_string();
        assert!(e.contains("25 hours after the record was written"), "{e}");
        assert!(l.check_event_time(written + 1000 * HOUR, None).is_ok(), "files have no record time");
    }

    #[test]
    fn config_is_bounded() {
        assert!(Limits { max_amount_minor: i64::MAX, ..Limits::default() }.validate().is_err());
        assert!(Limits { max_points: 0, ..Limits::default() }.validate().is_err());
        assert!(Limits::default().validate().is_ok());
    }
}
