//! Key layouts. Every per-partition key starts with the partition as a
//! big-endian u32, so a partition is one contiguous key range.

pub(crate) fn scoped(partition: u32, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn offset(topic: &str, partition: u32) -> Vec<u8> {
    let mut k = format!("offset/{topic}/").into_bytes();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

pub(crate) fn partitions(topic: &str) -> Vec<u8> {
    format!("partitions/{topic}").into_bytes()
}

pub(crate) fn decode_i64(v: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(v.try_into().ok()?))
}
