//! The loyalty program's rules as operators configure them: earn rate,
//! multipliers, pending and expiry periods, tiers and their benefits, and what
//! happens to a shortfall. Validated once into exact integer factors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Tier;
use crate::Error;
use crate::event::Channel;
use crate::time::{DAY, Millis};

/// What happens when a return or a negative adjustment takes back more
/// points than the member has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NegativeBalance {
    /// The shortfall becomes a negative balance that later earnings pay off
    /// first, and no points can be redeemed while it is owed.
    #[default]
    Carry,
    /// The shortfall is forgiven; it is recorded as written off.
    WriteOff,
}

/// A perk of a tier, as the benefits answer shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Benefit {
    pub code: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierConfig {
    /// Net spend over the tier window, in major units of the program
    /// currency, from which the tier is held. MEMBER's must be 0.
    pub threshold: f64,
    /// Applies to points earned by orders placed while the tier is held.
    pub multiplier: f64,
    pub benefits: Vec<Benefit>,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig { threshold: 0.0, multiplier: 1.0, benefits: Vec::new() }
    }
}

/// `[fold.loyalty]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoyaltyConfig {
    /// Points per major unit (yuan) of net order amount, before multipliers.
    pub earn_rate: f64,
    /// Decimal digits of the program currency's minor unit (2: fen).
    pub currency_digits: u32,
    /// Days an order's points stay pending (the no-reason return window).
    pub pending_days: u32,
    /// Days a lot stays active before it expires.
    pub expiry_days: u32,
    /// Rolling window of net spend that decides the tier.
    pub tier_window_days: u32,
    /// A tier is reviewed (and may be lowered) this many days after it
    /// started, and every as many days after that: the anniversary.
    pub tier_review_days: u32,
    /// Active points expiring within this many days count as "expiring soon".
    pub expiring_soon_days: u32,
    pub negative_balance: NegativeBalance,
    /// Channel name (`MOBILE_APP`, ...) to multiplier; absent channels earn 1.0.
    pub channel_multipliers: BTreeMap<String, f64>,
    /// Product category to multiplier; absent categories earn 1.0.
    pub category_multipliers: BTreeMap<String, f64>,
    /// All four tiers: MEMBER, SILVER, GOLD, PLATINUM.
    pub tiers: BTreeMap<Tier, TierConfig>,
    #[serde(skip)]
    pub(crate) compiled: Compiled,
}

/// Multipliers as thousandths, thresholds in minor units, periods in millis.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Compiled {
    pub earn_milli: u128,
    pub minor_per_major: u128,
    pub channel_milli: BTreeMap<Channel, u128>,
    pub category_milli: BTreeMap<String, u128>,
    pub tier_milli: BTreeMap<Tier, u128>,
    pub threshold_minor: BTreeMap<Tier, i64>,
}

fn benefit(code: &str, description: &str) -> Benefit {
    Benefit { code: code.into(), description: description.into() }
}

impl Default for LoyaltyConfig {
    fn default() -> Self {
        let member_price = benefit("member_price", "Member prices on selected products");
        let birthday = benefit("birthday_gift", "A gift in your birthday month");
        let shipping = benefit("free_shipping", "Free shipping on every online order");
        let priority = benefit("priority_service", "Priority service in stores and at the call centre");
        let tier =
            |threshold: f64, multiplier: f64, benefits: Vec<Benefit>| TierConfig { threshold, multiplier, benefits };
        LoyaltyConfig {
            earn_rate: 1.0,
            currency_digits: 2,
            pending_days: 7,
            expiry_days: 365,
            tier_window_days: 365,
            tier_review_days: 365,
            expiring_soon_days: 30,
            negative_balance: NegativeBalance::Carry,
            channel_multipliers: BTreeMap::from([("MOBILE_APP".into(), 1.5), ("MINI_PROGRAM".into(), 1.5)]),
            category_multipliers: BTreeMap::new(),
            tiers: BTreeMap::from([
                (Tier::Member, tier(0.0, 1.0, vec![member_price.clone()])),
                (Tier::Silver, tier(2_000.0, 1.0, vec![member_price.clone(), birthday.clone()])),
                (Tier::Gold, tier(10_000.0, 1.25, vec![member_price.clone(), birthday.clone(), shipping.clone()])),
                (Tier::Platinum, tier(50_000.0, 1.5, vec![member_price, birthday, shipping, priority])),
            ]),
            compiled: Compiled::default(),
        }
    }
}

/// Largest multiplier accepted, so point arithmetic cannot overflow.
const MAX_MULTIPLIER: f64 = 100.0;

fn milli(name: &str, v: f64) -> Result<u128, Error> {
    let m = (v * 1_000.0).round();
    if !(v.is_finite() && (0.0..=MAX_MULTIPLIER).contains(&v)) || (m - v * 1_000.0).abs() > 1e-6 {
        return Err(Error::Config(format!(
            "{name} must be between 0 and {MAX_MULTIPLIER} with at most 3 decimals, got {v}"
        )));
    }
    Ok(m as u128)
}

impl LoyaltyConfig {
    pub(crate) fn validate(mut self) -> Result<Self, Error> {
        let mut c = Compiled { earn_milli: milli("earn_rate", self.earn_rate)?, ..Compiled::default() };
        if self.currency_digits > 4 {
            return Err(Error::Config(format!("currency_digits must be 0 to 4, got {}", self.currency_digits)));
        }
        c.minor_per_major = 10u128.pow(self.currency_digits);
        for (name, v, lo) in [
            ("pending_days", self.pending_days, 0),
            ("expiry_days", self.expiry_days, 1),
            ("tier_window_days", self.tier_window_days, 1),
            ("tier_review_days", self.tier_review_days, 1),
            ("expiring_soon_days", self.expiring_soon_days, 1),
        ] {
            if !(lo..=36_500).contains(&v) {
                return Err(Error::Config(format!("{name} must be between {lo} and 36500, got {v}")));
            }
        }
        for (name, m) in &self.channel_multipliers {
            let channel = Channel::from_name(name).ok_or_else(|| {
                Error::Config(format!(
                    "channel_multipliers: unknown channel `{name}`; use ONLINE_WEB, MOBILE_APP, MINI_PROGRAM, \
                     STORE_POS, MARKETPLACE or CALL_CENTER"
                ))
            })?;
            c.channel_milli.insert(channel, milli(&format!("channel_multipliers.{name}"), *m)?);
        }
        for (name, m) in &self.category_multipliers {
            c.category_milli.insert(name.clone(), milli(&format!("category_multipliers.{name}"), *m)?);
        }
        let mut previous: Option<i64> = None;
        for tier in Tier::ALL {
            let t = self.tiers.get(&tier).ok_or_else(|| {
                Error::Config(format!("tiers.{} is missing; configure MEMBER, SILVER, GOLD and PLATINUM", tier.name()))
            })?;
            c.tier_milli.insert(tier, milli(&format!("tiers.{}.multiplier", tier.name()), t.multiplier)?);
            if !(t.threshold.is_finite() && t.threshold >= 0.0 && t.threshold < 1e12) {
                return Err(Error::Config(format!("tiers.{}.threshold must be a non-negative amount", tier.name())));
            }
            let minor = (t.threshold * c.minor_per_major as f64).round() as i64;
            match previous {
                None if minor != 0 => return Err(Error::Config("tiers.MEMBER.threshold must be 0".into())),
                Some(p) if minor <= p => {
                    return Err(Error::Config(format!(
                        "tiers.{}.threshold must be above the tier below it",
                        tier.name()
                    )));
                }
                _ => {}
            }
            previous = Some(minor);
            c.threshold_minor.insert(tier, minor);
            for b in &t.benefits {
                if b.code.trim().is_empty() {
                    return Err(Error::Config(format!("tiers.{}.benefits: every benefit needs a code", tier.name())));
                }
            }
        }
        if let Some(extra) = self.tiers.keys().find(|t| !Tier::ALL.contains(t)) {
            return Err(Error::Config(format!("tiers.{} is not a tier", extra.name())));
        }
        self.compiled = c;
        Ok(self)
    }

    pub(crate) fn pending(&self) -> Millis {
        i64::from(self.pending_days) * DAY
    }

    pub(crate) fn expiry(&self) -> Millis {
        i64::from(self.expiry_days) * DAY
    }

    pub(crate) fn tier_window(&self) -> Millis {
        i64::from(self.tier_window_days) * DAY
    }

    pub(crate) fn tier_review(&self) -> Millis {
        i64::from(self.tier_review_days) * DAY
    }

    pub fn expiring_soon(&self) -> Millis {
        i64::from(self.expiring_soon_days) * DAY
    }

    /// Net spend (program minor units) from which `tier` is held.
    pub fn threshold_minor(&self, tier: Tier) -> i64 {
        self.compiled.threshold_minor.get(&tier).copied().unwrap_or(0)
    }

    /// The highest tier a net spend qualifies for.
    pub fn tier_for(&self, spend_minor: i64) -> Tier {
        Tier::ALL.into_iter().rev().find(|t| spend_minor >= self.threshold_minor(*t)).unwrap_or(Tier::Member)
    }

    pub fn benefits(&self, tier: Tier) -> &[Benefit] {
        self.tiers.get(&tier).map_or(&[], |t| &t.benefits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_tiers_follow_spend() {
        let cfg = LoyaltyConfig::default().validate().unwrap();
        assert_eq!(cfg.tier_for(0), Tier::Member);
        assert_eq!(cfg.tier_for(199_999), Tier::Member);
        assert_eq!(cfg.tier_for(200_000), Tier::Silver);
        assert_eq!(cfg.tier_for(1_000_000), Tier::Gold);
        assert_eq!(cfg.tier_for(5_000_000), Tier::Platinum);
        assert_eq!(cfg.compiled.channel_milli[&Channel::MobileApp], 1_500);
        assert_eq!(cfg.compiled.tier_milli[&Tier::Gold], 1_250);
    }

    #[test]
    fn rejects_rules_that_cannot_work() {
        let mut bad = LoyaltyConfig::default();
        bad.channel_multipliers.insert("WEB".into(), 2.0);
        assert!(bad.validate().unwrap_err().to_string().contains("unknown channel `WEB`"));

        let mut bad = LoyaltyConfig::default();
        bad.tiers.get_mut(&Tier::Gold).unwrap().threshold = 1_000.0;
        assert!(bad.validate().unwrap_err().to_string().contains("tiers.GOLD.threshold must be above"));

        let mut bad = LoyaltyConfig::default();
        bad.tiers.remove(&Tier::Silver);
        assert!(bad.validate().unwrap_err().to_string().contains("tiers.SILVER is missing"));

        let bad = LoyaltyConfig { earn_rate: 1.0005, ..LoyaltyConfig::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("at most 3 decimals"));

        let bad = LoyaltyConfig { expiry_days: 0, ..LoyaltyConfig::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("expiry_days"));
    }
}
