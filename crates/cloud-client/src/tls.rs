//! TLS to the cloud from PEM files: the CA that signed the cloud's certificate and, for mutual
//! TLS, this edge's own certificate and key.

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::link::TlsFiles;
use crate::{Error, Result};

pub fn client_config(files: &TlsFiles) -> Result<ClientTlsConfig> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| Error::Config(format!("cannot read the {what} {}: {e}", path.display())))
    };
    let mut config =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&files.ca, "CA")?));
    if let Some((cert, key)) = &files.identity {
        config = config.identity(Identity::from_pem(
            read(cert, "client certificate")?,
            read(key, "client key")?,
        ));
    }
    Ok(config)
}
