//! TLS configuration helpers (feature `tls`): rustls with the *ring* provider only, so the
//! configuration never depends on which crypto features other crates switch on.
//!
//! ```no_run
//! # fn run(cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Result<(), qsocket::Error> {
//! use qsocket::session::tls;
//! let server = tls::server_config(cert_pem, key_pem)?;   // for Server::builder(..).tls(server)
//! let client = tls::client_config(ca_pem)?;              // for Client::builder(..).tls(client)
//! # Ok(()) }
//! ```

use crate::Error;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;

pub use rustls;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str) -> impl Fn(rustls::Error) -> Error + '_ {
    move |e| Error::Tls(format!("{what}: {e}"))
}

/// Parses every certificate in a PEM document.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("reading certificates: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls("no certificate found in the PEM data".into()));
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM document.
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::Tls(format!("reading private key: {e}")))
}

fn roots(ca_pem: &[u8]) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots
            .add(cert)
            .map_err(tls_err("adding a root certificate"))?;
    }
    Ok(roots)
}

/// A server configuration from a PEM certificate chain and private key.
pub fn server_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, Error> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("protocol versions"))?
        .with_no_client_auth()
        .with_single_cert(certs_from_pem(cert_chain_pem)?, key_from_pem(key_pem)?)
        .map_err(tls_err("server certificate"))?;
    Ok(Arc::new(config))
}

/// A server configuration that also requires a client certificate signed by one of the CAs
/// in `client_ca_pem`.
pub fn server_config_with_client_auth(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
) -> Result<Arc<ServerConfig>, Error> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(client_ca_pem)?),
        provider(),
    )
    .build()
    .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_from_pem(cert_chain_pem)?, key_from_pem(key_pem)?)
        .map_err(tls_err("server certificate"))?;
    Ok(Arc::new(config))
}

/// A client configuration trusting the CA certificates in `root_ca_pem`.
pub fn client_config(root_ca_pem: &[u8]) -> Result<Arc<ClientConfig>, Error> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("protocol versions"))?
        .with_root_certificates(roots(root_ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration trusting `root_ca_pem` that presents a client certificate.
pub fn client_config_with_identity(
    root_ca_pem: &[u8],
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ClientConfig>, Error> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("protocol versions"))?
        .with_root_certificates(roots(root_ca_pem)?)
        .with_client_auth_cert(certs_from_pem(cert_chain_pem)?, key_from_pem(key_pem)?)
        .map_err(tls_err("client certificate"))?;
    Ok(Arc::new(config))
}
