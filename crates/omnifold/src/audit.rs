//! `omnifold audit`: the audit trail read back from its topic, and the
//! server's audit log that writes it.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use omnifold_ingest::{AuditProducer, read_audit};
use omnifold_server::audit::{AuditLog, AuditRecord};

use crate::config::Config;

/// The server's audit log: records go to `kafka.audit_topic`, signed.
#[derive(Debug)]
pub struct Audit(pub AuditProducer);

#[tonic::async_trait]
impl AuditLog for Audit {
    async fn append(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.0.append(key.as_bytes(), &value).await.map_err(|e| e.to_string())
    }
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only calls by this caller (a key's name or a token's subject).
    #[arg(long)]
    caller: Option<String>,
    /// Only methods whose name holds this (e.g. AdjustPoints, AdminService).
    #[arg(long)]
    method: Option<String>,
    /// JSON lines (each record with `signed`), instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints the audit trail, oldest first per partition. A record without a
/// valid signature was not written by omnifold and is marked so.
pub fn run(config: &Config, args: &AuditArgs) -> Result<()> {
    let signer = config.kafka.signer()?;
    let stored = read_audit(&config.kafka, &signer, Duration::from_millis(500))
        .with_context(|| format!("reading the audit topic {}", config.kafka.audit_topic))?;
    if !args.json {
        println!("{:<30} {:<20} {:<46} {:<18} request", "at", "caller", "method", "result");
    }
    for s in stored {
        let record: AuditRecord = match serde_json::from_slice(&s.value) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("partition {} offset {}: not an audit record ({e})", s.partition, s.offset);
                continue;
            }
        };
        let keep = args.caller.as_ref().is_none_or(|c| *c == record.caller)
            && args.method.as_ref().is_none_or(|m| record.method.contains(m.as_str()));
        if !keep {
            continue;
        }
        if args.json {
            let mut v = serde_json::to_value(&record)?;
            v["signed"] = serde_json::Value::Bool(s.signed);
            println!("{v}");
        } else {
            let result = if s.signed { record.code.clone() } else { format!("{} UNSIGNED", record.code) };
            println!("{:<30} {:<20} {:<46} {:<18} {}", record.at, record.caller, record.method, result, record.request);
        }
    }
    Ok(())
}
