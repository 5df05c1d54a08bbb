//! A paced producer: the bench's event stream written to a topic at a fixed
//! rate, from its own process, so that the load on the server while ingest
//! runs is the fold's and not the producer's. Prints one JSON line with what
//! it sent.
//!
//! `omnifold-produce --brokers 127.0.0.1:9092 --topic events --rate 20000 --seconds 5 --from 500000`
//!
//! With `--file`, it writes `--count` events of the stream as JSON lines
//! instead, for `omnifold replay --file`, and exits.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use rdkafka::producer::Producer;

use omnifold_benches::{event, producer, send};

#[derive(Parser, Debug)]
#[command(about = "paced producer of the bench's event stream (prints one JSON line)")]
struct Args {
    #[arg(long, required_unless_present = "file")]
    brokers: Option<String>,
    #[arg(long, required_unless_present = "file")]
    topic: Option<String>,
    /// Events per second.
    #[arg(long, required_unless_present = "file")]
    rate: Option<f64>,
    /// Write `--count` events as JSON lines to this file instead.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 500_000)]
    count: u64,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The first event of the stream to send (earlier ones were sent before).
    #[arg(long, default_value_t = 0)]
    from: u64,
    #[arg(long, default_value_t = 50_000)]
    members: u64,
}

/// Pacing step: what is due is sent every tick.
const TICK: Duration = Duration::from_millis(5);

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.file {
        return write_file(path, &args);
    }
    let (Some(brokers), Some(topic), Some(rate)) = (&args.brokers, &args.topic, args.rate) else {
        anyhow::bail!("--brokers, --topic and --rate are needed without --file");
    };
    let p = producer(brokers, 5)?;
    let started = Instant::now();
    let until = Duration::from_secs(args.seconds);
    let mut next = args.from;
    while started.elapsed() < until {
        let due = args.from + (started.elapsed().as_secs_f64() * rate) as u64;
        while next < due {
            let (k, v) = event(next, args.members);
            send(&p, topic, &k, &v);
            next += 1;
        }
        p.poll(Duration::ZERO);
        std::thread::sleep(TICK);
    }
    p.flush(Duration::from_secs(60))?;
    let sent = next - args.from;
    let seconds = started.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({"sent": sent, "seconds": seconds, "rate": sent as f64 / seconds}));
    Ok(())
}

/// The stream's events `from .. from + count` as JSON lines.
fn write_file(path: &std::path::Path, args: &Args) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in args.from..args.from + args.count {
        out.write_all(&event(i, args.members).1)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    println!("{}", serde_json::json!({"written": args.count, "file": path}));
    Ok(())
}
