//! `Identity` and `verify_signature` for Python.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyType};

use super::convert::guard;
use crate::identity::{self, Identity};

/// An Ed25519 identity. The 32-byte public key is the identity key, the MLS
/// BasicCredential identity and the leaf signature key.
#[pyclass(module = "qpq_core._mls", name = "Identity", frozen)]
pub struct PyIdentity {
    pub(super) inner: Identity,
}

#[pymethods]
impl PyIdentity {
    /// A fresh identity from the operating system's randomness.
    #[classmethod]
    fn generate(_cls: &Bound<'_, PyType>, py: Python<'_>) -> PyResult<Self> {
        guard(py, || Identity::generate().map(|inner| Self { inner }))
    }

    /// Restore an identity from its 32-byte Ed25519 seed.
    #[classmethod]
    fn from_secret_bytes(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        secret: &[u8],
    ) -> PyResult<Self> {
        guard(py, || {
            Identity::from_secret(secret).map(|inner| Self { inner })
        })
    }

    /// The 32-byte Ed25519 seed. Store it encrypted; never log it.
    fn secret_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.secret_bytes().as_slice())
    }

    /// The 32-byte public identity key.
    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.public_key())
    }

    /// A 64-byte Ed25519 signature over `message`.
    fn sign<'py>(&self, py: Python<'py>, message: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let signature = guard(py, || Ok(self.inner.sign_bytes(message)))?;
        Ok(PyBytes::new(py, &signature))
    }

    pub(super) fn __repr__(&self) -> String {
        let pk = self.inner.public_key();
        let fp: String = pk[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("Identity(public_key={fp}…)")
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyIdentity>()
            .map(|o| o.get().inner.public_key() == self.inner.public_key())
            .unwrap_or(false)
    }

    fn __hash__(&self) -> u64 {
        let pk = self.inner.public_key();
        u64::from_le_bytes([pk[0], pk[1], pk[2], pk[3], pk[4], pk[5], pk[6], pk[7]])
    }
}

/// Verify an Ed25519 signature; raise `InvalidSignatureError` if it is bad.
#[pyfunction]
pub fn verify_signature(
    py: Python<'_>,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> PyResult<()> {
    guard(py, || {
        identity::verify_signature(public_key, message, signature)
    })
}
