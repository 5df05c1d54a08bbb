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
    for p in 0..partitions {
        let start = store.next_offset(topic, p)?.map_or(Offset::Beginning, Offset::Offset);
        tpl.add_partition_offset(topic, p as i32, start)?;
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
        for m in messages {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "identity index poll error");
                    continue;
                }
            };
            let p = m.partition() as u32;
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
    }
    Ok(())
}
