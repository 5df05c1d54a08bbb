//! What an operator reads, against a real broker and the real binary: the
//! Prometheus page moves as ingest and requests do (lag per partition,
//! events, dead letters by reason, batch and commit histograms, gRPC
//! requests by method and code, RocksDB figures), with no member in any
//! label; the probes answer on the same port.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::time::Duration;

use common::*;
use omnifold_proto::v1 as proto;

const WAIT: Duration = Duration::from_secs(60);

/// A labelled series' value, by every label it has.
fn series(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().filter(|l| l.starts_with(&format!("{name}{{"))).find_map(|l| {
        let all = labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")));
        all.then(|| l.split_whitespace().last()?.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_page_moves_with_ingest_and_requests() {
    let broker = Broker::start();
    let setup = Setup::new(&broker, "observe", 2);
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let service = Service::start_with_metrics(&setup, data.path());
    let events: Vec<_> = (0..200).map(|i| view(&format!("m-{i}"), 1)).collect();
    setup.produce(&events);
    // One record that is not an event: a dead letter with its reason.
    setup.produce(&[("m-broken".into(), b"{not json".to_vec())]);
    service.wait_consumed(&setup, events.len() as i64 + 1).await;

    // Lag per partition, as kafka-lag-exporter names it: at the store's
    // offsets, at the partitions' ends, 0 behind.
    let folded: Vec<u64> = service.next_offsets().await.into_iter().map(|o| o as u64).collect();
    assert!(folded.iter().sum::<u64>() > events.len() as u64);
    let page = eventually("the lag of both partitions, caught up", WAIT, || async {
        let page = service.metrics().await;
        let offsets: Vec<u64> =
            metric_by(&page, "kafka_consumergroup_group_offset", "partition").into_values().collect();
        let latest: Vec<u64> = metric_by(&page, "kafka_partition_latest_offset", "partition").into_values().collect();
        let lag = metric_by(&page, "kafka_consumergroup_group_lag", "partition");
        (offsets == folded && latest == folded && lag.values().all(|l| *l == 0)).then_some(page)
    })
    .await;
    assert_eq!(metric_by(&page, "kafka_consumergroup_group_lag", "partition").len(), 2);
    assert_eq!(metric_by(&page, "kafka_consumergroup_group_lag_seconds", "partition").len(), 2);
    assert!(metric(&page, "omnifold_events_applied_total") >= events.len() as u64);
    assert_eq!(metric_by(&page, "omnifold_dead_letters_total", "reason").get("decode"), Some(&1));
    assert!(metric(&page, "omnifold_batch_records_count") > 0);
    assert!(metric(&page, "omnifold_batch_records_sum") > events.len() as u64);
    assert!(metric(&page, "omnifold_commit_seconds_count") > 0);
    assert!(page.contains("omnifold_commit_seconds_bucket{le=\""), "a histogram, with buckets");

    // Requests by method and code.
    for i in 0..3 {
        get(&service, &format!("m-{i}")).await.unwrap();
    }
    assert_eq!(get(&service, "nobody").await.unwrap_err().code(), tonic::Code::NotFound);
    let mut loyalty = service.loyalty().await;
    loyalty.get_balance(proto::GetBalanceRequest { member: member("m-1"), ..Default::default() }).await.unwrap();
    // A redemption with no points to spend: a verdict, counted by status.
    let r = redeem_until_decided(&service.grpc, "m-1", "obs-1", 100).await;
    assert_eq!(r.status, proto::RedemptionStatus::Rejected as i32);
    let page = service.metrics().await;
    let handled = |method: &str, code: &str| {
        series(&page, "grpc_server_handled_total", &[("grpc_method", method), ("grpc_code", code)]).unwrap_or(0.0)
    };
    assert_eq!(handled("GetProfile", "OK"), 3.0);
    assert_eq!(handled("GetProfile", "NotFound"), 1.0);
    assert_eq!(handled("GetBalance", "OK"), 1.0);
    let count = series(&page, "grpc_server_handling_seconds_count", &[("grpc_method", "GetProfile")]);
    assert_eq!(count, Some(4.0));
    assert!(metric_by(&page, "omnifold_redemptions_total", "status").get("rejected") >= Some(&1));

    // RocksDB's figures, sampled every few seconds.
    let page = eventually("the store's figures", WAIT, || async {
        let page = service.metrics().await;
        (metric(&page, "omnifold_rocksdb_memtable_bytes") > 0).then_some(page)
    })
    .await;
    for name in [
        "omnifold_rocksdb_block_cache_usage_bytes",
        "omnifold_rocksdb_pending_compaction_bytes",
        "omnifold_rocksdb_live_data_bytes",
        "omnifold_partitions_folded",
    ] {
        assert!(page.lines().any(|l| l.starts_with(name)), "{name} on the page");
    }
    assert_eq!(metric(&page, "omnifold_partitions_folded"), 2);
    // Every series the shipped Grafana dashboard queries is on the page.
    for name in dashboard_series() {
        assert!(page.lines().any(|l| l.starts_with(&name)), "the dashboard queries {name}, which is not exported");
    }
    // Every series the shipped alerting rules watch is on the page too.
    for name in alert_series() {
        assert!(page.lines().any(|l| l.starts_with(&name)), "an alert watches {name}, which is not exported");
    }
    // Never a member in a label.
    assert!(!page.contains("m-1"), "a member id on the metrics page");

    // The probes, on the same port.
    let port = service.metrics_port();
    assert!(http_get(port, "/livez").await.starts_with("HTTP/1.0 200"));
    let ready = eventually("ready", WAIT, || async {
        let r = http_get(port, "/readyz").await;
        r.starts_with("HTTP/1.0 200").then_some(r)
    })
    .await;
    assert!(ready.ends_with("ready\n"), "{ready}");
}

/// The metric names in the expressions of deploy/grafana-dashboard.json.
fn dashboard_series() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            // A metric name is followed by its label selector.
            for part in expr.split('{').map(|p| p.rsplit(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap())
            {
                if part.starts_with("omnifold_") || part.starts_with("kafka_") || part.starts_with("grpc_") {
                    names.push(part.to_owned());
                }
            }
        }
    }
    assert!(names.len() > 10, "{names:?}");
    names
}

/// The metric names in the expressions of deploy/prometheus-alerts.yaml.
fn alert_series() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus-alerts.yaml");
    let rules: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            assert!(rule["alert"].as_str().is_some() && rule["labels"]["severity"].as_str().is_some(), "{rule:?}");
            // Without label selectors and `by (...)` groupings, what is
            // left that looks like a series name is one.
            let mut expr = rule["expr"].as_str().unwrap().to_owned();
            for (open, close) in [("{", "}"), ("by (", ")")] {
                while let Some(i) = expr.find(open) {
                    let j = i + expr[i..].find(close).unwrap();
                    expr.replace_range(i..=j, " ");
                }
            }
            let words = expr.split(|c: char| !(c.is_alphanumeric() || c == '_'));
            names.extend(
                words
                    .filter(|w| w.starts_with("omnifold_") || w.starts_with("kafka_") || w.starts_with("grpc_"))
                    .map(str::to_owned),
            );
        }
    }
    assert!(names.len() >= 8, "{names:?}");
    names
}

/// A stand-in OpenTelemetry collector: accepts OTLP/HTTP posts and hands
/// over each request's path and body.
async fn collector() -> (u16, tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(socket);
                // One request after another on the connection (keep-alive).
                loop {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or_default().to_owned();
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        conn.read_line(&mut header).await.unwrap();
                        if header.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = header.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    conn.read_exact(&mut body).await.unwrap();
                    let _ = tx.send((path, body));
                    conn.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_calls_and_batches_go_to_the_configured_collector() {
    let (port, mut received) = collector().await;
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, "observe-otlp", 1);
    let endpoint = format!("http://127.0.0.1:{port}/v1/traces");
    setup.extra_env.insert("OMNIFOLD_TELEMETRY__OTLP_ENDPOINT".into(), endpoint);
    setup.extra_env.insert("OMNIFOLD_TELEMETRY__SERVICE_NAME".into(), "omnifold-under-test".into());
    // Export every 100 ms instead of every 5 s.
    setup.extra_env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into());
    setup.create_topics();
    let data = tempfile::tempdir().unwrap();
    let service = Service::start(&setup, data.path());
    setup.produce(&[view("m-1", 1)]);
    service.wait_consumed(&setup, 1).await;
    get(&service, "m-1").await.unwrap();

    // What the collector got: OTLP protobuf with the service's name, a
    // span of the call with its method, and a span of a folded batch.
    let mut seen = Vec::new();
    let wanted: [&[u8]; 3] = [b"omnifold-under-test", b"/omnifold.v1.ProfileService/GetProfile", b"batch"];
    let found = tokio::time::timeout(WAIT, async {
        while let Some((path, body)) = received.recv().await {
            assert_eq!(path, "/v1/traces");
            seen.extend(body);
            if wanted.iter().all(|w| seen.windows(w.len()).any(|x| x == *w)) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the collector got every span it should");
}
