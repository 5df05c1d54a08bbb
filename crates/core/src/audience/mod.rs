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
mod state;

use crate::Channel;
use crate::ident::IdType;
use crate::loyalty::Tier;
use crate::member::Member;
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

impl Cmp {
    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }
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
pub use state::{AudienceState, Backfill, Membership, Transition};

/// `[audiences.NAME]`: one audience's definition as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudienceConfig {
    /// The rule (docs/audiences.md).
    pub rule: String,
    /// A consent purpose (for example `marketing`): only members whose
    /// latest word on it is yes are in the audience; empty: none needed.
    pub purpose: String,
    /// For people.
    pub description: String,
}

/// The longest description of an audience defined through the API, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4_096;

/// The most audiences one configuration defines.
pub const MAX_AUDIENCES: usize = 1_000;

/// One compiled audience.
#[derive(Debug, Clone, PartialEq)]
pub struct Audience {
    pub name: String,
    pub rule: Rule,
    /// The rule as written.
    pub source: String,
    /// Its version through `AdminService` (0: from the configuration).
    pub version: u64,
    /// Time alone can change the rule's answer (it has a window, a
    /// recency, points or a tier): only then is a timer asked for.
    pub timed: bool,
    pub purpose: Option<String>,
    pub description: String,
}

impl Audience {
    /// Compiles one definition; what is wrong with it, named.
    pub fn compile(name: &str, def: &AudienceConfig, version: u64) -> Result<Audience, String> {
        check_name(name)?;
        let rule = Rule::compile(&def.rule).map_err(|e| format!("audience `{name}`: rule `{}`: {e}", def.rule))?;
        let purpose = Some(def.purpose.trim().to_owned()).filter(|p| !p.is_empty());
        let timed = rule.timed();
        Ok(Audience {
            name: name.to_owned(),
            rule,
            source: def.rule.clone(),
            version,
            timed,
            purpose,
            description: def.description.clone(),
        })
    }
}

/// A name is 1 to 64 of a-z, 0-9, `_` and `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if name.is_empty() || name.len() > 64 || !name.chars().all(fine) {
        return Err(format!("audience `{name}`: a name is 1 to 64 of a-z, 0-9, `_` and `-`"));
    }
    Ok(())
}

/// The encoding's version byte of [`Definition`].
const DEFINITION_VERSION: u8 = 1;

/// An audience defined through `AdminService`, as the log carries it to
/// every partition (`audienceDefined`) and each partition keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Definition {
    pub name: String,
    pub config: AudienceConfig,
    /// 1 when created, one more with each change; a deletion is a version too.
    pub version: u64,
    pub deleted: bool,
}

impl Definition {
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode(DEFINITION_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Definition, crate::Error> {
        crate::codec::decode(DEFINITION_VERSION, "audience definition", bytes)
    }

    /// Whether `self` replaces `other`: a later version or, of one version
    /// (two callers at once), the one whose encoding sorts last. Every
    /// partition keeps the same one, whatever order they come in.
    pub fn supersedes(&self, other: &Definition) -> bool {
        (self.version, self.encode()) > (other.version, other.encode())
    }
}

/// Every configured audience, compiled, in name order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Audiences(Vec<Audience>);

impl Audiences {
    /// Compiles every definition; the first that cannot work is the error,
    /// named.
    pub fn compile(defs: &std::collections::BTreeMap<String, AudienceConfig>) -> Result<Audiences, crate::Error> {
        if defs.len() > MAX_AUDIENCES {
            return Err(crate::Error::Config(format!("at most {MAX_AUDIENCES} audiences, got {}", defs.len())));
        }
        let mut all = Vec::with_capacity(defs.len());
        for (name, def) in defs {
            all.push(Audience::compile(name, def, 0).map_err(crate::Error::Config)?);
        }
        Ok(Audiences(all))
    }

    /// `configured` with the live `defined` audiences (through
    /// `AdminService`) not named there, in name order. A definition that no
    /// longer compiles is left out (it compiled when it was made).
    pub fn with_defined(configured: &Audiences, defined: &[Definition]) -> Audiences {
        let mut all = configured.0.clone();
        for d in defined.iter().filter(|d| !d.deleted && configured.get(&d.name).is_none()) {
            if let Ok(a) = Audience::compile(&d.name, &d.config, d.version) {
                all.push(a);
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Audiences(all)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Audience> {
        self.0.iter()
    }

    /// The audience named `name` (they are kept in name order).
    pub fn get(&self, name: &str) -> Option<&Audience> {
        self.0.binary_search_by(|a| a.name.as_str().cmp(name)).ok().map(|i| &self.0[i])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names of the audiences `member` is in at `at`, in name order: its
    /// rule holds and, for an audience with a purpose, the member granted it.
    /// A profile that is not a live member's is in none.
    pub fn of<'a>(&'a self, member: &Member, at: Millis, cfg: &crate::FoldConfig) -> Vec<&'a str> {
        if !state::in_audiences(member) {
            return Vec::new();
        }
        self.0
            .iter()
            .filter(|a| a.purpose.as_ref().is_none_or(|p| member.consents.get(p).is_some_and(|c| c.value.granted)))
            .filter(|a| holds(&a.rule, member, at, cfg))
            .map(|a| a.name.as_str())
            .collect()
    }
}

impl Rule {
    /// Whether time alone may change the answer: the rule measures a
    /// window, a recency, points, a tier or enrolment.
    pub fn timed(&self) -> bool {
        match self {
            Rule::And(all) | Rule::Or(all) => all.iter().any(Rule::timed),
            Rule::Not(inner) => inner.timed(),
            Rule::Test(t) => matches!(t, Test::Enrolled),
            Rule::Compare(m, ..) => !matches!(
                m,
                Measure::Orders { within: None, .. }
                    | Measure::Spend { within: None, .. }
                    | Measure::Affinity { .. }
                    | Measure::Events { .. }
                    | Measure::Trait(_)
            ),
        }
    }

    /// The traits the rule reads (`trait(...)`, `has_trait(...)`).
    pub fn traits(&self) -> Vec<&str> {
        match self {
            Rule::And(all) | Rule::Or(all) => all.iter().flat_map(Rule::traits).collect(),
            Rule::Not(inner) => inner.traits(),
            Rule::Test(Test::HasTrait(t)) | Rule::Compare(Measure::Trait(t), ..) => vec![t.as_str()],
            _ => Vec::new(),
        }
    }
}
