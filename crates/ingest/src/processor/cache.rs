//! The member cache: members exactly as committed, kept decoded between
//! batches, bounded by a number of entries and by an estimate of their bytes
//! (`Member::approx_heap_bytes`), whichever is reached first.

use std::num::NonZeroUsize;

use lru::LruCache;
use omnifold_core::Member;

type Key = (u32, String);

pub(crate) struct MemberCache {
    /// Seeded per process, like the batch's maps.
    lru: LruCache<Key, (Member, usize), foldhash::fast::RandomState>,
    /// The estimated bytes of the members held.
    bytes: usize,
    max_bytes: usize,
}

impl MemberCache {
    pub(crate) fn new(entries: NonZeroUsize, max_bytes: usize) -> MemberCache {
        MemberCache { lru: LruCache::with_hasher(entries, foldhash::fast::RandomState::default()), bytes: 0, max_bytes }
    }

    /// Takes the member out (a batch holds it until its commit).
    pub(crate) fn pop(&mut self, key: &Key) -> Option<Member> {
        let (member, weight) = self.lru.pop(key)?;
        self.bytes = self.bytes.saturating_sub(weight);
        Some(member)
    }

    /// Keeps `member` as the most recently used, then lets the least
    /// recently used ones go while over either bound. A member larger than
    /// the whole byte bound is not kept.
    pub(crate) fn put(&mut self, key: Key, member: Member) {
        let weight = member.approx_heap_bytes();
        if weight > self.max_bytes {
            drop(self.pop(&key));
            return;
        }
        if let Some((_, (_, replaced))) = self.lru.push(key, (member, weight)) {
            self.bytes = self.bytes.saturating_sub(replaced);
        }
        self.bytes += weight;
        while self.bytes > self.max_bytes {
            let Some((_, (_, evicted))) = self.lru.pop_lru() else { break };
            self.bytes = self.bytes.saturating_sub(evicted);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.lru.clear();
        self.bytes = 0;
    }

    /// The bounds it was made with: entries and bytes.
    pub(crate) fn limits(&self) -> (usize, usize) {
        (self.lru.cap().get(), self.max_bytes)
    }

    /// The estimated bytes held now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnifold_core::ProfileKind;

    fn member(key: &str, traits: usize) -> Member {
        let mut m = Member::new(key, ProfileKind::KnownMember);
        for i in 0..traits {
            let v = omnifold_core::member::Stamped { value: "v".repeat(100), at: 0, event_id: format!("e-{i}") };
            m.traits.insert(format!("t-{i}"), v);
        }
        m
    }

    fn sum(c: &MemberCache) -> usize {
        c.lru.iter().map(|(_, (m, _))| m.approx_heap_bytes()).sum()
    }

    #[test]
    fn holds_no_more_than_its_bytes_whatever_the_member_sizes() {
        let entries = NonZeroUsize::new(1_000).unwrap();
        let small = member("s", 0).approx_heap_bytes();
        let big = member("b", 50).approx_heap_bytes();
        assert!(big > 10 * small, "the test needs members of very different sizes");
        let mut c = MemberCache::new(entries, 3 * big);
        for i in 0..100 {
            c.put((0, format!("m-{i}")), member(&format!("m-{i}"), if i % 3 == 0 { 50 } else { 0 }));
            assert!(c.bytes() <= c.limits().1, "after {i}: {} > {}", c.bytes(), c.limits().1);
            assert_eq!(c.bytes(), sum(&c), "the running count is the members' own estimate");
        }
        // The most recent members are the ones kept; the oldest went first.
        assert!(c.pop(&(0, "m-99".into())).is_some());
        assert!(c.pop(&(0, "m-0".into())).is_none());
        assert_eq!(c.bytes(), sum(&c));
    }

    #[test]
    fn replacing_a_member_counts_it_once_and_one_too_big_is_not_kept() {
        let big = member("b", 50);
        let mut c = MemberCache::new(NonZeroUsize::new(10).unwrap(), big.approx_heap_bytes() - 1);
        c.put((0, "a".into()), member("a", 1));
        c.put((0, "a".into()), member("a", 2));
        assert_eq!(c.bytes(), member("a", 2).approx_heap_bytes());
        c.put((0, "b".into()), big.clone());
        assert!(c.pop(&(0, "b".into())).is_none(), "larger than the whole bound");
        // A key whose new copy is too big does not keep its old copy either.
        c.put((0, "a".into()), Member { key: "a".into(), ..big });
        assert!(c.pop(&(0, "a".into())).is_none());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn the_entry_bound_still_holds() {
        let mut c = MemberCache::new(NonZeroUsize::new(2).unwrap(), usize::MAX);
        for k in ["a", "b", "c"] {
            c.put((0, k.into()), member(k, 1));
        }
        assert!(c.pop(&(0, "a".into())).is_none());
        assert_eq!(c.bytes(), sum(&c));
        assert_eq!(c.lru.len(), 2);
    }
}
