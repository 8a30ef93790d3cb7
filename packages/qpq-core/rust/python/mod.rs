//! The PyO3 glue: `qpq_core._mls`. Plain conversions only; every decision
//! lives in the engine modules.
//!
//! Rules kept here (docs/mls.md, "Panics, release builds and catch_unwind"):
//! - every exported function runs inside `convert::guard` or
//!   `convert::detached`, so a Rust panic becomes
//!   `qpq_core.errors.InternalMlsError` and never PyO3's `PanicException`
//!   (a `BaseException`);
//! - exceptions are the Python classes of `qpq_core.errors`, looked up by
//!   name once;
//! - input is size-capped before it reaches a decoder;
//! - crypto runs with the interpreter detached (`py.detach`), and a client's
//!   mutex is only ever taken while detached, so no thread holds the GIL
//!   while it waits for the mutex;
//! - results are frozen classes (`results`), never tuples.

mod convert;
mod delivery;
mod group_info;
mod identity;
mod mls_client;
mod results;

use pyo3::prelude::*;
use pyo3::types::{PyModule, PyTuple};

use crate::keypackage;
use convert::{Cap, capped, detached, guard};
use results::{KeyPackageInfo, MessageInfo};

/// Validate a TLS-serialized ``MLSMessage(mls_key_package)``.
///
/// Checks both signatures, that the lifetime holds at ``now`` (and at the
/// system clock, which OpenMLS checks) with a range of at most
/// ``max_lifetime_seconds``, the ciphersuite allowlist, and that the
/// BasicCredential identity is 32 bytes and equals the signature key.
///
/// Raises:
///     MalformedMlsMessageError: not a KeyPackage MLSMessage, or too large.
///     InvalidKeyPackageError: a check failed (qpq_proto's class).
///     UnsupportedCiphersuiteError: another ciphersuite (qpq_proto's class).
#[pyfunction]
#[pyo3(signature = (data, *, now = None, max_lifetime_seconds = keypackage::MAX_LIFETIME_SECONDS))]
fn validate_key_package(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    now: Option<u64>,
    max_lifetime_seconds: u64,
) -> PyResult<KeyPackageInfo> {
    let data = capped(data, Cap::KeyPackage)?;
    let data = data.as_bytes();
    let info = detached(py, || {
        keypackage::validate_key_package(data, now, max_lifetime_seconds)
    })?;
    Ok(KeyPackageInfo::new(py, info))
}

/// Read wire format, group id, epoch and content type without any group
/// state: PublicMessage and PrivateMessage headers carry them in cleartext
/// (RFC 9420 §6.2, §6.3).
///
/// Raises:
///     MalformedMlsMessageError: the bytes are no MLSMessage, or too large.
#[pyfunction]
fn peek_message(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<MessageInfo> {
    let data = capped(data, Cap::Message)?;
    let info = guard(py, || crate::framing::peek_message(data.as_bytes()))?;
    MessageInfo::new(py, info)
}

/// A panic message can carry `Debug` output of OpenMLS values; print only
/// where it happened. The hook is this library's own (its own copy of std),
/// so other extensions in the process are unaffected.
fn quiet_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("qpq_core._mls: internal panic at {location} (raised as InternalMlsError)");
    }));
}

#[pymodule]
fn _mls(m: &Bound<'_, PyModule>) -> PyResult<()> {
    quiet_panic_hook();
    m.add(
        "CIPHERSUITE",
        "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
    )?;
    m.add("CIPHERSUITE_ID", u16::from(crate::CIPHERSUITE))?;
    m.add(
        "SUITE_IDS",
        PyTuple::new(m.py(), crate::suite::SUITES.map(u16::from))?,
    )?;
    m.add(
        "DEFAULT_KEY_PACKAGE_LIFETIME_SECONDS",
        keypackage::DEFAULT_LIFETIME_SECONDS,
    )?;
    m.add(
        "MAX_KEY_PACKAGE_LIFETIME_SECONDS",
        keypackage::MAX_LIFETIME_SECONDS,
    )?;
    m.add("MAX_PAST_EPOCHS", crate::client::MAX_PAST_EPOCHS)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<identity::PyIdentity>()?;
    m.add_class::<identity::PyDeviceCertificate>()?;
    m.add_class::<mls_client::PyMlsClient>()?;
    m.add_class::<results::KeyPackagesCreated>()?;
    m.add_class::<results::GroupCreated>()?;
    m.add_class::<results::CommitBundle>()?;
    m.add_class::<results::ProposalCreated>()?;
    m.add_class::<results::CommitApplied>()?;
    m.add_class::<results::Cleared>()?;
    m.add_class::<results::Joined>()?;
    m.add_class::<results::Encrypted>()?;
    m.add_class::<results::ApplicationMessage>()?;
    m.add_class::<results::ProposalStored>()?;
    m.add_class::<results::OwnMessage>()?;
    m.add_class::<results::KeyPackageInfo>()?;
    m.add_class::<results::MessageInfo>()?;
    m.add_class::<group_info::GroupInfoFacts>()?;
    m.add_class::<delivery::PyDeliveryGroup>()?;
    m.add_class::<delivery::GroupRegistered>()?;
    m.add_class::<delivery::ProposalVerified>()?;
    m.add_class::<delivery::CommitVerified>()?;
    m.add_function(wrap_pyfunction!(identity::verify_signature, m)?)?;
    m.add_function(wrap_pyfunction!(validate_key_package, m)?)?;
    m.add_function(wrap_pyfunction!(peek_message, m)?)?;
    m.add_function(wrap_pyfunction!(group_info::group_info_facts, m)?)?;
    Ok(())
}
