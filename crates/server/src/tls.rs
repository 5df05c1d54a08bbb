//! TLS on the gRPC port (rustls), optionally mutual: callers then present a
//! certificate from the configured CA. The same certificate identifies
//! this instance when it forwards a request to another.

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::Error;

/// `[server.tls]`: PEM files; no `cert`: plain text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// This instance's certificate chain (PEM). Set, the gRPC port speaks
    /// only TLS. With `client_ca` set it also needs the clientAuth usage:
    /// it is what this instance presents when it forwards a request.
    pub cert: String,
    /// The certificate's private key (PEM).
    pub key: String,
    /// Callers must present a certificate signed by this CA (mutual TLS);
    /// empty: no client certificate is asked for.
    pub client_ca: String,
    /// The CA that signed the other instances' certificates, checked when
    /// forwarding to them; empty: `client_ca`.
    pub ca: String,
}

/// The loaded files: what the server presents and what it trusts.
#[derive(Debug, Clone)]
pub struct Tls {
    pub(crate) server: ServerTlsConfig,
    /// For requests forwarded to other instances (`https://` addresses).
    pub(crate) peers: Option<ClientTlsConfig>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty()
    }

    /// The files read and checked; `None` when TLS is off.
    pub fn load(&self) -> Result<Option<Tls>, Error> {
        if !self.enabled() {
            if !(self.key.is_empty() && self.client_ca.is_empty() && self.ca.is_empty()) {
                return Err(Error::Tls("key, client_ca and ca need cert: set server.tls.cert".into()));
            }
            return Ok(None);
        }
        if self.key.is_empty() {
            return Err(Error::Tls("server.tls.cert needs server.tls.key, its private key".into()));
        }
        let identity = Identity::from_pem(pem("cert", &self.cert)?, pem("key", &self.key)?);
        let mut server = ServerTlsConfig::new().identity(identity.clone());
        if !self.client_ca.is_empty() {
            server = server.client_ca_root(Certificate::from_pem(pem("client_ca", &self.client_ca)?));
        }
        let peer_ca = if self.ca.is_empty() { &self.client_ca } else { &self.ca };
        let peers = (!peer_ca.is_empty()).then(|| -> Result<ClientTlsConfig, Error> {
            let name = if self.ca.is_empty() { "client_ca" } else { "ca" };
            Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem(name, peer_ca)?)).identity(identity))
        });
        Ok(Some(Tls { server, peers: peers.transpose()? }))
    }
}

/// A PEM file's text, checked to hold a PEM block.
fn pem(field: &str, path: &str) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Tls(format!("server.tls.{field} {path}: {e}")))?;
    if !text.contains("-----BEGIN ") {
        return Err(Error::Tls(format!("server.tls.{field} {path} holds no PEM block (-----BEGIN ...)")));
    }
    Ok(text)
}
