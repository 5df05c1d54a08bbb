//! Scale: what a member costs on disk and in memory, and how long a store
//! of many members takes to start serving. For each member count in
//! `BENCH_SCALE_MEMBERS` (100000,1000000) it folds `BENCH_SCALE_EVENTS`
//! (3) events per member from a JSON-lines stream into a fresh store (the
//! `replay --file` path, no broker) and reports the bytes on disk per
//! member. Then, when `OMNIFOLD_BIN` names the release binary (`make
//! bench` sets it), it starts the real `omnifold serve` on that store with
//! a tansu broker, times start → first `GetProfile` answered, runs the
//! load generator over every member and reads the server's RSS.
//!
//! Run: `make bench`, or `OMNIFOLD_BIN=target/release/omnifold cargo bench
//! --workspace --bench scale`. Results in docs/bench/scale.{md,json}.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use omnifold_benches::load::{LoadRun, Target};
use omnifold_benches::report::Results;
use omnifold_benches::{env_list, env_or, event, member_ref, processor, start_tansu, store_config};
use omnifold_ingest::{IngestConfig, LocalLog};
use omnifold_proto::v1 as proto;
use omnifold_store::{Store, StoreConfig};

const PARTITIONS: u32 = 4;
const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";

/// Folds `members * per_member` events into a fresh store at `dir`; events/s.
fn build(dir: &Path, topic: &str, members: u64, per_member: u64) -> Result<f64> {
    let store = Store::open(&StoreConfig { path: dir.into(), bulk_load: true, ..store_config() })?;
    let processor = processor(store.clone(), topic)?;
    let n = members * per_member;
    let started = Instant::now();
    let mut log = LocalLog::new(&processor, topic, PARTITIONS, IngestConfig::default().batch_max_records)?;
    for i in 0..n {
        log.append(event(i, members).1);
        if i % 100_000 == 99_999 {
            log.drain()?;
            eprint!("\rfolding {}/{n}", i + 1);
        }
    }
    log.drain()?;
    store.flush()?;
    eprintln!();
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { disk_bytes(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

/// The resident set of a process, in bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

/// Starts `omnifold serve` on the store at `dir`; returns it, its address
/// and the time from spawn to the first `GetProfile` answered.
fn serve(bin: &str, brokers: &str, topic: &str, dir: &Path) -> Result<(Serve, String, Duration)> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("serve")
        .env("OMNIFOLD_KAFKA__BROKERS", brokers)
        .env("OMNIFOLD_KAFKA__TOPIC", topic)
        .env("OMNIFOLD_KAFKA__DEAD_LETTER_TOPIC", format!("{topic}.dlq"))
        .env("OMNIFOLD_KAFKA__IDENTITY_TOPIC", format!("{topic}.identity"))
        .env("OMNIFOLD_KAFKA__GROUP_ID", format!("{topic}.group"))
        .env("OMNIFOLD_KAFKA__INTERNAL_SECRET", SECRET)
        .env("OMNIFOLD_STORE__PATH", dir)
        .env("OMNIFOLD_SERVER__LISTEN", "127.0.0.1:0")
        .env("OMNIFOLD_AUTH__KEYS_FILE", omnifold_benches::keys_file(dir.parent().unwrap_or(dir))?)
        .env_remove("OMNIFOLD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin} serve"))?;
    let stdout = child.stdout.take().context("serve's stdout")?;
    let child = Serve(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line.trim().rsplit(' ').next().unwrap_or_default().to_owned();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        loop {
            if let Ok(mut c) = omnifold_benches::connect(&format!("http://{addr}"))
                .await
                .map(proto::profile_service_client::ProfileServiceClient::new)
            {
                let req = proto::GetProfileRequest { member: member_ref("m-0000001"), read_mask: None, as_of: None };
                if c.get_profile(req).await.is_ok() {
                    return Ok(());
                }
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("serve did not answer within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })?;
    Ok((child, addr, started.elapsed()))
}

fn main() -> Result<()> {
    let counts = env_list("BENCH_SCALE_MEMBERS", &[100_000, 1_000_000]);
    let per_member = env_or("BENCH_SCALE_EVENTS", 3u64);
    let bin = std::env::var("OMNIFOLD_BIN").ok().filter(|b| Path::new(b).exists());
    let broker = match &bin {
        Some(_) => Some(start_tansu()?),
        None => {
            eprintln!("OMNIFOLD_BIN is not set to a built binary: measuring disk only (make bench sets it)");
            None
        }
    };
    let mut out = Results::default();
    println!("| measure | value |\n| --- | --- |");
    for &members in &counts {
        let topic = format!("scale-{}-{members}", std::process::id());
        let dir = tempfile::tempdir()?;
        let rate = build(dir.path(), &topic, members, per_member)?;
        let bytes = disk_bytes(dir.path())?;
        out.row(
            format!("{members} members: build ({per_member} events each, no broker)"),
            format!("{rate:.0} events/s"),
            json!(rate),
        );
        out.row(
            format!("{members} members: bytes on disk"),
            format!("{:.1} MB, {:.0} bytes per member", bytes as f64 / 1e6, bytes as f64 / members as f64),
            json!({"bytes": bytes, "per_member": bytes as f64 / members as f64}),
        );
        let (Some(bin), Some((_tansu, brokers))) = (&bin, &broker) else {
            continue;
        };
        let cfg = IngestConfig {
            brokers: brokers.clone(),
            topic: topic.clone(),
            dead_letter_topic: format!("{topic}.dlq"),
            identity_topic: format!("{topic}.identity"),
            ..IngestConfig::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(omnifold_ingest::create_topics(&cfg, PARTITIONS as i32, 1))?;
        let (server, addr, ready) = serve(bin, brokers, &topic, dir.path())?;
        out.row(
            format!("{members} members: start to serving"),
            format!(
                "{:.0} ms (spawn of `omnifold serve` to the first `GetProfile` answered; goal < 2 s)",
                ready.as_secs_f64() * 1e3
            ),
            json!(ready.as_secs_f64()),
        );
        let idle = rss(server.0.id())?;
        let load = LoadRun {
            exe: env!("CARGO_BIN_EXE_omnifold-load"),
            addr: &addr,
            target: Target::Profile,
            concurrency: 32,
            seconds: 10,
            members,
            rate: None,
            read_mask: &[],
        }
        .run()?;
        let after = rss(server.0.id())?;
        out.row(
            format!("{members} members: server RSS"),
            format!(
                "{:.0} MB at start, {:.0} MB after {} `GetProfile`s spread over every member",
                idle as f64 / 1e6,
                after as f64 / 1e6,
                load.requests
            ),
            json!({"start": idle, "after_reads": after, "reads": load.requests}),
        );
        drop(server);
    }
    let path = out.write(
        "scale",
        json!({"BENCH_SCALE_MEMBERS": counts.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
               "BENCH_SCALE_EVENTS": per_member, "partitions": PARTITIONS,
               "store": format!("defaults (256 MiB block cache, 64 MiB write buffers), keep_history = {}",
                                store_config().keep_history)}),
    )?;
    eprintln!("report written to {}", path.display());
    Ok(())
}
