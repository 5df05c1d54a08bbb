//! The profile-changes topic's records (`kafka.changes_topic`): each
//! changed profile in the change stream's message, as a caller without
//! `profile:pii` would see it (in clear with `kafka.changes_pii`), as
//! proto3 JSON; a profile that is gone is a tombstone.

use std::sync::Arc;

use omnifold_core::audience::Audiences;
use omnifold_core::member::ProfileKind;
use omnifold_core::{FoldConfig, Member};
use omnifold_proto::v1 as proto;

use crate::privacy::{self, PrivacyConfig};
use crate::request::ReadMask;
use crate::{convert, now_millis};

/// The header with a record's version: `partition:next_offset`.
pub const VERSION_HEADER: &str = "omnifold-version";
/// The header of a tombstone for a profile that joined another member:
/// that member's id.
pub const ROUTES_TO_HEADER: &str = "omnifold-routes-to";

/// One record for the profile-changes topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRecord {
    /// The profile's key: a member id (or, with `changes_pii`, an
    /// anonymous id or "TYPE:value").
    pub key: String,
    /// `ProfileChange` as proto3 JSON; empty: a tombstone.
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// Renders changed profiles for the profile-changes topic.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    fold: Arc<FoldConfig>,
    privacy: Arc<PrivacyConfig>,
    /// Personal data in clear, and profiles that are not members'.
    pii: bool,
}

impl ChangeFeed {
    pub fn new(fold: Arc<FoldConfig>, privacy: Arc<PrivacyConfig>, pii: bool) -> ChangeFeed {
        ChangeFeed { fold, privacy, pii }
    }

    /// The record of the profile at `key` as a batch left it (`member`;
    /// none when its record was deleted), version `partition:next_offset`.
    /// None for a profile that is not a member's unless `pii`: its key is
    /// an identifier or a device, which a masked key could not stand for.
    /// `audiences` are the partition's.
    pub fn record(
        &self,
        partition: u32,
        key: &str,
        next_offset: i64,
        member: Option<&Member>,
        audiences: &Audiences,
    ) -> Option<FeedRecord> {
        let a_member = member.is_some_and(|m| m.kind == ProfileKind::KnownMember);
        if !a_member && !self.pii {
            return None;
        }
        let mut headers = vec![(VERSION_HEADER, format!("{partition}:{next_offset}"))];
        let value = match member {
            None => Vec::new(),
            Some(m) if m.erased_at.is_some() => Vec::new(),
            Some(m) if m.routes_to.is_some() => {
                headers.push((ROUTES_TO_HEADER, m.routes_to.clone().unwrap_or_default()));
                Vec::new()
            }
            Some(m) => self.message(partition, next_offset, m, audiences),
        };
        Some(FeedRecord { key: key.to_owned(), value, headers })
    }

    /// A live profile's `ProfileChange`, masked as configured.
    fn message(&self, partition: u32, next_offset: i64, m: &Member, audiences: &Audiences) -> Vec<u8> {
        let at = now_millis();
        let mut profile = convert::profile(m, at, &ReadMask::everything(), &self.fold);
        profile.audiences = audiences.of(m, at, &self.fold).into_iter().map(str::to_owned).collect();
        privacy::profile(&mut profile, privacy::view(self.pii, m, &self.privacy), &self.privacy);
        let change = proto::ProfileChange {
            member_id: profile.member_id.clone(),
            version: Some(proto::WatchCursor { partition, next_offset }),
            profile: Some(profile),
            ..Default::default()
        };
        serde_json::to_vec(&change).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(pii: bool) -> ChangeFeed {
        ChangeFeed::new(Arc::new(FoldConfig::default()), Arc::new(PrivacyConfig::default()), pii)
    }

    fn header<'a>(r: &'a FeedRecord, name: &str) -> Option<&'a str> {
        r.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_member_is_its_change_as_json_and_gone_is_a_tombstone() {
        let mut m = Member::new("m-1", ProfileKind::KnownMember);
        m.version.next_offset = 8;
        let r = feed(false).record(3, "m-1", 8, Some(&m), &Audiences::default()).unwrap();
        assert_eq!((r.key.as_str(), header(&r, VERSION_HEADER)), ("m-1", Some("3:8")));
        let change: proto::ProfileChange = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(change.member_id, "m-1");
        assert_eq!(change.version, Some(proto::WatchCursor { partition: 3, next_offset: 8 }));
        assert_eq!(change.profile.unwrap().member_id, "m-1");

        m.routes_to = Some("m-2".into());
        let merged = feed(false).record(3, "m-1", 9, Some(&m), &Audiences::default()).unwrap();
        assert!(merged.value.is_empty(), "a tombstone");
        assert_eq!(header(&merged, ROUTES_TO_HEADER), Some("m-2"));
        m.routes_to = None;
        m.erased_at = Some(1);
        let erased = feed(false).record(3, "m-1", 10, Some(&m), &Audiences::default()).unwrap();
        assert!(erased.value.is_empty() && header(&erased, ROUTES_TO_HEADER).is_none());
    }

    #[test]
    fn profiles_keyed_by_a_device_or_an_identifier_need_changes_pii() {
        let provisional = Member::new("PHONE:+8613800000000", ProfileKind::Provisional);
        let anonymous = Member::new("ck-1", ProfileKind::Anonymous);
        for (key, m) in [("PHONE:+8613800000000", &provisional), ("ck-1", &anonymous)] {
            assert_eq!(feed(false).record(0, key, 1, Some(m), &Audiences::default()), None, "{key}");
            assert_eq!(feed(false).record(0, key, 1, None, &Audiences::default()), None, "{key} deleted");
            let r = feed(true).record(0, key, 1, Some(m), &Audiences::default()).unwrap();
            let change: proto::ProfileChange = serde_json::from_slice(&r.value).unwrap();
            assert_eq!((r.key.as_str(), change.member_id.as_str()), (key, key), "in clear with changes_pii");
            assert!(
                feed(true).record(0, key, 2, None, &Audiences::default()).unwrap().value.is_empty(),
                "{key} deleted: a tombstone"
            );
        }
    }
}
