//! `MlsClient`: one user's MLS state, exposed to Python as it is (no Python
//! wrapper). Inputs are size-capped before any decoder runs; every call
//! returns one of the frozen result classes of `results`.

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use super::convert::{Cap, byte_strings, bytes_tuple, capped, detached, rows, suite_to_py};
use super::group_info::GroupInfoFacts;
use super::identity::PyIdentity;
use super::results::{
    Cleared, CommitApplied, CommitBundle, Encrypted, GroupCreated, Joined, KeyPackagesCreated,
    ProposalCreated, processed,
};
use crate::client::Client;
use crate::keypackage::DEFAULT_LIFETIME_SECONDS;
use crate::suite;

/// `suite=` takes a `qpq_core.Suite` (or its code point); this one by default.
const DEFAULT_SUITE: u16 = 0x0001;

/// One user's MLS groups, backed by rows the host persists.
///
/// Every mutating call returns a frozen result whose ``changes`` the host
/// persists in one transaction. On any error the in-memory state is rolled
/// back, a :class:`~qpq_core.errors.MlsError` (or, for KeyPackages and
/// ciphersuites, qpq_proto's ``InvalidKeyPackageError`` or
/// ``UnsupportedCiphersuiteError``) is raised, and nothing needs persisting.
/// Calls on one client are serialized; crypto runs without the GIL.
///
/// Args:
///     identity: this user's identity (its key signs everything).
///     stored: every (key, value) row persisted so far, i.e. all change sets
///         applied in order.
#[pyclass(module = "qpq_core._mls", name = "MlsClient", frozen)]
pub struct PyMlsClient {
    identity: Py<PyIdentity>,
    // Only ever locked with the interpreter detached (`detached`), so no
    // thread holds the GIL while it waits for the mutex.
    inner: Mutex<Client>,
}

#[pymethods]
impl PyMlsClient {
    #[new]
    #[pyo3(signature = (identity, stored = None), text_signature = "(identity, stored=())")]
    fn new(identity: Bound<'_, PyIdentity>, stored: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let rows = match stored {
            Some(stored) => rows(stored)?,
            None => Vec::new(),
        };
        let client = Client::new(identity.get().inner.clone(), rows);
        Ok(Self {
            identity: identity.unbind(),
            inner: Mutex::new(client),
        })
    }

    /// This user's identity.
    #[getter]
    fn identity(&self, py: Python<'_>) -> Py<PyIdentity> {
        self.identity.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!("MlsClient({})", self.identity.get().__repr__())
    }

    /// Drop every cache and repopulate from the persisted rows.
    ///
    /// The same path as startup; call it when persisting a change set failed.
    fn reload(&self, py: Python<'_>, stored: &Bound<'_, PyAny>) -> PyResult<()> {
        let rows = rows(stored)?;
        detached(py, || {
            self.inner.lock().reload(rows);
            Ok(())
        })
    }

    /// Create ``count`` KeyPackages of ``suite`` (the private keys go into
    /// ``changes``). A group accepts only KeyPackages of its own suite.
    #[pyo3(signature = (
        count, *, lifetime_seconds = DEFAULT_LIFETIME_SECONDS, last_resort = false,
        suite = DEFAULT_SUITE
    ))]
    fn create_key_packages(
        &self,
        py: Python<'_>,
        count: usize,
        lifetime_seconds: u64,
        last_resort: bool,
        suite: u16,
    ) -> PyResult<KeyPackagesCreated> {
        let created = detached(py, || {
            let suite = suite::from_id(suite)?;
            self.inner
                .lock()
                .create_key_packages(count, lifetime_seconds, last_resort, suite)
        })?;
        KeyPackagesCreated::new(py, created)
    }

    /// Create a group of ``suite`` (a random 16-byte id unless given) at
    /// epoch 0. A group's suite never changes.
    ///
    /// The result's ``group_info`` is what the delivery service registers
    /// the group from.
    #[pyo3(signature = (group_id = None, *, suite = DEFAULT_SUITE))]
    fn create_group(
        &self,
        py: Python<'_>,
        group_id: Option<Vec<u8>>,
        suite: u16,
    ) -> PyResult<GroupCreated> {
        let created = detached(py, || {
            let suite = suite::from_id(suite)?;
            self.inner.lock().create_group(group_id, suite)
        })?;
        GroupCreated::new(py, created)
    }

    /// Commit adding the owners of ``key_packages``; leaves a pending commit.
    fn add_members(
        &self,
        py: Python<'_>,
        group_id: &[u8],
        key_packages: &Bound<'_, PyAny>,
    ) -> PyResult<CommitBundle> {
        let kps = byte_strings(key_packages, Some(Cap::KeyPackage))?;
        let out = detached(py, || self.inner.lock().add_members(group_id, &kps))?;
        CommitBundle::new(py, out)
    }

    /// Commit removing members by identity key; leaves a pending commit.
    fn remove_members(
        &self,
        py: Python<'_>,
        group_id: &[u8],
        identity_keys: &Bound<'_, PyAny>,
    ) -> PyResult<CommitBundle> {
        let ids = byte_strings(identity_keys, None)?;
        let out = detached(py, || self.inner.lock().remove_members(group_id, &ids))?;
        CommitBundle::new(py, out)
    }

    /// Commit a fresh leaf key (post-compromise security).
    fn self_update(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<CommitBundle> {
        let out = detached(py, || self.inner.lock().self_update(group_id))?;
        CommitBundle::new(py, out)
    }

    /// Commit the stored proposals (e.g. a member's leave).
    fn commit_pending_proposals(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<CommitBundle> {
        let out = detached(py, || self.inner.lock().commit_pending_proposals(group_id))?;
        CommitBundle::new(py, out)
    }

    /// Propose our own removal; another member commits it.
    fn leave(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<ProposalCreated> {
        let out = detached(py, || self.inner.lock().leave(group_id))?;
        ProposalCreated::new(py, group_id, out)
    }

    /// Apply our pending commit once the delivery service accepted it.
    fn merge_pending_commit(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<CommitApplied> {
        let out = detached(py, || self.inner.lock().merge_pending_commit(group_id))?;
        CommitApplied::new(py, out)
    }

    /// Drop our pending commit after the delivery service rejected it.
    fn clear_pending_commit(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<Cleared> {
        let out = detached(py, || self.inner.lock().clear_pending_commit(group_id))?;
        Cleared::new(py, out)
    }

    /// The current epoch's GroupInfo (with the ratchet tree), signed by us.
    ///
    /// E.g. to register a group whose creation never reached the delivery
    /// service.
    fn export_group_info<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let group_info = detached(py, || self.inner.lock().export_group_info(group_id))?;
        Ok(PyBytes::new(py, &group_info))
    }

    /// The facts of the group's current epoch as our own state derives them
    /// (a ``GroupInfoFacts``): the GroupInfo the delivery service serves for
    /// this epoch must have the same ``digest``.
    fn group_info_facts(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<GroupInfoFacts> {
        let facts = detached(py, || self.inner.lock().group_info_facts(group_id))?;
        Ok(GroupInfoFacts::new(py, &facts))
    }

    /// Resynchronize a group we fell behind in, by external commit
    /// (RFC 9420 §12.4.3.2).
    ///
    /// ``group_info`` and ``ratchet_tree`` are what the delivery service
    /// serves (the tree may be empty when the GroupInfo carries it). In one
    /// change set our old state of the group is deleted and a new one built
    /// whose commit (replacing our old leaf) is pending: merge or clear it
    /// as any commit once the delivery service answered. Until then the
    /// group neither sends nor processes (``CommitConflictError``).
    fn rejoin(
        &self,
        py: Python<'_>,
        group_id: &[u8],
        group_info: &Bound<'_, PyAny>,
        ratchet_tree: &Bound<'_, PyAny>,
    ) -> PyResult<CommitBundle> {
        let group_info = capped(group_info, Cap::Message)?;
        let ratchet_tree = capped(ratchet_tree, Cap::Message)?;
        let (group_info, ratchet_tree) = (group_info.as_bytes(), ratchet_tree.as_bytes());
        let out = detached(py, || {
            self.inner.lock().rejoin(group_id, group_info, ratchet_tree)
        })?;
        CommitBundle::new(py, out)
    }

    /// Join from a Welcome (the ratchet tree travels inside it).
    ///
    /// Every member's credential identity must equal its signature key.
    fn join_from_welcome(&self, py: Python<'_>, welcome: &Bound<'_, PyAny>) -> PyResult<Joined> {
        let welcome = capped(welcome, Cap::Message)?;
        let welcome = welcome.as_bytes();
        let out = detached(py, || self.inner.lock().join_from_welcome(welcome))?;
        Joined::new(py, out)
    }

    /// Encrypt an application message for the group.
    fn encrypt(&self, py: Python<'_>, group_id: &[u8], plaintext: &[u8]) -> PyResult<Encrypted> {
        let out = detached(py, || self.inner.lock().encrypt(group_id, plaintext))?;
        Encrypted::new(py, group_id, out)
    }

    /// Process any incoming group message.
    ///
    /// A commit is validated and merged in this one call. Returns an
    /// ``ApplicationMessage``, ``CommitApplied``, ``ProposalStored`` or
    /// ``OwnMessage``.
    ///
    /// Raises:
    ///     WrongGroupError, WrongEpochError, ReplayedMessageError,
    ///     DecryptionError, MalformedMlsMessageError, ...: state unchanged.
    fn process(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let message = capped(message, Cap::Message)?;
        let message = message.as_bytes();
        let out = detached(py, || self.inner.lock().process(message))?;
        processed(py, out)
    }

    /// Ids of the groups held in this state.
    fn group_ids(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        let ids = detached(py, || Ok(self.inner.lock().group_ids()))?;
        bytes_tuple(py, &ids)
    }

    /// Identity keys of the group's members, in leaf order.
    fn members(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<Py<PyTuple>> {
        let ids = detached(py, || self.inner.lock().members(group_id))?;
        bytes_tuple(py, &ids)
    }

    /// The credential identity of each member, in the leaf order of
    /// ``members``: a 32-byte key (legacy) or a device certificate.
    fn member_credentials(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<Py<PyTuple>> {
        let ids = detached(py, || self.inner.lock().member_credentials(group_id))?;
        bytes_tuple(py, &ids)
    }

    /// Account keys of the group's members, in the leaf order of
    /// ``members`` (a legacy leaf is its own account).
    fn member_accounts(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<Py<PyTuple>> {
        let ids = detached(py, || self.inner.lock().member_accounts(group_id))?;
        bytes_tuple(py, &ids)
    }

    /// The group's current epoch.
    fn epoch(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<u64> {
        detached(py, || self.inner.lock().epoch(group_id))
    }

    /// The group's ciphersuite, a ``qpq_core.Suite``.
    fn group_suite(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<Py<PyAny>> {
        let suite = detached(py, || self.inner.lock().group_suite(group_id))?;
        suite_to_py(py, suite)
    }

    /// True when proposals wait to be committed (sending is blocked).
    fn has_pending_proposals(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<bool> {
        detached(py, || self.inner.lock().has_pending_proposals(group_id))
    }

    /// True when a commit of ours waits for merge or clear.
    fn has_pending_commit(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<bool> {
        detached(py, || self.inner.lock().has_pending_commit(group_id))
    }

    /// The MLS exporter (RFC 9420 §8.5); equal across the members of an epoch.
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
