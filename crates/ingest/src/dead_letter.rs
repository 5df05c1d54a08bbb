//! Dead letters: what could not be folded, with the reason and the original
//! record, so it can be inspected and replayed after a fix.

use prost::Message;

use omnifold_proto::v1 as proto;

use crate::processor::OutRecord;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: String,
    /// "decode", "validation", "too_large" or "rule".
    pub kind: &'static str,
    pub original: Vec<u8>,
    pub key: Option<Vec<u8>>,
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
}

impl DeadLetter {
    /// The dead-letter record's value: an `omnifold.v1.DeadLetter`.
    pub fn encode(&self, now_millis: i64) -> Vec<u8> {
        proto::DeadLetter {
            reason: self.reason.clone(),
            original: self.original.clone(),
            original_key: self.key.clone().unwrap_or_default(),
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            dead_lettered_at: Some(omnifold_core::time::to_timestamp(now_millis)),
            kind: self.kind.to_owned(),
        }
        .encode_to_vec()
    }

    /// The dead-letter record, with the reason and kind as headers too.
    pub fn to_record(&self, now_millis: i64) -> OutRecord {
        OutRecord {
            key: self.key.clone(),
            value: self.encode(now_millis),
            headers: vec![("omnifold.reason", self.reason.clone()), ("omnifold.kind", self.kind.to_owned())],
        }
    }
}
