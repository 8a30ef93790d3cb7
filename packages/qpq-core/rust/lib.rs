//! qpq-core's MLS engine: OpenMLS (RFC 9420) behind messenger-shaped
//! operations, a journaling storage provider that makes every operation
//! all-or-nothing, and (feature `python`) the PyO3 glue that exposes it as
//! the private module `qpq_core._mls`.

pub mod certificate;
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
pub mod suite;

#[cfg(feature = "python")]
mod python;

use openmls::prelude::Ciphersuite;

/// The default ciphersuite: 0x0001 (see [`suite`] for both).
pub const CIPHERSUITE: Ciphersuite = suite::DEFAULT;

/// Refuse any ciphersuite but qpq's two (OpenMLS accepts every suite it knows).
pub fn require_ciphersuite(ciphersuite: Ciphersuite) -> errors::Result<()> {
    suite::require(ciphersuite)
}

#[cfg(test)]
mod tests;
