//! Conversions at the Python boundary: engine errors and panics into the
//! classes of `qpq_core.errors`, input size caps, bytes and change sets.

use std::panic::{AssertUnwindSafe, catch_unwind};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyModule, PyTuple};

use openmls::prelude::Ciphersuite;

use crate::errors::{Error, ErrorKind};
use crate::storage::Change;

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static LIMITS: PyOnceLock<Limits> = PyOnceLock::new();
/// `qpq_core.Suite`, looked up once: the enum is Python's (an IntEnum of
/// the code points), so a suite we return is one of its members.
static SUITES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

const PANIC_MESSAGE: &str = "internal panic in the MLS binding";

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
pub fn guard<T>(py: Python<'_>, f: impl FnOnce() -> Result<T, Error>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(to_pyerr(py, error)),
        Err(_) => Err(to_pyerr(py, Error::new(ErrorKind::Internal, PANIC_MESSAGE))),
    }
}

/// The `qpq_core.Suite` member of a ciphersuite.
pub fn suite_to_py(py: Python<'_>, suite: Ciphersuite) -> PyResult<Py<PyAny>> {
    let suites = SUITES.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("qpq_core._suites")?.getattr("Suite")?.unbind())
    })?;
    Ok(suites.bind(py).call1((u16::from(suite),))?.unbind())
}

/// `guard` with the interpreter detached, for anything that does crypto or
/// takes a client's mutex.
pub fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> PyResult<T> {
    let result = py.detach(|| match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(Error::new(ErrorKind::Internal, PANIC_MESSAGE)),
    });
    result.map_err(|e| to_pyerr(py, e))
}

/// The input caps, read once from `qpq_core._limits` (which takes them from
/// `qpq_proto.DEFAULT_LIMITS`).
struct Limits {
    key_package: usize,
    message: usize,
}

/// Which cap applies to an input.
#[derive(Clone, Copy)]
pub enum Cap {
    KeyPackage,
    Message,
}

fn limit(py: Python<'_>, cap: Cap) -> PyResult<usize> {
    let limits = LIMITS.get_or_try_init(py, || -> PyResult<Limits> {
        let module = py.import("qpq_core._limits")?;
        Ok(Limits {
            key_package: module.getattr("MAX_KEY_PACKAGE_BYTES")?.extract()?,
            message: module.getattr("MAX_MESSAGE_BYTES")?.extract()?,
        })
    })?;
    Ok(match cap {
        Cap::KeyPackage => limits.key_package,
        Cap::Message => limits.message,
    })
}

/// `bytes(obj)`: `bytes` as they are, anything else (bytearray, memoryview)
/// through Python's `bytes` constructor.
pub fn to_bytes<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    match obj.cast::<PyBytes>() {
        Ok(bytes) => Ok(bytes.clone()),
        Err(_) => Ok(obj
            .py()
            .get_type::<PyBytes>()
            .call1((obj,))?
            .cast_into::<PyBytes>()?),
    }
}

/// Refuse input over its cap before any decoder sees it: the TLS decoder
/// allocates a vector's declared length before reading it (docs/mls.md,
/// "Input size caps").
pub fn capped<'py>(obj: &Bound<'py, PyAny>, cap: Cap) -> PyResult<Bound<'py, PyBytes>> {
    let py = obj.py();
    let (len, max) = (obj.len()?, limit(py, cap)?);
    if len > max {
        let message = format!("MLS message of {len} bytes exceeds {max}");
        return Err(to_pyerr(
            py,
            Error::new(ErrorKind::MalformedMessage, message),
        ));
    }
    to_bytes(obj)
}

/// A change set as `tuple[tuple[bytes, bytes | None], ...]`.
pub fn changes_to_py(py: Python<'_>, changes: Vec<Change>) -> PyResult<Py<PyTuple>> {
    let rows = changes
        .into_iter()
        .map(|(k, v)| (PyBytes::new(py, &k), v.map(|v| PyBytes::new(py, &v))));
    Ok(PyTuple::new(py, rows)?.unbind())
}

pub fn bytes_tuple(py: Python<'_>, items: &[Vec<u8>]) -> PyResult<Py<PyTuple>> {
    Ok(PyTuple::new(py, items.iter().map(|i| PyBytes::new(py, i)))?.unbind())
}

pub fn py_bytes(py: Python<'_>, bytes: &[u8]) -> Py<PyBytes> {
    PyBytes::new(py, bytes).unbind()
}

/// `[bytes(item) for item in items]`, copied out of Python.
pub fn byte_strings(items: &Bound<'_, PyAny>, cap: Option<Cap>) -> PyResult<Vec<Vec<u8>>> {
    items
        .try_iter()?
        .map(|item| {
            let item = item?;
            let bytes = match cap {
                Some(cap) => capped(&item, cap)?,
                None => to_bytes(&item)?,
            };
            Ok(bytes.as_bytes().to_vec())
        })
        .collect()
}

/// `[(bytes(key), bytes(value)) for key, value in stored]`: persisted rows.
pub fn rows(stored: &Bound<'_, PyAny>) -> PyResult<Vec<(Vec<u8>, Vec<u8>)>> {
    stored
        .try_iter()?
        .map(|row| {
            let (key, value) = pair(&row?)?;
            Ok((
                to_bytes(&key)?.as_bytes().to_vec(),
                to_bytes(&value)?.as_bytes().to_vec(),
            ))
        })
        .collect()
}

/// Unpack a row as Python's `key, value = row` does.
fn pair<'py>(row: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    if let Ok(tuple) = row.cast::<PyTuple>()
        && tuple.len() == 2
    {
        return Ok((tuple.get_item(0)?, tuple.get_item(1)?));
    }
    let items = row.try_iter()?.collect::<PyResult<Vec<_>>>()?;
    match <[Bound<'py, PyAny>; 2]>::try_from(items) {
        Ok([key, value]) => Ok((key, value)),
        Err(items) => Err(PyValueError::new_err(format!(
            "a stored row is a (key, value) pair, got {} items",
            items.len()
        ))),
    }
}
