//! Profile summaries: how an event updates the browse and purchase
//! summaries of a member (recent products and searches, categories, kept
//! orders), and the checked sums every part uses. A leaf of the fold: it
//! calls nothing else in the crate.

use crate::Rejection;
use crate::config::FoldConfig;
use crate::member::{Member, RecentProduct, RecentSearch};
use crate::time::{DAY, Millis};

/// A product view: the recent products (most recent first, distinct SKUs,
/// bounded) and the category's views.
pub(crate) fn view_product(member: &mut Member, sku: &str, category: &str, at: Millis, cfg: &FoldConfig) {
    let b = &mut member.browse;
    b.product_views = b.product_views.saturating_add(1);
    let mut views: u32 = 1;
    let mut last = at;
    let mut category = category.to_owned();
    if let Some(i) = b.recent.iter().position(|p| p.sku == sku) {
        let old = b.recent.remove(i);
        views = views.saturating_add(old.views);
        last = last.max(old.last_viewed_at);
        if category.is_empty() {
            category = old.category;
        }
    }
    // Most recent first; equal times keep SKU order so the result is deterministic.
    let idx = b
        .recent
        .partition_point(|p| (p.last_viewed_at, std::cmp::Reverse(p.sku.as_str())) > (last, std::cmp::Reverse(sku)));
    if idx < cfg.recent_products {
        b.recent.insert(
            idx,
            RecentProduct { sku: sku.to_owned(), category: category.clone(), last_viewed_at: last, views },
        );
        b.recent.truncate(cfg.recent_products);
    }
    if !category.is_empty() {
        bump_category(member, &category, 1, 0, cfg);
    }
}

/// Adds views and purchased units to a category, keeping at most
/// `max_categories` (the weakest goes).
pub(crate) fn bump_category(member: &mut Member, category: &str, views: u64, units: u64, cfg: &FoldConfig) {
    let cats = &mut member.browse.categories;
    let c = cats.entry(category.to_owned()).or_default();
    c.views = c.views.saturating_add(views);
    c.units = c.units.saturating_add(units);
    if cats.len() > cfg.max_categories {
        // Drop the weakest, the greatest name among equals.
        let weakest = cats
            .iter()
            .min_by(|a, b| a.1.weight().cmp(&b.1.weight()).then_with(|| b.0.cmp(a.0)))
            .map(|(k, _)| k.clone());
        if let Some(k) = weakest {
            cats.remove(&k);
        }
    }
}

/// A search: the recent searches (most recent first, distinct, bounded).
pub(crate) fn search(member: &mut Member, query: &str, at: Millis, cfg: &FoldConfig) {
    let b = &mut member.browse;
    b.searches = b.searches.saturating_add(1);
    let mut at = at;
    if let Some(i) = b.recent_searches.iter().position(|s| s.query == query) {
        at = at.max(b.recent_searches.remove(i).at);
    }
    let idx = b
        .recent_searches
        .partition_point(|s| (s.at, std::cmp::Reverse(s.query.as_str())) > (at, std::cmp::Reverse(query)));
    if idx < cfg.recent_searches {
        b.recent_searches.insert(idx, RecentSearch { query: query.to_owned(), at });
        b.recent_searches.truncate(cfg.recent_searches);
    }
}

/// `a + b`, or a refusal naming the member's total that would overflow.
pub(crate) fn sum(member: &Member, what: &str, a: i64, b: i64) -> Result<i64, Rejection> {
    a.checked_add(b).ok_or_else(|| {
        Rejection(format!("the {what} of `{}` would exceed what can be counted; the event was refused", member.key))
    })
}

/// Keeps orders within `order_history_days` of the latest one, at most
/// `max_orders_kept`, and dated spend as long as windows read it
/// (`FoldConfig::spend_kept`), at most `max_spend_marks`.
pub(crate) fn prune_history(member: &mut Member, cfg: &FoldConfig) {
    member.purchases.spend.prune(cfg.spend_kept(), cfg.max_spend_marks);
    let h = &mut member.purchases.history;
    let Some(latest) = h.last().map(|o| o.at) else {
        return;
    };
    let horizon = latest - i64::from(cfg.order_history_days) * DAY;
    let old = h.partition_point(|o| o.at < horizon);
    let over = h.len().saturating_sub(cfg.max_orders_kept);
    h.drain_first(old.max(over));
}
