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
//!
//! It also holds the core to its layering: no module names one above it.

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

/// The code of a source file before its test module.
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let end = text.find("#[cfg(test)]\nmod ").unwrap_or(text.len());
    text[..end].lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Modules of the core that a module must not name, by docs/ARCHITECTURE.md
/// ("calls in the core go down this graph only").
const CORE_LAYERS: [(&str, &[&str]); 6] = [
    ("identity.rs", &["crate::fold"]),
    ("audience", &["crate::fold", "crate::identity", "crate::profile", "crate::erasure"]),
    ("profile.rs", &["crate::fold", "crate::identity", "crate::loyalty"]),
    ("loyalty", &["crate::fold", "crate::identity", "crate::profile"]),
    ("book.rs", &["crate::"]),
    ("effects.rs", &["crate::fold", "crate::identity", "crate::profile"]),
];

/// `file: module` for each module a core file names against the layering.
fn upward_calls(core: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (module, forbidden) in CORE_LAYERS {
        let mut files = Vec::new();
        let path = core.join(module);
        if path.is_dir() {
            sources(&path, &mut files)
        } else {
            files.push(path)
        }
        for f in files {
            let code = code_of(&f);
            out.extend(forbidden.iter().filter(|m| code.contains(*m)).map(|m| format!("{}: {m}", f.display())));
        }
    }
    out
}

#[test]
fn core_modules_call_down_only() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src");
    let found = upward_calls(&core);
    assert!(found.is_empty(), "the core's modules call up or across (docs/ARCHITECTURE.md):\n{}", found.join("\n"));
}

#[test]
fn the_layering_check_sees_a_call_up() {
    let dir = tempfile::tempdir().unwrap();
    for (module, _) in CORE_LAYERS {
        let path = dir.path().join(module);
        if module.ends_with(".rs") {
            std::fs::write(&path, "").unwrap();
        } else {
            std::fs::create_dir(&path).unwrap();
        }
    }
    std::fs::write(
        dir.path().join("loyalty/tier.rs"),
        "use crate::fold::apply;\n#[cfg(test)]\nmod tests {\n    use crate::identity;\n}\n",
    )
    .unwrap();
    let found = upward_calls(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].ends_with("tier.rs: crate::fold"), "{found:?}");
}
