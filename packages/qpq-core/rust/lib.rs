//! qpq-core's MLS engine: OpenMLS (RFC 9420) behind messenger-shaped
//! operations, a journaling storage provider that makes every operation
//! all-or-nothing, and (feature `python`) the PyO3 glue that exposes it as
//! the private module `qpq_core._mls`.

pub mod client;
pub mod commit;
pub mod delivery;
pub mod errors;
pub mod framing;
pub mod group_info;
pub mod identity;
pub mod keypackage;
pub mod policy;
pub mod provider;
pub mod storage;

#[cfg(feature = "python")]
mod python;

use openmls::prelude::Ciphersuite;

/// The only ciphersuite qpq speaks: 0x0001.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Refuse any other ciphersuite (OpenMLS accepts every suite it knows).
pub fn require_ciphersuite(suite: Ciphersuite) -> errors::Result<()> {
    if suite == CIPHERSUITE {
        return Ok(());
    }
    Err(errors::Error::new(
        errors::ErrorKind::UnsupportedCiphersuite,
        format!("ciphersuite 0x{:04x} is not allowed", u16::from(suite)),
    ))
}

#[cfg(test)]
mod tests;
