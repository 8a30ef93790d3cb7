//! Ed25519 identities. A device's 32-byte public key is its identity key and
//! its leaf signature key. Its MLS BasicCredential identity is either that
//! same key (the legacy form: the device is its own account) or a device
//! certificate by which an account key vouches for it (`certificate`).

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use openmls::prelude::{BasicCredential, Credential, CredentialWithKey};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;
use zeroize::Zeroizing;

use crate::errors::{Error, ErrorKind, Result};

pub const KEY_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;

/// An Ed25519 signing key. `ed25519_dalek` zeroizes it on drop; `Debug`
/// prints only a fingerprint.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
    /// The device certificate this identity's leaves carry, if it is a
    /// linked device (verified when set: it names this key).
    certificate: Option<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pk = self.public_key();
        write!(
            f,
            "Identity({:02x}{:02x}{:02x}{:02x}…)",
            pk[0], pk[1], pk[2], pk[3]
        )
    }
}

impl Identity {
    /// A fresh identity from the operating system's randomness.
    pub fn generate() -> Result<Self> {
        let seed: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(
            RustCrypto::default()
                .random_array()
                .map_err(|_| Error::new(ErrorKind::Internal, "no randomness available"))?,
        );
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
            certificate: None,
        })
    }

    /// Restore from the 32-byte Ed25519 seed.
    pub fn from_secret(secret: &[u8]) -> Result<Self> {
        let seed: &[u8; KEY_LEN] = secret.try_into().map_err(|_| {
            Error::new(
                ErrorKind::InvalidIdentity,
                format!(
                    "an identity secret is {KEY_LEN} bytes, got {}",
                    secret.len()
                ),
            )
        })?;
        Ok(Self {
            key: SigningKey::from_bytes(seed),
            certificate: None,
        })
    }

    /// The same key carrying `certificate`, which must verify and name this
    /// key as its device key.
    pub fn with_certificate(&self, certificate: &[u8]) -> Result<Self> {
        let cert = crate::certificate::verify(certificate)?;
        if cert.device_key != self.public_key() {
            return Err(Error::new(
                ErrorKind::InvalidIdentity,
                "the certificate is for another device key",
            ));
        }
        Ok(Self {
            key: self.key.clone(),
            certificate: Some(certificate.to_vec()),
        })
    }

    pub fn certificate(&self) -> Option<&[u8]> {
        self.certificate.as_deref()
    }

    /// The account key: the certificate's, or this key for a legacy identity.
    pub fn account_key(&self) -> [u8; KEY_LEN] {
        self.certificate
            .as_deref()
            .and_then(|c| crate::certificate::verify(c).ok())
            .map_or_else(|| self.public_key(), |c| c.account_key)
    }

    pub fn secret_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.key.to_bytes())
    }

    pub fn public_key(&self) -> [u8; KEY_LEN] {
        self.key.verifying_key().to_bytes()
    }

    pub fn sign_bytes(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        use ed25519_dalek::Signer as _;
        self.key.sign(message).to_bytes()
    }

    /// BasicCredential(identity = certificate, or the public key for a
    /// legacy identity) with the public key as signature key.
    pub fn credential_with_key(&self) -> CredentialWithKey {
        let pk = self.public_key().to_vec();
        let identity = self.certificate.clone().unwrap_or_else(|| pk.clone());
        CredentialWithKey {
            credential: BasicCredential::new(identity).into(),
            signature_key: pk.into(),
        }
    }
}

impl Signer for Identity {
    fn sign(&self, payload: &[u8]) -> std::result::Result<Vec<u8>, SignerError> {
        Ok(self.sign_bytes(payload).to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// Verify an Ed25519 signature (strict: rejects small-order keys and
/// non-canonical signatures). Returns `Ok(())` or an `InvalidSignature` error.
pub fn verify_signature(public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<()> {
    let invalid = || Error::new(ErrorKind::InvalidSignature, "signature verification failed");
    let pk: &[u8; KEY_LEN] = public_key.try_into().map_err(|_| invalid())?;
    let sig: &[u8; SIGNATURE_LEN] = signature.try_into().map_err(|_| invalid())?;
    let key = VerifyingKey::from_bytes(pk).map_err(|_| invalid())?;
    key.verify_strict(message, &Signature::from_bytes(sig))
        .map_err(|_| invalid())
}

fn basic_identity(credential: &Credential) -> Result<Vec<u8>> {
    BasicCredential::try_from(credential.clone())
        .map(|b| b.identity().to_vec())
        .map_err(|_| {
            Error::new(
                ErrorKind::InvalidIdentity,
                "credential is not a BasicCredential",
            )
        })
}

/// The device key and account key a leaf's credential names, verified: a
/// legacy credential is 32 bytes equal to the signature key (its own
/// account); a device certificate must verify under the account key it
/// names and name the signature key as its device key (OpenMLS checks
/// neither).
pub fn leaf_keys(credential: &Credential, signature_key: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let identity = basic_identity(credential)?;
    if crate::certificate::is_certificate(&identity) {
        let cert = crate::certificate::verify(&identity).map_err(|e| {
            Error::new(
                ErrorKind::InvalidIdentity,
                format!("the device certificate does not verify: {}", e.message),
            )
        })?;
        if cert.device_key.as_slice() != signature_key {
            return Err(Error::new(
                ErrorKind::InvalidIdentity,
                "the device certificate names another key than the leaf's",
            ));
        }
        return Ok((cert.device_key.to_vec(), cert.account_key.to_vec()));
    }
    if identity.len() != KEY_LEN {
        return Err(Error::new(
            ErrorKind::InvalidIdentity,
            format!(
                "identity key must be {KEY_LEN} bytes, got {}",
                identity.len()
            ),
        ));
    }
    if identity != signature_key {
        return Err(Error::new(
            ErrorKind::InvalidIdentity,
            "credential identity differs from the signature key",
        ));
    }
    Ok((identity.clone(), identity))
}

/// The identity (device) key of a leaf, after [`leaf_keys`] checked it:
/// rosters, queues and KeyPackages are per device key.
pub fn leaf_identity(credential: &Credential, signature_key: &[u8]) -> Result<Vec<u8>> {
    leaf_keys(credential, signature_key).map(|(device, _)| device)
}

/// The identity key of a leaf that is already in a group's tree. Every leaf
/// was checked by [`leaf_keys`] when it arrived, so its device key is its
/// signature key.
pub fn tree_identity(_credential: &Credential, signature_key: &[u8]) -> Vec<u8> {
    signature_key.to_vec()
}

/// The device key a checked credential names (a message sender's: its leaf
/// was checked by [`leaf_keys`] when it joined the tree).
pub fn credential_device_key(credential: &Credential) -> Result<Vec<u8>> {
    let identity = basic_identity(credential)?;
    if crate::certificate::is_certificate(&identity) {
        return crate::certificate::verify(&identity).map(|c| c.device_key.to_vec());
    }
    Ok(identity)
}

/// The account key of a leaf already in a group's tree (checked on arrival).
pub fn tree_account(credential: &Credential, signature_key: &[u8]) -> Vec<u8> {
    leaf_keys(credential, signature_key).map_or_else(|_| signature_key.to_vec(), |(_, a)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_restore() {
        let id = Identity::generate().unwrap();
        let again = Identity::from_secret(id.secret_bytes().as_slice()).unwrap();
        assert_eq!(id.public_key(), again.public_key());
        let sig = id.sign_bytes(b"hello");
        verify_signature(&id.public_key(), b"hello", &sig).unwrap();
        let err = verify_signature(&id.public_key(), b"hellO", &sig).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidSignature);
    }
}
