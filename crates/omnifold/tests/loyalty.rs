//! Loyalty end to end, against a real broker and the real binary:
//! concurrent redemptions from several channels never overdraw, retries are
//! decided once, and the balance, ledger and benefits answers carry the
//! numbers of the rules.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use omnifold_core::time::{DAY, to_timestamp};
use omnifold_proto::v1 as proto;
use prost::Message;
use proto::RedemptionStatus::{Accepted, InProgress, Rejected};
use tonic::Code;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A protobuf event for member `who`, `days_ago` days before now.
fn event(
    id: &str,
    who: &str,
    days_ago: i64,
    channel: proto::Channel,
    payload: proto::event::Payload,
) -> (String, Vec<u8>) {
    let e = proto::Event {
        event_id: id.into(),
        occurred_at: Some(to_timestamp(now() - days_ago * DAY)),
        channel: channel as i32,
        store_id: String::new(),
        subject: Some(proto::Subject { member_id: who.into(), ..Default::default() }),
        payload: Some(payload),
    };
    (who.to_owned(), e.encode_to_vec())
}

fn order(id: &str, total_minor: i64) -> proto::event::Payload {
    proto::event::Payload::OrderPlaced(proto::OrderPlaced {
        order_id: id.into(),
        currency: "CNY".into(),
        lines: vec![],
        total_minor,
    })
}

/// A stack whose commands wait long enough for a loaded CI machine.
fn stack(name: &str) -> Stack {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, name, 3);
    setup.extra_env.insert("OMNIFOLD_SERVER__COMMAND_TIMEOUT_MS".into(), "20000".into());
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(&setup, data.path());
    Stack { broker, data, setup, service }
}

async fn balance(service: &Service, id: &str) -> Result<proto::Balance, tonic::Status> {
    let mut c = service.loyalty().await;
    c.get_balance(proto::GetBalanceRequest { member: member(id), as_of: None }).await.map(|r| r.into_inner())
}

/// Redeems as a client should: asks again with the same request id while
/// the answer is IN_PROGRESS.
async fn redeem(
    grpc: String,
    id: &str,
    request: &str,
    points: i64,
    channel: proto::Channel,
) -> proto::RedeemPointsResponse {
    let mut c = proto::loyalty_service_client::LoyaltyServiceClient::new(common::connect(&grpc).await.unwrap());
    loop {
        let r = c
            .redeem_points(proto::RedeemPointsRequest {
                member: member(id),
                request_id: request.into(),
                points,
                channel: channel as i32,
                reward: "coffee voucher".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if r.status != InProgress as i32 {
            return r;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_redemptions_from_every_channel_never_overdraw() {
    let Stack { broker: _broker, data: _data, setup, service } = stack("redeem");
    // 1,000 points, active since 23 days ago.
    setup.produce(&[event("o1", "vip-1", 30, proto::Channel::OnlineWeb, order("o-1", 100_000))]);
    eventually("points folded", Duration::from_secs(30), || async {
        balance(&service, "vip-1").await.ok().filter(|b| b.active_points == 1_000).map(|_| ())
    })
    .await;

    let channels = [
        proto::Channel::MobileApp,
        proto::Channel::MiniProgram,
        proto::Channel::StorePos,
        proto::Channel::OnlineWeb,
        proto::Channel::CallCenter,
    ];
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let grpc = service.grpc.clone();
            let channel = channels[i % channels.len()];
            tokio::spawn(async move { (i, redeem(grpc, "vip-1", &format!("req-{i}"), 100, channel).await) })
        })
        .collect();
    let mut accepted = Vec::new();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        let b = r.balance.clone().expect("a decided request carries the balance");
        assert!(b.active_points >= 0 && b.negative_balance == 0, "never negative: {b:?}");
        match proto::RedemptionStatus::try_from(r.status).unwrap() {
            Accepted => accepted.push(i),
            Rejected => assert!(r.reason.starts_with("insufficient points"), "{}", r.reason),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted.len(), 10, "exactly the balance is spent: {accepted:?}");
    let b = balance(&service, "vip-1").await.unwrap();
    assert_eq!((b.active_points, b.negative_balance, b.lifetime_redeemed), (0, 0, 1_000));

    // Retrying decided requests, from another channel, gives the same verdicts
    // and spends nothing more.
    let again =
        redeem(service.grpc.clone(), "vip-1", &format!("req-{}", accepted[0]), 100, proto::Channel::StorePos).await;
    assert_eq!(again.status, Accepted as i32);
    let rejected = (0..50).find(|i| !accepted.contains(i)).unwrap();
    let again = redeem(service.grpc.clone(), "vip-1", &format!("req-{rejected}"), 100, proto::Channel::MobileApp).await;
    assert_eq!(again.status, Rejected as i32);
    let b = balance(&service, "vip-1").await.unwrap();
    assert_eq!((b.active_points, b.lifetime_redeemed), (0, 1_000));

    // A request id belongs to one request.
    let mut c = service.loyalty().await;
    let err = c
        .redeem_points(proto::RedeemPointsRequest {
            member: member("vip-1"),
            request_id: format!("req-{}", accepted[0]),
            points: 5,
            channel: proto::Channel::MobileApp as i32,
            reward: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("already used for a redemption of 100 points"), "{}", err.message());

    // The ledger holds exactly ten redemptions, with their channels.
    let ledger = c
        .list_ledger(proto::ListLedgerRequest {
            member: member("vip-1"),
            kinds: vec![proto::LedgerEntryKind::Redeem as i32],
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ledger.entries.len(), 10);
    assert!(ledger.entries.iter().all(|e| e.points == -100 && e.channel != 0 && !e.request_id.is_empty()));
}

#[tokio::test(flavor = "multi_thread")]
async fn balance_ledger_benefits_and_adjustments() {
    let Stack { broker: _broker, data: _data, setup, service } = stack("ledger");
    setup.produce(&[
        event("e0", "m-7", 400, proto::Channel::OnlineWeb, order("o-0", 20_000)), // 200, expired 28 days ago
        event("e1", "m-7", 10, proto::Channel::MobileApp, order("o-1", 30_000)),  // 450, active 3 days ago
        event("e2", "m-7", 2, proto::Channel::OnlineWeb, order("o-2", 10_000)),   // 100, pending 5 more days
        (
            "cookie-1".into(),
            proto::Event {
                event_id: "anon".into(),
                occurred_at: Some(to_timestamp(now())),
                channel: proto::Channel::OnlineWeb as i32,
                store_id: String::new(),
                subject: Some(proto::Subject { anonymous_id: "cookie-1".into(), ..Default::default() }),
                payload: Some(order("o-9", 10_000)),
            }
            .encode_to_vec(),
        ),
    ]);
    service.wait_consumed(&setup, 4).await;
    let b = balance(&service, "m-7").await.unwrap();
    assert_eq!((b.active_points, b.pending_points, b.lifetime_expired, b.lifetime_earned), (450, 100, 200, 750));
    assert_eq!(b.pending.len(), 1);
    assert_eq!(b.pending[0].order_id, "o-2");
    assert_eq!(b.tier, proto::Tier::Member as i32);

    let mut c = service.loyalty().await;
    let adjusted = c
        .adjust_points(proto::AdjustPointsRequest {
            member: member("m-7"),
            request_id: "goodwill-1".into(),
            delta: 50,
            reason: "late delivery".into(),
            actor: "agent-7".into(),
            channel: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(adjusted.status, Accepted as i32);
    assert_eq!(adjusted.balance.unwrap().active_points, 500);

    // Newest first, two per page: ADJUST, EARN o-2 | EXPIRE o-0, EARN o-1 | EARN o-0.
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_ledger(proto::ListLedgerRequest {
                member: member("m-7"),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(
            page.entries
                .iter()
                .map(|e| (proto::LedgerEntryKind::try_from(e.kind).unwrap(), e.points, e.order_id.clone()))
                .collect::<Vec<_>>(),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    use proto::LedgerEntryKind::{Adjust, Earn, Expire};
    assert_eq!(
        pages,
        vec![
            vec![(Adjust, 50, String::new()), (Earn, 100, "o-2".into())],
            vec![(Expire, -200, "o-0".into()), (Earn, 450, "o-1".into())],
            vec![(Earn, 200, "o-0".into())],
        ]
    );

    // Time and kind filters: entries of the last five days; earnings only.
    let recent = c
        .list_ledger(proto::ListLedgerRequest {
            member: member("m-7"),
            from: Some(to_timestamp(now() - 5 * DAY)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<i32> = recent.entries.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![Adjust as i32, Earn as i32]);
    let earns = c
        .list_ledger(proto::ListLedgerRequest { member: member("m-7"), kinds: vec![Earn as i32], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(earns.entries.iter().map(|e| e.points).collect::<Vec<_>>(), vec![100, 450, 200]);

    let benefits =
        c.get_benefits(proto::GetBenefitsRequest { member: member("m-7"), as_of: None }).await.unwrap().into_inner();
    assert_eq!((benefits.tier, benefits.next_tier), (proto::Tier::Member as i32, proto::Tier::Silver as i32));
    assert_eq!((benefits.qualifying_spend_minor, benefits.next_tier_threshold_minor), (40_000, 200_000));
    assert_eq!(benefits.benefits.iter().map(|b| b.code.as_str()).collect::<Vec<_>>(), vec!["member_price"]);
    assert_eq!(benefits.pending_points, 100);

    // Errors say what to fix.
    let err = c
        .redeem_points(proto::RedeemPointsRequest {
            member: member("m-7"),
            request_id: "r".into(),
            points: 0,
            channel: proto::Channel::MobileApp as i32,
            reward: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("points must be a positive number"), "{}", err.message());
    let err = balance(&service, "nobody").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let anon = Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::AnonymousId("cookie-1".into())) });
    let err = c.get_balance(proto::GetBalanceRequest { member: anon, as_of: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The CLI for humans: redeem at a till, then read the balance.
    let run = |args: &[&str]| {
        let out =
            setup.command().env("TZ", "UTC").args(["points", "--server", &service.grpc]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let cli = |args: &[&str]| serde_json::from_str::<serde_json::Value>(&run(&[args, &["--json"]].concat())).unwrap();
    let v = cli(&["redeem", "m-7", "--points", "100", "--request-id", "till-1", "--channel", "store_pos"]);
    assert_eq!(v["status"], "ACCEPTED");
    let v = cli(&["balance", "m-7"]);
    assert_eq!((v["activePoints"].as_str(), v["lifetimeRedeemed"].as_str()), (Some("400"), Some("100")));
    let v = cli(&["ledger", "m-7", "--kinds", "redeem"]);
    assert_eq!(v["entries"][0]["requestId"], "till-1");
    assert_eq!(v["entries"][0]["channel"], "STORE_POS");
    // Without --json: a summary for people, numbers as numbers, local times.
    let text = run(&["balance", "m-7"]);
    assert!(text.contains("active 400") && text.contains("redeemed 100"), "{text}");
    assert!(!text.contains('"'), "not JSON: {text}");
    let text = run(&["ledger", "m-7", "--kinds", "redeem"]);
    assert!(
        text.lines().next().unwrap().starts_with('#') && text.contains("REDEEM") && text.contains("-100"),
        "{text}"
    );
    assert!(text.contains(" +00:00"), "instants in the local zone (UTC here): {text}");

    // The liability report: the redemption took o-1's lot (expiring first).
    let out = setup.command().args(["report", "--server", &service.grpc, "liability", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<(String, String, String, String)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = |f: &str| r[f].as_str().unwrap_or("0").to_owned();
            (
                r["tier"].as_str().unwrap().to_owned(),
                r["channel"].as_str().unwrap().to_owned(),
                n("activePoints"),
                n("pendingPoints"),
            )
        })
        .collect();
    let row = |t: &str, c: &str, a: &str, p: &str| (t.to_owned(), c.to_owned(), a.to_owned(), p.to_owned());
    assert_eq!(
        rows,
        vec![
            row("MEMBER", "ONLINE_WEB", "0", "100"),
            row("MEMBER", "MOBILE_APP", "350", "0"),
            row("MEMBER", "CALL_CENTER", "50", "0"),
        ]
    );
    assert_eq!((v["totalActivePoints"].as_str(), v["totalPendingPoints"].as_str()), (Some("400"), Some("100")));
}

#[tokio::test(flavor = "multi_thread")]
async fn as_of_answers_are_the_fold_of_the_events_up_to_then() {
    use omnifold_core::fold::{Position, apply};
    use omnifold_core::{Event, FoldConfig, Member, ProfileKind};
    let Stack { broker: _broker, data: _data, setup, service } = Stack::start_with_history("asof", 3);
    let d0 = 380; // days ago
    let ret = |id: &str, amount: i64| {
        proto::event::Payload::OrderReturned(proto::OrderReturned {
            order_id: id.into(),
            return_id: "r-1".into(),
            lines: vec![],
            amount_minor: amount,
        })
    };
    let merge = proto::event::Payload::MembersMerged(proto::MembersMerged {
        from_member_id: "m-b".into(),
        into_member_id: "m-a".into(),
    });
    let records = vec![
        event("a1", "m-a", d0, proto::Channel::OnlineWeb, order("o-1", 100_000)), // 1,000 points
        event("b1", "m-b", d0 - 10, proto::Channel::OnlineWeb, order("o-2", 50_000)), // 500, another account
        event("a2", "m-a", d0 - 20, proto::Channel::OnlineWeb, ret("o-1", 30_000)), // revokes 300
        event("a3", "m-a", d0 - 30, proto::Channel::CallCenter, merge),
    ];
    setup.produce(&records);
    service.wait_consumed(&setup, records.len() as i64).await;

    // The person's events as the log now stands, folded by the test itself.
    let cfg = FoldConfig::default().validate().unwrap();
    let events: Vec<Event> =
        records.iter().map(|(_, v)| omnifold_core::decode_event(v, 65536, &Default::default()).unwrap()).collect();
    let expected = |at: i64| {
        let mut m = Member::new("m-a", ProfileKind::KnownMember);
        for e in events.iter().filter(|e| e.occurred_at <= at) {
            let _ = apply(&mut m, e, Position { partition: 0, offset: 0 }, &cfg);
        }
        m
    };
    let mut loyalty = service.loyalty().await;
    let mut profiles = service.profiles().await;
    // Before and after activation, after the other account's order, after the
    // return, after the merge, and now (after the first lot's expiry).
    for day in [3, 8, 15, 25, 35, d0] {
        let at = now() - (d0 - day) * DAY;
        let want = expected(at);
        let wb = want.balance(at, &cfg.loyalty);
        let b = loyalty
            .get_balance(proto::GetBalanceRequest { member: member("m-a"), as_of: Some(to_timestamp(at)) })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (b.active_points, b.pending_points, b.lifetime_earned, b.lifetime_revoked, b.lifetime_expired),
            (wb.active, wb.pending, wb.earned, wb.revoked, wb.expired),
            "balance on day {day}"
        );
        let p = profiles
            .get_profile(proto::GetProfileRequest {
                member: member("m-a"),
                read_mask: None,
                as_of: Some(to_timestamp(at)),
            })
            .await
            .unwrap()
            .into_inner();
        let pp = p.purchases.unwrap();
        assert_eq!(
            (pp.orders, pp.gross_minor, pp.returned_minor),
            (want.purchases.orders, want.purchases.gross_minor, want.purchases.returned_minor),
            "purchases on day {day}"
        );
    }
    // The figures the rules give, spelled out for three of those days.
    let at = |day: i64| Some(to_timestamp(now() - (d0 - day) * DAY));
    let balance = |b: proto::Balance| (b.active_points, b.pending_points, b.lifetime_expired);
    let day3 = loyalty.get_balance(proto::GetBalanceRequest { member: member("m-a"), as_of: at(3) }).await.unwrap();
    assert_eq!(balance(day3.into_inner()), (0, 1_000, 0), "pending before activation");
    let day25 = loyalty.get_balance(proto::GetBalanceRequest { member: member("m-a"), as_of: at(25) }).await.unwrap();
    assert_eq!(balance(day25.into_inner()), (1_200, 0, 0), "700 left of the first lot, 500 from the other account");
    let today = loyalty.get_balance(proto::GetBalanceRequest { member: member("m-a"), as_of: None }).await.unwrap();
    assert_eq!(balance(today.into_inner()), (500, 0, 700), "the first lot expired 8 days ago");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_history_retention_as_of_stays_exact_after_the_horizon_and_says_so_before() {
    use omnifold_core::fold::{Position, apply};
    use omnifold_core::{Event, FoldConfig, Member, ProfileKind};
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "retention", 2);
    setup.extra_env.insert("OMNIFOLD_STORE__KEEP_HISTORY".into(), "true".into());
    setup.extra_env.insert("OMNIFOLD_STORE__HISTORY_DAYS".into(), "5".into());
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(&setup, data.path());
    let d0 = 200; // days ago
    let view = |sku: &str| {
        proto::event::Payload::ProductViewed(proto::ProductViewed {
            sku: sku.into(),
            category: "c".into(),
            price_minor: 100,
            currency: String::new(),
        })
    };
    let first = vec![
        event("h1", "m-h", d0, proto::Channel::OnlineWeb, order("o-1", 10_000)),
        event("h2", "m-h", d0 - 10, proto::Channel::OnlineWeb, view("A")),
        event("h3", "m-h", d0 - 50, proto::Channel::OnlineWeb, order("o-2", 5_000)),
        event("h4", "m-h", d0 - 100, proto::Channel::OnlineWeb, view("B")),
    ];
    setup.produce(&first);
    service.wait_consumed(&setup, 4).await;
    // A later event: events older than 5 days before it fold into the base.
    let later = vec![event("h5", "m-h", d0 - 101, proto::Channel::OnlineWeb, view("C"))];
    setup.produce(&later);
    service.wait_consumed(&setup, 5).await;

    let cfg = FoldConfig::default().validate().unwrap();
    let events: Vec<Event> = first
        .iter()
        .chain(&later)
        .map(|(_, v)| omnifold_core::decode_event(v, 65536, &Default::default()).unwrap())
        .collect();
    let day = |d: f64| now() - ((d0 as f64 - d) * DAY as f64) as i64;
    let mut profiles = service.profiles().await;
    for d in [98.0, 100.5, 101.5] {
        let at = day(d);
        let mut want = Member::new("m-h", ProfileKind::KnownMember);
        for e in events.iter().filter(|e| e.occurred_at <= at) {
            let _ = apply(&mut want, e, Position { partition: 0, offset: 0 }, &cfg);
        }
        let p = profiles
            .get_profile(proto::GetProfileRequest {
                member: member("m-h"),
                read_mask: None,
                as_of: Some(to_timestamp(at)),
            })
            .await
            .unwrap()
            .into_inner();
        let got = (p.purchases.unwrap().orders, p.browse.unwrap().product_views);
        assert_eq!(got, (want.purchases.orders, want.browse.product_views), "day {d}");
    }
    let err = profiles
        .get_profile(proto::GetProfileRequest {
            member: member("m-h"),
            read_mask: None,
            as_of: Some(to_timestamp(day(20.0))),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("no longer kept (store.history_days)"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_kept_history_a_past_as_of_says_why_and_later_reads_still_answer() {
    // The store's default: no history kept.
    let Stack { broker: _broker, data: _data, setup, service } = Stack::start("nohistory", 2);
    let records = vec![
        event("n1", "m-n", 30, proto::Channel::OnlineWeb, order("o-1", 10_000)),
        event("n2", "m-n", 10, proto::Channel::OnlineWeb, order("o-2", 20_000)),
    ];
    setup.produce(&records);
    service.wait_consumed(&setup, 2).await;
    let (mut profiles, mut loyalty) = (service.profiles().await, service.loyalty().await);
    let ago = |days: i64| Some(to_timestamp(now() - days * DAY));
    let read = |as_of| proto::GetProfileRequest { member: member("m-n"), read_mask: None, as_of };

    // Between the two orders: not known without the events, and the answer says so.
    let err = profiles.get_profile(read(ago(20))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("store.keep_history = false"), "{}", err.message());
    let err =
        loyalty.get_balance(proto::GetBalanceRequest { member: member("m-n"), as_of: ago(20) }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let batch = profiles
        .batch_get_profiles(proto::BatchGetProfilesRequest {
            members: vec![member("m-n").unwrap(), member("m-none").unwrap()],
            read_mask: None,
            as_of: ago(20),
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = batch.results.iter().map(|r| r.code).collect();
    assert_eq!(codes, vec![Code::FailedPrecondition as i32, Code::NotFound as i32], "each member fails on its own");

    // Now, and any instant after the latest event, answer from the stored state.
    for as_of in [None, ago(5)] {
        let p = profiles.get_profile(read(as_of)).await.unwrap().into_inner();
        assert_eq!(p.purchases.unwrap().orders, 2, "as_of {as_of:?}");
    }
    // Five days ago the second order's points were still pending (7 days).
    let b = loyalty.get_balance(proto::GetBalanceRequest { member: member("m-n"), as_of: ago(5) }).await.unwrap();
    let b = b.into_inner();
    assert_eq!((b.active_points, b.pending_points), (100, 200));
}

/// The configured audiences for the audience tests: a window, a recency
/// threshold, and one that needs the marketing consent.
const AUDIENCES: &str = r#"
[audiences.recent_buyers]
rule = "orders(within=7d) > 0"

[audiences.lapsed]
rule = "since_last_order > 30d"

[audiences.marketable_buyers]
rule = "orders > 0"
purpose = "marketing"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn profiles_show_the_audiences_their_member_is_in_at_their_as_of() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("omnifold.toml");
    std::fs::write(&file, AUDIENCES).unwrap();
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "audiences", 2);
    setup.extra_env.insert("OMNIFOLD_CONFIG".into(), file.display().to_string());
    setup.extra_env.insert("OMNIFOLD_STORE__KEEP_HISTORY".into(), "true".into());
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(&setup, data.path());
    let consent =
        proto::event::Payload::ConsentChanged(proto::ConsentChanged { purpose: "marketing".into(), granted: true });
    let records = vec![
        event("c1", "m-1", 20, proto::Channel::MobileApp, consent),
        event("o1", "m-1", 10, proto::Channel::MobileApp, order("o-1", 10_000)),
        event("o2", "m-1", 2, proto::Channel::StorePos, order("o-2", 5_000)),
        event("o3", "m-2", 40, proto::Channel::OnlineWeb, order("o-3", 8_000)),
    ];
    setup.produce(&records);
    service.wait_consumed(&setup, records.len() as i64).await;

    let read = |id: &'static str, hours_ago: Option<i64>, mask: Option<&'static str>| {
        let service = &service;
        async move {
            let r = proto::GetProfileRequest {
                member: member(id),
                read_mask: mask.map(|m| omnifold_proto::wkt::FieldMask { paths: vec![m.into()] }),
                as_of: hours_ago.map(|h| to_timestamp(now() - h * omnifold_core::time::HOUR)),
            };
            service.profiles().await.get_profile(r).await.unwrap().into_inner().audiences
        }
    };
    // Now: an order this week, and the consent the marketing audience needs.
    assert_eq!(read("m-1", None, None).await, ["marketable_buyers", "recent_buyers"]);
    // Only the field asked for still reads what the rules need.
    assert_eq!(read("m-1", None, Some("audiences")).await, ["marketable_buyers", "recent_buyers"]);
    // Eight days ago the first order was two days old; sixty hours ago it
    // was more than a week old and the second not placed yet; fifteen days
    // ago m-1 had ordered nothing.
    assert_eq!(read("m-1", Some(8 * 24), None).await, ["marketable_buyers", "recent_buyers"]);
    assert_eq!(read("m-1", Some(60), None).await, ["marketable_buyers"]);
    assert!(read("m-1", Some(15 * 24), None).await.is_empty());
    // m-2 bought 40 days ago and never consented: lapsed, not marketable;
    // 20 days ago its order was 20 days old, not lapsed yet.
    assert_eq!(read("m-2", None, None).await, ["lapsed"]);
    assert!(read("m-2", Some(20 * 24), None).await.is_empty());
    // The CLI's summary names them.
    let said = setup.run(&["profile", "get", "m-1", "--server", &service.grpc]);
    assert!(said.contains("audiences     marketable_buyers, recent_buyers"), "{said}");
}

#[test]
fn a_configured_audience_that_cannot_work_is_refused_with_what_to_fix() {
    let broker_less = Setup::on("127.0.0.1:9", "audiences-check", 1);
    let dir = tempfile::tempdir().unwrap();
    for (toml, says) in [
        (
            "[audiences.x]\nrule = \"tier >= BRONZE\"\n",
            "audience `x`: rule `tier >= BRONZE`: at character 8: unknown tier",
        ),
        ("[audiences.\"Big Spenders\"]\nrule = \"spend > 1\"\n", "a name is 1 to 64 of a-z"),
        (
            "[privacy]\nsensitive_traits = [\"health\"]\n[audiences.x]\nrule = 'trait(\"health\") == \"diabetic\"'\n",
            "reads the sensitive trait `health`",
        ),
        ("[audiences.x]\nrule = \"orders > 0\"\ncolour = \"red\"\n", "unknown field `colour`"),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, toml).unwrap();
        let out = broker_less.command().args(["config", "check", file.to_str().unwrap()]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{toml}: {err}");
    }
}

/// Every record of the audience topic, in order: (member, audience,
/// event, seq, instant).
fn transitions(setup: &Setup, topic: &str) -> Vec<(String, String, String, u64, String)> {
    use rdkafka::Message as _;
    read_topic(setup, topic, 1)
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_owned();
            (s("memberId"), s("audience"), s("event"), v["seq"].as_u64().unwrap(), s("at"))
        })
        .collect()
}

/// A stack on one partition (one event-time clock) with the audiences of
/// `config` evaluated in the fold and their entries and exits on `topic`.
fn audience_stack(name: &str, config: &str, env: &[(&str, &str)]) -> (Stack, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("omnifold.toml");
    std::fs::write(&file, config).unwrap();
    let topic = format!("{name}.audiences");
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, name, 1);
    setup.extra_env.insert("OMNIFOLD_CONFIG".into(), file.display().to_string());
    setup.extra_env.insert("OMNIFOLD_KAFKA__AUDIENCE_TOPIC".into(), topic.clone());
    setup.extra_env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(&setup, data.path());
    (Stack { broker, data, setup, service }, dir, topic)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fold_writes_each_entry_and_exit_once_through_events_time_and_late_events() {
    let (Stack { broker: _broker, data, setup, service }, _dir, topic) =
        audience_stack("audience-fold", AUDIENCES, &[]);
    let t = now() - 30 * DAY;
    let at = |d: i64| omnifold_core::time::rfc3339(t + d * DAY);
    let consent =
        |granted| proto::event::Payload::ConsentChanged(proto::ConsentChanged { purpose: "marketing".into(), granted });
    let view = proto::event::Payload::ProductViewed(proto::ProductViewed { sku: "s".into(), ..Default::default() });
    let on = |id: &str, who: &str, day: i64, payload| {
        let (k, mut v) = event(id, who, 0, proto::Channel::MobileApp, payload);
        let mut e = proto::Event::decode(&v[..]).unwrap();
        e.occurred_at = Some(to_timestamp(t + day * DAY));
        v = e.encode_to_vec();
        (k, v)
    };
    let records = vec![
        on("e1", "m-1", 0, order("o-1", 10_000)), // enters recent_buyers
        on("e2", "m-1", 1, consent(true)),        // enters marketable_buyers
        on("e3", "m-2", 10, view.clone()),        // time passes day 7: m-1 leaves recent_buyers then
        on("e4", "m-1", 20, order("o-2", 5_000)), // enters again; lapsed left behind never held
        on("e5", "m-1", 21, consent(false)),      // leaves marketable_buyers
        on("e6", "m-3", 19, order("o-3", 1_000)), // late (day 19 < day 21): enters at day 21
    ];
    setup.produce(&records);
    service.wait_consumed(&setup, records.len() as i64).await;
    let got = eventually("the transitions", Duration::from_secs(30), || async {
        let got = transitions(&setup, &topic);
        (got.len() >= 8).then_some(got)
    })
    .await;
    let want = |m: &str, a: &str, e: &str, seq: u64, day: i64| (m.to_owned(), a.to_owned(), e.to_owned(), seq, at(day));
    assert_eq!(
        got,
        [
            want("m-1", "recent_buyers", "entered", 1, 0),
            want("m-1", "marketable_buyers", "entered", 1, 1),
            want("m-1", "recent_buyers", "exited", 2, 7),
            want("m-1", "recent_buyers", "entered", 3, 20),
            want("m-1", "marketable_buyers", "exited", 2, 21),
            want("m-3", "recent_buyers", "entered", 1, 21),
            // The test's probes (dated now, day 30) move event time on:
            // the later orders leave the week behind them too.
            want("m-3", "recent_buyers", "exited", 2, 26),
            want("m-1", "recent_buyers", "exited", 4, 27),
        ]
    );
    // A replay of the log into a fresh store keeps the same memberships
    // and sequence numbers.
    assert!(service.stop().success());
    assert_eq!(digest(&setup, data.path()), replayed_digest(&setup));
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_and_exits_survive_a_crash_once_each_by_their_sequence_numbers() {
    let (Stack { broker: _broker, data, setup, service }, _dir, topic) =
        audience_stack("audience-crash", AUDIENCES, &[("OMNIFOLD_KAFKA__BATCH_MAX_RECORDS", "3")]);
    drop(service);
    let t = now() - 60 * DAY;
    let mut records = Vec::new();
    for i in 0..30i64 {
        let who = format!("m-{}", i % 5);
        let (k, v) = event(&format!("e{i}"), &who, 0, proto::Channel::StorePos, order(&format!("o-{i}"), 1_000));
        let mut e = proto::Event::decode(&v[..]).unwrap();
        e.occurred_at = Some(to_timestamp(t + i * 2 * DAY));
        records.push((k, e.encode_to_vec()));
    }
    setup.produce(&records);
    // Aborts right before its 4th commit: that batch's entries and exits
    // were written, its state was not; after the restart it is folded again.
    let crashing = Service::start_with(&setup, data.path(), &[("OMNIFOLD_FAILPOINT", "before_commit:4")]);
    let status = crashing.wait_exit(Duration::from_secs(60));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(6), "aborted: {status}");
    let service = Service::start(&setup, data.path());
    service.wait_consumed(&setup, records.len() as i64).await;
    let got = transitions(&setup, &topic);
    // Per member and audience: every sequence number from 1 up, none
    // missing; a number seen twice is the same entry or exit.
    let mut seen: std::collections::BTreeMap<(String, String), std::collections::BTreeMap<u64, (String, String)>> =
        Default::default();
    for (m, a, e, seq, at) in &got {
        let earlier = seen.entry((m.clone(), a.clone())).or_default().insert(*seq, (e.clone(), at.clone()));
        assert!(earlier.is_none_or(|x| x == (e.clone(), at.clone())), "{m} {a} #{seq} differs when repeated");
    }
    assert!(got.len() > seen.values().map(|s| s.len()).sum::<usize>(), "the crash repeated some: {got:?}");
    for ((m, a), seqs) in &seen {
        let numbers: Vec<u64> = seqs.keys().copied().collect();
        assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>(), "{m} {a}");
    }
    // And the store agrees: the last number written is each membership's.
    assert!(service.stop().success());
    let dump = setup.run(&["dump", "--data-dir", data.path().to_str().unwrap()]);
    for line in dump.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = v["key"].as_str().unwrap();
        for pair in v["audiences"]["memberships"].as_array().into_iter().flatten() {
            let (a, m) = (pair[0].as_str().unwrap().to_owned(), &pair[1]);
            let last = seen.get(&(key.to_owned(), a.clone())).and_then(|s| s.keys().last().copied()).unwrap_or(0);
            assert_eq!(m["seq"].as_u64().unwrap(), last, "{key} {a}");
        }
    }
}

async fn audience_reads(service: &Service) -> proto::audience_service_client::AudienceServiceClient<Conn> {
    proto::audience_service_client::AudienceServiceClient::new(connect(&service.grpc).await.unwrap())
}

fn page(name: &str, size: i32, token: &str) -> proto::ListAudienceMembersRequest {
    proto::ListAudienceMembersRequest { name: name.into(), page_size: size, page_token: token.into() }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_audience_lists_its_members_a_page_at_a_time_from_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("omnifold.toml");
    std::fs::write(&file, AUDIENCES).unwrap();
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "audience-list", 3);
    setup.extra_env.insert("OMNIFOLD_CONFIG".into(), file.display().to_string());
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(&setup, data.path());
    let buyer = |i: usize, days_ago| {
        event(
            &format!("e-{i}"),
            &format!("m-{i:02}"),
            days_ago,
            proto::Channel::StorePos,
            order(&format!("o-{i}"), 100),
        )
    };
    // 25 bought this week, 5 more than 30 days ago.
    let mut records: Vec<_> = (0..25).map(|i| buyer(i, 2)).collect();
    records.extend((25..30).map(|i| buyer(i, 40)));
    setup.produce(&records);
    let mut total = records.len() as i64;
    service.wait_consumed(&setup, total).await;
    let mut reads = audience_reads(&service).await;

    let all = reads.list_audiences(proto::ListAudiencesRequest {}).await.unwrap().into_inner().audiences;
    let sizes: Vec<(&str, u64)> = all.iter().map(|a| (a.name.as_str(), a.size)).collect();
    assert_eq!(sizes, [("lapsed", 5), ("marketable_buyers", 0), ("recent_buyers", 25)]);
    assert!(all.iter().all(|a| a.partitions == [0, 1, 2]), "{all:?}");
    let one = reads.get_audience(proto::GetAudienceRequest { name: "marketable_buyers".into() }).await.unwrap();
    let one = one.into_inner();
    assert_eq!((one.rule.as_str(), one.purpose.as_str(), one.size), ("orders > 0", "marketing", 0));

    // A listing's first page; then five more buyers are folded while it is
    // open: its later pages are of the snapshot it started with.
    let first = reads.list_audience_members(page("recent_buyers", 10, "")).await.unwrap().into_inner();
    assert_eq!((first.member_ids.len(), first.total_size), (10, 25));
    setup.produce(&(30..35).map(|i| buyer(i, 1)).collect::<Vec<_>>());
    total += 5;
    service.wait_consumed(&setup, total).await;
    let mut listed = first.member_ids.clone();
    let mut token = first.next_page_token;
    let mut pages = 1;
    while !token.is_empty() {
        let next = reads.list_audience_members(page("recent_buyers", 10, &token)).await.unwrap().into_inner();
        assert_eq!(next.total_size, 25);
        listed.extend(next.member_ids);
        token = next.next_page_token;
        pages += 1;
    }
    assert_eq!(pages, 3, "10, 10 and 5: no empty last page");
    listed.sort();
    assert_eq!(listed, (0..25).map(|i| format!("m-{i:02}")).collect::<Vec<_>>());
    // A new listing sees the new members.
    let now_listed = reads.list_audience_members(page("recent_buyers", 1000, "")).await.unwrap().into_inner();
    assert_eq!((now_listed.member_ids.len(), now_listed.total_size), (30, 30));
    assert!(now_listed.next_page_token.is_empty());

    // What to fix.
    let code = |r: Result<tonic::Response<proto::ListAudienceMembersResponse>, tonic::Status>| {
        let s = r.unwrap_err();
        (s.code(), s.message().to_owned())
    };
    let (c, m) = code(reads.list_audience_members(page("nobody", 10, "")).await);
    assert!(c == Code::NotFound && m.contains("ListAudiences lists"), "{m}");
    let (c, m) = code(reads.list_audience_members(page("recent_buyers", 5000, "")).await);
    assert!(c == Code::InvalidArgument && m.contains("page_size must be 0 to 1000"), "{m}");
    let (c, m) = code(reads.list_audience_members(page("recent_buyers", 10, "garbage")).await);
    assert!(c == Code::InvalidArgument && m.contains("page_token is not one this server gave"), "{m}");
    let open = reads.list_audience_members(page("lapsed", 2, "")).await.unwrap().into_inner();
    let (c, m) = code(reads.list_audience_members(page("recent_buyers", 2, &open.next_page_token)).await);
    assert!(c == Code::InvalidArgument && m.contains("belongs to a listing of audience `lapsed`"), "{m}");
    let gone = reads.get_audience(proto::GetAudienceRequest { name: " ".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::InvalidArgument, "{gone:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_change_stream_carries_entries_and_exits_also_those_time_alone_makes() {
    let (Stack { broker: _broker, data: _data, setup, service }, _dir, _topic) =
        audience_stack("audience-watch", AUDIENCES, &[]);
    let watch = proto::WatchProfileRequest {
        partitions: Some(proto::PartitionRange { first: 0, last: 0 }),
        ..Default::default()
    };
    // Right after the start the partition may still be changing hands
    // (UNAVAILABLE, retry): watch once it is this instance's.
    let mut stream = eventually("a watch", Duration::from_secs(30), || async {
        service.profiles().await.watch_profile(watch.clone()).await.ok().map(tonic::Response::into_inner)
    })
    .await;
    let t = now() - 30 * DAY;
    let on = |id: &str, who: &str, day: i64, payload| {
        let (k, v) = event(id, who, 0, proto::Channel::MobileApp, payload);
        let mut e = proto::Event::decode(&v[..]).unwrap();
        e.occurred_at = Some(to_timestamp(t + day * DAY));
        (k, e.encode_to_vec())
    };
    let view = proto::event::Payload::ProductViewed(proto::ProductViewed { sku: "s".into(), ..Default::default() });
    // m-1 buys on day 0 (enters recent_buyers); m-2's view on day 10 moves
    // event time past day 7, when m-1 leaves it.
    setup.produce(&[on("e1", "m-1", 0, order("o-1", 100)), on("e2", "m-2", 10, view)]);
    // m-1's changes until both moves came (one batch may fold both events:
    // then one change carries both).
    let moves = |c: &proto::ProfileChange| -> Vec<(String, bool, u64, i64)> {
        c.audience_transitions
            .iter()
            .map(|x| (x.audience.clone(), x.entered, x.seq, omnifold_core::time::from_timestamp(&x.at.unwrap())))
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut seen, mut last, mut of_m2) = (Vec::new(), None, None);
    while seen.len() < 2 || of_m2.is_none() {
        let msg = tokio::time::timeout_at(deadline, stream.message()).await.expect("m-1's moves in time");
        if let Some(proto::watch_profile_response::Event::Change(c)) = msg.unwrap().unwrap().event {
            match c.member_id.as_str() {
                "m-1" => {
                    seen.extend(moves(&c));
                    last = Some(c);
                }
                "m-2" => of_m2 = c.version,
                _ => {}
            }
        }
    }
    assert_eq!(seen, [("recent_buyers".to_owned(), true, 1, t), ("recent_buyers".to_owned(), false, 2, t + 7 * DAY)]);
    // The exit came with the record that moved time (m-2's view: the same
    // version as m-2's change), the profile otherwise as it was (one order).
    let last = last.unwrap();
    assert_eq!(last.version, of_m2);
    assert_eq!(last.profile.as_ref().unwrap().purchases.as_ref().unwrap().orders, 1);
}

/// `GetAudience` of `name`.
async fn get(service: &Service, name: &str) -> proto::Audience {
    let mut reads = audience_reads(service).await;
    reads.get_audience(proto::GetAudienceRequest { name: name.into() }).await.unwrap().into_inner()
}

/// `name` once its pass has evaluated some members.
async fn building(service: &Service, name: &str) -> proto::Audience {
    eventually("the first chunk", Duration::from_secs(30), || async {
        let a = get(service, name).await;
        (a.members_evaluated > 0).then_some(a)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn audiences_added_or_changed_in_the_configuration_are_built_over_the_members_there_are() {
    // Members who ordered before any audience was defined.
    let (Stack { broker: _broker, data, mut setup, service }, dir, topic) =
        audience_stack("audience-backfill", "", &[]);
    let records: Vec<_> = (0..10)
        .map(|i| event(&format!("e{i}"), &format!("m-{i}"), 40, proto::Channel::StorePos, order("o", 1_000)))
        .collect();
    setup.produce(&records);
    service.wait_consumed(&setup, records.len() as i64).await;
    assert!(service.stop().success());
    let config = |buyers: &str| {
        let toml =
            format!("[audiences.buyers]\nrule = \"{buyers}\"\n[audiences.big_spenders]\nrule = \"spend >= 10\"\n");
        std::fs::write(dir.path().join("omnifold.toml"), toml).unwrap();
    };
    let (ready, building_) = (proto::AudienceStatus::Ready as i32, proto::AudienceStatus::Building as i32);
    // Two new audiences every member qualifies for, though none has an
    // event again. Three members a record, the next record not for an
    // hour: the pass stops after its first record, and both say building.
    config("orders > 0");
    setup.extra_env.insert("OMNIFOLD_KAFKA__AUDIENCE_BACKFILL_MEMBERS".into(), "3".into());
    setup.extra_env.insert("OMNIFOLD_KAFKA__AUDIENCE_BACKFILL_INTERVAL_MS".into(), "3600000".into());
    let service = Service::start(&setup, data.path());
    let a = building(&service, "big_spenders").await;
    assert_eq!((a.status, a.size, a.members_evaluated, &a.building_partitions), (building_, 3, 3, &vec![0]), "{a:?}");
    assert_eq!(get(&service, "buyers").await.status, building_);
    assert!(service.stop().success());
    // At the usual pace the pass ends; every member entered each once.
    setup.extra_env.insert("OMNIFOLD_KAFKA__AUDIENCE_BACKFILL_INTERVAL_MS".into(), "20".into());
    let service = Service::start(&setup, data.path());
    let built = eventually("the pass to end", Duration::from_secs(60), || async {
        let a = get(&service, "big_spenders").await;
        (a.status == ready).then_some(a)
    })
    .await;
    assert_eq!((built.size, built.building_partitions.len()), (10, 0));
    let entered = |audience: &str| -> std::collections::BTreeSet<String> {
        let got = transitions(&setup, &topic);
        got.into_iter()
            .filter(|(_, a, e, seq, _)| a == audience && e == "entered" && *seq == 1)
            .map(|(m, ..)| m)
            .collect()
    };
    let everyone: std::collections::BTreeSet<String> = (0..10).map(|i| format!("m-{i}")).collect();
    assert_eq!((entered("big_spenders"), entered("buyers")), (everyone.clone(), everyone));
    assert!(service.stop().success());
    // One rule changed: only its audience is built again (one member an
    // hour here, so it is still building), the other stays ready.
    config("orders > 1");
    setup.extra_env.insert("OMNIFOLD_KAFKA__AUDIENCE_BACKFILL_MEMBERS".into(), "1".into());
    setup.extra_env.insert("OMNIFOLD_KAFKA__AUDIENCE_BACKFILL_INTERVAL_MS".into(), "3600000".into());
    let service = Service::start(&setup, data.path());
    let changed = building(&service, "buyers").await;
    assert_eq!((changed.status, changed.members_evaluated), (building_, 1));
    assert_eq!(get(&service, "big_spenders").await.status, ready);
    // The member it reached left: one order is not more than one.
    assert_eq!(changed.size, 9, "{changed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn audiences_defined_through_the_api_are_built_changed_and_deleted_through_the_log() {
    let fast =
        [("OMNIFOLD_KAFKA__AUDIENCE_BACKFILL_INTERVAL_MS", "20"), ("OMNIFOLD_KAFKA__AUDIENCE_BACKFILL_MEMBERS", "2")];
    let (Stack { broker: _broker, data, setup, service }, _dir, topic) =
        audience_stack("audience-api", AUDIENCES, &fast);
    // Three members with two orders, three with one, before any definition.
    let mut records = Vec::new();
    for i in 0..6 {
        let who = format!("m-{i}");
        records.push(event(&format!("a{i}"), &who, 40, proto::Channel::StorePos, order("o-a", 1_000)));
        if i < 3 {
            records.push(event(&format!("b{i}"), &who, 39, proto::Channel::StorePos, order("o-b", 1_000)));
        }
    }
    setup.produce(&records);
    service.wait_consumed(&setup, records.len() as i64).await;
    let mut admin = service.admin().await;
    let create = |name: &str, rule: &str| proto::CreateAudienceRequest {
        name: name.into(),
        rule: rule.into(),
        purpose: String::new(),
        description: "repeat buyers".into(),
    };
    // What cannot be defined, and why.
    let refused = admin.create_audience(create("recent_buyers", "orders > 0")).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("defined in the configuration"), "{}", refused.message());
    let refused = admin.create_audience(create("repeat", "orders >> 1")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("at character"), "{}", refused.message());
    let refused = admin.create_audience(create("Repeat!", "orders > 1")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    let ready = |size: u64, version: u64| {
        let service = &service;
        async move {
            eventually("the audience built", Duration::from_secs(60), || async {
                let a = get(service, "repeat").await;
                (a.status == proto::AudienceStatus::Ready as i32 && a.version == version).then_some(a)
            })
            .await
            .size
                == size
        }
    };
    // Created: version 1, from the API, built over the members there are.
    let made = admin.create_audience(create("repeat", "orders > 1")).await.unwrap().into_inner();
    assert_eq!((made.version, made.source), (1, proto::AudienceSource::Api as i32));
    assert!(ready(3, 1).await, "the three with two orders");
    // The CLI lists it and its members (every page: two ids a page).
    let said = setup.run(&["audiences", "list", "--server", &service.grpc]);
    assert!(said.lines().any(|l| l.starts_with("repeat ") && l.contains("READY") && l.contains("API")), "{said}");
    let ids = setup.run(&["audiences", "members", "repeat", "--page-size", "2", "--server", &service.grpc]);
    assert_eq!(ids.lines().collect::<Vec<_>>(), ["m-0", "m-1", "m-2"]);
    let again = admin.create_audience(create("repeat", "orders > 1")).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    // Profiles list it.
    let r = proto::GetProfileRequest { member: member("m-0"), ..Default::default() };
    let profile = service.profiles().await.get_profile(r).await.unwrap().into_inner();
    assert!(profile.audiences.contains(&"repeat".to_owned()), "{:?}", profile.audiences);

    // Changed on a stale version: ABORTED; on the current one, rebuilt.
    let update = |version: u64| proto::UpdateAudienceRequest {
        name: "repeat".into(),
        rule: "orders > 0".into(),
        purpose: String::new(),
        description: "buyers".into(),
        version,
    };
    let stale = admin.update_audience(update(7)).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    assert!(stale.message().contains("is at version 1"), "{}", stale.message());
    let changed = admin.update_audience(update(1)).await.unwrap().into_inner();
    assert_eq!((changed.version, changed.rule.as_str()), (2, "orders > 0"));
    assert!(ready(6, 2).await, "every buyer now");

    // Deleted: gone from reads, and every member left it.
    let gone = admin.delete_audience(proto::DeleteAudienceRequest { name: "repeat".into(), version: 2 }).await;
    assert_eq!(gone.unwrap().into_inner().version, 3);
    let mut reads = audience_reads(&service).await;
    let missing = reads.get_audience(proto::GetAudienceRequest { name: "repeat".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let moves = eventually("every member out", Duration::from_secs(60), || async {
        let got: Vec<_> = transitions(&setup, &topic).into_iter().filter(|t| t.1 == "repeat").collect();
        (got.iter().filter(|t| t.2 == "exited").count() == 6).then_some(got)
    })
    .await;
    for i in 0..6 {
        let of: Vec<(&str, u64)> =
            moves.iter().filter(|t| t.0 == format!("m-{i}")).map(|t| (t.2.as_str(), t.3)).collect();
        assert_eq!(of, [("entered", 1), ("exited", 2)], "m-{i}");
    }
    // The definitions are in the log: a replay makes the same memberships.
    // (The replay folds each whole batch at once: the pass includes the
    // members folded earlier in the same batch.)
    assert!(service.stop().success());
    assert_eq!(digest(&setup, data.path()), replayed_digest(&setup));
}
