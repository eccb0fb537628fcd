//! A throwaway certificate authority for TLS tests, made with the `openssl` command: a CA, a
//! server certificate for `127.0.0.1` and `localhost`, and a client certificate.

use std::path::{Path, PathBuf};
use std::process::Command;

/// PEM files in a test's directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Generates the files into `dir` (P-256 keys, valid two days).
    pub fn generate(dir: &Path) -> Self {
        let p = |name: &str| dir.join(name);
        let files = Self {
            ca_cert: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
        };
        let ca_key = p("ca.key");
        let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(
            &format!("req -x509 {new_key} -days 2"),
            &[("-subj", "/CN=collm test CA"), ("-keyout", s(&ca_key)), ("-out", s(&files.ca_cert))],
        );
        let server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n";
        for (name, key, cert, ext) in [
            ("server", &files.server_key, &files.server_cert, server_ext),
            ("client", &files.client_key, &files.client_cert, "extendedKeyUsage=clientAuth\n"),
        ] {
            let (csr, ext_file) = (p(&format!("{name}.csr")), p(&format!("{name}.ext")));
            std::fs::write(&ext_file, ext).expect("extension file");
            let subject = format!("/CN=collm test {name}");
            openssl(
                &format!("req {new_key}"),
                &[("-subj", &subject), ("-keyout", s(key)), ("-out", s(&csr))],
            );
            openssl(
                "x509 -req -days 2 -CAcreateserial",
                &[
                    ("-in", s(&csr)),
                    ("-CA", s(&files.ca_cert)),
                    ("-CAkey", s(&ca_key)),
                    ("-extfile", s(&ext_file)),
                    ("-out", s(cert)),
                ],
            );
        }
        files
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs `openssl` with fixed words `flags` and `(option, value)` pairs (values may hold spaces).
fn openssl(flags: &str, options: &[(&str, &str)]) {
    let args: Vec<&str> =
        flags.split_whitespace().chain(options.iter().flat_map(|(o, v)| [*o, *v])).collect();
    let out = Command::new("openssl").args(&args).output().unwrap_or_else(|e| {
        panic!("openssl cannot run ({e}): install Debian's openssl to make test certificates")
    });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
