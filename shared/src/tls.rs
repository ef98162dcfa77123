//! TLS settings of the gRPC API and `lift serve`, read from PEM files named in [`Config`].
//! Servers: a certificate chain and key, optionally a CA whose client certificates they
//! require (mutual TLS). Clients: a CA to trust instead of the system roots, optionally a
//! client certificate. rustls with the ring provider throughout.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::error::LiftError;

/// How long a client has to complete the TLS handshake, on the gRPC API and `lift serve`
/// alike: a socket that never sends its hello would otherwise hold its connection (and, on
/// shutdown, the process) for ever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes ring the process's rustls provider. Some libraries build their TLS configuration
/// from the process default (tonic's server does), and with two providers compiled in (ring,
/// and aws-lc-rs through the S3 client) rustls cannot pick one and panics. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_pem(path: &str, what: &str) -> Result<Vec<u8>, LiftError> {
    std::fs::read(path)
        .map_err(|e| LiftError::InvalidArgument(format!("cannot read the {what} {path}: {e}")))
}

/// What a TLS server presents and whom it lets in.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
}

impl ServerTls {
    /// None when no certificate is configured (plain TCP).
    pub fn from_config(config: &Config) -> Result<Option<Self>, LiftError> {
        if config.tls_cert.trim().is_empty() {
            return Ok(None);
        }
        let client_ca_pem = match config.tls_client_ca.trim() {
            "" => None,
            path => Some(read_pem(path, "client CA (LIFT_TLS_CLIENT_CA)")?),
        };
        let tls = Self {
            cert_pem: read_pem(&config.tls_cert, "certificate (LIFT_TLS_CERT)")?,
            key_pem: read_pem(&config.tls_key, "key (LIFT_TLS_KEY)")?,
            client_ca_pem,
        };
        // Parse once now, so a bad file stops the process at start with a clear reason.
        tls.rustls()?;
        Ok(Some(tls))
    }

    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// For tonic's server.
    pub fn tonic(&self) -> tonic::transport::ServerTlsConfig {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        install_crypto_provider();
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }

    /// For an HTTP server (`lift serve`): HTTP/1.1 and HTTP/2 by ALPN.
    pub fn rustls(&self) -> Result<Arc<rustls::ServerConfig>, LiftError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            LiftError::InvalidArgument(format!("invalid {what}: {e}"))
        };
        let chain = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("certificate (LIFT_TLS_CERT)", &e))?;
        if chain.is_empty() {
            return Err(LiftError::InvalidArgument(
                "the certificate file (LIFT_TLS_CERT) holds no PEM certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| invalid("key (LIFT_TLS_KEY)", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS setup", &e))?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    roots
                        .add(cert.map_err(|e| invalid("client CA (LIFT_TLS_CLIENT_CA)", &e))?)
                        .map_err(|e| invalid("client CA (LIFT_TLS_CLIENT_CA)", &e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .map_err(|e| invalid("client CA (LIFT_TLS_CLIENT_CA)", &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| invalid("certificate and key (LIFT_TLS_CERT, LIFT_TLS_KEY)", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// What a TLS client trusts and presents.
#[derive(Clone, Default)]
pub struct ClientTls {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    pub fn from_config(config: &Config) -> Result<Self, LiftError> {
        let ca_pem = match config.tls_ca.trim() {
            "" => None,
            path => Some(read_pem(path, "CA (LIFT_TLS_CA)")?),
        };
        let identity = match config.tls_client_cert.trim() {
            "" => None,
            path => Some((
                read_pem(path, "client certificate (LIFT_TLS_CLIENT_CERT)")?,
                read_pem(&config.tls_client_key, "client key (LIFT_TLS_CLIENT_KEY)")?,
            )),
        };
        Ok(Self { ca_pem, identity })
    }

    /// For a tonic channel to an `https://` address.
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_certificate_means_plain_tcp_and_a_missing_file_is_named() {
        assert!(ServerTls::from_config(&Config::default())
            .unwrap()
            .is_none());
        let config = Config {
            tls_cert: "/nonexistent/cert.pem".into(),
            tls_key: "/nonexistent/key.pem".into(),
            ..Config::default()
        };
        let error = ServerTls::from_config(&config).err().unwrap().to_string();
        assert!(error.contains("/nonexistent/cert.pem"), "{error}");
    }

    #[test]
    fn a_file_without_a_certificate_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let path = junk.display().to_string();
        let config = Config {
            tls_cert: path.clone(),
            tls_key: path,
            ..Config::default()
        };
        let error = ServerTls::from_config(&config).err().unwrap().to_string();
        assert!(error.contains("LIFT_TLS_CERT"), "{error}");
    }
}
