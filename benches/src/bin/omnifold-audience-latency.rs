//! Event → membership change latency, from the records alone: for every
//! member, the time from its first event's record (the producer's create
//! time) to its first `entered` record on the audience topic (omnifold's
//! create time, written before the batch commits). Reads both topics from
//! the start, in its own process; prints one JSON line with the p50, p99
//! and max in milliseconds.
//!
//! `omnifold-audience-latency --brokers 127.0.0.1:9092 --events omnifold.events --audiences omnifold.audiences --audience active --expect 20000`

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

#[derive(Parser, Debug)]
#[command(about = "event → audience entry latency from two topics' record times (prints one JSON line)")]
struct Args {
    #[arg(long)]
    brokers: String,
    /// The events topic.
    #[arg(long)]
    events: String,
    /// The audience topic (`kafka.audience_topic`).
    #[arg(long)]
    audiences: String,
    /// The audience whose entries are timed.
    #[arg(long)]
    audience: String,
    /// Entries to wait for before measuring.
    #[arg(long)]
    expect: usize,
}

/// Every record of `topic` from the start: at least to each partition's
/// end as the broker tells it, then until the topic has been quiet for
/// 5 s: `(key, payload, create time in ms)`.
fn read(brokers: &str, topic: &str) -> Result<Vec<(String, Vec<u8>, i64)>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}.latency"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let metadata = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len());
    let mut tpl = TopicPartitionList::new();
    let mut behind: HashMap<i32, i64> = HashMap::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        behind.insert(p, c.fetch_watermarks(topic, p, Duration::from_secs(10))?.1);
    }
    c.assign(&tpl)?;
    let (mut out, mut quiet) = (Vec::new(), Instant::now());
    while behind.values().any(|end| *end > 0) || quiet.elapsed() < Duration::from_secs(5) {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            if quiet.elapsed() > Duration::from_secs(60) {
                bail!("{topic}: nothing more for 60 s, still behind {behind:?}");
            }
            continue;
        };
        let m = m?;
        if let Some(end) = behind.get_mut(&m.partition())
            && m.offset() + 1 >= *end
        {
            *end = 0;
        }
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let at = m.timestamp().to_millis().context("a record without a timestamp")?;
        out.push((key, m.payload().unwrap_or_default().to_vec(), at));
        quiet = Instant::now();
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut entered: HashMap<String, i64> = HashMap::new();
    for (key, value, at) in read(&args.brokers, &args.audiences)? {
        let v: serde_json::Value = serde_json::from_slice(&value)?;
        if v["event"] == "entered" && v["audience"] == args.audience.as_str() {
            entered.entry(key).or_insert(at);
        }
    }
    if entered.len() < args.expect {
        bail!("{} entries on {}, expected {}", entered.len(), args.audiences, args.expect);
    }
    let mut first: HashMap<String, i64> = HashMap::new();
    for (key, _, at) in read(&args.brokers, &args.events)? {
        let t = first.entry(key).or_insert(at);
        *t = (*t).min(at);
    }
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    for (member, at) in &entered {
        if let Some(sent) = first.get(member) {
            h.record(u64::try_from(at - sent).unwrap_or(0))?;
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "members": h.len(),
            "p50_ms": h.value_at_quantile(0.5),
            "p99_ms": h.value_at_quantile(0.99),
            "max_ms": h.max(),
        })
    );
    Ok(())
}
