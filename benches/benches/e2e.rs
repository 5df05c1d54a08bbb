//! Load generator and end-to-end benchmark. Starts a tansu broker (or uses
//! `--brokers`), produces small JSON events, then measures in one run:
//! a raw rdkafka consume of the topic (the baseline), omnifold ingest of the
//! same topic (decode, dedupe, fold, commit), gRPC `GetProfile` and
//! `GetBalance` against `grpc.health.v1/Check` on the same server at the same
//! concurrency, and `RedeemPoints` round trips through the log (append,
//! fold, verdict) with ingest running. Also `omnifold replay` from the topic
//! and from a JSON-lines file of the same events.
//!
//! Run: `cargo bench --workspace --bench e2e` (part of `make bench`); results
//! go in docs/benchmarks.md. Settings come from the environment:
//! `BENCH_EVENTS` (500000), `BENCH_MEMBERS` (50000), `BENCH_PARTITIONS` (4),
//! `BENCH_CONCURRENCY` (8,32,64: one run each), `BENCH_SECONDS` (5), `BENCH_BROKERS` (start tansu),
//! `BENCH_BATCH_WAIT_MS` (ingest's `batch_max_wait_ms`, default as configured).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;

use omnifold_benches::load::{LoadRun, Report, Target};
use omnifold_benches::report::Results;
use omnifold_benches::{env_list, env_or, event, member_ref, processor, producer, send, start_tansu, store_config};
use omnifold_core::FoldConfig;
use omnifold_ingest::{CommandProducer, IngestConfig, LocalLog, ReplayEnd, Shutdown};
use omnifold_proto::v1 as proto;
use omnifold_server::{CommandLog, Commands, Commits};
use omnifold_store::{Store, StoreConfig};
use serde_json::json;

struct Args {
    brokers: Option<String>,
    events: u64,
    members: u64,
    partitions: i32,
    /// Concurrent gRPC requests in flight, one run each.
    concurrency: Vec<usize>,
    seconds: u64,
}

impl Args {
    fn from_env() -> Args {
        Args {
            brokers: std::env::var("BENCH_BROKERS").ok(),
            events: env_or("BENCH_EVENTS", 500_000),
            members: env_or("BENCH_MEMBERS", 50_000),
            partitions: env_or("BENCH_PARTITIONS", 4),
            concurrency: env_list("BENCH_CONCURRENCY", &[8, 32, 64]),
            seconds: env_or("BENCH_SECONDS", 5),
        }
    }
}

fn produce(brokers: &str, topic: &str, n: u64, members: u64) -> Result<f64> {
    let p = producer(brokers, 20)?;
    let started = Instant::now();
    for i in 0..n {
        let (k, v) = event(i, members);
        send(&p, topic, &k, &v);
        if i % 10_000 == 0 {
            p.poll(Duration::ZERO);
            eprint!("\rproducing {i}/{n}");
        }
    }
    p.flush(Duration::from_secs(120))?;
    eprintln!();
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Baseline: the same client library reading the same topic, touching each payload.
fn raw_consume(brokers: &str, topic: &str, n: u64) -> Result<(f64, f64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("raw-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    c.subscribe(&[topic])?;
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let (mut count, mut bytes) = (0u64, 0usize);
    while count < n {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            first.get_or_insert_with(Instant::now);
            bytes += m.payload().map_or(0, <[u8]>::len);
            count += 1;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("raw consume stalled at {count}");
        }
    }
    std::hint::black_box(bytes);
    let total = started.elapsed().as_secs_f64();
    let steady = first.map_or(total, |f| f.elapsed().as_secs_f64());
    Ok((n as f64 / total, n as f64 / steady))
}

fn consumed(store: &Store, topic: &str, partitions: i32) -> i64 {
    (0..partitions as u32).map(|p| store.next_offset(topic, p).ok().flatten().unwrap_or(0)).sum()
}

/// omnifold ingest of the topic into a fresh store. Returns (total, steady) events/s.
fn ingest_config(brokers: &str, topic: &str) -> IngestConfig {
    IngestConfig {
        brokers: brokers.into(),
        topic: topic.into(),
        dead_letter_topic: format!("{topic}.dlq"),
        group_id: format!("omnifold-bench-{}", std::process::id()),
        batch_max_wait_ms: env_or("BENCH_BATCH_WAIT_MS", IngestConfig::default().batch_max_wait_ms),
        batch_max_records: env_or("BENCH_BATCH_RECORDS", IngestConfig::default().batch_max_records),
        fold_nice: env_or("BENCH_FOLD_NICE", IngestConfig::default().fold_nice),
        ..IngestConfig::default()
    }
}

fn ingest(
    brokers: &str,
    topic: &str,
    n: u64,
    partitions: i32,
    store: Arc<Store>,
    threads: usize,
) -> Result<(f64, f64)> {
    let cfg = IngestConfig {
        fold_threads: threads,
        group_id: format!("omnifold-bench-{}-{threads}", std::process::id()),
        ..ingest_config(brokers, topic)
    };
    let processor = processor(store.clone(), topic)?;
    let shutdown = Shutdown::default();
    let stop = shutdown.clone();
    let started = Instant::now();
    let handle = std::thread::spawn(move || omnifold_ingest::run(&cfg, processor, stop, Default::default()));
    let mut first: Option<Instant> = None;
    loop {
        let done = consumed(&store, topic, partitions);
        if done > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if done as u64 >= n {
            break;
        }
        if handle.is_finished() || started.elapsed() > Duration::from_secs(600) {
            bail!("ingest stopped at {done}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let total = started.elapsed().as_secs_f64();
    let steady = first.map_or(total, |f| f.elapsed().as_secs_f64());
    shutdown.trigger();
    handle.join().expect("ingest thread")?;
    Ok((n as f64 / total, n as f64 / steady))
}

/// A load run against `addr` by the load generator, in its own process.
fn load(
    addr: &str,
    args: &Args,
    target: Target,
    concurrency: usize,
    rate: Option<f64>,
    mask: &[&str],
) -> Result<Report> {
    LoadRun {
        exe: env!("CARGO_BIN_EXE_omnifold-load"),
        addr,
        target,
        concurrency,
        seconds: args.seconds,
        members: args.members,
        rate,
        read_mask: mask,
    }
    .run()
}

/// A latency row: throughput, quantiles, and the load generator's CPU.
fn latency(r: &Report) -> String {
    let bound = if r.client_bound(cores()) { " **client-bound**" } else { "" };
    format!(
        "{:.0} req/s, p50 {} µs, p99 {} µs, p99.9 {} µs (client {:.2} cores{bound})",
        r.rps, r.p50_us, r.p99_us, r.p999_us, r.client_cpu
    )
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn figures(r: &Report) -> serde_json::Value {
    serde_json::to_value(r).unwrap_or_default()
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let dlq = format!("{topic}.dlq");
    let topics = [
        NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
    ];
    for r in rt.block_on(admin.create_topics(&topics, &AdminOptions::new()))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::from_env();
    let (_tansu, brokers) = match &args.brokers {
        Some(b) => (None, b.clone()),
        None => {
            let (t, a) = start_tansu()?;
            (Some(t), a)
        }
    };
    let topic = format!("bench-{}", std::process::id());
    create_topic(&brokers, &topic, args.partitions)?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(&StoreConfig { path: dir.path().into(), ..store_config() })?;
    let mut out = Results::default();

    let produce_rate = produce(&brokers, &topic, args.events, args.members)?;
    println!("| measure | value |\n| --- | --- |");
    out.row(
        "events",
        format!("{} small JSON events, {} members, {} partitions", args.events, args.members, args.partitions),
        json!({"events": args.events, "members": args.members, "partitions": args.partitions}),
    );
    out.row("produce (rdkafka, to tansu)", format!("{produce_rate:.0} events/s"), json!(produce_rate));
    let (raw_total, raw_steady) = raw_consume(&brokers, &topic, args.events)?;
    out.row(
        "raw consume (baseline)",
        format!("{raw_total:.0} events/s incl. group join; {raw_steady:.0} events/s from first record"),
        json!({"total": raw_total, "steady": raw_steady}),
    );
    let one_dir = tempfile::tempdir()?;
    let one = Store::open(&StoreConfig { path: one_dir.path().into(), ..store_config() })?;
    let (one_total, one_steady) = ingest(&brokers, &topic, args.events, args.partitions, one, 1)?;
    drop(one_dir);
    out.row(
        "omnifold ingest, 1 fold thread",
        format!("{one_total:.0} events/s incl. group join; {one_steady:.0} events/s from first commit"),
        json!({"total": one_total, "steady": one_steady}),
    );
    let threads = cores();
    let (ing_total, ing_steady) = ingest(&brokers, &topic, args.events, args.partitions, store.clone(), threads)?;
    out.row(
        format!("omnifold ingest (decode, dedupe, fold, commit), {threads} fold threads"),
        format!(
            "{ing_total:.0} events/s incl. group join; {ing_steady:.0} events/s from first commit ({:.2}× 1 thread)",
            ing_steady / one_steady
        ),
        json!({"total": ing_total, "steady": ing_steady, "threads": threads, "vs_one_thread": ing_steady / one_steady}),
    );
    out.row(
        "**ingest / raw consume**",
        format!("**{:.2}× incl. join; {:.2}× steady** (goal ≥ 0.5×)", ing_total / raw_total, ing_steady / raw_steady),
        json!({"total": ing_total / raw_total, "steady": ing_steady / raw_steady}),
    );

    let replay_rate = replay_topic(&brokers, &topic, args.partitions, &store)?;
    out.row(
        "`omnifold replay` from the topic into a fresh store (bulk load)",
        format!("{replay_rate:.0} events/s ({:.2}× raw consume)", replay_rate / raw_steady),
        json!(replay_rate),
    );
    let file_rate = replay_file(&topic, args.events, args.members, args.partitions)?;
    out.row(
        "`omnifold replay --file` (JSON lines, no broker) into a fresh store",
        format!("{file_rate:.0} events/s ({:.2}× raw consume)", file_rate / raw_steady),
        json!(file_rate),
    );

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (addr, stop_tx, server) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let state = omnifold_server::AppState::new(
            omnifold_store::StoreHandle::new(store.clone()),
            &topic,
            Arc::new(FoldConfig::default().validate()?),
        )
        .with_auth(omnifold_benches::authenticator()?);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(omnifold_server::run(listener, state, async {
            let _ = stop_rx.await;
        }));
        anyhow::Ok((addr, stop_tx, server))
    })?;
    let idle_half = reads(&addr, &args, &mut out)?;
    let _ = stop_tx.send(());
    rt.block_on(server)??;
    let under_ingest = |addr: &str, out: &mut Results| match &idle_half {
        Some(idle) => reads_under_ingest(addr, &brokers, &topic, &args, &store, ing_steady, idle, out),
        None => Ok(()),
    };
    with_ingest_running(&rt, &brokers, &topic, &args, store.clone(), &mut out, under_ingest)?;
    let path = out.write(
        "e2e",
        json!({"BENCH_EVENTS": args.events, "BENCH_MEMBERS": args.members, "BENCH_PARTITIONS": args.partitions,
               "BENCH_CONCURRENCY": args.concurrency.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
               "BENCH_SECONDS": args.seconds, "broker": if args.brokers.is_some() { "BENCH_BROKERS" } else { "tansu, memory storage" }}),
    )?;
    eprintln!("report written to {}", path.display());
    Ok(())
}

/// The read methods against the health check on the same server, at each
/// concurrency, from the load generator in its own process.
fn reads(addr: &str, args: &Args, out: &mut Results) -> Result<Option<Report>> {
    let mut idle_half = None;
    for &c in &args.concurrency {
        let check = load(addr, args, Target::Check, c, None, &[])?;
        out.row(format!("`grpc.health.v1/Check`, {c} in flight"), latency(&check), figures(&check));
        let mut versus = |name: &str, target: Target, mask: &[&str], goal: &str| -> Result<Report> {
            let r = load(addr, args, target, c, None, mask)?;
            out.row(
                format!("{name}, {c} in flight"),
                format!("{} — **{:.2}× Check**{goal}", latency(&r), r.rps / check.rps),
                json!({"load": figures(&r), "vs_check": r.rps / check.rps}),
            );
            Ok(r)
        };
        let profile = versus("`GetProfile` (full profile)", Target::Profile, &[], " (goal ≥ 0.7×)")?;
        versus("`GetProfile` (read mask `loyalty`)", Target::Profile, &["loyalty"], "")?;
        versus("`GetBalance`", Target::Balance, &[], "")?;
        versus("`BatchGetProfiles` of 20 (requests/s)", Target::Batch, &[], "")?;
        if c == args.concurrency[args.concurrency.len() / 2] {
            let half = load(addr, args, Target::Profile, c, Some(profile.rps / 2.0), &[])?;
            out.row(
                format!("`GetProfile` at half its max rate ({:.0} req/s offered, open loop)", profile.rps / 2.0),
                format!("{} (goal p99 < 2 ms)", latency(&half)),
                figures(&half),
            );
            idle_half = Some(half);
        }
    }
    Ok(idle_half)
}

/// `GetProfile` at the rate of `idle` (half its max) while the producer,
/// in its own process, writes new events at half the measured ingest rate
/// and ingest folds them; then how long ingest took to catch up.
#[allow(clippy::too_many_arguments, reason = "one bench step, its figures passed in")]
fn reads_under_ingest(
    addr: &str,
    brokers: &str,
    topic: &str,
    args: &Args,
    store: &Store,
    ingest_rate: f64,
    idle: &Report,
    out: &mut Results,
) -> Result<()> {
    let rate = ingest_rate / 2.0;
    let before = consumed(store, topic, args.partitions);
    let producer = std::process::Command::new(env!("CARGO_BIN_EXE_omnifold-produce"))
        .args(["--brokers", brokers, "--topic", topic, "--rate", &format!("{rate:.0}")])
        .args(["--seconds", &(args.seconds + 1).to_string(), "--from", &args.events.to_string()])
        .args(["--members", &args.members.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let c = args.concurrency[args.concurrency.len() / 2];
    let reads = load(addr, args, Target::Profile, c, Some(idle.rps), &[])?;
    let sent: serde_json::Value = serde_json::from_slice(&producer.wait_with_output()?.stdout)?;
    let sent_n = sent["sent"].as_i64().unwrap_or(0);
    while consumed(store, topic, args.partitions) < before + sent_n {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "ingest did not catch up with the producer");
        std::thread::sleep(Duration::from_millis(5));
    }
    let caught_up = started.elapsed().as_secs_f64();
    out.row(
        format!("`GetProfile` at {:.0} req/s while ingest folds {rate:.0} events/s (half its max)", idle.rps),
        format!(
            "{} — **p99 {:.2}× idle** (goal ≤ 2×); {sent_n} events produced, all folded {caught_up:.1} s after the start",
            latency(&reads),
            reads.p99_us as f64 / idle.p99_us.max(1) as f64
        ),
        json!({"load": figures(&reads), "idle_p99_us": idle.p99_us, "p99_vs_idle": reads.p99_us as f64 / idle.p99_us.max(1) as f64,
               "produced": sent, "caught_up_s": caught_up}),
    );
    Ok(())
}

/// Rebuilds a fresh store from the topic up to what live ingest read.
fn replay_topic(brokers: &str, topic: &str, partitions: i32, live: &Store) -> Result<f64> {
    let cfg = ingest_config(brokers, topic);
    let until: std::collections::BTreeMap<u32, i64> =
        (0..partitions as u32).filter_map(|p| Some((p, live.next_offset(topic, p).ok()??))).collect();
    let n: i64 = until.values().sum();
    let dir = tempfile::tempdir()?;
    let store = Store::open(&StoreConfig { path: dir.path().into(), bulk_load: true, ..store_config() })?;
    let processor = processor(store.clone(), topic)?;
    let started = Instant::now();
    omnifold_ingest::replay(&cfg, &processor, &ReplayEnd::At(until), None, &Shutdown::default(), |_| {})?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Writes the same events to a JSON-lines file, then times reading it and
/// folding it through the local log into a fresh store.
fn replay_file(topic: &str, n: u64, members: u64, partitions: i32) -> Result<f64> {
    use std::io::{BufRead, Write};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.jsonl");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for i in 0..n {
        w.write_all(&event(i, members).1)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    drop(w);
    let store = Store::open(&StoreConfig { path: dir.path().join("store"), bulk_load: true, ..store_config() })?;
    let cfg = IngestConfig::default();
    let processor = processor(store.clone(), topic)?;
    let started = Instant::now();
    let mut log = LocalLog::new(&processor, topic, partitions as u32, cfg.batch_max_records)?;
    for (i, line) in std::io::BufReader::new(std::fs::File::open(&path)?).lines().enumerate() {
        log.append(line?.into_bytes());
        if i % 50_000 == 49_999 {
            log.drain()?;
        }
    }
    log.drain()?;
    store.flush()?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The server's command log, as `serve` wires it.
struct Log(CommandProducer);

#[tonic::async_trait]
impl CommandLog for Log {
    async fn append(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.0.append(key.as_bytes(), &value).await.map_err(|e| e.to_string())
    }

    /// Audience definitions are not measured here; nothing calls this.
    async fn append_internal(&self, _partition: u32, _key: &str, _value: Vec<u8>) -> Result<i64, String> {
        Err("the benchmark writes no internal records".into())
    }
}

/// With ingest running, as in `serve`: first `first` (reads while new
/// events are folded), then RedeemPoints round trips (append to the topic,
/// fold, commit, verdict).
fn with_ingest_running(
    rt: &tokio::runtime::Runtime,
    brokers: &str,
    topic: &str,
    args: &Args,
    store: Arc<Store>,
    out: &mut Results,
    first: impl FnOnce(&str, &mut Results) -> Result<()>,
) -> Result<()> {
    let cfg = ingest_config(brokers, topic);
    let timeout = Duration::from_secs(30);
    let commits = Commits::default();
    let committed = commits.clone();
    let processor = processor(store.clone(), topic)?.with_on_commit(Arc::new(move |p| committed.committed(p)));
    let fold = Arc::new(processor.fold().clone());
    let shutdown = Shutdown::default();
    let stop = shutdown.clone();
    let ingest_cfg = cfg.clone();
    let handle = std::thread::spawn(move || omnifold_ingest::run(&ingest_cfg, processor, stop, Default::default()));
    let result = rt.block_on(async {
        let commands = Commands { log: Arc::new(Log(CommandProducer::new(&cfg, timeout)?)), commits, timeout };
        let state = omnifold_server::AppState::new(omnifold_store::StoreHandle::new(store), topic, fold)
            .with_commands(commands)
            .with_auth(omnifold_benches::authenticator()?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(omnifold_server::run(listener, state, async {
            let _ = stop_rx.await;
        }));
        // One redemption first, so the consumer group has joined before timing.
        let mut client = proto::loyalty_service_client::LoyaltyServiceClient::new(
            omnifold_benches::connect(&format!("http://{addr}")).await?,
        );
        client
            .redeem_points(proto::RedeemPointsRequest {
                member: member_ref("m-0000001"),
                request_id: "warm-up".into(),
                points: 1,
                channel: proto::Channel::MobileApp as i32,
                reward: String::new(),
            })
            .await?;
        tokio::task::block_in_place(|| first(&addr, out))?;
        let c = args.concurrency[args.concurrency.len() / 2];
        let r = tokio::task::block_in_place(|| load(&addr, args, Target::Redeem, c, None, &[]))?;
        out.row(
            format!("`RedeemPoints` through the log, {c} in flight, ingest running"),
            format!("{} (goal p99 < 20 ms)", latency(&r)),
            figures(&r),
        );
        let _ = stop_tx.send(());
        server.await??;
        anyhow::Ok(())
    });
    shutdown.trigger();
    handle.join().expect("ingest thread")?;
    result
}
