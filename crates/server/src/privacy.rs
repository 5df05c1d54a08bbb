//! Field classes and masking. Every field of a profile is plain, personal
//! or sensitive ([`PROFILE_FIELDS`]); a caller without `profile:pii` gets
//! personal values masked, and sensitive values only reach a caller with
//! `profile:pii` for a member who granted their own consent.
//!
//! Architecture invariant: [`PROFILE_FIELDS`] is the one list of classes:
//! masking reads it through the functions here, a test checks that it
//! names every field of `Profile` and nothing else, and another that
//! docs/security.md shows the same table.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use omnifold_core::Member;
use omnifold_core::ident::IdType;
use omnifold_proto::v1 as proto;

use crate::Error;
use crate::auth::{Caller, Scope};

/// How much a field says about a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Behaviour and aggregates: counts, spend, tiers, versions.
    Plain,
    /// Identifies or describes a person: masked without `profile:pii`.
    Personal,
    /// PIPL's sensitive personal information: only with `profile:pii` and
    /// the member's consent for `privacy.sensitive_purpose`; never masked,
    /// left out.
    Sensitive,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Plain => "plain",
            Class::Personal => "personal",
            Class::Sensitive => "sensitive",
        }
    }
}

/// The class of every field of `Profile` (and of the messages it holds),
/// by its path. Traits are personal unless `privacy` names them plain or
/// sensitive.
pub const PROFILE_FIELDS: &[(&str, Class, &str)] = &[
    (
        "member_id",
        Class::Plain,
        "a member id; masked on an anonymous profile (a device or cookie id) and a provisional one (an identifier)",
    ),
    ("kind", Class::Plain, ""),
    ("identifiers", Class::Personal, "phones, e-mails, cards, devices"),
    ("aliases", Class::Personal, "anonymous (device, cookie) ids and merged member ids"),
    (
        "traits",
        Class::Personal,
        "name, city, birthday...; `privacy.plain_traits` and `privacy.sensitive_traits` class single traits",
    ),
    ("consents", Class::Plain, "purposes and whether they were granted"),
    ("channels", Class::Plain, ""),
    ("browse.recent_products", Class::Plain, ""),
    ("browse.category_affinity", Class::Plain, ""),
    ("browse.product_views", Class::Plain, ""),
    ("browse.searches", Class::Plain, ""),
    ("browse.recent_searches", Class::Personal, "free text a person typed"),
    ("browse.cart_updates", Class::Plain, ""),
    ("purchases", Class::Plain, "counts, spend and RFM"),
    ("loyalty", Class::Plain, ""),
    ("version", Class::Plain, ""),
    ("first_seen_at", Class::Plain, ""),
    ("last_seen_at", Class::Plain, ""),
    ("as_of", Class::Plain, ""),
    ("enrolled_at", Class::Plain, ""),
    ("merged_member_ids", Class::Plain, "member ids, pseudonymous keys"),
    ("audiences", Class::Plain, "names of configured audiences; rules may not read sensitive traits"),
];

/// The class of a field path of [`PROFILE_FIELDS`].
pub fn class_of(path: &str) -> Option<Class> {
    PROFILE_FIELDS.iter().find(|(p, ..)| *p == path).map(|(_, c, _)| *c)
}

/// `[privacy]`: which traits are plain or sensitive, and the consent
/// sensitive data needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Traits that say nothing about who a person is (shown to every reader).
    pub plain_traits: BTreeSet<String>,
    /// Traits that are sensitive personal information (health, religion,
    /// precise location, financial accounts, minors...).
    pub sensitive_traits: BTreeSet<String>,
    /// The consent purpose a member grants for their sensitive data to be read.
    pub sensitive_purpose: String,
    /// Days an erasure may take from its request (GDPR: a month; CCPA: 45
    /// days): each job's deadline, and `omnifold_erasures_overdue_total`.
    pub erasure_deadline_days: u32,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            plain_traits: BTreeSet::new(),
            sensitive_traits: BTreeSet::new(),
            sensitive_purpose: "sensitive_data".into(),
            erasure_deadline_days: 30,
        }
    }
}

impl PrivacyConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(both) = self.plain_traits.intersection(&self.sensitive_traits).next() {
            return Err(Error::InvalidArgument(format!("trait `{both}` is both plain and sensitive")));
        }
        if !(1..=365).contains(&self.erasure_deadline_days) {
            return Err(Error::InvalidArgument("erasure_deadline_days must be 1 to 365".into()));
        }
        if self.sensitive_purpose.trim().is_empty() {
            return Err(Error::InvalidArgument("sensitive_purpose must not be empty".into()));
        }
        Ok(())
    }

    pub fn trait_class(&self, name: &str) -> Class {
        if self.sensitive_traits.contains(name) {
            Class::Sensitive
        } else if self.plain_traits.contains(name) {
            Class::Plain
        } else {
            Class::Personal
        }
    }
}

/// What one caller may see of one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Personal values in clear (`profile:pii`).
    pub personal: bool,
    /// Sensitive values (`profile:pii` and the member's consent).
    pub sensitive: bool,
}

impl View {
    /// Everything: authentication off, or an internal use.
    pub const ALL: View = View { personal: true, sensitive: true };

    pub fn shows(self, class: Class) -> Shown {
        match class {
            Class::Plain => Shown::Clear,
            Class::Personal if self.personal => Shown::Clear,
            Class::Personal => Shown::Masked,
            Class::Sensitive if self.sensitive => Shown::Clear,
            Class::Sensitive => Shown::Absent,
        }
    }
}

/// How a value reaches a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Clear,
    Masked,
    Absent,
}

/// An identifier's value masked: enough for a person to recognise their
/// own (`+86138****0000`, `j***@example.com`, `****1234`), useless as a
/// key (request validation refuses values with `*`).
pub fn mask_identifier(kind: IdType, value: &str) -> String {
    match kind {
        IdType::Phone => keep(value, 6, 4),
        IdType::Email => match value.split_once('@') {
            Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
            None => keep(value, 0, 4),
        },
        IdType::LoyaltyCard | IdType::DeviceId | IdType::External => keep(value, 0, 4),
    }
}

/// Free text masked: its first character and `***`.
pub fn mask_text(value: &str) -> String {
    match value.chars().next() {
        Some(c) => format!("{c}***"),
        None => String::new(),
    }
}

/// A subject key masked where it is an identifier (`PHONE:+86138****0000`)
/// or an anonymous id; member ids stay (they are pseudonymous).
pub fn mask_key(key: &str, anonymous: bool) -> String {
    if let Some((kind, value)) = key.split_once(':')
        && let Some(kind) = id_type(kind)
    {
        return format!("{}:{}", kind.as_str(), mask_identifier(kind, value));
    }
    if anonymous { keep(key, 0, 4) } else { key.to_owned() }
}

fn id_type(name: &str) -> Option<IdType> {
    [IdType::Phone, IdType::Email, IdType::LoyaltyCard, IdType::DeviceId, IdType::External]
        .into_iter()
        .find(|k| k.as_str() == name)
}

/// `value` with all but its first `head` and last `tail` characters
/// replaced by `*`, at least four of them (so a short value's length is
/// not told); a short value keeps less, and at most a third at its end.
fn keep(value: &str, head: usize, tail: usize) -> String {
    let chars: Vec<char> = value.chars().collect();
    let n = chars.len();
    let tail = tail.min(n / 3);
    let head = head.min(n.saturating_sub(tail + 4));
    let mut out: String = chars[..head].iter().collect();
    out.push_str(&"*".repeat((n - head - tail).max(4)));
    out.extend(&chars[n - tail..]);
    out
}

/// What `caller` may see of `member`.
pub(crate) fn view_of(caller: &Caller, member: &Member, privacy: &PrivacyConfig) -> View {
    view(caller.may(Scope::ProfilePii), member, privacy)
}

/// What a reader who may (`personal`) or may not see personal data sees
/// of `member`: sensitive data also needs the member's consent.
pub(crate) fn view(personal: bool, member: &Member, privacy: &PrivacyConfig) -> View {
    let consented = member.consents.get(&privacy.sensitive_purpose).is_some_and(|c| c.value.granted);
    View { personal, sensitive: personal && consented }
}

/// How the field at `path` reaches a caller with `view` (a path not in
/// the table is taken as personal).
fn shown(view: View, path: &str) -> Shown {
    view.shows(class_of(path).unwrap_or(Class::Personal))
}

/// A profile as `view` may see it: each field as its class says.
pub(crate) fn profile(p: &mut proto::Profile, view: View, privacy: &PrivacyConfig) {
    p.traits.retain(|name, _| view.shows(privacy.trait_class(name)) != Shown::Absent);
    for (name, value) in p.traits.iter_mut() {
        if view.shows(privacy.trait_class(name)) == Shown::Masked {
            *value = mask_text(value);
        }
    }
    let anonymous = p.kind == proto::ProfileKind::Anonymous as i32;
    if (anonymous || p.kind == proto::ProfileKind::Provisional as i32) && !view.personal {
        p.member_id = mask_key(&p.member_id, anonymous);
    }
    match shown(view, "identifiers") {
        Shown::Clear => {}
        Shown::Masked => {
            for i in &mut p.identifiers {
                let kind = proto::IdentifierType::try_from(i.r#type).ok().and_then(|t| id_type(t.as_str_name()));
                i.value = kind.map_or_else(|| keep(&i.value, 0, 4), |k| mask_identifier(k, &i.value));
            }
        }
        Shown::Absent => p.identifiers.clear(),
    }
    match shown(view, "aliases") {
        Shown::Clear => {}
        Shown::Masked => p.aliases.iter_mut().for_each(|a| *a = mask_key(a, true)),
        Shown::Absent => p.aliases.clear(),
    }
    if let Some(b) = &mut p.browse {
        match shown(view, "browse.recent_searches") {
            Shown::Clear => {}
            Shown::Masked => b.recent_searches.iter_mut().for_each(|q| *q = mask_text(q)),
            Shown::Absent => b.recent_searches.clear(),
        }
    }
}

/// Masks a lookup's answer: the identifiers on its path.
pub(crate) fn lookup(r: &mut proto::LookupIdentifierResponse, view: View) {
    if view.personal {
        return;
    }
    for step in &mut r.path {
        *step = mask_key(step, false);
    }
    if r.kind == proto::ProfileKind::Provisional as i32 {
        r.member_id = mask_key(&r.member_id, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_values_are_recognisable_and_not_usable_as_keys() {
        let cases = [
            (IdType::Phone, "+8613800000000", "+86138****0000"),
            (IdType::Phone, "+12025550100", "+120****0100"),
            (IdType::Email, "jane.doe@example.com", "j***@example.com"),
            (IdType::LoyaltyCard, "CARD-88881234", "*********1234"),
            (IdType::DeviceId, "ab", "****"),
            (IdType::External, "crm:42", "****42"),
        ];
        for (kind, clear, masked) in cases {
            assert_eq!(mask_identifier(kind, clear), masked, "{clear}");
            assert!(masked.contains('*'), "a masked value is refused as a key");
        }
        assert_eq!(mask_text("Zhang San"), "Z***");
        assert_eq!(mask_text(""), "");
        assert_eq!(mask_key("PHONE:+8613800000000", false), "PHONE:+86138****0000");
        assert_eq!(mask_key("m-42", false), "m-42");
        assert_eq!(mask_key("anon-device-9f3a", true), "************9f3a");
    }

    #[test]
    fn a_view_shows_each_class_as_its_scope_and_consent_allow() {
        let reader = View { personal: false, sensitive: false };
        let pii = View { personal: true, sensitive: false };
        assert_eq!(reader.shows(Class::Plain), Shown::Clear);
        assert_eq!(reader.shows(Class::Personal), Shown::Masked);
        assert_eq!(reader.shows(Class::Sensitive), Shown::Absent);
        assert_eq!(pii.shows(Class::Personal), Shown::Clear);
        assert_eq!(pii.shows(Class::Sensitive), Shown::Absent, "profile:pii alone is not consent");
        assert_eq!(View::ALL.shows(Class::Sensitive), Shown::Clear);
    }

    /// The table names every field of Profile (and BrowseSummary, which
    /// holds a personal field) and nothing else.
    #[test]
    fn every_profile_field_has_exactly_one_class() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(omnifold_proto::FILE_DESCRIPTOR_SET).unwrap();
        let message =
            |name: &str| set.file.iter().flat_map(|f| &f.message_type).find(|m| m.name() == name).unwrap().clone();
        let mut expected: Vec<String> = Vec::new();
        for f in &message("Profile").field {
            if f.name() == "browse" {
                expected.extend(message("BrowseSummary").field.iter().map(|b| format!("browse.{}", b.name())));
            } else {
                expected.push(f.name().to_owned());
            }
        }
        let mut listed: Vec<String> = PROFILE_FIELDS.iter().map(|(p, ..)| p.to_string()).collect();
        expected.sort();
        listed.sort();
        assert_eq!(listed, expected, "privacy::PROFILE_FIELDS must class every field of Profile exactly once");
    }

    /// docs/security.md shows the same table, row for row.
    #[test]
    fn the_docs_show_the_classes_of_this_table() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/security.md")).unwrap();
        let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| `")).collect();
        for (path, class, note) in PROFILE_FIELDS {
            let row = format!("| `{path}` | {} | {note} |", class.name());
            assert!(rows.iter().any(|r| r.trim_end() == row.trim_end()), "docs/security.md lacks the row: {row}");
        }
    }

    #[test]
    fn a_trait_cannot_be_both_plain_and_sensitive() {
        let c = PrivacyConfig {
            plain_traits: ["city".to_owned()].into(),
            sensitive_traits: ["city".to_owned()].into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("`city` is both plain and sensitive"));
        let ok = PrivacyConfig { sensitive_traits: ["health".to_owned()].into(), ..Default::default() };
        assert_eq!((ok.trait_class("health"), ok.trait_class("name")), (Class::Sensitive, Class::Personal));
    }
}
