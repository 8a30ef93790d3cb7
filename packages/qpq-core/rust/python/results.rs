//! The frozen results of `MlsClient` operations (and of KeyPackage
//! validation), built here so that Python receives typed objects, not tuples.
//!
//! Attribute names and types are the public API (`qpq_core._mls.pyi`). Every
//! mutating operation's result carries `changes`: the storage rows it changed,
//! to persist in one transaction (docs/mls.md, "What the host persists").
//! Fields that hold secrets or ciphertext (`changes`, `plaintext`, `commit`,
//! `welcome`, `group_info`, `packages`, `message`, `proposal`) never appear
//! in a `repr`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyTuple};

use super::convert::{bytes_tuple, changes_to_py, py_bytes};
use super::group_info::GroupInfoFacts;
use crate::client::{self, Changed, CommitOut, Processed};
use crate::framing;
use crate::keypackage;
use crate::policy::CommitSummary;

/// `qpq_core.MlsMessageKind`, looked up once: the enum is Python's, and its
/// members are found by name, so `info.kind is MlsMessageKind.COMMIT` holds.
static MESSAGE_KINDS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The first bytes in hex, enough to tell ids and keys apart in a log.
pub(super) fn short_hex(py: Python<'_>, bytes: &Py<PyBytes>) -> String {
    let bytes = bytes.bind(py).as_bytes();
    let hex: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 8 { hex + "…" } else { hex }
}

pub(super) fn py_bool(value: bool) -> &'static str {
    if value { "True" } else { "False" }
}

/// New KeyPackages (MLSMessage-wrapped), ready to upload; their private
/// keys are in `changes`.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct KeyPackagesCreated {
    packages: Py<PyTuple>,
    changes: Py<PyTuple>,
}

impl KeyPackagesCreated {
    pub fn new(py: Python<'_>, (packages, changes): Changed<Vec<Vec<u8>>>) -> PyResult<Self> {
        Ok(Self {
            packages: bytes_tuple(py, &packages)?,
            changes: changes_to_py(py, changes)?,
        })
    }
}

#[pymethods]
impl KeyPackagesCreated {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!("KeyPackagesCreated(count={})", self.packages.bind(py).len())
    }
}

/// A new group with this client as its only member, at epoch 0.
///
/// Attributes:
///     group_id: the group.
///     group_info: MLSMessage(GroupInfo) of epoch 0 with the ratchet tree,
///         signed by us: what the delivery service registers the group from.
///     changes: rows to persist.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct GroupCreated {
    group_id: Py<PyBytes>,
    group_info: Py<PyBytes>,
    changes: Py<PyTuple>,
}

impl GroupCreated {
    pub fn new(
        py: Python<'_>,
        (created, changes): Changed<client::GroupCreated>,
    ) -> PyResult<Self> {
        Ok(Self {
            group_id: py_bytes(py, &created.group_id),
            group_info: py_bytes(py, &created.group_info),
            changes: changes_to_py(py, changes)?,
        })
    }
}

#[pymethods]
impl GroupCreated {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!("GroupCreated(group_id={})", short_hex(py, &self.group_id))
    }
}

/// A commit of ours, pending until the delivery service accepts it.
///
/// Attributes:
///     group_id: the group.
///     commit: the commit to publish to the group (a PublicMessage).
///     welcome: for added members, sent only after the merge; else ``None``.
///     group_info: MLSMessage(GroupInfo) of the epoch the commit creates,
///         signed by us, with the ratchet tree; the delivery service checks
///         it and serves it to members who fall behind.
///     epoch: the epoch the commit is for (the current one).
///     changes: rows to persist, including the pending commit.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct CommitBundle {
    group_id: Py<PyBytes>,
    commit: Py<PyBytes>,
    welcome: Option<Py<PyBytes>>,
    group_info: Py<PyBytes>,
    epoch: u64,
    changes: Py<PyTuple>,
}

impl CommitBundle {
    pub fn new(py: Python<'_>, (out, changes): Changed<CommitOut>) -> PyResult<Self> {
        Ok(Self {
            group_id: py_bytes(py, &out.group_id),
            commit: py_bytes(py, &out.commit),
            welcome: out.welcome.map(|w| py_bytes(py, &w)),
            group_info: py_bytes(py, &out.group_info),
            epoch: out.epoch,
            changes: changes_to_py(py, changes)?,
        })
    }
}

#[pymethods]
impl CommitBundle {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "CommitBundle(group_id={}, epoch={}, has_welcome={})",
            short_hex(py, &self.group_id),
            self.epoch,
            py_bool(self.welcome.is_some()),
        )
    }
}

/// A proposal of ours (leaving) that another member must commit.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct ProposalCreated {
    group_id: Py<PyBytes>,
    proposal: Py<PyBytes>,
    changes: Py<PyTuple>,
}

impl ProposalCreated {
    pub fn new(
        py: Python<'_>,
        group_id: &[u8],
        (proposal, changes): Changed<Vec<u8>>,
    ) -> PyResult<Self> {
        Ok(Self {
            group_id: py_bytes(py, group_id),
            proposal: py_bytes(py, &proposal),
            changes: changes_to_py(py, changes)?,
        })
    }
}

#[pymethods]
impl ProposalCreated {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "ProposalCreated(group_id={})",
            short_hex(py, &self.group_id)
        )
    }
}

/// The roster change of a commit, in Python objects.
pub(super) struct SummaryPy {
    pub committer: Py<PyBytes>,
    pub external: bool,
    pub added: Py<PyTuple>,
    pub removed: Py<PyTuple>,
    pub left: Py<PyTuple>,
}

impl SummaryPy {
    pub fn new(py: Python<'_>, summary: &CommitSummary) -> PyResult<Self> {
        Ok(Self {
            committer: py_bytes(py, &summary.committer),
            external: summary.external,
            added: bytes_tuple(py, &summary.added)?,
            removed: bytes_tuple(py, &summary.removed)?,
            left: bytes_tuple(py, &summary.left)?,
        })
    }
}

/// A commit was merged: ours (after the DS accepted it) or a peer's.
///
/// Attributes:
///     group_id: the group.
///     epoch: the new epoch.
///     committer: identity key of who committed (ours for our own merge).
///     external: an external commit: a member resynchronized (for our own
///         merge, the one :meth:`MlsClient.rejoin` made).
///     added: identity keys that joined.
///     removed: identity keys that were removed.
///     left: those of ``removed`` whose removal was their own proposal.
///     self_removed: this client was removed; its group state is deleted.
///     changes: rows to persist.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct CommitApplied {
    group_id: Py<PyBytes>,
    epoch: u64,
    committer: Py<PyBytes>,
    external: bool,
    added: Py<PyTuple>,
    removed: Py<PyTuple>,
    left: Py<PyTuple>,
    self_removed: bool,
    changes: Py<PyTuple>,
}

impl CommitApplied {
    fn from_engine(
        py: Python<'_>,
        applied: client::CommitApplied,
        changes: Py<PyTuple>,
    ) -> PyResult<Self> {
        let summary = SummaryPy::new(py, &applied.summary)?;
        Ok(Self {
            group_id: py_bytes(py, &applied.group_id),
            epoch: applied.epoch,
            committer: summary.committer,
            external: summary.external,
            added: summary.added,
            removed: summary.removed,
            left: summary.left,
            self_removed: applied.self_removed,
            changes,
        })
    }

    pub fn new(
        py: Python<'_>,
        (applied, changes): Changed<client::CommitApplied>,
    ) -> PyResult<Self> {
        Self::from_engine(py, applied, changes_to_py(py, changes)?)
    }
}

#[pymethods]
impl CommitApplied {
    /// Counts only: a removal of hundreds of members stays one short line.
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "CommitApplied(group_id={}, epoch={}, committer={}, external={}, added={}, \
             removed={}, left={}, self_removed={})",
            short_hex(py, &self.group_id),
            self.epoch,
            short_hex(py, &self.committer),
            py_bool(self.external),
            self.added.bind(py).len(),
            self.removed.bind(py).len(),
            self.left.bind(py).len(),
            py_bool(self.self_removed),
        )
    }
}

/// Our pending commit was dropped (the DS rejected it).
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct Cleared {
    group_id: Py<PyBytes>,
    changes: Py<PyTuple>,
}

impl Cleared {
    pub fn new(py: Python<'_>, (group_id, changes): Changed<Vec<u8>>) -> PyResult<Self> {
        Ok(Self {
            group_id: py_bytes(py, &group_id),
            changes: changes_to_py(py, changes)?,
        })
    }
}

#[pymethods]
impl Cleared {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!("Cleared(group_id={})", short_hex(py, &self.group_id))
    }
}

/// This client joined a group from a Welcome.
///
/// Attributes:
///     group_id: the group.
///     epoch: the epoch joined.
///     members: identity keys of every member, in leaf order.
///     inviter: identity key of the member who signed the Welcome's GroupInfo.
///     last_resort: the Welcome used our last-resort KeyPackage, whose keys
///         the join deleted: upload a new one.
///     facts: the joined epoch as a GroupInfo describes it
///         (``GroupInfoFacts``), to compare with what the server serves.
///     changes: rows to persist.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct Joined {
    group_id: Py<PyBytes>,
    epoch: u64,
    members: Py<PyTuple>,
    inviter: Py<PyBytes>,
    last_resort: bool,
    facts: Py<GroupInfoFacts>,
    changes: Py<PyTuple>,
}

impl Joined {
    pub fn new(py: Python<'_>, (joined, changes): Changed<client::Joined>) -> PyResult<Self> {
        Ok(Self {
            group_id: py_bytes(py, &joined.group_id),
            epoch: joined.epoch,
            members: bytes_tuple(py, &joined.members)?,
            inviter: py_bytes(py, &joined.inviter),
            last_resort: joined.last_resort,
            facts: Py::new(py, GroupInfoFacts::new(py, &joined.facts))?,
            changes: changes_to_py(py, changes)?,
        })
    }
}

#[pymethods]
impl Joined {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Joined(group_id={}, epoch={}, members={})",
            short_hex(py, &self.group_id),
            self.epoch,
            self.members.bind(py).len(),
        )
    }
}

/// An application message. Persist ``changes`` before sending it: a resent
/// ratchet generation would reuse a key and nonce.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct Encrypted {
    group_id: Py<PyBytes>,
    message: Py<PyBytes>,
    changes: Py<PyTuple>,
}

impl Encrypted {
    pub fn new(
        py: Python<'_>,
        group_id: &[u8],
        (message, changes): Changed<Vec<u8>>,
    ) -> PyResult<Self> {
        Ok(Self {
            group_id: py_bytes(py, group_id),
            message: py_bytes(py, &message),
            changes: changes_to_py(py, changes)?,
        })
    }
}

#[pymethods]
impl Encrypted {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!("Encrypted(group_id={})", short_hex(py, &self.group_id))
    }
}

/// A decrypted application message from ``sender`` (identity key).
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct ApplicationMessage {
    group_id: Py<PyBytes>,
    epoch: u64,
    sender: Py<PyBytes>,
    plaintext: Py<PyBytes>,
    changes: Py<PyTuple>,
}

#[pymethods]
impl ApplicationMessage {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "ApplicationMessage(group_id={}, epoch={}, sender={})",
            short_hex(py, &self.group_id),
            self.epoch,
            short_hex(py, &self.sender),
        )
    }
}

/// A member's leave proposal was validated and stored; commit it with
/// :meth:`MlsClient.commit_pending_proposals`.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct ProposalStored {
    group_id: Py<PyBytes>,
    epoch: u64,
    sender: Py<PyBytes>,
    changes: Py<PyTuple>,
}

#[pymethods]
impl ProposalStored {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "ProposalStored(group_id={}, epoch={}, sender={})",
            short_hex(py, &self.group_id),
            self.epoch,
            short_hex(py, &self.sender),
        )
    }
}

/// Our own message echoed back by the delivery service; nothing to do.
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct OwnMessage {
    group_id: Py<PyBytes>,
    changes: Py<PyTuple>,
}

#[pymethods]
impl OwnMessage {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!("OwnMessage(group_id={})", short_hex(py, &self.group_id))
    }
}

/// What `MlsClient.process` returns: one of four result classes.
pub fn processed(py: Python<'_>, (processed, changes): Changed<Processed>) -> PyResult<Py<PyAny>> {
    let changes = changes_to_py(py, changes)?;
    Ok(match processed {
        Processed::Application {
            group_id,
            epoch,
            sender,
            plaintext,
        } => Py::new(
            py,
            ApplicationMessage {
                group_id: py_bytes(py, &group_id),
                epoch,
                sender: py_bytes(py, &sender),
                plaintext: py_bytes(py, &plaintext),
                changes,
            },
        )?
        .into_any(),
        Processed::Commit(applied) => {
            Py::new(py, CommitApplied::from_engine(py, applied, changes)?)?.into_any()
        }
        Processed::Proposal {
            group_id,
            epoch,
            sender,
        } => Py::new(
            py,
            ProposalStored {
                group_id: py_bytes(py, &group_id),
                epoch,
                sender: py_bytes(py, &sender),
                changes,
            },
        )?
        .into_any(),
        Processed::Own { group_id } => Py::new(
            py,
            OwnMessage {
                group_id: py_bytes(py, &group_id),
                changes,
            },
        )?
        .into_any(),
    })
}

/// What the directory learns from a valid KeyPackage.
///
/// Attributes:
///     identity_key: the 32-byte identity (device) key (== the leaf
///         signature key).
///     account_key: the account key its credential names (a device
///         certificate's, verified; the identity key for a legacy one).
///     ciphersuite: the MLS ciphersuite id.
///     not_after: end of the KeyPackage's lifetime, unix seconds.
///     fingerprint: SHA-256 of the uploaded bytes (the dedup key).
///     last_resort: carries the last-resort extension (never consumed).
#[pyclass(module = "qpq_core._mls", frozen, get_all)]
pub struct KeyPackageInfo {
    identity_key: Py<PyBytes>,
    account_key: Py<PyBytes>,
    ciphersuite: u16,
    not_after: u64,
    fingerprint: Py<PyBytes>,
    last_resort: bool,
}

impl KeyPackageInfo {
    pub fn new(py: Python<'_>, info: keypackage::KeyPackageInfo) -> Self {
        Self {
            identity_key: py_bytes(py, &info.identity_key),
            account_key: py_bytes(py, &info.account_key),
            ciphersuite: info.ciphersuite,
            not_after: info.not_after,
            fingerprint: py_bytes(py, &info.fingerprint),
            last_resort: info.last_resort,
        }
    }
}

#[pymethods]
impl KeyPackageInfo {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "KeyPackageInfo(identity_key={}, ciphersuite={}, not_after={}, fingerprint={}, last_resort={})",
            short_hex(py, &self.identity_key),
            self.ciphersuite,
            self.not_after,
            short_hex(py, &self.fingerprint),
            py_bool(self.last_resort),
        )
    }
}

/// The cleartext facts of an MLSMessage, read without any group state
/// (`peek_message`); equal when the facts are.
///
/// Attributes:
///     kind: a `qpq_core.MlsMessageKind`: the content type of a group
///         message, or the message type outside groups.
///     group_id: the group, or ``None`` for Welcome and KeyPackage.
///     epoch: the epoch the message is for, or ``None`` likewise.
///     wire_format: ``"public"`` (PublicMessage) or ``"private"``
///         (PrivateMessage) for group messages; ``None`` for Welcome,
///         KeyPackage and GroupInfo.
#[pyclass(module = "qpq_core._mls", frozen)]
pub struct MessageInfo {
    kind: Py<PyAny>,
    info: framing::MessageInfo,
}

impl MessageInfo {
    pub fn new(py: Python<'_>, info: framing::MessageInfo) -> PyResult<Self> {
        let kinds = MESSAGE_KINDS.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py
                .import("qpq_core._framing")?
                .getattr("MlsMessageKind")?
                .unbind())
        })?;
        let kind = kinds.bind(py).getattr(info.kind.name())?.unbind();
        Ok(Self { kind, info })
    }
}

#[pymethods]
impl MessageInfo {
    #[getter]
    fn kind(&self, py: Python<'_>) -> Py<PyAny> {
        self.kind.clone_ref(py)
    }

    #[getter]
    fn group_id<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.info.group_id.as_deref().map(|id| PyBytes::new(py, id))
    }

    #[getter]
    fn epoch(&self) -> Option<u64> {
        self.info.epoch
    }

    #[getter]
    fn wire_format(&self) -> Option<&'static str> {
        self.info.wire_format
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<MessageInfo>()
            .map(|o| o.get().info == self.info)
            .unwrap_or(false)
    }

    fn __hash__(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.info.kind.name().hash(&mut hasher);
        self.info.group_id.hash(&mut hasher);
        self.info.epoch.hash(&mut hasher);
        self.info.wire_format.hash(&mut hasher);
        hasher.finish()
    }

    fn __repr__(&self) -> String {
        let group_id = self
            .info
            .group_id
            .as_deref()
            .map_or("None".to_owned(), |id| {
                let hex: String = id.iter().take(8).map(|b| format!("{b:02x}")).collect();
                if id.len() > 8 { hex + "…" } else { hex }
            });
        let epoch = self.info.epoch.map_or("None".to_owned(), |e| e.to_string());
        let wire_format = self
            .info
            .wire_format
            .map_or("None".to_owned(), |w| format!("'{w}'"));
        format!(
            "MessageInfo(kind={}, group_id={group_id}, epoch={epoch}, wire_format={wire_format})",
            self.info.kind.name()
        )
    }
}
