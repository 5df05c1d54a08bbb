//! Books: the parts of a member aggregate that grow with its history (kept
//! orders, open points lots), stored one entry per key beside the member's
//! record, so an event writes only the entries it changes. A leaf: the
//! entry types implement `Entry` where they are defined.
//!
//! A `Book` keeps its entries in order and records which ones changed
//! since it was last stored. Every change goes through its methods, so none
//! can be missed. It serialises as the plain list, so the full encoding of a
//! member (`Member::encode`) holds its entries inline as before.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// An entry of a book: one id per book, and an order the book keeps.
pub trait Entry {
    type Id: Ord + Clone + std::fmt::Debug;

    fn id(&self) -> &Self::Id;

    /// Whether this entry comes before `other` in the book.
    fn precedes(&self, other: &Self) -> bool;

    /// The id as the tail of a store key: ids order as their bytes do not
    /// need to, the store never relies on key order within a book.
    fn key(id: &Self::Id) -> Vec<u8>;
}

/// The entries of one part, in order, with a record of what changed since
/// they were stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Book<T: Entry> {
    entries: Vec<T>,
    /// Which stored copy this book continues (0: none); set when the store
    /// loads the book and when it writes it.
    #[serde(skip)]
    lineage: u64,
    /// Ids inserted or changed since the book was stored.
    #[serde(skip)]
    changed: BTreeSet<T::Id>,
    /// Ids dropped since the book was stored.
    #[serde(skip)]
    removed: BTreeSet<T::Id>,
    /// The average weight of an entry, from a sample ([`Book::weight`]),
    /// remembered until the book changes: weighing reads entries that are
    /// rarely in the CPU's cache.
    #[serde(skip)]
    average_weight: OnceLock<usize>,
}

/// Lineages are unique in the process: a book compared against the lineage
/// a batch loaded is either that book or a replacement.
static NEXT_LINEAGE: AtomicU64 = AtomicU64::new(1);

/// A lineage no stored copy has had yet (books and the dated spend).
pub(crate) fn new_lineage() -> u64 {
    NEXT_LINEAGE.fetch_add(1, Ordering::Relaxed)
}

impl<T: Entry> Default for Book<T> {
    fn default() -> Self {
        Book {
            entries: Vec::new(),
            lineage: 0,
            changed: BTreeSet::new(),
            removed: BTreeSet::new(),
            average_weight: OnceLock::new(),
        }
    }
}

impl<T: Entry + PartialEq> PartialEq for Book<T> {
    /// Books are equal when their entries are; what is stored is not compared.
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl<T: Entry + Eq> Eq for Book<T> {}

impl<T: Entry> From<Vec<T>> for Book<T> {
    /// A book not stored anywhere (yet): in order, one entry per id (the first).
    fn from(mut entries: Vec<T>) -> Self {
        entries.sort_by(|a, b| {
            if a.precedes(b) {
                std::cmp::Ordering::Less
            } else if b.precedes(a) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        let mut seen = BTreeSet::new();
        entries.retain(|e| seen.insert(e.id().clone()));
        Book { entries, ..Book::default() }
    }
}

impl<'a, T: Entry> IntoIterator for &'a Book<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

impl<T: Entry> Book<T> {
    /// The entries as the store holds them: a new lineage, nothing changed.
    pub fn stored(entries: Vec<T>) -> Self {
        let mut book = Book::from(entries);
        book.lineage = new_lineage();
        book
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn first(&self) -> Option<&T> {
        self.entries.first()
    }

    pub fn last(&self) -> Option<&T> {
        self.entries.last()
    }

    /// The first entry that satisfies `pred`.
    pub fn find(&self, pred: impl Fn(&T) -> bool) -> Option<&T> {
        self.entries.iter().find(|e| pred(e))
    }

    /// The first entry that satisfies `pred`, to change; it is written back
    /// with the member.
    pub fn find_mut(&mut self, pred: impl Fn(&T) -> bool) -> Option<&mut T> {
        self.average_weight.take();
        let e = self.entries.iter_mut().find(|e| pred(e))?;
        self.changed.insert(e.id().clone());
        Some(e)
    }

    /// The entries that satisfy `pred`, in order, to change: each one the
    /// caller takes from the iterator is written back with the member.
    pub fn iter_mut_where<'a>(&'a mut self, pred: impl Fn(&T) -> bool + 'a) -> impl Iterator<Item = &'a mut T> + 'a {
        self.average_weight.take();
        let changed = &mut self.changed;
        self.entries.iter_mut().filter(move |e| pred(e)).inspect(move |e| {
            changed.insert(e.id().clone());
        })
    }

    /// Adds an entry in its place; refused (false) when its id is already kept.
    pub fn insert(&mut self, entry: T) -> bool {
        let id = entry.id().clone();
        if self.entries.iter().any(|e| *e.id() == id) {
            return false;
        }
        let idx = self.entries.partition_point(|e| e.precedes(&entry));
        self.average_weight.take();
        self.removed.remove(&id);
        self.changed.insert(id);
        self.entries.insert(idx, entry);
        true
    }

    /// The number of leading entries that satisfy `pred` (the book's order
    /// must put every entry that does before every one that does not).
    pub fn partition_point(&self, pred: impl Fn(&T) -> bool) -> usize {
        self.entries.partition_point(pred)
    }

    /// Takes the `n` first entries out of the book.
    pub fn drain_first(&mut self, n: usize) -> Vec<T> {
        self.average_weight.take();
        let out: Vec<T> = self.entries.drain(..n.min(self.entries.len())).collect();
        for e in &out {
            self.changed.remove(e.id());
            self.removed.insert(e.id().clone());
        }
        out
    }

    /// Estimated heap bytes of the entries: the average `weigh` of the first
    /// `sample` entries times their number. The average is remembered
    /// until the book changes, so `weigh` must depend on the entries only.
    pub fn weight(&self, sample: usize, weigh: impl Fn(&T) -> usize) -> usize {
        let average = *self.average_weight.get_or_init(|| {
            let n = self.entries.len().min(sample);
            self.entries[..n].iter().map(weigh).sum::<usize>().checked_div(n).unwrap_or(0)
        });
        average * self.entries.len()
    }

    /// The stored copy this book continues, 0 for none.
    pub fn lineage(&self) -> u64 {
        self.lineage
    }

    /// The entries to write: inserted or changed since the book was stored.
    pub fn changed(&self) -> impl Iterator<Item = &T> {
        let upto = if self.changed.is_empty() { 0 } else { self.entries.len() };
        self.entries[..upto].iter().filter(|e| self.changed.contains(e.id()))
    }

    /// The ids to delete: dropped since the book was stored, and not back.
    pub fn removed(&self) -> impl Iterator<Item = &T::Id> {
        self.removed.iter()
    }

    /// The book has been written: it is now the store's copy.
    pub fn mark_stored(&mut self) {
        self.changed.clear();
        self.removed.clear();
        if self.lineage == 0 {
            self.lineage = new_lineage();
        }
    }

    /// Moves the entries out, for an encoding without them; they come back
    /// unchanged with `restore_entries`, so the weight is not forgotten.
    pub(crate) fn take_entries(&mut self) -> Vec<T> {
        std::mem::take(&mut self.entries)
    }

    pub(crate) fn restore_entries(&mut self, entries: Vec<T>) {
        self.entries = entries;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Channel;
    use crate::loyalty::Lot;

    fn lot(seq: u64, expires_at: i64) -> Lot {
        Lot { seq, order_id: None, channel: Channel::StorePos, points: 10, remaining: 10, activates_at: 0, expires_at }
    }

    #[test]
    fn a_book_keeps_its_order_and_knows_what_changed() {
        let mut b: Book<Lot> = Book::stored(vec![lot(2, 30), lot(1, 30), lot(3, 10)]);
        assert_eq!(b.iter().map(|l| l.seq).collect::<Vec<_>>(), [3, 1, 2]);
        assert!(b.lineage() != 0 && b.changed().next().is_none());
        assert!(!b.insert(lot(1, 5)), "one entry per id");
        assert!(b.insert(lot(4, 20)));
        for l in b.iter_mut_where(|l| l.expires_at >= 30).take(1) {
            l.remaining = 0;
        }
        assert_eq!(b.drain_first(1)[0].seq, 3);
        assert_eq!(b.changed().map(|l| l.seq).collect::<Vec<_>>(), [4, 1]);
        assert_eq!(b.removed().copied().collect::<Vec<_>>(), [3]);
        let lineage = b.lineage();
        b.mark_stored();
        assert_eq!((b.lineage(), b.changed().count(), b.removed().count()), (lineage, 0, 0));
    }

    /// The weight is remembered, and every change forgets it.
    #[test]
    fn a_book_weighs_again_only_after_it_changed() {
        let weighed = std::cell::Cell::new(0);
        let weigh = |l: &Lot| {
            weighed.set(weighed.get() + 1);
            l.points as usize
        };
        let mut b: Book<Lot> = Book::stored(vec![lot(1, 10), lot(2, 20), lot(3, 30)]);
        assert_eq!(b.weight(2, weigh), 30, "the average of the first two, times three");
        assert_eq!((b.weight(2, weigh), weighed.get()), (30, 2), "remembered");
        b.insert(Lot { points: 40, ..lot(0, 5) });
        assert_eq!(b.weight(2, weigh), 100, "(40 + 10) / 2 per entry, four entries");
        for l in b.iter_mut_where(|l| l.seq == 0) {
            l.points = 10;
        }
        assert_eq!(b.weight(2, weigh), 40);
        b.drain_first(4);
        assert_eq!(b.weight(2, weigh), 0);
        assert_eq!(weighed.get(), 6, "weighed again after each change, never in between");
    }

    #[test]
    fn a_book_that_was_never_stored_gets_a_lineage_when_written() {
        let mut b: Book<Lot> = Book::from(vec![lot(1, 10)]);
        assert_eq!(b.lineage(), 0);
        b.mark_stored();
        assert_ne!(b.lineage(), 0);
        assert_ne!(b.lineage(), Book::<Lot>::stored(Vec::new()).lineage(), "every lineage is new");
    }
}
