//! Ingest settings: broker, topics, group and batching.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A secret from the configuration: serialised as is, never printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "Secret(unset)" } else { "Secret(..)" })
    }
}

impl Secret {
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }
}

/// Which partitions an instance keeps warm copies of, besides its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standby {
    /// None: a partition this instance is assigned is restored from a
    /// snapshot (if any) and folded from there.
    #[default]
    None,
    /// Every partition another instance owns, folded from the topic as it
    /// comes: whichever partition the group gives this instance, it has
    /// only the last moments of it to fold (docs/scale-out.md).
    All,
}

/// How an instance gets its partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    /// Join the consumer group `group_id`; Kafka shares the partitions
    /// among the group's instances (scale-out).
    #[default]
    Group,
    /// Read every partition without joining a group: one instance on one
    /// machine. A restart resumes at once, with no group to rebalance.
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    pub dead_letter_topic: String,
    /// Compacted topic of the identity index: which member each linked key
    /// routes to. Every instance reads all of it into its store.
    pub identity_topic: String,
    pub group_id: String,
    /// Compacted topic where each instance says which partitions it owns,
    /// its gRPC address and how far it has folded; every instance reads it
    /// all (docs/scale-out.md).
    pub ownership_topic: String,
    /// Append-only topic of the audit trail: every admin and loyalty-write
    /// call, who made it and how it ended (docs/security.md).
    pub audit_topic: String,
    /// Compacted topic of changed profiles for tools that read Kafka
    /// (docs/api.md, "Changes on Kafka"): key the member id, value the
    /// profile as proto3 JSON, a tombstone when it is gone. Written before
    /// each batch commits, so no change is lost. Empty (default): off.
    pub changes_topic: String,
    /// The profile-changes topic carries personal data in clear (as for a
    /// caller with `profile:pii`) and anonymous and provisional profiles
    /// too. Default false: personal fields masked, members only.
    pub changes_pii: bool,
    /// Topic of audience entries and exits (docs/audiences.md): key the
    /// member id, JSON with the audience, `entered` or `exited`, its
    /// sequence number and instant. Written before each batch commits.
    /// Empty (default): not written (memberships are still kept).
    pub audience_topic: String,
    /// Members one `audienceBackfill` record evaluates (docs/audiences.md,
    /// "Backfill"): a pass over a partition of N members takes N / this
    /// records. 1 to 100000; default 1000.
    pub audience_backfill_members: u32,
    /// How often the owner of a partition with a pass under way writes its
    /// next `audienceBackfill` record, once the last one is folded. 1 to
    /// 3600000; default 100.
    pub audience_backfill_interval_ms: u64,
    /// This instance's stable name. Set, it is also the consumer's
    /// `group.instance.id` (static membership): a restart within the
    /// session timeout keeps the instance's partitions, and it recognises
    /// its own claims. Empty: a name is made up at start (dynamic member).
    pub instance_id: String,
    /// `session.timeout.ms`: how long the group waits for a silent instance
    /// before its partitions move (0: librdkafka's default, 45 s). Lower
    /// notices a dead instance sooner; the broker bounds it
    /// (`group.min.session.timeout.ms`, 6 s on Kafka).
    pub session_timeout_ms: u32,
    /// How often an instance repeats its claims with its applied offsets.
    pub ownership_interval_ms: u64,
    /// `group` (default) or `all`.
    pub assignment: Assignment,
    /// `none` (default) or `all`: keep warm copies of the partitions other
    /// instances own, and answer reads from them when a caller opts in.
    pub standby: Standby,
    /// Most records folded into one store batch (across the partitions of
    /// one poll). A larger batch writes a busy member once for more of its
    /// events; a command a caller waits on (`RedeemPoints`) ends the batch
    /// within 64 more records, so larger batches do not slow redemptions down.
    pub batch_max_records: usize,
    /// A batch takes every record already fetched; when none is left it
    /// waits this long for more before committing (0: commit at once, the
    /// lowest latency for commands waiting on the fold).
    pub batch_max_wait_ms: u64,
    /// librdkafka `fetch.wait.max.ms`. Keep it low for tansu, which answers a
    /// fetch only when this runs out.
    pub fetch_wait_max_ms: u32,
    /// Larger records go to the dead-letter topic.
    pub max_event_bytes: usize,
    /// Threads that fold partitions at once (each partition on one thread
    /// at a time, so its order and its atomic commit are kept). 0: one per
    /// core.
    pub fold_threads: usize,
    /// The nice value (0 to 19) ingest's threads run at: the fold threads
    /// and the Kafka client's. Higher lets the gRPC workers take the CPU
    /// first when both want it, so reads keep their latency while ingest
    /// runs; ingest then takes what they leave. 0: the same priority.
    /// Linux only; elsewhere it is ignored. Default 10 (docs/decisions.md).
    pub fold_nice: i32,
    /// Decoded members kept in memory between batches (0 disables), so a
    /// busy member is not read and decoded from RocksDB on every batch.
    pub member_cache_entries: usize,
    /// Bound on the estimated bytes of the cached members (0: no cache).
    /// Members with long histories are large; this, not the entry count,
    /// bounds the cache's memory.
    pub member_cache_bytes: usize,
    /// A partition resumed at offset N is fetched from this many records
    /// earlier, and the records before N are dropped: some brokers (tansu
    /// 0.6) answer a fetch inside a producer's batch with the next batch,
    /// skipping the rest of the one that holds N. A first record after N
    /// still makes omnifold read from further back (docs/decisions.md).
    pub resume_rewind_records: i64,
    /// The cluster secret omnifold signs the records only it may write with
    /// (identity claims, joins, forwards, the identity index): the same on
    /// every instance, at least 32 characters. `serve` and `replay` need it;
    /// `omnifold secret` prints a new one. See docs/reliability.md.
    pub internal_secret: Secret,
    /// Earlier secrets, still accepted when verifying (rotation: add the
    /// old one here, set the new one above; remove it once the topic no
    /// longer holds records signed with it).
    pub previous_internal_secrets: Vec<Secret>,
    /// Extra librdkafka settings for the consumer and producer.
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "omnifold.events".into(),
            dead_letter_topic: "omnifold.events.dlq".into(),
            identity_topic: "omnifold.identity".into(),
            group_id: "omnifold".into(),
            ownership_topic: "omnifold.owners".into(),
            audit_topic: "omnifold.audit".into(),
            changes_topic: String::new(),
            changes_pii: false,
            audience_topic: String::new(),
            audience_backfill_members: 1_000,
            audience_backfill_interval_ms: 100,
            instance_id: String::new(),
            session_timeout_ms: 0,
            ownership_interval_ms: 1_000,
            assignment: Assignment::Group,
            standby: Standby::None,
            batch_max_records: 20_000,
            batch_max_wait_ms: 0,
            fetch_wait_max_ms: 10,
            max_event_bytes: 64 * 1024,
            member_cache_entries: 20_000,
            member_cache_bytes: crate::processor::DEFAULT_MEMBER_CACHE_BYTES,
            fold_threads: 0,
            fold_nice: 10,
            resume_rewind_records: 10_000,
            internal_secret: Secret::default(),
            previous_internal_secrets: Vec::new(),
            librdkafka: BTreeMap::new(),
        }
    }
}

/// The shortest internal secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

impl IngestConfig {
    /// The number of fold threads `fold_threads` asks for.
    pub fn fold_threads(&self) -> usize {
        match self.fold_threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        }
    }

    /// The signer for internal records: the configured secret, or an error
    /// that says how to set one.
    pub fn signer(&self) -> Result<crate::Signer, Error> {
        if !self.internal_secret.is_set() {
            return Err(Error::Config(
                "kafka.internal_secret is not set: omnifold signs the records only it may write (identity claims, \
                 joins, forwards) so that no producer can forge them. Set the same secret on every instance, for \
                 example OMNIFOLD_KAFKA__INTERNAL_SECRET=$(omnifold secret)"
                    .into(),
            ));
        }
        let previous: Vec<String> = self.previous_internal_secrets.iter().map(|s| s.0.clone()).collect();
        Ok(crate::Signer::new(&self.internal_secret.0, &previous))
    }

    /// The largest piece of a join's state one record carries: well under
    /// `max_event_bytes`, so the part passes the same size check as any event.
    pub fn join_part_bytes(&self) -> usize {
        self.max_event_bytes - 1024
    }

    pub fn validate(&self) -> Result<(), Error> {
        for (name, v) in [
            ("brokers", &self.brokers),
            ("topic", &self.topic),
            ("dead_letter_topic", &self.dead_letter_topic),
            ("identity_topic", &self.identity_topic),
            ("group_id", &self.group_id),
            ("ownership_topic", &self.ownership_topic),
            ("audit_topic", &self.audit_topic),
        ] {
            if v.trim().is_empty() {
                return Err(Error::Config(format!("{name} must not be empty")));
            }
        }
        let topics = [
            &self.topic,
            &self.dead_letter_topic,
            &self.identity_topic,
            &self.ownership_topic,
            &self.audit_topic,
            &self.changes_topic,
            &self.audience_topic,
        ];
        if topics.iter().enumerate().any(|(i, t)| !t.is_empty() && topics[..i].contains(t)) {
            return Err(Error::Config(
                "topic, dead_letter_topic, identity_topic, ownership_topic, audit_topic, changes_topic and audience_topic \
                 must all differ"
                    .into(),
            ));
        }
        if self.changes_topic != self.changes_topic.trim() {
            return Err(Error::Config("changes_topic must not start or end with spaces".into()));
        }
        if self.session_timeout_ms != 0 && !(1_000..=3_600_000).contains(&self.session_timeout_ms) {
            return Err(Error::Config("session_timeout_ms must be 0 (librdkafka's default) or 1000 to 3600000".into()));
        }
        if !(100..=60_000).contains(&self.ownership_interval_ms) {
            return Err(Error::Config("ownership_interval_ms must be 100 to 60000".into()));
        }
        if self.instance_id.len() > 200 || self.instance_id.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::Config(
                "instance_id must be at most 200 characters, without spaces or control characters".into(),
            ));
        }
        if self.standby == Standby::All && self.assignment == Assignment::All {
            return Err(Error::Config(
                "standby = \"all\" needs assignment = \"group\": with assignment = \"all\" every partition is this instance's own".into(),
            ));
        }
        if !(1..=omnifold_core::event::MAX_BACKFILL_MEMBERS).contains(&self.audience_backfill_members) {
            return Err(Error::Config(format!(
                "audience_backfill_members must be 1 to {}",
                omnifold_core::event::MAX_BACKFILL_MEMBERS
            )));
        }
        if !(1..=3_600_000).contains(&self.audience_backfill_interval_ms) {
            return Err(Error::Config("audience_backfill_interval_ms must be 1 to 3600000".into()));
        }
        if self.batch_max_records == 0 {
            return Err(Error::Config("batch_max_records must be at least 1".into()));
        }
        if self.fold_threads > 256 {
            return Err(Error::Config("fold_threads must be 0 (one per core) to 256".into()));
        }
        if !(0..=19).contains(&self.fold_nice) {
            return Err(Error::Config("fold_nice must be 0 (same priority as reads) to 19 (lowest)".into()));
        }
        if !(0..=100_000_000).contains(&self.resume_rewind_records) {
            return Err(Error::Config("resume_rewind_records must be 0 to 100000000".into()));
        }
        for s in std::iter::once(&self.internal_secret).chain(&self.previous_internal_secrets) {
            if s.is_set() && s.0.len() < MIN_SECRET_LEN {
                return Err(Error::Config(format!(
                    "internal secrets must be at least {MIN_SECRET_LEN} characters (`omnifold secret` prints one)"
                )));
            }
        }
        if !(4096..=900_000).contains(&self.max_event_bytes) {
            return Err(Error::Config(
                "max_event_bytes must be 4096 to 900000 (below the 1 MB message limit of a default Kafka broker)"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut IngestConfig)) -> Result<(), Error> {
        let mut c = IngestConfig::default();
        f(&mut c);
        c.validate()
    }

    #[test]
    fn scale_out_settings_are_checked() {
        assert!(with(|_| {}).is_ok());
        assert!(with(|c| c.instance_id = "omnifold-0".into()).is_ok());
        assert!(with(|c| c.session_timeout_ms = 6_000).is_ok());
        let refused = |f: fn(&mut IngestConfig), says: &str| {
            let e = with(f).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        };
        refused(|c| c.ownership_topic = c.identity_topic.clone(), "must all differ");
        refused(|c| c.ownership_topic = c.topic.clone(), "must all differ");
        refused(|c| c.ownership_topic = " ".into(), "ownership_topic must not be empty");
        refused(|c| c.session_timeout_ms = 500, "session_timeout_ms");
        refused(|c| c.ownership_interval_ms = 10, "ownership_interval_ms");
        refused(|c| c.instance_id = "pod 0".into(), "instance_id");
    }
}
