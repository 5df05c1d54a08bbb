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

pub(crate) const PARTITIONS_PREFIX: &[u8] = b"partitions/";

pub(crate) fn decode_i64(v: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(v.try_into().ok()?))
}

/// `partition | len(member) u16 | member`: the prefix of one member's
/// ledger entries and verdicts.
pub(crate) fn member_prefix(partition: u32, member: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + member.len() + 8);
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&(member.len() as u16).to_be_bytes());
    k.extend_from_slice(member.as_bytes());
    k
}

/// A per-member sequenced entry (ledger, history): the member prefix, then the sequence
/// number, so one member's entries are contiguous and ordered oldest first.
pub(crate) fn sequenced(partition: u32, member: &str, seq: u64) -> Vec<u8> {
    let mut k = member_prefix(partition, member);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The first key after every key that starts with `prefix` (empty when there
/// is none, which RocksDB reads as "no bound" only where we never pass it:
/// every prefix here starts with a partition below u32::MAX or a length).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            break;
        }
    }
    end
}

/// A verdict: the member prefix, then the request id.
pub(crate) fn verdict(partition: u32, member: &str, request_id: &str) -> Vec<u8> {
    let mut k = member_prefix(partition, member);
    k.extend_from_slice(request_id.as_bytes());
    k
}

pub(crate) fn watermark(topic: &str, partition: u32) -> Vec<u8> {
    let mut k = format!("watermark/{topic}/").into_bytes();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

pub(crate) const WATERMARK_PREFIX: &[u8] = b"watermark/";

/// The partition a per-partition key starts with.
pub(crate) fn partition_of(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(key.get(..4)?.try_into().ok()?))
}

/// The prefix of one join's kept parts: the member prefix, the join id
/// (length-prefixed), then the part index.
pub(crate) fn join_prefix(partition: u32, member: &str, join_id: &str) -> Vec<u8> {
    let mut k = member_prefix(partition, member);
    k.extend_from_slice(&(join_id.len() as u16).to_be_bytes());
    k.extend_from_slice(join_id.as_bytes());
    k
}

pub(crate) fn join_part(partition: u32, member: &str, join_id: &str, index: u32) -> Vec<u8> {
    let mut k = join_prefix(partition, member, join_id);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The join id and index of a kept part's key.
pub(crate) fn decode_join_part(partition: u32, member: &str, key: &[u8]) -> Option<(String, u32)> {
    let rest = key.strip_prefix(member_prefix(partition, member).as_slice())?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let len = u16::from_be_bytes(*len) as usize;
    let (id, rest) = (rest.get(..len)?, rest.get(len..)?);
    let index = u32::from_be_bytes(rest.try_into().ok()?);
    Some((String::from_utf8(id.to_vec()).ok()?, index))
}

pub(crate) const FORMAT_VERSION: &[u8] = b"format_version";

/// The name of the instance that serves from this store (meta).
pub(crate) const INSTANCE_NAME: &[u8] = b"instance_name";

/// A member's timer in its partition: partition, instant (ordered as
/// signed), member. Scanned in instant order as the partition's event time
/// passes them.
pub(crate) fn timer(partition: u32, at: i64, member: &str) -> Vec<u8> {
    let mut k = timer_prefix(partition, at);
    k.extend_from_slice(member.as_bytes());
    k
}

/// The key of a partition's timers from `at` on.
pub(crate) fn timer_prefix(partition: u32, at: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&((at as u64) ^ (1 << 63)).to_be_bytes());
    k
}

/// The instant and member of a timer key of `partition`.
pub(crate) fn decode_timer(partition: u32, key: &[u8]) -> Option<(i64, String)> {
    let rest = key.strip_prefix(&partition.to_be_bytes()[..])?;
    let (at, member) = rest.split_first_chunk::<8>()?;
    Some(((u64::from_be_bytes(*at) ^ (1 << 63)) as i64, String::from_utf8(member.to_vec()).ok()?))
}

/// One member of an audience: partition, the audience's name (a length
/// byte, then the name), the member. One audience's members of a partition
/// are one key range, in member order.
pub(crate) fn audience_member(partition: u32, audience: &str, member: &str) -> Vec<u8> {
    let mut k = audience_prefix(partition, audience);
    k.extend_from_slice(member.as_bytes());
    k
}

/// The prefix of one audience's members of a partition. Names are at most
/// 64 bytes; a longer one is cut (it could never have been configured).
pub(crate) fn audience_prefix(partition: u32, audience: &str) -> Vec<u8> {
    let name = &audience.as_bytes()[..audience.len().min(u8::MAX as usize)];
    let mut k = Vec::with_capacity(5 + name.len() + 16);
    k.extend_from_slice(&partition.to_be_bytes());
    k.push(name.len() as u8);
    k.extend_from_slice(name);
    k
}

/// A partition's audience backfill (`omnifold_core::audience::Backfill`),
/// kept beside the audiences' member lists so snapshots carry it: the
/// partition, then a zero length byte no audience name has.
pub(crate) fn backfill(partition: u32) -> Vec<u8> {
    let mut k = partition.to_be_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(b"backfill");
    k
}

/// The prefix of a partition's audience definitions (through
/// `AdminService`), in the same reserved range as [`backfill`].
pub(crate) fn definitions(partition: u32) -> Vec<u8> {
    let mut k = partition.to_be_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(b"def/");
    k
}

/// One audience definition of a partition.
pub(crate) fn definition(partition: u32, name: &str) -> Vec<u8> {
    let mut k = definitions(partition);
    k.extend_from_slice(name.as_bytes());
    k
}
