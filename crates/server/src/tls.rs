//! TLS on the gRPC and HTTP ports (rustls), optionally mutual: callers
//! then present a certificate from the configured CA. The same certificate
//! identifies this instance when it forwards a request to another.

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
    /// The HTTP port's: the same certificate and client CA.
    pub(crate) http: std::sync::Arc<tokio_rustls::rustls::ServerConfig>,
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
        let http = std::sync::Arc::new(self.http_config()?);
        Ok(Some(Tls { server, peers: peers.transpose()?, http }))
    }

    /// The rustls configuration of the HTTP port.
    fn http_config(&self) -> Result<tokio_rustls::rustls::ServerConfig, Error> {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls;
        let bad = |field: &str, e: &dyn std::fmt::Display| Error::Tls(format!("server.tls.{field}: {e}"));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| bad("cert", &e))?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| bad("key", &e))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("cert", &e))?;
        let builder = if self.client_ca.is_empty() {
            builder.with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&self.client_ca).map_err(|e| bad("client_ca", &e))? {
                roots.add(c.map_err(|e| bad("client_ca", &e))?).map_err(|e| bad("client_ca", &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|e| bad("client_ca", &e))?;
            builder.with_client_cert_verifier(verifier)
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| bad("cert", &e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The HTTP port's listener with TLS: each accepted connection is
/// handshaken before axum sees it; a failed handshake is logged and
/// dropped, never served.
pub(crate) struct TlsListener {
    pub(crate) tcp: tokio::net::TcpListener,
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.acceptor.accept(stream).await {
                Ok(tls) => return (tls, addr),
                Err(e) => tracing::debug!(%addr, error = %e, "a TLS handshake on the HTTP port failed"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
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
