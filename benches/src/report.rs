//! The benchmark report: each figure printed as a markdown row as it is
//! measured, then written with the machine it ran on to
//! `docs/bench/<name>.md` and `docs/bench/<name>.json`, which are committed.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// One figure: a row of the markdown table, and its numbers for the JSON.
struct Row {
    measure: String,
    text: String,
    value: Value,
}

#[derive(Default)]
pub struct Results {
    rows: Vec<Row>,
}

impl Results {
    /// Prints the figure as a markdown row and keeps it for the report.
    pub fn row(&mut self, measure: impl Into<String>, text: impl Into<String>, value: Value) {
        let row = Row { measure: measure.into(), text: text.into(), value };
        println!("| {} | {} |", row.measure, row.text);
        self.rows.push(row);
    }

    /// Writes `docs/bench/<name>.md` and `.json` (or under `BENCH_REPORT_DIR`).
    pub fn write(&self, name: &str, settings: Value) -> Result<PathBuf> {
        let dir = std::env::var_os("BENCH_REPORT_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/bench"), PathBuf::from);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let machine = machine();
        let figures: Vec<Value> =
            self.rows.iter().map(|r| json!({"measure": r.measure, "text": r.text, "value": r.value})).collect();
        let report = json!({"bench": name, "machine": machine, "settings": settings, "figures": figures});
        let json_path = dir.join(format!("{name}.json"));
        std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
        let mut md = format!(
            "# `{name}` benchmark results\n\nWritten by `cargo bench --workspace --bench {name}` (part of \
             `make bench`); docs/benchmarks.md explains them.\n\n"
        );
        for (k, v) in machine.as_object().into_iter().flatten().chain(settings.as_object().into_iter().flatten()) {
            md.push_str(&format!("- {k}: {}\n", v.as_str().map_or_else(|| v.to_string(), str::to_owned)));
        }
        md.push_str("\n| measure | value |\n| --- | --- |\n");
        for r in &self.rows {
            md.push_str(&format!("| {} | {} |\n", r.measure, r.text));
        }
        std::fs::write(dir.join(format!("{name}.md")), md)?;
        Ok(json_path)
    }
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// What the figures were measured on.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_else(|| "unknown".into());
    json!({
        "date": output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "commit": output("git", &["rev-parse", "--short", "HEAD"]),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "kernel": output("uname", &["-r"]),
        "rustc": output("rustc", &["--version"]),
        "tansu": output("tansu", &["--version"]),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}
