//! Erasure: a member's data goes, a tombstone stays, and every key that led
//! to the member forgets it. Folded like any event, so a replay of the log
//! erases the member again at the same point.

use omnifold_proto::v1 as proto;

use crate::Rejection;
use crate::config::{AfterErasure, FoldConfig};
use crate::effects::{Effects, Erase, Outgoing};
use crate::event::Event;
use crate::ident::Identifier;
use crate::identity::derived_event_id;
use crate::loyalty::{CommandKind, Verdict, VerdictStatus};
use crate::member::{Member, ProfileKind};
use crate::time::{rfc3339, to_timestamp};

/// What the fold does with an event for an erased member: refuses it, or
/// (`fold.after_erasure = "fresh"`) starts the profile over.
pub(crate) fn after(member: &mut Member, erased_at: i64, cfg: &FoldConfig) -> Result<(), Rejection> {
    match cfg.after_erasure {
        AfterErasure::Refuse => Err(Rejection(format!(
            "`{}` was erased at {}; events for it are refused (fold.after_erasure = \"refuse\")",
            member.key,
            rfc3339(erased_at)
        ))),
        AfterErasure::Fresh => {
            let version = member.version;
            *member = Member::new(member.key.clone(), member.kind);
            member.version = version;
            Ok(())
        }
    }
}

/// Erases `member`: everything it holds goes, the record left is its
/// tombstone (key, kind, time, version), and each key it held (identifiers,
/// anonymous ids, merged member ids) leaves the identity index and is told
/// to forget it. An erasure of an erased member only answers its request.
pub(crate) fn erase(member: &mut Member, event: &Event, request_id: Option<&str>) -> Effects {
    let mut fx = Effects::default();
    if member.kind != ProfileKind::KnownMember {
        // A provisional or anonymous profile's key is itself personal data
        // (an identifier, a device): it is deleted, not kept as a
        // tombstone, and no job record is kept under it.
        fx.erase = Erase::All;
        return fx;
    }
    if let Some(r) = request_id {
        fx.verdict = Some(done(event, r));
    }
    if member.erased_at.is_some() {
        return fx;
    }
    let held = held_keys(member);
    let tombstone =
        Member { key: member.key.clone(), kind: member.kind, erased_at: Some(event.occurred_at), ..Member::default() };
    let version = member.version;
    *member = tombstone;
    member.version = version;
    fx.erase = Erase::Books;
    for (key, subject) in held {
        fx.routes.push((key.clone(), None));
        fx.outbox.push(forget(event, &member.key, key, subject));
    }
    fx
}

/// Folds `keyErased` at a key the erased `member_id` held: the key forgets
/// everything, unless it has since come to route to another member.
pub(crate) fn forget_key(member: &Member, member_id: &str) -> Effects {
    let ours = member.routes_to.as_deref().is_none_or(|to| to == member_id);
    Effects { erase: if ours { Erase::All } else { Erase::Nothing }, ..Effects::default() }
}

/// The erasure job's answer: done, at the event's time.
fn done(event: &Event, request_id: &str) -> Verdict {
    Verdict {
        request_id: request_id.to_owned(),
        kind: CommandKind::Erase,
        status: VerdictStatus::Accepted,
        points: 0,
        reason: "erased".into(),
        event_id: event.event_id.clone(),
        at: event.occurred_at,
        seq: None,
    }
}

/// Every key the member held, with the subject that addresses it.
fn held_keys(member: &Member) -> Vec<(String, proto::Subject)> {
    let mut out: Vec<(String, proto::Subject)> = Vec::new();
    for i in &member.identifiers {
        out.push((i.key(), proto::Subject { identifiers: vec![wire(i)], ..Default::default() }));
    }
    for alias in &member.aliases {
        let subject = if member.merged_members.contains(alias) {
            proto::Subject { member_id: alias.clone(), ..Default::default() }
        } else {
            proto::Subject { anonymous_id: alias.clone(), ..Default::default() }
        };
        out.push((alias.clone(), subject));
    }
    for m in member.merged_members.iter().filter(|m| !member.aliases.contains(*m)) {
        out.push((m.clone(), proto::Subject { member_id: m.clone(), ..Default::default() }));
    }
    out.retain(|(k, _)| *k != member.key);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

fn wire(i: &Identifier) -> proto::Identifier {
    proto::Identifier { r#type: i.kind.to_proto() as i32, value: i.value.clone() }
}

/// The `keyErased` event for one key the member held.
fn forget(event: &Event, member_id: &str, key: String, subject: proto::Subject) -> Outgoing {
    Outgoing {
        event: proto::Event {
            event_id: derived_event_id("erased", &event.event_id, &key),
            occurred_at: Some(to_timestamp(event.occurred_at)),
            channel: event.channel.to_proto() as i32,
            store_id: String::new(),
            subject: Some(subject),
            payload: Some(proto::event::Payload::KeyErased(proto::KeyErased {
                member_id: member_id.to_owned(),
                cause_event_id: event.event_id.clone(),
            })),
        },
        key,
        join: None,
    }
}
