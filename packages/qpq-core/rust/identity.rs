//! Ed25519 identities: the 32-byte public key is the identity key, the MLS
//! BasicCredential identity and the leaf signature key, all at once.

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
        })
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

    /// BasicCredential(identity = public key) with the same key as signature key.
    pub fn credential_with_key(&self) -> CredentialWithKey {
        let pk = self.public_key().to_vec();
        CredentialWithKey {
            credential: BasicCredential::new(pk.clone()).into(),
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

/// The identity key of a leaf: its BasicCredential identity, which must be
/// 32 bytes and equal the leaf's signature key (OpenMLS does not check this).
pub fn leaf_identity(credential: &Credential, signature_key: &[u8]) -> Result<Vec<u8>> {
    let basic = BasicCredential::try_from(credential.clone()).map_err(|_| {
        Error::new(
            ErrorKind::InvalidIdentity,
            "credential is not a BasicCredential",
        )
    })?;
    let identity = basic.identity();
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
    Ok(identity.to_vec())
}

/// The identity key of a leaf that is already in a group's tree. Every leaf
/// was checked by [`leaf_identity`] when it arrived, so its BasicCredential
/// identity is its signature key.
pub fn tree_identity(credential: &Credential, signature_key: &[u8]) -> Vec<u8> {
    BasicCredential::try_from(credential.clone())
        .map(|c| c.identity().to_vec())
        .unwrap_or_else(|_| signature_key.to_vec())
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
