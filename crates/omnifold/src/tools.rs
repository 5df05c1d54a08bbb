//! Small tools for humans: `profile get` and `points ...` (gRPC clients of a
//! running `omnifold serve`) and `topics create`.

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use omnifold_ingest::TopicOutcome;

use omnifold_proto::v1 as proto;
use omnifold_proto::wkt::FieldMask;

use crate::client::{Connection, connect};
use crate::config::Config;

#[derive(Subcommand)]
pub enum ProfileCommand {
    /// Print one member's profile: a summary (money in the program currency,
    /// times in local time), or the proto JSON with --json.
    Get {
        /// Member id (or anonymous id).
        member: String,
        /// gRPC address of a running `omnifold serve`.
        #[arg(long, default_value = DEFAULT_SERVER, env = "OMNIFOLD_SERVER")]
        server: String,
        /// Only these top-level fields, comma separated (e.g. purchases,channels).
        #[arg(long, value_delimiter = ',')]
        fields: Vec<String>,
        /// Print the proto JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Print the member's profile, then every change to it, one JSON line
    /// each (with its version, `PARTITION:NEXT_OFFSET`), until interrupted.
    Watch {
        /// Member id (or anonymous id); or --partitions.
        #[arg(required_unless_present = "partitions")]
        member: Option<String>,
        /// Every profile of these partitions instead (`FIRST-LAST`, e.g. 0-3),
        /// on the instance that folds them, from now.
        #[arg(long, value_parser = parse_range, conflicts_with = "member")]
        partitions: Option<proto::PartitionRange>,
        #[arg(long, default_value = DEFAULT_SERVER, env = "OMNIFOLD_SERVER")]
        server: String,
        #[arg(long, value_delimiter = ',')]
        fields: Vec<String>,
        /// Resume after this version (`PARTITION:NEXT_OFFSET` of the last
        /// change or progress seen) instead of starting with the profile now.
        #[arg(long, value_parser = parse_cursor)]
        from: Option<proto::WatchCursor>,
    },
}

/// `FIRST-LAST` (or one partition).
fn parse_range(s: &str) -> Result<proto::PartitionRange, String> {
    let bad = || format!("`{s}` is not a partition range like 0-3");
    let (first, last) = s.split_once('-').unwrap_or((s, s));
    Ok(proto::PartitionRange { first: first.parse().map_err(|_| bad())?, last: last.parse().map_err(|_| bad())? })
}

/// `PARTITION:NEXT_OFFSET`.
fn parse_cursor(s: &str) -> Result<proto::WatchCursor, String> {
    let bad = || format!("`{s}` is not PARTITION:NEXT_OFFSET (e.g. 3:1042), the version of a change");
    let (p, n) = s.split_once(':').ok_or_else(bad)?;
    Ok(proto::WatchCursor { partition: p.parse().map_err(|_| bad())?, next_offset: n.parse().map_err(|_| bad())? })
}

/// Prints each message of a watch as one JSON line.
async fn watch(
    server: &str,
    member: Option<String>,
    partitions: Option<proto::PartitionRange>,
    fields: Vec<String>,
    from: Option<proto::WatchCursor>,
) -> Result<()> {
    let mut client = proto::profile_service_client::ProfileServiceClient::new(connect(server).await?);
    let req = proto::WatchProfileRequest {
        member: member.and_then(member_ref),
        partitions,
        read_mask: Some(FieldMask { paths: fields }),
        resume_from: from.into_iter().collect(),
        ..Default::default()
    };
    let status_error = |status: tonic::Status| anyhow::anyhow!("{:?}: {}", status.code(), status.message());
    let mut stream = client.watch_profile(req).await.map_err(status_error)?.into_inner();
    while let Some(msg) = stream.message().await.map_err(status_error)? {
        println!("{}", serde_json::to_string(&msg)?);
    }
    Ok(())
}

pub async fn profile(cmd: ProfileCommand) -> Result<()> {
    match cmd {
        ProfileCommand::Watch { member, partitions, server, fields, from } => {
            watch(&server, member, partitions, fields, from).await
        }
        ProfileCommand::Get { member, server, fields, json } => {
            let mut client = proto::profile_service_client::ProfileServiceClient::new(connect(&server).await?);
            let req = proto::GetProfileRequest {
                member: Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId(member)) }),
                read_mask: Some(FieldMask { paths: fields }),
                as_of: None,
            };
            match client.get_profile(req).await {
                Ok(resp) if json => print_json(&resp.into_inner()),
                Ok(resp) => {
                    print!("{}", crate::render::profile(&resp.into_inner()));
                    Ok(())
                }
                Err(status) => bail!("{:?}: {}", status.code(), status.message()),
            }
        }
    }
}

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

fn member_ref(member: String) -> Option<proto::MemberRef> {
    Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId(member)) })
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn channel(name: &str) -> Result<i32> {
    proto::Channel::from_str_name(&name.to_ascii_uppercase()).map(|c| c as i32).with_context(|| {
        format!(
            "unknown channel `{name}`; use ONLINE_WEB, MOBILE_APP, MINI_PROGRAM, STORE_POS, MARKETPLACE or CALL_CENTER"
        )
    })
}

#[derive(Subcommand)]
pub enum PointsCommand {
    /// Active, pending, expiring and lifetime points.
    Balance { member: String },
    /// The points ledger, newest first.
    Ledger {
        member: String,
        /// Entries to print.
        #[arg(long, default_value_t = 20)]
        limit: i32,
        /// Only these kinds, comma separated (EARN, REDEEM, REVOKE, EXPIRE, ADJUST).
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
    },
    /// Tier, benefits and progress to the next tier.
    Benefits { member: String },
    /// Redeem points through the log and print the verdict.
    Redeem {
        member: String,
        #[arg(long)]
        points: i64,
        /// Idempotency key: reuse it only to retry the same redemption.
        #[arg(long)]
        request_id: String,
        #[arg(long, default_value = "CALL_CENTER")]
        channel: String,
        #[arg(long, default_value = "")]
        reward: String,
    },
    /// Add (positive) or take (negative) points, with a reason and an actor.
    Adjust {
        member: String,
        #[arg(long, allow_hyphen_values = true)]
        delta: i64,
        #[arg(long)]
        request_id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        actor: String,
    },
}

/// How the points commands print: a summary, or the proto JSON.
pub struct Output {
    pub json: bool,
    /// The program currency, for money in summaries.
    pub currency: String,
}

impl Output {
    fn print<T: serde::Serialize>(&self, v: &T, summary: impl FnOnce(&T) -> String) -> Result<()> {
        if self.json {
            return print_json(v);
        }
        print!("{}", summary(v));
        Ok(())
    }
}

pub async fn points(server: String, out: Output, cmd: PointsCommand) -> Result<()> {
    let mut c = proto::loyalty_service_client::LoyaltyServiceClient::new(connect(&server).await?);
    let status = refused;
    match cmd {
        PointsCommand::Balance { member } => {
            let r = c.get_balance(proto::GetBalanceRequest { member: member_ref(member), as_of: None }).await;
            out.print(&r.map_err(status)?.into_inner(), crate::render::balance)
        }
        PointsCommand::Ledger { member, limit, kinds } => {
            let kinds = kinds
                .iter()
                .map(|k| {
                    proto::LedgerEntryKind::from_str_name(&k.to_ascii_uppercase())
                        .map(|k| k as i32)
                        .with_context(|| format!("unknown kind `{k}`; use EARN, REDEEM, REVOKE, EXPIRE or ADJUST"))
                })
                .collect::<Result<Vec<_>>>()?;
            let req =
                proto::ListLedgerRequest { member: member_ref(member), page_size: limit, kinds, ..Default::default() };
            out.print(&c.list_ledger(req).await.map_err(status)?.into_inner(), crate::render::ledger)
        }
        PointsCommand::Benefits { member } => {
            let r = c.get_benefits(proto::GetBenefitsRequest { member: member_ref(member), as_of: None }).await;
            out.print(&r.map_err(status)?.into_inner(), |b| crate::render::benefits(b, &out.currency))
        }
        PointsCommand::Redeem { member, points, request_id, channel: ch, reward } => {
            let req = proto::RedeemPointsRequest {
                member: member_ref(member),
                request_id,
                points,
                channel: channel(&ch)?,
                reward,
            };
            out.print(&c.redeem_points(req).await.map_err(status)?.into_inner(), |r| {
                crate::render::verdict(r.status, &r.reason, &r.request_id, r.balance.as_ref())
            })
        }
        PointsCommand::Adjust { member, delta, request_id, reason, actor } => {
            let req =
                proto::AdjustPointsRequest { member: member_ref(member), request_id, delta, reason, actor, channel: 0 };
            out.print(&c.adjust_points(req).await.map_err(status)?.into_inner(), |r| {
                crate::render::verdict(r.status, &r.reason, &r.request_id, r.balance.as_ref())
            })
        }
    }
}

#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Create the events, dead-letter and identity-index topics (existing ones are left alone).
    Create {
        /// Partitions of the events topic; fixes how members spread over instances.
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
    /// Copy what producers wrote to the events topic into a new, empty topic
    /// (one with another partition count), each record to its member's
    /// partition there; what omnifold wrote is left out and written again by
    /// the `serve` that folds the new topic. See docs/operations.md,
    /// "Changing the partition count".
    Copy(crate::data::CopyArgs),
}

pub async fn topics(config: &Config, cmd: TopicsCommand) -> Result<()> {
    match cmd {
        TopicsCommand::Create { partitions, replication } => {
            for outcome in omnifold_ingest::create_topics(&config.kafka, partitions, replication)
                .await
                .context("creating topics")?
            {
                match outcome {
                    TopicOutcome::Created(name) => println!("created topic {name}"),
                    TopicOutcome::AlreadyExists(name) => println!("topic {name} already exists"),
                }
            }
            Ok(())
        }
        TopicsCommand::Copy(args) => {
            let config = config.clone();
            tokio::task::spawn_blocking(move || crate::data::copy(&config, args)).await?
        }
    }
}

#[derive(Subcommand)]
pub enum ReportCommand {
    /// Outstanding active and pending points by tier and channel of earning.
    Liability {
        /// The instant (RFC 3339, e.g. 2026-11-30T23:59:59+08:00); default now.
        #[arg(long)]
        as_of: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn report(server: String, cmd: ReportCommand) -> Result<()> {
    let ReportCommand::Liability { as_of, json } = cmd;
    let as_of = as_of.map(|t| rfc3339("--as-of", &t)).transpose()?;
    let mut c = admin(&server).await?;
    let r = c.get_points_liability(proto::GetPointsLiabilityRequest { as_of }).await.map_err(refused)?.into_inner();
    if json {
        return print_json(&r);
    }
    println!("{:<10} {:<14} {:>14} {:>14} {:>10}", "tier", "channel", "active", "pending", "members");
    for row in &r.rows {
        let tier = proto::Tier::try_from(row.tier).map_or("?", |t| t.as_str_name());
        let channel = proto::Channel::try_from(row.channel).map_or("?", |c| c.as_str_name());
        println!("{tier:<10} {channel:<14} {:>14} {:>14} {:>10}", row.active_points, row.pending_points, row.members);
    }
    println!("{:<25} {:>14} {:>14}", "total", r.total_active_points, r.total_pending_points);
    println!("owed (negative balances): {}", r.total_negative_balance);
    Ok(())
}

/// An `AdminService` client of the instance at `server`.
pub async fn admin(server: &str) -> Result<proto::admin_service_client::AdminServiceClient<Connection>> {
    Ok(proto::admin_service_client::AdminServiceClient::new(connect(server).await?))
}

/// A member address from the command line: `TYPE:value` for an
/// identifier (PHONE, EMAIL, LOYALTY_CARD, DEVICE_ID, EXTERNAL), else a
/// member or anonymous id.
fn address(member: String) -> Option<proto::MemberRef> {
    Some(omnifold_server::member_ref(&member))
}

/// `omnifold export`: the member's export document into `out`, which only
/// its owner may read (it holds personal data in clear).
pub async fn export(server: String, member: String, out: std::path::PathBuf) -> Result<()> {
    let mut c = admin(&server).await?;
    let r = c.export_member(proto::ExportMemberRequest { member: address(member) }).await.map_err(refused)?;
    let json = r.into_inner().json;
    if out.as_os_str() == "-" {
        println!("{json}");
        return Ok(());
    }
    write_private(&out, json.as_bytes())?;
    eprintln!("wrote {} ({} bytes)", out.display(), json.len());
    Ok(())
}

/// `omnifold erase`: the erasure job's answer, one line.
pub async fn erase(server: String, member: String, request_id: String, reason: String) -> Result<()> {
    let mut c = admin(&server).await?;
    let req = proto::EraseMemberRequest { member: address(member), reason, request_id };
    let r = c.erase_member(req).await.map_err(refused)?.into_inner();
    let status = proto::ErasureStatus::try_from(r.status).map_or("?", |s| s.as_str_name());
    let when = |t: Option<omnifold_proto::wkt::Timestamp>| {
        t.map_or_else(|| "-".to_owned(), |t| rfc3339_of(t.seconds.saturating_mul(1000)))
    };
    println!(
        "{status} {} (job {}): requested {}, completed {}, deadline {}",
        r.member_id,
        r.request_id,
        when(r.requested_at),
        when(r.completed_at),
        when(r.deadline)
    );
    Ok(())
}

/// Writes `bytes` to a file only its owner may read (mode 0600), synced:
/// exports and keys files hold personal data and secrets.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// A refused request as an error that names its status.
pub fn refused(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// `omnifold status`: one line per partition.
pub async fn status(server: String, json: bool) -> Result<()> {
    let mut c = admin(&server).await?;
    let r = c.get_partition_status(proto::GetPartitionStatusRequest {}).await.map_err(refused)?.into_inner();
    if json {
        return print_json(&r);
    }
    println!("broker {}, ingest {}", r.broker, if r.ingest_running { "running" } else { "stopped" });
    println!(
        "{:>9} {:<24} {:<32} {:>5} {:<11} {:>12} {:>8} {:>12} {:<5} {:<22} {:<24} health",
        "partition",
        "owner",
        "address",
        "epoch",
        "state",
        "applied",
        "lag",
        "local next",
        "here",
        "snapshot",
        "standbys (lag)"
    );
    for p in &r.partitions {
        let health = if p.error.is_empty() { p.state.clone() } else { format!("{}: {}", p.state, p.error) };
        println!(
            "{:>9} {:<24} {:<32} {:>5} {:<11} {:>12} {:>8} {:>12} {:<5} {:<22} {:<24} {}",
            p.partition,
            p.owner_instance,
            p.owner_address,
            p.epoch,
            p.owner_state,
            p.owner_applied,
            if p.lag < 0 { "?".to_owned() } else { p.lag.to_string() },
            p.next_offset,
            if p.local {
                "yes"
            } else if p.standby_applied >= 0 {
                "copy"
            } else {
                "no"
            },
            snapshot_cell(p),
            standbys_cell(p),
            health
        );
    }
    Ok(())
}

/// Unix milliseconds as an RFC 3339 time.
pub fn rfc3339_of(ms: i64) -> String {
    let t = omnifold_proto::wkt::Timestamp {
        seconds: ms.div_euclid(1_000),
        nanos: (ms.rem_euclid(1_000) * 1_000_000) as i32,
    };
    serde_json::to_value(t).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| ms.to_string())
}

/// A partition's latest snapshot as the status table shows it: its offset
/// and how long ago it was taken.
fn snapshot_cell(p: &proto::PartitionStatus) -> String {
    let Some(taken) = p.snapshot_taken.as_ref().filter(|_| p.snapshot_offset >= 0) else {
        return "-".into();
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    format!("{} ({}s ago)", p.snapshot_offset, (now - taken.seconds).max(0))
}

/// The instances keeping a warm copy of a partition, each with its lag.
fn standbys_cell(p: &proto::PartitionStatus) -> String {
    if p.standbys.is_empty() {
        return "-".into();
    }
    let lag = |l: i64| if l < 0 { "?".to_owned() } else { l.to_string() };
    p.standbys.iter().map(|s| format!("{}:{}", s.instance, lag(s.lag))).collect::<Vec<_>>().join(",")
}

/// An RFC 3339 time given on the command line.
pub fn rfc3339(flag: &str, text: &str) -> Result<omnifold_proto::wkt::Timestamp> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .with_context(|| format!("{flag} `{text}` is not an RFC 3339 time like 2026-11-30T23:59:59+08:00"))
}

/// `omnifold switch`: asks a running instance to serve from a rebuilt store.
pub async fn switch(server: String, data_dir: std::path::PathBuf) -> Result<()> {
    let dir = std::fs::canonicalize(&data_dir).with_context(|| format!("{} does not exist", data_dir.display()))?;
    let mut c = admin(&server).await?;
    let r = c
        .switch_store(proto::SwitchStoreRequest { data_dir: dir.to_string_lossy().into_owned() })
        .await
        .map_err(refused)?
        .into_inner();
    for p in &r.partitions {
        println!("partition {} switched at offset {}", p.partition, p.next_offset);
    }
    println!("serving from {}", dir.display());
    Ok(())
}
