//! The contract's lint: `buf lint` over `proto/` with the repository's
//! `buf.yaml` (STANDARD and COMMENTS: every element documented).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `buf` as `make deps` installs it, or `$BUF`, or on the `PATH`.
fn buf() -> PathBuf {
    if let Some(b) = std::env::var_os("BUF") {
        return b.into();
    }
    let tools = std::env::var_os("OMNIFOLD_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/omnifold/tools")));
    match tools.map(|t| t.join("node_modules/.bin/buf")) {
        Some(b) if b.exists() => b,
        _ => "buf".into(),
    }
}

#[test]
fn the_contract_is_lint_clean_and_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(buf())
        .arg("lint")
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("cannot run buf ({e}): `make deps` installs it"));
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "buf lint found problems in proto/:\n{said}");
}
