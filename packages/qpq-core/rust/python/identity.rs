//! `Identity`, `DeviceCertificate` and `verify_signature` for Python.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyType};

use super::convert::guard;
use crate::certificate;
use crate::identity::{self, Identity};

/// An Ed25519 identity. The 32-byte public key is the (device) identity key
/// and the leaf signature key; the MLS BasicCredential identity is that key,
/// or the device certificate the identity carries.
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

    /// Restore an identity from its 32-byte Ed25519 seed, carrying the
    /// device ``certificate`` if given (it must name this key).
    #[classmethod]
    #[pyo3(signature = (secret, certificate = None))]
    fn from_secret_bytes(
        _cls: &Bound<'_, PyType>,
        py: Python<'_>,
        secret: &[u8],
        certificate: Option<&[u8]>,
    ) -> PyResult<Self> {
        guard(py, || {
            let inner = Identity::from_secret(secret)?;
            match certificate {
                Some(cert) => inner.with_certificate(cert),
                None => Ok(inner),
            }
            .map(|inner| Self { inner })
        })
    }

    /// The same key carrying ``certificate`` (which must verify and name it).
    fn with_certificate(&self, py: Python<'_>, certificate: &[u8]) -> PyResult<Self> {
        guard(py, || {
            self.inner
                .with_certificate(certificate)
                .map(|inner| Self { inner })
        })
    }

    /// The device certificate this identity's leaves carry, or ``None``.
    #[getter]
    fn certificate<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner.certificate().map(|c| PyBytes::new(py, c))
    }

    /// The account key: the certificate's, or the public key when none.
    #[getter]
    fn account_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.account_key())
    }

    /// Sign a device certificate for ``device_key`` with this (account) key.
    fn issue_device_certificate<'py>(
        &self,
        py: Python<'py>,
        device_key: &[u8],
        name: &str,
        issued_at: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let cert = guard(py, || {
            certificate::issue(&self.inner, device_key, name, issued_at)
        })?;
        Ok(PyBytes::new(py, &cert))
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

/// A verified device certificate: ``account_key`` vouches for ``device_key``.
#[pyclass(module = "qpq_core._mls", name = "DeviceCertificate", frozen, get_all)]
pub struct PyDeviceCertificate {
    device_key: Py<PyBytes>,
    account_key: Py<PyBytes>,
    name: String,
    issued_at: u64,
}

#[pymethods]
impl PyDeviceCertificate {
    /// Decode and verify; raise ``InvalidIdentityError`` (encoding) or
    /// ``InvalidSignatureError`` (signature).
    #[classmethod]
    fn verify(_cls: &Bound<'_, PyType>, py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        if data.len() > 4096 {
            return guard(py, || {
                Err(crate::errors::Error::new(
                    crate::errors::ErrorKind::InvalidIdentity,
                    "not a device certificate",
                ))
            });
        }
        let cert = guard(py, || certificate::verify(data))?;
        Ok(Self {
            device_key: PyBytes::new(py, &cert.device_key).unbind(),
            account_key: PyBytes::new(py, &cert.account_key).unbind(),
            name: cert.name,
            issued_at: cert.issued_at,
        })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let fp = |b: &Py<PyBytes>| -> String {
            b.as_bytes(py)[..8]
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect()
        };
        format!(
            "DeviceCertificate(device_key={}…, account_key={}…, name={:?}, issued_at={})",
            fp(&self.device_key),
            fp(&self.account_key),
            self.name,
            self.issued_at
        )
    }
}
