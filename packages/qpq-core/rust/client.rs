//! The per-user MLS engine: OpenMLS groups over the journaling storage, with
//! messenger-shaped operations (bytes in, bytes out).
//!
//! Every mutating operation runs in [`Client::transact`]: on success the
//! storage journal becomes the operation's change set; on an error or a panic
//! the undo log is replayed and the cached `MlsGroup` is dropped, because
//! OpenMLS mutates its in-memory struct independently of storage. The next use
//! reloads the group from the (restored) storage.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use openmls::prelude::*;
use openmls_traits::OpenMlsProvider;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::storage::StorageProvider;

use crate::errors::{Error, ErrorKind, Result, process_error, state_error, welcome_error};
use crate::framing::parse_message;
use crate::group_info;
use crate::identity::{
    Identity, credential_device_key, leaf_identity, tree_account, tree_identity,
};
use crate::keypackage;
use crate::policy::{CommitSummary, check_commit, check_proposal};
use crate::provider::Provider;
use crate::storage::{Change, GROUP_STATE};
use crate::suite;

/// Messages of up to this many past epochs still decrypt: a messenger has
/// races between a commit and application messages sent just before it.
pub const MAX_PAST_EPOCHS: usize = 3;
/// Sender-ratchet tolerance: reordering window and how far ahead a message
/// may be (RFC 9420 §9.1 leaves both to the application).
pub const OUT_OF_ORDER_TOLERANCE: u32 = 32;
pub const MAX_FORWARD_DISTANCE: u32 = 1000;
/// Random group ids are this long (RFC 9420 §8 suggests unpredictable ids).
pub const GROUP_ID_LEN: usize = 16;

/// Handshake messages (commits, proposals) go out as PublicMessage, so the
/// delivery service can verify them against the group's public state;
/// application messages are PrivateMessage whatever the policy (RFC 9420
/// §6). Incoming handshakes may be either, as other RFC 9420 clients send
/// (docs/mls.md, "Group configuration and wire format").
fn wire_format_policy() -> WireFormatPolicy {
    MIXED_PLAINTEXT_WIRE_FORMAT_POLICY
}

fn ratchet_config() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, MAX_FORWARD_DISTANCE)
}

pub(crate) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(ratchet_config())
        .wire_format_policy(wire_format_policy())
        .build()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCreated {
    pub group_id: Vec<u8>,
    /// MLSMessage(GroupInfo) of epoch 0, with the ratchet tree.
    pub group_info: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOut {
    pub group_id: Vec<u8>,
    /// A PublicMessage.
    pub commit: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
    /// MLSMessage(GroupInfo) of the epoch the commit creates, signed by us,
    /// with the ratchet tree: what the delivery service checks and serves.
    pub group_info: Vec<u8>,
    /// The epoch the commit is for (the current one).
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitApplied {
    pub group_id: Vec<u8>,
    pub epoch: u64,
    pub summary: CommitSummary,
    pub self_removed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub group_id: Vec<u8>,
    pub epoch: u64,
    pub members: Vec<Vec<u8>>,
    /// Identity key of the member who signed the Welcome's GroupInfo: the
    /// inviter, proven by MLS whoever delivered the Welcome.
    pub inviter: Vec<u8>,
    /// The Welcome used our last-resort KeyPackage. Its private keys were
    /// deleted with the join (a Welcome made for it cannot be replayed);
    /// the host uploads a new last-resort package.
    pub last_resort: bool,
    /// The joined epoch as a GroupInfo describes it, to compare with what
    /// the delivery service serves for the group.
    pub facts: group_info::Facts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    Application {
        group_id: Vec<u8>,
        epoch: u64,
        sender: Vec<u8>,
        plaintext: Vec<u8>,
    },
    Commit(CommitApplied),
    Proposal {
        group_id: Vec<u8>,
        epoch: u64,
        sender: Vec<u8>,
    },
    Own {
        group_id: Vec<u8>,
    },
}

/// A result and the storage rows it changed.
pub type Changed<T> = (T, Vec<Change>);

pub struct Client {
    pub(crate) identity: Identity,
    pub(crate) provider: Provider,
    pub(crate) groups: HashMap<Vec<u8>, MlsGroup>,
}

pub(crate) fn bytes_out(message: &MlsMessageOut) -> Result<Vec<u8>> {
    message
        .to_bytes()
        .map_err(|e| Error::with(ErrorKind::Internal, "cannot encode MLSMessage", &e))
}

pub(crate) fn member_identity(member: &Member) -> Vec<u8> {
    tree_identity(&member.credential, &member.signature_key)
}

pub(crate) fn identity_at(group: &MlsGroup, index: LeafNodeIndex) -> Option<Vec<u8>> {
    group.member_at(index).map(|m| member_identity(&m))
}

/// The account key of each leaf of the group (for the commit policy).
pub(crate) fn accounts_of(group: &MlsGroup) -> Vec<Vec<u8>> {
    group
        .members()
        .map(|m| tree_account(&m.credential, &m.signature_key))
        .collect()
}

/// The current epoch's GroupInfo, signed by us, with the ratchet tree (and
/// the external_pub extension OpenMLS adds), as an MLSMessage.
pub(crate) fn export_group_info(
    group: &MlsGroup,
    provider: &Provider,
    identity: &Identity,
) -> Result<Vec<u8>> {
    let message = group
        .export_group_info(provider.crypto(), identity, true)
        .map_err(|e| Error::with(ErrorKind::Internal, "cannot export GroupInfo", &e))?;
    bytes_out(&message)
}

/// The facts (`group_info::Facts`) of the group's current epoch as our own
/// state derives them: what the GroupInfo the delivery service serves must
/// match.
pub(crate) fn own_facts(
    group: &MlsGroup,
    provider: &Provider,
    identity: &Identity,
) -> Result<group_info::Facts> {
    let message = group
        .export_group_info(provider.crypto(), identity, false)
        .map_err(|e| Error::with(ErrorKind::Internal, "cannot export GroupInfo", &e))?;
    group_info::facts(
        &group_info::parse(&bytes_out(&message)?)?,
        provider.crypto(),
    )
}

pub(crate) fn load_group<'a>(
    groups: &'a mut HashMap<Vec<u8>, MlsGroup>,
    provider: &Provider,
    group_id: &[u8],
) -> Result<&'a mut MlsGroup> {
    if !groups.contains_key(group_id) {
        let group = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(Error::from)?
            .ok_or_else(|| Error::new(ErrorKind::WrongGroup, "unknown group"))?;
        groups.insert(group_id.to_vec(), group);
    }
    groups
        .get_mut(group_id)
        .ok_or_else(|| Error::new(ErrorKind::Internal, "group cache miss"))
}

/// [`load_group`] for an operation that sends or processes: refused while
/// our external commit waits for the delivery service (docs/mls.md,
/// "Rejoining by external commit").
pub(crate) fn load_operational<'a>(
    groups: &'a mut HashMap<Vec<u8>, MlsGroup>,
    provider: &Provider,
    group_id: &[u8],
) -> Result<&'a mut MlsGroup> {
    let group = load_group(groups, provider, group_id)?;
    if provider
        .storage()
        .pending_external_commit(group.group_id())?
        .is_some()
    {
        return Err(Error::new(
            ErrorKind::CommitConflict,
            "our external commit is pending: merge or clear it first",
        ));
    }
    Ok(group)
}

impl Client {
    pub fn new<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(identity: Identity, rows: I) -> Self {
        let client = Self {
            identity,
            provider: Provider::default(),
            groups: HashMap::new(),
        };
        client.provider.storage().load(rows);
        client
    }

    /// Startup and recovery path: drop every cache, repopulate from rows.
    pub fn reload<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(&mut self, rows: I) {
        self.groups.clear();
        self.provider.storage().load(rows);
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Run one operation atomically with respect to storage and cache.
    pub(crate) fn transact<T>(
        &mut self,
        group_id: Option<&[u8]>,
        op: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<Changed<T>> {
        if !self.provider.storage().is_clean() {
            // Only reachable after a bug; never let two operations share a
            // change set.
            self.provider.storage().rollback();
            self.groups.clear();
        }
        match catch_unwind(AssertUnwindSafe(|| op(self))) {
            Ok(Ok(value)) => Ok((value, self.provider.storage().drain_journal())),
            Ok(Err(error)) => {
                self.provider.storage().rollback();
                match group_id {
                    Some(gid) => {
                        self.groups.remove(gid);
                    }
                    None => self.groups.clear(),
                }
                Err(error)
            }
            Err(_) => {
                self.provider.storage().rollback();
                self.groups.clear();
                Err(Error::new(
                    ErrorKind::Internal,
                    "internal panic in the MLS engine",
                ))
            }
        }
    }

    /// Read-only access; a panic is caught and the group evicted.
    pub(crate) fn read<T>(
        &mut self,
        group_id: &[u8],
        op: impl FnOnce(&MlsGroup, &Provider) -> Result<T>,
    ) -> Result<T> {
        let (value, _) = self.transact(Some(group_id), |c| {
            let group = load_group(&mut c.groups, &c.provider, group_id)?;
            op(group, &c.provider)
        })?;
        Ok(value)
    }

    pub fn create_key_packages(
        &mut self,
        count: usize,
        lifetime_seconds: u64,
        last_resort: bool,
        ciphersuite: Ciphersuite,
    ) -> Result<Changed<Vec<Vec<u8>>>> {
        self.transact(None, |c| {
            keypackage::create_key_packages(
                &c.provider,
                &c.identity,
                count,
                lifetime_seconds,
                last_resort,
                ciphersuite,
            )
        })
    }

    /// A new group of `ciphersuite` with us as its only member, and its
    /// GroupInfo for the delivery service.
    pub fn create_group(
        &mut self,
        group_id: Option<Vec<u8>>,
        ciphersuite: Ciphersuite,
    ) -> Result<Changed<GroupCreated>> {
        suite::require(ciphersuite)?;
        let group_id = match group_id {
            Some(gid) if gid.is_empty() || gid.len() > 255 => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "group id must be 1..=255 bytes",
                ));
            }
            Some(gid) => gid,
            None => self
                .provider
                .rand()
                .random_vec(GROUP_ID_LEN)
                .map_err(|_| Error::new(ErrorKind::Internal, "no randomness available"))?,
        };
        let gid = group_id.clone();
        self.transact(Some(&gid), move |c| {
            let group = MlsGroup::builder()
                .with_group_id(GroupId::from_slice(&group_id))
                .ciphersuite(ciphersuite)
                .with_capabilities(suite::leaf_capabilities(ciphersuite))
                .use_ratchet_tree_extension(true)
                .max_past_epochs(MAX_PAST_EPOCHS)
                .sender_ratchet_configuration(ratchet_config())
                .with_wire_format_policy(wire_format_policy())
                .build(&c.provider, &c.identity, c.identity.credential_with_key())
                .map_err(|e| match e {
                    NewGroupError::GroupAlreadyExists => {
                        Error::new(ErrorKind::InvalidArgument, "a group with this id exists")
                    }
                    NewGroupError::StorageError(_) => {
                        Error::with(ErrorKind::StateCorrupt, "cannot create group", &e)
                    }
                    _ => Error::with(ErrorKind::Internal, "cannot create group", &e),
                })?;
            let group_info = export_group_info(&group, &c.provider, &c.identity)?;
            c.groups.insert(group_id.clone(), group);
            Ok(GroupCreated {
                group_id,
                group_info,
            })
        })
    }

    pub fn join_from_welcome(&mut self, welcome: &[u8]) -> Result<Changed<Joined>> {
        let welcome = match parse_message(welcome)?.extract() {
            MlsMessageBodyIn::Welcome(w) => w,
            _ => {
                return Err(Error::new(
                    ErrorKind::MalformedMessage,
                    "not a Welcome message",
                ));
            }
        };
        self.transact(None, |c| {
            // Leaf lifetimes are not checked on join: a member who has not
            // self-updated within 84 days would otherwise make every later
            // Welcome fail (docs/mls.md, "Lifetimes on join"). KeyPackage
            // lifetimes were checked when each member was added.
            let builder = StagedWelcome::build_from_welcome(&c.provider, &join_config(), welcome)
                .map_err(|e| welcome_error(&e))?;
            let used = builder
                .processed_welcome()
                .own_key_package()
                .filter(|kp| kp.last_resort())
                .map(|kp| kp.hash_ref(c.provider.crypto()))
                .transpose()
                .map_err(|e| Error::with(ErrorKind::Internal, "cannot hash KeyPackage", &e))?;
            let staged = builder
                .skip_lifetime_validation()
                .build()
                .map_err(|e| welcome_error(&e))?;
            let mut members = Vec::new();
            for m in staged.members() {
                members.push(leaf_identity(&m.credential, &m.signature_key)?);
            }
            // The GroupInfo signer (RFC 9420 §12.4.3.1): a member's leaf,
            // whose signature the join verified.
            let sender = staged.welcome_sender().map_err(|e| {
                Error::with(
                    ErrorKind::MalformedMessage,
                    "the Welcome names no sender",
                    &e,
                )
            })?;
            let inviter = leaf_identity(sender.credential(), sender.signature_key().as_slice())?;
            let group = staged
                .into_group(&c.provider)
                .map_err(|e| welcome_error(&e))?;
            if let Some(hash_ref) = &used {
                // OpenMLS keeps a last-resort package for reuse; we do not:
                // a Welcome made for it, replayed by a server after we were
                // removed, would put us back into an epoch we left.
                c.provider
                    .storage()
                    .delete_key_package(hash_ref)
                    .map_err(|e| {
                        Error::with(ErrorKind::StateCorrupt, "cannot delete KeyPackage", &e)
                    })?;
            }
            let group_id = group.group_id().as_slice().to_vec();
            let epoch = group.epoch().as_u64();
            let facts = own_facts(&group, &c.provider, &c.identity)?;
            c.groups.insert(group_id.clone(), group);
            Ok(Joined {
                group_id,
                epoch,
                members,
                inviter,
                last_resort: used.is_some(),
                facts,
            })
        })
    }

    pub fn encrypt(&mut self, group_id: &[u8], plaintext: &[u8]) -> Result<Changed<Vec<u8>>> {
        self.transact(Some(group_id), |c| {
            let group = load_operational(&mut c.groups, &c.provider, group_id)?;
            let message = group
                .create_message(&c.provider, &c.identity, plaintext)
                .map_err(|e| match &e {
                    CreateMessageError::GroupStateError(s) => state_error("cannot encrypt", s),
                    _ => Error::with(ErrorKind::Internal, "cannot encrypt", &e),
                })?;
            bytes_out(&message)
        })
    }

    pub fn process(&mut self, message: &[u8]) -> Result<Changed<Processed>> {
        let protocol = parse_message(message)?
            .try_into_protocol_message()
            .map_err(|_| Error::new(ErrorKind::MalformedMessage, "not a group message"))?;
        let group_id = protocol.group_id().as_slice().to_vec();
        self.transact(Some(&group_id), |c| {
            let group = load_operational(&mut c.groups, &c.provider, &group_id)?;
            let processed = group
                .process_message(&c.provider, protocol)
                .map_err(|e| process_error(&e))?;
            let epoch = processed.epoch().as_u64();
            let sender_kind = processed.sender().clone();
            // The sender's device key: its leaf's checked credential.
            let sender = credential_device_key(processed.credential())?;
            match processed.into_content() {
                ProcessedMessageContent::ApplicationMessage(app) => Ok(Processed::Application {
                    group_id: group_id.clone(),
                    epoch,
                    sender,
                    plaintext: app.into_bytes(),
                }),
                ProcessedMessageContent::ProposalMessage(proposal) => {
                    check_proposal(&proposal)?;
                    group
                        .store_pending_proposal(c.provider.storage(), *proposal)
                        .map_err(|e| {
                            Error::with(ErrorKind::StateCorrupt, "cannot store proposal", &e)
                        })?;
                    Ok(Processed::Proposal {
                        group_id: group_id.clone(),
                        epoch,
                        sender,
                    })
                }
                ProcessedMessageContent::StagedCommitMessage(staged) => {
                    // The policy the delivery service applies too: a commit
                    // it accepted must pass here (crate::policy).
                    let accounts = accounts_of(group);
                    let summary =
                        check_commit(&staged, &sender_kind, |i| identity_at(group, i), &accounts)?;
                    let self_removed = staged.self_removed();
                    group
                        .merge_staged_commit(&c.provider, *staged)
                        .map_err(|e| Error::with(ErrorKind::Internal, "cannot merge commit", &e))?;
                    let epoch = group.epoch().as_u64();
                    if self_removed {
                        // Forward secrecy: nothing of a group we left stays.
                        group.delete(c.provider.storage()).map_err(|e| {
                            Error::with(ErrorKind::StateCorrupt, "cannot delete group", &e)
                        })?;
                        c.groups.remove(&group_id);
                    }
                    Ok(Processed::Commit(CommitApplied {
                        group_id: group_id.clone(),
                        epoch,
                        summary,
                        self_removed,
                    }))
                }
                ProcessedMessageContent::OwnPendingCommit
                | ProcessedMessageContent::OwnPrivateMessage => Ok(Processed::Own {
                    group_id: group_id.clone(),
                }),
                _ => Err(Error::new(
                    ErrorKind::InvalidMessage,
                    "external proposals are not accepted",
                )),
            }
        })
    }

    /// The facts of the group's current epoch as our state derives them
    /// (see `own_facts`).
    pub fn group_info_facts(&mut self, group_id: &[u8]) -> Result<group_info::Facts> {
        let (facts, _) = self.transact(Some(group_id), |c| {
            let group = load_operational(&mut c.groups, &c.provider, group_id)?;
            own_facts(group, &c.provider, &c.identity)
        })?;
        Ok(facts)
    }

    pub fn group_ids(&self) -> Vec<Vec<u8>> {
        let mut ids: Vec<Vec<u8>> = self
            .provider
            .storage()
            .keys_with_label(GROUP_STATE)
            .iter()
            .filter_map(|json| serde_json::from_slice::<GroupId>(json).ok())
            .map(|gid| gid.as_slice().to_vec())
            .collect();
        ids.sort();
        ids
    }

    pub fn members(&mut self, group_id: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.read(group_id, |g, _| {
            Ok(g.members().map(|m| member_identity(&m)).collect())
        })
    }

    /// The BasicCredential identity of each member (a legacy 32-byte key or a
    /// device certificate, checked on arrival), in the leaf order of
    /// [`Self::members`].
    pub fn member_credentials(&mut self, group_id: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.read(group_id, |g, _| {
            Ok(g.members()
                .map(|m| {
                    BasicCredential::try_from(m.credential.clone())
                        .map(|b| b.identity().to_vec())
                        .unwrap_or_else(|_| m.signature_key.clone())
                })
                .collect())
        })
    }

    /// The account key of each member, in the leaf order of [`Self::members`].
    pub fn member_accounts(&mut self, group_id: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.read(group_id, |g, _| {
            Ok(g.members()
                .map(|m| tree_account(&m.credential, &m.signature_key))
                .collect())
        })
    }

    pub fn epoch(&mut self, group_id: &[u8]) -> Result<u64> {
        self.read(group_id, |g, _| Ok(g.epoch().as_u64()))
    }

    /// The group's ciphersuite, fixed when it was created (RFC 9420 §11).
    pub fn group_suite(&mut self, group_id: &[u8]) -> Result<Ciphersuite> {
        self.read(group_id, |g, _| Ok(g.ciphersuite()))
    }

    pub fn has_pending_proposals(&mut self, group_id: &[u8]) -> Result<bool> {
        self.read(group_id, |g, _| Ok(g.has_pending_proposals()))
    }

    /// A commit of ours waits for merge or clear: a regular one, or an
    /// external commit from [`Client::rejoin`].
    pub fn has_pending_commit(&mut self, group_id: &[u8]) -> Result<bool> {
        self.read(group_id, |g, p| {
            let external = p.storage().pending_external_commit(g.group_id())?;
            Ok(g.pending_commit().is_some() || external.is_some())
        })
    }

    pub fn export_secret(
        &mut self,
        group_id: &[u8],
        label: &str,
        context: &[u8],
        length: usize,
    ) -> Result<Vec<u8>> {
        self.read(group_id, |g, p| {
            g.export_secret(p.crypto(), label, context, length)
                .map_err(|e| match &e {
                    ExportSecretError::KeyLengthTooLong => {
                        Error::new(ErrorKind::InvalidArgument, "length too long")
                    }
                    ExportSecretError::GroupStateError(s) => state_error("cannot export", s),
                    _ => Error::with(ErrorKind::Internal, "cannot export", &e),
                })
        })
    }

    /// Number of stored rows (diagnostics).
    pub fn stored_rows(&self) -> usize {
        self.provider.storage().len()
    }
}
