//! Figures that depend on "now": orders in the last 90 and 365 days and RFM.
//! Computed at read time from the member's dated spend, for any instant the
//! caller passes in.

use crate::member::Member;
use crate::time::{DAY, Millis, days_between};

/// RFM scores, 1 (lowest) to 5 (best); 0 when the member never ordered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rfm {
    pub recency_days: Option<u32>,
    pub frequency: u64,
    pub monetary_minor: i64,
    pub r: u32,
    pub f: u32,
    pub m: u32,
    pub segment: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Windows {
    pub as_of: Millis,
    pub orders_last_90_days: u64,
    pub orders_last_365_days: u64,
    pub net_last_365_days_minor: i64,
    pub average_order_value_minor: i64,
    pub rfm: Rfm,
}

/// Days since the last order: ≤30 → 5, ≤90 → 4, ≤180 → 3, ≤365 → 2, else 1.
const RECENCY_DAYS: [u32; 4] = [30, 90, 180, 365];
/// Orders in 365 days: ≥10 → 5, ≥5 → 4, ≥3 → 3, ≥2 → 2, ≥1 → 1.
const FREQUENCY: [u64; 4] = [10, 5, 3, 2];
/// Net spend in 365 days, program major units: ≥50,000 → 5, ≥10,000 → 4, ≥2,000 → 3, ≥500 → 2, else 1.
const MONETARY_MAJOR: [i64; 4] = [50_000, 10_000, 2_000, 500];

fn score_desc<T: PartialOrd + Copy>(v: T, thresholds: [T; 4]) -> u32 {
    thresholds.iter().position(|t| v >= *t).map_or(1, |i| 5 - i as u32)
}

impl Member {
    /// The windowed figures as of `now` (orders after `now` are not counted).
    pub fn windows(&self, now: Millis) -> Windows {
        let p = &self.purchases;
        let year = p.spend.window(now - 365 * DAY, now);
        let mut w = Windows {
            as_of: now,
            orders_last_90_days: p.spend.window(now - 90 * DAY, now).orders,
            orders_last_365_days: year.orders,
            net_last_365_days_minor: year.net_program_minor,
            ..Windows::default()
        };
        let last = p.spend.last_order_at(now);
        if p.orders > 0 {
            w.average_order_value_minor = p.net_minor() / i64::try_from(p.orders).unwrap_or(i64::MAX);
        }
        let recency = last.or(p.last_order_at.filter(|l| *l <= now)).map(|l| days_between(l, now));
        let mut rfm = Rfm {
            recency_days: recency,
            frequency: w.orders_last_365_days,
            monetary_minor: w.net_last_365_days_minor,
            segment: "none",
            ..Rfm::default()
        };
        if let Some(days) = recency {
            rfm.r = match RECENCY_DAYS.iter().position(|t| days <= *t) {
                Some(i) => 5 - i as u32,
                None => 1,
            };
            rfm.f = if w.orders_last_365_days == 0 { 1 } else { score_desc(w.orders_last_365_days, FREQUENCY) };
            rfm.m = score_desc(w.net_last_365_days_minor / 100, MONETARY_MAJOR);
            rfm.segment = match (rfm.r, rfm.f) {
                (4.., 4..) => "champion",
                (3.., 3..) => "loyal",
                (4.., 1) => "new",
                (..=2, 3..) => "at_risk",
                (..=2, _) => "hibernating",
                _ => "promising",
            };
        }
        w.rfm = rfm;
        w
    }
}
