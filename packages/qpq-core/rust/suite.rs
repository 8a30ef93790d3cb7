//! The ciphersuites qpq speaks, and the capabilities of the leaves it makes.
//!
//! Two suites, chosen per group (a group's suite never changes, RFC 9420
//! §11): the default `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`
//! (0x0001), and `MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519` (0x004D,
//! draft-ietf-mls-pq-ciphersuites), whose HPKE uses X-Wing (ML-KEM-768
//! combined with X25519), so that what is recorded today stays closed to
//! whoever breaks X25519 later. Its code point is provisional; signatures
//! stay Ed25519 in both (docs/security.md, "Post-quantum groups").
//! OpenMLS knows more suites than these: everything here refuses the rest.

use openmls::prelude::{Capabilities, Ciphersuite, ExtensionType};

use crate::errors::{Error, ErrorKind, Result};

/// The default suite: 0x0001.
pub const DEFAULT: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// The post-quantum suite: 0x004D (provisional code point).
pub const XWING: Ciphersuite = Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519;
/// Every suite qpq speaks.
pub const SUITES: [Ciphersuite; 2] = [DEFAULT, XWING];

/// What a leaf of the default suite advertised before the X-Wing suite
/// existed: OpenMLS's default list without its pq feature (0x0001, 0x0002,
/// 0x0003). Kept so that a leaf of the default suite is the same bytes as
/// the previous build's (tests/fixtures/before_xwing.json).
const DEFAULT_LEAF_SUITES: [Ciphersuite; 3] = [
    DEFAULT,
    Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256,
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
];

fn unsupported(id: u16) -> Error {
    Error::new(
        ErrorKind::UnsupportedCiphersuite,
        format!("ciphersuite 0x{id:04x} is not allowed"),
    )
}

/// Refuse any suite but [`SUITES`] (OpenMLS accepts every suite it knows).
pub fn require(suite: Ciphersuite) -> Result<()> {
    if SUITES.contains(&suite) {
        return Ok(());
    }
    Err(unsupported(u16::from(suite)))
}

/// The suite with this RFC 9420 code point, if qpq speaks it.
pub fn from_id(id: u16) -> Result<Ciphersuite> {
    SUITES
        .into_iter()
        .find(|s| u16::from(*s) == id)
        .ok_or_else(|| unsupported(id))
}

/// Capabilities of a leaf we make in a group of `suite`: as its creator, or
/// rejoining. Versions and credentials are OpenMLS's defaults (MLS 1.0,
/// BasicCredential); no extensions or proposals beyond the defaults.
pub fn leaf_capabilities(suite: Ciphersuite) -> Capabilities {
    let suites: &[Ciphersuite] = if suite == DEFAULT {
        &DEFAULT_LEAF_SUITES
    } else {
        &[suite]
    };
    Capabilities::new(None, Some(suites), None, None, None)
}

/// Capabilities of our KeyPackages of `suite`. A last-resort KeyPackage must
/// list the LastResort extension in its leaf capabilities, or every validator
/// rejects it (docs/mls.md, "Last-resort KeyPackages"); listing it on every
/// package costs nothing and keeps one shape.
pub fn key_package_capabilities(suite: Ciphersuite) -> Capabilities {
    Capabilities::new(
        None,
        Some(&[suite]),
        Some(&[ExtensionType::LastResort]),
        None,
        None,
    )
}
