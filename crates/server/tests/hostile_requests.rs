//! No request makes the server panic: random bytes and adversarial
//! messages (huge and odd strings, masked values, out-of-range enums,
//! extreme numbers and instants) sent to every method of a real server on
//! a real store, through the auth layer. Each gets an answer with a status
//! that says what was wrong, never a crash or an internal error, and the
//! server answers a health check afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly on what it did not expect")]

use std::sync::Arc;

use bytes::{Buf, BufMut};
use proptest::prelude::*;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use omnifold_core::FoldConfig;
use omnifold_proto::v1 as proto;
use omnifold_server::auth::{KeysFile, new_api_key};
use omnifold_server::{AppState, Authenticator, Scope};
use omnifold_store::{Store, StoreConfig, StoreHandle};

/// Sends bytes as they are and takes the answer's bytes.
#[derive(Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

const METHODS: [&str; 17] = [
    "/omnifold.v1.ProfileService/GetProfile",
    "/omnifold.v1.ProfileService/BatchGetProfiles",
    "/omnifold.v1.ProfileService/LookupIdentifier",
    "/omnifold.v1.ProfileService/WatchProfile",
    "/omnifold.v1.LoyaltyService/GetBalance",
    "/omnifold.v1.LoyaltyService/ListLedger",
    "/omnifold.v1.LoyaltyService/GetBenefits",
    "/omnifold.v1.LoyaltyService/RedeemPoints",
    "/omnifold.v1.LoyaltyService/AdjustPoints",
    "/omnifold.v1.AdminService/EraseMember",
    "/omnifold.v1.AdminService/ExportMember",
    "/omnifold.v1.AdminService/MergeMembers",
    "/omnifold.v1.AdminService/GetPartitionStatus",
    "/omnifold.v1.AdminService/GetReplayStatus",
    "/omnifold.v1.AdminService/SwitchStore",
    "/omnifold.v1.AdminService/GetPointsLiability",
    "/omnifold.v1.AdminService/TakeSnapshot",
];

/// A server on a fresh store bound to a 4-partition topic, its address
/// and a key with every scope.
struct Server {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    channel: tonic::transport::Channel,
    key: String,
}

fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig { path: dir.path().join("store"), ..Default::default() }).unwrap();
    store.bind_partitions("events", 4).unwrap();
    let (key, entry) = new_api_key("fuzz", &Scope::ALL);
    let auth = Authenticator::with_keys(&KeysFile { key: vec![entry] }).unwrap();
    let state = AppState::new(StoreHandle::new(store), "events", Arc::new(FoldConfig::default().validate().unwrap()))
        .with_auth(Arc::new(auth))
        .with_max_request_bytes(64 << 10);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let channel = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(omnifold_server::run(listener, state, std::future::pending()));
        tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
    });
    Server { _dir: dir, rt, channel, key }
}

impl Server {
    /// The status code a call of `path` with `body` got (Ok for an answer).
    fn call(&self, path: &'static str, body: Vec<u8>, authorization: Option<&str>) -> tonic::Code {
        self.rt.block_on(async {
            let mut grpc = tonic::client::Grpc::new(self.channel.clone());
            grpc.ready().await.unwrap();
            let mut req = tonic::Request::new(body);
            if let Some(a) = authorization
                && let Ok(v) = a.parse()
            {
                req.metadata_mut().insert("authorization", v);
            }
            let path = http::uri::PathAndQuery::from_static(path);
            match grpc.unary(req, path, Raw).await {
                Ok(_) => tonic::Code::Ok,
                Err(s) => {
                    assert!(
                        !matches!(s.code(), tonic::Code::Internal | tonic::Code::Unknown),
                        "{} answered {:?}: {}",
                        path_name(&s),
                        s.code(),
                        s.message()
                    );
                    s.code()
                }
            }
        })
    }

    fn healthy(&self) -> bool {
        self.rt.block_on(async {
            let mut c = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
            let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
            let mut req = tonic::Request::new(req);
            req.metadata_mut().insert("authorization", format!("Bearer {}", self.key).parse().unwrap());
            c.check(req).await.is_ok()
        })
    }
}

fn path_name(s: &tonic::Status) -> String {
    format!("a call ({})", s.message().chars().take(40).collect::<String>())
}

/// Strings a hostile caller would try.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("   ".to_owned()),
        Just("+86138****0000".to_owned()),
        Just("PHONE:+8613800000000".to_owned()),
        Just("a".repeat(100_000)),
        Just("\u{0}\u{202e}\u{fffd}".to_owned()),
        Just("../../etc/passwd".to_owned()),
        "\\PC{0,300}",
        "[a-z0-9@.+:-]{0,40}",
    ]
}

fn member_ref() -> impl Strategy<Value = Option<proto::MemberRef>> {
    use proto::member_ref::Ref;
    let identifier = (any::<i32>(), nasty_string()).prop_map(|(t, value)| proto::Identifier { r#type: t % 8, value });
    prop_oneof![
        Just(None),
        Just(Some(proto::MemberRef { r#ref: None })),
        nasty_string().prop_map(|s| Some(proto::MemberRef { r#ref: Some(Ref::MemberId(s)) })),
        nasty_string().prop_map(|s| Some(proto::MemberRef { r#ref: Some(Ref::AnonymousId(s)) })),
        identifier.prop_map(|i| Some(proto::MemberRef { r#ref: Some(Ref::Identifier(i)) })),
    ]
}

fn instant() -> impl Strategy<Value = Option<pbjson_types::Timestamp>> {
    prop_oneof![
        Just(None),
        (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Some(pbjson_types::Timestamp { seconds, nanos })),
        (0i64..4_000_000_000, 0i32..1_000_000_000)
            .prop_map(|(seconds, nanos)| Some(pbjson_types::Timestamp { seconds, nanos })),
    ]
}

/// A well-formed message of the method's request type with hostile values.
fn message(method: usize) -> BoxedStrategy<Vec<u8>> {
    let mask =
        proptest::collection::vec(nasty_string(), 0..4).prop_map(|paths| Some(pbjson_types::FieldMask { paths }));
    match method {
        0 | 3 => (member_ref(), mask, instant())
            .prop_map(|(member, read_mask, as_of)| {
                proto::GetProfileRequest { member, read_mask, as_of }.encode_to_vec()
            })
            .boxed(),
        1 => (proptest::collection::vec(member_ref(), 0..120), instant())
            .prop_map(|(members, as_of)| {
                let members = members.into_iter().map(|m| m.unwrap_or_default()).collect();
                proto::BatchGetProfilesRequest { members, read_mask: None, as_of }.encode_to_vec()
            })
            .boxed(),
        5 => (member_ref(), any::<i32>(), nasty_string(), proptest::collection::vec(any::<i32>(), 0..4), instant())
            .prop_map(|(member, page_size, page_token, kinds, from)| {
                proto::ListLedgerRequest { member, page_size, page_token, kinds, from, ..Default::default() }
                    .encode_to_vec()
            })
            .boxed(),
        7 => (member_ref(), nasty_string(), any::<i64>(), any::<i32>())
            .prop_map(|(member, request_id, points, channel)| {
                proto::RedeemPointsRequest { member, request_id, points, channel, reward: String::new() }
                    .encode_to_vec()
            })
            .boxed(),
        8 => (member_ref(), nasty_string(), any::<i64>(), nasty_string())
            .prop_map(|(member, request_id, delta, reason)| {
                let actor = reason.clone();
                proto::AdjustPointsRequest { member, request_id, delta, reason, actor, ..Default::default() }
                    .encode_to_vec()
            })
            .boxed(),
        11 => (nasty_string(), nasty_string(), nasty_string())
            .prop_map(|(from_member_id, into_member_id, request_id)| {
                proto::MergeMembersRequest { from_member_id, into_member_id, request_id }.encode_to_vec()
            })
            .boxed(),
        14 => nasty_string().prop_map(|data_dir| proto::SwitchStoreRequest { data_dir }.encode_to_vec()).boxed(),
        15 => instant().prop_map(|as_of| proto::GetPointsLiabilityRequest { as_of }.encode_to_vec()).boxed(),
        16 => proptest::collection::vec(any::<u32>(), 0..10)
            .prop_map(|partitions| proto::TakeSnapshotRequest { partitions }.encode_to_vec())
            .boxed(),
        _ => (member_ref(), instant())
            .prop_map(|(member, as_of)| proto::GetBalanceRequest { member, as_of }.encode_to_vec())
            .boxed(),
    }
}

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

#[test]
fn no_request_makes_the_server_panic() {
    let server = server();
    let auth = format!("Bearer {}", server.key);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: cases(), ..Default::default() });
    let any_call = (0..METHODS.len()).prop_flat_map(|m| {
        let body = prop_oneof![message(m), proptest::collection::vec(any::<u8>(), 0..512)];
        (Just(m), body)
    });
    runner
        .run(&any_call, |(m, body)| {
            server.call(METHODS[m], body, Some(&auth));
            Ok(())
        })
        .unwrap();
    // Odd credentials never get past the layer, and never crash it.
    let mut creds = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 100, ..Default::default() });
    creds
        .run(&("\\PC{0,200}", 0..METHODS.len()), |(header, m)| {
            let code = server.call(METHODS[m], Vec::new(), Some(&header));
            prop_assert_eq!(code, tonic::Code::Unauthenticated);
            Ok(())
        })
        .unwrap();
    assert!(server.healthy(), "the server answers after every hostile request");
}
