//! Rules of the fold that operators configure: program currency and
//! conversion rates, how much history a profile keeps, and the points
//! program.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::identity::IdentityConfig;
use crate::limits::Limits;
use crate::loyalty::LoyaltyConfig;
use crate::time::{DAY, Millis};

/// The largest conversion rate: amounts within the limits still convert
/// into an `i64` (a currency worth more than 1,000 program units per unit
/// does not exist).
pub const MAX_RATE: f64 = 1_000.0;

/// Days beyond the tier window that dated spend marks are kept, so an order
/// that arrives up to this late still sees every mark its window reaches.
pub const LATE_ORDER_DAYS: u32 = 35;

/// Configuration of the fold. Build it with serde, then call
/// [`FoldConfig::validate`] once; the fold relies on a validated config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FoldConfig {
    /// ISO 4217 code all spend is reported in.
    pub program_currency: String,
    /// Units of the program currency per unit of another currency, e.g.
    /// `USD = 7.1`. Both sides in minor units with two decimals.
    pub rates: BTreeMap<String, f64>,
    /// Distinct products kept in the browse summary.
    pub recent_products: usize,
    /// Distinct search queries kept.
    pub recent_searches: usize,
    /// Categories kept for affinity; the weakest are dropped beyond this.
    pub max_categories: usize,
    /// Orders older than this (relative to the member's latest order) are
    /// dropped from the per-order history; at least 365 so the yearly
    /// windows stay exact.
    pub order_history_days: u32,
    /// Hard cap on orders kept per member, so one profile stays bounded.
    pub max_orders_kept: usize,
    /// Hard cap on the dated spend marks kept per member (one per instant
    /// with orders): beyond it the oldest go, and windows reaching back to
    /// them count less (docs/loyalty.md).
    pub max_spend_marks: usize,
    /// The points program: `[fold.loyalty]`.
    pub loyalty: LoyaltyConfig,
    /// Identity resolution: `[fold.identity]`.
    pub identity: IdentityConfig,
    /// The largest values one event may carry: `[fold.limits]`.
    pub limits: Limits,
    /// Events for a member erased before: `refuse` them (to the dead-letter
    /// topic, so an erased person is never rebuilt), or start a `fresh`
    /// profile under the same id.
    pub after_erasure: AfterErasure,
    #[serde(skip)]
    rates_micro: BTreeMap<String, i128>,
}

/// `fold.after_erasure`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterErasure {
    #[default]
    Refuse,
    Fresh,
}

impl Default for FoldConfig {
    fn default() -> Self {
        FoldConfig {
            program_currency: "CNY".into(),
            rates: BTreeMap::from([("USD".into(), 7.1), ("EUR".into(), 7.7), ("HKD".into(), 0.91)]),
            recent_products: 20,
            recent_searches: 10,
            max_categories: 50,
            order_history_days: 400,
            max_orders_kept: 1_000,
            max_spend_marks: 4_096,
            loyalty: LoyaltyConfig::default(),
            identity: IdentityConfig::default(),
            limits: Limits::default(),
            after_erasure: AfterErasure::Refuse,
            rates_micro: BTreeMap::new(),
        }
    }
}

impl FoldConfig {
    /// Checks every rule and prepares the exact conversion table.
    pub fn validate(mut self) -> Result<Self, Error> {
        let cur = self.program_currency.trim().to_ascii_uppercase();
        if cur.len() != 3 || !cur.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(Error::Config(format!("program_currency `{}` is not an ISO 4217 code", self.program_currency)));
        }
        self.program_currency = cur;
        let mut micro = BTreeMap::new();
        for (code, rate) in &self.rates {
            if !(rate.is_finite() && *rate > 0.0 && *rate <= MAX_RATE) {
                return Err(Error::Config(format!(
                    "rate for {code} must be above 0 and at most {MAX_RATE}, got {rate}"
                )));
            }
            micro.insert(code.to_ascii_uppercase(), (rate * 1e6).round() as i128);
        }
        self.rates_micro = micro;
        for (name, v, lo, hi) in [
            ("recent_products", self.recent_products, 1, 1_000),
            ("recent_searches", self.recent_searches, 0, 1_000),
            ("max_categories", self.max_categories, 1, 10_000),
            ("max_orders_kept", self.max_orders_kept, 1, 100_000),
            ("max_spend_marks", self.max_spend_marks, 16, 100_000),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(Error::Config(format!("{name} must be between {lo} and {hi}, got {v}")));
            }
        }
        if self.order_history_days < 365 {
            return Err(Error::Config(format!(
                "order_history_days must be at least 365, got {}",
                self.order_history_days
            )));
        }
        self.loyalty = self.loyalty.validate().map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("loyalty: {m}")),
            other => other,
        })?;
        self.identity = self.identity.validate()?;
        self.limits = self.limits.validate()?;
        Ok(self)
    }

    /// How long dated spend marks are kept behind a member's latest one: as
    /// long as kept orders, and at least the tier window plus
    /// [`LATE_ORDER_DAYS`] for orders that arrive late.
    pub fn spend_kept(&self) -> Millis {
        let days = self.order_history_days.max(self.loyalty.tier_window_days.saturating_add(LATE_ORDER_DAYS));
        i64::from(days) * DAY
    }

    /// Converts an amount in minor units of `currency` to minor units of the
    /// program currency, rounding down. `None` if no rate is configured.
    /// Amounts within [`Limits`] convert without overflow: at most
    /// 10^15 × [`MAX_RATE`].
    pub fn to_program(&self, currency: &str, minor: i64) -> Option<i64> {
        if currency == self.program_currency {
            return Some(minor);
        }
        let rate = self.rates_micro.get(currency)?;
        i64::try_from((i128::from(minor) * rate).div_euclid(1_000_000)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_with_configured_rates_rounding_down() {
        let cfg = FoldConfig::default().validate().unwrap();
        assert_eq!(cfg.to_program("CNY", 12345), Some(12345));
        assert_eq!(cfg.to_program("USD", 1000), Some(7100));
        assert_eq!(cfg.to_program("HKD", 999), Some(909)); // 909.09 rounds down
        assert_eq!(cfg.to_program("JPY", 1000), None);
    }

    #[test]
    fn rejects_bad_config() {
        let bad = FoldConfig { order_history_days: 30, ..FoldConfig::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("order_history_days"));
        let bad = FoldConfig { rates: BTreeMap::from([("USD".into(), -1.0)]), ..FoldConfig::default() };
        assert!(bad.validate().is_err());
    }
}
