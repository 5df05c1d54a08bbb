//! The rule language's types: each measure's arguments and the type of
//! value it compares with, checked once, so evaluation cannot fail.

use super::parse::{Arg, Call, Expr, Literal, LiteralKind};
use super::{Cmp as Op, MAX_RULE_DEPTH, MAX_RULE_NODES, Measure, Rule, RuleError, Test, Value};
use crate::Channel;
use crate::ident::IdType;
use crate::loyalty::Tier;
use crate::time::{DAY, Millis};

/// Every measure, for the message about an unknown one.
const MEASURES: &str = "tier, points_active, points_pending, points_expiring(within), orders(within | channel), \
     spend(within | channel), products_viewed(within, category), affinity(category), events(channel), \
     since_last_order, since_last_seen(channel), since_enrolled, trait(name), and the yes/no consented(purpose), \
     has_identifier(type), has_trait(name), enrolled";

/// The longest window over orders and spend: what every member's dated
/// spend keeps (`fold.order_history_days` is at least 365).
const MAX_SPEND_WINDOW: Millis = 365 * DAY;
/// The longest other window or period.
const MAX_WINDOW: Millis = 3_650 * DAY;
/// The largest count or amount a rule may name.
const MAX_NUMBER: i64 = 1_000_000_000_000;

pub(super) fn rule(e: &Expr) -> Result<Rule, RuleError> {
    let mut nodes = 0;
    build(e, 0, &mut nodes)
}

/// Where an expression starts, for messages about it.
fn start(e: &Expr) -> usize {
    match e {
        Expr::And(all) | Expr::Or(all) => all.first().map_or(0, start),
        Expr::Not(inner) => start(inner),
        Expr::Test(call) | Expr::Compare(call, ..) => call.at,
    }
}

fn build(e: &Expr, depth: usize, nodes: &mut usize) -> Result<Rule, RuleError> {
    *nodes += 1;
    if *nodes > MAX_RULE_NODES {
        return Err(RuleError::at(start(e), format!("a rule holds at most {MAX_RULE_NODES} conditions and operators")));
    }
    if depth > MAX_RULE_DEPTH {
        return Err(RuleError::at(start(e), format!("a rule nests at most {MAX_RULE_DEPTH} deep")));
    }
    let all = |v: &[Expr], nodes: &mut usize| -> Result<Vec<Rule>, RuleError> {
        v.iter().map(|x| build(x, depth + 1, nodes)).collect()
    };
    Ok(match e {
        Expr::And(v) => Rule::And(all(v, nodes)?),
        Expr::Or(v) => Rule::Or(all(v, nodes)?),
        Expr::Not(inner) => Rule::Not(Box::new(build(inner, depth + 1, nodes)?)),
        Expr::Test(call) => match test(call)? {
            Some(t) => Rule::Test(t),
            None => {
                measure(call)?;
                return Err(RuleError::at(
                    call.at,
                    format!(
                        "`{}` is not yes or no: compare it with a value, for example `{}`",
                        call.name,
                        example(call)
                    ),
                ));
            }
        },
        Expr::Compare(call, op, lit) => {
            if test(call)?.is_some() {
                return Err(RuleError::at(
                    lit.at,
                    format!("`{}` is yes or no: use it alone, or with `not`, without `{}`", call.name, op.symbol()),
                ));
            }
            let m = measure(call)?;
            let v = value(&m, call, *op, lit)?;
            Rule::Compare(m, *op, v)
        }
    })
}

fn example(call: &Call) -> &'static str {
    match call.name.as_str() {
        "tier" => "tier >= GOLD",
        "spend" => "spend(within=365d) >= 2000",
        "affinity" => "affinity(\"shoes\") > 0.3",
        "trait" => "trait(\"city\") == \"Shanghai\"",
        n if n.starts_with("since_") => "since_last_order > 90d",
        _ => "orders(within=7d) > 0",
    }
}

/// A call's arguments, taken one by one; what is left over is an error.
struct Args<'a> {
    call: &'a Call,
    taken: Vec<bool>,
    /// The names this measure takes, for messages.
    takes: &'static str,
}

impl<'a> Args<'a> {
    fn of(call: &'a Call, takes: &'static str) -> Args<'a> {
        Args { call, taken: vec![false; call.args.len()], takes }
    }

    /// The argument `name`, given by name or (when it is the measure's
    /// first) alone in the first place.
    fn get(&mut self, name: &str, first: bool) -> Option<&'a Literal> {
        let i = self
            .call
            .args
            .iter()
            .position(|a| a.name.as_deref() == Some(name))
            .or_else(|| (first && self.call.args.first().is_some_and(|a| a.name.is_none())).then_some(0))?;
        self.taken[i] = true;
        Some(&self.call.args[i].value)
    }

    fn required(&mut self, name: &str, first: bool) -> Result<&'a Literal, RuleError> {
        self.get(name, first).ok_or_else(|| {
            RuleError::at(self.call.at, format!("`{}` needs `{name}`: {}({name}=...)", self.call.name, self.call.name))
        })
    }

    fn done(self) -> Result<(), RuleError> {
        match self.taken.iter().position(|t| !t) {
            None => Ok(()),
            Some(i) => {
                let Arg { name, value } = &self.call.args[i];
                let what = name.as_deref().map_or("an argument".to_owned(), |n| format!("`{n}`"));
                let takes =
                    if self.takes.is_empty() { "no arguments".to_owned() } else { format!("only {}", self.takes) };
                Err(RuleError::at(value.at, format!("`{}` does not take {what}: it takes {takes}", self.call.name)))
            }
        }
    }
}

/// The yes/no measure `call` names; `None` when it names another measure.
fn test(call: &Call) -> Result<Option<Test>, RuleError> {
    let t = match call.name.as_str() {
        "consented" => {
            let mut a = Args::of(call, "the purpose");
            let t = Test::Consented(text(a.required("purpose", true)?, "a purpose")?);
            a.done()?;
            t
        }
        "has_identifier" => {
            let mut a = Args::of(call, "the identifier type");
            let t = Test::HasIdentifier(id_type(a.required("type", true)?)?);
            a.done()?;
            t
        }
        "has_trait" => {
            let mut a = Args::of(call, "the trait's name");
            let t = Test::HasTrait(text(a.required("name", true)?, "a trait's name")?);
            a.done()?;
            t
        }
        "enrolled" => {
            Args::of(call, "").done()?;
            Test::Enrolled
        }
        _ => return Ok(None),
    };
    Ok(Some(t))
}

/// The measure `call` names, with its arguments checked.
fn measure(call: &Call) -> Result<Measure, RuleError> {
    let bare = |m: Measure| Args::of(call, "").done().map(|()| m);
    match call.name.as_str() {
        "tier" => bare(Measure::Tier),
        "points_active" => bare(Measure::PointsActive),
        "points_pending" => bare(Measure::PointsPending),
        "since_last_order" => bare(Measure::SinceLastOrder),
        "since_enrolled" => bare(Measure::SinceEnrolled),
        "points_expiring" => {
            let mut a = Args::of(call, "within");
            let within = window(a.required("within", true)?, MAX_WINDOW)?;
            a.done().map(|()| Measure::PointsExpiring { within })
        }
        "orders" | "spend" => {
            let mut a = Args::of(call, "within or channel");
            let within = a.get("within", false).map(|l| window(l, MAX_SPEND_WINDOW)).transpose()?;
            let channel = a.get("channel", false).map(channel).transpose()?;
            if within.is_some() && channel.is_some() {
                return Err(RuleError::at(
                    call.at,
                    format!(
                        "`{}` by channel is counted over all time: give `within` or `channel`, not both",
                        call.name
                    ),
                ));
            }
            a.done()?;
            Ok(if call.name == "orders" {
                Measure::Orders { within, channel }
            } else {
                Measure::Spend { within, channel }
            })
        }
        "products_viewed" => {
            let mut a = Args::of(call, "within and category");
            let within = window(a.required("within", true)?, MAX_WINDOW)?;
            let category = a.get("category", false).map(|l| text(l, "a category")).transpose()?;
            a.done().map(|()| Measure::ProductsViewed { within, category })
        }
        "affinity" => {
            let mut a = Args::of(call, "the category");
            let category = text(a.required("category", true)?, "a category")?;
            a.done().map(|()| Measure::Affinity { category })
        }
        "events" | "since_last_seen" => {
            let mut a = Args::of(call, "channel");
            let channel = a.get("channel", true).map(channel).transpose()?;
            a.done()?;
            Ok(if call.name == "events" { Measure::Events { channel } } else { Measure::SinceLastSeen { channel } })
        }
        "trait" => {
            let mut a = Args::of(call, "the trait's name");
            let name = text(a.required("name", true)?, "a trait's name")?;
            a.done().map(|()| Measure::Trait(name))
        }
        other => Err(RuleError::at(call.at, format!("unknown measure `{other}`: the measures are {MEASURES}"))),
    }
}

/// The value `lit` for comparing with `m` by `op`.
fn value(m: &Measure, call: &Call, op: Op, lit: &Literal) -> Result<Value, RuleError> {
    match m {
        Measure::Tier => match &lit.kind {
            LiteralKind::Name(n) => {
                Tier::ALL.into_iter().find(|t| t.name() == n).map(Value::Tier).ok_or_else(|| {
                    RuleError::at(lit.at, format!("unknown tier `{n}`: MEMBER, SILVER, GOLD or PLATINUM"))
                })
            }
            _ => Err(RuleError::at(lit.at, "compare `tier` with a tier: MEMBER, SILVER, GOLD or PLATINUM")),
        },
        Measure::Spend { .. } => Ok(Value::Minor(money(lit)?)),
        Measure::Affinity { .. } => match number(lit)?.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(Value::Share(f)),
            _ => Err(RuleError::at(lit.at, "an affinity is a share between 0 and 1, for example 0.3")),
        },
        Measure::SinceLastOrder | Measure::SinceLastSeen { .. } | Measure::SinceEnrolled => match lit.kind {
            LiteralKind::Duration(d) => Ok(Value::Duration(d)),
            _ => Err(RuleError::at(lit.at, format!("compare `{}` with a duration, for example 90d or 12h", call.name))),
        },
        Measure::Trait(_) => {
            if !matches!(op, Op::Eq | Op::Ne) {
                return Err(RuleError::at(lit.at, "a trait is text: compare it with `==` or `!=`"));
            }
            Ok(Value::Text(text(lit, "a text in quotes")?))
        }
        _ => Ok(Value::Int(count(lit, &call.name)?)),
    }
}

fn number(lit: &Literal) -> Result<&str, RuleError> {
    match &lit.kind {
        LiteralKind::Number(n) => Ok(n),
        _ => Err(RuleError::at(lit.at, "expected a number")),
    }
}

/// A whole, non-negative count.
fn count(lit: &Literal, measure: &str) -> Result<i64, RuleError> {
    number(lit)?
        .parse::<i64>()
        .ok()
        .filter(|n| (0..=MAX_NUMBER).contains(n))
        .ok_or_else(|| RuleError::at(lit.at, format!("`{measure}` is a count: compare it with a whole number")))
}

/// An amount in major units with at most two decimals, in minor units.
fn money(lit: &Literal) -> Result<i64, RuleError> {
    let n = number(lit)?;
    let (whole, cents) = n.split_once('.').unwrap_or((n, ""));
    let bad = || RuleError::at(lit.at, "spend is an amount in the program currency, for example 2000 or 99.50");
    if cents.len() > 2 || whole.is_empty() {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let cents: i64 = if cents.is_empty() { 0 } else { format!("{cents:0<2}").parse().map_err(|_| bad())? };
    whole.checked_mul(100).and_then(|w| w.checked_add(cents)).filter(|m| *m <= MAX_NUMBER).ok_or_else(bad)
}

fn window(lit: &Literal, max: Millis) -> Result<Millis, RuleError> {
    match lit.kind {
        LiteralKind::Duration(d) if d > 0 && d <= max => Ok(d),
        LiteralKind::Duration(_) => {
            Err(RuleError::at(lit.at, format!("a window is more than 0 and at most {} days", max / DAY)))
        }
        _ => Err(RuleError::at(lit.at, "expected a duration, for example 7d, 12h or 30m")),
    }
}

fn channel(lit: &Literal) -> Result<Channel, RuleError> {
    let names = "ONLINE_WEB, MOBILE_APP, MINI_PROGRAM, STORE_POS, MARKETPLACE or CALL_CENTER";
    match &lit.kind {
        LiteralKind::Name(n) => {
            Channel::from_name(n).ok_or_else(|| RuleError::at(lit.at, format!("unknown channel `{n}`: {names}")))
        }
        _ => Err(RuleError::at(lit.at, format!("expected a channel: {names}"))),
    }
}

fn id_type(lit: &Literal) -> Result<IdType, RuleError> {
    let all = [IdType::Phone, IdType::Email, IdType::LoyaltyCard, IdType::DeviceId, IdType::External];
    let known =
        || RuleError::at(lit.at, "expected an identifier type: PHONE, EMAIL, LOYALTY_CARD, DEVICE_ID or EXTERNAL");
    match &lit.kind {
        LiteralKind::Name(n) => all.into_iter().find(|t| t.as_str() == n).ok_or_else(known),
        _ => Err(known()),
    }
}

fn text(lit: &Literal, what: &str) -> Result<String, RuleError> {
    match &lit.kind {
        LiteralKind::Text(t) if !t.trim().is_empty() && t.len() <= 256 => Ok(t.clone()),
        _ => Err(RuleError::at(lit.at, format!("expected {what}: a text in quotes, 1 to 256 bytes"))),
    }
}
