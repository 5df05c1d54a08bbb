//! Who is calling and what they may do: API keys (kept only as SHA-256
//! hashes) and JWTs (verified against a JWKS file), each mapped to scopes,
//! and one tower layer that checks every gRPC call before a service sees it.
//!
//! Architecture invariant: the method → scope table ([`need`]) is the only
//! place that decides what a call needs; a test checks that it names every
//! method of the contract, so a new method cannot be left open.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt as _;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::Error;

/// What a caller may do. A call needs exactly one (see [`need`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Profiles and lookups, with personal fields masked.
    ProfileRead,
    /// Personal fields in clear (with `profile:read`).
    ProfilePii,
    /// Balances, ledgers, benefits.
    LoyaltyRead,
    /// Redeem points.
    LoyaltyWrite,
    /// Adjust points: credits mint points, so this is its own scope.
    LoyaltyAdjust,
    /// `AdminService`: merges, erasure, export, status, stores, snapshots.
    Admin,
    /// Send events through the HTTP collector (`POST /v1/events`).
    EventsWrite,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::ProfileRead,
        Scope::ProfilePii,
        Scope::LoyaltyRead,
        Scope::LoyaltyWrite,
        Scope::LoyaltyAdjust,
        Scope::Admin,
        Scope::EventsWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::ProfileRead => "profile:read",
            Scope::ProfilePii => "profile:pii",
            Scope::LoyaltyRead => "loyalty:read",
            Scope::LoyaltyWrite => "loyalty:write",
            Scope::LoyaltyAdjust => "loyalty:adjust",
            Scope::Admin => "admin",
            Scope::EventsWrite => "events:write",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Every scope's name, for error messages.
    pub fn names() -> String {
        Scope::ALL.map(Scope::name).join(", ")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Scopes {
        Scope::ALL.into_iter().collect()
    }

    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Scopes {
        Scopes(iter.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    ApiKey,
    Jwt,
    /// Authentication is off (`auth.enabled = false`): every caller may do everything.
    Nobody,
}

/// The authenticated caller of a request, in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name, or the token's `sub`.
    pub name: String,
    pub scopes: Scopes,
    pub via: Via,
    /// The consent purpose this caller reads for (a key's `purpose`, a
    /// token's `purpose` claim): it sees only members who granted it.
    pub purpose: Option<String>,
}

impl Caller {
    /// The caller when authentication is off.
    pub fn unauthenticated() -> Caller {
        Caller { name: "anonymous".into(), scopes: Scopes::all(), via: Via::Nobody, purpose: None }
    }

    pub fn may(&self, s: Scope) -> bool {
        self.scopes.contains(s)
    }
}

/// `[auth]`: who may call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Every call must carry credentials (`authorization: Bearer ...`).
    /// Off only for a closed test network: then every caller may do everything.
    pub enabled: bool,
    /// The API keys file (`omnifold keys new` writes it): names, SHA-256
    /// hashes and scopes, never the keys themselves.
    pub keys_file: String,
    /// A JWKS file (JSON Web Key Set) whose public keys sign accepted
    /// JWTs; empty: JWTs are not accepted.
    pub jwks_file: String,
    /// A JWT's `iss` must be this (empty: not checked).
    pub jwt_issuer: String,
    /// A JWT's `aud` must include this (empty: not checked).
    pub jwt_audience: String,
    /// Clock skew allowed on a JWT's `exp` and `nbf`, in seconds.
    pub jwt_leeway_secs: u64,
    /// `grpc.health.v1` answers without credentials (probes carry none).
    pub open_health: bool,
    /// Server reflection answers without credentials.
    pub open_reflection: bool,
    /// Requests a second each caller may make (0: no limit); a key's own
    /// `rate_per_second` in the keys file overrides it. Over it:
    /// RESOURCE_EXHAUSTED with `omnifold-retry-after-ms`.
    pub rate_per_second: u32,
    /// Requests a caller may make at once above its rate (0: one second's worth).
    pub rate_burst: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: true,
            keys_file: String::new(),
            jwks_file: String::new(),
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_leeway_secs: 60,
            open_health: true,
            open_reflection: false,
            rate_per_second: 0,
            rate_burst: 0,
        }
    }
}

/// One entry of the keys file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Who holds the key (in logs, audit and errors).
    pub name: String,
    /// The SHA-256 of the key, in lower-case hex.
    pub sha256: String,
    pub scopes: Vec<String>,
    /// This key's own limit in requests a second (0: none), instead of
    /// `auth.rate_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
    /// The consent purpose this key reads for: it sees only members who
    /// granted it (for example `marketing`); absent: every member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

/// The keys file: `[[key]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    #[serde(default)]
    pub key: Vec<KeyEntry>,
}

/// The prefix of every API key, so a key is told from a JWT at a glance
/// (and found by secret scanners).
pub const KEY_PREFIX: &str = "omni_";

/// A new API key and its entry: the key is shown once, only the hash is kept.
pub fn new_api_key(name: &str, scopes: &[Scope]) -> (String, KeyEntry) {
    use rand::Rng;
    let secret: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(40).map(char::from).collect();
    let key = format!("{KEY_PREFIX}{secret}");
    let entry = KeyEntry {
        name: name.to_owned(),
        sha256: key_hash(&key),
        scopes: scopes.iter().map(|s| s.name().to_owned()).collect(),
        rate_per_second: None,
        purpose: None,
    };
    (key, entry)
}

/// The SHA-256 of a key in lower-case hex. A fast hash is enough: keys are
/// 238 random bits, not passwords, so there is nothing to guess.
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks credentials and scopes for every call.
#[derive(Debug)]
pub struct Authenticator {
    /// Callers by the SHA-256 of their key.
    keys: HashMap<String, Arc<Caller>>,
    jwt: Option<Jwt>,
    open_health: bool,
    open_reflection: bool,
    limits: Limits,
}

/// Per-caller request rates (GCRA, from `governor`).
#[derive(Debug, Default)]
struct Limits {
    /// API keys with a rate of their own (`None`: that key has no limit).
    keys: HashMap<String, Option<(u32, governor::DefaultDirectRateLimiter)>>,
    /// Every other caller, by kind and name, at `auth.rate_per_second`.
    shared: Option<(u32, governor::DefaultKeyedRateLimiter<String>)>,
    /// Checks since the shared limiter last forgot idle callers.
    checks: std::sync::atomic::AtomicU32,
}

impl Limits {
    fn quota(per_second: u32, burst: u32) -> Option<governor::Quota> {
        let rate = std::num::NonZeroU32::new(per_second)?;
        let burst = std::num::NonZeroU32::new(burst).unwrap_or(rate);
        Some(governor::Quota::per_second(rate).allow_burst(burst))
    }

    /// Ok, or how long the caller must wait, and the rate it is over.
    fn check(&self, caller: &Caller) -> Result<(), (std::time::Duration, u32)> {
        // The limiter's own clock, read only when a caller is over: making a
        // clock per call (CPU feature probes in quanta) cost a third of a
        // read's CPU (docs/benchmarks.md).
        use governor::clock::Clock as _;
        if caller.via == Via::ApiKey
            && let Some(own) = self.keys.get(&caller.name)
        {
            return match own {
                None => Ok(()),
                Some((rate, l)) => l.check().map_err(|n| (n.wait_time_from(l.clock().now()), *rate)),
            };
        }
        let Some((rate, shared)) = &self.shared else {
            return Ok(());
        };
        if self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 65_536 == 65_535 {
            shared.retain_recent();
        }
        let key = format!("{:?}/{}", caller.via, caller.name);
        shared.check_key(&key).map_err(|n| (n.wait_time_from(shared.clock().now()), *rate))
    }
}

struct Jwt {
    keys: Vec<(Option<String>, Option<Algorithm>, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

/// Signature algorithms a JWT may use: asymmetric only, so a public key
/// can never be used as an HMAC secret (the "alg confusion" attack).
const JWT_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Authenticator {
    /// The configured authenticator; `None` when authentication is off.
    pub fn from_config(c: &AuthConfig) -> Result<Option<Authenticator>, Error> {
        if !c.enabled {
            return Ok(None);
        }
        let keys = if c.keys_file.is_empty() { KeysFile::default() } else { read_keys(Path::new(&c.keys_file))? };
        let jwks = if c.jwks_file.is_empty() {
            None
        } else {
            let text = std::fs::read_to_string(&c.jwks_file)
                .map_err(|e| Error::Auth(format!("reading auth.jwks_file {}: {e}", c.jwks_file)))?;
            Some(
                serde_json::from_str::<JwkSet>(&text)
                    .map_err(|e| Error::Auth(format!("auth.jwks_file {} is not a JWK set: {e}", c.jwks_file)))?,
            )
        };
        if keys.key.is_empty() && jwks.is_none() {
            return Err(Error::Auth(
                "authentication is on but no API key or JWT key is configured: create a key with `omnifold keys \
                 new --name NAME --scopes ... --file keys.toml` and set auth.keys_file, or set auth.jwks_file \
                 (docs/security.md)"
                    .into(),
            ));
        }
        let mut auth = Authenticator::with_keys(&keys)?;
        if let Some(set) = jwks {
            auth.jwt = Some(Jwt::new(&set, c)?);
        }
        auth.open_health = c.open_health;
        auth.open_reflection = c.open_reflection;
        auth.limits.shared = Limits::quota(c.rate_per_second, c.rate_burst)
            .map(|q| (c.rate_per_second, governor::RateLimiter::keyed(q)));
        Ok(Some(auth))
    }

    /// An authenticator for the API keys in `file`, nothing open.
    pub fn with_keys(file: &KeysFile) -> Result<Authenticator, Error> {
        let mut keys = HashMap::new();
        let mut names = HashSet::new();
        let mut limits = Limits::default();
        for (i, k) in file.key.iter().enumerate() {
            let at = |m: String| Error::Auth(format!("keys file, key {} (`{}`): {m}", i + 1, k.name));
            if k.name.trim().is_empty() {
                return Err(at("name must not be empty".into()));
            }
            if !names.insert(k.name.as_str()) {
                return Err(at("another key has the same name".into()));
            }
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(at("sha256 must be 64 lower-case hex digits (`omnifold keys new` writes it)".into()));
            }
            let scopes = k
                .scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).ok_or_else(|| at(format!("unknown scope `{s}`; scopes are {}", Scope::names())))
                })
                .collect::<Result<Scopes, _>>()?;
            if let Some(rate) = k.rate_per_second {
                let limiter = Limits::quota(rate, 0).map(|q| (rate, governor::RateLimiter::direct(q)));
                limits.keys.insert(k.name.clone(), limiter);
            }
            if k.purpose.as_ref().is_some_and(|p| p.trim().is_empty()) {
                return Err(at(
                    "purpose must not be empty (leave it out for a caller that reads for any purpose)".into()
                ));
            }
            let caller = Caller { name: k.name.clone(), scopes, via: Via::ApiKey, purpose: k.purpose.clone() };
            if keys.insert(k.sha256.clone(), Arc::new(caller)).is_some() {
                return Err(at("another key has the same hash".into()));
            }
        }
        Ok(Authenticator { keys, jwt: None, open_health: false, open_reflection: false, limits })
    }

    /// Who is calling, from the `authorization` header.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Arc<Caller>, Status> {
        let header = authorization.ok_or_else(|| {
            Status::unauthenticated(
                "no credentials: send the metadata `authorization: Bearer <API key or JWT>` (docs/security.md)",
            )
        })?;
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Status::unauthenticated("the authorization metadata must be `Bearer <API key or JWT>`"))?;
        if token.starts_with(KEY_PREFIX) {
            return self.keys.get(&key_hash(token)).cloned().ok_or_else(|| Status::unauthenticated("unknown API key"));
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(token).map(Arc::new),
            None if token.matches('.').count() == 2 => {
                Err(Status::unauthenticated("JWTs are not accepted here (no auth.jwks_file is configured)"))
            }
            None => Err(Status::unauthenticated(format!(
                "unknown credentials: an API key starts with `{KEY_PREFIX}`, a JWT has three parts"
            ))),
        }
    }

    /// Whether a call to `path` may go on: its caller when credentials
    /// were needed and good, `None` for an open method.
    pub fn admit(&self, path: &str, authorization: Option<&[u8]>) -> Result<Option<Arc<Caller>>, Status> {
        self.check(path, authorization).map_err(|(status, _)| status)
    }

    /// [`Authenticator::admit`], with the caller of a refused call when it
    /// was authenticated (for the audit trail).
    pub(crate) fn check(&self, path: &str, authorization: Option<&[u8]>) -> Result<Option<Arc<Caller>>, Refusal> {
        let scopes: &[Scope] = match need(path) {
            Need::Health if self.open_health => return Ok(None),
            Need::Reflection if self.open_reflection => return Ok(None),
            Need::Health | Need::Reflection | Need::Unknown => &[],
            Need::Scope(s) => s,
        };
        let caller = self.authenticate(authorization).map_err(|s| (s, None))?;
        if let Some(s) = scopes.iter().find(|s| !caller.may(**s)) {
            let status = Status::permission_denied(format!(
                "`{}` may not call {}: it needs the scope {s}",
                caller.name,
                path.trim_start_matches('/')
            ));
            return Err((status, Some(caller)));
        }
        if let Err((wait, rate)) = self.limits.check(&caller) {
            return Err((over_limit(&caller, wait, rate), Some(caller)));
        }
        Ok(Some(caller))
    }
}

/// The client side: adds `authorization: Bearer <token>` (an API key or a
/// JWT) to every call, or nothing. The CLI, the tests and the load
/// generator all send their credentials with it.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// `None` when `token` holds characters a header cannot carry.
    pub fn new(token: &str) -> Option<Bearer> {
        format!("Bearer {token}").try_into().ok().map(|v| Bearer(Some(v)))
    }

    /// Sends no credentials.
    pub fn none() -> Bearer {
        Bearer(None)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A refused call: its answer, and its caller when it was authenticated.
type Refusal = (Status, Option<Arc<Caller>>);

/// RESOURCE_EXHAUSTED with the wait in `omnifold-retry-after-ms`.
fn over_limit(caller: &Caller, wait: std::time::Duration, rate: u32) -> Status {
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut meta = tonic::metadata::MetadataMap::new();
    meta.insert(crate::routing::RETRY_AFTER_MS, tonic::metadata::MetadataValue::from(ms));
    Status::with_metadata(
        tonic::Code::ResourceExhausted,
        format!("`{}` is over its limit of {rate} requests a second; retry in {ms} ms", caller.name),
        meta,
    )
}

/// Reads and checks a keys file.
pub fn read_keys(path: &Path) -> Result<KeysFile, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Auth(format!("reading the keys file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Error::Auth(format!("the keys file {}: {e}", path.display())))
}

/// The claims of a JWT omnifold reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    purpose: Option<String>,
    #[serde(default)]
    scope: Option<ScopeClaim>,
    #[serde(default)]
    scp: Option<ScopeClaim>,
}

/// OAuth 2 puts scopes in a space-separated `scope`; some issuers use an
/// array (`scp`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|(kid, alg, _)| (kid, alg)).collect();
        f.debug_struct("Jwt")
            .field("keys", &ids)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Jwt {
    fn new(set: &JwkSet, c: &AuthConfig) -> Result<Jwt, Error> {
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let at = |m: String| Error::Auth(format!("auth.jwks_file, key {}: {m}", i + 1));
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                return Err(at("symmetric (oct) keys are not accepted; use RSA, EC or Ed25519 public keys".into()));
            }
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(a) => Some(
                    a.to_string()
                        .parse::<Algorithm>()
                        .ok()
                        .filter(|a| JWT_ALGORITHMS.contains(a))
                        .ok_or_else(|| at(format!("alg {a} is not accepted")))?,
                ),
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| at(format!("not a usable public key: {e}")))?;
            keys.push((jwk.common.key_id.clone(), alg, key));
        }
        let set = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(Jwt { keys, issuer: set(&c.jwt_issuer), audience: set(&c.jwt_audience), leeway: c.jwt_leeway_secs })
    }

    fn verify(&self, token: &str) -> Result<Caller, Status> {
        let bad = |m: String| Status::unauthenticated(m);
        let header = jsonwebtoken::decode_header(token).map_err(|e| bad(format!("not a JWT: {e}")))?;
        if !JWT_ALGORITHMS.contains(&header.alg) {
            return Err(bad(format!("the token's algorithm {:?} is not accepted", header.alg)));
        }
        let candidates: Vec<_> = self
            .keys
            .iter()
            .filter(|(kid, alg, _)| {
                header.kid.as_ref().is_none_or(|k| kid.as_ref() == Some(k)) && alg.is_none_or(|a| a == header.alg)
            })
            .collect();
        if candidates.is_empty() {
            return Err(bad(match &header.kid {
                Some(kid) => format!("the token's key id `{kid}` is not among the configured keys"),
                None => "no configured key matches the token's algorithm".into(),
            }));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.issuer {
            Some(i) => validation.set_issuer(&[i]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        let mut last = None;
        for (_, _, key) in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(caller_of(data.claims)),
                Err(e) => last = Some(e),
            }
        }
        use jsonwebtoken::errors::ErrorKind;
        Err(bad(match last.as_ref().map(|e| e.kind()) {
            Some(ErrorKind::ExpiredSignature) => "the token has expired".into(),
            Some(ErrorKind::ImmatureSignature) => "the token is not valid yet (nbf)".into(),
            Some(ErrorKind::InvalidSignature) => "the token's signature does not verify".into(),
            Some(ErrorKind::InvalidIssuer) => "the token's issuer (iss) is not the configured one".into(),
            Some(ErrorKind::InvalidAudience) => "the token's audience (aud) does not include this service".into(),
            Some(ErrorKind::MissingRequiredClaim(c)) => format!("the token has no `{c}` claim"),
            _ => format!("the token is not valid: {}", last.map_or_else(String::new, |e| e.to_string())),
        }))
    }
}

/// A verified token's caller; scope names omnifold does not know are
/// ignored (one token may serve several services).
fn caller_of(claims: Claims) -> Caller {
    let names: Vec<String> = [claims.scope, claims.scp]
        .into_iter()
        .flatten()
        .flat_map(|c| match c {
            ScopeClaim::Text(t) => t.split_whitespace().map(str::to_owned).collect(),
            ScopeClaim::List(l) => l,
        })
        .collect();
    Caller {
        name: claims.sub,
        scopes: names.iter().filter_map(|n| Scope::parse(n)).collect(),
        via: Via::Jwt,
        purpose: claims.purpose.filter(|p| !p.trim().is_empty()),
    }
}

/// What a call to a method path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Every one of these.
    Scope(&'static [Scope]),
    /// `grpc.health.v1`: open or authenticated (`auth.open_health`).
    Health,
    /// Server reflection: open or authenticated (`auth.open_reflection`).
    Reflection,
    /// No such method: authenticated first, then tonic answers UNIMPLEMENTED
    /// (an anonymous caller learns nothing about what exists).
    Unknown,
}

/// The name the HTTP event collector is checked, limited and counted under.
pub(crate) const HTTP_EVENTS_SERVICE: &str = "omnifold.http.Events";
pub(crate) const HTTP_EVENTS_METHOD: &str = "Collect";

/// The scope each method needs.
pub(crate) fn need(path: &str) -> Need {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Need::Unknown;
    };
    match (service, method) {
        ("omnifold.v1.ProfileService", "GetProfile" | "BatchGetProfiles" | "LookupIdentifier" | "WatchProfile") => {
            Need::Scope(&[Scope::ProfileRead])
        }
        ("omnifold.v1.AudienceService", "ListAudiences" | "GetAudience" | "ListAudienceMembers") => {
            Need::Scope(&[Scope::ProfileRead])
        }
        ("omnifold.v1.LoyaltyService", "GetBalance" | "ListLedger" | "GetBenefits") => {
            Need::Scope(&[Scope::LoyaltyRead])
        }
        ("omnifold.v1.LoyaltyService", "RedeemPoints") => Need::Scope(&[Scope::LoyaltyWrite]),
        ("omnifold.v1.LoyaltyService", "AdjustPoints") => Need::Scope(&[Scope::LoyaltyAdjust]),
        // Everything held about a person, in clear.
        ("omnifold.v1.AdminService", "ExportMember") => Need::Scope(&[Scope::Admin, Scope::ProfilePii]),
        (
            "omnifold.v1.AdminService",
            "EraseMember" | "MergeMembers" | "GetPartitionStatus" | "GetReplayStatus" | "SwitchStore"
            | "GetPointsLiability" | "TakeSnapshot" | "CreateAudience" | "UpdateAudience" | "DeleteAudience",
        ) => Need::Scope(&[Scope::Admin]),
        // Not a gRPC method: the HTTP event collector, checked by the same table.
        (HTTP_EVENTS_SERVICE, HTTP_EVENTS_METHOD) => Need::Scope(&[Scope::EventsWrite]),
        ("grpc.health.v1.Health", _) => Need::Health,
        ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _) => Need::Reflection,
        _ => Need::Unknown,
    }
}

/// The tower layer that admits calls: the rest of the call runs as its
/// caller (services read it with [`caller`]), a refusal is answered here
/// and never reaches a service.
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    pub(crate) auth: Option<Arc<Authenticator>>,
    /// Where refusals of audited methods are recorded, and this instance's name.
    pub(crate) audit: Option<(Arc<dyn crate::audit::AuditLog>, String)>,
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Admit<S> {
        Admit { inner, auth: self.auth.clone(), audit: self.audit.clone() }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Admit<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
    audit: Option<(Arc<dyn crate::audit::AuditLog>, String)>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Admit<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        std::future::Ready<Result<S::Response, S::Error>>,
        tokio::task::futures::TaskLocalFuture<
            Arc<Caller>,
            futures::future::Map<S::Future, fn(Result<S::Response, S::Error>) -> Result<S::Response, S::Error>>,
        >,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let admitted = match &self.auth {
            None => Ok(None),
            Some(auth) => {
                let header = req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
                auth.check(req.uri().path(), header)
            }
        };
        match admitted {
            // Authentication off, or an open method (health, reflection):
            // an anonymous caller who reads for no purpose.
            Ok(caller) => {
                let caller = caller.unwrap_or_else(|| Arc::new(Caller::unauthenticated()));
                let answer = self.inner.call(req).map(undecodable_is_invalid::<S::Error> as fn(_) -> _);
                futures::future::Either::Right(CURRENT.scope(caller, answer))
            }
            Err((status, caller)) => {
                refused(self.audit.as_ref(), req.uri().path(), caller.as_deref(), &status);
                futures::future::Either::Left(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Records a refused call: in the audit trail when its method is audited,
/// in `omnifold_requests_refused_total`, and in the debug log.
pub(crate) fn refused(
    audit: Option<&(Arc<dyn crate::audit::AuditLog>, String)>,
    path: &str,
    caller: Option<&Caller>,
    status: &Status,
) {
    if let Some((log, instance)) = audit
        && crate::audit::audited(path)
    {
        crate::audit::refused(log, instance.clone(), path, caller, status);
    }
    let reason = match status.code() {
        tonic::Code::PermissionDenied => "scope",
        tonic::Code::ResourceExhausted => "rate",
        _ => "credentials",
    };
    metrics::counter!("omnifold_requests_refused_total", "reason" => reason).increment(1);
    tracing::debug!(path, code = ?status.code(), message = status.message(), "refused");
}

tokio::task_local! {
    /// The caller of the request being served, for the reads deep below
    /// the handlers that depend on who asks (a purpose-bound caller's view).
    static CURRENT: Arc<Caller>;
}

/// The caller of the request being served on this task, if any.
pub(crate) fn current() -> Option<Arc<Caller>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// The caller of the request being served (set by the layer for every
/// call; everything is allowed outside one, as with authentication off).
pub(crate) fn caller() -> Arc<Caller> {
    current().unwrap_or_else(|| Arc::new(Caller::unauthenticated()))
}

/// Runs `f` (a task spawned for the request, such as a stream's) as
/// `caller`'s request.
pub(crate) async fn scoped<F: std::future::Future>(caller: Arc<Caller>, f: F) -> F::Output {
    CURRENT.scope(caller, f).await
}

/// Runs `f` (on a blocking thread) as `caller`'s request.
pub(crate) fn as_caller<T>(caller: Option<Arc<Caller>>, f: impl FnOnce() -> T) -> T {
    match caller {
        Some(c) => CURRENT.sync_scope(c, f),
        None => f(),
    }
}

/// A request body that is not a message of its method is the caller's
/// mistake: tonic's codec answers it INTERNAL, which this turns into
/// INVALID_ARGUMENT (the only status rewritten outside `From<Error>`).
fn undecodable_is_invalid<E>(
    answer: Result<http::Response<tonic::body::Body>, E>,
) -> Result<http::Response<tonic::body::Body>, E> {
    answer.map(|mut response| {
        if let Some(status) = tonic::Status::from_header_map(response.headers())
            && status.code() == tonic::Code::Internal
            && status.message().starts_with("failed to decode Protobuf message")
        {
            let fixed = Status::invalid_argument(format!(
                "the request is not a valid message of this method ({}); send the method's request message",
                status.message().trim_start_matches("failed to decode Protobuf message: ")
            ));
            let _ = fixed.add_header(response.headers_mut());
        }
        response
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(entries: &[(&str, &[Scope])]) -> (Vec<String>, Authenticator) {
        let (keys, file): (Vec<_>, Vec<_>) = entries.iter().map(|(n, s)| new_api_key(n, s)).unzip();
        (keys, Authenticator::with_keys(&KeysFile { key: file }).unwrap())
    }

    fn bearer(k: &str) -> Vec<u8> {
        format!("Bearer {k}").into_bytes()
    }

    #[test]
    fn an_api_key_is_its_callers_and_only_its_hash_is_kept() {
        let (k, auth) = keys(&[("crm", &[Scope::ProfileRead]), ("app", &[Scope::LoyaltyRead, Scope::LoyaltyWrite])]);
        assert!(k[0].starts_with(KEY_PREFIX) && k[0].len() == KEY_PREFIX.len() + 40);
        assert_ne!(k[0], k[1]);
        let crm = auth.authenticate(Some(&bearer(&k[0]))).unwrap();
        assert_eq!((crm.name.as_str(), crm.via), ("crm", Via::ApiKey));
        assert_eq!(crm.scopes.iter().collect::<Vec<_>>(), [Scope::ProfileRead]);
        assert!(auth.keys.keys().all(|h| !k.contains(h)), "the keys themselves are not held");
        let app = auth.authenticate(Some(format!("bearer   {}", k[1]).as_bytes())).unwrap();
        assert_eq!(app.name, "app");
    }

    #[test]
    fn missing_malformed_and_unknown_credentials_are_unauthenticated() {
        let (_, auth) = keys(&[("crm", &[Scope::ProfileRead])]);
        let code = |h: Option<&[u8]>| {
            let e = auth.authenticate(h).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
            e.message().to_owned()
        };
        assert!(code(None).contains("no credentials"));
        assert!(code(Some(b"Basic dXNlcjpwYXNz")).contains("Bearer"));
        assert!(code(Some(b"Bearer ")).contains("Bearer"));
        assert_eq!(code(Some(b"Bearer omni_notakey")), "unknown API key");
        assert!(code(Some(b"Bearer a.b.c")).contains("JWTs are not accepted"));
        assert!(code(Some(b"Bearer hunter2")).contains("unknown credentials"));
    }

    #[test]
    fn each_method_needs_its_scope_and_a_missing_one_is_named() {
        let (k, auth) = keys(&[("crm", &[Scope::ProfileRead, Scope::LoyaltyRead])]);
        let h = bearer(&k[0]);
        assert!(auth.admit("/omnifold.v1.ProfileService/GetProfile", Some(&h)).unwrap().is_some());
        assert!(auth.admit("/omnifold.v1.LoyaltyService/GetBalance", Some(&h)).is_ok());
        let denied = auth.admit("/omnifold.v1.LoyaltyService/AdjustPoints", Some(&h)).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            denied.message(),
            "`crm` may not call omnifold.v1.LoyaltyService/AdjustPoints: it needs the scope loyalty:adjust"
        );
        // An unknown method is authenticated before it is found missing.
        assert_eq!(auth.admit("/omnifold.v1.Nope/Nothing", None).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(auth.admit("/omnifold.v1.Nope/Nothing", Some(&h)).is_ok());
    }

    #[test]
    fn health_and_reflection_are_open_only_when_configured() {
        let (k, mut auth) = keys(&[("ops", &[])]);
        let health = "/grpc.health.v1.Health/Check";
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert_eq!(auth.admit(health, None).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(auth.admit(health, Some(&bearer(&k[0]))).unwrap().is_some(), "any caller, no scope needed");
        auth.open_health = true;
        assert_eq!(auth.admit(health, None).unwrap(), None);
        assert_eq!(auth.admit(reflection, None).unwrap_err().code(), tonic::Code::Unauthenticated);
        auth.open_reflection = true;
        assert_eq!(auth.admit(reflection, None).unwrap(), None);
    }

    /// Every method of the contract has a scope: a new one cannot be left open.
    #[test]
    fn every_method_of_the_contract_needs_a_scope() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(omnifold_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                for m in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), m.name());
                    assert!(matches!(need(&path), Need::Scope(_)), "{path} has no scope in auth::need");
                    methods += 1;
                }
            }
        }
        assert!(methods >= 17, "found only {methods} methods in the descriptor set");
    }

    #[test]
    fn a_caller_over_its_rate_is_told_when_to_retry_and_others_are_not_held_up() {
        let (mut k, mut entries): (Vec<_>, Vec<_>) = [("slow", Scope::ProfileRead), ("free", Scope::ProfileRead)]
            .iter()
            .map(|(n, s)| new_api_key(n, &[*s]))
            .unzip();
        entries[0].rate_per_second = Some(2);
        let (free, slow) = (bearer(&k.pop().unwrap()), bearer(&k.pop().unwrap()));
        let auth = Authenticator::with_keys(&KeysFile { key: entries }).unwrap();
        let path = "/omnifold.v1.ProfileService/GetProfile";
        assert!(auth.admit(path, Some(&slow)).is_ok() && auth.admit(path, Some(&slow)).is_ok(), "a burst of 2");
        let over = auth.admit(path, Some(&slow)).unwrap_err();
        assert_eq!(over.code(), tonic::Code::ResourceExhausted);
        assert!(
            over.message().starts_with("`slow` is over its limit of 2 requests a second; retry in "),
            "{}",
            over.message()
        );
        let wait: u64 = over.metadata().get("omnifold-retry-after-ms").unwrap().to_str().unwrap().parse().unwrap();
        assert!((1..=500).contains(&wait), "one request's share of a second at most: {wait}");
        for _ in 0..100 {
            assert!(auth.admit(path, Some(&free)).is_ok(), "a key without a rate is not limited");
        }
        let mut shared = Authenticator::with_keys(&KeysFile { key: vec![new_api_key("a", &[]).1] }).unwrap();
        shared.limits.shared = Limits::quota(1, 0).map(|q| (1, governor::RateLimiter::keyed(q)));
        let jwt_caller =
            |name: &str| Caller { name: name.into(), scopes: Scopes::default(), via: Via::Jwt, purpose: None };
        assert!(shared.limits.check(&jwt_caller("x")).is_ok());
        assert_eq!(shared.limits.check(&jwt_caller("x")).unwrap_err().1, 1);
        assert!(shared.limits.check(&jwt_caller("y")).is_ok(), "each caller has its own allowance");
    }

    #[test]
    fn a_bad_keys_file_says_what_to_fix() {
        let entry = |name: &str, sha: &str, scopes: &[&str]| KeyEntry {
            name: name.into(),
            sha256: sha.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            rate_per_second: None,
            purpose: None,
        };
        let hash = key_hash("omni_x");
        let err = |key: Vec<KeyEntry>| Authenticator::with_keys(&KeysFile { key }).unwrap_err().to_string();
        assert!(
            err(vec![entry("a", &hash, &["profile:write"])])
                .contains("unknown scope `profile:write`; scopes are profile:read")
        );
        assert!(err(vec![entry("a", "ABC", &[])]).contains("64 lower-case hex"));
        assert!(err(vec![entry("a", &hash, &[]), entry("a", &key_hash("omni_y"), &[])]).contains("same name"));
        assert!(err(vec![entry("a", &hash, &[]), entry("b", &hash, &[])]).contains("same hash"));
        assert!(err(vec![entry(" ", &hash, &[])]).contains("name must not be empty"));
        let off = AuthConfig { enabled: false, ..Default::default() };
        assert!(Authenticator::from_config(&off).unwrap().is_none());
        let nothing = Authenticator::from_config(&AuthConfig::default()).unwrap_err().to_string();
        assert!(nothing.contains("omnifold keys new"), "{nothing}");
    }

    mod jwt {
        use super::*;
        use base64::Engine as _;
        use jsonwebtoken::{EncodingKey, Header};

        struct Signer {
            key: EncodingKey,
            jwk: serde_json::Value,
        }

        fn signer(kid: &str) -> Signer {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
            let key = EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap();
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
            let jwk =
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
            Signer { key, jwk }
        }

        fn now() -> i64 {
            crate::now_millis() / 1000
        }

        impl Signer {
            fn token(&self, kid: &str, claims: serde_json::Value) -> String {
                let mut header = Header::new(Algorithm::EdDSA);
                header.kid = Some(kid.into());
                jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
            }
        }

        fn verifier(signers: &[&Signer], config: &AuthConfig) -> Jwt {
            let set: JwkSet =
                serde_json::from_value(serde_json::json!({"keys": signers.iter().map(|s| &s.jwk).collect::<Vec<_>>()}))
                    .unwrap();
            Jwt::new(&set, config).unwrap()
        }

        fn refused(jwt: &Jwt, token: &str) -> String {
            let e = jwt.verify(token).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            e.message().to_owned()
        }

        #[test]
        fn a_signed_token_is_its_subject_with_the_scopes_omnifold_knows() {
            let s = signer("k1");
            let jwt = verifier(&[&s], &AuthConfig::default());
            let t = s.token("k1", serde_json::json!({"sub": "crm-svc", "exp": now() + 600, "scope": "profile:read orders:write loyalty:read"}));
            let caller = jwt.verify(&t).unwrap();
            assert_eq!((caller.name.as_str(), caller.via), ("crm-svc", Via::Jwt));
            assert_eq!(caller.scopes.iter().collect::<Vec<_>>(), [Scope::ProfileRead, Scope::LoyaltyRead]);
            let t = s.token("k1", serde_json::json!({"sub": "app", "exp": now() + 600, "scp": ["loyalty:write"]}));
            assert_eq!(jwt.verify(&t).unwrap().scopes.iter().collect::<Vec<_>>(), [Scope::LoyaltyWrite]);
        }

        #[test]
        fn expired_forged_and_foreign_tokens_are_refused() {
            let (s, other) = (signer("k1"), signer("k1"));
            let jwt = verifier(&[&s], &AuthConfig::default());
            let claims = serde_json::json!({"sub": "crm", "exp": now() + 600, "scope": "admin"});
            let expired = s.token("k1", serde_json::json!({"sub": "crm", "exp": now() - 120, "scope": "admin"}));
            assert_eq!(refused(&jwt, &expired), "the token has expired");
            assert_eq!(refused(&jwt, &other.token("k1", claims.clone())), "the token's signature does not verify");
            assert!(refused(&jwt, &s.token("k9", claims.clone())).contains("key id `k9` is not among"));
            let no_exp = s.token("k1", serde_json::json!({"sub": "crm"}));
            assert_eq!(refused(&jwt, &no_exp), "the token has no `exp` claim");
            let hmac = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"the public key, misused as a secret"),
            )
            .unwrap();
            assert!(refused(&jwt, &hmac).contains("HS256 is not accepted"));
            assert!(refused(&jwt, "not.a.jwt").starts_with("not a JWT"));
        }

        #[test]
        fn issuer_and_audience_are_checked_when_configured() {
            let s = signer("k1");
            let config = AuthConfig {
                jwt_issuer: "https://idp.example".into(),
                jwt_audience: "omnifold".into(),
                ..Default::default()
            };
            let jwt = verifier(&[&s], &config);
            let token = |iss: &str, aud: &str| {
                s.token("k1", serde_json::json!({"sub": "x", "exp": now() + 600, "iss": iss, "aud": aud}))
            };
            assert!(jwt.verify(&token("https://idp.example", "omnifold")).is_ok());
            assert!(refused(&jwt, &token("https://evil.example", "omnifold")).contains("issuer"));
            assert!(refused(&jwt, &token("https://idp.example", "billing")).contains("audience"));
        }

        #[test]
        fn a_symmetric_key_in_the_jwks_is_refused() {
            let set: JwkSet =
                serde_json::from_value(serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}))
                    .unwrap();
            let e = Jwt::new(&set, &AuthConfig::default()).unwrap_err().to_string();
            assert!(e.contains("symmetric (oct) keys are not accepted"), "{e}");
        }
    }
}
