//! The TLS identity the relay serves: production PEM files, or a development identity that
//! browsers accept through `serverCertificateHashes` (ECDSA P-256, self-signed, valid for
//! less than 14 days), generated into `certs/`, reused while valid and renewed before expiry.

use std::path::{Path, PathBuf};
use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wtransport::Identity;

/// How long a development certificate is valid: under the 14 days browsers allow for pinned
/// certificates, with the not-before an hour back to tolerate clock skew.
const DEV_VALIDITY: StdDuration = StdDuration::from_secs(13 * 24 * 3600);
const DEV_BACKDATE: StdDuration = StdDuration::from_secs(3600);
/// A development identity this close to expiry is replaced at start-up.
const RENEW_MARGIN: StdDuration = StdDuration::from_secs(24 * 3600);

const DEV_CERT: &str = "dev-cert.pem";
const DEV_KEY: &str = "dev-key.pem";
/// Expiry of the development certificate, as UNIX seconds; written beside it so the relay
/// need not parse X.509 to know when to renew.
const DEV_EXPIRY: &str = "dev-cert.expires";

/// The identity in use and what the HTTP side publishes about it.
pub struct LoadedIdentity {
    pub identity: Identity,
    /// Lowercase hex SHA-256 of the leaf certificate's DER.
    pub certificate_sha256: String,
    /// True for a generated development identity (clients should pin its hash).
    pub development: bool,
}

pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn finish(identity: Identity, development: bool) -> Result<LoadedIdentity> {
    let leaf = identity
        .certificate_chain()
        .as_slice()
        .first()
        .context("the certificate file holds no certificate")?;
    Ok(LoadedIdentity {
        certificate_sha256: sha256_hex(leaf.der()),
        identity,
        development,
    })
}

/// Loads production PEM files.
pub async fn load(cert: &Path, key: &Path) -> Result<LoadedIdentity> {
    let identity = Identity::load_pemfiles(cert, key)
        .await
        .with_context(|| format!("loading {} and {}", cert.display(), key.display()))?;
    finish(identity, false)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Whether the development identity in `dir` is missing or has a day or less left.
pub fn development_needs_renewal(dir: &Path) -> bool {
    let expires_at = std::fs::read_to_string(dir.join(DEV_EXPIRY))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    expires_at.is_none_or(|at| at <= unix_now() + RENEW_MARGIN.as_secs())
}

/// Reuses the development identity in `dir` while it has more than a day left, otherwise
/// generates a new one there.
pub async fn development(dir: &Path) -> Result<LoadedIdentity> {
    let (cert, key, expiry) = (dir.join(DEV_CERT), dir.join(DEV_KEY), dir.join(DEV_EXPIRY));
    if !development_needs_renewal(dir)
        && let Ok(identity) = Identity::load_pemfiles(&cert, &key).await
    {
        let expires_at = std::fs::read_to_string(&expiry).unwrap_or_default();
        let expires_at = expires_at.trim();
        tracing::info!(dir = %dir.display(), expires_at, "reusing development certificate");
        return finish(identity, true);
    }
    generate(dir, &cert, &key, &expiry)?;
    let identity = Identity::load_pemfiles(&cert, &key)
        .await
        .context("reading back the generated development certificate")?;
    finish(identity, true)
}

fn generate(dir: &Path, cert: &PathBuf, key: &PathBuf, expiry: &PathBuf) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - DEV_BACKDATE;
    // Browsers measure the 14 days from not-before to not-after.
    params.not_after = params.not_before + DEV_VALIDITY;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Synapse SFU development");
    let certificate = params.self_signed(&key_pair)?;
    std::fs::write(cert, certificate.pem())
        .with_context(|| format!("writing {}", cert.display()))?;
    std::fs::write(key, key_pair.serialize_pem())
        .with_context(|| format!("writing {}", key.display()))?;
    std::fs::write(expiry, params.not_after.unix_timestamp().to_string())?;
    tracing::info!(dir = %dir.display(), "generated a development certificate (valid 13 days)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn development_identity_is_reused_then_renewed() {
        let dir = std::env::temp_dir().join(format!("synapse-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = development(&dir).await.unwrap();
        assert!(first.development);
        assert_eq!(first.certificate_sha256.len(), 64);
        let again = development(&dir).await.unwrap();
        assert_eq!(again.certificate_sha256, first.certificate_sha256, "reused");
        // Pretend it expires within the renewal margin.
        std::fs::write(dir.join(DEV_EXPIRY), (unix_now() + 60).to_string()).unwrap();
        let renewed = development(&dir).await.unwrap();
        assert_ne!(renewed.certificate_sha256, first.certificate_sha256);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
