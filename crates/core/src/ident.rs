//! Identifiers and their normalisation: E.164 phones, lower-case emails,
//! trimmed values.

use serde::{Deserialize, Serialize};

use crate::Error;
use omnifold_proto::v1 as proto;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IdType {
    Phone,
    Email,
    LoyaltyCard,
    DeviceId,
    External,
}

impl IdType {
    pub fn as_str(self) -> &'static str {
        match self {
            IdType::Phone => "PHONE",
            IdType::Email => "EMAIL",
            IdType::LoyaltyCard => "LOYALTY_CARD",
            IdType::DeviceId => "DEVICE_ID",
            IdType::External => "EXTERNAL",
        }
    }

    pub fn to_proto(self) -> proto::IdentifierType {
        match self {
            IdType::Phone => proto::IdentifierType::Phone,
            IdType::Email => proto::IdentifierType::Email,
            IdType::LoyaltyCard => proto::IdentifierType::LoyaltyCard,
            IdType::DeviceId => proto::IdentifierType::DeviceId,
            IdType::External => proto::IdentifierType::External,
        }
    }
}

/// A normalised identifier.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identifier {
    pub kind: IdType,
    pub value: String,
}

impl Identifier {
    /// Validates and normalises an identifier.
    pub fn new(kind: IdType, raw: &str) -> Result<Self, Error> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(Error::invalid("identifiers.value", "must not be empty"));
        }
        if trimmed.len() > 256 {
            return Err(Error::invalid("identifiers.value", "longer than 256 bytes"));
        }
        let value = match kind {
            IdType::Phone => normalise_phone(trimmed)?,
            IdType::Email => normalise_email(trimmed)?,
            _ => trimmed.to_owned(),
        };
        Ok(Identifier { kind, value })
    }

    /// The form used as a Kafka key and in lookups: `TYPE:value`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.value)
    }
}

impl TryFrom<&proto::Identifier> for Identifier {
    type Error = Error;

    fn try_from(p: &proto::Identifier) -> Result<Self, Error> {
        let kind = match proto::IdentifierType::try_from(p.r#type) {
            Ok(proto::IdentifierType::Phone) => IdType::Phone,
            Ok(proto::IdentifierType::Email) => IdType::Email,
            Ok(proto::IdentifierType::LoyaltyCard) => IdType::LoyaltyCard,
            Ok(proto::IdentifierType::DeviceId) => IdType::DeviceId,
            Ok(proto::IdentifierType::External) => IdType::External,
            _ => {
                return Err(Error::invalid("identifiers.type", format!("unknown identifier type {}", p.r#type)));
            }
        };
        Identifier::new(kind, &p.value)
    }
}

/// E.164: a leading `+`, then 8 to 15 digits. Spaces, dashes, dots and
/// parentheses are dropped; a leading `00` becomes `+`.
fn normalise_phone(raw: &str) -> Result<String, Error> {
    let mut digits = String::with_capacity(raw.len());
    let mut plus = false;
    for (i, c) in raw.chars().enumerate() {
        match c {
            '+' if i == 0 => plus = true,
            '0'..='9' => digits.push(c),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => {
                return Err(Error::invalid("identifiers.value", format!("phone `{raw}` has a character `{c}`")));
            }
        }
    }
    if !plus {
        match digits.strip_prefix("00") {
            Some(rest) => digits = rest.to_owned(),
            None => {
                return Err(Error::invalid(
                    "identifiers.value",
                    format!("phone `{raw}` needs a country code in E.164 form, like +8613800138000"),
                ));
            }
        }
    }
    if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
        return Err(Error::invalid("identifiers.value", format!("phone `{raw}` is not a valid E.164 number")));
    }
    Ok(format!("+{digits}"))
}

fn normalise_email(raw: &str) -> Result<String, Error> {
    let lower = raw.to_lowercase();
    match lower.split_once('@') {
        Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.contains('@') => Ok(lower),
        _ => Err(Error::invalid("identifiers.value", format!("email `{raw}` is not an address"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_normalise_to_e164() {
        assert_eq!(Identifier::new(IdType::Phone, " +86 138-0013-8000 ").unwrap().value, "+8613800138000");
        assert_eq!(Identifier::new(IdType::Phone, "0044 20 7946 0958").unwrap().value, "+442079460958");
        assert!(Identifier::new(IdType::Phone, "13800138000").is_err());
        assert!(Identifier::new(IdType::Phone, "+86 abc").is_err());
    }

    #[test]
    fn emails_lower_case_and_trimmed() {
        assert_eq!(Identifier::new(IdType::Email, "  Ann@Example.COM ").unwrap().value, "ann@example.com");
        assert!(Identifier::new(IdType::Email, "not-an-email").is_err());
    }

    #[test]
    fn other_identifiers_are_trimmed() {
        let id = Identifier::new(IdType::LoyaltyCard, " C-123 ").unwrap();
        assert_eq!(id.key(), "LOYALTY_CARD:C-123");
        assert!(Identifier::new(IdType::DeviceId, "   ").is_err());
    }
}
