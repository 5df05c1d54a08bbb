//! How the CLI reaches a running `omnifold serve`: the address, and the
//! credentials every call carries (`OMNIFOLD_API_KEY`: an API key or a JWT).

use anyhow::{Context, Result};
use omnifold_server::auth::Bearer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The environment variable the CLI reads its credentials from (never a
/// flag: a flag's value shows in `ps` and in shell history).
pub const API_KEY_ENV: &str = "OMNIFOLD_API_KEY";

/// The credentials in `OMNIFOLD_API_KEY`; none when it is unset.
fn credentials_from_env() -> Result<Bearer> {
    match std::env::var(API_KEY_ENV) {
        Ok(k) if !k.trim().is_empty() => {
            Bearer::new(k.trim()).with_context(|| format!("{API_KEY_ENV} holds characters a header cannot carry"))
        }
        _ => Ok(Bearer::none()),
    }
}

/// A connection to a running instance that authenticates every call.
pub type Connection = InterceptedService<Channel, Bearer>;

/// The CA that signed the server's certificate (PEM), for `https://` servers.
pub const TLS_CA_ENV: &str = "OMNIFOLD_TLS_CA";
/// The CLI's own certificate and key (PEM), when the server asks for one (mutual TLS).
pub const TLS_CERT_ENV: &str = "OMNIFOLD_TLS_CERT";
pub const TLS_KEY_ENV: &str = "OMNIFOLD_TLS_KEY";

/// TLS for an `https://` server, from the environment.
fn tls_from_env() -> Result<tonic::transport::ClientTlsConfig> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |var: &str| -> Result<Option<String>> {
        match std::env::var(var) {
            Ok(path) if !path.is_empty() => {
                std::fs::read_to_string(&path).map(Some).with_context(|| format!("reading {var}={path}"))
            }
            _ => Ok(None),
        }
    };
    let ca = read(TLS_CA_ENV)?.with_context(|| {
        format!("an https:// server needs {TLS_CA_ENV}: the CA certificate (PEM) that signed its certificate")
    })?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    match (read(TLS_CERT_ENV)?, read(TLS_KEY_ENV)?) {
        (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(cert, key)),
        (None, None) => {}
        _ => anyhow::bail!("{TLS_CERT_ENV} and {TLS_KEY_ENV} go together"),
    }
    Ok(tls)
}

/// Connects to `server` with the credentials (and, for `https://`, the
/// TLS files) in the environment.
pub async fn connect(server: &str) -> Result<Connection> {
    let mut endpoint = Channel::from_shared(server.to_owned())
        .with_context(|| format!("`{server}` is not a URL like http://127.0.0.1:50051"))?;
    if server.starts_with("https://") {
        endpoint = endpoint.tls_config(tls_from_env()?)?;
    }
    let channel =
        endpoint.connect().await.with_context(|| format!("connecting to {server}; is `omnifold serve` running?"))?;
    Ok(InterceptedService::new(channel, credentials_from_env()?))
}
