//! No `unwrap()` or `expect()` in the crates' code outside tests: nothing
//! from the network, Kafka or disk is trusted to be well-formed, and a value
//! that cannot be absent by construction says why with
//! `#[allow(clippy::expect_used, reason = "...")]`.
//!
//! clippy enforces the same (`[workspace.lints.clippy]`, `make lint`); this
//! test keeps `make test` holding it without a second build of RocksDB for
//! clippy. It reads each `crates/*/src` file up to its test module (by
//! convention `#[cfg(test)] mod tests` closes a file), skipping comments and
//! the `testing` module (strategies for property tests).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "testing.rs") {
            out.push(path);
        }
    }
}

/// `file:line: text` for each unwrap or expect outside tests and without
/// an allow naming it just above.
fn findings(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.trim();
        if code == "#[cfg(test)]" && lines.get(i + 1).is_some_and(|l| l.trim_start().starts_with("mod ")) {
            break;
        }
        if code.starts_with("//") || !(code.contains(".unwrap()") || code.contains(".expect(")) {
            continue;
        }
        let allowed = lines[i.saturating_sub(6)..i]
            .iter()
            .any(|l| l.contains("clippy::expect_used") || l.contains("clippy::unwrap_used"));
        if !allowed {
            out.push(format!("{}:{}: {code}", path.display(), i + 1));
        }
    }
    out
}

#[test]
fn no_unwrap_or_expect_outside_tests() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&crates).unwrap() {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            sources(&src, &mut files);
        }
    }
    assert!(files.len() > 40, "found only {} source files under {}", files.len(), crates.display());
    let found: Vec<String> = files.iter().flat_map(|f| findings(f)).collect();
    assert!(found.is_empty(), "unwrap/expect on values that may come from outside:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_an_unwrap() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.rs");
    std::fs::write(&file, "fn f(b: &[u8]) -> u8 {\n    *b.first().unwrap()\n}\n#[cfg(test)]\nmod tests {\n    fn g() { None::<u8>.unwrap(); }\n}\n").unwrap();
    let found = findings(&file);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with(":2: *b.first().unwrap()"), "{found:?}");
}
