//! HTTPS: a rustls server configuration (ring provider) from PEM files, with errors that name
//! the file and say what to do.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::app::ServeError;
use crate::config::TlsFiles;

/// A rustls configuration serving `files`' certificate chain with its key (HTTP/1.1 and 2).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Setup(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            ServeError::Setup(format!(
                "TLS: the key {} does not go with the certificate {}: {e}; pass the key the certificate was issued for",
                files.key.display(),
                files.cert.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|e| {
        ServeError::Setup(format!(
            "TLS: cannot read the {what} {}: {e}; check the path given to --tls-{}",
            path.display(),
            if what == "certificate" { "cert" } else { "key" }
        ))
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServeError> {
    let pem = read_pem(path, "certificate")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ServeError::Setup(format!(
                "TLS: {} is not a PEM certificate chain: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ServeError::Setup(format!(
            "TLS: {} holds no certificate; --tls-cert wants a PEM file with `-----BEGIN CERTIFICATE-----` blocks, the server's first",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ServeError> {
    let pem = read_pem(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ServeError::Setup(format!(
            "TLS: {} holds no usable private key ({e}); --tls-key wants a PEM PKCS#8, PKCS#1 or SEC1 key",
            path.display()
        ))
    })
}
