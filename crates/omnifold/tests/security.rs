//! Who may call what, against the real binary: credentials (API keys from
//! `omnifold keys new`, JWTs signed by a key in a JWKS file), each method's
//! scope, the limits that keep a caller inside its lane, and TLS (mutual,
//! and between instances).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

mod common;

use std::path::Path;

use base64::Engine as _;
use common::*;
use omnifold_proto::v1 as proto;
use tonic::Code;

/// Every method of the contract and the scopes it needs (docs/security.md).
const METHODS: [(&str, &[&str]); 23] = [
    ("omnifold.v1.ProfileService/GetProfile", &["profile:read"]),
    ("omnifold.v1.ProfileService/BatchGetProfiles", &["profile:read"]),
    ("omnifold.v1.ProfileService/LookupIdentifier", &["profile:read"]),
    ("omnifold.v1.ProfileService/WatchProfile", &["profile:read"]),
    ("omnifold.v1.AudienceService/ListAudiences", &["profile:read"]),
    ("omnifold.v1.AudienceService/GetAudience", &["profile:read"]),
    ("omnifold.v1.AudienceService/ListAudienceMembers", &["profile:read"]),
    ("omnifold.v1.LoyaltyService/GetBalance", &["loyalty:read"]),
    ("omnifold.v1.LoyaltyService/ListLedger", &["loyalty:read"]),
    ("omnifold.v1.LoyaltyService/GetBenefits", &["loyalty:read"]),
    ("omnifold.v1.LoyaltyService/RedeemPoints", &["loyalty:write"]),
    ("omnifold.v1.LoyaltyService/AdjustPoints", &["loyalty:adjust"]),
    ("omnifold.v1.AdminService/EraseMember", &["admin"]),
    ("omnifold.v1.AdminService/ExportMember", &["admin", "profile:pii"]),
    ("omnifold.v1.AdminService/MergeMembers", &["admin"]),
    ("omnifold.v1.AdminService/GetPartitionStatus", &["admin"]),
    ("omnifold.v1.AdminService/GetReplayStatus", &["admin"]),
    ("omnifold.v1.AdminService/SwitchStore", &["admin"]),
    ("omnifold.v1.AdminService/GetPointsLiability", &["admin"]),
    ("omnifold.v1.AdminService/TakeSnapshot", &["admin"]),
    ("omnifold.v1.AdminService/CreateAudience", &["admin"]),
    ("omnifold.v1.AdminService/UpdateAudience", &["admin"]),
    ("omnifold.v1.AdminService/DeleteAudience", &["admin"]),
];

const SCOPES: [&str; 6] = ["profile:read", "profile:pii", "loyalty:read", "loyalty:write", "loyalty:adjust", "admin"];

/// Calls `path` with an empty request and returns the status code (Ok for
/// an answer). What matters is whether the call got past authentication.
async fn call(conn: &Conn, path: &str) -> Code {
    let mut grpc = tonic::client::Grpc::new(conn.clone());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::try_from(format!("/{path}")).unwrap();
    match grpc.unary(tonic::Request::new(()), path, codec).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// The services server reflection lists.
async fn reflected_services(conn: Conn) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers =
        ServerReflectionClient::new(conn).server_reflection_info(tokio_stream::iter([ask])).await.unwrap().into_inner();
    match answers.message().await.unwrap().and_then(|a| a.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("expected a list of services, got {other:?}"),
    }
}

/// An Ed25519 signing key and its JWKS file.
struct Issuer {
    key: jsonwebtoken::EncodingKey,
}

impl Issuer {
    fn new(jwks: &Path) -> Issuer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
        let set =
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "idp-1", "alg": "EdDSA"}]});
        std::fs::write(jwks, set.to_string()).unwrap();
        Issuer { key: jsonwebtoken::EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap() }
    }

    fn token(&self, sub: &str, scope: &str, expires_in_secs: i64) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("idp-1".into());
        let claims =
            serde_json::json!({"sub": sub, "scope": scope, "exp": now + expires_in_secs, "iss": "https://idp.test"});
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

/// A key from `omnifold keys new` (the CLI a user runs), added to `file`.
fn new_key(setup: &Setup, file: &Path, name: &str, scopes: &[&str]) -> String {
    new_key_with(setup, file, name, scopes, &[])
}

/// The same with more flags of `keys new` (`--rate-per-second`, `--purpose`).
fn new_key_with(setup: &Setup, file: &Path, name: &str, scopes: &[&str], flags: &[&str]) -> String {
    let scopes = scopes.join(",");
    let mut args = vec!["keys", "new", "--name", name, "--file", file.to_str().unwrap(), "--scopes", &scopes];
    args.extend(flags);
    setup.run(&args).trim().to_owned()
}

/// Serves with the keys in `file` instead of the harness's.
fn use_keys(setup: &mut Setup, file: &Path) {
    setup.extra_env.insert("OMNIFOLD_AUTH__KEYS_FILE".into(), file.display().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_needs_credentials_and_each_method_its_scope() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let jwks = dir.path().join("jwks.json");
    let mut setup = Setup::new(&broker, "auth", 2);
    // One key per set of scopes a method needs, one per scope holding all the others.
    let mut only = std::collections::BTreeMap::new();
    for (_, needs) in METHODS {
        if !only.contains_key(needs) {
            only.insert(needs, new_key(&setup, &keys, &format!("only-{}", needs.join("+")), needs));
        }
    }
    let mut all_but = Vec::new();
    for scope in SCOPES {
        let rest: Vec<&str> = SCOPES.into_iter().filter(|s| *s != scope).collect();
        all_but.push(new_key(&setup, &keys, &format!("all-but-{scope}"), &rest));
    }
    let admin_key = new_key(&setup, &keys, "ops", &["all"]);
    let issuer = Issuer::new(&jwks);
    use_keys(&mut setup, &keys);
    setup.extra_env.insert("OMNIFOLD_AUTH__JWKS_FILE".into(), jwks.display().to_string());
    setup.extra_env.insert("OMNIFOLD_AUTH__JWT_ISSUER".into(), "https://idp.test".into());
    setup.create_topics();
    let service = Service::start(&setup, &dir.path().join("data"));

    // No, unknown, malformed and expired credentials: UNAUTHENTICATED.
    let anonymous = connect_as(&service.grpc, None).await.unwrap();
    let unknown = connect_as(&service.grpc, Some("omni_nosuchkey000000000000000000000000000000")).await.unwrap();
    let expired = connect_as(&service.grpc, Some(&issuer.token("crm", "profile:read", -300))).await.unwrap();
    for (who, conn) in [("no", &anonymous), ("an unknown", &unknown), ("an expired", &expired)] {
        for (path, _) in METHODS {
            assert_eq!(call(conn, path).await, Code::Unauthenticated, "{path} with {who} credential");
        }
    }
    let mut profiles = proto::profile_service_client::ProfileServiceClient::new(expired.clone());
    let e = profiles.get_profile(proto::GetProfileRequest::default()).await.unwrap_err();
    assert_eq!(e.message(), "the token has expired");

    // Each method: a key holding only its scopes gets past the check, a key
    // lacking any one of them is refused with the scope named.
    for (path, needs) in METHODS {
        let with = connect_as(&service.grpc, Some(&only[needs])).await.unwrap();
        let code = call(&with, path).await;
        assert!(!matches!(code, Code::Unauthenticated | Code::PermissionDenied), "{path} with {needs:?}: {code:?}");
        for scope in needs.iter() {
            let i = SCOPES.iter().position(|s| s == scope).unwrap();
            let without = connect_as(&service.grpc, Some(&all_but[i])).await.unwrap();
            assert_eq!(call(&without, path).await, Code::PermissionDenied, "{path} without {scope}");
        }
    }
    let reader = connect_as(&service.grpc, Some(&all_but[4])).await.unwrap();
    let mut loyalty = proto::loyalty_service_client::LoyaltyServiceClient::new(reader);
    let e = loyalty.adjust_points(proto::AdjustPointsRequest::default()).await.unwrap_err();
    assert_eq!(
        e.message(),
        "`all-but-loyalty:adjust` may not call omnifold.v1.LoyaltyService/AdjustPoints: it needs the scope loyalty:adjust"
    );

    // A JWT from the configured issuer is its subject with its scopes.
    let jwt = connect_as(&service.grpc, Some(&issuer.token("ops-portal", "admin", 300))).await.unwrap();
    let mut admin = proto::admin_service_client::AdminServiceClient::new(jwt.clone());
    assert!(admin.get_partition_status(proto::GetPartitionStatusRequest {}).await.is_ok());
    let e = proto::profile_service_client::ProfileServiceClient::new(jwt)
        .get_profile(proto::GetProfileRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().starts_with("`ops-portal` may not call"), "{}", e.message());

    // Health answers probes without credentials; reflection does not.
    service.wait_health("", 1).await;
    assert_eq!(
        call(&anonymous, "grpc.reflection.v1.ServerReflection/ServerReflectionInfo").await,
        Code::Unauthenticated
    );
    // With a key, reflection lists every service, health included (grpcurl's `list`).
    let services = reflected_services(connect_as(&service.grpc, Some(&admin_key)).await.unwrap()).await;
    for s in [
        "grpc.health.v1.Health",
        "omnifold.v1.ProfileService",
        "omnifold.v1.LoyaltyService",
        "omnifold.v1.AudienceService",
        "omnifold.v1.AdminService",
    ] {
        assert!(services.iter().any(|l| l == s), "{s} not in {services:?}");
    }

    // The CLI sends OMNIFOLD_API_KEY: with the key it works, without it it says why.
    let status = setup
        .command()
        .env("OMNIFOLD_API_KEY", &admin_key)
        .args(["status", "--server", &service.grpc])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let status =
        setup.command().env_remove("OMNIFOLD_API_KEY").args(["status", "--server", &service.grpc]).output().unwrap();
    assert!(!status.status.success());
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("no credentials"),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    // The audit trail: every admin and loyalty-write call and audience
    // listing, allowed or refused, with its caller and result, signed;
    // other reads are not in it.
    let records = eventually("the refusals in the audit trail", std::time::Duration::from_secs(30), || async {
        let out = setup.command().args(["audit", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let records: Vec<serde_json::Value> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let refused = |m: &str| records.iter().filter(|r| r["method"] == m && r["code"] == "Unauthenticated").count();
        (refused("omnifold.v1.AdminService/SwitchStore") >= 3).then_some(records)
    })
    .await;
    assert!(records.iter().all(|r| r["signed"] == true), "every record is omnifold's own");
    let find = |method: &str, caller: &str| {
        records.iter().find(|r| r["method"] == format!("omnifold.v1.{method}") && r["caller"] == caller)
    };
    for (path, needs) in METHODS {
        let method = path.trim_start_matches("omnifold.v1.");
        let audited = path.contains("AdminService") || path.ends_with("Points") || path.ends_with("AudienceMembers");
        let allowed = find(method, &format!("only-{}", needs.join("+")));
        assert_eq!(allowed.is_some(), audited, "{path}: audited is {audited}");
        if let Some(r) = allowed {
            assert_ne!(r["code"], "PermissionDenied");
            assert_eq!((r["via"].as_str(), r["instance"].is_string()), (Some("api_key"), true));
        }
    }
    let denied = find("LoyaltyService/AdjustPoints", "all-but-loyalty:adjust").unwrap();
    assert_eq!(denied["code"], "PermissionDenied");
    let adjusted = find("LoyaltyService/AdjustPoints", "only-loyalty:adjust").unwrap();
    assert_eq!(adjusted["request"]["delta"], 0, "what the call asked is recorded: {adjusted}");
    service.stop();
}

/// Authentication on with nothing to authenticate against refuses to start,
/// and says what to do.
#[test]
fn serve_without_keys_refuses_to_start() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&broker, "nokeys", 1);
    setup.extra_env.remove("OMNIFOLD_AUTH__KEYS_FILE");
    let out =
        setup.command().args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("omnifold keys new"), "{err}");
}

/// A caller over its rate waits; a request too large is refused; a store
/// outside the switch root is never opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_keep_each_caller_in_its_lane() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let root = dir.path().join("stores");
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::create_dir_all(dir.path().join("outside")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), root.join("link")).unwrap();
    let mut setup = Setup::new(&broker, "limits", 1);
    let ops = new_key(&setup, &keys, "ops", &["all"]);
    let slow = new_key_with(&setup, &keys, "slow", &["profile:read"], &["--rate-per-second", "1"]);
    use_keys(&mut setup, &keys);
    setup.extra_env.insert("OMNIFOLD_SERVER__SWITCH_ROOT".into(), root.display().to_string());
    setup.extra_env.insert("OMNIFOLD_SERVER__MAX_REQUEST_BYTES".into(), "4096".into());
    setup.create_topics();
    let service = Service::start(&setup, &root.join("live"));

    // One request a second: the second at once is RESOURCE_EXHAUSTED with
    // a hint; waiting as told lets it through; another caller is not held up.
    let mut profiles =
        proto::profile_service_client::ProfileServiceClient::new(connect_as(&service.grpc, Some(&slow)).await.unwrap());
    let lookup = || proto::LookupIdentifierRequest {
        identifier: Some(proto::Identifier {
            r#type: proto::IdentifierType::Phone as i32,
            value: "+8613800000000".into(),
        }),
    };
    let ready = admin_profiles(&service, &ops).await;
    eventually("the instance answers lookups", std::time::Duration::from_secs(60), || {
        let mut ready = ready.clone();
        async move { (ready.lookup_identifier(lookup()).await.unwrap_err().code() == Code::NotFound).then_some(()) }
    })
    .await;
    assert_eq!(profiles.lookup_identifier(lookup()).await.unwrap_err().code(), Code::NotFound);
    let over = profiles.lookup_identifier(lookup()).await.unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    let wait: u64 = over.metadata().get("omnifold-retry-after-ms").unwrap().to_str().unwrap().parse().unwrap();
    let mut admin =
        proto::admin_service_client::AdminServiceClient::new(connect_as(&service.grpc, Some(&ops)).await.unwrap());
    assert!(admin.get_partition_status(proto::GetPartitionStatusRequest {}).await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(wait + 50)).await;
    assert_eq!(profiles.lookup_identifier(lookup()).await.unwrap_err().code(), Code::NotFound, "after the wait");

    // A request over server.max_request_bytes is refused before it is read.
    let members = (0..100)
        .map(|i| proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId(format!("m-{i:0>120}"))) })
        .collect();
    let mut profiles = admin_profiles(&service, &ops).await;
    let e = profiles
        .batch_get_profiles(proto::BatchGetProfilesRequest { members, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("the limit is: 4096 bytes"), "{}", e.message());

    // SwitchStore opens only directories under the root.
    let switch = |dir: std::path::PathBuf| {
        let mut admin = admin.clone();
        async move {
            admin.switch_store(proto::SwitchStoreRequest { data_dir: dir.display().to_string() }).await.unwrap_err()
        }
    };
    for outside in
        [dir.path().join("outside"), root.join("..").join("outside"), root.join("link"), root.clone(), "/etc".into()]
    {
        let e = switch(outside.clone()).await;
        assert_eq!(e.code(), Code::InvalidArgument, "{}: {e:?}", outside.display());
        assert!(e.message().contains("is not a directory under"), "{}", e.message());
    }
    let e = switch(root.join("empty")).await;
    assert_eq!(e.code(), Code::FailedPrecondition, "under the root it is opened and found not a rebuilt store: {e:?}");
    assert!(e.message().contains("holds no state"), "{}", e.message());
    service.stop();
}

async fn admin_profiles(service: &Service, key: &str) -> proto::profile_service_client::ProfileServiceClient<Conn> {
    proto::profile_service_client::ProfileServiceClient::new(connect_as(&service.grpc, Some(key)).await.unwrap())
}

/// A test CA and certificates it signs (PEM files in a directory).
struct Pki {
    ca: std::path::PathBuf,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    dir: std::path::PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, issuer.pem()).unwrap();
        Pki { ca, issuer, dir: dir.to_owned() }
    }

    /// A certificate for `names`, usable by servers and clients: (cert, key) files.
    fn leaf(&self, file: &str, names: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}-key.pem")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// A call to `GetProfile` over TLS trusting `ca`, presenting `identity`
/// (cert, key files) and `key`; the instance that answered, or why not.
async fn tls_get_profile(
    url: &str,
    ca: &Path,
    identity: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    key: Option<&str>,
    member: &str,
) -> Result<String, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(c).unwrap(), std::fs::read(k).unwrap()));
    }
    let endpoint = tonic::transport::Channel::from_shared(url.to_owned()).unwrap().tls_config(tls).unwrap();
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let key = key.map_or_else(Bearer::none, |t| Bearer::new(t).unwrap());
    let conn = tonic::service::interceptor::InterceptedService::new(channel, key);
    let mut profiles = proto::profile_service_client::ProfileServiceClient::new(conn);
    let req = proto::GetProfileRequest {
        member: Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId(member.into())) }),
        ..Default::default()
    };
    match profiles.get_profile(req).await {
        Ok(r) => Ok(r.metadata().get("omnifold-served-by").map_or("", |v| v.to_str().unwrap()).to_owned()),
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// A GET over HTTPS trusting `ca`, presenting `identity`, with the harness key:
/// the status and the body, or why the connection failed.
async fn https_get(
    port: u16,
    ca: &Path,
    identity: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    path: &str,
) -> Result<(u16, String), String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((c, k)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c).unwrap().map(Result::unwrap).collect(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {API_KEY}\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| format!("reading: {e}"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status =
        text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no answer: {text}"))?;
    Ok((status, text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()))
}

/// Two instances speaking only mutual TLS: a caller needs a certificate
/// from the CA and still its credentials; a request for the other
/// instance's partition is forwarded over mutual TLS and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_on_the_port_and_between_instances() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "omnifold");
    let rogue = Pki::new(dir.path(), "rogue");
    let (cert, key) = pki.leaf("instance", &["localhost", "127.0.0.1"]);
    let client = pki.leaf("crm", &["crm.example"]);
    let stranger = rogue.leaf("stranger", &["crm.example"]);
    let mut setup = Setup::new(&broker, "mtls", 2);
    for (k, v) in [("CERT", &cert), ("KEY", &key), ("CLIENT_CA", &pki.ca)] {
        setup.extra_env.insert(format!("OMNIFOLD_SERVER__TLS__{k}"), v.display().to_string());
    }
    setup.create_topics();
    let events: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            let m = format!("m-{i}");
            let subject = format!(r#"{{"memberId":"{m}"}}"#);
            let e = json_event(
                &format!("e-{i}"),
                "2026-06-01T10:00:00Z",
                "ONLINE_WEB",
                &subject,
                r#""searchPerformed":{"query":"tea"}"#,
            );
            (m, e)
        })
        .collect();
    setup.produce(&events);
    let https = free_port();
    let a = Service::start_with(
        &setup,
        &dir.path().join("a"),
        &[("OMNIFOLD_SERVER__HTTP_LISTEN", format!("127.0.0.1:{https}").as_str())],
    );
    let b = Service::start(&setup, &dir.path().join("b"));
    let url = a.grpc.replace("http://", "https://");

    // Every member answered through A: the ones on B's partition were
    // forwarded over mutual TLS, with the caller's credentials.
    let served_by =
        eventually("every member answered through A by both instances", std::time::Duration::from_secs(90), || async {
            let mut by = std::collections::BTreeSet::new();
            for (m, _) in &events {
                by.insert(tls_get_profile(&url, &pki.ca, Some(&client), Some(API_KEY), m).await.ok()?);
            }
            (by.len() == 2).then_some(by)
        })
        .await;
    assert!(served_by.iter().all(|s| !s.is_empty()), "{served_by:?}");

    // Plain text, no certificate, a certificate from another CA: refused.
    let plain = connect(&a.grpc).await;
    let plain = match plain {
        Ok(conn) => proto::profile_service_client::ProfileServiceClient::new(conn)
            .get_profile(proto::GetProfileRequest::default())
            .await
            .map(|_| ())
            .map_err(|s| s.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(plain.is_err(), "a plain-text client was answered");
    assert!(tls_get_profile(&url, &pki.ca, None, Some(API_KEY), "m-0").await.is_err(), "no client certificate");

    // The HTTP port speaks the same TLS: with the CA and a client
    // certificate it answers; without the certificate, or in plain text, not.
    let (status, body) = https_get(https, &pki.ca, Some(&client), "/v1/profiles/m-0").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"memberId\":\"m-0\""), "{body}");
    assert!(https_get(https, &pki.ca, None, "/v1/profiles/m-0").await.is_err(), "HTTPS without a client certificate");
    let plain = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", https)).await.unwrap();
        s.write_all(b"GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    })
    .await
    .unwrap();
    assert!(!plain.starts_with(b"HTTP/1.1 200"), "plain HTTP was answered on the TLS port");
    assert!(tls_get_profile(&url, &pki.ca, Some(&stranger), Some(API_KEY), "m-0").await.is_err(), "another CA");
    // A certificate is not a credential: the call still needs its key.
    let e = tls_get_profile(&url, &pki.ca, Some(&client), None, "m-0").await.unwrap_err();
    assert!(e.starts_with("Unauthenticated"), "{e}");

    // The CLI speaks TLS from its environment.
    let out = setup
        .command()
        .env("OMNIFOLD_TLS_CA", &pki.ca)
        .env("OMNIFOLD_TLS_CERT", &client.0)
        .env("OMNIFOLD_TLS_KEY", &client.1)
        .args(["profile", "get", "m-1", "--server", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("m-1"));
    a.stop();
    b.stop();
}

/// A profile's personal fields are masked for a caller without
/// `profile:pii`, in every response type; sensitive traits need the scope
/// and the member's own consent; a masked value addresses no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_fields_are_masked_without_pii_and_sensitive_ones_need_consent() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let mut setup = Setup::new(&broker, "masking", 2);
    let reader = new_key(&setup, &keys, "reader", &["profile:read"]);
    let pii = new_key(&setup, &keys, "pii", &["profile:read", "profile:pii"]);
    let ops = new_key(&setup, &keys, "ops", &["all"]);
    use_keys(&mut setup, &keys);
    setup.extra_env.insert("OMNIFOLD_PRIVACY__SENSITIVE_TRAITS".into(), r#"["health"]"#.into());
    setup.extra_env.insert("OMNIFOLD_PRIVACY__PLAIN_TRAITS".into(), r#"["shoe_size"]"#.into());
    setup.extra_env.insert("OMNIFOLD_STORE__KEEP_HISTORY".into(), "true".into());
    setup.create_topics();
    let at = "2026-06-01T10:00:00Z";
    let member = |m: &str| format!(r#"{{"memberId":"{m}"}}"#);
    let traits = r#""profileUpdated":{"traits":{"name":"Zhang San","health":"asthma","shoe_size":"42"}}"#;
    let mut events = Vec::new();
    for (m, phone, consent) in [("m-1", "+8613800000001", false), ("m-2", "+8613800000002", true)] {
        let link = format!(
            r#""identityLinked":{{"anonymousId":"ck-{m}-device","identifiers":[{{"type":"PHONE","value":"{phone}"}},{{"type":"EMAIL","value":"{m}@example.com"}}]}}"#
        );
        events.push((m.to_owned(), json_event(&format!("{m}-link"), at, "MOBILE_APP", &member(m), &link)));
        events.push((m.to_owned(), json_event(&format!("{m}-traits"), at, "MOBILE_APP", &member(m), traits)));
        let search = r#""searchPerformed":{"query":"red shoes for zhang"}"#;
        events.push((m.to_owned(), json_event(&format!("{m}-search"), at, "MOBILE_APP", &member(m), search)));
        let consent = format!(r#""consentChanged":{{"purpose":"sensitive_data","granted":{consent}}}"#);
        events.push((m.to_owned(), json_event(&format!("{m}-consent"), at, "MOBILE_APP", &member(m), &consent)));
    }
    // A provisional profile: events for a phone no member holds yet.
    let stranger = r#"{"identifiers":[{"type":"PHONE","value":"+8613900000009"}]}"#;
    let view = r#""productViewed":{"sku":"SKU-1","category":"shoes","priceMinor":"100"}"#;
    events.push(("PHONE:+8613900000009".into(), json_event("p-view", at, "ONLINE_WEB", stranger, view)));
    setup.produce(&events);
    let service = Service::start(&setup, &dir.path().join("data"));
    let client = |key: String| {
        let url = service.grpc.clone();
        async move { proto::profile_service_client::ProfileServiceClient::new(connect_as(&url, Some(&key)).await.unwrap()) }
    };
    let (mut as_reader, mut as_pii) = (client(reader).await, client(pii).await);
    let get = |m: &str| proto::GetProfileRequest {
        member: Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId(m.into())) }),
        ..Default::default()
    };
    let mut admin =
        proto::admin_service_client::AdminServiceClient::new(connect_as(&service.grpc, Some(&ops)).await.unwrap());
    eventually("every event folded", std::time::Duration::from_secs(60), || {
        let mut admin = admin.clone();
        async move {
            let s = admin.get_partition_status(proto::GetPartitionStatusRequest {}).await.ok()?.into_inner();
            (s.partitions.iter().map(|p| p.next_offset).sum::<i64>() >= 9).then_some(())
        }
    })
    .await;
    let mut as_pii_m1 = eventually("m-1 linked", std::time::Duration::from_secs(60), || {
        let mut c = as_pii.clone();
        async move { c.get_profile(get("m-1")).await.ok().map(|r| r.into_inner()).filter(|p| p.identifiers.len() == 2) }
    })
    .await;

    // GetProfile: clear with profile:pii, but no sensitive trait without consent.
    as_pii_m1.identifiers.sort_by_key(|i| i.r#type);
    assert_eq!(as_pii_m1.identifiers[0].value, "+8613800000001");
    assert_eq!(as_pii_m1.identifiers[1].value, "m-1@example.com");
    assert_eq!(as_pii_m1.traits.get("name").map(String::as_str), Some("Zhang San"));
    assert_eq!(as_pii_m1.traits.get("health"), None, "m-1 did not consent to sensitive data");
    let m2 = as_pii.get_profile(get("m-2")).await.unwrap().into_inner();
    assert_eq!(m2.traits.get("health").map(String::as_str), Some("asthma"), "m-2 did");

    // Without profile:pii: masked, sensitive absent even with consent, plain in clear.
    let mut masked = as_reader.get_profile(get("m-2")).await.unwrap().into_inner();
    masked.identifiers.sort_by_key(|i| i.r#type);
    assert_eq!(masked.identifiers[0].value, "+86138****0002");
    assert_eq!(masked.identifiers[1].value, "m***@example.com");
    assert_eq!(masked.traits.get("name").map(String::as_str), Some("Z***"));
    assert_eq!(masked.traits.get("health"), None);
    assert_eq!(masked.traits.get("shoe_size").map(String::as_str), Some("42"));
    assert!(masked.aliases.iter().all(|a| a.contains("****") && !a.contains("device")), "{:?}", masked.aliases);
    assert_eq!(masked.browse.unwrap().recent_searches, ["r***"]);
    assert_eq!((masked.member_id.as_str(), masked.loyalty.is_some()), ("m-2", true), "plain fields stay");

    // BatchGetProfiles: the same, per result.
    let batch = as_reader
        .batch_get_profiles(proto::BatchGetProfilesRequest {
            members: vec![get("m-1").member.unwrap()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let p = batch.results[0].profile.as_ref().unwrap();
    assert!(p.identifiers.iter().all(|i| i.value.contains("***")), "{:?}", p.identifiers);
    assert_eq!(p.traits.get("name").map(String::as_str), Some("Z***"));

    // LookupIdentifier: the path's identifier masked; the masked value looks nothing up.
    let phone = |v: &str| proto::LookupIdentifierRequest {
        identifier: Some(proto::Identifier { r#type: proto::IdentifierType::Phone as i32, value: v.into() }),
    };
    let found = as_reader.lookup_identifier(phone("+8613800000001")).await.unwrap().into_inner();
    assert_eq!(found.member_id, "m-1");
    assert_eq!(found.path[0], "PHONE:+86138****0001");
    let e = as_reader.lookup_identifier(phone("+86138****0001")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("looks masked"), "{}", e.message());

    // A provisional profile's key is an identifier: masked too.
    let by_phone = proto::GetProfileRequest {
        member: Some(proto::MemberRef {
            r#ref: Some(proto::member_ref::Ref::Identifier(proto::Identifier {
                r#type: proto::IdentifierType::Phone as i32,
                value: "+8613900000009".into(),
            })),
        }),
        ..Default::default()
    };
    let provisional = as_reader.get_profile(by_phone.clone()).await.unwrap().into_inner();
    assert_eq!(provisional.kind, proto::ProfileKind::Provisional as i32);
    assert_eq!(provisional.member_id, "PHONE:+86139****0009");
    assert_eq!(as_pii.get_profile(by_phone).await.unwrap().into_inner().member_id, "PHONE:+8613900000009");

    // ExportMember: everything held about the member, in clear, with the
    // events as they were received.
    let doc = admin.export_member(proto::ExportMemberRequest { member: get("m-2").member }).await.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&doc.into_inner().json).unwrap();
    assert_eq!((doc["format"].as_str(), doc["member_id"].as_str()), (Some("omnifold.export.v1"), Some("m-2")));
    assert!(doc["profile"]["identifiers"].to_string().contains("+8613800000002"), "{}", doc["profile"]);
    assert_eq!(doc["profile"]["traits"]["health"], "asthma", "sensitive data is the member's own to see");
    let kept: Vec<&str> =
        doc["kept_events"].as_array().unwrap().iter().map(|e| e["event"]["eventId"].as_str().unwrap()).collect();
    assert_eq!(kept, ["m-2-link", "m-2-traits", "m-2-search", "m-2-consent"]);
    assert!(doc["stored_record"].is_object() && doc["ledger"].is_array());
    // The CLI writes it to a file only its owner may read, found by any identifier.
    let file = dir.path().join("m-2.json");
    let out = setup
        .command()
        .env("OMNIFOLD_API_KEY", &ops)
        .args(["export", "PHONE:+8613800000002", "--server", &service.grpc, "--out", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written["member_id"], "m-2");
    service.stop();
}

/// A key bound to a purpose (`keys new --purpose marketing`) sees only the
/// members who granted it: the others answer exactly as members who do not
/// exist, in every read, lookups included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_bound_to_a_purpose_sees_only_members_who_granted_it() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let mut setup = Setup::new(&broker, "purpose", 3);
    let campaigns =
        new_key_with(&setup, &keys, "campaigns", &["profile:read", "loyalty:read"], &["--purpose", "marketing"]);
    let ops = new_key(&setup, &keys, "ops", &["all"]);
    use_keys(&mut setup, &keys);
    setup.create_topics();
    let at = "2026-06-01T10:00:00Z";
    let mut events = Vec::new();
    for (i, consent) in [(1, Some(true)), (2, Some(false)), (3, None)] {
        let (m, subject) = (format!("m-{i}"), format!(r#"{{"memberId":"m-{i}"}}"#));
        let link = format!(r#""identityLinked":{{"identifiers":[{{"type":"PHONE","value":"+861380000000{i}"}}]}}"#);
        events.push((m.clone(), json_event(&format!("{m}-link"), at, "MOBILE_APP", &subject, &link)));
        if let Some(granted) = consent {
            let c = format!(r#""consentChanged":{{"purpose":"marketing","granted":{granted}}}"#);
            events.push((m.clone(), json_event(&format!("{m}-consent"), at, "MOBILE_APP", &subject, &c)));
        }
    }
    setup.produce(&events);
    let service = Service::start(&setup, &dir.path().join("data"));
    let profiles = |key: String| {
        let url = service.grpc.clone();
        async move { proto::profile_service_client::ProfileServiceClient::new(connect_as(&url, Some(&key)).await.unwrap()) }
    };
    let (mut bound, mut free) = (profiles(campaigns.clone()).await, profiles(ops).await);
    let get = |m: &str| proto::GetProfileRequest {
        member: Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId(m.into())) }),
        ..Default::default()
    };
    let phone = |i: u32| proto::LookupIdentifierRequest {
        identifier: Some(proto::Identifier {
            r#type: proto::IdentifierType::Phone as i32,
            value: format!("+861380000000{i}"),
        }),
    };
    // Everything is folded and linked when the unbound key finds all three by phone.
    eventually("every member linked", std::time::Duration::from_secs(60), || {
        let mut free = free.clone();
        async move {
            for i in 1..=3 {
                if free.lookup_identifier(phone(i)).await.ok()?.into_inner().member_id != format!("m-{i}") {
                    return None;
                }
                let p = free.get_profile(get(&format!("m-{i}"))).await.ok()?.into_inner();
                if p.consents.len() != usize::from(i != 3) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;

    assert_eq!(bound.get_profile(get("m-1")).await.unwrap().into_inner().member_id, "m-1");
    for m in ["m-2", "m-3", "m-404"] {
        let e = bound.get_profile(get(m)).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::NotFound, format!("no profile for member `{m}`").as_str()));
    }
    let members = ["m-1", "m-2"].map(|m| get(m).member.unwrap()).to_vec();
    let batch = bound.batch_get_profiles(proto::BatchGetProfilesRequest { members, ..Default::default() }).await;
    let codes: Vec<i32> = batch.unwrap().into_inner().results.iter().map(|r| r.code).collect();
    assert_eq!(codes, [0, Code::NotFound as i32]);
    assert_eq!(bound.lookup_identifier(phone(1)).await.unwrap().into_inner().member_id, "m-1");
    let e = bound.lookup_identifier(phone(2)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "no profile for identifier `PHONE:+8613800000002`"));
    let mut loyalty = proto::loyalty_service_client::LoyaltyServiceClient::new(
        connect_as(&service.grpc, Some(&campaigns)).await.unwrap(),
    );
    let balance = |m: &str| proto::GetBalanceRequest { member: get(m).member, as_of: None };
    assert!(loyalty.get_balance(balance("m-1")).await.is_ok());
    assert_eq!(loyalty.get_balance(balance("m-2")).await.unwrap_err().code(), Code::NotFound);
    // The unbound key sees everyone.
    assert_eq!(free.get_profile(get("m-2")).await.unwrap().into_inner().member_id, "m-2");
    service.stop();
}
