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
pub use omnifold_server::auth::Bearer;
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::{Message as _, Offset, TopicPartitionList};

pub const BIN: &str = env!("CARGO_BIN_EXE_omnifold");

/// The cluster secret every test instance signs its own records with.
pub const SECRET: &str = "e2e-test-secret-0123456789abcdef0123456789";

/// The API key every test client sends; it holds every scope. Tests of
/// authentication itself make their own keys.
pub const API_KEY: &str = "omni_e2eTestKeyEveryScope0123456789abcdefgh";

/// A keys file holding [`API_KEY`] (written once per test binary).
pub fn keys_file() -> std::path::PathBuf {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("e2e-keys.toml");
        let scopes: Vec<String> = omnifold_server::Scope::ALL.iter().map(|s| format!("\"{}\"", s.name())).collect();
        let text = format!(
            "[[key]]\nname = \"e2e\"\nsha256 = \"{}\"\nscopes = [{}]\n",
            omnifold_server::auth::key_hash(API_KEY),
            scopes.join(", ")
        );
        // Several test binaries write the same text: each through its own file and a rename.
        let tmp = dir.join(format!("e2e-keys.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    })
    .clone()
}

/// A channel whose calls carry a key.
pub type Conn = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// A connection to `url` that sends [`API_KEY`].
pub async fn connect(url: &str) -> Result<Conn, tonic::transport::Error> {
    connect_as(url, Some(API_KEY)).await
}

/// A connection to `url` that sends `token` (an API key or a JWT), or nothing.
pub async fn connect_as(url: &str, token: Option<&str>) -> Result<Conn, tonic::transport::Error> {
    let channel = tonic::transport::Channel::from_shared(url.to_owned()).unwrap().connect().await?;
    let key = token.map_or_else(Bearer::none, |t| Bearer::new(t).unwrap());
    Ok(tonic::service::interceptor::InterceptedService::new(channel, key))
}

pub fn free_port() -> u16 {
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

/// A tansu broker on a free loopback port, killed on drop: in memory, or
/// in a sqlite file that survives a stop and a start (outage tests).
pub struct Broker {
    child: Option<Child>,
    pub addr: String,
    /// The directory of the sqlite storage, when persistent.
    storage: Option<std::path::PathBuf>,
}

impl Broker {
    pub fn start() -> Broker {
        let mut b = Broker { child: None, addr: format!("127.0.0.1:{}", free_port()), storage: None };
        b.restart();
        b
    }

    /// A broker whose data lives in `dir` (sqlite), so it can be stopped
    /// and started again on the same port with everything it had.
    pub fn start_persistent(dir: &Path) -> Broker {
        let mut b = Broker { child: None, addr: format!("127.0.0.1:{}", free_port()), storage: Some(dir.to_owned()) };
        b.restart();
        b
    }

    /// Kills the broker: clients see connections refused.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        let url = format!("tcp://{}", self.addr);
        let bin = std::env::var("TANSU").unwrap_or_else(|_| "tansu".into());
        let storage = if self.storage.is_some() { "sqlite://tansu.db" } else { "memory://tansu/" };
        let mut cmd = Command::new(&bin);
        cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", storage])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(dir) = &self.storage {
            cmd.current_dir(dir);
        }
        self.child =
            Some(cmd.spawn().unwrap_or_else(|e| panic!("cannot start `{bin}` ({e}); install it with `make deps`")));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&self.addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {}", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Topic names and settings of one test, passed to the binary as environment.
#[derive(Clone)]
pub struct Setup {
    pub brokers: String,
    pub topic: String,
    pub dlq: String,
    pub identity: String,
    pub owners: String,
    pub partitions: i32,
    pub extra_env: BTreeMap<String, String>,
}

impl Setup {
    pub fn new(broker: &Broker, name: &str, partitions: i32) -> Setup {
        Setup::on(&broker.addr, name, partitions)
    }

    /// The same on any cluster, for example librdkafka's mock cluster.
    pub fn on(brokers: &str, name: &str, partitions: i32) -> Setup {
        Setup {
            brokers: brokers.to_owned(),
            topic: format!("{name}.events"),
            dlq: format!("{name}.dlq"),
            identity: format!("{name}.identity"),
            owners: format!("{name}.owners"),
            partitions,
            // These tests fold events from months and years ago next to
            // probes dated now: a dedupe window of ten years keeps every one
            // of them in it (the window itself is tested on its own).
            extra_env: BTreeMap::from([
                ("OMNIFOLD_STORE__DEDUPE_RETENTION_HOURS".into(), "87600".into()),
                ("OMNIFOLD_AUTH__KEYS_FILE".into(), keys_file().display().to_string()),
            ]),
        }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("OMNIFOLD_BROKERS", &self.brokers)
            .env("OMNIFOLD_KAFKA__TOPIC", &self.topic)
            .env("OMNIFOLD_KAFKA__DEAD_LETTER_TOPIC", &self.dlq)
            .env("OMNIFOLD_KAFKA__IDENTITY_TOPIC", &self.identity)
            .env("OMNIFOLD_KAFKA__OWNERSHIP_TOPIC", &self.owners)
            .env("OMNIFOLD_KAFKA__AUDIT_TOPIC", format!("{}.audit", self.topic))
            .env("OMNIFOLD_KAFKA__GROUP_ID", format!("{}.group", self.topic))
            .env("OMNIFOLD_KAFKA__INTERNAL_SECRET", SECRET)
            .env("OMNIFOLD_API_KEY", API_KEY)
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
        Stack::start_env(name, partitions, &[])
    }

    /// A stack whose store keeps every event (`store.keep_history`), for
    /// exact reads as of a past instant.
    pub fn start_with_history(name: &str, partitions: i32) -> Stack {
        Stack::start_env(name, partitions, &[("OMNIFOLD_STORE__KEEP_HISTORY", "true")])
    }

    fn start_env(name: &str, partitions: i32, env: &[(&str, &str)]) -> Stack {
        let broker = Broker::start();
        let mut setup = Setup::new(&broker, name, partitions);
        setup.extra_env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
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
    /// The port of its Prometheus endpoint, when it was started with one.
    metrics_port: Option<u16>,
}

impl Service {
    pub fn start(setup: &Setup, data: &Path) -> Service {
        Service::start_with(setup, data, &[])
    }

    /// Starts with a Prometheus endpoint on a free port ([`Service::metrics`]).
    pub fn start_with_metrics(setup: &Setup, data: &Path) -> Service {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut service = Service::start_with(setup, data, &[("OMNIFOLD_SERVER__METRICS_LISTEN", listen.as_str())]);
        service.metrics_port = Some(port);
        service
    }

    /// The port of its operator HTTP endpoint (`start_with_metrics`).
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port.expect("started with start_with_metrics")
    }

    /// Its Prometheus page.
    pub async fn metrics(&self) -> String {
        http_get(self.metrics_port.expect("started with start_with_metrics"), "/metrics").await
    }

    /// Starts with extra environment (for example a failpoint).
    pub fn start_with(setup: &Setup, data: &Path, env: &[(&str, &str)]) -> Service {
        Service::try_start_with(setup, data, env).unwrap_or_else(|status| panic!("omnifold serve exited: {status}"))
    }

    /// Starts `omnifold serve`; its exit status if it ended before serving
    /// (a failpoint reached at once).
    pub fn try_start_with(
        setup: &Setup,
        data: &Path,
        env: &[(&str, &str)],
    ) -> Result<Service, std::process::ExitStatus> {
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
        match line.trim().strip_prefix("omnifold serving gRPC on ") {
            Some(addr) => Ok(Service { child, grpc: format!("http://{addr}"), metrics_port: None }),
            None => Err(child.wait().unwrap()),
        }
    }

    /// Whether the process has ended (a failpoint's abort).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
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
        let status = self.child.wait().unwrap();
        if !status.success() {
            eprintln!("omnifold serve ended with {status} after SIGTERM");
        }
        status
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

    pub async fn profiles(&self) -> proto::profile_service_client::ProfileServiceClient<Conn> {
        proto::profile_service_client::ProfileServiceClient::new(connect(&self.grpc).await.unwrap())
    }

    pub async fn loyalty(&self) -> proto::loyalty_service_client::LoyaltyServiceClient<Conn> {
        proto::loyalty_service_client::LoyaltyServiceClient::new(connect(&self.grpc).await.unwrap())
    }

    pub async fn admin(&self) -> proto::admin_service_client::AdminServiceClient<Conn> {
        proto::admin_service_client::AdminServiceClient::new(connect(&self.grpc).await.unwrap())
    }

    /// `AdminService.GetPartitionStatus`.
    pub async fn status(&self) -> proto::GetPartitionStatusResponse {
        let mut admin = self.admin().await;
        admin.get_partition_status(proto::GetPartitionStatusRequest {}).await.unwrap().into_inner()
    }

    /// The `grpc.health.v1` status of one service name ("" for the server).
    pub async fn health(&self, service: &str) -> i32 {
        let channel = tonic::transport::Channel::from_shared(self.grpc.clone()).unwrap().connect().await.unwrap();
        let mut c = tonic_health::pb::health_client::HealthClient::new(channel);
        c.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status
    }

    /// Waits until the health service reports `status` for `service`.
    pub async fn wait_health(&self, service: &str, status: i32) {
        eventually(&format!("health of `{service}` to be {status}"), Duration::from_secs(60), || async {
            (self.health(service).await == status).then_some(())
        })
        .await;
    }

    /// Records applied so far, summed over partitions (from the store).
    pub async fn consumed(&self) -> i64 {
        let Ok(mut admin) = connect(&self.grpc).await.map(proto::admin_service_client::AdminServiceClient::new) else {
            return -1;
        };
        match admin.get_partition_status(proto::GetPartitionStatusRequest {}).await {
            Ok(r) => r.into_inner().partitions.iter().map(|p| p.next_offset).sum(),
            Err(_) => -1,
        }
    }

    /// The next offset the store holds for each partition.
    pub async fn next_offsets(&self) -> Vec<i64> {
        let Ok(mut admin) = connect(&self.grpc).await.map(proto::admin_service_client::AdminServiceClient::new) else {
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

/// An HTTP/1.1 request on localhost: the status, the headers (names in
/// lower case) and the body.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a head and a body");
    let head = String::from_utf8(out[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, out[split + 4..].to_vec())
}

/// A plain HTTP GET on localhost (the metrics endpoint); the whole answer.
pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of a counter or gauge in a Prometheus text page (0 when absent).
pub fn metric(page: &str, name: &str) -> u64 {
    page.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A labelled series' values by the value of `label`: for
/// `name{partition="1"} 3`, `{1: 3}`.
pub fn metric_by(page: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let open = format!("{name}{{");
    let key = format!("{label}=\"");
    page.lines()
        .filter(|l| l.starts_with(&open))
        .filter_map(|l| {
            let at = l.find(&key)? + key.len();
            let value = &l[at..at + l[at..].find('"')?];
            let n = l.split_whitespace().last()?.parse::<f64>().ok()?;
            Some((value.to_owned(), n as u64))
        })
        .collect()
}

/// One product view of `member`, its `n`th (event id `{member}-view-{n}`), a
/// quarter of an hour ago.
pub fn view(member: &str, n: u32) -> (String, Vec<u8>) {
    let subject = format!(r#"{{"memberId":"{member}"}}"#);
    let payload = format!(r#""productViewed":{{"sku":"SKU-{n}","category":"shoes"}}"#);
    (member.to_owned(), json_event(&format!("{member}-view-{n}"), &days_ago(0.01), "MOBILE_APP", &subject, &payload))
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

/// Now as Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// An instant `days` before now, as RFC 3339.
pub fn days_ago(days: f64) -> String {
    omnifold_core::time::rfc3339(now_ms() - (days * 86_400_000.0) as i64)
}

/// Redeems through the API like a careful client: asks again with the same
/// request id while the answer is IN_PROGRESS or UNAVAILABLE (with a short
/// pause, as a client retry policy would), until it is decided.
pub async fn redeem_until_decided(
    grpc: &str,
    member_id: &str,
    request: &str,
    points: i64,
) -> proto::RedeemPointsResponse {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(Instant::now() < deadline, "{request} was never decided");
        let Ok(mut c) = connect(grpc).await.map(proto::loyalty_service_client::LoyaltyServiceClient::new) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let asked = c
            .redeem_points(proto::RedeemPointsRequest {
                member: member(member_id),
                request_id: request.into(),
                points,
                channel: proto::Channel::MobileApp as i32,
                reward: "voucher".into(),
            })
            .await;
        match asked {
            Ok(r) if r.get_ref().status != proto::RedemptionStatus::InProgress as i32 => return r.into_inner(),
            Ok(_) => {}
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::NotFound) => {}
            Err(s) => panic!("{request}: {s}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The request ids of a member's REDEEM ledger entries, as many times as
/// each appears.
pub async fn redeemed_request_ids(service: &Service, member_id: &str) -> Vec<String> {
    let mut c = service.loyalty().await;
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_ledger(proto::ListLedgerRequest {
                member: member(member_id),
                page_size: 500,
                page_token: page_token.clone(),
                kinds: vec![proto::LedgerEntryKind::Redeem as i32],
                from: None,
                to: None,
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.entries.into_iter().map(|e| e.request_id));
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

/// The per-partition digests of a store (`omnifold dump --digest`).
pub fn digest(setup: &Setup, data: &Path) -> String {
    setup.run(&["dump", "--data-dir", data.to_str().unwrap(), "--digest"])
}

/// The digests of a store rebuilt from the whole topic by `omnifold replay`.
pub fn replayed_digest(setup: &Setup) -> String {
    let fresh = tempfile::tempdir().unwrap();
    let dir = fresh.path().join("store");
    setup.run(&["replay", "--data-dir", dir.to_str().unwrap(), "--idle-ms", "500"]);
    digest(setup, &dir)
}

/// Every record of `topic` (its `partitions`, from the start): read at
/// least to each partition's end as the broker tells it (tansu's may lag
/// behind, never run ahead), then until the topic has been quiet a moment.
pub fn read_topic(setup: &Setup, topic: &str, partitions: i32) -> Vec<rdkafka::message::OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &setup.brokers)
        .set("group.id", format!("{topic}.reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        ends.insert(p, c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1);
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut read_to: BTreeMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ends.iter().any(|(p, end)| read_to[p] < *end) || quiet_since.elapsed() < Duration::from_millis(500) {
        assert!(Instant::now() < deadline, "{topic} read to {read_to:?}, not to {ends:?}");
        let Some(m) = c.poll(Duration::from_millis(50)) else { continue };
        let m = m.unwrap();
        read_to.insert(m.partition(), m.offset() + 1);
        out.push(m.detach());
        quiet_since = Instant::now();
    }
    out
}
