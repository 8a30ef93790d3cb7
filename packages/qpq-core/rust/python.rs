//! The PyO3 glue: `qpq_core._mls`. Plain conversions only; every decision
//! lives in the engine modules.
//!
//! Rules kept here:
//! - every exported function runs inside [`guard`], so a Rust panic becomes
//!   `qpq_core.errors.InternalMlsError` and never PyO3's `PanicException`
//!   (a `BaseException`);
//! - exceptions are the Python classes of `qpq_core.errors`, imported once;
//! - crypto runs with the interpreter detached (`py.detach`), and the
//!   client's mutex is only ever taken while detached, so no thread holds the
//!   GIL while it waits for the mutex.

use std::panic::{AssertUnwindSafe, catch_unwind};

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyModule, PyTuple};

use crate::client::{Changed, Client, CommitApplied, CommitOut, Processed};
use crate::errors::{Error, ErrorKind};
use crate::identity::{self, Identity};
use crate::keypackage;
use crate::storage::Change;

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn to_pyerr(py: Python<'_>, error: Error) -> PyErr {
    let raise = || -> PyResult<PyErr> {
        let module = ERRORS_MODULE
            .get_or_try_init(py, || py.import("qpq_core.errors").map(Bound::unbind))?
            .bind(py);
        let class = module.getattr(error.kind.class_name())?;
        Ok(PyErr::from_value(class.call1((error.message.as_str(),))?))
    };
    raise().unwrap_or_else(|e| e)
}

/// Run `f`, turning an engine error into its Python class and a panic into
/// `InternalMlsError`.
fn guard<T>(py: Python<'_>, f: impl FnOnce() -> Result<T, Error>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(to_pyerr(py, error)),
        Err(_) => Err(to_pyerr(
            py,
            Error::new(ErrorKind::Internal, "internal panic in the MLS binding"),
        )),
    }
}

/// `guard` with the interpreter detached, for anything that does crypto.
fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, Error> + Send) -> PyResult<T> {
    let result = py.detach(|| match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(Error::new(
            ErrorKind::Internal,
            "internal panic in the MLS binding",
        )),
    });
    result.map_err(|e| to_pyerr(py, e))
}

fn changes_to_py<'py>(py: Python<'py>, changes: Vec<Change>) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        changes
            .into_iter()
            .map(|(k, v)| (PyBytes::new(py, &k), v.map(|v| PyBytes::new(py, &v)))),
    )
}

fn bytes_list<'py>(py: Python<'py>, items: Vec<Vec<u8>>) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, items.iter().map(|i| PyBytes::new(py, i)))
}

fn rows_from_py(rows: Vec<(Bound<'_, PyBytes>, Bound<'_, PyBytes>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    rows.into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// An Ed25519 identity. The 32-byte public key is the identity key, the MLS
/// BasicCredential identity and the leaf signature key.
#[pyclass(module = "qpq_core._mls", name = "Identity", frozen)]
pub struct PyIdentity {
    inner: Identity,
}

#[pymethods]
impl PyIdentity {
    /// A fresh identity from the operating system's randomness.
    #[classmethod]
    fn generate(_cls: &Bound<'_, pyo3::types::PyType>, py: Python<'_>) -> PyResult<Self> {
        guard(py, || Identity::generate().map(|inner| Self { inner }))
    }

    /// Restore an identity from its 32-byte Ed25519 seed.
    #[classmethod]
    fn from_secret_bytes(
        _cls: &Bound<'_, pyo3::types::PyType>,
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

    fn __repr__(&self) -> String {
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
fn verify_signature(
    py: Python<'_>,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> PyResult<()> {
    guard(py, || {
        identity::verify_signature(public_key, message, signature)
    })
}

type KeyPackageTuple = (Vec<u8>, u16, u64, Vec<u8>, bool);
type PeekTuple = (&'static str, Option<Vec<u8>>, Option<u64>);

/// Validate an MLSMessage-wrapped KeyPackage.
/// Returns `(identity_key, ciphersuite, not_after, fingerprint, last_resort)`.
#[pyfunction]
#[pyo3(signature = (data, now, max_lifetime_seconds))]
fn validate_key_package(
    py: Python<'_>,
    data: &[u8],
    now: Option<u64>,
    max_lifetime_seconds: u64,
) -> PyResult<KeyPackageTuple> {
    let info = detached(py, || {
        keypackage::validate_key_package(data, now, max_lifetime_seconds)
    })?;
    Ok((
        info.identity_key,
        info.ciphersuite,
        info.not_after,
        info.fingerprint,
        info.last_resort,
    ))
}

/// Read the cleartext framing: `(kind_name, group_id | None, epoch | None)`.
#[pyfunction]
fn peek_message(py: Python<'_>, data: &[u8]) -> PyResult<PeekTuple> {
    let info = guard(py, || crate::framing::peek_message(data))?;
    Ok((info.kind.name(), info.group_id, info.epoch))
}

/// The result of `MlsClient.process`, flattened; `qpq_core` turns it into
/// one of its typed dataclasses.
#[pyclass(module = "qpq_core._mls", name = "Processed", frozen, get_all)]
pub struct PyProcessed {
    kind: &'static str,
    group_id: Py<PyBytes>,
    epoch: u64,
    /// Empty unless `kind` is "application" or "proposal".
    sender: Py<PyBytes>,
    /// Empty unless `kind` is "application".
    plaintext: Py<PyBytes>,
    added: Py<PyTuple>,
    removed: Py<PyTuple>,
    self_removed: bool,
    changes: Py<PyTuple>,
}

type CommitTuple<'py> = (
    Bound<'py, PyBytes>,
    Option<Bound<'py, PyBytes>>,
    u64,
    Bound<'py, PyTuple>,
);
type AppliedTuple<'py> = (
    u64,
    Bound<'py, PyTuple>,
    Bound<'py, PyTuple>,
    bool,
    Bound<'py, PyTuple>,
);

fn commit_to_py(py: Python<'_>, (out, changes): Changed<CommitOut>) -> PyResult<CommitTuple<'_>> {
    Ok((
        PyBytes::new(py, &out.commit),
        out.welcome.map(|w| PyBytes::new(py, &w)),
        out.epoch,
        changes_to_py(py, changes)?,
    ))
}

fn applied_to_py(
    py: Python<'_>,
    (a, changes): Changed<CommitApplied>,
) -> PyResult<AppliedTuple<'_>> {
    Ok((
        a.epoch,
        bytes_list(py, a.added)?,
        bytes_list(py, a.removed)?,
        a.self_removed,
        changes_to_py(py, changes)?,
    ))
}

/// One user's MLS state. Operations are serialized by one mutex.
#[pyclass(module = "qpq_core._mls", name = "MlsClient", frozen)]
pub struct PyMlsClient {
    inner: Mutex<Client>,
}

#[pymethods]
impl PyMlsClient {
    #[new]
    fn new(
        identity: &Bound<'_, PyIdentity>,
        stored: Vec<(Bound<'_, PyBytes>, Bound<'_, PyBytes>)>,
    ) -> Self {
        let identity = identity.get().inner.clone();
        Self {
            inner: Mutex::new(Client::new(identity, rows_from_py(stored))),
        }
    }

    fn reload(
        &self,
        py: Python<'_>,
        stored: Vec<(Bound<'_, PyBytes>, Bound<'_, PyBytes>)>,
    ) -> PyResult<()> {
        let rows = rows_from_py(stored);
        detached(py, || {
            self.inner.lock().reload(rows);
            Ok(())
        })
    }

    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let pk = detached(py, || Ok(self.inner.lock().identity().public_key()))?;
        Ok(PyBytes::new(py, &pk))
    }

    fn create_key_packages<'py>(
        &self,
        py: Python<'py>,
        count: usize,
        lifetime_seconds: u64,
        last_resort: bool,
    ) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyTuple>)> {
        let (kps, changes) = detached(py, || {
            self.inner
                .lock()
                .create_key_packages(count, lifetime_seconds, last_resort)
        })?;
        Ok((bytes_list(py, kps)?, changes_to_py(py, changes)?))
    }

    #[pyo3(signature = (group_id=None))]
    fn create_group<'py>(
        &self,
        py: Python<'py>,
        group_id: Option<Vec<u8>>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyTuple>)> {
        let (gid, changes) = detached(py, || self.inner.lock().create_group(group_id))?;
        Ok((PyBytes::new(py, &gid), changes_to_py(py, changes)?))
    }

    fn add_members<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
        key_packages: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<CommitTuple<'py>> {
        let kps: Vec<Vec<u8>> = key_packages.iter().map(|b| b.as_bytes().to_vec()).collect();
        let out = detached(py, || self.inner.lock().add_members(group_id, &kps))?;
        commit_to_py(py, out)
    }

    fn remove_members<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
        identity_keys: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<CommitTuple<'py>> {
        let ids: Vec<Vec<u8>> = identity_keys
            .iter()
            .map(|b| b.as_bytes().to_vec())
            .collect();
        let out = detached(py, || self.inner.lock().remove_members(group_id, &ids))?;
        commit_to_py(py, out)
    }

    fn self_update<'py>(&self, py: Python<'py>, group_id: &[u8]) -> PyResult<CommitTuple<'py>> {
        let out = detached(py, || self.inner.lock().self_update(group_id))?;
        commit_to_py(py, out)
    }

    fn commit_pending_proposals<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
    ) -> PyResult<CommitTuple<'py>> {
        let out = detached(py, || self.inner.lock().commit_pending_proposals(group_id))?;
        commit_to_py(py, out)
    }

    fn leave<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyTuple>)> {
        let (proposal, changes) = detached(py, || self.inner.lock().leave(group_id))?;
        Ok((PyBytes::new(py, &proposal), changes_to_py(py, changes)?))
    }

    fn merge_pending_commit<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
    ) -> PyResult<AppliedTuple<'py>> {
        let out = detached(py, || self.inner.lock().merge_pending_commit(group_id))?;
        applied_to_py(py, out)
    }

    fn clear_pending_commit<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (_, changes) = detached(py, || self.inner.lock().clear_pending_commit(group_id))?;
        changes_to_py(py, changes)
    }

    #[allow(clippy::type_complexity)]
    fn join_from_welcome<'py>(
        &self,
        py: Python<'py>,
        welcome: &[u8],
    ) -> PyResult<(
        Bound<'py, PyBytes>,
        u64,
        Bound<'py, PyTuple>,
        Bound<'py, PyTuple>,
    )> {
        let (joined, changes) = detached(py, || self.inner.lock().join_from_welcome(welcome))?;
        Ok((
            PyBytes::new(py, &joined.group_id),
            joined.epoch,
            bytes_list(py, joined.members)?,
            changes_to_py(py, changes)?,
        ))
    }

    fn encrypt<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
        plaintext: &[u8],
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyTuple>)> {
        let (message, changes) = detached(py, || self.inner.lock().encrypt(group_id, plaintext))?;
        Ok((PyBytes::new(py, &message), changes_to_py(py, changes)?))
    }

    fn process(&self, py: Python<'_>, message: &[u8]) -> PyResult<PyProcessed> {
        let (processed, changes) = detached(py, || self.inner.lock().process(message))?;
        let changes = changes_to_py(py, changes)?.unbind();
        let empty = || PyTuple::empty(py).unbind();
        let bytes = |b: &[u8]| PyBytes::new(py, b).unbind();
        Ok(match processed {
            Processed::Application {
                group_id,
                epoch,
                sender,
                plaintext,
            } => PyProcessed {
                kind: "application",
                group_id: bytes(&group_id),
                epoch,
                sender: bytes(&sender),
                plaintext: bytes(&plaintext),
                added: empty(),
                removed: empty(),
                self_removed: false,
                changes,
            },
            Processed::Proposal {
                group_id,
                epoch,
                sender,
            } => PyProcessed {
                kind: "proposal",
                group_id: bytes(&group_id),
                epoch,
                sender: bytes(&sender),
                plaintext: bytes(b""),
                added: empty(),
                removed: empty(),
                self_removed: false,
                changes,
            },
            Processed::Commit(a) => PyProcessed {
                kind: "commit",
                group_id: bytes(&a.group_id),
                epoch: a.epoch,
                sender: bytes(b""),
                plaintext: bytes(b""),
                added: bytes_list(py, a.added)?.unbind(),
                removed: bytes_list(py, a.removed)?.unbind(),
                self_removed: a.self_removed,
                changes,
            },
            Processed::Own { group_id } => PyProcessed {
                kind: "own",
                group_id: bytes(&group_id),
                epoch: 0,
                sender: bytes(b""),
                plaintext: bytes(b""),
                added: empty(),
                removed: empty(),
                self_removed: false,
                changes,
            },
        })
    }

    fn group_ids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let ids = detached(py, || Ok(self.inner.lock().group_ids()))?;
        bytes_list(py, ids)
    }

    fn members<'py>(&self, py: Python<'py>, group_id: &[u8]) -> PyResult<Bound<'py, PyTuple>> {
        let ids = detached(py, || self.inner.lock().members(group_id))?;
        bytes_list(py, ids)
    }

    fn epoch(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<u64> {
        detached(py, || self.inner.lock().epoch(group_id))
    }

    fn has_pending_proposals(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<bool> {
        detached(py, || self.inner.lock().has_pending_proposals(group_id))
    }

    fn has_pending_commit(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<bool> {
        detached(py, || self.inner.lock().has_pending_commit(group_id))
    }

    fn export_secret<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
        label: &str,
        context: &[u8],
        length: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let label = label.to_owned();
        let secret = detached(py, || {
            self.inner
                .lock()
                .export_secret(group_id, &label, context, length)
        })?;
        Ok(PyBytes::new(py, &secret))
    }
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
        "MAX_KEY_PACKAGE_LIFETIME_SECONDS",
        keypackage::MAX_LIFETIME_SECONDS,
    )?;
    m.add("MAX_PAST_EPOCHS", crate::client::MAX_PAST_EPOCHS)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyIdentity>()?;
    m.add_class::<PyMlsClient>()?;
    m.add_class::<PyProcessed>()?;
    m.add_function(wrap_pyfunction!(verify_signature, m)?)?;
    m.add_function(wrap_pyfunction!(validate_key_package, m)?)?;
    m.add_function(wrap_pyfunction!(peek_message, m)?)?;
    Ok(())
}
