//! `GroupInfoFacts`: what a GroupInfo says about the epoch it describes, as
//! members and the delivery service compare it (`crate::group_info::Facts`),
//! and `group_info_facts` to read them from a GroupInfo message.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::convert::{Cap, capped, detached, py_bytes};
use super::results::short_hex;
use crate::group_info::{self, Facts};

/// What a GroupInfo says about the epoch it describes.
///
/// Two GroupInfos have equal ``digest`` exactly when they describe the same
/// epoch of the same group (group context: tree hash, confirmed transcript
/// hash, extensions) with the same ``external_pub``, whoever signed them.
/// The delivery service checks everything but ``external_pub`` itself; a
/// member compares the digest of the GroupInfo the server keeps with its own.
///
/// Attributes:
///     group_id: the group.
///     epoch: the epoch described.
///     context_hash: SHA-256 of the TLS-serialized GroupContext.
///     external_pub: the HPKE key a joiner encrypts an external commit to.
///     digest: SHA-256 over a label, ``context_hash`` and ``external_pub``.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct GroupInfoFacts {
    group_id: Py<PyBytes>,
    epoch: u64,
    context_hash: Py<PyBytes>,
    external_pub: Py<PyBytes>,
    digest: Py<PyBytes>,
}

impl GroupInfoFacts {
    pub fn new(py: Python<'_>, facts: &Facts) -> Self {
        Self {
            group_id: py_bytes(py, &facts.group_id),
            epoch: facts.epoch,
            context_hash: py_bytes(py, &facts.context_hash),
            external_pub: py_bytes(py, &facts.external_pub),
            digest: py_bytes(py, &facts.digest),
        }
    }
}

#[pymethods]
impl GroupInfoFacts {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "GroupInfoFacts(group_id={}, epoch={}, digest={})",
            short_hex(py, &self.group_id),
            self.epoch,
            short_hex(py, &self.digest),
        )
    }
}

/// The facts of an ``MLSMessage(GroupInfo)`` (its signature is not checked).
///
/// Raises:
///     MalformedMlsMessageError: not a GroupInfo message, or too large.
///     InvalidMlsMessageError: it lacks the external_pub extension.
///     UnsupportedCiphersuiteError: another ciphersuite.
#[pyfunction]
pub fn group_info_facts(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<GroupInfoFacts> {
    let data = capped(data, Cap::Message)?;
    let data = data.as_bytes();
    let facts = detached(py, || {
        group_info::facts(
            &group_info::parse(data)?,
            &crate::provider::Crypto::default(),
        )
    })?;
    Ok(GroupInfoFacts::new(py, &facts))
}
