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
    /// The dead-letter record's value: an `omnifold.v1.DeadLetter`, with
    /// the original cut to `max_original` bytes (a record refused for its
    /// size must not make a dead letter the broker refuses in turn).
    pub fn encode(&self, now_millis: i64, max_original: usize) -> Vec<u8> {
        let truncated = self.original.len() > max_original;
        proto::DeadLetter {
            reason: self.reason.clone(),
            original: self.original[..self.original.len().min(max_original)].to_vec(),
            original_size: self.original.len() as u64,
            original_truncated: truncated,
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
    pub fn to_record(&self, now_millis: i64, max_original: usize) -> OutRecord {
        OutRecord {
            key: self.key.clone(),
            value: self.encode(now_millis, max_original),
            headers: vec![("omnifold.reason", self.reason.clone()), ("omnifold.kind", self.kind.to_owned())],
        }
    }
}
