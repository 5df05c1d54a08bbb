//! Audiences: a small typed rule language over the profile
//! (docs/audiences.md). A rule is compiled once (parsed, type-checked
//! against the profile's measures, its cost bounded) and then evaluated on
//! a member at an event-time instant, with the next instant at which time
//! alone may change its answer (a window sliding past an order, points
//! expiring, a recency threshold passing).
//!
//! Architecture invariant: evaluation is a pure function of the member and
//! the instant, so live folds and replays agree.

mod check;
mod eval;
mod parse;

use crate::Channel;
use crate::ident::IdType;
use crate::loyalty::Tier;
use crate::time::Millis;

/// The longest rule text accepted.
pub const MAX_RULE_CHARS: usize = 4_096;
/// The most measures and operators one rule may hold: its cost per
/// evaluation is at most this many measures, each bounded by the member's
/// kept state (spend marks, lots, recent products).
pub const MAX_RULE_NODES: usize = 64;
/// The deepest nesting of `and`, `or`, `not` and parentheses.
pub const MAX_RULE_DEPTH: usize = 16;

/// Why a rule was refused: what to fix, and where (the number of
/// characters before the offending one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {at}: {message}")]
pub struct RuleError {
    pub at: usize,
    pub message: String,
}

impl RuleError {
    fn at(at: usize, message: impl Into<String>) -> RuleError {
        RuleError { at, message: message.into() }
    }
}

/// A compiled rule: typed, bounded, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    And(Vec<Rule>),
    Or(Vec<Rule>),
    Not(Box<Rule>),
    /// A yes/no measure.
    Test(Test),
    /// A measure against a value of its type.
    Compare(Measure, Cmp, Value),
}

/// Yes/no measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// `consented("marketing")`: the member's latest word on the purpose is yes.
    Consented(String),
    /// `has_identifier(PHONE)`.
    HasIdentifier(IdType),
    /// `has_trait("city")`: the trait is set (not empty).
    HasTrait(String),
    /// `enrolled`: the member has joined the loyalty program by the instant.
    Enrolled,
}

/// Measures with a value to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Measure {
    /// The tier held at the instant.
    Tier,
    /// Points that can be redeemed at the instant.
    PointsActive,
    /// Points earned and not active yet.
    PointsPending,
    /// Active points that expire within the period after the instant.
    PointsExpiring { within: Millis },
    /// Orders placed, less cancelled ones: in the window before the
    /// instant, or all time (per channel: all time only).
    Orders { within: Option<Millis>, channel: Option<Channel> },
    /// Net spend in minor units of the program currency, windowed as `Orders`.
    Spend { within: Option<Millis>, channel: Option<Channel> },
    /// Distinct products among the member's recent products last viewed
    /// within the window, of one category or any.
    ProductsViewed { within: Millis, category: Option<String> },
    /// The category's share of the member's interest, 0 to 1.
    Affinity { category: String },
    /// Events folded from a channel, or from all, all time.
    Events { channel: Option<Channel> },
    /// Time since the latest order at or before the instant.
    SinceLastOrder,
    /// Time since the member was last seen, on a channel or any.
    SinceLastSeen { channel: Option<Channel> },
    /// Time since the member enrolled.
    SinceEnrolled,
    /// A trait's value.
    Trait(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A value of a measure's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Counts and points.
    Int(i64),
    /// Money, in minor units of the program currency.
    Minor(i64),
    /// A share between 0 and 1.
    Share(f64),
    Duration(Millis),
    Tier(Tier),
    Text(String),
}

impl Rule {
    /// Compiles `src`: parsed, every measure and argument checked, values
    /// of the measure's type, at most [`MAX_RULE_NODES`] nodes nested at
    /// most [`MAX_RULE_DEPTH`] deep.
    pub fn compile(src: &str) -> Result<Rule, RuleError> {
        if src.chars().count() > MAX_RULE_CHARS {
            return Err(RuleError::at(MAX_RULE_CHARS, format!("a rule is at most {MAX_RULE_CHARS} characters")));
        }
        if src.trim().is_empty() {
            return Err(RuleError::at(0, "the rule is empty: write a condition such as `tier >= GOLD`"));
        }
        let in_chars = |e: RuleError| RuleError { at: src[..e.at.min(src.len())].chars().count(), ..e };
        parse::parse(src).and_then(|e| check::rule(&e)).map_err(in_chars)
    }
}

pub use eval::{holds, next_change};
