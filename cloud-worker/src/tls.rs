//! TLS for the gRPC server (rustls through tonic): a certificate and key, and optionally a CA
//! whose signed client certificates are required (mutual TLS).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::ConfigError;

/// The PEM files the server's TLS is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, every client must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The tonic server configuration; fails with the file at fault when one cannot be read or
    /// holds no PEM block of the expected kind.
    pub fn server_config(&self) -> Result<ServerTlsConfig, ConfigError> {
        let cert = read_pem(&self.cert, "CERTIFICATE", "--tls-cert")?;
        let key = read_pem(&self.key, "PRIVATE KEY", "--tls-key")?;
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = &self.client_ca {
            let ca = read_pem(ca, "CERTIFICATE", "--tls-client-ca")?;
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        Ok(config)
    }
}

/// The file's bytes, checked to hold a PEM block whose label ends with `label` (so "PRIVATE
/// KEY" accepts RSA, EC and PKCS#8 keys), since rustls's own error would not name the file.
fn read_pem(path: &Path, label: &str, flag: &str) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError::File {
        what: flag.to_owned(),
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text.lines().any(|l| {
        l.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|found| found.ends_with(label))
    });
    if !has_block {
        return Err(ConfigError::File {
            what: flag.to_owned(),
            path: path.to_owned(),
            reason: format!("no PEM block \"{label}\" in it"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_wrong_files_are_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")?;
        std::fs::write(&key, "not a key")?;
        let files = TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: None };
        let err = files.server_config().expect_err("no key block").to_string();
        assert!(err.contains("--tls-key") && err.contains("tls.key"), "{err}");
        std::fs::write(
            &key,
            "-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n",
        )?;
        files.server_config()?;
        let files = TlsFiles { client_ca: Some(dir.path().join("absent.crt")), ..files };
        let err = files.server_config().expect_err("no CA file").to_string();
        assert!(err.contains("--tls-client-ca") && err.contains("absent.crt"), "{err}");
        Ok(())
    }
}
