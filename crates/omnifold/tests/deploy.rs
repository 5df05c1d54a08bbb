//! The deployment files (deploy/Dockerfile, deploy/compose.yaml,
//! deploy/kubernetes/omnifold.yaml, deploy/systemd/omnifold.service) read
//! as their tools would, and checked against the binary: every flag parses,
//! every `OMNIFOLD_*` variable is an option or a variable the binary reads,
//! each configuration passes `omnifold config check` with its environment,
//! and ports, paths and probes agree with what the configuration listens on
//! and stores where.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::BIN;
use serde_norway::Value;

/// A cluster secret long enough to pass validation, for `${...}` and secret references.
const SECRET: &str = "deploy-test-secret-0123456789abcdef0123456789";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(file)
}

fn yaml(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy(file)).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            let mut v: Value = serde::Deserialize::deserialize(d).unwrap();
            v.apply_merge().unwrap();
            v
        })
        .collect()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|seq| seq.iter().map(s).collect()).unwrap_or_default()
}

/// The flags parse: clap refuses an unknown one before it prints help.
fn assert_flags_parse(args: &[String], what: &str) {
    let out = Command::new(BIN).args(args).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{what}: `omnifold {}` does not parse: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Variables named `OMNIFOLD_*` without `__` are the CLI's own (`[env: ...]` in its help).
fn assert_cli_variables(env: &BTreeMap<String, String>, what: &str) {
    let help = String::from_utf8(Command::new(BIN).arg("--help").output().unwrap().stdout).unwrap();
    for name in env.keys().filter(|k| k.starts_with("OMNIFOLD_") && !k.contains("__")) {
        assert!(help.contains(&format!("[env: {name}")), "{what}: the binary reads no {name}");
    }
}

/// `omnifold config check FILE` with `env`: the configuration a deployment
/// runs with, as `serve` would read it. Returns the effective configuration.
fn assert_config_checks(file: &Path, env: &BTreeMap<String, String>, what: &str) -> toml::Table {
    let out = Command::new(BIN)
        .env_clear()
        .envs(env.iter().filter(|(k, _)| k.contains("__")))
        .args(["config", "check"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// The ports a configuration listens on: gRPC (or the `--listen` flag), HTTP, metrics.
fn listen_ports(effective: &toml::Table, args: &[String]) -> Vec<u16> {
    let server = effective["server"].as_table().unwrap();
    let grpc = flag(args, "--listen").unwrap_or_else(|| server["listen"].as_str().unwrap().to_owned());
    let mut ports = vec![port(&grpc)];
    for key in ["http_listen", "metrics_listen"] {
        let at = server[key].as_str().unwrap();
        if !at.is_empty() {
            ports.push(port(at));
        }
    }
    ports
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).map(|i| args[i + 1].clone())
}

/// The store directory a deployment uses: `--data-dir`, else `store.path`.
fn data_dir(effective: &toml::Table, args: &[String]) -> String {
    flag(args, "--data-dir").unwrap_or_else(|| effective["store"]["path"].as_str().unwrap().to_owned())
}

fn under(path: &str, dir: &str) -> bool {
    Path::new(path).starts_with(dir)
}

#[test]
fn the_compose_file_runs_the_binary_as_it_is() {
    let compose = yaml("compose.yaml").remove(0);
    let services = compose["services"].as_mapping().unwrap();
    let mut instances = 0;
    for (name, service) in services {
        let name = s(name);
        if service["image"].as_str() != Some("omnifold:local") {
            continue;
        }
        assert_eq!(service["build"]["dockerfile"].as_str(), Some("deploy/Dockerfile"), "{name}");
        let args = strings(&service["command"]);
        assert_flags_parse(&args, &name);
        let env: BTreeMap<String, String> = service["environment"]
            .as_mapping()
            .map(|m| m.iter().map(|(k, v)| (s(k), s(v))).collect())
            .unwrap_or_default();
        assert_cli_variables(&env, &name);
        if args[0] != "serve" {
            continue;
        }
        instances += 1;
        // `${VAR:?...}` is compose's: the operator's secret.
        let env: BTreeMap<String, String> =
            env.into_iter().map(|(k, v)| (k, if v.starts_with("${") { SECRET.into() } else { v })).collect();
        let mounts: Vec<(String, String)> = strings(&service["volumes"])
            .iter()
            .map(|v| {
                let mut parts = v.split(':');
                (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned())
            })
            .collect();
        let target = |path: &str| mounts.iter().find(|(_, t)| under(path, t)).map(|(src, _)| src.clone());
        let config = flag(&args, "--config").expect("a --config");
        let source = target(&config).unwrap_or_else(|| panic!("{name}: {config} is not mounted"));
        let effective = assert_config_checks(&deploy(&source), &env, &name);
        assert!(target(&env["OMNIFOLD_AUTH__KEYS_FILE"]).is_some(), "{name}: the keys file is not mounted");
        let dir = data_dir(&effective, &args);
        assert!(
            mounts.iter().any(|(src, t)| !src.starts_with('.') && under(&dir, t)),
            "{name}: {dir} is not on a volume"
        );
        let listening = listen_ports(&effective, &args);
        for p in strings(&service["ports"]) {
            let inside: u16 = p.rsplit(':').next().unwrap().parse().unwrap();
            assert!(
                listening.contains(&inside),
                "{name}: port {inside} is not one omnifold listens on ({listening:?})"
            );
        }
        let instance = &env["OMNIFOLD_KAFKA__INSTANCE_ID"];
        assert_eq!(env["OMNIFOLD_SERVER__ADVERTISE_ADDRESS"], format!("http://{instance}:{}", listening[0]), "{name}");
        assert_eq!(instance, &name, "the instance id is the service's name, which the others resolve");
    }
    assert_eq!(instances, 3);
    let kafka = &services[&Value::String("kafka".into())];
    assert!(s(&kafka["environment"]["KAFKA_PROCESS_ROLES"]).contains("controller"), "KRaft: no ZooKeeper");
}

#[test]
fn the_kubernetes_manifests_run_the_binary_as_it_is() {
    let docs = yaml("kubernetes/omnifold.yaml");
    let kind = |k: &'static str| docs.iter().filter(move |d| d["kind"].as_str() == Some(k));
    let config_map = kind("ConfigMap").next().unwrap();
    let set = kind("StatefulSet").next().unwrap();
    let pod = &set["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = strings(&container["args"]);
    assert_flags_parse(&args, "the StatefulSet");

    // The environment as the kubelet makes it: $(POD_NAME) from the pod's name.
    let mut env = BTreeMap::new();
    for e in container["env"].as_sequence().unwrap() {
        let name = s(&e["name"]);
        let value = match (&e["value"], &e["valueFrom"]) {
            (Value::String(v), _) => v.replace("$(POD_NAME)", "omnifold-0"),
            (_, from) if from["fieldRef"]["fieldPath"].as_str() == Some("metadata.name") => "omnifold-0".into(),
            (_, from) if from.get("secretKeyRef").is_some() => SECRET.into(),
            other => panic!("{name}: {other:?}"),
        };
        env.insert(name, value);
    }
    assert_cli_variables(&env, "the StatefulSet");
    assert_eq!(env["OMNIFOLD_KAFKA__INSTANCE_ID"], "omnifold-0", "group.instance.id is the pod's name");

    // The configuration: the ConfigMap's file, where --config says.
    let mounts: Vec<&Value> = container["volumeMounts"].as_sequence().unwrap().iter().collect();
    let config = flag(&args, "--config").unwrap();
    let config_mount = mounts.iter().find(|m| s(&m["mountPath"]) == config).expect("the config file is mounted");
    let volume = pod["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == config_mount["name"]).unwrap();
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("omnifold.toml");
    std::fs::write(&file, s(&config_map["data"][s(&config_mount["subPath"]).as_str()])).unwrap();
    let effective = assert_config_checks(&file, &env, "the StatefulSet");
    assert_eq!(env["OMNIFOLD_SERVER__ADVERTISE_ADDRESS"], "http://omnifold-0.omnifold-headless:50051");

    // Paths: the store on the claim, the keys file on the secret's volume.
    let on = |path: &str| mounts.iter().find(|m| under(path, &s(&m["mountPath"]))).map(|m| s(&m["name"]));
    let claim = s(&set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]);
    assert_eq!(on(&data_dir(&effective, &args)), Some(claim), "the store is on the pod's own volume");
    let keys = effective["auth"]["keys_file"].as_str().unwrap();
    let keys_volume = pod["volumes"].as_sequence().unwrap().iter().find(|v| Some(s(&v["name"])) == on(keys)).unwrap();
    assert!(keys_volume.get("secret").is_some(), "the keys file comes from a secret");

    // Ports and probes agree with what the configuration listens on.
    let listening = listen_ports(&effective, &args);
    let ports: BTreeMap<String, u16> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (s(&p["name"]), s(&p["containerPort"]).parse().unwrap()))
        .collect();
    assert_eq!(ports.values().copied().collect::<Vec<_>>(), listening, "grpc, http, metrics");
    let resolve = |p: &Value| match p {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        other => ports[&s(other)],
    };
    for probe in ["startupProbe", "readinessProbe"] {
        assert_eq!(resolve(&container[probe]["grpc"]["port"]), listening[0], "{probe}: gRPC health on the gRPC port");
    }
    let live = &container["livenessProbe"]["httpGet"];
    assert_eq!((s(&live["path"]), resolve(&live["port"])), ("/livez".into(), listening[2]));

    // The headless service gives each pod the name the others forward to.
    let labels = &set["spec"]["template"]["metadata"]["labels"];
    let headless = kind("Service").find(|svc| svc["spec"]["clusterIP"].as_str() == Some("None")).unwrap();
    assert_eq!(headless["metadata"]["name"], set["spec"]["serviceName"]);
    for d in kind("Service").chain(kind("PodDisruptionBudget")) {
        let selector = d["spec"]["selector"].get("matchLabels").unwrap_or(&d["spec"]["selector"]);
        assert_eq!(selector, labels, "{:?} selects the pods", d["metadata"]["name"]);
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
}

#[test]
fn the_dockerfile_and_the_systemd_unit_run_the_binary_as_it_is() {
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile.lines().collect();
    let json_args = |instr: &str| -> Vec<String> {
        let line = lines.iter().find(|l| l.starts_with(instr)).unwrap();
        serde_json::from_str(line[instr.len()..].trim()).unwrap()
    };
    let mut args = json_args("CMD ");
    assert_eq!(json_args("ENTRYPOINT "), ["omnifold"]);
    // ENV a=b \ c=d: the image's environment.
    let env_block: String = dockerfile
        .split("\nENV ")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("USER"))
        .collect::<Vec<_>>()
        .join(" ");
    let env: BTreeMap<String, String> = env_block
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_cli_variables(&env, "the Dockerfile");
    assert_flags_parse(&args, "the Dockerfile");
    let copied = lines.iter().find(|l| l.starts_with("COPY deploy/omnifold.toml ")).unwrap();
    assert_eq!(
        copied.split_whitespace().nth(2),
        Some(env["OMNIFOLD_CONFIG"].as_str()),
        "the config is where OMNIFOLD_CONFIG says"
    );
    let effective = assert_config_checks(&deploy("omnifold.toml"), &env, "the Dockerfile");
    let exposed: Vec<u16> = lines
        .iter()
        .find(|l| l.starts_with("EXPOSE "))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(exposed, listen_ports(&effective, &args));
    let volume: Vec<String> = json_args("VOLUME ");
    assert!(under(&data_dir(&effective, &args), &volume[0]), "the store is on the volume");
    let user = lines.iter().find(|l| l.starts_with("USER ")).unwrap();
    assert!(!user.contains("root") && !user.ends_with(" 0"), "not root: {user}");
    // The builder's Rust is the one the workspace says it needs.
    let manifest: toml::Table = toml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml")).unwrap(),
    )
    .unwrap();
    let rust = manifest["workspace"]["package"]["rust-version"].as_str().unwrap();
    assert!(dockerfile.contains(&format!("FROM rust:{rust}-")), "the build image is Rust {rust}");

    // The systemd unit.
    let unit = std::fs::read_to_string(deploy("systemd/omnifold.service")).unwrap();
    let values = |key: &str| -> Vec<String> {
        unit.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_owned).collect()
    };
    let exec = values("ExecStart").remove(0);
    let mut words = exec.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some("/usr/local/bin/omnifold"));
    args = words.collect();
    assert_flags_parse(&args, "the systemd unit");
    let env: BTreeMap<String, String> = values("Environment")
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([("OMNIFOLD_KAFKA__INTERNAL_SECRET".to_owned(), SECRET.to_owned())])
        .collect();
    assert_cli_variables(&env, "the systemd unit");
    assert_eq!(flag(&args, "--config").as_deref(), Some("/etc/omnifold/omnifold.toml"));
    let effective = assert_config_checks(&deploy("omnifold.toml"), &env, "the systemd unit");
    let dir = data_dir(&effective, &args);
    assert!(values("ReadWritePaths").iter().any(|p| under(&dir, p)), "the store is writable: {dir}");
    assert!(values("StateDirectory").iter().any(|d| under(&dir, &format!("/var/lib/{d}"))));
    assert_eq!(values("User"), ["omnifold"]);
}
