//! A paced producer: the bench's event stream written to a topic at a fixed
//! rate, from its own process, so that the load on the server while ingest
//! runs is the fold's and not the producer's. Prints one JSON line with what
//! it sent.
//!
//! `omnifold-produce --brokers 127.0.0.1:9092 --topic events --rate 20000 --seconds 5 --from 500000`

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use omnifold_benches::event;

#[derive(Parser, Debug)]
#[command(about = "paced producer of the bench's event stream (prints one JSON line)")]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Events per second.
    #[arg(long)]
    rate: f64,
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
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    let started = Instant::now();
    let until = Duration::from_secs(args.seconds);
    let mut next = args.from;
    while started.elapsed() < until {
        let due = args.from + (started.elapsed().as_secs_f64() * args.rate) as u64;
        while next < due {
            let (k, v) = event(next, args.members);
            let mut rec = BaseRecord::to(&args.topic).key(&k).payload(&v);
            while let Err((_, r)) = p.send(rec) {
                rec = r;
                p.poll(Duration::from_millis(1));
            }
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
