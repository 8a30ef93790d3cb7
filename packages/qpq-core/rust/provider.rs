//! The OpenMLS provider: [`Crypto`] for crypto, RustCrypto for randomness,
//! the journaling storage for state.
//!
//! [`Crypto`] routes by algorithm, not by ciphersuite: HPKE with the X-Wing
//! KEM (ML-KEM-768 + X25519, the KEM of suite 0x004D) goes to libcrux
//! (`openmls_libcrux_crypto`), whose ML-KEM is formally verified and which
//! is the provider OpenMLS itself offers the suite with; everything else
//! (hashes, HKDF, the AEADs, Ed25519, HPKE with DHKEM(X25519)) goes to
//! RustCrypto as before. So the default suite (0x0001) runs exactly the code
//! it ran before the X-Wing suite existed, byte for byte, and libcrux is not
//! even instantiated until an X-Wing key is used (docs/mls.md,
//! "Ciphersuites").

use std::sync::OnceLock;

use openmls_libcrux_crypto::CryptoProvider as Libcrux;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeCiphertext, HpkeConfig,
    HpkeKemType, HpkeKeyPair, KemOutput, SignatureScheme,
};
use tls_codec::SecretVLBytes;

use crate::storage::JournalStorage;
use crate::suite;

/// qpq's crypto: RustCrypto, and libcrux for the X-Wing KEM.
#[derive(Default)]
pub struct Crypto {
    rust: RustCrypto,
    // Seeded from the operating system on first use; `None` if that failed,
    // which fails each X-Wing operation (never a panic, never a fallback).
    libcrux: OnceLock<Option<Libcrux>>,
}

impl Crypto {
    fn libcrux(&self) -> Result<&Libcrux, CryptoError> {
        self.libcrux
            .get_or_init(|| Libcrux::new().ok())
            .as_ref()
            .ok_or(CryptoError::InsufficientRandomness)
    }

    /// The provider for HPKE with this configuration's KEM.
    fn hpke(&self, config: &HpkeConfig) -> Result<&dyn HpkeCrypto, CryptoError> {
        Ok(match config.0 {
            HpkeKemType::XWingKemDraft6 => self.libcrux()?,
            _ => &self.rust,
        })
    }
}

/// The HPKE half of [`OpenMlsCrypto`], object-safe, so that [`Crypto`] picks
/// a provider per call.
trait HpkeCrypto {
    fn seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError>;
    fn open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError>;
    fn sender_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        context: &[u8],
        length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError>;
    fn receiver_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        context: &[u8],
        length: usize,
    ) -> Result<ExporterSecret, CryptoError>;
    fn derive_keypair(&self, config: HpkeConfig, ikm: &[u8]) -> Result<HpkeKeyPair, CryptoError>;
}

impl<T: OpenMlsCrypto> HpkeCrypto for T {
    fn seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        self.hpke_seal(config, pk_r, info, aad, ptxt)
    }

    fn open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.hpke_open(config, input, sk_r, info, aad)
    }

    fn sender_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        context: &[u8],
        length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        self.hpke_setup_sender_and_export(config, pk_r, info, context, length)
    }

    fn receiver_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        context: &[u8],
        length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.hpke_setup_receiver_and_export(config, enc, sk_r, info, context, length)
    }

    fn derive_keypair(&self, config: HpkeConfig, ikm: &[u8]) -> Result<HpkeKeyPair, CryptoError> {
        self.derive_hpke_keypair(config, ikm)
    }
}

impl OpenMlsCrypto for Crypto {
    /// Exactly the suites qpq speaks (`crate::suite`): OpenMLS asks before
    /// it builds a KeyPackage, a group or a delivery-service state.
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        if !suite::SUITES.contains(&ciphersuite) {
            return Err(CryptoError::UnsupportedCiphersuite);
        }
        if ciphersuite.hpke_kem_algorithm() == HpkeKemType::XWingKemDraft6 {
            self.libcrux()?.supports(ciphersuite)
        } else {
            self.rust.supports(ciphersuite)
        }
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        suite::SUITES.to_vec()
    }

    fn hkdf_extract(
        &self,
        hash_type: HashType,
        salt: &[u8],
        ikm: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.rust.hkdf_extract(hash_type, salt, ikm)
    }

    fn hmac(
        &self,
        hash_type: HashType,
        key: &[u8],
        message: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.rust.hmac(hash_type, key, message)
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        self.rust.hkdf_expand(hash_type, prk, info, okm_len)
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.rust.hash(hash_type, data)
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.rust.aead_encrypt(alg, key, data, nonce, aad)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.rust.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        self.rust.signature_key_gen(alg)
    }

    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.rust.verify_signature(alg, data, pk, signature)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.rust.sign(alg, data, key)
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        self.hpke(&config)?.seal(config, pk_r, info, aad, ptxt)
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.hpke(&config)?.open(config, input, sk_r, info, aad)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        self.hpke(&config)?
            .sender_export(config, pk_r, info, exporter_context, exporter_length)
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.hpke(&config)?.receiver_export(
            config,
            enc,
            sk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }

    fn derive_hpke_keypair(
        &self,
        config: HpkeConfig,
        ikm: &[u8],
    ) -> Result<HpkeKeyPair, CryptoError> {
        self.hpke(&config)?.derive_keypair(config, ikm)
    }
}

#[derive(Default)]
pub struct Provider {
    crypto: Crypto,
    storage: JournalStorage,
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = Crypto;
    type RandProvider = RustCrypto;
    type StorageProvider = JournalStorage;

    fn storage(&self) -> &JournalStorage {
        &self.storage
    }

    fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    fn rand(&self) -> &RustCrypto {
        &self.crypto.rust
    }
}
