//! The province CA: one key pair and self-signed CA certificate per province, kept offline by
//! whoever runs the province; it issues one certificate per node, naming the node (DNS SAN =
//! node name) for both TLS server and client use.
//!
//! Files in the CA directory: `ca.pem` (certificate, give it to every node), `ca.key` (private,
//! mode 0600, never leaves the CA host), `ca.name` (the CA's common name, to sign again later).
//! `ca issue NODE` writes `NODE.pem` and `NODE.key` (0600) for that node.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The CA certificate file in a CA directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA private key file in a CA directory.
pub const CA_KEY: &str = "ca.key";
/// The CA's common name, kept to sign with the same issuer name later.
pub const CA_NAME: &str = "ca.name";
/// Validity of the CA certificate, days.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// The CA directory's revocation list of node certificates (see
/// [`RevocationList`](super::tls::RevocationList)): copy it to every node.
pub const REVOKED: &str = "revoked.txt";
/// Validity of a node certificate, days.
pub const NODE_VALIDITY_DAYS: i64 = 825;

/// The CA could not be created, loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file to write already exists (`ca init` on an existing CA, `ca issue` for a node
    /// that has files): never overwritten.
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// A file did not hold what it should.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// The node name is not a valid node name.
    #[error("node name: {0}")]
    Name(#[from] trunk::NameError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), CaError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let _ = secret;
    let mut f = o.open(path).map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Hinnant).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let (y, m, d) = civil(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil(today + days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

fn serial(params: &mut CertificateParams) {
    let mut s: [u8; 16] = rand::random();
    s[0] &= 0x7f;
    params.serial_number = Some(s.to_vec().into());
}

/// The CA's issuer parameters (its distinguished name, key usages): identical at `init` and at
/// every later `issue`, so issued certificates name the CA certificate's subject.
fn ca_params(name: &str) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// A loaded province CA, able to issue node certificates.
pub struct ProvinceCa {
    key: KeyPair,
    name: String,
    cert_pem: String,
}

impl std::fmt::Debug for ProvinceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvinceCa")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A node's certificate and key, PEM.
#[derive(Debug, Clone)]
pub struct NodeCert {
    /// The certificate (signed by the CA), PEM.
    pub cert_pem: String,
    /// The node's private key (PKCS#8), PEM.
    pub key_pem: String,
}

impl ProvinceCa {
    /// Creates a new CA in memory (`name` is its common name).
    pub fn generate(name: &str) -> Result<ProvinceCa, CaError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(name)?;
        validity(&mut params, CA_VALIDITY_DAYS);
        serial(&mut params);
        let cert = params.self_signed(&key)?;
        Ok(ProvinceCa {
            key,
            name: name.to_owned(),
            cert_pem: cert.pem(),
        })
    }

    /// `ca init`: creates a CA in `dir` (created if missing). Refuses to replace an existing
    /// one. Returns the paths of the certificate and the key.
    pub fn init(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), CaError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if key_path.exists() {
            return Err(CaError::Exists(key_path));
        }
        let ca = ProvinceCa::generate(name)?;
        write_file(&key_path, ca.key.serialize_pem().as_bytes(), true)?;
        write_file(&dir.join(CA_NAME), format!("{name}\n").as_bytes(), false)?;
        write_file(&cert_path, ca.cert_pem.as_bytes(), false)?;
        Ok((cert_path, key_path))
    }

    /// Loads the CA of `dir`.
    pub fn load(dir: &Path) -> Result<ProvinceCa, CaError> {
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read_to_string(&p).map_err(io(&p))
        };
        let key_path = dir.join(CA_KEY);
        let key = KeyPair::from_pem(&read(CA_KEY)?).map_err(|e| CaError::Corrupt {
            path: key_path,
            reason: format!("not a PKCS#8 PEM key: {e}"),
        })?;
        let name = read(CA_NAME)?.trim().to_owned();
        let cert_pem = read(CA_CERT)?;
        Ok(ProvinceCa {
            key,
            name,
            cert_pem,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `node`: DNS SAN = the node name, usable as TLS server and
    /// client, valid [`NODE_VALIDITY_DAYS`].
    pub fn issue(&self, node: &trunk::NodeName) -> Result<NodeCert, CaError> {
        self.issue_with_names(node, &[])
    }

    /// As [`ProvinceCa::issue`], with extra subject alternative names (host names or IP
    /// addresses): a nats-server leaf connection checks the parent's certificate against the host
    /// in its URL, where a trunk checks the node name.
    pub fn issue_with_names(
        &self,
        node: &trunk::NodeName,
        extra: &[String],
    ) -> Result<NodeCert, CaError> {
        let key = KeyPair::generate()?;
        let mut names = vec![node.to_string()];
        names.extend(extra.iter().filter(|n| *n != node.as_str()).cloned());
        let mut params = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node.as_str());
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, NODE_VALIDITY_DAYS);
        serial(&mut params);
        let issuer = Issuer::new(ca_params(&self.name)?, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// `ca revoke CERT`: adds the certificate in `cert_pem` (named `label` in the comment) to the
    /// revocation list `dir/revoked.txt` (created if missing; a certificate already listed is
    /// not added again). Returns the list's path and the certificate's fingerprint (hex).
    pub fn revoke(dir: &Path, cert_pem: &str, label: &str) -> Result<(PathBuf, String), CaError> {
        let path = dir.join(REVOKED);
        let fpr = super::tls::pem_fingerprint(cert_pem).map_err(|e| CaError::Corrupt {
            path: PathBuf::from(label),
            reason: e.to_string(),
        })?;
        let hex_fpr = hex::encode(fpr);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                "# Node certificates the province no longer trusts (media-server ca revoke).\n\
                 # Copy this file to every node: [trunk] revoked = \"PATH\".\n"
                    .to_owned()
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let listed =
            super::tls::RevocationList::parse(&text).map_err(|reason| CaError::Corrupt {
                path: path.clone(),
                reason,
            })?;
        if !listed.contains(&fpr) {
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let label: String = label.chars().filter(|c| !c.is_control()).collect();
            let mut text = text;
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("{hex_fpr}  {label}  revoked-at-unix={at}\n"));
            // Replaced whole (a node rereading it never sees half a file).
            let tmp = dir.join(format!("{REVOKED}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            write_file(&tmp, text.as_bytes(), false)?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
        }
        Ok((path, hex_fpr))
    }

    /// `ca issue NODE`: issues a certificate for `node` into `out` as `NODE.pem` and `NODE.key`
    /// (refusing to overwrite). Returns both paths.
    pub fn issue_to(
        &self,
        node: &trunk::NodeName,
        out: &Path,
    ) -> Result<(PathBuf, PathBuf), CaError> {
        self.issue_to_with_names(node, out, &[])
    }

    /// As [`ProvinceCa::issue_to`], with extra subject alternative names.
    pub fn issue_to_with_names(
        &self,
        node: &trunk::NodeName,
        out: &Path,
        extra: &[String],
    ) -> Result<(PathBuf, PathBuf), CaError> {
        std::fs::create_dir_all(out).map_err(io(out))?;
        let cert_path = out.join(format!("{node}.pem"));
        let key_path = out.join(format!("{node}.key"));
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(CaError::Exists(p.clone()));
            }
        }
        let c = self.issue_with_names(node, extra)?;
        write_file(&key_path, c.key_pem.as_bytes(), true)?;
        write_file(&cert_path, c.cert_pem.as_bytes(), false)?;
        Ok((cert_path, key_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_lists_a_certificate_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ProvinceCa::generate("test").unwrap();
        let c = ca
            .issue(&trunk::NodeName::parse("township-3").unwrap())
            .unwrap();
        let (path, fpr) = ProvinceCa::revoke(dir.path(), &c.cert_pem, "township-3.pem").unwrap();
        assert_eq!(
            fpr,
            hex::encode(super::super::tls::pem_fingerprint(&c.cert_pem).unwrap())
        );
        ProvinceCa::revoke(dir.path(), &c.cert_pem, "township-3.pem").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches(&fpr).count(), 1, "listed once: {text}");
        let set = super::super::tls::RevocationList::parse(&text).unwrap();
        assert_eq!(set.len(), 1);
        assert!(ProvinceCa::revoke(dir.path(), "not a certificate", "x.pem").is_err());
        let bad = super::super::tls::RevocationList::parse("abc  comment\n").unwrap_err();
        assert!(bad.contains("line 1"), "{bad}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_454), (2026, 1, 1));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn init_refuses_to_replace_and_issue_writes_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        ProvinceCa::init(dir.path(), "yiwang test province").unwrap();
        assert!(matches!(
            ProvinceCa::init(dir.path(), "again"),
            Err(CaError::Exists(_))
        ));
        let ca = ProvinceCa::load(dir.path()).unwrap();
        let node = trunk::NodeName::parse("county-7").unwrap();
        let (cert, key) = ca.issue_to(&node, dir.path()).unwrap();
        assert!(std::fs::read_to_string(cert)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                std::fs::metadata(dir.path().join(CA_KEY))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o600
            );
        }
        assert!(matches!(
            ca.issue_to(&node, dir.path()),
            Err(CaError::Exists(_))
        ));
    }
}
