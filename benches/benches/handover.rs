//! Handover and failover: how long a partition is unanswered when its
//! owner stops (SIGTERM: handover) or dies (SIGKILL: failover), against the
//! partition's history and the snapshot's age, without help, from a
//! snapshot, and with a standby.
//!
//! Each run: a broker, two partitions, two `omnifold serve` instances (the
//! release binary, `OMNIFOLD_BIN`) with a 6 s session timeout; `events`
//! events of the bench's stream, then (snapshot runs) a snapshot of B's
//! partition on demand and `age` more events. Handovers run on tansu.
//! Failovers run on librdkafka's mock cluster in this process, because
//! tansu 0.6 never hands a dead member's partitions to the others
//! (docs/scale-out.md); the mock keeps only the last 5 MiB of each
//! partition (older records are deleted as by retention), so failover
//! histories stay below that. Then B is stopped or killed, and A's
//! `GetPartitionStatus` is read every 10 ms: "noticed" is when A's ingest
//! is assigned B's partition, "serving" when A answers for it (it has
//! folded to the partition's end at assignment).
//!
//! Run: `make bench`, or `OMNIFOLD_BIN=target/release/omnifold cargo bench
//! --workspace --bench handover`. `BENCH_HANDOVER_EVENTS` (100000,500000),
//! `BENCH_HANDOVER_AGES` (5000,100000), `BENCH_FAILOVER_EVENTS` (16000),
//! `BENCH_FAILOVER_AGE` (4000). Results in docs/bench/handover.{md,json}.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::Producer;
use serde_json::json;

use omnifold_benches::report::Results;
use omnifold_benches::{env_list, env_or, event, producer, send};
use omnifold_proto::v1 as proto;

const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";
const TOPIC: &str = "handover.events";
const MEMBERS: u64 = 20_000;

/// How the new owner gets the partition's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Help {
    /// Folds the partition's history from the topic.
    None,
    /// Restores B's snapshot, then folds what came after it.
    Snapshot,
    /// Has kept a warm copy all along.
    Standby,
}

impl Help {
    fn name(self) -> &'static str {
        match self {
            Help::None => "no snapshot, no standby",
            Help::Snapshot => "from a snapshot",
            Help::Standby => "with a standby",
        }
    }
}

/// A running `omnifold serve`, killed when dropped.
struct Instance {
    child: Child,
    grpc: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker of one run, stopped when dropped.
#[allow(dead_code, reason = "held only to keep the broker up until the run ends")]
enum Broker {
    Tansu(omnifold_benches::Tansu),
    Mock(MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
}

/// Starts the broker and creates the topics; returns it and its address.
fn broker(bin: &Path, mock: bool) -> Result<(Broker, String)> {
    if mock {
        let cluster = MockCluster::new(1)?;
        for (topic, partitions) in [(TOPIC, 2), ("handover.dlq", 1), ("handover.identity", 1), ("handover.owners", 1)] {
            cluster.create_topic(topic, partitions, 1)?;
        }
        let brokers = cluster.bootstrap_servers();
        return Ok((Broker::Mock(cluster), brokers));
    }
    let (tansu, brokers) = omnifold_benches::start_tansu()?;
    let out = omnifold(bin, &brokers).args(["topics", "create", "--partitions", "2"]).output()?;
    if !out.status.success() {
        bail!("topics create: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((Broker::Tansu(tansu), brokers))
}

/// The binary with the run's settings in its environment.
fn omnifold(bin: &Path, brokers: &str) -> Command {
    let mut c = Command::new(bin);
    c.env("OMNIFOLD_BROKERS", brokers)
        .env("OMNIFOLD_KAFKA__TOPIC", TOPIC)
        .env("OMNIFOLD_KAFKA__DEAD_LETTER_TOPIC", "handover.dlq")
        .env("OMNIFOLD_KAFKA__IDENTITY_TOPIC", "handover.identity")
        .env("OMNIFOLD_KAFKA__OWNERSHIP_TOPIC", "handover.owners")
        .env("OMNIFOLD_KAFKA__GROUP_ID", "handover.group")
        .env("OMNIFOLD_KAFKA__INTERNAL_SECRET", SECRET)
        .env("OMNIFOLD_KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("OMNIFOLD_STORE__DEDUPE_RETENTION_HOURS", "87600")
        .env_remove("OMNIFOLD_CONFIG");
    c
}

fn start(bin: &Path, brokers: &str, data: &Path, help: Help, snapshots: &Path) -> Result<Instance> {
    let mut c = omnifold(bin, brokers);
    c.env("OMNIFOLD_AUTH__KEYS_FILE", omnifold_benches::keys_file(data.parent().unwrap_or(data))?);
    match help {
        Help::None => {}
        Help::Snapshot => {
            c.env("OMNIFOLD_SNAPSHOTS__URL", snapshots).env("OMNIFOLD_SNAPSHOTS__EVERY_RECORDS", "0");
            // The snapshot's age is the bench's: none at stop either.
            c.env("OMNIFOLD_SNAPSHOTS__EVERY_MS", "0").env("OMNIFOLD_SNAPSHOTS__ON_STOP", "false");
        }
        Help::Standby => {
            c.env("OMNIFOLD_KAFKA__STANDBY", "all");
        }
    }
    let mut child = c
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(match std::env::var_os("BENCH_HANDOVER_LOGS") {
            Some(dir) => Stdio::from(std::fs::File::create(
                Path::new(&dir).join(format!("{}.log", data.file_name().unwrap_or_default().to_string_lossy())),
            )?),
            None => Stdio::null(),
        })
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    match line.trim().strip_prefix("omnifold serving gRPC on ") {
        Some(addr) => Ok(Instance { child, grpc: format!("http://{addr}") }),
        None => bail!("omnifold serve did not start: {line}"),
    }
}

async fn status(grpc: &str) -> Option<proto::GetPartitionStatusResponse> {
    let mut c = proto::admin_service_client::AdminServiceClient::new(omnifold_benches::connect(grpc).await.ok()?);
    Some(c.get_partition_status(proto::GetPartitionStatusRequest {}).await.ok()?.into_inner())
}

/// Polls `f` every 10 ms until it gives a value, at most `timeout`.
async fn until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every partition served, by the instances at `addresses`, folded to its
/// end (once the topic holds something: `caught_up`).
async fn settled(a: &str, addresses: &[&str], caught_up: bool) -> Result<proto::GetPartitionStatusResponse> {
    until("every partition served and caught up", Duration::from_secs(300), || async {
        let s = status(a).await?;
        let ok = s.partitions.len() == 2
            && s.partitions.iter().all(|p| {
                p.owner_state == "serving"
                    && addresses.contains(&p.owner_address.as_str())
                    && (!caught_up || (p.lag == 0 && p.high_watermark > 0))
            })
            && addresses.iter().all(|a| s.partitions.iter().any(|p| p.owner_address == *a));
        ok.then_some(s)
    })
    .await
}

/// A standby copy of `partition` on `a` caught up with its end.
async fn standby_caught_up(a: &str, partition: u32) -> Result<()> {
    until("the standby copy caught up", Duration::from_secs(300), || async {
        let s = status(a).await?;
        let p = s.partitions.iter().find(|p| p.partition == partition)?;
        (p.standby_applied >= p.high_watermark && p.high_watermark > 0).then_some(())
    })
    .await
}

fn produce(brokers: &str, from: u64, n: u64) -> Result<()> {
    let p = producer(brokers, 5)?;
    for i in from..from + n {
        let (key, value) = event(i, MEMBERS);
        send(&p, TOPIC, &key, &value);
    }
    p.flush(Duration::from_secs(60))?;
    Ok(())
}

/// What one run measured, in seconds from the signal.
struct Times {
    noticed: f64,
    serving: f64,
    /// Records of the partition A had not folded at the first status read
    /// after it was assigned it (a small catch-up may be done by then).
    behind: i64,
    /// The partition's end, and the snapshot's offset (snapshot runs).
    end: i64,
    snapshot: Option<i64>,
}

async fn run(bin: &Path, events: u64, age: u64, help: Help, kill: bool) -> Result<Times> {
    let (_broker, brokers) = broker(bin, kill)?;
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start(bin, &brokers, dirs.0.path(), help, dirs.2.path())?;
    let b = start(bin, &brokers, dirs.1.path(), help, dirs.2.path())?;
    settled(&a.grpc, &[&a.grpc, &b.grpc], false).await?;
    produce(&brokers, 0, events)?;
    let s = settled(&a.grpc, &[&a.grpc, &b.grpc], true).await?;
    let moving = s.partitions.iter().find(|p| p.owner_address == b.grpc).context("B's partition")?.partition;
    let mut snapshot = None;
    if help == Help::Snapshot {
        let mut c = proto::admin_service_client::AdminServiceClient::new(omnifold_benches::connect(&b.grpc).await?);
        let r = c.take_snapshot(proto::TakeSnapshotRequest { partitions: vec![moving] }).await?.into_inner();
        match r.results.first() {
            Some(t) if t.error.is_empty() && t.taken => snapshot = Some(t.next_offset),
            _ => bail!("no snapshot: {r:?}"),
        }
        produce(&brokers, events, age)?;
        settled(&a.grpc, &[&a.grpc, &b.grpc], true).await?;
    }
    if help == Help::Standby {
        standby_caught_up(&a.grpc, moving).await?;
    }
    // The partition's end: nothing is produced from here on.
    let probe: rdkafka::consumer::BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
    let end = rdkafka::consumer::Consumer::fetch_watermarks(&probe, TOPIC, moving as i32, Duration::from_secs(10))?.1;
    let signal = if kill { "-KILL" } else { "-TERM" };
    let started = Instant::now();
    Command::new("kill").args([signal, &b.child.id().to_string()]).status()?;
    // A's own view: assigned (its ingest folds the partition), then
    // answering for it (folded to the partition's end at assignment).
    let noticed = until("A is assigned B's partition", Duration::from_secs(120), || async {
        let s = status(&a.grpc).await?;
        let p = s.partitions.iter().find(|p| p.partition == moving && p.state != "unassigned")?;
        // What A's store held of the partition when it was assigned it (a
        // restored snapshot's offset, a standby's, or what it folded when
        // the group gave it the partition before).
        Some((started.elapsed().as_secs_f64(), (end - p.next_offset).max(0)))
    })
    .await?;
    let serving = until("A answers for B's partition", Duration::from_secs(600), || async {
        let s = status(&a.grpc).await?;
        if std::env::var_os("BENCH_HANDOVER_DEBUG").is_some()
            && let Some(p) = s.partitions.iter().find(|p| p.partition == moving)
        {
            eprintln!("{:.3} next {} local {}", started.elapsed().as_secs_f64(), p.next_offset, p.local);
        }
        let p = s.partitions.iter().find(|p| p.partition == moving && p.local)?;
        if std::env::var_os("BENCH_HANDOVER_DEBUG").is_some() {
            eprintln!("serving: {p:?}");
        }
        Some(())
    })
    .await
    .map(|()| started.elapsed().as_secs_f64())?;
    drop(b);
    drop(a);
    Ok(Times { noticed: noticed.0, serving, behind: noticed.1, end, snapshot })
}

fn main() -> Result<()> {
    let Some(bin) = std::env::var_os("OMNIFOLD_BIN") else {
        eprintln!("handover: OMNIFOLD_BIN is not set (make bench sets it); skipped");
        return Ok(());
    };
    let bin = std::path::PathBuf::from(bin);
    let sizes: Vec<u64> = env_list("BENCH_HANDOVER_EVENTS", &[100_000, 500_000]);
    let ages: Vec<u64> = env_list("BENCH_HANDOVER_AGES", &[5_000, 100_000]);
    let failover_events: u64 = env_or("BENCH_FAILOVER_EVENTS", 16_000);
    let failover_age: u64 = env_or("BENCH_FAILOVER_AGE", 4_000);
    let only: Option<String> = std::env::var("BENCH_HANDOVER_ONLY").ok();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut results = Results::default();
    println!("| measure | value |\n| --- | --- |");
    // Per history: no help, a snapshot of each age, a standby.
    let helps = |ages: &[u64]| {
        let mut h = vec![(Help::None, 0)];
        h.extend(ages.iter().map(|a| (Help::Snapshot, *a)));
        h.push((Help::Standby, 0));
        h
    };
    let mut runs: Vec<(bool, u64, Help, u64)> = Vec::new();
    for events in &sizes {
        runs.extend(helps(&ages).into_iter().map(|(help, age)| (false, *events, help, age)));
    }
    runs.extend(helps(&[failover_age]).into_iter().map(|(help, age)| (true, failover_events, help, age)));
    for (kill, events, help, age) in runs {
        if only.as_ref().is_some_and(|o| !help.name().contains(o.as_str())) {
            continue;
        }
        let what = if kill { "failover (SIGKILL, mock cluster)" } else { "handover (SIGTERM, tansu)" };
        eprintln!("handover: {what}, {events} events, {}", help.name());
        let t = rt.block_on(run(&bin, events, age, help, kill))?;
        let aged = match t.snapshot {
            Some(at) => format!(", snapshot {age} events old (at offset {at} of {})", t.end),
            None => String::new(),
        };
        results.row(
            format!("{what}, {events} events in 2 partitions, {}{aged}", help.name()),
            format!(
                "serving {:.2} s after the signal; assigned at {:.2} s, {} records behind at the first look, \
                 serving {:.2} s after that",
                t.serving,
                t.noticed,
                t.behind,
                t.serving - t.noticed
            ),
            json!({"events": events, "kill": kill, "help": help.name(), "age": age,
                   "noticed_s": t.noticed, "serving_s": t.serving, "behind_at_first_look": t.behind,
                   "end": t.end, "snapshot_offset": t.snapshot}),
        );
    }
    let settings = json!({"handover_events": sizes, "handover_snapshot_ages": ages,
                          "failover_events": failover_events, "failover_snapshot_age": failover_age,
                          "members": MEMBERS, "partitions": 2, "session_timeout_ms": 6000});
    let path = results.write("handover", settings)?;
    eprintln!("handover: wrote {}", path.display());
    Ok(())
}
