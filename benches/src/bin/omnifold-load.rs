//! The load generator: gRPC requests against a running omnifold at a fixed
//! concurrency (closed loop) or rate (open loop), from its own process so
//! that its CPU does not count as the server's. Prints one JSON line with
//! the throughput, latency quantiles and the CPU this process used: a run
//! whose CPU use is near the machine's core count measured the client.
//!
//! `omnifold-load --addr 127.0.0.1:50051 --target profile --concurrency 32 --seconds 5`

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;

use omnifold_benches::load::{Report, Target, cpu_seconds};
use omnifold_benches::{Authed, bearer, member_ref};
use omnifold_proto::v1 as proto;

#[derive(Parser, Debug)]
#[command(about = "gRPC load generator for omnifold (prints one JSON line)")]
struct Args {
    /// The server, host:port.
    #[arg(long)]
    addr: String,
    #[arg(long, value_enum, default_value = "check")]
    target: Target,
    /// Requests in flight (closed loop), over this many connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Offered requests/s in total (open loop); unset: as fast as answered.
    #[arg(long)]
    rate: Option<f64>,
    /// Members m-0000000 .. are asked for, spread over this many.
    #[arg(long, default_value_t = 50_000)]
    members: u64,
    /// Members per BatchGetProfiles request.
    #[arg(long, default_value_t = 20)]
    batch: u64,
    /// Read mask paths for GetProfile and BatchGetProfiles (comma separated).
    #[arg(long, value_delimiter = ',')]
    read_mask: Vec<String>,
}

/// The `i`-th member asked for, spread over `members`.
fn nth_member(i: u64, members: u64) -> Option<proto::MemberRef> {
    member_ref(format!("m-{:07}", (i.wrapping_mul(7919)) % members))
}

struct Client {
    profiles: proto::profile_service_client::ProfileServiceClient<Authed>,
    loyalty: proto::loyalty_service_client::LoyaltyServiceClient<Authed>,
    checks: tonic_health::pb::health_client::HealthClient<Authed>,
}

impl Client {
    fn new(channel: Authed) -> Self {
        Client {
            profiles: proto::profile_service_client::ProfileServiceClient::new(channel.clone()),
            loyalty: proto::loyalty_service_client::LoyaltyServiceClient::new(channel.clone()),
            checks: tonic_health::pb::health_client::HealthClient::new(channel),
        }
    }

    async fn request(&mut self, args: &Args, i: u64) -> Result<(), tonic::Status> {
        let mask = (!args.read_mask.is_empty()).then(|| pbjson_types::FieldMask { paths: args.read_mask.clone() });
        match args.target {
            Target::Check => {
                let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
                self.checks.check(req).await.map(|_| ())
            }
            Target::Profile => {
                let req =
                    proto::GetProfileRequest { member: nth_member(i, args.members), read_mask: mask, as_of: None };
                self.profiles.get_profile(req).await.map(|_| ())
            }
            Target::Batch => {
                let members = (0..args.batch).filter_map(|j| nth_member(i * args.batch + j, args.members)).collect();
                let req = proto::BatchGetProfilesRequest { members, read_mask: mask, as_of: None };
                self.profiles.batch_get_profiles(req).await.map(|_| ())
            }
            Target::Balance => {
                let req = proto::GetBalanceRequest { member: nth_member(i, args.members), as_of: None };
                self.loyalty.get_balance(req).await.map(|_| ())
            }
            Target::Redeem => {
                let req = proto::RedeemPointsRequest {
                    member: nth_member(i, args.members),
                    request_id: format!("load-{}-{i}", std::process::id()),
                    points: 1,
                    channel: proto::Channel::MobileApp as i32,
                    reward: String::new(),
                };
                let r = self.loyalty.redeem_points(req).await?;
                if r.get_ref().status == proto::RedemptionStatus::InProgress as i32 {
                    return Err(tonic::Status::deadline_exceeded("no verdict before the deadline"));
                }
                Ok(())
            }
        }
    }
}

async fn worker(args: Arc<Args>, channel: Authed, t: u64, deadline: Instant) -> Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new(3)?;
    let mut client = Client::new(channel);
    let n = args.concurrency as u64;
    // Each worker's ticks are offset by its share of the period, so the
    // requests arrive evenly, not in bursts of `concurrency`.
    let mut tick = args.rate.map(|r| {
        let period = Duration::from_secs_f64(n as f64 / r);
        let start = tokio::time::Instant::now() + period.mul_f64(t as f64 / n as f64);
        let mut i = tokio::time::interval_at(start, period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut i = t;
    while Instant::now() < deadline {
        // Open loop: latency counts from when the request was due.
        let due = match tick.as_mut() {
            Some(tick) => tick.tick().await.into_std(),
            None => Instant::now(),
        };
        i += n;
        match client.request(&args, i).await {
            Ok(()) => {}
            // Members the stream never mentioned.
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => anyhow::bail!("request failed: {s}"),
        }
        hist.record(due.elapsed().as_micros() as u64)?;
    }
    Ok(hist)
}

async fn run(args: Arc<Args>) -> Result<Report> {
    // Every call carries OMNIFOLD_API_KEY, as a real client's would.
    let key = bearer(&std::env::var("OMNIFOLD_API_KEY").context("OMNIFOLD_API_KEY is not set")?)?;
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let endpoint = tonic::transport::Channel::from_shared(format!("http://{}", args.addr))?.tcp_nodelay(true);
        let channel = endpoint.connect().await.context("connecting to the server")?;
        channels.push(tonic::service::interceptor::InterceptedService::new(channel, key.clone()));
    }
    let done = Arc::new(AtomicU64::new(0));
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let deadline = wall0 + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for t in 0..args.concurrency {
        let channel = channels[t % channels.len()].clone();
        let (args, done) = (args.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let h = worker(args, channel, t as u64, deadline).await;
            done.fetch_add(1, Ordering::Relaxed);
            h
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let wall = wall0.elapsed().as_secs_f64();
    Ok(Report {
        requests: all.len(),
        rps: all.len() as f64 / wall,
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
        client_cpu: (cpu_seconds() - cpu0) / wall,
    })
}

fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(run(args))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
