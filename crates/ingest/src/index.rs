//! The identity index every instance keeps: a reader of the compacted
//! identity topic (which member each linked key routes to), applied to the
//! local store with its offset in the same batch, like a Kafka Streams
//! global table. The fold of the partition that owns a key is the only
//! writer of that key's entries.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use omnifold_store::StoreHandle;

use crate::consumer::client_config;
use crate::resume::{Resume, Step};
use crate::{IngestConfig, Result, Shutdown};

/// Reads the identity topic into `store` until `shutdown`. Blocking: run it
/// on its own thread.
pub fn run_index(cfg: &IngestConfig, stores: &StoreHandle, shutdown: &Shutdown) -> Result<()> {
    let store = stores.get();
    let topic = cfg.identity_topic.as_str();
    let consumer: BaseConsumer = client_config(cfg)
        .set("group.id", format!("{}.index-reader", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .create()?;
    let partitions = crate::partition_count(cfg, topic)?;
    let mut tpl = TopicPartitionList::new();
    let mut resumes = std::collections::BTreeMap::new();
    for p in 0..partitions {
        let resume = Resume::at(store.next_offset(topic, p)?.unwrap_or(0), cfg.resume_rewind_records);
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(resume.position()))?;
        resumes.insert(p, resume);
    }
    consumer.assign(&tpl)?;
    info!(topic, partitions, "identity index reader started");
    while !shutdown.is_triggered() {
        let Some(first) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let mut messages = vec![first];
        while messages.len() < 1_000 {
            match consumer.poll(Duration::ZERO) {
                Some(m) => messages.push(m),
                None => break,
            }
        }
        // The current store: after a switch, the new one.
        let store = stores.get();
        let store = store.as_ref();
        let mut batches = std::collections::BTreeMap::new();
        let mut rewinds = std::collections::BTreeMap::new();
        for m in messages {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "identity index poll error");
                    continue;
                }
            };
            let p = m.partition() as u32;
            let Some(resume) = resumes.get_mut(&p) else {
                continue;
            };
            if rewinds.contains_key(&p) {
                continue;
            }
            match resume.step(m.offset()) {
                Step::Take => {}
                Step::Skip => continue,
                Step::Rewind(to) => {
                    rewinds.insert(p, to);
                    continue;
                }
            }
            let batch = batches.entry(p).or_insert_with(|| store.batch(topic, p));
            let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            let member = m.payload().and_then(|v| std::str::from_utf8(v).ok()).filter(|v| !v.is_empty());
            batch.put_index(store, key, member);
            batch.set_next_offset(store, m.offset() + 1);
        }
        for (_, batch) in batches {
            store.commit(batch)?;
        }
        for (p, to) in rewinds {
            warn!(partition = p, from = to, "the broker skipped identity records; reading again from earlier");
            consumer.seek(topic, p as i32, Offset::Offset(to), Duration::from_secs(10))?;
        }
    }
    Ok(())
}
