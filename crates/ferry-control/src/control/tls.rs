//! Mutually authenticated TLS between ferry's daemons and clients.
//!
//! Every certificate is issued by the lab's (or site's) ferry CA and names
//! its holder twice: a DNS SAN with the name (what a client verifies the
//! server as) and a URI SAN `ferry://<role>/<name>` that servers authorise
//! on: a host accepts specs only from coordinators, a coordinator accepts
//! migrations from clients and specs from peer coordinators.

use ferry_core::error::report;
use std::{fmt, path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::{Deserialize, Serialize};

/// Who holds a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Coordinator,
    Host,
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Host => "host",
            Role::Client => "client",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "coordinator" => Some(Role::Coordinator),
            "host" => Some(Role::Host),
            "client" => Some(Role::Client),
            _ => None,
        }
    }
}

/// An authenticated peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role.as_str(), self.name)
    }
}

/// Paths of a daemon's or client's TLS material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The site's CA certificate (PEM): peers must be certified by it.
    #[schemars(example = &"certs/ca.pem")]
    pub ca: std::path::PathBuf,
    /// This party's certificate (PEM), named after it.
    #[schemars(example = &"certs/NAME.pem")]
    pub cert: std::path::PathBuf,
    /// Its private key (PEM; keep it 0600).
    #[schemars(example = &"certs/NAME-key.pem")]
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// Resolves relative paths against `dir` (the config file's directory).
    pub fn relative_to(&self, dir: &Path) -> TlsFiles {
        let j = |p: &std::path::PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                dir.join(p)
            }
        };
        TlsFiles {
            ca: j(&self.ca),
            cert: j(&self.cert),
            key: j(&self.key),
        }
    }

    /// The conventional files of `name` in a directory made by `ferry certs`.
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS setup")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    Verifier(String),
    #[error("peer certificate: {0}")]
    Identity(String),
}

fn file_err(p: &Path, e: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: p.display().to_string(),
        message: e.to_string(),
    }
}

/// A PEM file that cannot be read says why as the OS does, not as "I/O
/// error: ..." (the path already says it is about a file).
fn pem_err(p: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    match e {
        rustls::pki_types::pem::Error::Io(io) => file_err(p, io),
        e => file_err(p, e),
    }
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| pem_err(ca, e))?;
    for c in certs {
        store
            .add(c.map_err(|e| pem_err(ca, e))?)
            .map_err(|e| file_err(ca, e))?;
    }
    if store.is_empty() {
        return Err(file_err(ca, "no CA certificate in file"));
    }
    Ok(Arc::new(store))
}

fn chain(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| pem_err(&files.cert, e))?
        .collect();
    let certs = certs.map_err(|e| pem_err(&files.cert, e))?;
    if certs.is_empty() {
        return Err(file_err(&files.cert, "no certificate in file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_err(&files.key, e))?;
    Ok((certs, key))
}

/// Server side: requires a client certificate from the same CA.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder(roots(&files.ca)?)
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let (certs, key) = chain(files)?;
    Ok(Arc::new(
        ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?,
    ))
}

/// Client side: verifies the server against the CA, presents our certificate.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let (certs, key) = chain(files)?;
    Ok(Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots(&files.ca)?)
            .with_client_auth_cert(certs, key)?,
    ))
}

pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|e| {
        TlsError::Identity(format!(
            "{name:?} is not a valid server name: {e}",
            e = report(&e)
        ))
    })
}

/// The ferry identity in a (verified) certificate.
pub fn identity(cert: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TlsError::Identity(format!("unparsable certificate: {e}", e = report(&e))))?;
    let san = x
        .subject_alternative_name()
        .map_err(|e| TlsError::Identity(e.to_string()))?
        .ok_or_else(|| TlsError::Identity("no subject alternative names".into()))?;
    for n in &san.value.general_names {
        if let GeneralName::URI(u) = n
            && let Some(rest) = u.strip_prefix("ferry://")
            && let Some((role, name)) = rest.split_once('/')
            && let Some(role) = Role::parse(role)
            && !name.is_empty()
        {
            return Ok(Identity {
                role,
                name: name.to_string(),
            });
        }
    }
    Err(TlsError::Identity(
        "no ferry://<role>/<name> URI in the certificate".into(),
    ))
}
