//! Dated spend: the net qualifying spend of a member's orders at the instant
//! each was placed, so that windows (the tier's rolling window; orders and
//! spend in the last 90 and 365 days) are sums over a short list instead of
//! walks over the kept orders. A leaf: it calls nothing else in the crate
//! but the lineage counter of `book.rs`.
//!
//! Orders placed at the same instant share a mark. Windows are exact at any
//! instant, also mid-day, because each mark keeps its instant. The list is
//! bounded twice: marks older than the longest window that reads them (plus
//! a margin for late orders) are dropped, and so are the oldest marks beyond
//! `max_spend_marks` (docs/loyalty.md, "Dated spend").
//!
//! The store keeps the marks as one entry beside the member's record, like
//! a book: it grows with the orders of a year, so events that do not change
//! it (a product view) must not rewrite it. `Spend` remembers whether it
//! changed since it was stored, and which stored copy it continues.

use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// Orders placed at one instant: how many are not cancelled, and their net
/// spend in program minor units (returns subtracted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendMark {
    pub at: Millis,
    pub orders: u32,
    pub net_program_minor: i64,
}

/// Orders and net spend in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub orders: u64,
    pub net_program_minor: i64,
}

/// The marks, oldest first, one per instant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Spend {
    marks: Vec<SpendMark>,
    /// Which stored copy this continues (0: none), as `Book::lineage`.
    #[serde(skip)]
    lineage: u64,
    /// Changed since it was stored.
    #[serde(skip)]
    changed: bool,
}

impl PartialEq for Spend {
    /// Equal when the marks are; what is stored is not compared.
    fn eq(&self, other: &Self) -> bool {
        self.marks == other.marks
    }
}

impl Eq for Spend {}

impl Spend {
    /// These marks as the store holds them: a new lineage, nothing changed.
    pub fn into_stored(self) -> Self {
        Spend { lineage: crate::book::new_lineage(), changed: false, ..self }
    }

    /// The stored copy this continues, 0 for none.
    pub fn lineage(&self) -> u64 {
        self.lineage
    }

    /// Whether the marks changed since they were stored.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The marks have been written: they are now the store's copy.
    pub fn mark_stored(&mut self) {
        self.changed = false;
        if self.lineage == 0 {
            self.lineage = crate::book::new_lineage();
        }
    }

    /// Marks from outside the fold (a join's wire form, a stored entry):
    /// refused unless they are in time order, one per instant, each with an
    /// order.
    pub fn from_marks(marks: Vec<SpendMark>) -> Result<Self, String> {
        if let Some(w) = marks.windows(2).find(|w| w[0].at >= w[1].at) {
            return Err(format!("spend marks out of time order at {} ms", w[1].at));
        }
        if let Some(m) = marks.iter().find(|m| m.orders == 0) {
            return Err(format!("a spend mark at {} ms counts no order", m.at));
        }
        Ok(Spend { marks, lineage: 0, changed: true })
    }

    pub fn marks(&self) -> &[SpendMark] {
        &self.marks
    }

    pub fn len(&self) -> usize {
        self.marks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    fn find(&self, at: Millis) -> Result<usize, usize> {
        self.marks.binary_search_by_key(&at, |m| m.at)
    }

    /// Whether a mark is kept for orders placed at `at`.
    pub fn has_mark(&self, at: Millis) -> bool {
        self.find(at).is_ok()
    }

    /// An order placed at `at` with net spend `net`.
    pub(crate) fn add_order(&mut self, at: Millis, net: i64) {
        self.changed = true;
        match self.find(at) {
            Ok(i) => {
                let m = &mut self.marks[i];
                m.orders = m.orders.saturating_add(1);
                m.net_program_minor = m.net_program_minor.saturating_add(net);
            }
            Err(i) => self.marks.insert(i, SpendMark { at, orders: 1, net_program_minor: net }),
        }
    }

    /// More of an order placed at `at` was returned: `delta` less net spend.
    /// An order whose mark was dropped (too old, or beyond the bound) is in
    /// no window any more: nothing to change.
    pub(crate) fn returned(&mut self, at: Millis, delta: i64) {
        if let Ok(i) = self.find(at) {
            let m = &mut self.marks[i];
            m.net_program_minor = m.net_program_minor.saturating_sub(delta);
            self.changed = true;
        }
    }

    /// An order placed at `at`, with net spend `net` so far, was cancelled.
    pub(crate) fn cancelled(&mut self, at: Millis, net: i64) {
        if let Ok(i) = self.find(at) {
            self.changed = true;
            let m = &mut self.marks[i];
            m.orders = m.orders.saturating_sub(1);
            m.net_program_minor = m.net_program_minor.saturating_sub(net);
            if m.orders == 0 {
                self.marks.remove(i);
            }
        }
    }

    /// Adds another profile's marks (a join or a merge).
    pub(crate) fn merge(&mut self, other: &Spend) {
        self.changed |= !other.marks.is_empty();
        for m in &other.marks {
            match self.find(m.at) {
                Ok(i) => {
                    let mine = &mut self.marks[i];
                    mine.orders = mine.orders.saturating_add(m.orders);
                    mine.net_program_minor = mine.net_program_minor.saturating_add(m.net_program_minor);
                }
                Err(i) => self.marks.insert(i, *m),
            }
        }
    }

    /// Drops marks placed more than `keep` before the latest one, then the
    /// oldest beyond `max_marks`.
    pub(crate) fn prune(&mut self, keep: Millis, max_marks: usize) {
        let Some(latest) = self.marks.last().map(|m| m.at) else {
            return;
        };
        let old = self.marks.partition_point(|m| m.at < latest.saturating_sub(keep));
        let over = self.marks.len().saturating_sub(max_marks);
        if old.max(over) > 0 {
            self.changed = true;
            self.marks.drain(..old.max(over));
        }
    }

    /// Orders and net spend placed in `(from, to]`.
    pub fn window(&self, from: Millis, to: Millis) -> Totals {
        let start = self.marks.partition_point(|m| m.at <= from);
        let end = self.marks.partition_point(|m| m.at <= to);
        self.marks.get(start..end).unwrap_or_default().iter().fold(Totals::default(), |t, m| Totals {
            orders: t.orders.saturating_add(u64::from(m.orders)),
            net_program_minor: t.net_program_minor.saturating_add(m.net_program_minor),
        })
    }

    /// The latest instant at or before `at` with an order.
    pub fn last_order_at(&self, at: Millis) -> Option<Millis> {
        let end = self.marks.partition_point(|m| m.at <= at);
        end.checked_sub(1).map(|i| self.marks[i].at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(orders: &[(Millis, i64)]) -> Spend {
        let mut s = Spend::default();
        for (at, net) in orders {
            s.add_order(*at, *net);
        }
        s
    }

    #[test]
    fn windows_are_exact_at_any_instant() {
        let s = spend(&[(10, 100), (20, 50), (20, 5), (30, 7)]);
        assert_eq!(s.len(), 3, "orders at one instant share a mark");
        assert_eq!(s.window(10, 30), Totals { orders: 3, net_program_minor: 62 });
        assert_eq!(s.window(9, 29), Totals { orders: 3, net_program_minor: 155 });
        assert_eq!(s.window(20, 20), Totals::default());
        assert_eq!(s.last_order_at(29), Some(20));
        assert_eq!(s.last_order_at(9), None);
    }

    #[test]
    fn returns_and_cancels_take_back_what_the_order_added() {
        let mut s = spend(&[(10, 100), (10, 40)]);
        s.returned(10, 30);
        assert_eq!(s.window(0, 10), Totals { orders: 2, net_program_minor: 110 });
        s.cancelled(10, 70);
        assert_eq!(s.window(0, 10), Totals { orders: 1, net_program_minor: 40 });
        s.cancelled(10, 40);
        assert!(s.is_empty(), "a mark with no order left goes");
        s.returned(99, 5);
        s.cancelled(99, 5);
        assert!(s.is_empty(), "an order whose mark was dropped changes nothing");
    }

    #[test]
    fn pruning_keeps_the_window_and_the_bound() {
        let mut s = spend(&[(0, 1), (50, 2), (100, 3), (150, 4)]);
        s.prune(100, 10);
        assert_eq!(s.marks().iter().map(|m| m.at).collect::<Vec<_>>(), [50, 100, 150]);
        s.prune(1_000, 2);
        assert_eq!(s.marks().iter().map(|m| m.at).collect::<Vec<_>>(), [100, 150]);
    }

    #[test]
    fn merging_adds_marks_at_each_instant() {
        let mut a = spend(&[(10, 1), (30, 3)]);
        a.merge(&spend(&[(10, 5), (20, 2)]));
        assert_eq!(a, spend(&[(10, 1), (10, 5), (20, 2), (30, 3)]));
    }

    #[test]
    fn spend_knows_whether_it_changed_since_it_was_stored() {
        let mut s = spend(&[(10, 1)]).into_stored();
        assert!(s.lineage() != 0 && !s.changed());
        s.returned(99, 1);
        s.cancelled(99, 1);
        s.prune(1_000, 10);
        s.merge(&Spend::default());
        assert!(!s.changed(), "nothing changed");
        s.add_order(20, 1);
        assert!(s.changed());
        let lineage = s.lineage();
        s.mark_stored();
        assert_eq!((s.lineage(), s.changed()), (lineage, false));
        let mut fresh = spend(&[(1, 1)]);
        assert_eq!(fresh.lineage(), 0);
        fresh.mark_stored();
        assert_ne!(fresh.lineage(), 0);
    }

    #[test]
    fn marks_from_outside_are_checked() {
        let m = |at, orders| SpendMark { at, orders, net_program_minor: 1 };
        assert!(Spend::from_marks(vec![m(1, 1), m(2, 1)]).is_ok());
        assert!(Spend::from_marks(vec![m(2, 1), m(2, 1)]).unwrap_err().contains("time order"));
        assert!(Spend::from_marks(vec![m(1, 0)]).unwrap_err().contains("no order"));
    }
}
