//! The node's persistent identity: node id, token-signing key and TLS certificate.
//!
//! Everything lives in the data directory (created `0700` on unix if missing):
//!
//! | file | contents | mode |
//! |---|---|---|
//! | `node.id` | the node id, one line | 0644 |
//! | `issuer.key` | Ed25519 token-signing key, PKCS#8 PEM | 0600 |
//! | `node.key` | TLS key (ECDSA P-256), PKCS#8 PEM | 0600 |
//! | `node.crt` | self-signed TLS certificate, PEM | 0644 |
//!
//! [`NodeIdentity::load_or_create`] creates what is missing on first use and loads what exists
//! afterwards. It never replaces an existing key: a damaged file is an error naming the file, for a
//! human to look at, because a silently regenerated key would invalidate every issued token (or
//! every pinned certificate) in the field. Files are written atomically (temporary file, fsync,
//! rename), so a crash leaves either the old file or the complete new one.
//!
//! The certificate is self-signed (SANs `localhost`, `127.0.0.1`, `::1` and the node id, valid 10
//! years); clients pin it by [`NodeIdentity::fingerprint`], which every token carries in `fpr`. It
//! is made once: changing the node id later keeps the certificate (and its fingerprint), so its
//! SAN keeps the old id. Deleting `node.crt` makes a new certificate for the same `node.key`.
//!
//! This module touches only the data directory; it reads the wall clock once, for the
//! certificate's validity, when it creates one.

use ed25519_dalek::pkcs8::spki::der::pem::{self, LineEnding};
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use signaling::auth::TokenIssuer;
use signaling::NodeId;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// File holding the node id.
pub const NODE_ID_FILE: &str = "node.id";
/// File holding the Ed25519 token-signing key (PKCS#8 PEM).
pub const ISSUER_KEY_FILE: &str = "issuer.key";
/// File holding the TLS private key (PKCS#8 PEM).
pub const TLS_KEY_FILE: &str = "node.key";
/// File holding the TLS certificate (PEM).
pub const TLS_CERT_FILE: &str = "node.crt";

/// Validity of a newly made TLS certificate, in days (10 years).
const CERT_VALIDITY_DAYS: i64 = 3653;

/// Why the node identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file or directory could not be read, written or created.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file exists but its contents are unusable; it is left untouched for a human to inspect.
    #[error("{} is unusable: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS certificate or key could not be generated.
    #[error("cannot create the TLS certificate: {0}")]
    Cert(String),
    /// The configuration asks for a node id other than the one stored in the data directory.
    /// Every token this node has issued names the stored id (`iss`, and `aud` unless `*`), so a
    /// silent change would invalidate them all; the node refuses instead.
    #[error(
        "the node id in {} is `{stored}`, but `{wanted}` was asked for (--node-id or [node] id): \
         every token this node has issued names `{stored}` and would stop working. Use `{stored}`, \
         or delete {} to rename the node deliberately and mint new tokens",
        path.display(),
        path.display()
    )]
    NodeIdChanged {
        /// The `node.id` file.
        path: PathBuf,
        /// The id stored there.
        stored: NodeId,
        /// The id the configuration asked for.
        wanted: NodeId,
    },
}

/// The node's id, keys and certificate, as loaded from (or created in) the data directory.
pub struct NodeIdentity {
    /// This node's id.
    pub node_id: NodeId,
    /// The Ed25519 key that signs this node's tokens.
    pub signing_key: SigningKey,
    /// The TLS certificate, DER.
    pub cert_der: Vec<u8>,
    /// The TLS private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// Lowercase hex SHA-256 of [`cert_der`](Self::cert_der); the `fpr` of issued tokens.
    pub fingerprint: String,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print private keys.
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .field("key_id", &signaling::auth::key_id(&self.verifying_key()))
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Loads the identity from `data_dir`, creating the directory and whatever is missing.
    ///
    /// The node id is the one in `node.id`, else `node_id` if given, else a new `node-XXXXXXXX`
    /// (8 random lowercase hex characters), written to `node.id`. A `node_id` that differs from
    /// a stored id is refused ([`IdentityError::NodeIdChanged`]): tokens already issued name the
    /// stored id. An explicit `node_id` does repair an unreadable `node.id`. Existing keys are
    /// never replaced; an unreadable one is an error.
    pub fn load_or_create(
        data_dir: &Path,
        node_id: Option<&NodeId>,
    ) -> Result<NodeIdentity, IdentityError> {
        create_private_dir(data_dir)?;
        let node_id = resolve_node_id(&data_dir.join(NODE_ID_FILE), node_id)?;
        let signing_key = load_or_create_issuer_key(&data_dir.join(ISSUER_KEY_FILE))?;
        let (cert_der, key_der) = load_or_create_tls(
            &data_dir.join(TLS_KEY_FILE),
            &data_dir.join(TLS_CERT_FILE),
            &node_id,
        )?;
        let fingerprint = hex::encode(Sha256::digest(&cert_der));
        Ok(NodeIdentity {
            node_id,
            signing_key,
            cert_der,
            key_der,
            fingerprint,
        })
    }

    /// A token issuer signing with this node's key, naming this node as `iss`.
    pub fn issuer(&self) -> TokenIssuer {
        TokenIssuer::new(self.signing_key.clone(), self.node_id.clone())
    }

    /// The public half of the token-signing key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> IdentityError {
    IdentityError::Corrupt {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir))
}

/// Reads `path`, or `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, IdentityError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn read_text(path: &Path) -> Result<Option<String>, IdentityError> {
    read_optional(path)?
        .map(|bytes| String::from_utf8(bytes).map_err(|_| corrupt(path, "not UTF-8 text")))
        .transpose()
}

/// Writes `data` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// then (best effort) fsync of the directory. `secret` files get mode 0600 on unix.
fn write_atomic(path: &Path, data: &[u8], secret: bool) -> Result<(), IdentityError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{:08x}", rand::random::<u32>()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Warns if a secret file is readable by group or others.
fn check_secret_mode(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "secret key file is readable by other users; chmod 600 it");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn resolve_node_id(path: &Path, wanted: Option<&NodeId>) -> Result<NodeId, IdentityError> {
    let stored = read_text(path)?
        .map(|text| {
            NodeId::parse(text.trim()).map_err(|e| corrupt(path, format!("bad node id: {e}")))
        })
        .transpose();
    let stored = match (stored, wanted) {
        (Ok(stored), _) => stored,
        // An explicit id repairs a damaged node.id; there is no key in it to lose.
        (Err(_), Some(_)) => None,
        (Err(e), None) => return Err(e),
    };
    match (stored, wanted) {
        (Some(stored), None) => Ok(stored),
        (Some(stored), Some(wanted)) if stored == *wanted => Ok(stored),
        (Some(stored), Some(wanted)) => Err(IdentityError::NodeIdChanged {
            path: path.to_owned(),
            stored,
            wanted: wanted.clone(),
        }),
        (None, wanted) => {
            let id = match wanted {
                Some(id) => id.clone(),
                None => NodeId::parse(&format!("node-{}", hex::encode(rand::random::<[u8; 4]>())))
                    .expect("node- plus hex is a valid node id"),
            };
            write_atomic(path, format!("{id}\n").as_bytes(), false)?;
            Ok(id)
        }
    }
}

fn load_or_create_issuer_key(path: &Path) -> Result<SigningKey, IdentityError> {
    if let Some(pem) = read_text(path)? {
        check_secret_mode(path);
        return SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| corrupt(path, format!("not an Ed25519 PKCS#8 PEM key: {e}")));
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| IdentityError::Cert(format!("cannot encode the issuer key: {e}")))?;
    write_atomic(path, pem.as_bytes(), true)?;
    Ok(key)
}

/// Returns (certificate DER, PKCS#8 key DER).
fn load_or_create_tls(
    key_path: &Path,
    cert_path: &Path,
    node_id: &NodeId,
) -> Result<(Vec<u8>, Vec<u8>), IdentityError> {
    let key_pem = read_text(key_path)?;
    let cert_pem = read_text(cert_path)?;
    let key = match key_pem {
        Some(pem) => {
            check_secret_mode(key_path);
            rcgen::KeyPair::from_pem(&pem)
                .map_err(|e| corrupt(key_path, format!("not a PKCS#8 PEM TLS key: {e}")))?
        }
        None if cert_pem.is_some() => {
            return Err(corrupt(
                key_path,
                format!(
                    "missing, but {} exists; remove that too to create a new TLS identity \
                     (clients pinning the old certificate will need the new fingerprint)",
                    cert_path.display()
                ),
            ))
        }
        None => {
            let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Cert(e.to_string()))?;
            write_atomic(key_path, key.serialize_pem().as_bytes(), true)?;
            key
        }
    };
    let cert_der: Vec<u8> = match cert_pem {
        Some(pem) => {
            let (label, der) = pem::decode_vec(pem.as_bytes())
                .map_err(|e| corrupt(cert_path, format!("not a PEM certificate: {e}")))?;
            if label != "CERTIFICATE" {
                return Err(corrupt(
                    cert_path,
                    format!("PEM label is {label:?}, expected \"CERTIFICATE\""),
                ));
            }
            if !contains(&der, key.public_key_raw()) {
                return Err(corrupt(
                    cert_path,
                    format!("certificate does not match {}", key_path.display()),
                ));
            }
            der
        }
        None => {
            let cert = self_signed(&key, node_id)?;
            write_atomic(cert_path, cert.pem().as_bytes(), false)?;
            cert.der().to_vec()
        }
    };
    Ok((cert_der, key.serialize_der()))
}

/// Whether `needle` occurs in `haystack` (the raw public key inside the certificate's SPKI).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn self_signed(
    key: &rcgen::KeyPair,
    node_id: &NodeId,
) -> Result<rcgen::Certificate, IdentityError> {
    let cert_err = |e: rcgen::Error| IdentityError::Cert(e.to_string());
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    if !names.iter().any(|n| n == node_id.as_str()) {
        names.push(node_id.to_string());
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(cert_err)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("yiwang node {node_id}"));
    params.distinguished_name = dn;
    // A random serial: a certificate remade for the same key must not reuse the serial (browsers
    // reject a reused issuer + serial with different contents).
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    params.serial_number = Some(serial.to_vec().into());
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    // Back-dated a day for clients whose clocks are behind.
    let (y, m, d) = civil_from_days(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(today + CERT_VALIDITY_DAYS);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    params.self_signed(key).map_err(cert_err)
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`). Always a valid date.
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signaling::auth::{TokenRequest, TokenVerifier};
    use signaling::{Role, Subject};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "yiwang-identity-test-{:016x}",
                rand::random::<u64>()
            ));
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn node(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    #[test]
    fn created_on_first_call() {
        let tmp = TempDir::new();
        let dir = tmp.0.join("nested").join("data");
        let id = NodeIdentity::load_or_create(&dir, None).unwrap();

        let text = id.node_id.as_str();
        assert!(text.starts_with("node-") && text.len() == 13, "{text}");
        assert!(text[5..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        for f in [NODE_ID_FILE, ISSUER_KEY_FILE, TLS_KEY_FILE, TLS_CERT_FILE] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        assert_eq!(
            fs::read_to_string(dir.join(NODE_ID_FILE)).unwrap(),
            format!("{text}\n")
        );
        assert!(fs::read_to_string(dir.join(ISSUER_KEY_FILE))
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(fs::read_to_string(dir.join(TLS_CERT_FILE))
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(id.fingerprint, hex::encode(Sha256::digest(&id.cert_der)));
        assert_eq!(id.fingerprint.len(), 64);
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
        // The certificate holds the TLS key and names the node.
        let key = rcgen::KeyPair::try_from(id.key_der.as_slice()).unwrap();
        assert!(contains(&id.cert_der, key.public_key_raw()));
        assert!(contains(&id.cert_der, id.node_id.as_str().as_bytes()));
        assert!(contains(&id.cert_der, b"localhost"));

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.join(ISSUER_KEY_FILE)), 0o600);
            assert_eq!(mode(&dir.join(TLS_KEY_FILE)), 0o600);
            assert_eq!(mode(&dir) & 0o077, 0);
        }
    }

    #[test]
    fn identical_on_second_call() {
        let tmp = TempDir::new();
        let a = NodeIdentity::load_or_create(&tmp.0, None).unwrap();
        let b = NodeIdentity::load_or_create(&tmp.0, None).unwrap();
        assert_eq!(a.node_id, b.node_id);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.cert_der, b.cert_der);
        assert_eq!(a.key_der, b.key_der);
        assert_eq!(a.signing_key.to_bytes(), b.signing_key.to_bytes());
        assert_eq!(a.verifying_key(), b.verifying_key());
    }

    #[test]
    fn tokens_from_one_run_verify_on_the_next() {
        let tmp = TempDir::new();
        let a = NodeIdentity::load_or_create(&tmp.0, Some(&node("hq"))).unwrap();
        let req = TokenRequest::new(
            Subject::parse("off-1").unwrap(),
            Role::Officer,
            "hq",
            &a.fingerprint,
        );
        let token = a.issuer().issue(&req, 1_000);
        let b = NodeIdentity::load_or_create(&tmp.0, None).unwrap();
        let mut v = TokenVerifier::new(b.node_id.clone());
        v.trust(b.verifying_key());
        let claims = v.verify(&token, 1_001).unwrap();
        assert_eq!(claims.iss, node("hq"));
        assert_eq!(claims.fpr, b.fingerprint);
    }

    #[test]
    fn a_node_id_that_differs_from_the_stored_one_is_refused_and_nothing_changes() {
        let tmp = TempDir::new();
        let first = NodeIdentity::load_or_create(&tmp.0, None).unwrap();
        let token = first.issuer().issue(
            &TokenRequest::new(
                "off-1".parse().unwrap(),
                signaling::Role::Officer,
                first.node_id.to_string(),
                first.fingerprint.clone(),
            ),
            1_000,
        );
        let err = NodeIdentity::load_or_create(&tmp.0, Some(&node("field-2"))).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, IdentityError::NodeIdChanged { stored, wanted, .. }
                if *stored == first.node_id && *wanted == node("field-2")),
            "{err:?}"
        );
        assert!(
            text.contains(first.node_id.as_str()) && text.contains("field-2"),
            "{text}"
        );
        assert!(
            text.contains("token"),
            "the error says what the change would break: {text}"
        );
        // node.id is untouched and the token minted before still verifies.
        assert_eq!(
            fs::read_to_string(tmp.0.join(NODE_ID_FILE)).unwrap(),
            format!("{}\n", first.node_id)
        );
        let again = NodeIdentity::load_or_create(&tmp.0, None).unwrap();
        let mut v = TokenVerifier::new(again.node_id.clone());
        v.trust(again.verifying_key());
        assert!(v.verify(&token, 1_001).is_ok());
        // Asking for the stored id is fine.
        let same = NodeIdentity::load_or_create(&tmp.0, Some(&first.node_id)).unwrap();
        assert_eq!(same.fingerprint, first.fingerprint);
    }

    #[test]
    fn override_on_first_run() {
        let tmp = TempDir::new();
        let id = NodeIdentity::load_or_create(&tmp.0, Some(&node("hq"))).unwrap();
        assert_eq!(id.node_id, node("hq"));
        assert!(contains(&id.cert_der, b"hq"));
        assert_eq!(
            fs::read_to_string(tmp.0.join(NODE_ID_FILE)).unwrap(),
            "hq\n"
        );
    }

    #[test]
    fn corrupt_issuer_key_is_an_error_and_left_alone() {
        let tmp = TempDir::new();
        NodeIdentity::load_or_create(&tmp.0, None).unwrap();
        let path = tmp.0.join(ISSUER_KEY_FILE);
        for junk in [
            &b"-----BEGIN PRIVATE KEY-----\nnot base64\n"[..],
            b"",
            b"\xff\xfe\x00",
        ] {
            fs::write(&path, junk).unwrap();
            let err = NodeIdentity::load_or_create(&tmp.0, None).unwrap_err();
            assert!(
                matches!(&err, IdentityError::Corrupt { path: p, .. } if *p == path),
                "{err:?}"
            );
            assert!(err.to_string().contains("issuer.key"), "{err}");
            assert_eq!(fs::read(&path).unwrap(), junk, "never overwritten");
        }
    }

    #[test]
    fn corrupt_tls_files_are_errors() {
        let tmp = TempDir::new();
        NodeIdentity::load_or_create(&tmp.0, None).unwrap();
        let key_path = tmp.0.join(TLS_KEY_FILE);
        let cert_path = tmp.0.join(TLS_CERT_FILE);
        let good_key = fs::read(&key_path).unwrap();
        let good_cert = fs::read(&cert_path).unwrap();

        fs::write(&key_path, "garbage").unwrap();
        let err = NodeIdentity::load_or_create(&tmp.0, None).unwrap_err();
        assert!(
            matches!(&err, IdentityError::Corrupt { path, .. } if *path == key_path),
            "{err:?}"
        );
        fs::write(&key_path, &good_key).unwrap();

        fs::write(
            &cert_path,
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = NodeIdentity::load_or_create(&tmp.0, None).unwrap_err();
        assert!(
            matches!(&err, IdentityError::Corrupt { path, .. } if *path == cert_path),
            "{err:?}"
        );

        // A certificate of another node does not match this key.
        let other = TempDir::new();
        NodeIdentity::load_or_create(&other.0, None).unwrap();
        fs::copy(other.0.join(TLS_CERT_FILE), &cert_path).unwrap();
        let err = NodeIdentity::load_or_create(&tmp.0, None).unwrap_err();
        assert!(
            matches!(&err, IdentityError::Corrupt { path, .. } if *path == cert_path),
            "{err:?}"
        );

        // A key file missing beside an existing certificate is not silently replaced.
        fs::write(&cert_path, &good_cert).unwrap();
        fs::remove_file(&key_path).unwrap();
        let err = NodeIdentity::load_or_create(&tmp.0, None).unwrap_err();
        assert!(
            matches!(&err, IdentityError::Corrupt { path, .. } if *path == key_path),
            "{err:?}"
        );
        assert!(!key_path.exists());
    }

    #[test]
    fn missing_certificate_is_remade_for_the_same_key() {
        let tmp = TempDir::new();
        let a = NodeIdentity::load_or_create(&tmp.0, None).unwrap();
        fs::remove_file(tmp.0.join(TLS_CERT_FILE)).unwrap();
        let b = NodeIdentity::load_or_create(&tmp.0, None).unwrap();
        assert_eq!(a.key_der, b.key_der);
        assert_ne!(a.fingerprint, b.fingerprint);
        let c = NodeIdentity::load_or_create(&tmp.0, None).unwrap();
        assert_eq!(b.fingerprint, c.fingerprint);
    }

    #[test]
    fn corrupt_node_id() {
        let tmp = TempDir::new();
        NodeIdentity::load_or_create(&tmp.0, None).unwrap();
        let path = tmp.0.join(NODE_ID_FILE);
        fs::write(&path, "../etc\n").unwrap();
        let err = NodeIdentity::load_or_create(&tmp.0, None).unwrap_err();
        assert!(
            matches!(&err, IdentityError::Corrupt { path: p, .. } if *p == path),
            "{err:?}"
        );
        // An explicit id repairs it.
        let id = NodeIdentity::load_or_create(&tmp.0, Some(&node("hq"))).unwrap();
        assert_eq!(id.node_id, node("hq"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "hq\n");
    }

    #[test]
    fn data_dir_that_is_a_file_is_an_io_error() {
        let tmp = TempDir::new();
        fs::create_dir_all(&tmp.0).unwrap();
        let file = tmp.0.join("file");
        fs::write(&file, "x").unwrap();
        let err = NodeIdentity::load_or_create(&file, None).unwrap_err();
        assert!(matches!(err, IdentityError::Io { .. }), "{err:?}");
    }

    #[test]
    fn debug_hides_keys() {
        let tmp = TempDir::new();
        let id = NodeIdentity::load_or_create(&tmp.0, None).unwrap();
        let dbg = format!("{id:?}");
        assert!(dbg.contains(&id.fingerprint));
        assert!(!dbg.contains(&hex::encode(id.signing_key.to_bytes())));
        assert!(!dbg.contains("key_der"));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_147 + 3653), (2035, 3, 1));
    }
}
