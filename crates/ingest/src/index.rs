//! The identity index every instance keeps: a reader of the compacted
//! identity topic (which member each linked key routes to), applied to the
//! local store with its offset in the same batch, like a Kafka Streams
//! global table. The fold of the partition that owns a key is the only
//! writer of that key's entries, and signs them: an unsigned entry is
//! dropped. A broker that is away is waited for; a failed store write is
//! tried again from the stored offset.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use tracing::{info, warn};

use omnifold_store::{Batch, Store, StoreHandle};

use crate::consumer::{await_partition_count, client_config, record_of};
use crate::resume::{Resume, admit, seek_to};
use crate::status::Quiet;
use crate::{IngestConfig, IngestStatus, Result, Shutdown, Signer};

/// Reads the identity topic into the store `stores` holds until `shutdown`.
/// Blocking: run it on its own thread.
pub fn run_index(cfg: &IngestConfig, stores: &StoreHandle, shutdown: &Shutdown) -> Result<()> {
    let signer = cfg.signer()?;
    let topic = cfg.identity_topic.as_str();
    let status = IngestStatus::default();
    let Some(partitions) = await_partition_count(cfg, topic, &status, shutdown)? else {
        return Ok(());
    };
    let consumer: BaseConsumer<Quiet> = client_config(cfg)
        .set("group.id", format!("{}.index-reader", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .create_with_context(Quiet)?;
    let mut resumes = position(&consumer, cfg, &stores.get(), partitions)?;
    info!(topic, partitions, "identity index reader started");
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_triggered() {
        let messages = poll(&consumer);
        if messages.is_empty() {
            continue;
        }
        // The current store: after a switch or a reopen, the new one.
        let store = stores.get();
        match apply(&consumer, cfg, &signer, &store, &mut resumes, &messages) {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "the identity index could not be written; reading again");
                drop(messages);
                if !shutdown.sleep(backoff) {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                resumes = position(&consumer, cfg, &stores.get(), partitions)?;
            }
        }
    }
    Ok(())
}

/// Assigns every partition from the store's offsets.
fn position(
    consumer: &BaseConsumer<Quiet>,
    cfg: &IngestConfig,
    store: &Store,
    partitions: u32,
) -> Result<BTreeMap<u32, Resume>> {
    let topic = cfg.identity_topic.as_str();
    let mut tpl = TopicPartitionList::new();
    let mut resumes = BTreeMap::new();
    for p in 0..partitions {
        let resume = Resume::at(store.next_offset(topic, p)?.unwrap_or(0), cfg.resume_rewind_records);
        tpl.add_partition_offset(topic, p as i32, resume.start())?;
        resumes.insert(p, resume);
    }
    consumer.assign(&tpl)?;
    Ok(resumes)
}

fn poll(consumer: &BaseConsumer<Quiet>) -> Vec<BorrowedMessage<'_>> {
    let mut messages = Vec::new();
    let mut wait = Duration::from_millis(100);
    while messages.len() < 1_000 {
        match consumer.poll(wait) {
            Some(Ok(m)) => messages.push(m),
            Some(Err(e)) => tracing::debug!(error = %e, "identity index poll error"),
            None => break,
        }
        wait = Duration::ZERO;
    }
    messages
}

/// Writes a poll's entries with each partition's offset, one batch per partition.
fn apply(
    consumer: &BaseConsumer<Quiet>,
    cfg: &IngestConfig,
    signer: &Signer,
    store: &Store,
    resumes: &mut BTreeMap<u32, Resume>,
    messages: &[BorrowedMessage<'_>],
) -> Result<()> {
    let topic = cfg.identity_topic.as_str();
    let mut batches: BTreeMap<u32, Batch> = BTreeMap::new();
    let mut rewinds = BTreeMap::new();
    for m in messages {
        let p = m.partition() as u32;
        let Some(resume) = resumes.get_mut(&p) else {
            continue;
        };
        if !admit(resume, &mut rewinds, p, m.offset()) {
            if rewinds.contains_key(&p) {
                batches.remove(&p);
            }
            continue;
        }
        let batch = batches.entry(p).or_insert_with(|| store.batch(topic, p));
        batch.set_next_offset(store, m.offset() + 1);
        let r = record_of(m);
        let (Some(key), value) = (r.key.and_then(|k| std::str::from_utf8(k).ok()), r.value.unwrap_or_default()) else {
            continue;
        };
        if !signer.verify(r.key, None, value, r.signature) {
            warn!(key, offset = m.offset(), "an identity-index entry without omnifold's signature was dropped");
            metrics::counter!("omnifold_index_forged_total").increment(1);
            continue;
        }
        let member = std::str::from_utf8(value).ok().filter(|v| !v.is_empty());
        batch.put_index(store, key, member);
    }
    for (_, batch) in batches {
        store.commit(batch)?;
    }
    for (p, to) in rewinds {
        warn!(partition = p, from = to, "the broker skipped identity records; reading again from earlier");
        consumer.seek(topic, p as i32, seek_to(to), Duration::from_secs(10))?;
    }
    Ok(())
}
