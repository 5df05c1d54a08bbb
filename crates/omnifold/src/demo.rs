//! A realistic, reproducible demo data set: members who browse anonymously
//! on the web, enrol, buy in the app, the mini-program and stores, return
//! things and change consents, over the past year.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use omnifold_core::time::{DAY, to_timestamp};
use omnifold_proto::v1 as proto;
use proto::event::Payload;

const CATALOGUE: [(&str, &str, i64); 16] = [
    ("SKU-RUN-01", "shoes", 69_900),
    ("SKU-RUN-02", "shoes", 89_900),
    ("SKU-TEE-01", "apparel", 9_900),
    ("SKU-JKT-01", "apparel", 49_900),
    ("SKU-CRM-01", "beauty", 25_900),
    ("SKU-LIP-01", "beauty", 19_900),
    ("SKU-EAR-01", "electronics", 129_900),
    ("SKU-WAT-01", "electronics", 249_900),
    ("SKU-MUG-01", "home", 5_900),
    ("SKU-LMP-01", "home", 29_900),
    ("SKU-TEA-01", "grocery", 12_800),
    ("SKU-RIC-01", "grocery", 6_900),
    ("SKU-BAG-01", "accessories", 159_900),
    ("SKU-SCF-01", "accessories", 29_900),
    ("SKU-TOY-01", "kids", 15_900),
    ("SKU-BOK-01", "books", 5_900),
];
const STORES: [&str; 4] = ["store-sh-01", "store-sh-02", "store-bj-01", "store-gz-01"];
const CITIES: [&str; 5] = ["Shanghai", "Beijing", "Guangzhou", "Shenzhen", "Hangzhou"];
const SEARCHES: [&str; 6] =
    ["running shoes", "gift for mum", "wireless earbuds", "green tea", "winter jacket", "lipstick"];

/// Midnight UTC today, so a day's demo runs give identical events.
pub fn today_millis() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    now - now.rem_euclid(DAY)
}

/// The member id of demo member `i`.
pub fn member_id(i: usize) -> String {
    format!("m-{i:06}")
}

struct Gen {
    events: Vec<proto::Event>,
    member: usize,
    seq: usize,
}

impl Gen {
    fn push(&mut self, at: i64, channel: proto::Channel, store: &str, subject: proto::Subject, payload: Payload) {
        self.seq += 1;
        self.events.push(proto::Event {
            event_id: format!("demo-{}-{}", self.member, self.seq),
            occurred_at: Some(to_timestamp(at)),
            channel: channel as i32,
            store_id: store.to_owned(),
            subject: Some(subject),
            payload: Some(payload),
        });
    }
}

fn ident(t: proto::IdentifierType, v: impl Into<String>) -> proto::Identifier {
    proto::Identifier { r#type: t as i32, value: v.into() }
}

fn member_subject(id: &str) -> proto::Subject {
    proto::Subject { member_id: id.to_owned(), ..Default::default() }
}

/// Events of `members` members, ordered by time per member, ending before `now`.
pub fn generate(members: usize, seed: u64, now: i64) -> Vec<proto::Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut g = Gen { events: Vec::with_capacity(members * 30), member: 0, seq: 0 };
    let hour = DAY / 24;
    for i in 1..=members {
        g.member = i;
        g.seq = 0;
        let id = member_id(i);
        let anon = format!("anon-{i:06}");
        let phone = format!("+86138{:08}", i);
        let email = format!("member{i}@example.com");
        let mut t = now - rng.random_range(60..420) * DAY;
        let anon_subject = proto::Subject { anonymous_id: anon.clone(), ..Default::default() };
        for _ in 0..rng.random_range(2..6) {
            let (sku, cat, price) = CATALOGUE[rng.random_range(0..CATALOGUE.len())];
            t += rng.random_range(1..30) * 60_000;
            g.push(
                t,
                proto::Channel::OnlineWeb,
                "",
                anon_subject.clone(),
                Payload::ProductViewed(proto::ProductViewed {
                    sku: sku.into(),
                    category: cat.into(),
                    price_minor: price,
                    currency: "CNY".into(),
                }),
            );
        }
        g.push(
            t + 60_000,
            proto::Channel::OnlineWeb,
            "",
            anon_subject,
            Payload::SearchPerformed(proto::SearchPerformed {
                query: SEARCHES[rng.random_range(0..SEARCHES.len())].into(),
            }),
        );
        t += rng.random_range(1..10) * DAY;
        let enrol_channel =
            [proto::Channel::MobileApp, proto::Channel::MiniProgram, proto::Channel::StorePos][rng.random_range(0..3)];
        let with_ids = proto::Subject {
            member_id: id.clone(),
            identifiers: vec![ident(proto::IdentifierType::Phone, &phone), ident(proto::IdentifierType::Email, &email)],
            ..Default::default()
        };
        g.push(
            t,
            enrol_channel,
            "",
            with_ids,
            Payload::MemberEnrolled(proto::MemberEnrolled { program: "omni".into() }),
        );
        g.push(
            t + 1_000,
            proto::Channel::MobileApp,
            "",
            member_subject(&id),
            Payload::IdentityLinked(proto::IdentityLinked {
                anonymous_id: anon.clone(),
                identifiers: vec![ident(proto::IdentifierType::DeviceId, format!("dev-{i:06}"))],
            }),
        );
        g.push(
            t + 2_000,
            enrol_channel,
            "",
            member_subject(&id),
            Payload::ProfileUpdated(proto::ProfileUpdated {
                traits: [("city".to_owned(), CITIES[rng.random_range(0..CITIES.len())].to_owned())].into(),
            }),
        );
        g.push(
            t + 3_000,
            enrol_channel,
            "",
            member_subject(&id),
            Payload::ConsentChanged(proto::ConsentChanged {
                purpose: "marketing_email".into(),
                granted: rng.random_bool(0.6),
            }),
        );
        let mut order_no = 0;
        for _ in 0..rng.random_range(2..12) {
            t += rng.random_range(2..40) * DAY + rng.random_range(0..12) * hour;
            if t >= now {
                break;
            }
            let channel = [
                proto::Channel::OnlineWeb,
                proto::Channel::MobileApp,
                proto::Channel::MiniProgram,
                proto::Channel::StorePos,
                proto::Channel::Marketplace,
            ][rng.random_range(0..5)];
            let store =
                if channel == proto::Channel::StorePos { STORES[rng.random_range(0..STORES.len())] } else { "" };
            if channel != proto::Channel::StorePos {
                for _ in 0..rng.random_range(1..4) {
                    let (sku, cat, price) = CATALOGUE[rng.random_range(0..CATALOGUE.len())];
                    t += 60_000;
                    g.push(
                        t,
                        channel,
                        "",
                        member_subject(&id),
                        Payload::ProductViewed(proto::ProductViewed {
                            sku: sku.into(),
                            category: cat.into(),
                            price_minor: price,
                            currency: "CNY".into(),
                        }),
                    );
                }
            }
            if !rng.random_bool(0.6) {
                continue;
            }
            order_no += 1;
            let order_id = format!("o-{i:06}-{order_no}");
            let lines: Vec<proto::OrderLine> = (0..rng.random_range(1..4))
                .map(|_| {
                    let (sku, cat, price) = CATALOGUE[rng.random_range(0..CATALOGUE.len())];
                    proto::OrderLine {
                        sku: sku.into(),
                        category: cat.into(),
                        quantity: rng.random_range(1..3),
                        unit_price_minor: price,
                    }
                })
                .collect();
            let list: i64 = lines.iter().map(|l| l.unit_price_minor * i64::from(l.quantity)).sum();
            let discount = if rng.random_bool(0.3) { list / 10 } else { 0 };
            // POS sales are identified by the member's phone number.
            let subject = if channel == proto::Channel::StorePos {
                proto::Subject {
                    member_id: id.clone(),
                    identifiers: vec![ident(proto::IdentifierType::Phone, &phone)],
                    ..Default::default()
                }
            } else {
                member_subject(&id)
            };
            t += 60_000;
            let first_sku = lines[0].sku.clone();
            g.push(
                t,
                channel,
                store,
                subject,
                Payload::OrderPlaced(proto::OrderPlaced {
                    order_id: order_id.clone(),
                    currency: "CNY".into(),
                    lines,
                    total_minor: list - discount,
                }),
            );
            let after = t + rng.random_range(1..10) * DAY;
            if after < now && rng.random_bool(0.15) {
                g.push(
                    after,
                    channel,
                    store,
                    member_subject(&id),
                    Payload::OrderReturned(proto::OrderReturned {
                        order_id: order_id.clone(),
                        return_id: format!("r-{order_id}"),
                        lines: vec![proto::ReturnLine { sku: first_sku, quantity: 1 }],
                        amount_minor: 0,
                    }),
                );
            } else if after < now && rng.random_bool(0.03) {
                g.push(
                    t + hour,
                    channel,
                    store,
                    member_subject(&id),
                    Payload::OrderCancelled(proto::OrderCancelled { order_id, reason: "changed mind".into() }),
                );
            }
        }
    }
    // A log is in time order, give or take: members' histories interleave
    // instead of following one another a year apart (which would also put
    // them outside the dedupe window of the events after them).
    let mut events = g.events;
    events.sort_by_key(|e| e.occurred_at.map(|t| (t.seconds, t.nanos)));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_is_reproducible_and_valid() {
        let now = 1_780_000_000_000;
        let a = generate(20, 7, now);
        assert_eq!(a, generate(20, 7, now));
        assert_ne!(a, generate(20, 8, now));
        for e in &a {
            omnifold_core::Event::try_from(e.clone()).unwrap_or_else(|err| panic!("{}: {err}", e.event_id));
            assert!(omnifold_core::time::from_timestamp(e.occurred_at.as_ref().unwrap()) < now);
        }
        let times: Vec<i64> =
            a.iter().map(|e| omnifold_core::time::from_timestamp(e.occurred_at.as_ref().unwrap())).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "the demo log is in time order");
        let channels: std::collections::BTreeSet<i32> = a.iter().map(|e| e.channel).collect();
        assert!(channels.len() >= 4, "demo spans channels: {channels:?}");
    }
}
