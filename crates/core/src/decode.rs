//! Bytes to a validated [`Event`]: protobuf binary or canonical proto3 JSON on
//! the same topic, told apart by the first byte.

use prost::Message;

use crate::limits::Limits;
use crate::{Error, Event};
use omnifold_proto::v1 as proto;

/// The wire encoding of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Protobuf,
}

/// JSON starts with `{` (after optional whitespace). A protobuf `Event`
/// never does: 0x7B would be field 15 with the deprecated group wire type.
pub fn sniff(bytes: &[u8]) -> Encoding {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Encoding::Json,
        _ => Encoding::Protobuf,
    }
}

/// Decodes the wire type only.
pub fn decode_wire(bytes: &[u8], max_bytes: usize) -> Result<proto::Event, Error> {
    if bytes.len() > max_bytes {
        return Err(Error::TooLarge { size: bytes.len(), limit: max_bytes });
    }
    match sniff(bytes) {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| Error::Json(e.to_string())),
        Encoding::Protobuf => {
            if bytes.is_empty() {
                return Err(Error::Protobuf("empty record".into()));
            }
            proto::Event::decode(bytes).map_err(|e| Error::Protobuf(e.to_string()))
        }
    }
}

/// Decodes and validates one record, within `limits`.
pub fn decode_event(bytes: &[u8], max_bytes: usize, limits: &Limits) -> Result<Event, Error> {
    Event::validate(decode_wire(bytes, max_bytes)?, limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Payload;

    const VIEW: &str = r#"{"eventId":"e1","occurredAt":"2026-03-01T10:00:00Z","channel":"ONLINE_WEB",
        "subject":{"anonymousId":"anon-1"},"productViewed":{"sku":"SKU-1","category":"shoes","priceMinor":"12900"}}"#;

    #[test]
    fn json_and_protobuf_decode_to_the_same_event() {
        let from_json = decode_event(VIEW.as_bytes(), 65536, &Limits::default()).unwrap();
        let wire: proto::Event = serde_json::from_str(VIEW).unwrap();
        let from_proto = decode_event(&wire.encode_to_vec(), 65536, &Limits::default()).unwrap();
        assert_eq!(from_json, from_proto);
        assert_eq!(from_json.subject.key(), "anon-1");
        assert!(matches!(from_json.payload, Payload::ProductViewed { price_minor: 12900, .. }));
    }

    /// Text fields lose surrounding whitespace (Unicode too, as a POS in
    /// China may send an ideographic space); whitespace alone is missing.
    #[test]
    fn text_fields_are_trimmed() {
        let json = r#"{"eventId":" e1 ","occurredAt":"2026-03-01T10:00:00Z","channel":"ONLINE_WEB",
            "subject":{"memberId":"\u3000m-1\t"},"productViewed":{"sku":"SKU-1  ","category":"\u3000鞋"}}"#;
        let e = decode_event(json.as_bytes(), 65536, &Limits::default()).unwrap();
        assert_eq!(e.event_id, "e1");
        assert_eq!(e.subject.member_id.as_deref(), Some("m-1"));
        match e.payload {
            Payload::ProductViewed { sku, category, .. } => {
                assert_eq!((sku.as_str(), category.as_str()), ("SKU-1", "鞋"))
            }
            other => panic!("{other:?}"),
        }
        let blank = json.replace(r#""sku":"SKU-1  ""#, r#""sku":" \u3000 ""#);
        let err = decode_event(blank.as_bytes(), 65536, &Limits::default()).unwrap_err().to_string();
        assert!(err.contains("productViewed.sku"), "{err}");
    }

    #[test]
    fn bad_input_has_a_reason() {
        let cases = [
            ("{not json", "invalid json"),
            (
                r#"{"eventId":"e1","occurredAt":"2026-03-01T10:00:00Z","channel":"ONLINE_WEB","subject":{"memberId":"m"},"loyaltyTierChanged":{}}"#,
                "unknown field",
            ),
            (
                r#"{"occurredAt":"2026-03-01T10:00:00Z","channel":"ONLINE_WEB","subject":{"memberId":"m"},"searchPerformed":{"query":"x"}}"#,
                "missing required field `eventId`",
            ),
            (
                r#"{"eventId":"e1","occurredAt":"2026-03-01T10:00:00Z","channel":"ONLINE_WEB","subject":{"memberId":"m"},"productViewed":{"sku":"s","priceMinor":{"a":1}}}"#,
                "invalid json",
            ),
            (
                r#"{"eventId":"e1","occurredAt":"2026-03-01T10:00:00Z","channel":"ONLINE_WEB","subject":{"memberId":"m"}}"#,
                "missing required field `payload`",
            ),
        ];
        for (input, want) in cases {
            let err = decode_event(input.as_bytes(), 65536, &Limits::default()).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: got `{err}`, want `{want}`");
        }
        let big = vec![b' '; 70_000];
        assert_eq!(decode_event(&big, 65536, &Limits::default()).unwrap_err().kind(), "too_large");
        assert_eq!(decode_event(&[0xff, 0xff, 0xff], 65536, &Limits::default()).unwrap_err().kind(), "decode");
    }

    /// Every JSON example in docs/events.md decodes and validates.
    #[test]
    fn docs_examples_are_valid() {
        let doc = include_str!("../../../docs/events.md");
        let mut examples = 0;
        for block in doc.split("```json").skip(1) {
            let json = block.split("```").next().unwrap();
            decode_event(json.as_bytes(), 65536, &Limits::default()).unwrap_or_else(|e| panic!("{e}: {json}"));
            examples += 1;
        }
        assert_eq!(examples, 15, "one example per payload, two for returns");
    }
}
