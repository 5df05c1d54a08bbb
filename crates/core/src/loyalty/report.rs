//! The points liability report finance asks for at each month end:
//! outstanding active and pending points by tier and channel of earning.

use std::collections::BTreeMap;

use super::{LoyaltyConfig, Tier, collects_points};
use crate::event::Channel;
use crate::member::Member;
use crate::time::Millis;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiabilityRow {
    pub active: i64,
    pub pending: i64,
    /// Members with points in this row.
    pub members: u64,
}

/// Outstanding points as of one instant, summed over the members added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Liability {
    pub as_of: Millis,
    pub rows: BTreeMap<(Tier, Channel), LiabilityRow>,
    pub negative: i64,
}

impl Liability {
    pub fn new(as_of: Millis) -> Self {
        Liability { as_of, ..Liability::default() }
    }

    /// Adds one member's lots, under the tier it holds at `as_of`.
    pub fn add(&mut self, member: &Member, cfg: &LoyaltyConfig) {
        // A joined key's points moved to its member; an erased member's went with it.
        if !collects_points(member) || member.routes_to.is_some() || member.erased_at.is_some() {
            return;
        }
        let tier = super::tier_at(member, self.as_of, cfg);
        for (channel, (active, pending)) in member.outstanding(self.as_of) {
            let row = self.rows.entry((tier, channel)).or_default();
            row.active = row.active.saturating_add(active);
            row.pending = row.pending.saturating_add(pending);
            row.members += 1;
        }
        self.negative = self.negative.saturating_add(member.loyalty.negative);
    }

    pub fn total_active(&self) -> i64 {
        self.rows.values().fold(0i64, |t, r| t.saturating_add(r.active))
    }

    pub fn total_pending(&self) -> i64 {
        self.rows.values().fold(0i64, |t, r| t.saturating_add(r.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::{Position, apply};
    use crate::time::{DAY, to_timestamp};
    use crate::{Event, FoldConfig, ProfileKind};
    use omnifold_proto::v1 as proto;

    const T0: i64 = 1_767_225_600_000;

    fn order(id: &str, at: i64, channel: proto::Channel, total: i64) -> Event {
        Event::try_from(proto::Event {
            event_id: id.into(),
            occurred_at: Some(to_timestamp(at)),
            channel: channel as i32,
            store_id: String::new(),
            subject: Some(proto::Subject { member_id: "m".into(), ..Default::default() }),
            payload: Some(proto::event::Payload::OrderPlaced(proto::OrderPlaced {
                order_id: id.into(),
                currency: "CNY".into(),
                lines: vec![],
                total_minor: total,
            })),
        })
        .unwrap()
    }

    #[test]
    fn sums_active_and_pending_by_tier_and_channel_of_earning() {
        let cfg = FoldConfig::default().validate().unwrap();
        let mut m = Member::new("m", ProfileKind::KnownMember);
        let pos = Position { partition: 0, offset: 0 };
        apply(&mut m, &order("o1", T0, proto::Channel::OnlineWeb, 300_000), pos, &cfg).unwrap(); // 3,000: SILVER
        apply(&mut m, &order("o2", T0 + 10 * DAY, proto::Channel::MobileApp, 10_000), pos, &cfg).unwrap(); // 150
        let mut report = Liability::new(T0 + 12 * DAY);
        report.add(&m, &cfg.loyalty);
        let web = report.rows[&(Tier::Silver, Channel::OnlineWeb)];
        let app = report.rows[&(Tier::Silver, Channel::MobileApp)];
        assert_eq!((web.active, web.pending, app.active, app.pending), (3_000, 0, 0, 150));
        assert_eq!((report.total_active(), report.total_pending()), (3_000, 150));
        // After the first lot expires, only the second counts.
        let mut later = Liability::new(T0 + 372 * DAY);
        later.add(&m, &cfg.loyalty);
        assert_eq!((later.total_active(), later.total_pending()), (150, 0));
    }
}
