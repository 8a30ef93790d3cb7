//! `DeliveryGroup` for Python: the delivery service's state of one group,
//! and the frozen results of its calls. Same rules as `MlsClient`: inputs
//! capped, crypto without the GIL, the mutex only taken while detached,
//! panics and errors raised as `qpq_core.errors` classes, `changes` never in
//! a `repr`.

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use super::convert::{
    Cap, bytes_tuple, capped, changes_to_py, detached, py_bytes, rows, suite_to_py,
};
use super::group_info::GroupInfoFacts;
use super::results::{SummaryPy, py_bool, short_hex};
use crate::client::Changed;
use crate::delivery::{self, DeliveryGroup, Verified};

/// One group's public state on the delivery service (RFC 9750 §5).
///
/// Every handshake message is verified against it before it is fanned out:
/// signed by a current member, for this epoch, allowed by qpq's policy, and
/// a commit only with the GroupInfo of the epoch it creates. Each call
/// returns the rows it changed (``changes``) for the host to persist in the
/// transaction of the fan-out; on any error the state is as before and an
/// ``MlsError`` subclass is raised. One object per group; calls are
/// serialized and run without the GIL.
#[pyclass(module = "qpq_core._mls", name = "DeliveryGroup", frozen)]
pub struct PyDeliveryGroup {
    group_id: Py<PyBytes>,
    // Only ever locked with the interpreter detached (`detached`).
    inner: Mutex<DeliveryGroup>,
}

impl PyDeliveryGroup {
    fn wrap(py: Python<'_>, inner: DeliveryGroup) -> Self {
        Self {
            group_id: py_bytes(py, inner.group_id()),
            inner: Mutex::new(inner),
        }
    }
}

#[pymethods]
impl PyDeliveryGroup {
    /// Register a group from its creator's ``MLSMessage(GroupInfo)``, which
    /// must carry the ratchet tree.
    ///
    /// Checks the GroupInfo signature against its signer's leaf, the tree
    /// (its hash against the group context), the ciphersuite and that every
    /// leaf's identity is its signature key.
    #[staticmethod]
    fn create(
        py: Python<'_>,
        group_info: &Bound<'_, PyAny>,
    ) -> PyResult<(PyDeliveryGroup, GroupRegistered)> {
        let group_info = capped(group_info, Cap::Message)?;
        let group_info = group_info.as_bytes();
        let (inner, registered) = detached(py, || DeliveryGroup::create(group_info))?;
        Ok((Self::wrap(py, inner), GroupRegistered::new(py, registered)?))
    }

    /// Restore from every (key, value) row stored for this group.
    #[staticmethod]
    fn load(py: Python<'_>, group_id: &[u8], stored: &Bound<'_, PyAny>) -> PyResult<Self> {
        let rows = rows(stored)?;
        let inner = detached(py, || DeliveryGroup::load(group_id, rows))?;
        Ok(Self::wrap(py, inner))
    }

    /// The group's id.
    #[getter]
    fn group_id(&self, py: Python<'_>) -> Py<PyBytes> {
        self.group_id.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("DeliveryGroup(group_id={})", short_hex(py, &self.group_id))
    }

    /// The group's current epoch.
    fn epoch(&self, py: Python<'_>) -> PyResult<u64> {
        detached(py, || self.inner.lock().epoch())
    }

    /// The group's ciphersuite, a ``qpq_core.Suite``: a commit may add only
    /// KeyPackages of it.
    fn suite(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let suite = detached(py, || self.inner.lock().ciphersuite())?;
        suite_to_py(py, suite)
    }

    /// Identity keys of the members, in leaf order.
    fn members(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        let members = detached(py, || self.inner.lock().members())?;
        bytes_tuple(py, &members)
    }

    /// The current epoch's ratchet tree, TLS-serialized: what
    /// ``MlsClient.rejoin`` takes beside the GroupInfo.
    fn ratchet_tree<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let tree = detached(py, || self.inner.lock().ratchet_tree())?;
        Ok(PyBytes::new(py, &tree))
    }

    /// Check a GroupInfo that ``uploader`` (a member's identity key) offers
    /// in place of the one the delivery service serves; the state is not
    /// changed. It must be of the current epoch, signed by the uploader's
    /// own leaf, for exactly the current group context and confirmation
    /// tag, with only the ``external_pub`` and ``ratchet_tree`` extensions.
    /// Returns its ``GroupInfoFacts``.
    ///
    /// Raises:
    ///     WrongEpochError: not the current epoch.
    ///     InvalidSignatureError: not signed by the uploader's leaf.
    ///     InvalidMlsMessageError, MalformedMlsMessageError, WrongGroupError:
    ///         anything else.
    fn check_group_info(
        &self,
        py: Python<'_>,
        group_info: &Bound<'_, PyAny>,
        uploader: &[u8],
    ) -> PyResult<GroupInfoFacts> {
        let group_info = capped(group_info, Cap::Message)?;
        let group_info = group_info.as_bytes();
        let facts = detached(py, || {
            self.inner.lock().check_group_info(group_info, uploader)
        })?;
        Ok(GroupInfoFacts::new(py, &facts))
    }

    /// Verify a handshake message (a PublicMessage) and apply it.
    ///
    /// A proposal (only a member's Remove of itself) is stored; a commit is
    /// checked, merged, and its ``group_info`` (required) must be the
    /// GroupInfo of the new epoch signed by the committer. Returns a
    /// ``ProposalVerified`` or ``CommitVerified``.
    #[pyo3(signature = (message, group_info = None))]
    fn verify(
        &self,
        py: Python<'_>,
        message: &Bound<'_, PyAny>,
        group_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let message = capped(message, Cap::Message)?;
        let group_info = group_info.map(|g| capped(g, Cap::Message)).transpose()?;
        let (message, group_info) = (
            message.as_bytes(),
            group_info.as_ref().map(|g| g.as_bytes()),
        );
        let verified = detached(py, || self.inner.lock().verify(message, group_info))?;
        verified_to_py(py, verified)
    }
}

/// A group the delivery service registered.
///
/// Attributes:
///     group_id: the group.
///     epoch: its epoch (0 for a new group).
///     members: identity keys of the members, in leaf order.
///     signer: identity key of the member who signed the GroupInfo.
///     changes: rows to persist.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct GroupRegistered {
    group_id: Py<PyBytes>,
    epoch: u64,
    members: Py<PyTuple>,
    signer: Py<PyBytes>,
    changes: Py<PyTuple>,
}

impl GroupRegistered {
    fn new(py: Python<'_>, (registered, changes): Changed<delivery::Registered>) -> PyResult<Self> {
        Ok(Self {
            group_id: py_bytes(py, &registered.group_id),
            epoch: registered.epoch,
            members: bytes_tuple(py, &registered.members)?,
            signer: py_bytes(py, &registered.signer),
            changes: changes_to_py(py, changes)?,
        })
    }
}

#[pymethods]
impl GroupRegistered {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "GroupRegistered(group_id={}, epoch={}, members={}, signer={})",
            short_hex(py, &self.group_id),
            self.epoch,
            self.members.bind(py).len(),
            short_hex(py, &self.signer),
        )
    }
}

/// A member's proposal (leaving), verified and stored for the commit that
/// will cover it.
///
/// Attributes:
///     group_id: the group.
///     epoch: the epoch it is for (the current one).
///     sender: identity key of the member who proposed.
///     changes: rows to persist.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct ProposalVerified {
    group_id: Py<PyBytes>,
    epoch: u64,
    sender: Py<PyBytes>,
    changes: Py<PyTuple>,
}

#[pymethods]
impl ProposalVerified {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "ProposalVerified(group_id={}, epoch={}, sender={})",
            short_hex(py, &self.group_id),
            self.epoch,
            short_hex(py, &self.sender),
        )
    }
}

/// A commit verified and merged: the group is at the new epoch.
///
/// Attributes:
///     group_id: the group.
///     epoch: the epoch the commit created.
///     committer: identity key of who committed.
///     external: an external commit (a member resynchronized).
///     added: identity keys that joined.
///     removed: identity keys that were removed.
///     left: those of ``removed`` whose removal was their own proposal.
///     members: the roster after the commit, in leaf order: the fan-out.
///     group_info_facts: the ``GroupInfoFacts`` of the GroupInfo that came
///         with the commit (members compare its digest with their own).
///     changes: rows to persist.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct CommitVerified {
    group_id: Py<PyBytes>,
    epoch: u64,
    committer: Py<PyBytes>,
    external: bool,
    added: Py<PyTuple>,
    removed: Py<PyTuple>,
    left: Py<PyTuple>,
    members: Py<PyTuple>,
    group_info_facts: Py<GroupInfoFacts>,
    changes: Py<PyTuple>,
}

#[pymethods]
impl CommitVerified {
    /// Counts only, as for `CommitApplied`.
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "CommitVerified(group_id={}, epoch={}, committer={}, external={}, added={}, \
             removed={}, left={}, members={})",
            short_hex(py, &self.group_id),
            self.epoch,
            short_hex(py, &self.committer),
            py_bool(self.external),
            self.added.bind(py).len(),
            self.removed.bind(py).len(),
            self.left.bind(py).len(),
            self.members.bind(py).len(),
        )
    }
}

fn verified_to_py(py: Python<'_>, (verified, changes): Changed<Verified>) -> PyResult<Py<PyAny>> {
    let changes = changes_to_py(py, changes)?;
    Ok(match verified {
        Verified::Proposal {
            group_id,
            epoch,
            sender,
        } => Py::new(
            py,
            ProposalVerified {
                group_id: py_bytes(py, &group_id),
                epoch,
                sender: py_bytes(py, &sender),
                changes,
            },
        )?
        .into_any(),
        Verified::Commit(commit) => {
            let summary = SummaryPy::new(py, &commit.summary)?;
            Py::new(
                py,
                CommitVerified {
                    group_id: py_bytes(py, &commit.group_id),
                    epoch: commit.epoch,
                    committer: summary.committer,
                    external: summary.external,
                    added: summary.added,
                    removed: summary.removed,
                    left: summary.left,
                    members: bytes_tuple(py, &commit.members)?,
                    group_info_facts: Py::new(py, GroupInfoFacts::new(py, &commit.group_info))?,
                    changes,
                },
            )?
            .into_any()
        }
    })
}
