//! `AdminService`'s audience definitions (docs/audiences.md, "Defining
//! audiences"): checked here, written as `audienceDefined` to every
//! partition of the events topic, and answered once the partitions this
//! instance folds have taken them. The fold keeps each partition's latest
//! version and starts a backfill pass for it.

use prost::Message;

use omnifold_core::audience::{Audience, AudienceConfig, Definition, MAX_AUDIENCES};
use omnifold_core::partition::partition_event;
use omnifold_proto::v1 as proto;

use crate::audiences;
use crate::commands::{self, Outcome};
use crate::privacy::Class;
use crate::{AppState, Error, now_millis};

/// A definition a request asks for: what it changes, from which version.
pub(crate) struct Change {
    pub name: String,
    pub config: AudienceConfig,
    pub deleted: bool,
    /// The version the caller read (`None`: create; `Some(0)`: any).
    pub on: Option<u64>,
}

/// Checks `c`, writes it to every partition, waits for this instance's
/// partitions to fold it; the audience as it then stands (or, deleted, its
/// name and version).
pub(crate) async fn define(state: &AppState, c: Change) -> Result<(String, u64), Error> {
    let commands = state
        .commands
        .as_ref()
        .ok_or_else(|| Error::Unavailable("this instance does not accept commands (no producer configured)".into()))?;
    let definition = checked(state, c)?;
    let store = state.store();
    let count = store
        .partition_count(&state.topic)?
        .ok_or_else(|| Error::Unavailable("the store has not joined the events topic yet; retry shortly".into()))?;
    let deadline = tokio::time::Instant::now() + commands.timeout;
    let mut written = Vec::with_capacity(count as usize);
    for p in 0..count {
        let (key, event) = record(&definition, p, count);
        let offset = commands.log.append_internal(p, &key, event.encode_to_vec()).await.map_err(|e| {
            Error::Unavailable(format!(
                "could not write the definition to partition {p} ({e}); send the same request again (the \
                 partitions that have it keep it once)"
            ))
        })?;
        written.push((p, offset));
    }
    // Answered once the partitions folded here have it, woken by their commits.
    for (p, offset) in written.into_iter().filter(|(p, _)| state.answers_for(*p).is_ok()) {
        let folded = || Ok(state.store().next_offset(&state.topic, p)?.filter(|next| *next > offset).map(|_| ()));
        if let Outcome::InProgress = commands::wait_for(&mut commands.commits.subscribe(p), deadline, folded).await? {
            return Err(Error::Unavailable(format!(
                "the definition was written, and partition {p} has not folded it yet; read it with GetAudience"
            )));
        }
    }
    Ok((definition.name, definition.version))
}

/// The definition `c` asks for, checked against the audiences there are.
fn checked(state: &AppState, c: Change) -> Result<Definition, Error> {
    let store = state.store();
    let parts = state.held_partitions(&store)?;
    if state.audiences.get(&c.name).is_some() {
        return Err(Error::FailedPrecondition(format!(
            "audience `{}` is defined in the configuration ([audiences.{}]); change it there",
            c.name, c.name
        )));
    }
    let current = latest(state, &parts, &c.name)?;
    let live = current.as_ref().filter(|d| !d.deleted);
    if c.on.is_none() && audiences::catalogue(state, &store, &parts)?.len() >= MAX_AUDIENCES {
        return Err(Error::ResourceExhausted(format!(
            "at most {MAX_AUDIENCES} audiences are defined (configured and through the API): delete one first"
        )));
    }
    match (c.on, live) {
        (None, Some(_)) => {
            return Err(Error::AlreadyExists(format!("audience `{}` exists; change it with UpdateAudience", c.name)));
        }
        (Some(_), None) => {
            return Err(Error::NotFound(format!(
                "no audience `{}` is defined through the API; create it with CreateAudience",
                c.name
            )));
        }
        (Some(v), Some(d)) if v != 0 && v != d.version => {
            return Err(Error::Aborted(format!(
                "audience `{}` is at version {}, not {v}: read it again (GetAudience) and retry",
                c.name, d.version
            )));
        }
        _ => {}
    }
    if !c.deleted {
        let audience = Audience::compile(&c.name, &c.config, 1).map_err(Error::InvalidArgument)?;
        sensitive(state, &audience)?;
    }
    let version = current.map_or(0, |d| d.version) + 1;
    Ok(Definition { name: c.name, config: c.config, version, deleted: c.deleted })
}

/// The latest definition of `name` any of `parts` has folded.
fn latest(state: &AppState, parts: &[u32], name: &str) -> Result<Option<Definition>, Error> {
    let store = state.store();
    let mut found: Option<Definition> = None;
    for p in parts {
        for d in store.definitions(*p)?.into_iter().filter(|d| d.name == name) {
            if found.as_ref().is_none_or(|f| d.supersedes(f)) {
                found = Some(d);
            }
        }
    }
    Ok(found)
}

/// A rule may not read a sensitive trait: memberships are shown to every
/// profile reader.
fn sensitive(state: &AppState, a: &Audience) -> Result<(), Error> {
    match a.rule.traits().into_iter().find(|t| state.privacy.trait_class(t) == Class::Sensitive) {
        Some(t) => Err(Error::InvalidArgument(format!(
            "rule reads the sensitive trait `{t}` (privacy.sensitive_traits): memberships are shown to every \
             profile reader, so an audience may not tell a sensitive trait"
        ))),
        None => Ok(()),
    }
}

/// The `audienceDefined` record of `d` for partition `p` of `count`: its
/// key and the event.
fn record(d: &Definition, p: u32, count: u32) -> (String, proto::Event) {
    // Two callers' changes of one version both reach every partition,
    // which keeps the same one of them (`Definition::supersedes`).
    let id = format!("audience-defined-{}-{}-{p}-{:016x}", d.name, d.version, rand::random::<u64>());
    let payload = proto::event::Payload::AudienceDefined(proto::AudienceDefined {
        name: d.name.clone(),
        rule: d.config.rule.clone(),
        purpose: d.config.purpose.clone(),
        description: d.config.description.clone(),
        version: d.version,
        deleted: d.deleted,
    });
    partition_event(p, count, id, now_millis(), payload)
}

/// [`define`]s `c` and answers the audience as `GetAudience` then reads it.
pub(crate) async fn define_and_read(state: &AppState, c: Change) -> Result<proto::Audience, Error> {
    let (name, _) = define(state, c).await?;
    state.read(crate::ReadCost::Long, move |s| audiences::get(s, &name)).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use omnifold_core::audience::Audiences;

    use super::*;

    fn state(configured: usize) -> (tempfile::TempDir, AppState) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            omnifold_store::Store::open(&omnifold_store::StoreConfig { path: dir.path().into(), ..Default::default() })
                .unwrap();
        store.bind_partitions("events", 1).unwrap();
        let fold = Arc::new(omnifold_core::FoldConfig::default().validate().unwrap());
        let defs: BTreeMap<String, AudienceConfig> = (0..configured)
            .map(|i| (format!("a{i:04}"), AudienceConfig { rule: "orders > 0".into(), ..Default::default() }))
            .collect();
        let state = AppState::new(omnifold_store::StoreHandle::new(store), "events", fold)
            .with_audiences(Arc::new(Audiences::compile(&defs).unwrap()));
        (dir, state)
    }

    fn create(name: &str, rule: &str) -> Change {
        Change {
            name: name.into(),
            config: AudienceConfig { rule: rule.into(), ..Default::default() },
            deleted: false,
            on: None,
        }
    }

    #[test]
    fn a_definition_is_checked_before_it_is_written() {
        let (_dir, full) = state(MAX_AUDIENCES);
        let err = checked(&full, create("one_more", "orders > 0")).unwrap_err();
        assert!(matches!(err, Error::ResourceExhausted(ref m) if m.contains("at most 1000 audiences")), "{err}");
        let (_dir, state) = state(1);
        let err = checked(&state, create("a0000", "orders > 0")).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(ref m) if m.contains("configuration")), "{err}");
        let err = checked(&state, create("fine", "tier >= BRONZE")).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(ref m) if m.contains("at character 8")), "{err}");
        let update = Change { on: Some(0), ..create("nobody", "orders > 0") };
        assert!(matches!(checked(&state, update), Err(Error::NotFound(_))));
        let made = checked(&state, create("fine", "orders > 1")).unwrap();
        assert_eq!((made.name.as_str(), made.version, made.deleted), ("fine", 1, false));
    }
}
