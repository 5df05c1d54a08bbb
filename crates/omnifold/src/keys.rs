//! `omnifold keys`: API keys for callers. A new key is printed once; the
//! keys file keeps only its SHA-256, its name and its scopes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use omnifold_server::Scope;
use omnifold_server::auth::{KeysFile, new_api_key, read_keys};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a key: the key goes to stdout (once; only its hash is kept),
    /// its entry into the keys file.
    New {
        /// Who holds it (shown in logs, the audit topic and errors).
        #[arg(long)]
        name: String,
        /// Comma separated: profile:read, profile:pii, loyalty:read,
        /// loyalty:write, loyalty:adjust, admin, events:write; or `all`.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// The keys file to add it to (made if missing; `auth.keys_file`).
        #[arg(long)]
        file: PathBuf,
        /// This key's own limit in requests a second (0: none), instead of
        /// `auth.rate_per_second`.
        #[arg(long)]
        rate_per_second: Option<u32>,
        /// The consent purpose this key reads for (e.g. marketing): it sees
        /// only members who granted it.
        #[arg(long)]
        purpose: Option<String>,
    },
    /// The keys in a keys file: names and scopes.
    List {
        #[arg(long)]
        file: PathBuf,
    },
}

pub fn run(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::New { name, scopes, file, rate_per_second, purpose } => {
            let scopes = parse_scopes(&scopes)?;
            let key = add_key(&file, &name, &scopes, KeyLimits { rate_per_second, purpose })?;
            eprintln!(
                "added `{name}` ({}) to {}; the key is shown only now:",
                scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(", "),
                file.display()
            );
            println!("{key}");
            Ok(())
        }
        KeysCommand::List { file } => {
            let keys = read_keys(&file)?;
            println!("{:<24} {:<14} scopes", "name", "sha256");
            for k in &keys.key {
                println!(
                    "{:<24} {:<14} {}",
                    k.name,
                    format!("{}…", &k.sha256[..12.min(k.sha256.len())]),
                    k.scopes.join(",")
                );
            }
            Ok(())
        }
    }
}

fn parse_scopes(names: &[String]) -> Result<Vec<Scope>> {
    if names.iter().any(|n| n == "all") {
        return Ok(Scope::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            Scope::parse(n.trim())
                .with_context(|| format!("unknown scope `{n}`; scopes are {}, or all", Scope::names()))
        })
        .collect()
}

/// Adds a new key named `name` to `file` (readable by its owner only) and
/// returns the key.
/// What a key may do beyond its scopes.
#[derive(Debug, Default)]
pub struct KeyLimits {
    pub rate_per_second: Option<u32>,
    pub purpose: Option<String>,
}

pub fn add_key(file: &Path, name: &str, scopes: &[Scope], limits: KeyLimits) -> Result<String> {
    let mut keys = if file.exists() { read_keys(file)? } else { KeysFile::default() };
    if keys.key.iter().any(|k| k.name == name) {
        bail!("{} already has a key named `{name}`; pick another name", file.display());
    }
    let (key, mut entry) = new_api_key(name, scopes);
    entry.rate_per_second = limits.rate_per_second;
    entry.purpose = limits.purpose;
    keys.key.push(entry);
    // The whole file, then a rename: a crash leaves the old file or the new one.
    omnifold_server::Authenticator::with_keys(&keys)?;
    let text = toml::to_string(&keys)?;
    let tmp = file.with_extension("tmp");
    let header = "# omnifold API keys: names, SHA-256 hashes and scopes (`omnifold keys new` adds one).\n";
    crate::tools::write_private(&tmp, format!("{header}{text}").as_bytes())?;
    std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_accepted_by_the_file_it_was_added_to() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.toml");
        let crm = add_key(&file, "crm", &[Scope::ProfileRead], KeyLimits::default()).unwrap();
        let ops = add_key(
            &file,
            "ops",
            &parse_scopes(&["all".into()]).unwrap(),
            KeyLimits { rate_per_second: Some(10), purpose: None },
        )
        .unwrap();
        assert!(
            add_key(&file, "crm", &[], KeyLimits::default())
                .unwrap_err()
                .to_string()
                .contains("already has a key named `crm`")
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&crm) && !text.contains(&ops), "keys are not written down");
        let auth = omnifold_server::Authenticator::with_keys(&read_keys(&file).unwrap()).unwrap();
        let caller = auth.authenticate(Some(format!("Bearer {ops}").as_bytes())).unwrap();
        assert_eq!(caller.name, "ops");
        assert!(Scope::ALL.iter().all(|s| caller.may(*s)));
        assert!(!auth.authenticate(Some(format!("Bearer {crm}").as_bytes())).unwrap().may(Scope::Admin));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let e = parse_scopes(&["profile:write".into()]).unwrap_err().to_string();
        assert!(e.contains("unknown scope `profile:write`"), "{e}");
    }
}
