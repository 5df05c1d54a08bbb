//! `omnifold produce`: sends events from a JSON-lines file, or a generated
//! demo data set, to the events topic, keyed by subject with Kafka's default
//! partitioner, with a progress bar.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message;

use omnifold_core::Identifier;
use omnifold_proto::v1 as proto;

use crate::config::Config;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Json,
    Protobuf,
}

#[derive(Args)]
pub struct ProduceArgs {
    /// JSON-lines file of events (canonical proto3 JSON); `-` reads stdin.
    #[arg(long, conflicts_with = "demo", required_unless_present = "demo")]
    file: Option<PathBuf>,
    /// Generate a multi-channel demo data set of this many members.
    #[arg(long)]
    demo: Option<usize>,
    /// Seed of the demo data set: the same seed gives the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Wire encoding of the records.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// Topic to write to (default: kafka.topic).
    #[arg(long)]
    topic: Option<String>,
    /// Write the events as JSON lines to this file instead of Kafka.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The record key: member id, else anonymous id, else first identifier.
pub fn key_of(e: &proto::Event) -> Option<String> {
    let s = e.subject.as_ref()?;
    if !s.member_id.trim().is_empty() {
        return Some(s.member_id.trim().to_owned());
    }
    if !s.anonymous_id.trim().is_empty() {
        return Some(s.anonymous_id.trim().to_owned());
    }
    s.identifiers.first().and_then(|i| Identifier::try_from(i).ok()).map(|i| i.key())
}

pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

pub fn run(config: &Config, args: ProduceArgs) -> Result<()> {
    let events: Vec<proto::Event> = match (&args.file, args.demo) {
        (_, Some(n)) => crate::demo::generate(n, args.seed, crate::demo::today_millis()),
        (Some(path), None) => read_jsonl(path)?,
        (None, None) => bail!("give --file or --demo"),
    };
    if let Some(out) = &args.out {
        let mut w =
            std::io::BufWriter::new(std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?);
        for e in &events {
            serde_json::to_writer(&mut w, e)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        println!("wrote {} events to {}", events.len(), out.display());
        return Ok(());
    }
    let topic = args.topic.as_deref().unwrap_or(&config.kafka.topic);
    let producer = omnifold_ingest::EventProducer::new(&config.kafka).context("creating the Kafka producer")?;
    let bar = progress(events.len() as u64, "producing");
    for e in &events {
        let payload = match args.format {
            Format::Json => serde_json::to_vec(e)?,
            Format::Protobuf => e.encode_to_vec(),
        };
        let key = key_of(e).unwrap_or_default();
        producer.send(topic, key.as_bytes(), &payload).context("producing")?;
        bar.inc(1);
    }
    producer.flush(Duration::from_secs(60)).context("waiting for the broker to acknowledge")?;
    bar.finish_and_clear();
    println!("produced {} events to {topic}", events.len());
    Ok(())
}

fn read_jsonl(path: &PathBuf) -> Result<Vec<proto::Event>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?))
    };
    let mut out = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let e: proto::Event = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not an omnifold event", path.display(), n + 1))?;
        out.push(e);
    }
    Ok(out)
}
