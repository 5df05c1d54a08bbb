//! The Python example client (docs/clients/python/example.py, grpcio with
//! stubs generated from proto/ as it runs) against a real server: it reads
//! a profile, watches it, redeems points and sees the change; and the
//! CLI's own summary of the same profile.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_reads_watches_and_redeems() {
    let Stack { broker: _broker, data: _data, setup, service } = Stack::start("python-client", 2);
    let subject = r#"{"memberId":"m-1"}"#;
    let order = r#""orderPlaced":{"orderId":"o-1","currency":"CNY","totalMinor":"30000"}"#;
    setup.produce(&[("m-1".into(), json_event("py-order", &days_ago(30.0), "STORE_POS", subject, order))]);
    service.wait_consumed(&setup, 1).await;

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/clients/python/example.py");
    let server = service.grpc.trim_start_matches("http://").to_owned();
    let run = move || {
        std::process::Command::new("python3")
            .arg(&script)
            .args(["--server", &server, "--member", "m-1", "--points", "50"])
            .env("OMNIFOLD_API_KEY", API_KEY)
            .output()
            .expect("python3 runs (make deps installs grpcio and grpcio-tools)")
    };
    let out = tokio::task::spawn_blocking(run).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("profile m-1: tier MEMBER, 300 active points"), "{stdout}");
    assert!(stdout.contains(": ACCEPTED"), "{stdout}");
    assert!(stdout.contains("250 active points"), "the change that spent them: {stdout}");
    // The server agrees.
    let p = get(&service, "m-1").await.unwrap();
    assert_eq!(p.loyalty.unwrap().active_points, 250);

    // The CLI for people: a summary, money in yuan with the currency.
    let out =
        setup.command().env("TZ", "UTC").args(["profile", "get", "m-1", "--server", &service.grpc]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("m-1  (KNOWN_MEMBER)"), "{text}");
    assert!(text.contains("Purchases: 1 orders, 300.00 CNY net"), "{text}");
    assert!(text.contains("250 active points"), "{text}");
    let json = setup.command().args(["profile", "get", "m-1", "--json", "--server", &service.grpc]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["purchases"]["netMinor"], "30000");
}
