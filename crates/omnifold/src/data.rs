//! Data-engineer tools: `replay` rebuilds a store from the events topic,
//! `verify` checks a store against the log, `dump` writes a store (or a
//! partition, or a member) as canonical JSON lines with a stable digest per
//! partition, so two stores compare with standard tools, and `dlq` inspects
//! and replays dead letters.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use xxhash_rust::xxh3::Xxh3;

use omnifold_ingest::{Processor, ReplayEnd, Shutdown};
use omnifold_store::{Store, StoreConfig};

use crate::config::Config;
use crate::produce::progress;

#[derive(Args)]
pub struct ReplayArgs {
    /// A new (or partly rebuilt) store directory; `serve --data-dir` can use it.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Stop once the topic has been quiet this long after reaching the end.
    #[arg(long, default_value_t = 2_000)]
    pub idle_ms: u64,
    /// Only records written to the topic at or after this instant (RFC 3339;
    /// the Kafka record timestamp), into a fresh store.
    #[arg(long, conflicts_with = "file")]
    pub from_time: Option<String>,
    /// Fold events from files instead of the topic, with no broker: JSON
    /// lines, or length-delimited protobuf with `--format protobuf`; `.gz`
    /// and `.zst` files are decompressed.
    #[arg(long, num_args = 1..)]
    pub file: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "json")]
    pub format: crate::produce::Format,
    /// Partitions to fold the files into: the events topic's count, so the
    /// store can be served and compared with one built from the topic.
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
}

#[derive(Args)]
pub struct CopyArgs {
    /// The new topic; create it first (`topics create` with its name as
    /// `kafka.topic`) with the partition count you want.
    #[arg(long)]
    pub to_topic: String,
    /// Stop once the events topic has been quiet this long after the copy
    /// reached the end it had at the start.
    #[arg(long, default_value_t = 2_000)]
    pub idle_ms: u64,
}

/// Copies producers' records of the events topic into `args.to_topic`.
pub fn copy(config: &Config, args: CopyArgs) -> Result<()> {
    let bar = progress(0, "copying");
    let done = omnifold_ingest::copy_topic(
        &config.kafka,
        &config.fold.limits,
        &args.to_topic,
        Duration::from_millis(args.idle_ms),
        &Shutdown::default(),
        |p| {
            bar.set_length(p.expected.max(p.read));
            bar.set_position(p.read);
        },
    )
    .with_context(|| format!("copying {} into {}", config.kafka.topic, args.to_topic))?;
    bar.finish_and_clear();
    println!(
        "copied {} of {} records from {} to {} ({} written by omnifold left out: the serve folding {} writes them again)",
        done.copied, done.read, config.kafka.topic, args.to_topic, done.left_out, args.to_topic
    );
    Ok(())
}

/// A file, decompressed by its extension.
fn open_input(path: &std::path::Path) -> Result<Box<dyn std::io::BufRead>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let raw: Box<dyn std::io::Read> = match path.extension().and_then(|e| e.to_str()) {
        Some("gz") => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Some("zst") => Box::new(zstd::Decoder::new(file)?),
        _ => Box::new(file),
    };
    Ok(Box::new(std::io::BufReader::new(raw)))
}

/// The records of one input file, in order.
fn read_records(
    path: &std::path::Path,
    format: crate::produce::Format,
    mut each: impl FnMut(Vec<u8>) -> Result<()>,
) -> Result<()> {
    let mut input = open_input(path)?;
    match format {
        crate::produce::Format::Json => {
            for line in input.lines() {
                let line = line.with_context(|| format!("reading {}", path.display()))?;
                if !line.trim().is_empty() {
                    each(line.into_bytes())?;
                }
            }
        }
        crate::produce::Format::Protobuf => {
            let mut all = Vec::new();
            input.read_to_end(&mut all).with_context(|| format!("reading {}", path.display()))?;
            let mut buf = all.as_slice();
            while !buf.is_empty() {
                let len = prost::encoding::decode_varint(&mut buf)
                    .with_context(|| format!("{}: a length prefix is broken", path.display()))?
                    as usize;
                if len > buf.len() {
                    bail!("{}: the last record is cut short", path.display());
                }
                let (record, rest) = buf.split_at(len);
                each(record.to_vec())?;
                buf = rest;
            }
        }
    }
    Ok(())
}

/// `omnifold replay --file`: the fold of files into a store, no broker.
fn replay_files(config: &Config, args: &ReplayArgs) -> Result<()> {
    if args.partitions == 0 {
        bail!("--partitions must be at least 1");
    }
    let store_cfg = StoreConfig { path: args.data_dir.clone(), bulk_load: true, ..config.store.clone() };
    let store = Store::open(&store_cfg).with_context(|| format!("opening store {}", args.data_dir.display()))?;
    // Internal records in files carry no signature: what the fold writes
    // is signed and checked with the configured secret, or one of its own.
    let signer = config.kafka.signer().unwrap_or_else(|_| omnifold_ingest::Signer::ephemeral());
    let processor = Processor::new(
        store.clone(),
        Arc::new(config.fold.clone()),
        &config.kafka.topic,
        config.kafka.max_event_bytes,
        signer,
    )
    .with_member_cache(config.kafka.member_cache_entries, config.kafka.member_cache_bytes)
    .with_audiences(Arc::new(config.audiences()?));
    let mut log = omnifold_ingest::LocalLog::new(
        &processor,
        &config.kafka.topic,
        args.partitions,
        config.kafka.batch_max_records,
    )?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {pos} records {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message("replaying files");
    let mut pending = 0usize;
    for path in &args.file {
        read_records(path, args.format, |record| {
            log.append(record);
            bar.inc(1);
            pending += 1;
            if pending >= 50_000 {
                pending = 0;
                log.drain()?;
            }
            Ok(())
        })?;
    }
    log.drain()?;
    store.flush()?;
    bar.finish_and_clear();
    let done = &log.done;
    println!(
        "replayed {} records ({} events applied, {} dead letters) from {} file(s) into {}",
        done.records,
        done.applied,
        done.dead_letters.len(),
        args.file.len(),
        args.data_dir.display()
    );
    for d in done.dead_letters.iter().take(20) {
        eprintln!("dead letter ({}): {}", d.kind, d.reason);
    }
    Ok(())
}

/// Replays the events topic into the store at `dir` until `end`, with a
/// progress bar.
fn rebuild(
    config: &Config,
    dir: &std::path::Path,
    end: &ReplayEnd,
    from_time: Option<i64>,
) -> Result<omnifold_ingest::ReplayProgress> {
    let store_cfg = StoreConfig { path: dir.to_owned(), bulk_load: true, ..config.store.clone() };
    let store = Store::open(&store_cfg).with_context(|| format!("opening store {}", dir.display()))?;
    let signer = config.kafka.signer().context("replaying checks omnifold's signatures on the topic")?;
    let processor =
        Processor::new(store, Arc::new(config.fold.clone()), &config.kafka.topic, config.kafka.max_event_bytes, signer)
            .with_member_cache(config.kafka.member_cache_entries, config.kafka.member_cache_bytes)
            .with_audiences(Arc::new(config.audiences()?));
    let bar = progress(0, "replaying");
    let done = omnifold_ingest::replay(&config.kafka, &processor, end, from_time, &Shutdown::default(), |p| {
        bar.set_length(p.expected.max(p.records));
        bar.set_position(p.records);
    })
    .context("replaying the events topic")?;
    bar.finish_and_clear();
    Ok(done)
}

/// `omnifold replay`: the events topic, from the beginning, into a store.
pub fn replay(config: &Config, args: ReplayArgs) -> Result<()> {
    if !args.file.is_empty() {
        return replay_files(config, &args);
    }
    let from_time = args
        .from_time
        .as_deref()
        .map(|t| crate::tools::rfc3339("--from-time", t).map(|ts| omnifold_core::time::from_timestamp(&ts)))
        .transpose()?;
    let done = rebuild(config, &args.data_dir, &ReplayEnd::Idle(Duration::from_millis(args.idle_ms)), from_time)?;
    println!(
        "replayed {} records ({} events applied) from {} into {}",
        done.records,
        done.applied,
        config.kafka.topic,
        args.data_dir.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The store to check (opened read-only; it may be in use).
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// Top-level fields of two dump lines that differ.
fn differing_fields(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for part in ["member", "ledger", "verdicts"] {
        match (a[part].as_object(), b[part].as_object()) {
            (Some(x), Some(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                out.extend(keys.into_iter().filter(|k| x.get(*k) != y.get(*k)).map(|k| format!("{part}.{k}")));
            }
            _ if a[part] != b[part] => out.push(part.to_owned()),
            _ => {}
        }
    }
    out
}

/// `omnifold verify`: rebuilds the store from the log, up to exactly the
/// offsets the store has read, and reports every member that differs.
pub fn verify(config: &Config, args: VerifyArgs) -> Result<()> {
    let topic = &config.kafka.topic;
    let stored = Store::open(&StoreConfig { path: args.data_dir.clone(), read_only: true, ..config.store.clone() })
        .with_context(|| format!("opening store {}", args.data_dir.display()))?;
    let Some(count) = stored.partition_count(topic)? else {
        bail!("{} holds no state for topic {topic}", args.data_dir.display());
    };
    let mut until = std::collections::BTreeMap::new();
    for p in 0..count {
        if let Some(next) = stored.next_offset(topic, p)? {
            until.insert(p, next);
        }
    }
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    rebuild(config, scratch.path(), &ReplayEnd::At(until.clone()), None)?;
    let rebuilt =
        Store::open(&StoreConfig { path: scratch.path().to_owned(), read_only: true, ..config.store.clone() })?;
    let (mut checked, mut differ) = (0u64, 0u64);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for p in until.keys().copied() {
        let lines = |s: &Store| -> Result<std::collections::BTreeMap<String, String>> {
            s.scan_members(p)
                .map(|m| {
                    let m = m?;
                    Ok((m.key.clone(), line(s, p, &m)?))
                })
                .collect()
        };
        let (a, b) = (lines(&stored)?, lines(&rebuilt)?);
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            checked += 1;
            match (a.get(k), b.get(k)) {
                (Some(x), Some(y)) if x == y => {}
                (Some(x), Some(y)) => {
                    differ += 1;
                    let fields = differing_fields(&serde_json::from_str(x)?, &serde_json::from_str(y)?);
                    writeln!(
                        out,
                        "member {k} (partition {p}): stored state differs from the log in {}",
                        fields.join(", ")
                    )?;
                }
                (Some(_), None) => {
                    differ += 1;
                    writeln!(out, "member {k} (partition {p}): stored, but the log has no such profile")?;
                }
                (None, _) => {
                    differ += 1;
                    writeln!(out, "member {k} (partition {p}): in the log, but missing from the store")?;
                }
            }
        }
    }
    writeln!(out, "checked {checked} members in {} partitions against the log: {differ} differ", until.len())?;
    out.flush()?;
    if differ > 0 {
        bail!("{differ} members differ from the log");
    }
    Ok(())
}

#[derive(Args)]
pub struct DumpArgs {
    /// The store to read (opened read-only; it may be in use).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Only this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Only this member (its key: member id, anonymous id or `TYPE:value`).
    #[arg(long)]
    pub member: Option<String>,
    /// Print only one digest line per partition instead of the dump.
    #[arg(long)]
    pub digest: bool,
}

/// One line of the dump: a member with its ledger and decided commands,
/// in canonical JSON, without its log position.
fn line(store: &Store, partition: u32, member: &omnifold_core::Member) -> Result<String> {
    let ledger: Vec<omnifold_core::LedgerEntry> =
        store.ledger(partition, &member.key, None).collect::<Result<Vec<_>, _>>()?.into_iter().rev().collect();
    let verdicts = store.member_verdicts(partition, &member.key)?;
    let audiences = store.audience_states(partition, &[member.key.as_str()])?.pop().flatten();
    let mut v = serde_json::json!({
        "partition": partition,
        "key": member.key,
        "member": member,
        "ledger": ledger,
        "verdicts": verdicts,
    });
    // Only when the fold evaluated audiences, so stores of before compare.
    if let Some(a) = audiences {
        v["audiences"] = serde_json::to_value(&a)?;
    }
    // A log position, not content: it depends on what else is in the log
    // (other subjects, retries, the fold's own records), so stores built
    // from a topic and from a file of the same events compare equal.
    if let Some(version) = v["member"]["version"].as_object_mut() {
        version.remove("next_offset");
    }
    Ok(serde_json::to_string(&v)?)
}

/// `omnifold dump`: members sorted by partition and key, one JSON line each.
pub fn dump(config: &Config, args: DumpArgs) -> Result<()> {
    let store_cfg = StoreConfig { path: args.data_dir.clone(), read_only: true, ..config.store.clone() };
    let store = Store::open(&store_cfg).with_context(|| format!("opening store {}", args.data_dir.display()))?;
    let topic = &config.kafka.topic;
    let Some(count) = store.partition_count(topic)? else {
        bail!("{} holds no state for topic {topic}", args.data_dir.display());
    };
    let partitions: Vec<u32> = match (args.partition, &args.member) {
        (Some(p), _) if p >= count => bail!("partition {p} does not exist: the topic has {count}"),
        (Some(p), _) => vec![p],
        (None, Some(m)) => vec![omnifold_core::partition::partition_for(m.as_bytes(), count)],
        (None, None) => (0..count).collect(),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for p in partitions {
        let mut digest = Xxh3::new();
        let mut members = 0u64;
        for m in store.scan_members(p) {
            let m = m?;
            if args.member.as_ref().is_some_and(|k| *k != m.key) {
                continue;
            }
            let l = line(&store, p, &m)?;
            digest.update(l.as_bytes());
            digest.update(b"\n");
            members += 1;
            if !args.digest {
                writeln!(out, "{l}")?;
            }
        }
        if args.digest {
            writeln!(out, "partition {p} members {members} digest {:032x}", digest.digest128())?;
        }
    }
    out.flush()?;
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter: offset, kind, source, event id, reason.
    List(DlqFilter),
    /// One dead letter in full, as JSON (the original record as text when it is).
    Show {
        /// Offset in the dead-letter topic.
        offset: i64,
    },
    /// Write the originals as JSON lines (protobuf originals converted), to
    /// fix them and send them again with `omnifold produce --file`.
    Export(DlqFilter),
    /// Send the originals again, unchanged and with their keys, to the
    /// events topic: after a fix elsewhere (the missing order arrived, the
    /// rate is configured). Their event ids are kept, so nothing already
    /// applied is applied twice.
    Replay {
        #[command(flatten)]
        filter: DlqFilter,
        /// Only list what would be sent.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args, Clone)]
pub struct DlqFilter {
    /// Only this kind: decode, validation, too_large, too_late, rule, forged or bug.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only reasons containing this text.
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead letters at or after this offset of the dead-letter topic.
    #[arg(long)]
    pub from: Option<i64>,
    /// Only dead letters before this offset.
    #[arg(long)]
    pub to: Option<i64>,
}

impl DlqFilter {
    fn keeps(&self, d: &omnifold_ingest::StoredDeadLetter) -> bool {
        self.kind.as_ref().is_none_or(|k| *k == d.letter.kind)
            && self.reason.as_ref().is_none_or(|r| d.letter.reason.contains(r.as_str()))
            && self.from.is_none_or(|f| d.offset >= f)
            && self.to.is_none_or(|t| d.offset < t)
    }
}

/// The original's event id, when it decodes at all.
fn original_id(original: &[u8]) -> Option<String> {
    if original.first() == Some(&b'{') {
        let v: serde_json::Value = serde_json::from_slice(original).ok()?;
        v.get("eventId")?.as_str().map(str::to_owned)
    } else {
        use prost::Message;
        omnifold_proto::v1::Event::decode(original).ok().map(|e| e.event_id).filter(|id| !id.is_empty())
    }
}

pub fn dlq(config: &Config, cmd: DlqCommand) -> Result<()> {
    let letters = omnifold_ingest::read_dead_letters(&config.kafka, Duration::from_millis(500))
        .with_context(|| format!("reading {}", config.kafka.dead_letter_topic))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match cmd {
        DlqCommand::List(filter) => {
            for d in letters.iter().filter(|d| filter.keeps(d)) {
                let l = &d.letter;
                writeln!(
                    out,
                    "{}\t{}\t{}/{}\t{}\t{}",
                    d.offset,
                    l.kind,
                    l.partition,
                    l.offset,
                    original_id(&l.original).unwrap_or_else(|| "-".into()),
                    l.reason
                )?;
            }
        }
        DlqCommand::Show { offset } => {
            let d = letters
                .iter()
                .find(|d| d.offset == offset)
                .with_context(|| format!("no dead letter at offset {offset}"))?;
            let l = &d.letter;
            let v = serde_json::json!({
                "offset": d.offset,
                "kind": l.kind,
                "reason": l.reason,
                "source": {"topic": l.topic, "partition": l.partition, "offset": l.offset},
                "key": String::from_utf8_lossy(&l.original_key),
                "original": String::from_utf8_lossy(&l.original),
                "eventId": original_id(&l.original),
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        DlqCommand::Export(filter) => {
            for d in letters.iter().filter(|d| filter.keeps(d)) {
                let original = &d.letter.original;
                if original.first() == Some(&b'{') {
                    writeln!(out, "{}", String::from_utf8_lossy(original).trim())?;
                } else {
                    use prost::Message;
                    match omnifold_proto::v1::Event::decode(original.as_slice()) {
                        Ok(e) => writeln!(out, "{}", serde_json::to_string(&e)?)?,
                        Err(_) => eprintln!("skipped dead letter {}: its original is not an event", d.offset),
                    }
                }
            }
        }
        DlqCommand::Replay { filter, dry_run } => {
            // A forged internal event must never be sent again (it would be
            // refused again, at best); a cut original is not the event.
            let (chosen, held): (Vec<_>, Vec<_>) = letters
                .iter()
                .filter(|d| filter.keeps(d))
                .partition(|d| d.letter.kind != "forged" && !d.letter.original_truncated);
            for d in &held {
                let why = if d.letter.kind == "forged" { "forged" } else { "its original was cut to max_event_bytes" };
                eprintln!("not sending dead letter {} ({why})", d.offset);
            }
            if dry_run {
                for d in &chosen {
                    writeln!(out, "would send {} ({})", d.offset, d.letter.reason)?;
                }
                return Ok(out.flush()?);
            }
            let producer = omnifold_ingest::EventProducer::new(&config.kafka).context("creating the Kafka producer")?;
            let bar = progress(chosen.len() as u64, "replaying dead letters");
            for d in &chosen {
                producer.send(&config.kafka.topic, &d.letter.original_key, &d.letter.original).context("producing")?;
                bar.inc(1);
            }
            producer.flush(Duration::from_secs(60)).context("waiting for the broker to acknowledge")?;
            bar.finish_and_clear();
            if chosen.is_empty() {
                bail!("no dead letter matches");
            }
            writeln!(out, "sent {} dead letters to {}", chosen.len(), config.kafka.topic)?;
        }
    }
    Ok(out.flush()?)
}
