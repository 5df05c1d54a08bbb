//! Kafka's default partitioner, so omnifold routes keys exactly as the Java
//! client and librdkafka's `murmur2_random` do.

/// Murmur2 (32-bit, seed 0x9747b28c) as in Kafka's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default partitioner picks for a key.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// A key Kafka's partitioner puts on `partition` of `partitions`: for
/// records omnifold writes to one partition, which concern no member.
pub fn key_on(partition: u32, partitions: u32) -> String {
    (0u64..)
        .map(|n| format!("omnifold.partition.{partition}.{n}"))
        .find(|k| partition_for(k.as_bytes(), partitions) == partition)
        .unwrap_or_default()
}

/// A record omnifold writes about `partition` of `partitions` itself, not
/// a member (`audienceBackfill`, `audienceDefined`): keyed by [`key_on`],
/// dated `at`. Its key, and the event.
pub fn partition_event(
    partition: u32,
    partitions: u32,
    event_id: String,
    at: crate::time::Millis,
    payload: omnifold_proto::v1::event::Payload,
) -> (String, omnifold_proto::v1::Event) {
    use omnifold_proto::v1 as proto;
    let key = key_on(partition, partitions);
    let event = proto::Event {
        event_id,
        occurred_at: Some(crate::time::to_timestamp(at)),
        channel: proto::Channel::OnlineWeb as i32,
        store_id: String::new(),
        subject: Some(proto::Subject { member_id: key.clone(), ..Default::default() }),
        payload: Some(payload),
    };
    (key, event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_on_a_partition_lands_there() {
        for count in [1, 3, 12] {
            for p in 0..count {
                assert_eq!(partition_for(key_on(p, count).as_bytes(), count), p);
            }
        }
    }

    /// Vectors from Kafka's `UtilsTest.testMurmur2` (signed ints there).
    #[test]
    fn matches_kafka_java_client() {
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            ("abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()) as i32, expected, "murmur2({input})");
        }
    }

    #[test]
    fn partition_is_positive_hash_modulo() {
        let p = partition_for(b"foobar", 12);
        assert_eq!(p, ((-790332482i32 as u32) & 0x7fff_ffff) % 12);
    }
}
