//! `omnifold serve`: wires the store, the ingest thread and the gRPC server,
//! and shuts them down in order: stop ingest (last batch committed), flush,
//! then stop serving.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tracing::{info, warn};

use omnifold_ingest::{
    CommandProducer, IngestStatus, OwnerView, Ownership, Processor, RunOptions, Shutdown, SnapshotRequests, Standbys,
};
use omnifold_server::{
    AppState, CommandLog, Commands, Commits, IngestHealth, IngestReport, Owner, OwnerClaim, Owners, PartitionReport,
    Routing, RoutingMode, SnapshotResult, SnapshotTaker, StandbyCopy, Switcher, TakenSnapshot,
};
use omnifold_snapshots::Snapshots;
use omnifold_store::{Store, StoreHandle};

use crate::config::Config;

/// The server's command log is the ingest crate's producer (and signer,
/// for the records only omnifold writes).
struct Log(CommandProducer, omnifold_ingest::Signer);

#[tonic::async_trait]
impl CommandLog for Log {
    async fn append(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.0.append(key.as_bytes(), &value).await.map_err(|e| e.to_string())
    }

    async fn append_event(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.0.append_event(key.as_bytes(), &value).await.map_err(|e| e.to_string())
    }

    async fn append_internal(&self, partition: u32, key: &str, value: Vec<u8>) -> Result<i64, String> {
        self.0.append_internal(partition, key.as_bytes(), &value, &self.1).await.map_err(|e| e.to_string())
    }
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when it is first awaited: a SIGTERM that comes while the instance starts
/// must stop it cleanly too, not kill it.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let interrupt = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        match term {
            Ok(mut term) => tokio::select! {
                _ = interrupt => {}
                _ = term.recv() => {}
            },
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler; stop with SIGINT");
                let _ = interrupt.await;
            }
        }
        #[cfg(not(unix))]
        let _ = interrupt.await;
    }
}

/// The server's view of ingest's health is the ingest crate's status.
#[derive(Debug)]
struct Health(IngestStatus);

impl IngestHealth for Health {
    fn report(&self) -> IngestReport {
        let s = self.0.snapshot();
        IngestReport {
            running: s.running,
            broker_up: s.broker_up,
            broker_since_ms: s.broker_since_ms,
            records_waiting: s.waiting.map_or(0, |w| w.records as u64),
            partitions: s
                .partitions
                .into_iter()
                .filter(|(_, h)| !h.resting)
                .map(|(p, h)| {
                    let lag = h.end.map(|_| h.lag());
                    (p, PartitionReport { stalled: h.stalled.map(|st| (st.reason, st.since_ms, st.retries)), lag })
                })
                .collect(),
        }
    }

    fn broker_down_since(&self) -> Option<i64> {
        self.0.broker_down_since()
    }
}

/// The server's view of partition ownership is the ingest crate's table.
#[derive(Debug)]
struct Owned(Ownership);

impl Owners for Owned {
    fn owner(&self, partition: u32) -> Owner {
        match self.0.view(partition) {
            OwnerView::Here { epoch, applied } => Owner::Here { epoch, applied },
            OwnerView::There { instance, address, epoch, applied } => {
                Owner::There { instance, address, epoch, applied }
            }
            OwnerView::Moving { instance, address, epoch, applied, target, eta_ms } => {
                Owner::Moving { instance, address, epoch, applied, target, eta_ms }
            }
            OwnerView::Unknown => Owner::Unknown,
        }
    }

    fn instance(&self) -> &str {
        self.0.instance()
    }

    fn standby(&self, partition: u32) -> Option<StandbyCopy> {
        self.0.standby(partition).map(|(applied, end)| StandbyCopy { applied, end })
    }

    fn standbys(&self, partition: u32) -> Vec<(String, i64)> {
        self.0.standbys_of(partition)
    }

    fn claims(&self) -> std::collections::BTreeMap<u32, OwnerClaim> {
        self.0
            .claims()
            .into_iter()
            .map(|(p, c)| {
                let claim = OwnerClaim {
                    instance: c.instance,
                    address: c.address,
                    epoch: c.epoch,
                    applied: c.applied,
                    state: c.state.as_str().to_owned(),
                    at_ms: c.at_ms,
                    end: c.end,
                    snapshot: c.snapshot.map(|m| (m.next_offset, m.taken_at_ms)),
                };
                (p, claim)
            })
            .collect()
    }
}

/// `TakeSnapshot` goes to the ingest crate's snapshot thread.
#[derive(Debug)]
struct Snapshotter(SnapshotRequests);

#[tonic::async_trait]
impl SnapshotTaker for Snapshotter {
    async fn take(&self, partitions: Vec<u32>) -> Result<Vec<SnapshotResult>, String> {
        let outcomes = self.0.take(partitions).await?;
        Ok(outcomes
            .into_iter()
            .map(|o| SnapshotResult {
                partition: o.partition,
                outcome: o.result.map(|taken| {
                    taken.map(|t| TakenSnapshot {
                        next_offset: t.manifest.next_offset(),
                        taken_at_ms: t.manifest.taken_at_ms,
                        chunks: t.manifest.snapshot.chunks.len() as u32,
                        bytes: t.manifest.snapshot.bytes(),
                        uploaded_chunks: t.uploaded as u32,
                        uploaded_bytes: t.uploaded_bytes,
                    })
                }),
            })
            .collect())
    }
}

/// The snapshot store, when `[snapshots]` names one. Chunk files pass
/// through a directory beside the store's (`<store.path>.snapshots`).
fn open_snapshots(config: &Config, instance: &str) -> Result<Option<Arc<Snapshots>>> {
    if !config.snapshots.enabled() {
        return Ok(None);
    }
    let local = config.store.path.with_extension("snapshots");
    let snapshots = Snapshots::open(&config.snapshots, local, instance, tokio::runtime::Handle::current())
        .with_context(|| format!("opening the snapshot store {}", config.snapshots.url))?;
    info!(url = %config.snapshots.url, "partition snapshots on");
    Ok(Some(Arc::new(snapshots)))
}

/// The operator's HTTP port, bound at start, and the metrics recorder.
async fn start_metrics(config: &Config) -> Result<Option<(tokio::net::TcpListener, PrometheusHandle)>> {
    if config.server.metrics_listen.is_empty() {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = config.server.metrics_listen.parse().context("server.metrics_listen")?;
    let handle = crate::ops::install()?;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding server.metrics_listen {addr}"))?;
    Ok(Some((listener, handle)))
}

/// A thread beside ingest that runs until shutdown (the identity index,
/// ownership), and how it ended.
struct Background {
    name: &'static str,
    done: tokio::sync::oneshot::Receiver<omnifold_ingest::Result<()>>,
    thread: std::thread::JoinHandle<()>,
}

impl Background {
    fn spawn(
        name: &'static str,
        run: impl FnOnce() -> omnifold_ingest::Result<()> + Send + 'static,
    ) -> std::io::Result<Background> {
        let (tx, done) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            let _ = tx.send(run());
        })?;
        Ok(Background { name, done, thread })
    }

    /// Waits for its result, logs a failure, and hands back the thread to join.
    async fn ended(self) -> std::thread::JoinHandle<()> {
        if let Ok(Err(e)) = self.done.await {
            warn!(thread = self.name, error = %e, "a background thread failed");
        }
        self.thread
    }
}

/// The address this instance advertises to the others, with a warning when
/// it is only a guess and others need it (in a group).
fn advertise(config: &Config, bound: std::net::SocketAddr) -> String {
    let host = std::env::var("HOSTNAME").ok();
    let (advertised, guessed) = config.server.advertised(bound, host.as_deref());
    if guessed && config.kafka.assignment == omnifold_ingest::Assignment::Group {
        warn!(
            address = %advertised,
            "listening on every interface without server.advertise_address: other instances will forward \
             requests to this guess; set the address they can reach"
        );
    }
    advertised
}

/// The change stream, as the fold's sink of committed changes.
struct Published(omnifold_server::Changes);

impl omnifold_ingest::ChangeSink for Published {
    fn wants(&self, partition: u32) -> bool {
        self.0.wants(partition)
    }

    fn committed(&self, c: omnifold_ingest::Committed) {
        self.0.publish(c.partition, c.first_offset, c.next_offset, c.changes);
    }
}

/// The profile-changes topic's records, rendered by the server's masking.
struct Feed(omnifold_server::feed::ChangeFeed);

impl omnifold_ingest::ChangeTopic for Feed {
    fn record(
        &self,
        partition: u32,
        key: &str,
        next_offset: i64,
        member: Option<&omnifold_core::Member>,
        audiences: &omnifold_core::audience::Audiences,
    ) -> Option<omnifold_ingest::OutRecord> {
        let r = self.0.record(partition, key, next_offset, member, audiences)?;
        Some(omnifold_ingest::OutRecord { key: Some(r.key.into_bytes()), value: r.value, headers: r.headers })
    }
}

/// How long `serve` waits, before answering, to learn who owns what.
const OWNERSHIP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until the ownership table is read (and the partitions this
/// instance owned last answer again), at most `OWNERSHIP_WAIT`: requests
/// that come meanwhile wait in the listener's backlog instead of being
/// told UNAVAILABLE. A broker that is away at start ends the wait; the
/// instance then answers what it can and the rest UNAVAILABLE.
async fn wait_for_ownership(ownership: &Ownership) {
    let until = tokio::time::Instant::now() + OWNERSHIP_WAIT;
    while !ownership.ready() {
        if tokio::time::Instant::now() >= until {
            warn!(waited = ?OWNERSHIP_WAIT, "partition ownership is not known yet (is the broker away?); serving what this instance can answer");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// After the last batch: a snapshot of each partition this instance
/// folded, so whoever takes them over starts from here.
fn snapshot_on_stop(snapshots: &Snapshots, store: &Store, topic: &str, partitions: &[u32]) {
    for p in partitions {
        match snapshots.take(store, topic, *p, None) {
            Ok(Some(t)) => info!(partition = p, next_offset = t.manifest.next_offset(), "snapshot taken at stop"),
            Ok(None) => {}
            Err(e) => warn!(partition = p, error = %e, "no snapshot at stop; the next owner starts from an older one"),
        }
    }
}

/// How long an audit record may take to reach the broker (through an
/// outage) before it is counted as lost (`omnifold_audit_failures_total`).
const AUDIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// How long shutdown waits for the last reads to let go of the store.
const STORE_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve(config: Config) -> Result<()> {
    let stop = stop_signal();
    let metrics = start_metrics(&config).await?;
    let auth = omnifold_server::Authenticator::from_config(&config.auth).context("[auth]")?;
    let tls = config.server.tls.load().context("[server.tls]")?;
    if auth.is_none() {
        warn!("authentication is off (auth.enabled = false): any caller may read personal data and move points");
    }
    let signer = config.kafka.signer()?;
    let signer_for_audit = signer.clone();
    let signer_for_backfill = signer.clone();
    let store = Store::open(&config.store).with_context(|| format!("opening store {}", config.store.path.display()))?;
    // Bound before any thread starts: an error from here on returns from
    // `main` with nothing of RocksDB's still running.
    let listener =
        TcpListener::bind(&config.server.listen).await.with_context(|| format!("binding {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let http = match config.server.http_listen.as_str() {
        "" => None,
        at => Some(TcpListener::bind(at).await.with_context(|| format!("binding server.http_listen {at}"))?),
    };
    let advertised = advertise(&config, addr);
    let name = omnifold_ingest::instance_name(&config.kafka, &store).context("naming this instance")?;
    let fold = Arc::new(config.fold.clone());
    // Every commit bumps its partition's counter; requests waiting for a
    // verdict on that partition wake up.
    let commits = Commits::default();
    let committed = commits.clone();
    // The store served and folded into; a switch or a reopen replaces it.
    let stores = StoreHandle::new(store);
    // What each commit changed, for WatchProfile (server.watch_buffer_bytes = 0: off).
    let changes = (config.server.watch_buffer_bytes > 0).then(|| {
        omnifold_server::Changes::new(
            config.server.watch_buffer_bytes,
            config.server.max_watchers,
            std::time::Duration::from_millis(config.server.watch_progress_ms),
        )
    });
    let mut processor =
        Processor::on_handle(stores.clone(), fold.clone(), &config.kafka.topic, config.kafka.max_event_bytes, signer)
            .with_member_cache(config.kafka.member_cache_entries, config.kafka.member_cache_bytes)
            .with_on_commit(Arc::new(move |partition| committed.committed(partition)));
    if let Some(published) = changes.clone() {
        processor = processor.with_on_changes(Arc::new(Published(published)));
    }
    // Audiences are evaluated by every fold (a standby's copy keeps them
    // too); only the owner's ingest writes their entries and exits.
    let audiences = Arc::new(config.audiences()?);
    processor = processor.with_audiences(audiences.clone());
    // The standby fold shares the member cache: the two never fold one
    // partition at once (omnifold_ingest::Standbys).
    let standby =
        (config.kafka.standby == omnifold_ingest::Standby::All).then(|| (Standbys::default(), processor.clone()));
    // Changed profiles to the profile-changes topic (only the owner's fold:
    // the standby copy above writes nothing to Kafka).
    if !config.kafka.changes_topic.is_empty() {
        let privacy = Arc::new(config.privacy.clone());
        let feed = omnifold_server::feed::ChangeFeed::new(fold.clone(), privacy, config.kafka.changes_pii);
        processor = processor.with_change_topic(Arc::new(Feed(feed)));
    }
    let status = IngestStatus::default();
    let timeout = std::time::Duration::from_millis(config.server.command_timeout_ms);
    let producer = CommandProducer::new(&config.kafka, timeout).context("creating the command producer")?;
    let backfill_producer = producer.clone();
    let commands = Commands { log: Arc::new(Log(producer, signer_for_backfill.clone())), commits, timeout };
    let shutdown = Shutdown::default();

    let snapshots = open_snapshots(&config, &name)?;
    let (switch_tx, switch_rx) = std::sync::mpsc::sync_channel(1);
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let (kafka, stop_ingest) = (config.kafka.clone(), shutdown.clone());
    let opts = RunOptions {
        switches: Some(switch_rx),
        status: status.clone(),
        store_config: Some(config.store.clone()),
        snapshots: snapshots.clone(),
        standbys: standby.as_ref().map(|(standbys, _)| standbys.clone()),
    };
    // Warm copies of the partitions other instances own, when configured.
    let standby = match standby {
        Some((standbys, processor)) => {
            let (cfg, status, stop) = (config.kafka.clone(), status.clone(), shutdown.clone());
            Some(Background::spawn("standby", move || {
                omnifold_ingest::run_standby(&cfg, &processor, &standbys, &status, &stop)
            })?)
        }
        None => None,
    };
    let ingest_thread = std::thread::Builder::new().name("ingest".into()).spawn(move || {
        let _ = done_tx.send(omnifold_ingest::run(&kafka, processor, stop_ingest, opts));
    })?;

    // The identity index every instance keeps, read from its compacted topic.
    let (index_cfg, index_store, stop_index) = (config.kafka.clone(), stores.clone(), shutdown.clone());
    let index =
        Background::spawn("identity-index", move || omnifold_ingest::run_index(&index_cfg, &index_store, &stop_index))?;

    // Who owns each partition: this instance's claims out, everyone's in.
    let ownership = Ownership::new(&config.kafka, name, &advertised, status.clone());
    let (own_cfg, own, own_store, stop_own) =
        (config.kafka.clone(), ownership.clone(), stores.clone(), shutdown.clone());
    let owners =
        Background::spawn("ownership", move || omnifold_ingest::run_ownership(&own_cfg, &own, &own_store, &stop_own))?;
    info!(instance = ownership.instance(), address = %advertised, "advertising this instance");
    // Snapshots of the partitions this instance folds, on schedule and on demand.
    let (snapshot_requests, snapshot_queue) = omnifold_ingest::snapshot_requests();
    let snapshotter = match snapshots.clone() {
        Some(snaps) => {
            let (cfg, stores, status, stop) = (config.kafka.clone(), stores.clone(), status.clone(), shutdown.clone());
            Some(Background::spawn("snapshots", move || {
                omnifold_ingest::run_snapshots(&cfg, &snaps, &stores, &status, snapshot_queue, &stop)
            })?)
        }
        None => None,
    };
    let mode = match config.server.routing {
        crate::config::Routing::Forward => RoutingMode::Forward,
        crate::config::Routing::Redirect => RoutingMode::Redirect,
    };
    let routing = Routing::new(Arc::new(Owned(ownership.clone())), mode).with_peer_tls(tls.as_ref());

    // Printed before the wait: a request that comes meanwhile waits in the
    // listener's backlog and is answered once ownership is known.
    println!("omnifold serving gRPC on {addr}");
    wait_for_ownership(&ownership).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut app = AppState::new(stores.clone(), &config.kafka.topic, fold)
        .with_read_threads(config.server.read_threads())
        .with_commands(commands)
        .with_ingest(Arc::new(Health(status.clone())))
        .with_routing(routing)
        .with_switcher(Switcher {
            requests: switch_tx,
            store_config: config.store.clone(),
            root: config.server.switch_root(&config.store.path),
        })
        .with_max_request_bytes(config.server.max_request_bytes)
        .with_ready_max_lag(config.server.ready_max_lag)
        .with_max_event_bytes(config.kafka.max_event_bytes);
    if let Some(changes) = changes {
        app = app.with_changes(changes);
    }
    if let Some(auth) = auth {
        app = app.with_auth(Arc::new(auth));
    }
    if let Some(tls) = tls {
        app = app.with_tls(tls);
    }
    let audiences_for_backfill = audiences.clone();
    app = app.with_privacy(config.privacy.clone()).with_audiences(audiences);
    let audit = omnifold_ingest::AuditProducer::new(&config.kafka, signer_for_audit, AUDIT_TIMEOUT)?;
    app = app.with_audit(Arc::new(crate::audit::Audit(audit)));
    if snapshotter.is_some() {
        app = app.with_snapshots(Arc::new(Snapshotter(snapshot_requests)));
    }
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = match http {
        Some(l) => {
            // Not println!: whoever started the process may have stopped
            // reading its output after the first line.
            let _ = writeln!(std::io::stdout(), "omnifold serving HTTP on {}", l.local_addr()?);
            let served = omnifold_server::http::serve_http(l, app.clone(), config.server.http_max_body_bytes, async {
                let _ = http_stop_rx.await;
            });
            Some(tokio::spawn(served))
        }
        None => None,
    };
    let server = tokio::spawn(omnifold_server::run(listener, app, async {
        let _ = stop_rx.await;
    }));
    // Audience backfills of the partitions this instance owns.
    let backfills = {
        let own = ownership.clone();
        let driver = omnifold_ingest::BackfillDriver {
            producer: backfill_producer,
            signer: signer_for_backfill,
            stores: stores.clone(),
            audiences: audiences_for_backfill,
            owns: Arc::new(move |p| matches!(own.view(p), OwnerView::Here { .. })),
        };
        let (cfg, stop) = (config.kafka.clone(), shutdown.clone());
        tokio::spawn(async move { omnifold_ingest::run_backfills(&cfg, driver, stop).await })
    };
    // The operator's port: metrics and probes, until the process ends.
    let ops = metrics.map(|(listener, handle)| {
        let health = Arc::new(Health(status.clone()));
        let served =
            crate::ops::serve(listener, handle.clone(), health, config.server.ready_max_lag, std::future::pending());
        [
            tokio::spawn(async move {
                if let Err(e) = served.await {
                    warn!(error = %e, "the metrics endpoint stopped")
                }
            }),
            tokio::spawn(crate::ops::sample(handle, stores.clone(), status.clone())),
        ]
    });

    let mut folded = Vec::new();
    let ingest = tokio::select! {
        _ = stop => {
            info!("stopping: finishing the current batch");
            folded = status.folded().into_iter().map(|(p, _)| p).collect();
            shutdown.trigger();
            (&mut done_rx).await
        }
        r = &mut done_rx => {
            warn!("ingest stopped on its own");
            r
        }
    };
    shutdown.trigger();
    let _ = stop_tx.send(());
    let _ = http_stop_tx.send(());
    if let Some(task) = http
        && let Ok(Err(e)) = task.await
    {
        warn!(error = %e, "the HTTP API stopped with an error");
    }
    for task in ops.into_iter().flatten() {
        task.abort();
    }
    backfills.abort();
    let _ = backfills.await;
    // Its error is returned only once the threads are joined and the store closed.
    let served = server.await.context("gRPC server task").and_then(|r| r.context("gRPC server"));
    let mut background = vec![index.ended().await, owners.ended().await];
    for b in [snapshotter, standby].into_iter().flatten() {
        background.push(b.ended().await);
    }
    // The threads have sent their result; wait until they have also let go
    // of the store, so it is closed here and not by a thread racing exit.
    tokio::task::block_in_place(|| {
        let _ = ingest_thread.join();
        for thread in background {
            let _ = thread.join();
        }
    });
    if let Some(snaps) = snapshots.as_ref().filter(|_| config.snapshots.on_stop) {
        tokio::task::block_in_place(|| snapshot_on_stop(snaps, &stores.get(), &config.kafka.topic, &folded));
    }
    if let Err(e) = stores.get().flush() {
        warn!(error = %e, "flushing the store failed; the write-ahead log has every commit");
    }
    stores.close(STORE_CLOSE_WAIT).context("closing the store")?;
    served?;
    ingest.context("ingest thread ended without a result")?.context("ingest failed")?;
    info!("stopped cleanly");
    Ok(())
}
