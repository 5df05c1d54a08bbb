//! Requests validated into domain values. Every `INVALID_ARGUMENT` the
//! server sends is built here, with a message that says what to fix.

use omnifold_core::time::{MAX_EVENT_TIME, MIN_EVENT_TIME, from_timestamp};
use omnifold_core::{Identifier, Millis};
use omnifold_proto::v1 as proto;
use omnifold_proto::wkt::{FieldMask, Timestamp};

use crate::Error;

/// A member addressed by a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberAddress {
    /// A member id or an anonymous id: the aggregate's own key.
    Key(String),
    Identifier(Identifier),
}

impl TryFrom<Option<proto::MemberRef>> for MemberAddress {
    type Error = Error;

    fn try_from(r: Option<proto::MemberRef>) -> Result<Self, Error> {
        use proto::member_ref::Ref;
        let invalid = |m: &str| Error::InvalidArgument(m.to_owned());
        match r.and_then(|r| r.r#ref) {
            None => Err(invalid("member is required: set member.member_id, member.anonymous_id or member.identifier")),
            Some(Ref::MemberId(id)) | Some(Ref::AnonymousId(id)) => {
                let id = id.trim();
                if id.is_empty() {
                    Err(invalid("member id must not be empty"))
                } else if id.len() > 128 {
                    Err(invalid("member id must be at most 128 characters"))
                } else {
                    Ok(MemberAddress::Key(id.to_owned()))
                }
            }
            Some(Ref::Identifier(i)) => Identifier::try_from(&i)
                .map(MemberAddress::Identifier)
                .map_err(|e| Error::InvalidArgument(format!("member.identifier: {e}"))),
        }
    }
}

/// Top-level `Profile` fields a read mask may name.
pub const PROFILE_FIELDS: [&str; 15] = [
    "member_id",
    "kind",
    "identifiers",
    "aliases",
    "traits",
    "consents",
    "channels",
    "browse",
    "purchases",
    "loyalty",
    "version",
    "first_seen_at",
    "last_seen_at",
    "as_of",
    "enrolled_at",
];

/// A validated read mask: `None` means every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMask(Option<Vec<&'static str>>);

impl ReadMask {
    pub fn includes(&self, field: &str) -> bool {
        self.0.as_ref().is_none_or(|f| f.contains(&field))
    }
}

impl TryFrom<Option<FieldMask>> for ReadMask {
    type Error = Error;

    fn try_from(m: Option<FieldMask>) -> Result<Self, Error> {
        let Some(m) = m.filter(|m| !m.paths.is_empty()) else {
            return Ok(ReadMask(None));
        };
        let mut fields = Vec::with_capacity(m.paths.len());
        for p in &m.paths {
            // Accept the JSON (camelCase) spelling too.
            let snake: String = p
                .chars()
                .flat_map(|c| if c.is_ascii_uppercase() { vec!['_', c.to_ascii_lowercase()] } else { vec![c] })
                .collect();
            match PROFILE_FIELDS.iter().find(|f| **f == snake) {
                Some(f) => fields.push(*f),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "read_mask path `{p}` is not a Profile field; use any of: {}",
                        PROFILE_FIELDS.join(", ")
                    )));
                }
            }
        }
        Ok(ReadMask(Some(fields)))
    }
}

/// An instant from a request, or `default` when absent.
pub fn instant(field: &str, ts: Option<Timestamp>, default: Millis) -> Result<Millis, Error> {
    match ts {
        None => Ok(default),
        Some(ts) => {
            let ms = from_timestamp(&ts);
            if !(MIN_EVENT_TIME..MAX_EVENT_TIME).contains(&ms) || !(0..1_000_000_000).contains(&ts.nanos) {
                return Err(Error::InvalidArgument(format!(
                    "{field} must be a valid time between 2000-01-01 and 2100-01-01"
                )));
            }
            Ok(ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ref_is_required_and_checked() {
        let err = MemberAddress::try_from(None).unwrap_err().to_string();
        assert!(err.contains("member is required"), "{err}");
        let r = proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId("  ".into())) };
        assert!(MemberAddress::try_from(Some(r)).is_err());
        let r = proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId(" m-1 ".into())) };
        assert_eq!(MemberAddress::try_from(Some(r)).unwrap(), MemberAddress::Key("m-1".into()));
        let r = proto::MemberRef {
            r#ref: Some(proto::member_ref::Ref::Identifier(proto::Identifier { r#type: 1, value: "12".into() })),
        };
        let err = MemberAddress::try_from(Some(r)).unwrap_err().to_string();
        assert!(err.contains("E.164"), "{err}");
    }

    #[test]
    fn read_mask_names_valid_fields() {
        let mask =
            ReadMask::try_from(Some(FieldMask { paths: vec!["purchases".into(), "firstSeenAt".into()] })).unwrap();
        assert!(mask.includes("purchases") && mask.includes("first_seen_at") && !mask.includes("browse"));
        let err = ReadMask::try_from(Some(FieldMask { paths: vec!["purchase".into()] })).unwrap_err().to_string();
        assert!(err.contains("`purchase` is not a Profile field"), "{err}");
        assert!(ReadMask::try_from(None).unwrap().includes("browse"));
    }
}
