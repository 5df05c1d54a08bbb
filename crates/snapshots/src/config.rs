//! `[snapshots]`: where snapshots go, how often they are taken, how many
//! are kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Where snapshots go: a directory (`/var/lib/omnifold-snapshots`,
    /// `file:///mnt/shared/omnifold`) or S3-compatible object storage
    /// (`s3://bucket/prefix`). Empty: no snapshots; a new owner replays
    /// its partitions from the topic.
    pub url: String,
    /// Options of the object store, by `object_store`'s names, for example
    /// `aws_endpoint = "http://minio:9000"`, `aws_allow_http = "true"`,
    /// `aws_region`. Credentials come from the usual `AWS_*` environment
    /// variables (or these options). Numbers and booleans are taken as
    /// their text (`aws_allow_http = true`, or from the environment).
    #[serde(deserialize_with = "scalars_as_text")]
    pub options: BTreeMap<String, String>,
    /// Take a snapshot of a partition once this many records were folded
    /// since the last one; 0: not by records.
    pub every_records: u64,
    /// Take a snapshot of a partition that changed at least this often; 0:
    /// not by time.
    pub every_ms: u64,
    /// Take a snapshot of every partition the instance folds as it stops
    /// (after its last batch), so the instances that take them over start
    /// from where it stopped.
    pub on_stop: bool,
    /// Snapshots kept per partition (the newest ones), at least 1. The
    /// oldest snapshot the topic's log still reaches back to is kept too.
    pub retain: usize,
    /// A chunk no kept snapshot names is deleted once it is this old (a
    /// chunk uploaded for a snapshot whose manifest is not written yet is
    /// younger).
    pub chunk_grace_ms: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            url: String::new(),
            options: BTreeMap::new(),
            every_records: 1_000_000,
            every_ms: 600_000,
            on_stop: true,
            retain: 3,
            chunk_grace_ms: 3_600_000,
        }
    }
}

impl SnapshotConfig {
    /// Whether snapshots are on.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub fn validate(&self) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if self.retain == 0 || self.retain > 1_000 {
            return Err(Error::Config(format!("retain must be 1 to 1000, got {}", self.retain)));
        }
        if self.every_ms != 0 && self.every_ms < 1_000 {
            return Err(Error::Config(format!("every_ms must be 0 (off) or at least 1000, got {}", self.every_ms)));
        }
        let scheme = self.url.split_once("://").map(|(s, _)| s);
        match scheme {
            None | Some("file") | Some("s3") => Ok(()),
            Some(other) => Err(Error::Config(format!(
                "url `{}`: scheme {other}:// is not supported; use a directory, file:// or s3://bucket/prefix",
                self.url
            ))),
        }
    }
}

/// A map of strings, numbers or booleans, each as its text.
fn scalars_as_text<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Flag(bool),
        Integer(i64),
        Float(f64),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::Text(s) => s,
                Scalar::Flag(b) => b.to_string(),
                Scalar::Integer(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
            };
            (k, text)
        })
        .collect())
}
