//! What the load generator (`omnifold-load`, its own process) is asked and
//! what it answers, and how a benchmark runs it.

use std::process::Command;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What the load generator asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `grpc.health.v1/Check`: the server's floor.
    Check,
    Profile,
    /// `BatchGetProfiles` of `--batch` members.
    Batch,
    Balance,
    /// `RedeemPoints` of one point with a fresh request id: a round trip
    /// through the log.
    Redeem,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Check => "check",
            Target::Profile => "profile",
            Target::Batch => "batch",
            Target::Balance => "balance",
            Target::Redeem => "redeem",
        }
    }
}

/// One run's figures (latencies in microseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// CPU the load generator used, in cores (1.0 = one core busy).
    pub client_cpu: f64,
}

impl Report {
    /// Whether the client, not the server, may have set the pace: it
    /// used most of a core per core it could have had.
    pub fn client_bound(&self, cores: usize) -> bool {
        self.client_cpu > 0.8 * cores as f64 / 2.0
    }
}

/// CPU time (user + system) this process has used, in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// One load run against `addr`, in a process of its own.
pub struct LoadRun<'a> {
    pub exe: &'a str,
    pub addr: &'a str,
    pub target: Target,
    pub concurrency: usize,
    pub seconds: u64,
    pub members: u64,
    pub rate: Option<f64>,
    pub read_mask: &'a [&'a str],
}

impl LoadRun<'_> {
    pub fn run(&self) -> Result<Report> {
        let mut cmd = Command::new(self.exe);
        cmd.env("OMNIFOLD_API_KEY", &crate::api_key().0);
        cmd.args(["--addr", self.addr, "--target", self.target.name()])
            .args(["--concurrency", &self.concurrency.to_string()])
            .args(["--seconds", &self.seconds.to_string()])
            .args(["--members", &self.members.to_string()]);
        if let Some(r) = self.rate {
            cmd.args(["--rate", &format!("{r:.0}")]);
        }
        if !self.read_mask.is_empty() {
            cmd.args(["--read-mask", &self.read_mask.join(",")]);
        }
        let out = cmd.output().with_context(|| format!("running {}", self.exe))?;
        anyhow::ensure!(
            out.status.success(),
            "the load generator failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        serde_json::from_slice(&out.stdout).context("reading the load generator's report")
    }
}
