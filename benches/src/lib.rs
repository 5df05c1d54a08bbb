//! Shared pieces of the benchmarks: a deterministic stream of small JSON
//! events, like the ones channels send, the processor they are folded by,
//! settings from the environment, and a tansu broker.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use prost::Message;

use omnifold_core::FoldConfig;
use omnifold_core::time::{DAY, to_timestamp};
use omnifold_ingest::{IngestConfig, Processor, Signer};
use omnifold_proto::v1 as proto;
use omnifold_store::{Store, StoreConfig};

/// 2026-01-01T00:00:00Z.
pub const BASE: i64 = 1_767_225_600_000;

/// The `i`-th event of a stream over `members` members: mostly product
/// views, one in eight an order. Returns `(key, JSON bytes)`.
pub fn event(i: u64, members: u64) -> (String, Vec<u8>) {
    let m = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % members;
    let key = format!("m-{m:07}");
    let payload = if i.is_multiple_of(8) {
        proto::event::Payload::OrderPlaced(proto::OrderPlaced {
            order_id: format!("o-{i}"),
            currency: "CNY".into(),
            lines: vec![proto::OrderLine {
                sku: format!("SKU-{}", i % 500),
                category: format!("c{}", i % 20),
                quantity: 1,
                unit_price_minor: 1_000 + (i % 97) as i64 * 100,
            }],
            total_minor: 0,
        })
    } else {
        proto::event::Payload::ProductViewed(proto::ProductViewed {
            sku: format!("SKU-{}", i % 500),
            category: format!("c{}", i % 20),
            price_minor: 9_900,
            currency: String::new(),
        })
    };
    let e = proto::Event {
        event_id: format!("ev-{i}"),
        occurred_at: Some(to_timestamp(BASE + (i as i64 % 300) * DAY / 10)),
        channel: [proto::Channel::OnlineWeb, proto::Channel::MobileApp, proto::Channel::StorePos][(i % 3) as usize]
            as i32,
        store_id: String::new(),
        subject: Some(proto::Subject { member_id: key.clone(), ..Default::default() }),
        payload: Some(payload),
    };
    (key, serde_json::to_vec(&e).expect("serialisable"))
}

/// The same event as protobuf binary.
pub fn event_protobuf(i: u64, members: u64) -> (String, Vec<u8>) {
    let (k, json) = event(i, members);
    let e: proto::Event = serde_json::from_slice(&json).expect("valid");
    (k, e.encode_to_vec())
}

/// A producer for the bench stream: murmur2 partitioning, as the
/// channels' producers use, and a deep queue.
pub fn producer(brokers: &str, linger_ms: u32) -> Result<rdkafka::producer::BaseProducer> {
    Ok(rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", linger_ms.to_string())
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()?)
}

/// Sends one record, waiting for room in the producer's queue when it is full.
pub fn send(p: &rdkafka::producer::BaseProducer, topic: &str, key: &str, value: &[u8]) {
    let mut rec = rdkafka::producer::BaseRecord::to(topic).key(key).payload(value);
    while let Err((_, r)) = p.send(rec) {
        rec = r;
        p.poll(Duration::from_millis(1));
    }
}

/// A processor of `topic` into `store` as ingest builds it by default:
/// the default fold rules, event size limit and member cache.
pub fn processor(store: Arc<Store>, topic: &str) -> Result<Processor> {
    let cfg = IngestConfig::default();
    Ok(Processor::new(
        store,
        Arc::new(FoldConfig::default().validate()?),
        topic,
        cfg.max_event_bytes,
        Signer::ephemeral(),
    )
    .with_member_cache(cfg.member_cache_entries, cfg.member_cache_bytes))
}

/// The member id a request names.
pub fn member_ref(id: impl Into<String>) -> Option<proto::MemberRef> {
    Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId(id.into())) })
}

/// A setting from the environment, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The store's configuration in the benchmarks: the default, with
/// `BENCH_KEEP_HISTORY` from the environment.
pub fn store_config() -> StoreConfig {
    let default = StoreConfig::default();
    StoreConfig { keep_history: env_or("BENCH_KEEP_HISTORY", default.keep_history), ..default }
}

/// A comma-separated list from the environment, else `default`.
pub fn env_list<T: std::str::FromStr + Clone>(name: &str, default: &[T]) -> Vec<T> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect::<Vec<T>>())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// A tansu broker with memory storage, stopped when dropped.
pub struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts tansu on a free port; returns it and its address.
pub fn start_tansu() -> Result<(Tansu, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("tcp://{addr}");
    let child = Command::new("tansu")
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting tansu (make deps installs it)")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        if Instant::now() > deadline {
            bail!("tansu did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((Tansu(child), addr))
}

pub mod load;
pub mod report;

/// The API key every benchmark client sends (made once per run, every
/// scope): servers are measured with authentication on, as they run.
pub fn api_key() -> &'static (String, omnifold_server::auth::KeysFile) {
    static KEY: std::sync::OnceLock<(String, omnifold_server::auth::KeysFile)> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let (key, entry) = omnifold_server::auth::new_api_key("bench", &omnifold_server::Scope::ALL);
        (key, omnifold_server::auth::KeysFile { key: vec![entry] })
    })
}

/// An authenticator that knows [`api_key`], for servers run in process.
pub fn authenticator() -> Result<Arc<omnifold_server::Authenticator>> {
    Ok(Arc::new(omnifold_server::Authenticator::with_keys(&api_key().1)?))
}

/// Writes a keys file holding [`api_key`] into `dir`, for `omnifold serve`
/// (`OMNIFOLD_AUTH__KEYS_FILE`).
pub fn keys_file(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let path = dir.join("bench-keys.toml");
    std::fs::write(&path, toml::to_string(&api_key().1)?)?;
    Ok(path)
}

/// A channel whose calls carry a key.
pub type Authed = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

pub use omnifold_server::auth::Bearer;

/// Credentials for `key`, or why it cannot be sent.
pub fn bearer(key: &str) -> Result<Bearer> {
    Bearer::new(key).context("the key is not a header value")
}

/// Connects to `url` sending [`api_key`].
pub async fn connect(url: &str) -> Result<Authed> {
    let channel = tonic::transport::Channel::from_shared(url.to_owned())?.tcp_nodelay(true).connect().await?;
    Ok(tonic::service::interceptor::InterceptedService::new(channel, bearer(&api_key().0)?))
}
