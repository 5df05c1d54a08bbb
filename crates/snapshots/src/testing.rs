//! For tests: moto's S3-compatible server (`pip install 'moto[server]'`,
//! done by `make deps`) on a free port, with a bucket, stopped on drop.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test support fails loudly")]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::SnapshotConfig;

/// The bucket every [`Moto`] has.
pub const BUCKET: &str = "snapshots";

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    /// Starts the server and creates [`BUCKET`]; waits until it answers.
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs moto's server, installed by `make deps` (pip install 'moto[server]')");
        let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
        let until = Instant::now() + Duration::from_secs(60);
        while !put_ok(port, &format!("/{BUCKET}")) {
            assert!(Instant::now() < until, "moto's server did not answer on port {port} (`make deps` installs it)");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// The object store options that reach it.
    pub fn options(&self) -> BTreeMap<String, String> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    /// A snapshot config storing under `prefix` in [`BUCKET`].
    pub fn config(&self, prefix: &str) -> SnapshotConfig {
        SnapshotConfig { url: format!("s3://{BUCKET}/{prefix}"), options: self.options(), ..SnapshotConfig::default() }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a plain HTTP PUT of `path` is answered 200.
fn put_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let request =
        format!("PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    s.write_all(request.as_bytes()).is_ok()
        && s.read_to_string(&mut out).is_ok()
        && out.lines().next().is_some_and(|l| l.contains(" 200 "))
}
