//! End-to-end harness: a real tansu broker on a free loopback port, the real
//! `omnifold` binary as a child process, and clients for both.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use omnifold_core::partition::partition_for;
use omnifold_proto::v1 as proto;
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::{Message as _, Offset, TopicPartitionList};

pub const BIN: &str = env!("CARGO_BIN_EXE_omnifold");

/// The cluster secret every test instance signs its own records with.
pub const SECRET: &str = "e2e-test-secret-0123456789abcdef0123456789";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` until it returns `Some`, failing after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tansu broker with in-memory storage, killed on drop.
pub struct Broker {
    child: Child,
    pub addr: String,
}

impl Broker {
    pub fn start() -> Broker {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let bin = std::env::var("TANSU").unwrap_or_else(|_| "tansu".into());
        let child = Command::new(&bin)
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
            .unwrap_or_else(|e| panic!("cannot start `{bin}` ({e}); install it with `make deps`"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child, addr }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Topic names and settings of one test, passed to the binary as environment.
#[derive(Clone)]
pub struct Setup {
    pub brokers: String,
    pub topic: String,
    pub dlq: String,
    pub identity: String,
    pub partitions: i32,
    pub extra_env: BTreeMap<String, String>,
}

impl Setup {
    pub fn new(broker: &Broker, name: &str, partitions: i32) -> Setup {
        Setup {
            brokers: broker.addr.clone(),
            topic: format!("{name}.events"),
            dlq: format!("{name}.dlq"),
            identity: format!("{name}.identity"),
            partitions,
            // These tests fold events from months and years ago next to
            // probes dated now: a dedupe window of ten years keeps every one
            // of them in it (the window itself is tested on its own).
            extra_env: BTreeMap::from([("OMNIFOLD_STORE__DEDUPE_RETENTION_HOURS".into(), "87600".into())]),
        }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("OMNIFOLD_BROKERS", &self.brokers)
            .env("OMNIFOLD_KAFKA__TOPIC", &self.topic)
            .env("OMNIFOLD_KAFKA__DEAD_LETTER_TOPIC", &self.dlq)
            .env("OMNIFOLD_KAFKA__IDENTITY_TOPIC", &self.identity)
            .env("OMNIFOLD_KAFKA__GROUP_ID", format!("{}.group", self.topic))
            .env("OMNIFOLD_KAFKA__INTERNAL_SECRET", SECRET)
            .env_remove("OMNIFOLD_CONFIG")
            .envs(&self.extra_env);
        c
    }

    /// Runs the binary with `args` and returns its stdout; fails on a non-zero exit.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Events applied per member key in the store at `data` (read-only dump).
    pub fn events_applied(&self, data: &Path) -> BTreeMap<String, u64> {
        let dump = self.run(&["dump", "--data-dir", data.to_str().unwrap()]);
        dump.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["key"].as_str().unwrap().to_owned(), v["member"]["version"]["events_applied"].as_u64().unwrap())
            })
            .collect()
    }

    pub fn create_topics(&self) {
        let out =
            self.command().args(["topics", "create", "--partitions", &self.partitions.to_string()]).output().unwrap();
        assert!(out.status.success(), "topics create: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn producer(&self) -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap()
    }

    /// Produces `(key, value)` records and waits until the broker has them.
    pub fn produce(&self, records: &[(String, Vec<u8>)]) {
        let p = self.producer();
        for (k, v) in records {
            let mut rec = BaseRecord::to(&self.topic).key(k).payload(v);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        p.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        p.flush(Duration::from_secs(30)).unwrap();
    }

    /// Writes one probe event (a search by a probe member) to every
    /// partition and returns the offset each got.
    pub async fn probe(&self, round: u32) -> Vec<i64> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("partitioner", "murmur2_random")
            .create()
            .unwrap();
        let mut offsets = Vec::new();
        for p in 0..self.partitions as u32 {
            let key = (0..)
                .map(|i| format!("probe-{i}"))
                .find(|k| partition_for(k.as_bytes(), self.partitions as u32) == p)
                .unwrap();
            let value = json_event(
                &format!("probe-{p}-{round}-{}", std::process::id()),
                // Now: a probe must never be older than the dedupe window.
                &omnifold_core::time::rfc3339(
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64,
                ),
                "ONLINE_WEB",
                &format!(r#"{{"memberId":"{key}"}}"#),
                r#""searchPerformed":{"query":"probe"}"#,
            );
            let record = FutureRecord::to(&self.topic).key(&key).payload(&value);
            let d = producer.send(record, Duration::from_secs(10)).await.unwrap();
            assert_eq!(d.partition as u32, p, "murmur2 routes the probe where omnifold expects");
            offsets.push(d.offset);
        }
        offsets
    }

    /// Every record of the dead-letter topic.
    pub fn dead_letters(&self, expected: usize) -> Vec<proto::DeadLetter> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("{}.reader", self.dlq))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.dlq, 0, Offset::Beginning).unwrap();
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while out.len() < expected && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                out.push(proto::DeadLetter::decode(m.payload().unwrap_or_default()).unwrap());
            }
        }
        out
    }
}

/// A broker, fresh topics and a service on a fresh store: what most tests
/// need. Bind every field (`broker: _broker`, not `..`), broker first, so the
/// broker lives as long as the test and the service stops before it.
pub struct Stack {
    pub broker: Broker,
    pub data: tempfile::TempDir,
    pub setup: Setup,
    pub service: Service,
}

impl Stack {
    pub fn start(name: &str, partitions: i32) -> Stack {
        let broker = Broker::start();
        let setup = Setup::new(&broker, name, partitions);
        setup.create_topics();
        let data = tempfile::tempdir().unwrap();
        let service = Service::start(&setup, data.path());
        Stack { broker, data, setup, service }
    }
}

/// A running `omnifold serve`.
pub struct Service {
    child: Child,
    pub grpc: String,
}

impl Service {
    pub fn start(setup: &Setup, data: &Path) -> Service {
        Service::start_with(setup, data, &[])
    }

    /// Starts with extra environment (for example a failpoint).
    pub fn start_with(setup: &Setup, data: &Path, env: &[(&str, &str)]) -> Service {
        let mut child = setup
            .command()
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr =
            line.trim().strip_prefix("omnifold serving gRPC on ").unwrap_or_else(|| panic!("unexpected: {line}"));
        Service { child, grpc: format!("http://{addr}") }
    }

    /// SIGKILL: no chance to finish a batch or flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
        self.child.wait().unwrap()
    }

    /// Waits for the process to end on its own (a failpoint's abort).
    pub fn wait_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the service did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub async fn profiles(&self) -> proto::profile_service_client::ProfileServiceClient<tonic::transport::Channel> {
        proto::profile_service_client::ProfileServiceClient::connect(self.grpc.clone()).await.unwrap()
    }

    pub async fn loyalty(&self) -> proto::loyalty_service_client::LoyaltyServiceClient<tonic::transport::Channel> {
        proto::loyalty_service_client::LoyaltyServiceClient::connect(self.grpc.clone()).await.unwrap()
    }

    pub async fn admin(&self) -> proto::admin_service_client::AdminServiceClient<tonic::transport::Channel> {
        proto::admin_service_client::AdminServiceClient::connect(self.grpc.clone()).await.unwrap()
    }

    /// Records applied so far, summed over partitions (from the store).
    pub async fn consumed(&self) -> i64 {
        let Ok(mut admin) = proto::admin_service_client::AdminServiceClient::connect(self.grpc.clone()).await else {
            return -1;
        };
        match admin.get_partition_status(proto::GetPartitionStatusRequest {}).await {
            Ok(r) => r.into_inner().partitions.iter().map(|p| p.next_offset).sum(),
            Err(_) => -1,
        }
    }

    /// The next offset the store holds for each partition.
    pub async fn next_offsets(&self) -> Vec<i64> {
        let Ok(mut admin) = proto::admin_service_client::AdminServiceClient::connect(self.grpc.clone()).await else {
            return Vec::new();
        };
        match admin.get_partition_status(proto::GetPartitionStatusRequest {}).await {
            Ok(r) => r.into_inner().partitions.iter().map(|p| p.next_offset).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits until at least `total` records are committed and the fold has
    /// caught up with the events it writes itself (forwards, identity claims
    /// and joins, produced before the batch that caused them commits). A
    /// probe event goes to every partition and is waited for; when a round of
    /// probes lands right after the previous round's, nothing else was
    /// written in between and the fold is idle. (tansu's high watermarks
    /// cannot be used for this: they lag for multi-record batches.)
    pub async fn wait_consumed(&self, setup: &Setup, total: i64) {
        eventually(&format!("at least {total} records consumed"), Duration::from_secs(60), || async {
            (self.consumed().await >= total).then_some(())
        })
        .await;
        let mut previous: Option<Vec<i64>> = None;
        for round in 0.. {
            let probes = setup.probe(round).await;
            eventually("probes consumed", Duration::from_secs(60), || async {
                let next = self.next_offsets().await;
                (next.len() == probes.len() && next.iter().zip(&probes).all(|(n, o)| n > o)).then_some(())
            })
            .await;
            if previous.is_some_and(|p| p.iter().zip(&probes).all(|(p, o)| *o == p + 1)) {
                return;
            }
            previous = Some(probes);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn member(id: &str) -> Option<proto::MemberRef> {
    Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId(id.into())) })
}

pub async fn get(service: &Service, id: &str) -> Result<proto::Profile, tonic::Status> {
    let mut c = service.profiles().await;
    c.get_profile(proto::GetProfileRequest { member: member(id), read_mask: None, as_of: None })
        .await
        .map(|r| r.into_inner())
}

/// A JSON event line built from parts.
pub fn json_event(id: &str, at: &str, channel: &str, subject: &str, payload: &str) -> Vec<u8> {
    format!(r#"{{"eventId":"{id}","occurredAt":"{at}","channel":"{channel}","subject":{subject},{payload}}}"#)
        .into_bytes()
}

/// The same event as protobuf binary.
pub fn to_protobuf(json: &[u8]) -> Vec<u8> {
    let e: proto::Event = serde_json::from_slice(json).unwrap();
    e.encode_to_vec()
}
