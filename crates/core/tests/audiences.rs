//! The audience rule language (docs/audiences.md): each operator and
//! measure on members built by the real fold, the instants at which time
//! alone changes an answer, and refusals that say what to fix.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use omnifold_core::audience::{Rule, holds, next_change};
use omnifold_core::fold::{Position, apply, kind_of};
use omnifold_core::testing::{fold_config as cfg, member_event as ev};
use omnifold_core::time::{DAY, HOUR};
use omnifold_core::{Event, Member};
use omnifold_proto::v1 as proto;
use proto::Channel::{MobileApp, StorePos};
use proto::event::Payload;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn order(id: &str, at: i64, channel: proto::Channel, yuan: i64) -> Event {
    let line =
        proto::OrderLine { sku: "SKU-1".into(), category: "shoes".into(), quantity: 1, unit_price_minor: yuan * 100 };
    let payload = Payload::OrderPlaced(proto::OrderPlaced {
        order_id: id.into(),
        currency: "CNY".into(),
        lines: vec![line],
        total_minor: yuan * 100,
    });
    ev(id, at, channel, payload)
}

fn view(id: &str, at: i64, sku: &str, category: &str) -> Event {
    let payload = Payload::ProductViewed(proto::ProductViewed {
        sku: sku.into(),
        category: category.into(),
        price_minor: 0,
        currency: String::new(),
    });
    ev(id, at, MobileApp, payload)
}

fn fold(events: &[Event]) -> Member {
    let cfg = cfg();
    let mut m = Member::new("m-1", kind_of(&events[0]));
    for (i, e) in events.iter().enumerate() {
        apply(&mut m, e, Position { partition: 0, offset: i as i64 }, &cfg).unwrap();
    }
    m
}

fn is(rule: &str, m: &Member, at: i64) -> bool {
    holds(&Rule::compile(rule).unwrap(), m, at, &cfg())
}

#[test]
fn comparisons_and_logic() {
    let m = fold(&[order("o-1", T0, StorePos, 300), order("o-2", T0 + DAY, MobileApp, 200)]);
    let at = T0 + 2 * DAY;
    for (rule, want) in [
        ("orders == 2", true),
        ("orders != 2", false),
        ("orders < 2", false),
        ("orders <= 2", true),
        ("orders > 1", true),
        ("orders >= 3", false),
        ("orders == 2 and spend >= 500", true),
        ("orders == 2 and spend > 500", false),
        ("orders == 3 or spend == 500", true),
        ("not orders == 3", true),
        ("not (orders == 2 or orders == 3)", false),
        ("(orders == 2 or orders == 3) and not spend < 100.50", true),
    ] {
        assert_eq!(is(rule, &m, at), want, "{rule}");
    }
}

#[test]
fn windows_and_channels() {
    let m = fold(&[order("o-1", T0, StorePos, 300), order("o-2", T0 + 10 * DAY, MobileApp, 200)]);
    let at = T0 + 12 * DAY;
    for (rule, want) in [
        ("orders(within=7d) == 1", true),
        ("orders(within=30d) == 2", true),
        ("spend(within=7d) == 200", true),
        ("spend(within=30d) == 500", true),
        ("orders(channel=STORE_POS) == 1", true),
        ("spend(channel=MOBILE_APP) == 200", true),
        ("events(STORE_POS) == 1", true),
        ("events == 2", true),
        ("since_last_order > 1d and since_last_order < 3d", true),
        ("since_last_seen(channel=STORE_POS) > 11d", true),
        ("since_last_seen < 3d", true),
    ] {
        assert_eq!(is(rule, &m, at), want, "{rule}");
    }
    // Orders dated after the instant are not counted yet.
    assert!(is("orders(within=30d) == 1", &m, T0 + 5 * DAY));
}

#[test]
fn browsing_consent_identifiers_and_traits() {
    let consent = Payload::ConsentChanged(proto::ConsentChanged { purpose: "marketing".into(), granted: true });
    let traits = Payload::ProfileUpdated(proto::ProfileUpdated {
        traits: [("city".to_owned(), "Shanghai".to_owned())].into_iter().collect(),
    });
    let mut m = fold(&[
        view("v-1", T0, "SKU-1", "shoes"),
        view("v-2", T0 + DAY, "SKU-2", "shoes"),
        view("v-3", T0 + DAY, "SKU-3", "bags"),
        ev("c-1", T0, MobileApp, consent),
        ev("t-1", T0, MobileApp, traits),
    ]);
    // The phone a member holds once its claim came back (identity resolution).
    m.identifiers
        .insert(omnifold_core::Identifier { kind: omnifold_core::IdType::Phone, value: "+8613800000000".into() });
    let at = T0 + 5 * DAY;
    for (rule, want) in [
        ("products_viewed(within=7d, category=\"shoes\") == 2", true),
        ("products_viewed(within=5d, category=\"shoes\") == 1", true),
        ("products_viewed(within=7d) == 3", true),
        ("affinity(\"shoes\") > 0.6 and affinity(\"shoes\") < 0.7", true),
        ("affinity(\"toys\") == 0", true),
        ("consented(\"marketing\")", true),
        ("consented(\"sensitive_data\")", false),
        ("has_identifier(PHONE) and not has_identifier(EMAIL)", true),
        ("has_trait(\"city\") and trait(\"city\") == \"Shanghai\"", true),
        ("trait(\"name\") != \"x\"", false),
        ("enrolled", false),
    ] {
        assert_eq!(is(rule, &m, at), want, "{rule}");
    }
}

#[test]
fn tiers_and_points() {
    let enrol = Payload::MemberEnrolled(proto::MemberEnrolled { program: "club".into() });
    let m = fold(&[ev("e-1", T0, MobileApp, enrol), order("o-1", T0, StorePos, 3_000)]);
    let cfg = cfg();
    let pending = m.balance(T0 + DAY, &cfg.loyalty).pending;
    assert!(pending > 0, "the order earns points that activate later");
    assert!(is(&format!("points_pending == {pending} and points_active == 0"), &m, T0 + DAY));
    assert!(is("enrolled and since_enrolled < 2d", &m, T0 + DAY));
    let tier = m.standing(T0 + DAY, &cfg.loyalty).tier;
    assert!(is(&format!("tier == {}", tier.name()), &m, T0 + DAY));
    assert!(is("tier >= MEMBER", &m, T0 + DAY));
}

#[test]
fn time_alone_moves_a_member_in_and_out_at_the_instant_it_says() {
    let m = fold(&[order("o-1", T0, StorePos, 300)]);
    let cfg = cfg();
    // In while the order is within the week; out from the instant it leaves.
    let bought = Rule::compile("orders(within=7d) > 0").unwrap();
    assert!(holds(&bought, &m, T0 + DAY, &cfg));
    let edge = next_change(&bought, &m, T0 + DAY, &cfg).unwrap();
    assert_eq!(edge, T0 + 7 * DAY);
    assert!(holds(&bought, &m, edge - 1, &cfg) && !holds(&bought, &m, edge, &cfg));
    assert_eq!(next_change(&bought, &m, edge, &cfg), None, "nothing more changes by time alone");

    // A recency threshold: out until 90 days have passed, in from then on.
    let lapsed = Rule::compile("since_last_order > 90d").unwrap();
    let edge = next_change(&lapsed, &m, T0 + DAY, &cfg).unwrap();
    assert_eq!(edge, T0 + 90 * DAY + 1);
    assert!(!holds(&lapsed, &m, edge - 1, &cfg) && holds(&lapsed, &m, edge, &cfg));

    // Points that activate, then enter an expiry period, then expire.
    let enrol = Payload::MemberEnrolled(proto::MemberEnrolled { program: "club".into() });
    let m = fold(&[ev("e-1", T0, MobileApp, enrol), order("o-1", T0, StorePos, 3_000)]);
    let expiring = Rule::compile("points_expiring(within=30d) > 0").unwrap();
    let mut at = T0;
    let mut flips = Vec::new();
    let mut was = holds(&expiring, &m, at, &cfg);
    while let Some(next) = next_change(&expiring, &m, at, &cfg) {
        assert!(next > at);
        at = next;
        let now = holds(&expiring, &m, at, &cfg);
        if now != was {
            flips.push((at, now));
        }
        was = now;
    }
    let lot = m.loyalty.lots.iter().next().unwrap();
    assert_eq!(flips, [(lot.expires_at - 30 * DAY, true), (lot.expires_at, false)], "{:?}", lot);
}

#[test]
fn an_answer_never_changes_between_two_announced_instants() {
    // Sampled every hour: whenever the answer differs from the hour before,
    // next_change (asked at that hour) announced an instant no later.
    let m = fold(&[
        order("o-1", T0, StorePos, 300),
        order("o-2", T0 + 3 * DAY, MobileApp, 200),
        view("v-1", T0 + 2 * DAY, "SKU-1", "shoes"),
    ]);
    let cfg = cfg();
    for src in [
        "orders(within=2d) == 1",
        "spend(within=5d) >= 300 and not products_viewed(within=3d) > 0",
        "since_last_order >= 1d or since_last_seen <= 12h",
    ] {
        let rule = Rule::compile(src).unwrap();
        let mut at = T0 - DAY;
        while at < T0 + 20 * DAY {
            let next = next_change(&rule, &m, at, &cfg).unwrap_or(i64::MAX);
            let later = at + HOUR;
            if holds(&rule, &m, later, &cfg) != holds(&rule, &m, at, &cfg) {
                assert!(next <= later, "{src}: changed between {at} and {later}, announced {next}");
            }
            at = later;
        }
    }
}

#[test]
fn a_rule_that_cannot_work_is_refused_with_what_to_fix() {
    for (src, says) in [
        ("", "empty"),
        ("tier", "not yes or no"),
        ("enrolled == 1", "yes or no"),
        ("tier >= BRONZE", "unknown tier `BRONZE`"),
        ("tier >= 3", "compare `tier` with a tier"),
        ("orders > 1.5", "whole number"),
        ("orders(within=400d) > 0", "at most 365 days"),
        ("orders(within=7d, channel=STORE_POS) > 0", "not both"),
        ("orders(channel=TELEPATHY) > 0", "unknown channel"),
        ("orders(colour=\"red\") > 0", "does not take `colour`"),
        ("points_expiring > 0", "needs `within`"),
        ("spend >= 10.005", "amount"),
        ("affinity(\"shoes\") > 2", "between 0 and 1"),
        ("since_last_order > 90", "duration"),
        ("trait(\"city\") > \"A\"", "`==` or `!=`"),
        ("has_identifier(FAX)", "identifier type"),
        ("loyalty_points > 1", "unknown measure `loyalty_points`"),
    ] {
        let e = Rule::compile(src).unwrap_err();
        assert!(e.message.contains(says), "{src:?}: {e}");
    }
}

#[test]
fn a_rule_is_bounded() {
    let many = vec!["orders > 0"; 70].join(" and ");
    assert!(Rule::compile(&many).unwrap_err().message.contains("at most 64"));
    let deep = format!("{}orders > 0{}", "not (".repeat(20), ")".repeat(20));
    assert!(Rule::compile(&deep).unwrap_err().message.contains("nests at most"));
    // Positions count characters, not bytes.
    assert_eq!(Rule::compile("trait(\"城市\") == \"上海\" and tier").unwrap_err().at, 24);
    let long = format!("trait(\"{}\") == \"x\"", "a".repeat(5_000));
    assert!(Rule::compile(&long).unwrap_err().message.contains("characters"));
}

proptest::proptest! {
    /// No text makes the compiler panic: every one is a rule or a refusal
    /// with a position inside the text.
    #[test]
    fn any_text_compiles_or_is_refused(src in "[a-z_()=<>!,. 0-9\"A-Z]{0,80}") {
        if let Err(e) = Rule::compile(&src) {
            proptest::prop_assert!(e.at <= src.len(), "{src:?}: {e}");
        }
    }

    /// Rules made of real measures and values, joined at random: compiled
    /// ones evaluate on a real member without panicking.
    #[test]
    fn rules_of_real_words_evaluate(words in proptest::collection::vec(proptest::sample::select(vec![
        "tier", ">=", "GOLD", "orders", "(", ")", "within=7d", "==", "0", "and", "or", "not", "spend", "2000.5",
        "since_last_order", ">", "90d", "consented(\"marketing\")", "products_viewed(within=3d)", "affinity(\"shoes\")",
        "0.25", "points_expiring(within=30d)", "enrolled", ",", "channel=STORE_POS",
    ]), 0..24)) {
        let src = words.join(" ");
        if let Ok(rule) = Rule::compile(&src) {
            let m = fold(&[order("o-1", T0, StorePos, 300), view("v-1", T0 + DAY, "SKU-1", "shoes")]);
            let cfg = cfg();
            let _ = holds(&rule, &m, T0 + 2 * DAY, &cfg);
            if let Some(next) = next_change(&rule, &m, T0 + 2 * DAY, &cfg) {
                proptest::prop_assert!(next > T0 + 2 * DAY);
            }
        }
    }
}

#[test]
fn a_member_enters_and_leaves_with_numbers_and_a_timer() {
    use omnifold_core::audience::{AudienceConfig, AudienceState, Audiences};
    let def =
        |rule: &str, purpose: &str| AudienceConfig { rule: rule.into(), purpose: purpose.into(), ..Default::default() };
    let mut defs = std::collections::BTreeMap::from([
        ("buyers".to_owned(), def("orders(within=7d) > 0", "")),
        ("marketable".to_owned(), def("orders > 0", "marketing")),
    ]);
    let audiences = Audiences::compile(&defs).unwrap();
    let cfg = cfg();
    let m = fold(&[order("o-1", T0, StorePos, 300)]);
    let mut state = AudienceState::default();
    let t = audiences.evaluate(&mut state, &m, T0, &cfg);
    assert_eq!(t.iter().map(|t| (t.audience.as_str(), t.entered, t.seq)).collect::<Vec<_>>(), [("buyers", true, 1)]);
    assert_eq!(state.timer, Some(T0 + 7 * DAY), "the order leaves the window then");
    assert!(audiences.evaluate(&mut state, &m, T0 + DAY, &cfg).is_empty(), "nothing changed: nothing written");
    let t = audiences.evaluate(&mut state, &m, T0 + 7 * DAY, &cfg);
    assert_eq!((t[0].entered, t[0].seq, t[0].at), (false, 2, T0 + 7 * DAY));
    assert_eq!(state.timer, None);
    // An audience removed from the configuration ends its memberships.
    let again = fold(&[order("o-1", T0, StorePos, 300), order("o-2", T0 + 8 * DAY, StorePos, 300)]);
    audiences.evaluate(&mut state, &again, T0 + 8 * DAY, &cfg);
    assert_eq!(state.names().collect::<Vec<_>>(), ["buyers"]);
    defs.remove("buyers");
    let fewer = Audiences::compile(&defs).unwrap();
    let t = fewer.evaluate(&mut state, &again, T0 + 8 * DAY, &cfg);
    assert_eq!((t[0].audience.as_str(), t[0].entered, t[0].seq), ("buyers", false, 4));
    // The state survives its encoding.
    assert_eq!(AudienceState::decode(&state.encode()).unwrap(), state);
    assert!(AudienceState::decode(&[9, 1, 2]).is_err());
}

/// Audiences defined through the API: every partition keeps the same
/// definition whatever order two of them come in, and they join the
/// configured ones without replacing them.
#[test]
fn definitions_agree_in_any_order_and_never_replace_a_configured_audience() {
    use omnifold_core::audience::{AudienceConfig, Audiences, Definition};
    let def = |name: &str, rule: &str, version, deleted| Definition {
        name: name.into(),
        config: AudienceConfig { rule: rule.into(), ..Default::default() },
        version,
        deleted,
    };
    let (v1, v2) = (def("a", "orders > 0", 1, false), def("a", "orders > 1", 2, false));
    assert!(v2.supersedes(&v1) && !v1.supersedes(&v2));
    // Two changes of one version: exactly one of them wins, either way round.
    let (x, y) = (def("a", "orders > 2", 2, false), def("a", "orders > 3", 2, false));
    assert!(x.supersedes(&y) != y.supersedes(&x));
    assert!(!x.supersedes(&x.clone()), "the same one again changes nothing");
    let bytes = v2.encode();
    assert_eq!(Definition::decode(&bytes).unwrap(), v2);
    assert!(Definition::decode(&bytes[1..]).is_err());

    let configured = Audiences::compile(&std::collections::BTreeMap::from([(
        "b".to_owned(),
        AudienceConfig { rule: "spend > 1".into(), ..Default::default() },
    )]))
    .unwrap();
    let all = Audiences::with_defined(
        &configured,
        &[
            v2.clone(),
            def("b", "orders > 9", 4, false),
            def("c", "orders > 0", 1, true),
            def("d", "nonsense", 1, false),
        ],
    );
    let names: Vec<(&str, u64, &str)> = all.iter().map(|a| (a.name.as_str(), a.version, a.source.as_str())).collect();
    // `b` stays as configured, `c` is deleted, `d` no longer compiles.
    assert_eq!(names, [("a", 2, "orders > 1"), ("b", 0, "spend > 1")]);
}
