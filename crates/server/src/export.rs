//! `ExportMember` (the right of access): everything stored about one
//! member, as one JSON document: the profile in clear, the stored record
//! (orders, lots, spend, identifiers, consents...), the ledger, decided
//! redemptions and adjustments, and the kept events.

use omnifold_core::decode::decode_wire;
use omnifold_core::time::rfc3339;
use omnifold_core::{LedgerEntry, Millis};

use crate::request::{MemberAddress, ReadMask};
use crate::services::resolve;
use crate::{AppState, Error, convert, privacy};

/// The export's format name, for whoever reads it later.
pub const FORMAT: &str = "omnifold.export.v1";

/// The document for the member `addr` resolves to, as of `now`.
pub(crate) fn export(state: &AppState, addr: &MemberAddress, now: Millis) -> Result<serde_json::Value, Error> {
    let key = resolve(state, addr)?.member.key;
    let partition = state.partition(&key)?;
    state.answers_for(partition)?;
    let store = state.store();
    let member = store
        .member(partition, &key)?
        .ok_or_else(|| Error::NotFound(format!("`{key}` has no profile any more; ask again")))?;
    let mut profile = convert::profile(&member, now, &ReadMask::everything(), &state.fold);
    privacy::profile(&mut profile, privacy::View::ALL, &state.privacy);
    let ledger: Vec<LedgerEntry> = store.ledger(partition, &key, None).collect::<Result<_, _>>()?;
    let verdicts = store.member_verdicts(partition, &key)?;
    let events = store
        .history(partition, &key)
        .map(|kept| {
            let (seq, at, record) = kept?;
            let event = decode_wire(&record, usize::MAX)
                .ok()
                .and_then(|e| serde_json::to_value(e).ok())
                .unwrap_or_else(|| serde_json::json!({"undecodable_bytes": record.len()}));
            Ok(serde_json::json!({"sequence": seq, "occurred_at": rfc3339(at), "event": event}))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(serde_json::json!({
        "format": FORMAT,
        "member_id": key,
        "exported_at": rfc3339(now),
        "profile": profile,
        "stored_record": member,
        "ledger": ledger.iter().map(convert::ledger_entry).collect::<Vec<_>>(),
        "decided_requests": verdicts,
        "kept_events": events,
        "kept_events_note": if store.keeps_history() {
            "the member's events as received (store.keep_history)"
        } else {
            "this store keeps no events per member (store.keep_history = false)"
        },
    }))
}
