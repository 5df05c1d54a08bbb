//! Resuming a partition at an exact offset, on any broker.
//!
//! Kafka answers a fetch at offset N with the whole record batch that holds
//! N, and the client drops the records before N. Some brokers answer with
//! the first batch that *starts* at or after N instead (tansu 0.6 does), so
//! a consumer positioned inside a producer's batch silently misses the rest
//! of that batch. Every place that positions a partition (assignment, a seek
//! after a fault, a replay that continues, the identity-index reader) goes
//! through [`Resume`]: it positions `rewind` records early, drops what is
//! below N itself, and checks the first record that arrives. A first record
//! after N proves records were skipped: it seeks further back and tries
//! again, until a record at or before N arrives or it reads from offset 0.

/// Where one partition is read from after it was positioned, and whether
/// the records received so far prove that none were skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The first offset still to apply.
    pub next: i64,
    /// Where the fetch is positioned (at most `next`).
    pub from: i64,
    /// A record at or before `next` arrived (or the fetch started at 0):
    /// from here on records arrive in order with nothing skipped.
    pub confirmed: bool,
}

/// What to do with one received record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Fold it.
    Take,
    /// Already applied (below `next`).
    Skip,
    /// Records were skipped: seek the partition to this offset, and drop
    /// every record of it received before the seek.
    Rewind(i64),
}

impl Resume {
    /// Positions a partition whose first unapplied offset is `next`,
    /// `rewind` records early.
    pub fn at(next: i64, rewind: i64) -> Resume {
        let next = next.max(0);
        let from = next.saturating_sub(rewind.max(0)).max(0);
        Resume { next, from, confirmed: from == 0 }
    }

    /// Where to seek the partition now.
    #[cfg(test)]
    fn position(&self) -> i64 {
        self.from
    }

    /// Where to seek the partition now, as the consumer takes it ([`seek_to`]).
    pub(crate) fn start(&self) -> rdkafka::Offset {
        seek_to(self.from)
    }

    /// Checks one received record, in offset order.
    pub fn step(&mut self, offset: i64) -> Step {
        if !self.confirmed {
            if offset <= self.next || self.from == 0 {
                // From offset 0 a later first record means the records
                // before it are gone (retention), not skipped by the fetch.
                self.confirmed = true;
            } else {
                let back = (self.next - self.from).max(1_000).saturating_mul(4);
                self.from = self.from.saturating_sub(back).max(0);
                return Step::Rewind(self.from);
            }
        }
        if offset < self.next {
            Step::Skip
        } else {
            self.next = offset + 1;
            Step::Take
        }
    }
}

/// Where to position a partition to read `offset` next: offset 0 is the
/// beginning. An empty partition has no offset 0 yet and a trimmed one no
/// longer has it: some brokers answer a fetch there as out of range, and a
/// consumer whose reset policy is `latest` would then skip to the end.
pub(crate) fn seek_to(offset: i64) -> rdkafka::Offset {
    if offset == 0 { rdkafka::Offset::Beginning } else { rdkafka::Offset::Offset(offset) }
}

/// Checks one record of `partition` from a poll: true to take it. A
/// partition found to have skipped records is noted in `rewinds`, to seek
/// there once the poll's records are checked; its other records of the
/// poll are dropped.
pub(crate) fn admit(
    resume: &mut Resume,
    rewinds: &mut std::collections::BTreeMap<u32, i64>,
    partition: u32,
    offset: i64,
) -> bool {
    if rewinds.contains_key(&partition) {
        return false;
    }
    match resume.step(offset) {
        Step::Take => true,
        Step::Skip => false,
        Step::Rewind(to) => {
            rewinds.insert(partition, to);
            false
        }
    }
}

/// [`admit`] for the events topic, which is never compacted: a partition
/// read from its beginning whose first record comes after the offset to
/// fold lost those records to the topic's retention, and says so.
pub(crate) fn admit_event(
    resume: &mut Resume,
    rewinds: &mut std::collections::BTreeMap<u32, i64>,
    partition: u32,
    offset: i64,
) -> bool {
    if !rewinds.contains_key(&partition) && !resume.confirmed && resume.from == 0 && offset > resume.next {
        let lost = offset - resume.next;
        tracing::warn!(
            partition,
            from = resume.next,
            to = offset,
            "the topic no longer holds these records of the partition (retention): its state does not include \
             them; a snapshot restore avoids this (docs/scale-out.md)"
        );
        metrics::counter!("omnifold_records_gone_before_folded_total").increment(lost as u64);
    }
    admit(resume, rewinds, partition, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_record_after_next_rewinds_until_one_at_or_before_it_arrives() {
        let mut r = Resume::at(20_000, 1_000);
        assert_eq!(r.position(), 19_000);
        // The broker skipped to the next batch, which starts at 25,000.
        assert_eq!(r.step(25_000), Step::Rewind(15_000));
        // Still past 20,000: further back.
        assert_eq!(r.step(21_000), Step::Rewind(0));
        // From 0: the first batch, then the rest in order.
        assert_eq!(r.step(0), Step::Skip);
        assert!(r.confirmed);
        assert_eq!(r.step(19_999), Step::Skip);
        assert_eq!(r.step(20_000), Step::Take);
        assert_eq!(r.step(20_001), Step::Take);
        assert_eq!(r.next, 20_002);
    }

    #[test]
    fn records_below_next_are_skipped_and_a_gap_from_offset_zero_is_accepted() {
        let mut r = Resume::at(5, 10_000);
        assert_eq!(r.position(), 0);
        assert!(r.confirmed);
        assert_eq!(r.step(3), Step::Skip);
        assert_eq!(r.step(5), Step::Take);
        // Retention deleted everything before 40: nothing to rewind to.
        let mut r = Resume::at(10, 100);
        assert_eq!(r.step(40), Step::Take);
    }
}
