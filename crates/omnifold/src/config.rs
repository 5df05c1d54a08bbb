//! The binary's configuration: one TOML file, then `OMNIFOLD_*` environment
//! overrides, then command-line flags; validated once before anything starts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use omnifold_core::FoldConfig;
use omnifold_ingest::IngestConfig;
use omnifold_server::privacy::Class;
use omnifold_snapshots::SnapshotConfig;
use omnifold_store::StoreConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address; port 0 picks a free port (printed at start).
    pub listen: String,
    /// The HTTP API for partners (JSON gateway and event collector,
    /// docs/http.md); empty disables it.
    pub http_listen: String,
    /// The largest HTTP request body, in bytes (413 above it).
    pub http_max_body_bytes: usize,
    /// Prometheus `/metrics` listen address; empty disables it.
    pub metrics_listen: String,
    /// How long RedeemPoints and AdjustPoints wait for the fold's verdict
    /// before answering IN_PROGRESS (the client asks again with the same
    /// request id).
    pub command_timeout_ms: u64,
    /// Long store reads (a past `as_of`, a ledger page, a batch, a scan) in
    /// flight at most on the blocking pool; 0: twice the cores, at least 4.
    pub read_threads: usize,
    /// The URL other instances reach this one's gRPC at, for example
    /// `http://omnifold-0.omnifold:50051`. Empty: `http://` and the bound
    /// address; bound to every interface (0.0.0.0), the host name
    /// (`HOSTNAME`) and the port, with a warning when in a group.
    pub advertise_address: String,
    /// A request for a member another instance owns: `forward` (default)
    /// sends it there and returns the answer; `redirect` answers
    /// FAILED_PRECONDITION with the owner's address in `omnifold-owner`.
    pub routing: Routing,
    /// `SwitchStore` opens only stores in directories under this one.
    /// Empty: the parent directory of `store.path` (where `omnifold replay
    /// --data-dir` builds a store next to the live one).
    pub switch_root: String,
    /// TLS on the gRPC port, optionally mutual (`[server.tls]`).
    pub tls: omnifold_server::TlsConfig,
    /// The largest request message accepted, in bytes; a larger one is
    /// refused with OUT_OF_RANGE naming its size and the limit.
    pub max_request_bytes: usize,
    /// The change stream: the bytes of recent changes kept for watchers to
    /// resume from (a resume point older answers OUT_OF_RANGE).
    pub watch_buffer_bytes: usize,
    /// `WatchProfile` streams served at once; more answer RESOURCE_EXHAUSTED.
    pub max_watchers: usize,
    /// A quiet watch gets a progress message this often.
    pub watch_progress_ms: u64,
    /// Not ready (health of reads, `/readyz`) while a partition folded here
    /// is more than this many records behind its end.
    pub ready_max_lag: i64,
}

/// `server.routing`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    #[default]
    Forward,
    Redirect,
}

impl ServerConfig {
    /// The address to advertise, given the one bound and the machine's
    /// host name: `advertise_address`, else the bound address, else (bound
    /// to every interface) the host name with the bound port. The second
    /// value is true when the address is that guess, for a warning: one
    /// instance needs no address others reach, several do.
    pub fn advertised(&self, bound: std::net::SocketAddr, host: Option<&str>) -> (String, bool) {
        if !self.advertise_address.is_empty() {
            return (self.advertise_address.clone(), false);
        }
        let scheme = if self.tls.enabled() { "https" } else { "http" };
        if !bound.ip().is_unspecified() {
            return (format!("{scheme}://{bound}"), false);
        }
        let host = host.filter(|h| !h.is_empty()).unwrap_or("127.0.0.1");
        (format!("{scheme}://{host}:{}", bound.port()), true)
    }
}

impl ServerConfig {
    /// `switch_root` with the default resolved against the store's path.
    pub fn switch_root(&self, store: &std::path::Path) -> std::path::PathBuf {
        if !self.switch_root.is_empty() {
            return self.switch_root.clone().into();
        }
        match store.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => ".".into(),
        }
    }

    /// `read_threads` with 0 resolved.
    pub fn read_threads(&self) -> usize {
        if self.read_threads == 0 { omnifold_server::default_read_threads() } else { self.read_threads }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:50051".into(),
            http_listen: String::new(),
            http_max_body_bytes: omnifold_server::http::DEFAULT_HTTP_MAX_BODY_BYTES,
            metrics_listen: String::new(),
            command_timeout_ms: 5_000,
            read_threads: 0,
            advertise_address: String::new(),
            routing: Routing::Forward,
            switch_root: String::new(),
            tls: omnifold_server::TlsConfig::default(),
            max_request_bytes: 4 << 20,
            watch_buffer_bytes: omnifold_server::DEFAULT_WATCH_BUFFER_BYTES,
            max_watchers: omnifold_server::DEFAULT_MAX_WATCHERS,
            watch_progress_ms: omnifold_server::DEFAULT_WATCH_PROGRESS.as_millis() as u64,
            ready_max_lag: omnifold_server::DEFAULT_READY_MAX_LAG,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: IngestConfig,
    pub store: StoreConfig,
    pub fold: FoldConfig,
    pub server: ServerConfig,
    pub snapshots: SnapshotConfig,
    pub auth: omnifold_server::AuthConfig,
    pub privacy: omnifold_server::privacy::PrivacyConfig,
    pub telemetry: TelemetryConfig,
    /// `[audiences.NAME]`: audiences shown in profiles (docs/audiences.md).
    pub audiences: BTreeMap<String, omnifold_core::audience::AudienceConfig>,
}

/// `[telemetry]`: traces to an OpenTelemetry collector (logs are
/// `--log-json` / `OMNIFOLD_LOG_JSON`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP over HTTP (protobuf) traces endpoint, e.g.
    /// `http://otel-collector:4318/v1/traces`; empty: no export.
    pub otlp_endpoint: String,
    /// The `service.name` of exported spans.
    pub service_name: String,
    /// The share of traces exported, 0 to 1 (a caller's sampled trace is followed).
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { otlp_endpoint: String::new(), service_name: "omnifold".into(), sample_ratio: 1.0 }
    }
}

const ENV_PREFIX: &str = "OMNIFOLD_";

impl Config {
    /// The audiences compiled. A rule may not read a sensitive trait:
    /// memberships are shown to every profile reader, and would tell it.
    pub fn audiences(&self) -> Result<omnifold_core::audience::Audiences> {
        let audiences = omnifold_core::audience::Audiences::compile(&self.audiences)?;
        for a in audiences.iter() {
            if let Some(t) = a.rule.traits().into_iter().find(|t| self.privacy.trait_class(t) == Class::Sensitive) {
                bail!(
                    "audience `{}` reads the sensitive trait `{t}` (privacy.sensitive_traits): memberships are shown \
                     to every profile reader, so an audience may not tell a sensitive trait",
                    a.name
                );
            }
        }
        Ok(audiences)
    }

    /// Reads `file` (if any), applies overrides from `env` (for example
    /// `OMNIFOLD_KAFKA__BROKERS=host:9092` sets `kafka.brokers`), validates.
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Config> {
        let mut table: toml::Table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let defaults = toml::Table::try_from(Config::default()).context("the defaults as TOML")?;
        for (name, value) in env {
            let Some(keys) = env_path(name) else { continue };
            let value = typed_value(&defaults, &keys, value);
            set_path(&mut table, &keys, value).with_context(|| format!("applying {name}"))?;
        }
        let config: Config = toml::Value::Table(table).try_into().context("invalid configuration")?;
        config.validate()
    }

    /// Checks every section; the result is what the rest of the binary uses.
    pub fn validate(mut self) -> Result<Config> {
        self.fold = self.fold.validate().context("[fold]")?;
        self.store.validate().context("[store]")?;
        self.kafka.validate().context("[kafka]")?;
        self.snapshots.validate().context("[snapshots]")?;
        self.privacy.validate().context("[privacy]")?;
        self.audiences().context("[audiences]")?;
        self.server.listen.parse::<std::net::SocketAddr>().with_context(|| {
            format!("[server] listen `{}` is not an address like 127.0.0.1:50051", self.server.listen)
        })?;
        if !(1..=600_000).contains(&self.server.command_timeout_ms) {
            bail!("[server] command_timeout_ms must be 1 to 600000, got {}", self.server.command_timeout_ms);
        }
        let advertised = &self.server.advertise_address;
        if !(advertised.is_empty() || advertised.starts_with("http://") || advertised.starts_with("https://")) {
            bail!("[server] advertise_address must be a URL like http://host:50051, got `{advertised}`");
        }
        if self.server.tls.enabled() && advertised.starts_with("http://") {
            bail!("[server] advertise_address must be https://... when server.tls.cert is set, got `{advertised}`");
        }
        if !(1024..=(64 << 20)).contains(&self.server.max_request_bytes) {
            bail!("[server] max_request_bytes must be 1024 to 67108864, got {}", self.server.max_request_bytes);
        }
        if !(10..=3_600_000).contains(&self.server.watch_progress_ms) {
            bail!("[server] watch_progress_ms must be 10 to 3600000, got {}", self.server.watch_progress_ms);
        }
        if !self.server.http_listen.is_empty() {
            self.server.http_listen.parse::<std::net::SocketAddr>().with_context(|| {
                format!("[server] http_listen `{}` is not an address like 127.0.0.1:8080", self.server.http_listen)
            })?;
        }
        if !(1024..=(64 << 20)).contains(&self.server.http_max_body_bytes) {
            bail!("[server] http_max_body_bytes must be 1024 to 67108864, got {}", self.server.http_max_body_bytes);
        }
        let t = &self.telemetry;
        if !(t.otlp_endpoint.is_empty()
            || t.otlp_endpoint.starts_with("http://")
            || t.otlp_endpoint.starts_with("https://"))
        {
            bail!(
                "[telemetry] otlp_endpoint must be a URL like http://otel-collector:4318/v1/traces, got `{}`",
                t.otlp_endpoint
            );
        }
        if !(0.0..=1.0).contains(&t.sample_ratio) || t.service_name.trim().is_empty() {
            bail!("[telemetry] sample_ratio must be 0 to 1 and service_name not empty");
        }
        if self.server.ready_max_lag < 0 {
            bail!("[server] ready_max_lag must be 0 or more records, got {}", self.server.ready_max_lag);
        }
        if self.server.read_threads > 1024 {
            bail!("[server] read_threads must be 0 (twice the cores) to 1024, got {}", self.server.read_threads);
        }
        Ok(self)
    }
}

/// The configuration path an `OMNIFOLD_SECTION__KEY` variable sets; none
/// for other variables (those the CLI reads itself have no `__`).
///
/// librdkafka's properties hold dots, which a variable name cannot: under
/// `kafka.librdkafka`, `_` stands for `.`
/// (`OMNIFOLD_KAFKA__LIBRDKAFKA__SECURITY_PROTOCOL` sets `security.protocol`).
fn env_path(name: &str) -> Option<Vec<String>> {
    let path = name.strip_prefix(ENV_PREFIX).filter(|p| p.contains("__"))?;
    let mut keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
    if let [kafka, librdkafka, property] = keys.as_mut_slice()
        && kafka == "kafka"
        && librdkafka == "librdkafka"
    {
        *property = property.replace('_', ".");
    }
    Some(keys)
}

/// An environment value as the type the option at `keys` has: a string
/// option takes the text as it is (`OMNIFOLD_KAFKA__GROUP_ID=2024` is the
/// group "2024"); a number, boolean or list option parses it as TOML. A
/// new entry of a map takes the type of the map's other entries (currency
/// rates are numbers), and is text in a map with none (librdkafka
/// properties, object store options).
fn typed_value(defaults: &toml::Table, keys: &[String], raw: &str) -> toml::Value {
    let Some((last, parents)) = keys.split_last() else {
        return toml::Value::String(raw.to_owned());
    };
    let parent = parents.iter().try_fold(defaults, |t, k| t.get(k).and_then(toml::Value::as_table));
    let like = parent.and_then(|t| t.get(last).or_else(|| t.values().next()));
    match like {
        // A quoted value is a TOML string (as before types came from the
        // defaults): `"1000"` is the text 1000.
        Some(toml::Value::String(_) | toml::Value::Table(_)) | None => match parse_value(raw) {
            toml::Value::String(s) if raw.starts_with('"') => toml::Value::String(s),
            _ => toml::Value::String(raw.to_owned()),
        },
        Some(_) => parse_value(raw),
    }
}

fn parse_value(raw: &str) -> toml::Value {
    // Numbers and booleans keep their type; anything else is a string
    // (and the option's own type then says what is wrong).
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

/// The configuration as TOML with every secret replaced by `<hidden>`:
/// the internal secrets, and any option or property whose name says it
/// holds one (passwords, secret keys, tokens, private keys).
pub fn redacted(config: &Config) -> Result<String> {
    let mut table = toml::Table::try_from(config).context("the configuration as TOML")?;
    redact(&mut table);
    toml::to_string(&table).context("printing the configuration")
}

const HIDDEN: &str = "<hidden>";

fn redact(table: &mut toml::Table) {
    for (name, value) in table.iter_mut() {
        match value {
            toml::Value::Table(inner) => redact(inner),
            _ if !secret_name(name) => {}
            toml::Value::String(s) if !s.is_empty() => *s = HIDDEN.into(),
            toml::Value::Array(items) => {
                for item in items.iter_mut() {
                    *item = toml::Value::String(HIDDEN.into());
                }
            }
            _ => {}
        }
    }
}

fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["secret", "password", "token", "credential", "private", "key.pem", "access_key", "sas_key"]
        .iter()
        .any(|s| name.contains(s))
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<()> {
    let (last, parents) = keys.split_last().context("empty key")?;
    let mut t = table;
    for k in parents {
        let entry = t.entry(k.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry {
            toml::Value::Table(inner) => inner,
            _ => bail!("`{k}` is not a section"),
        };
    }
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, &BTreeMap::new()).unwrap();
        assert_eq!(c.kafka.topic, "omnifold.events");
        assert_eq!(c.fold.program_currency, "CNY");
    }

    #[test]
    fn env_overrides_nested_keys_with_types() {
        let c = Config::load(
            None,
            &env(&[
                ("OMNIFOLD_KAFKA__BROKERS", "10.1.1.1:9092"),
                ("OMNIFOLD_KAFKA__BATCH_MAX_RECORDS", "77"),
                ("OMNIFOLD_STORE__SYNC_WRITES", "true"),
                ("OMNIFOLD_FOLD__RATES__USD", "7.25"),
                ("OMNIFOLD_CONFIG", "ignored.toml"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "10.1.1.1:9092");
        assert_eq!(c.kafka.batch_max_records, 77);
        assert!(c.store.sync_writes);
        assert_eq!(c.fold.to_program("USD", 100), Some(725));
    }

    #[test]
    fn scale_out_settings_come_from_the_environment_and_are_checked() {
        let c = Config::load(
            None,
            &env(&[
                ("OMNIFOLD_SERVER__ROUTING", "redirect"),
                ("OMNIFOLD_SERVER__ADVERTISE_ADDRESS", "http://omnifold-1.omnifold:50051"),
                ("OMNIFOLD_KAFKA__INSTANCE_ID", "omnifold-1"),
                ("OMNIFOLD_KAFKA__SESSION_TIMEOUT_MS", "6000"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.routing, Routing::Redirect);
        assert_eq!((c.kafka.instance_id.as_str(), c.kafka.session_timeout_ms), ("omnifold-1", 6000));
        let any: std::net::SocketAddr = "0.0.0.0:50051".parse().unwrap();
        assert_eq!(c.server.advertised(any, Some("pod-7")), ("http://omnifold-1.omnifold:50051".into(), false));

        let defaults = ServerConfig::default();
        let bound = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(defaults.advertised(bound, Some("pod-7")), ("http://127.0.0.1:7000".into(), false));
        assert_eq!(defaults.advertised(any, Some("pod-7")), ("http://pod-7:50051".into(), true), "a guess");
        assert_eq!(defaults.advertised(any, None), ("http://127.0.0.1:50051".into(), true));
        let e = Config::load(None, &env(&[("OMNIFOLD_SERVER__ADVERTISE_ADDRESS", "omnifold-1:50051")])).unwrap_err();
        assert!(format!("{e:#}").contains("must be a URL"), "{e:#}");
        let e = Config::load(None, &env(&[("OMNIFOLD_SERVER__ROUTING", "sideways")])).unwrap_err();
        assert!(format!("{e:#}").contains("sideways"), "{e:#}");
        let c = Config::load(None, &env(&[("OMNIFOLD_KAFKA__STANDBY", "all")])).unwrap();
        assert_eq!(c.kafka.standby, omnifold_ingest::Standby::All);
        let e = Config::load(None, &env(&[("OMNIFOLD_KAFKA__STANDBY", "all"), ("OMNIFOLD_KAFKA__ASSIGNMENT", "all")]))
            .unwrap_err();
        assert!(format!("{e:#}").contains("standby = \"all\" needs assignment = \"group\""), "{e:#}");
    }

    #[test]
    fn snapshot_settings_come_from_the_environment_and_are_checked() {
        let c = Config::load(
            None,
            &env(&[
                ("OMNIFOLD_SNAPSHOTS__URL", "s3://bucket/omnifold"),
                ("OMNIFOLD_SNAPSHOTS__EVERY_RECORDS", "5000"),
                ("OMNIFOLD_SNAPSHOTS__OPTIONS__AWS_ALLOW_HTTP", "true"),
                ("OMNIFOLD_SNAPSHOTS__OPTIONS__AWS_ENDPOINT", "http://minio:9000"),
            ]),
        )
        .unwrap();
        assert_eq!(c.snapshots.url, "s3://bucket/omnifold");
        assert_eq!(c.snapshots.every_records, 5_000);
        assert_eq!(c.snapshots.options["aws_allow_http"], "true", "a boolean from the environment is its text");
        assert_eq!(c.snapshots.options["aws_endpoint"], "http://minio:9000");
        let err = Config::load(None, &env(&[("OMNIFOLD_SNAPSHOTS__URL", "/x"), ("OMNIFOLD_SNAPSHOTS__RETAIN", "0")]))
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("[snapshots]: invalid snapshot config: retain must be 1 to 1000"),
            "{err:#}"
        );
    }

    #[test]
    fn env_values_take_the_type_of_their_option() {
        let c = Config::load(
            None,
            &env(&[
                ("OMNIFOLD_KAFKA__GROUP_ID", "2024"),
                ("OMNIFOLD_KAFKA__TOPIC", "true"),
                ("OMNIFOLD_SERVER__MAX_WATCHERS", "7"),
                ("OMNIFOLD_KAFKA__LIBRDKAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
                ("OMNIFOLD_KAFKA__LIBRDKAFKA__SOCKET_TIMEOUT_MS", "30000"),
                ("OMNIFOLD_KAFKA__LIBRDKAFKA__CLIENT_RACK", "\"zone-a\""),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.group_id, "2024");
        assert_eq!(c.kafka.topic, "true");
        assert_eq!(c.server.max_watchers, 7);
        assert_eq!(c.kafka.librdkafka["security.protocol"], "SASL_SSL");
        assert_eq!(c.kafka.librdkafka["socket.timeout.ms"], "30000");
        assert_eq!(c.kafka.librdkafka["client.rack"], "zone-a", "a quoted value is a TOML string");
        let err = Config::load(None, &env(&[("OMNIFOLD_SERVER__MAX_WATCHERS", "many")])).unwrap_err();
        assert!(format!("{err:#}").contains("max_watchers"), "{err:#}");
    }

    #[test]
    fn the_printed_configuration_hides_secrets() {
        let secret = "s".repeat(40);
        let c = Config::load(
            None,
            &env(&[
                ("OMNIFOLD_KAFKA__INTERNAL_SECRET", secret.as_str()),
                ("OMNIFOLD_KAFKA__LIBRDKAFKA__SASL_PASSWORD", "hunter2"),
                ("OMNIFOLD_SNAPSHOTS__OPTIONS__AWS_SECRET_ACCESS_KEY", "wJalr"),
                ("OMNIFOLD_KAFKA__GROUP_ID", "visible-group"),
            ]),
        )
        .unwrap();
        let printed = redacted(&c).unwrap();
        for s in [secret.as_str(), "hunter2", "wJalr"] {
            assert!(!printed.contains(s), "{s} printed:\n{printed}");
        }
        assert!(printed.contains("visible-group"));
        assert_eq!(printed.matches(HIDDEN).count(), 3, "{printed}");
        // What is printed is a configuration file that loads.
        let back: Config = toml::from_str(&printed).unwrap();
        assert_eq!(back.kafka.group_id, "visible-group");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let err = Config::load(None, &env(&[("OMNIFOLD_KAFKA__BROKER", "x")])).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `broker`"), "{err:#}");
        let err = Config::load(None, &env(&[("OMNIFOLD_SERVER__LISTEN", "nowhere")])).unwrap_err();
        assert!(format!("{err:#}").contains("listen"), "{err:#}");
        let err = Config::load(None, &env(&[("OMNIFOLD_FOLD__ORDER_HISTORY_DAYS", "10")])).unwrap_err();
        assert!(format!("{err:#}").contains("order_history_days"), "{err:#}");
        let err = Config::load(None, &env(&[("OMNIFOLD_KAFKA__FOLD_NICE", "20")])).unwrap_err();
        assert!(format!("{err:#}").contains("fold_nice must be 0"), "{err:#}");
        let err = Config::load(None, &env(&[("OMNIFOLD_SERVER__READ_THREADS", "5000")])).unwrap_err();
        assert!(format!("{err:#}").contains("read_threads must be 0"), "{err:#}");
        // 0 is resolved from the cores, and a number is taken as it is.
        assert!(Config::load(None, &BTreeMap::new()).unwrap().server.read_threads() >= 4);
        let c = Config::load(None, &env(&[("OMNIFOLD_SERVER__READ_THREADS", "3")])).unwrap();
        assert_eq!(c.server.read_threads(), 3);
    }

    #[test]
    fn shipped_example_config_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/omnifold.toml");
        let c = Config::load(Some(&path), &BTreeMap::new()).unwrap();
        assert_eq!(c, Config::default().validate().unwrap());
        // And it spells every key out, so operators see what they can set.
        fn missing(defaults: &toml::Table, file: &toml::Table, at: &str, out: &mut Vec<String>) {
            for (k, v) in defaults {
                match (v, file.get(k)) {
                    (toml::Value::Table(d), Some(toml::Value::Table(f))) => missing(d, f, &format!("{at}{k}."), out),
                    (_, Some(_)) => {}
                    (toml::Value::Table(d), None) if d.is_empty() => {}
                    (_, None) => out.push(format!("{at}{k}")),
                }
            }
        }
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let file: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut out = Vec::new();
        missing(&defaults, &file, "", &mut out);
        assert!(out.is_empty(), "deploy/omnifold.toml does not spell out: {out:?}");
    }

    #[test]
    fn loyalty_rules_are_configurable_and_checked() {
        let c = Config::load(None, &env(&[("OMNIFOLD_FOLD__LOYALTY__PENDING_DAYS", "14")])).unwrap();
        assert_eq!(c.fold.loyalty.pending_days, 14);
        let err = Config::load(None, &env(&[("OMNIFOLD_FOLD__LOYALTY__NEGATIVE_BALANCE", "forgive")])).unwrap_err();
        assert!(format!("{err:#}").contains("negative_balance"), "{err:#}");
        let err = Config::load(None, &env(&[("OMNIFOLD_FOLD__LOYALTY__EXPIRY_DAYS", "0")])).unwrap_err();
        assert!(format!("{err:#}").contains("loyalty: expiry_days must be between 1 and 36500"), "{err:#}");
    }

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("omnifold.toml");
        std::fs::write(&path, "[kafka]\ntopic = \"a\"\ngroup_id = \"g\"\n").unwrap();
        let c = Config::load(Some(&path), &env(&[("OMNIFOLD_KAFKA__TOPIC", "b")])).unwrap();
        assert_eq!((c.kafka.topic.as_str(), c.kafka.group_id.as_str()), ("b", "g"));
    }
}
