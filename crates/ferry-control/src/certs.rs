//! `ferry certs`: a small certificate authority and certificates for a lab
//! or a first deployment. Keys are ECDSA P-256, written 0600.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};

use crate::control::Role;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating certificates")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid name {0:?}: use letters, digits, '-' and '.'")]
    BadName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// (year, month, day) of today, UTC (civil-from-days, proleptic Gregorian).
fn today() -> (i32, u8, u8) {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

fn validity(p: &mut CertificateParams, years: i32) {
    let (y, m, _) = today();
    // From the first of this month, so that lab machines with skewed clocks agree.
    p.not_before = date_time_ymd(y, m, 1);
    p.not_after = date_time_ymd(y + years, m, 1);
}

fn write_file(path: &Path, data: &str, private: bool) -> Result<(), CertError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io(path))?;
    f.write_all(data.as_bytes()).map_err(io(path))
}

fn check_name(n: &str) -> Result<(), CertError> {
    if crate::config::is_valid_name(n) {
        Ok(())
    } else {
        Err(CertError::BadName(n.to_string()))
    }
}

/// Issues a certificate for each (role, name) into `dir`, creating the CA
/// there first unless `dir` already holds one. Returns the files written.
pub fn issue(dir: &Path, who: &[(Role, String)]) -> Result<Vec<PathBuf>, CertError> {
    for (_, n) in who {
        check_name(n)?;
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let (ca_pem, ca_key_pem) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let mut written = Vec::new();
    let issuer = if ca_pem.exists() && ca_key_pem.exists() {
        let key = KeyPair::from_pem(&fs::read_to_string(&ca_key_pem).map_err(io(&ca_key_pem))?)?;
        Issuer::from_ca_cert_pem(&fs::read_to_string(&ca_pem).map_err(io(&ca_pem))?, key)?
    } else {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "ferry CA");
        dn.push(DnType::OrganizationName, "ferry");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut p, 10);
        write_file(&ca_key_pem, &key.serialize_pem(), true)?;
        let ca = CertifiedIssuer::self_signed(p, key)?;
        write_file(&ca_pem, &ca.pem(), false)?;
        written.extend([ca_pem.clone(), ca_key_pem.clone()]);
        // Re-read as a plain Issuer so both branches have one type.
        let key = KeyPair::from_pem(&fs::read_to_string(&ca_key_pem).map_err(io(&ca_key_pem))?)?;
        Issuer::from_ca_cert_pem(&ca.pem(), key)?
    };
    for (role, name) in who {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![name.clone()])?;
        p.subject_alt_names.push(SanType::URI(
            format!("ferry://{}/{name}", role.as_str()).try_into()?,
        ));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.as_str());
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        p.distinguished_name = dn;
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut p, 2);
        let cert = p.signed_by(&key, &issuer)?;
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        write_file(&c, &cert.pem(), false)?;
        write_file(&k, &key.serialize_pem(), true)?;
        written.extend([c, k]);
    }
    Ok(written)
}

/// A QEMU `tls-creds-x509` directory for `name` in `dir`, signed by the CA
/// there (made if missing): ca-cert.pem, server-cert.pem / server-key.pem and
/// client-cert.pem / client-key.pem. QEMU insists on key encipherment in
/// the key usage of both leaves, which ferry's own certificates leave out.
pub fn issue_qemu_x509(dir: &Path, name: &str) -> Result<(), CertError> {
    check_name(name)?;
    issue(dir, &[])?;
    let (ca_pem, ca_key_pem) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let ca = fs::read_to_string(&ca_pem).map_err(io(&ca_pem))?;
    let key = KeyPair::from_pem(&fs::read_to_string(&ca_key_pem).map_err(io(&ca_key_pem))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca, key)?;
    write_file(&dir.join("ca-cert.pem"), &ca, false)?;
    for (side, eku) in [
        ("server", ExtendedKeyUsagePurpose::ServerAuth),
        ("client", ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![name.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.extended_key_usages = vec![eku];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        validity(&mut p, 2);
        let cert = p.signed_by(&key, &issuer)?;
        write_file(&dir.join(format!("{side}-cert.pem")), &cert.pem(), false)?;
        write_file(
            &dir.join(format!("{side}-key.pem")),
            &key.serialize_pem(),
            true,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    use crate::control::tls;

    #[test]
    fn issued_certificates_carry_name_and_role_and_verify() {
        let dir = std::env::temp_dir().join(format!("ferry-certs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        issue(
            &dir,
            &[
                (Role::Coordinator, "c1".into()),
                (Role::Host, "host-a".into()),
            ],
        )
        .unwrap();
        // A second run reuses the CA.
        let ca = fs::read(dir.join("ca.pem")).unwrap();
        issue(&dir, &[(Role::Client, "admin".into())]).unwrap();
        assert_eq!(fs::read(dir.join("ca.pem")).unwrap(), ca);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(dir.join("admin-key.pem"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        for (name, role) in [
            ("c1", Role::Coordinator),
            ("host-a", Role::Host),
            ("admin", Role::Client),
        ] {
            let files = tls::TlsFiles::in_dir(&dir, name);
            tls::server_config(&files).unwrap();
            tls::client_config(&files).unwrap();
            let der = rustls::pki_types::CertificateDer::pem_file_iter(&files.cert)
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(
                tls::identity(&der).unwrap(),
                tls::Identity {
                    role,
                    name: name.into()
                }
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn today_is_a_valid_date() {
        let (y, m, d) = today();
        assert!(y >= 2024 && (1..=12).contains(&m) && (1..=31).contains(&d));
        assert!(issue(Path::new("/tmp"), &[(Role::Host, "bad name".into())]).is_err());
    }
}
