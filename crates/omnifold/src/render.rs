//! Readable summaries of the CLI's answers: money in major units with the
//! currency, instants in the machine's local time, lists as aligned
//! tables. `--json` prints the proto JSON instead (for scripts).

use std::fmt::Write as _;

use chrono::{Local, TimeZone as _};
use omnifold_proto::v1 as proto;
use omnifold_proto::wkt::Timestamp;

/// Currencies without minor units (ISO 4217 exponent 0).
const NO_MINOR_UNITS: [&str; 6] = ["JPY", "KRW", "VND", "CLP", "ISK", "UGX"];

/// `123456` fen as `1,234.56 CNY`.
pub fn money(minor: i64, currency: &str) -> String {
    let currency = if currency.is_empty() { "CNY" } else { currency };
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if NO_MINOR_UNITS.contains(&currency) {
        return format!("{sign}{} {currency}", thousands(abs));
    }
    format!("{sign}{}.{:02} {currency}", thousands(abs / 100), abs % 100)
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Points, signed, with thousands separators.
fn points(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "" };
    format!("{sign}{}", thousands(n.unsigned_abs()))
}

/// An instant in the machine's local time zone, to the minute, with its
/// offset: `2026-06-01 18:00 +08:00`; `-` when absent.
pub fn when(t: Option<&Timestamp>) -> String {
    t.and_then(|t| Local.timestamp_opt(t.seconds, 0).single())
        .map_or_else(|| "-".to_owned(), |d| d.format("%Y-%m-%d %H:%M %:z").to_string())
}

/// Rows as aligned columns under a header (numbers right-aligned by the
/// caller's `right` set).
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(cell.chars().count());
            if i > 0 {
                out.push_str("  ");
            }
            if right.contains(&i) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                if i + 1 < cells.len() {
                    out.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn tier(t: i32) -> &'static str {
    proto::Tier::try_from(t).map_or("?", |t| t.as_str_name())
}

fn channel(c: i32) -> &'static str {
    proto::Channel::try_from(c).map_or("?", |c| c.as_str_name())
}

/// A profile: who, identifiers, points, purchases, channels, interests.
pub fn profile(p: &proto::Profile) -> String {
    let mut o = String::new();
    let kind = proto::ProfileKind::try_from(p.kind).map_or("?", |k| k.as_str_name());
    let _ = writeln!(o, "{}  ({kind})", p.member_id);
    for i in &p.identifiers {
        let t = proto::IdentifierType::try_from(i.r#type).map_or("?", |t| t.as_str_name());
        let _ = writeln!(o, "  {t:<13} {}", i.value);
    }
    if !p.aliases.is_empty() {
        let _ = writeln!(o, "  aliases       {}", p.aliases.join(", "));
    }
    let _ =
        writeln!(o, "  first seen    {}   last seen {}", when(p.first_seen_at.as_ref()), when(p.last_seen_at.as_ref()));
    if !p.audiences.is_empty() {
        let _ = writeln!(o, "  audiences     {}", p.audiences.join(", "));
    }
    if let Some(l) = &p.loyalty {
        let _ = writeln!(
            o,
            "\nLoyalty: {} since {}; {} active points, {} pending{}",
            tier(l.tier),
            when(l.tier_since.as_ref()),
            points(l.active_points),
            points(l.pending_points),
            if l.negative_balance > 0 { format!(", {} owed", points(l.negative_balance)) } else { String::new() }
        );
    }
    if let Some(s) = &p.purchases {
        let c = s.currency.as_str();
        let _ = writeln!(
            o,
            "\nPurchases: {} orders, {} net ({} gross, {} returned); average order {}",
            thousands(s.orders),
            money(s.net_minor, c),
            money(s.gross_minor, c),
            money(s.returned_minor, c),
            money(s.average_order_value_minor, c)
        );
        let _ = writeln!(
            o,
            "  last order {}; {} orders in 90 days, {} in 365 days ({})",
            when(s.last_order_at.as_ref()),
            s.orders_last_90_days,
            s.orders_last_365_days,
            money(s.net_last_365_days_minor, c)
        );
        if let Some(r) = &s.rfm {
            let _ = writeln!(o, "  RFM {}{}{} ({})", r.r_score, r.f_score, r.m_score, r.segment);
        }
    }
    if !p.channels.is_empty() {
        let currency = p.purchases.as_ref().map_or("", |s| s.currency.as_str());
        let rows: Vec<Vec<String>> = p
            .channels
            .iter()
            .map(|c| {
                vec![
                    channel(c.channel).to_owned(),
                    thousands(c.events),
                    thousands(c.orders),
                    money(c.spend_minor, currency),
                    when(c.last_seen_at.as_ref()),
                ]
            })
            .collect();
        let _ = write!(o, "\n{}", table(&["channel", "events", "orders", "spend", "last seen"], &rows, &[1, 2, 3]));
    }
    if let Some(b) = p.browse.as_ref().filter(|b| !b.recent_products.is_empty() || !b.category_affinity.is_empty()) {
        let top: Vec<String> =
            b.category_affinity.iter().take(5).map(|a| format!("{} {:.0}%", a.category, a.score * 100.0)).collect();
        let _ = writeln!(o, "\nInterests: {}", top.join(", "));
        let recent: Vec<&str> = b.recent_products.iter().take(5).map(|r| r.sku.as_str()).collect();
        let _ =
            writeln!(o, "  recently viewed {} ({} views, {} searches)", recent.join(", "), b.product_views, b.searches);
    }
    if !p.traits.is_empty() {
        let traits: Vec<String> = p.traits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "\nTraits: {}", traits.join(", "));
    }
    if !p.consents.is_empty() {
        let consents: Vec<String> = p
            .consents
            .iter()
            .map(|c| format!("{} {}", c.purpose, if c.granted { "granted" } else { "refused" }))
            .collect();
        let _ = writeln!(o, "Consents: {}", consents.join(", "));
    }
    if let Some(v) = &p.version {
        let _ = writeln!(
            o,
            "\nversion {}:{} ({} events), as of {}",
            v.partition,
            v.next_offset,
            v.events_applied,
            when(p.as_of.as_ref())
        );
    }
    o
}

/// A points balance.
pub fn balance(b: &proto::Balance) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}  {} since {}", b.member_id, tier(b.tier), when(b.tier_since.as_ref()));
    let _ = writeln!(
        o,
        "  active {}   pending {}   expiring in 30 days {}{}",
        points(b.active_points),
        points(b.pending_points),
        points(b.expiring_soon_points),
        if b.negative_balance > 0 { format!("   owed {}", points(b.negative_balance)) } else { String::new() }
    );
    let _ = writeln!(
        o,
        "  lifetime: earned {}, redeemed {}, expired {}, revoked {}",
        points(b.lifetime_earned),
        points(b.lifetime_redeemed),
        points(b.lifetime_expired),
        points(b.lifetime_revoked)
    );
    if !b.pending.is_empty() {
        let rows: Vec<Vec<String>> = b
            .pending
            .iter()
            .map(|p| vec![points(p.points), when(p.activates_at.as_ref()), p.order_id.clone()])
            .collect();
        let _ = write!(o, "\n{}", table(&["pending", "active from", "order"], &rows, &[0]));
    }
    if !b.expiring.is_empty() {
        let rows: Vec<Vec<String>> =
            b.expiring.iter().map(|e| vec![points(e.points), when(e.expires_at.as_ref())]).collect();
        let _ = write!(o, "\n{}", table(&["expiring", "on"], &rows, &[0]));
    }
    let _ = writeln!(o, "\nas of {}", when(b.as_of.as_ref()));
    o
}

/// A page of the ledger, newest first.
pub fn ledger(l: &proto::ListLedgerResponse) -> String {
    let rows: Vec<Vec<String>> = l
        .entries
        .iter()
        .map(|e| {
            let kind = proto::LedgerEntryKind::try_from(e.kind).map_or("?", |k| k.as_str_name());
            let what = [e.order_id.as_str(), e.reason.as_str(), e.request_id.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                e.seq.to_string(),
                when(e.occurred_at.as_ref()),
                kind.to_owned(),
                points(e.points),
                channel(e.channel).to_owned(),
                what,
            ]
        })
        .collect();
    let mut o = table(&["#", "when", "kind", "points", "channel", "order / reason"], &rows, &[0, 3]);
    if !l.next_page_token.is_empty() {
        let _ = writeln!(o, "(more: --page-token {})", l.next_page_token);
    }
    o
}

/// Tier, benefits and progress.
pub fn benefits(b: &proto::Benefits, currency: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}  {} since {} (reviewed {})",
        b.member_id,
        tier(b.tier),
        when(b.tier_since.as_ref()),
        when(b.next_review_at.as_ref())
    );
    for benefit in &b.benefits {
        let _ = writeln!(o, "  - {}", benefit.description);
    }
    if b.next_tier != 0 {
        let _ = writeln!(
            o,
            "next: {} at {} qualifying spend; {} so far",
            tier(b.next_tier),
            money(b.next_tier_threshold_minor, currency),
            money(b.qualifying_spend_minor, currency)
        );
    }
    let _ = writeln!(
        o,
        "points: {} active, {} pending, {} expiring in 30 days",
        points(b.active_points),
        points(b.pending_points),
        points(b.expiring_soon_points)
    );
    o
}

/// A redemption's or adjustment's verdict, one line, with the balance after it.
pub fn verdict(status: i32, reason: &str, request_id: &str, balance: Option<&proto::Balance>) -> String {
    let status = proto::RedemptionStatus::try_from(status).map_or("?", |s| s.as_str_name());
    let mut o = format!("{status} ({request_id})");
    if !reason.is_empty() {
        let _ = write!(o, ": {reason}");
    }
    if let Some(b) = balance {
        let _ = write!(o, "; now {} active, {} pending", points(b.active_points), points(b.pending_points));
    }
    o.push('\n');
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_in_major_units_with_the_currency() {
        assert_eq!(money(123_456, "CNY"), "1,234.56 CNY");
        assert_eq!(money(-5, "USD"), "-0.05 USD");
        assert_eq!(money(0, ""), "0.00 CNY");
        assert_eq!(money(1_500, "JPY"), "1,500 JPY");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(points(-1234), "-1,234");
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![vec!["a".to_owned(), "1".to_owned()], vec!["bbb".to_owned(), "1,000".to_owned()]];
        assert_eq!(table(&["name", "n"], &rows, &[1]), "name      n\na         1\nbbb   1,000\n");
    }
}
