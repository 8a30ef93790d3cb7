//! KeyPackages: creation (client side) and validation (server side, and
//! every member before an Add).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openmls::prelude::{
    Ciphersuite, KeyPackage, KeyPackageIn, Lifetime, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    ProtocolVersion,
};
use openmls_traits::OpenMlsProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::HashType;
use tls_codec::DeserializeBytes;

use crate::errors::{Error, ErrorKind, Result, key_package_error};
use crate::identity::{Identity, leaf_identity, leaf_keys};
use crate::provider::Crypto;
use crate::{require_ciphersuite, suite};

/// RFC 9420 recommends KeyPackages of limited life; OpenMLS's default is
/// 84 days plus one hour of clock-skew margin. Longer ranges are refused.
pub const MAX_LIFETIME_SECONDS: u64 = 84 * 24 * 3600 + 3600;
/// 28 days: a third of the longest lifetime a validator accepts.
pub const DEFAULT_LIFETIME_SECONDS: u64 = 28 * 24 * 3600;
/// At most this many KeyPackages per call: a bound, not a policy.
pub const MAX_BATCH: usize = 10_000;

/// What the server learns from a valid KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageInfo {
    /// The device key (== the leaf signature key).
    pub identity_key: Vec<u8>,
    /// The account key its credential names (the device key when legacy).
    pub account_key: Vec<u8>,
    pub ciphersuite: u16,
    pub not_after: u64,
    pub fingerprint: Vec<u8>,
    pub last_resort: bool,
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Build `count` KeyPackages of `ciphersuite`; their private halves land in
/// the provider's storage (one row each). Returns MLSMessage-wrapped bytes.
pub fn create_key_packages(
    provider: &impl OpenMlsProvider,
    identity: &Identity,
    count: usize,
    lifetime_seconds: u64,
    last_resort: bool,
    ciphersuite: Ciphersuite,
) -> Result<Vec<Vec<u8>>> {
    require_ciphersuite(ciphersuite)?;
    if count == 0 || count > MAX_BATCH {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("count must be between 1 and {MAX_BATCH}"),
        ));
    }
    if lifetime_seconds == 0 || lifetime_seconds + 3600 > MAX_LIFETIME_SECONDS {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "lifetime_seconds must be between 1 and {}",
                MAX_LIFETIME_SECONDS - 3600
            ),
        ));
    }
    let capabilities = suite::key_package_capabilities(ciphersuite);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut builder = KeyPackage::builder()
            .key_package_lifetime(Lifetime::new(lifetime_seconds))
            .leaf_node_capabilities(capabilities.clone());
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle = builder
            .build(
                ciphersuite,
                provider,
                identity,
                identity.credential_with_key(),
            )
            .map_err(|e| Error::with(ErrorKind::Internal, "cannot create KeyPackage", &e))?;
        let bytes = MlsMessageOut::from(bundle.key_package().clone())
            .to_bytes()
            .map_err(|e| Error::with(ErrorKind::Internal, "cannot encode KeyPackage", &e))?;
        out.push(bytes);
    }
    Ok(out)
}

fn parse(data: &[u8]) -> Result<KeyPackageIn> {
    let message = MlsMessageIn::tls_deserialize_exact_bytes(data)
        .map_err(|e| Error::with(ErrorKind::MalformedMessage, "undecodable MLSMessage", &e))?;
    match message.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => Ok(kp),
        _ => Err(Error::new(
            ErrorKind::MalformedMessage,
            "MLSMessage does not carry a KeyPackage",
        )),
    }
}

/// Every check of a KeyPackage: signatures, lifetime at `now` and at the
/// system clock (OpenMLS checks the latter), range, ciphersuite allowlist,
/// identity == signature key.
pub fn verify(data: &[u8], now: u64, max_lifetime_seconds: u64) -> Result<KeyPackage> {
    let kp_in = parse(data)?;
    let crypto = Crypto::default();
    let kp = kp_in
        .validate(&crypto, ProtocolVersion::Mls10)
        .map_err(|e| key_package_error(&e))?;
    require_ciphersuite(kp.ciphersuite())?;
    let lifetime = kp.life_time();
    let at = UNIX_EPOCH + Duration::from_secs(now);
    lifetime
        .validate_with_time(at)
        .map_err(|e| Error::with(ErrorKind::InvalidKeyPackage, "invalid KeyPackage", &e))?;
    let range = lifetime.not_after().saturating_sub(lifetime.not_before());
    if range > max_lifetime_seconds {
        return Err(Error::new(
            ErrorKind::InvalidKeyPackage,
            format!("KeyPackage lifetime range {range}s exceeds {max_lifetime_seconds}s"),
        ));
    }
    let leaf = kp.leaf_node();
    // The directory answers INVALID_KEY_PACKAGE for a credential that is not
    // its signature key, so the identity check reports that kind here.
    leaf_identity(leaf.credential(), leaf.signature_key().as_slice())
        .map_err(|e| Error::new(ErrorKind::InvalidKeyPackage, e.message))?;
    Ok(kp)
}

/// The server-side validation: `verify` plus the facts the directory keeps.
pub fn validate_key_package(
    data: &[u8],
    now: Option<u64>,
    max_lifetime_seconds: u64,
) -> Result<KeyPackageInfo> {
    let kp = verify(data, now.unwrap_or_else(now_seconds), max_lifetime_seconds)?;
    let leaf = kp.leaf_node();
    let (identity, account_key) = leaf_keys(leaf.credential(), leaf.signature_key().as_slice())
        .map_err(|e| Error::new(ErrorKind::InvalidKeyPackage, e.message))?;
    let fingerprint = Crypto::default()
        .hash(HashType::Sha2_256, data)
        .map_err(|e| Error::with(ErrorKind::Internal, "hash failed", &e))?;
    Ok(KeyPackageInfo {
        identity_key: identity,
        account_key,
        ciphersuite: u16::from(kp.ciphersuite()),
        not_after: kp.life_time().not_after(),
        fingerprint,
        last_resort: kp.last_resort(),
    })
}

/// A KeyPackage that a member is about to add: validated at the system clock.
pub fn verify_for_add(data: &[u8]) -> Result<KeyPackage> {
    verify(data, now_seconds(), MAX_LIFETIME_SECONDS)
}
