//! The delivery service's side of a group: its public state (OpenMLS
//! `PublicGroup`: tree, group context, transcript hashes, proposals), against
//! which every handshake message is verified before it is fanned out
//! (RFC 9750 §5: a strongly consistent delivery service; docs/mls.md,
//! "Delivery service").
//!
//! The state lives in the same journaling storage as a client's, so every
//! call returns the rows it changed and a refused message changes nothing.
//! The delivery service holds no group secret: it cannot check a membership
//! tag, so what binds a message to a member is its signature, verified
//! against the sender's leaf in the public tree.

use std::panic::{AssertUnwindSafe, catch_unwind};

use openmls::prelude::{
    Ciphersuite, ContentType, GroupId, MlsMessageBodyIn, ProcessedMessageContent, ProposalStore,
    ProtocolMessage, PublicGroup, Sender,
};
use tls_codec::Serialize;

use crate::client::Changed;
use crate::errors::{Error, ErrorKind, Result, creation_error, public_process_error};
use crate::framing::parse_message;
use crate::group_info;
use crate::identity::{leaf_identity, tree_account, tree_identity};
use crate::policy::{CommitSummary, check_commit, check_proposal};
use crate::provider::Crypto;
use crate::storage::JournalStorage;

/// A group registered with the delivery service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub group_id: Vec<u8>,
    pub epoch: u64,
    pub members: Vec<Vec<u8>>,
    /// The identity key of the member who signed the GroupInfo.
    pub signer: Vec<u8>,
}

/// A verified commit, merged into the delivery service's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitVerified {
    pub group_id: Vec<u8>,
    /// The epoch the commit created.
    pub epoch: u64,
    pub summary: CommitSummary,
    /// The roster after the commit, in leaf order.
    pub members: Vec<Vec<u8>>,
    /// The facts of the GroupInfo that came with the commit: what members
    /// compare with their own view of the new epoch.
    pub group_info: group_info::Facts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    Proposal {
        group_id: Vec<u8>,
        epoch: u64,
        sender: Vec<u8>,
    },
    Commit(Box<CommitVerified>),
}

pub struct DeliveryGroup {
    group_id: Vec<u8>,
    crypto: Crypto,
    storage: JournalStorage,
    /// The loaded state; `None` after a failed call touched it, reloaded
    /// from the (restored) storage on next use.
    group: Option<PublicGroup>,
    /// Set before the state is changed: a failure after that point must
    /// drop the in-memory group, which OpenMLS changes apart from storage.
    touched: bool,
}

fn refuse(message: &str) -> Error {
    Error::new(ErrorKind::InvalidMessage, message)
}

fn load(storage: &JournalStorage, group_id: &[u8]) -> Result<PublicGroup> {
    PublicGroup::load(storage, &GroupId::from_slice(group_id))?.ok_or_else(|| {
        Error::new(
            ErrorKind::StateCorrupt,
            "the stored rows hold no state of this group",
        )
    })
}

fn loaded<'a>(
    slot: &'a mut Option<PublicGroup>,
    storage: &JournalStorage,
    group_id: &[u8],
) -> Result<&'a mut PublicGroup> {
    if slot.is_none() {
        *slot = Some(load(storage, group_id)?);
    }
    slot.as_mut()
        .ok_or_else(|| Error::new(ErrorKind::Internal, "group cache miss"))
}

fn identity_at(group: &PublicGroup, index: openmls::prelude::LeafNodeIndex) -> Option<Vec<u8>> {
    group
        .leaf(index)
        .map(|leaf| tree_identity(leaf.credential(), leaf.signature_key().as_slice()))
}

fn roster(group: &PublicGroup) -> Vec<Vec<u8>> {
    group
        .members()
        .map(|m| tree_identity(&m.credential, &m.signature_key))
        .collect()
}

impl DeliveryGroup {
    fn empty(group_id: Vec<u8>) -> Self {
        Self {
            group_id,
            crypto: Crypto::default(),
            storage: JournalStorage::default(),
            group: None,
            touched: false,
        }
    }

    /// Run one call atomically with respect to storage and the loaded state.
    fn transact<T>(&mut self, op: impl FnOnce(&mut Self) -> Result<T>) -> Result<Changed<T>> {
        if !self.storage.is_clean() {
            // Only reachable after a bug; never let two calls share a change set.
            self.storage.rollback();
            self.group = None;
        }
        self.touched = false;
        let outcome = catch_unwind(AssertUnwindSafe(|| op(self)));
        let touched = std::mem::take(&mut self.touched);
        match outcome {
            Ok(Ok(value)) => Ok((value, self.storage.drain_journal())),
            Ok(Err(error)) => {
                self.storage.rollback();
                if touched {
                    self.group = None;
                }
                Err(error)
            }
            Err(_) => {
                self.storage.rollback();
                self.group = None;
                Err(Error::new(
                    ErrorKind::Internal,
                    "internal panic in the MLS engine",
                ))
            }
        }
    }

    /// Register a group from its creator's `MLSMessage(GroupInfo)`, which
    /// must carry the ratchet tree. OpenMLS checks the GroupInfo signature
    /// against the signer's leaf, the tree (parent hashes, leaf signatures,
    /// tree hash against the group context); this adds our ciphersuite,
    /// identity == signature key on every leaf and the extensions a served
    /// GroupInfo needs.
    pub fn create(group_info: &[u8]) -> Result<(Self, Changed<Registered>)> {
        let group_info = group_info::parse(group_info)?;
        let tree = group_info
            .extensions()
            .ratchet_tree()
            .ok_or_else(|| refuse("the GroupInfo lacks the ratchet_tree extension"))?
            .ratchet_tree()
            .clone();
        group_info::check_allowed_extensions(&group_info)?;
        let signer = group_info::signer(&group_info)?;
        let mut delivery = Self::empty(group_info.group_id().as_slice().to_vec());
        let registered = delivery.transact(|ds| {
            let (group, _) = PublicGroup::from_external(
                &ds.crypto,
                &ds.storage,
                tree,
                group_info,
                ProposalStore::new(),
            )
            .map_err(|e| creation_error(&e))?;
            let members = group
                .members()
                .map(|m| leaf_identity(&m.credential, &m.signature_key))
                .collect::<Result<Vec<_>>>()?;
            let signer = identity_at(&group, signer)
                .ok_or_else(|| Error::new(ErrorKind::Internal, "the signer has no leaf"))?;
            let registered = Registered {
                group_id: ds.group_id.clone(),
                epoch: group.group_context().epoch().as_u64(),
                members,
                signer,
            };
            ds.group = Some(group);
            Ok(registered)
        })?;
        Ok((delivery, registered))
    }

    /// Restore from every row the host stored for this group.
    pub fn load<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(
        group_id: &[u8],
        rows: I,
    ) -> Result<Self> {
        let mut delivery = Self::empty(group_id.to_vec());
        delivery.storage.load(rows);
        let (group, _) = delivery.transact(|ds| load(&ds.storage, &ds.group_id))?;
        delivery.group = Some(group);
        Ok(delivery)
    }

    pub fn group_id(&self) -> &[u8] {
        &self.group_id
    }

    /// Every row of the state, sorted (tests compare it with the host's).
    #[cfg(test)]
    pub(crate) fn stored(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.storage.snapshot()
    }

    fn read<T>(&mut self, op: impl FnOnce(&PublicGroup) -> Result<T>) -> Result<T> {
        let (value, _) =
            self.transact(|ds| op(loaded(&mut ds.group, &ds.storage, &ds.group_id)?))?;
        Ok(value)
    }

    pub fn epoch(&mut self) -> Result<u64> {
        self.read(|g| Ok(g.group_context().epoch().as_u64()))
    }

    /// The group's ciphersuite: every KeyPackage a commit adds must be of it
    /// (RFC 9420 §12.1.1, which OpenMLS checks in `verify`).
    pub fn ciphersuite(&mut self) -> Result<Ciphersuite> {
        self.read(|g| Ok(g.ciphersuite()))
    }

    pub fn members(&mut self) -> Result<Vec<Vec<u8>>> {
        self.read(|g| Ok(roster(g)))
    }

    /// The current epoch's tree, TLS-serialized (RFC 9420 §12.4.3.3): what
    /// a member who rejoins by external commit needs beside the GroupInfo.
    pub fn ratchet_tree(&mut self) -> Result<Vec<u8>> {
        self.read(|g| {
            g.export_ratchet_tree()
                .tls_serialize_detached()
                .map_err(|e| Error::with(ErrorKind::Internal, "cannot encode ratchet tree", &e))
        })
    }

    /// Check a GroupInfo that `uploader`, a member, offers to replace the one
    /// the delivery service serves (its own, when the one that came with the
    /// last commit did not match the epoch it derived): of the current epoch,
    /// signed by the uploader's own leaf, for exactly the current group
    /// context and confirmation tag, with the allowed extensions. The state
    /// is not changed. What it cannot check, `external_pub`, is why members
    /// upload at all (see `group_info`).
    pub fn check_group_info(
        &mut self,
        group_info: &[u8],
        uploader: &[u8],
    ) -> Result<group_info::Facts> {
        let group_info = group_info::parse(group_info)?;
        if group_info.group_id().as_slice() != self.group_id {
            return Err(Error::new(
                ErrorKind::WrongGroup,
                "the GroupInfo is for another group",
            ));
        }
        let (facts, _) = self.transact(|ds| {
            let group = loaded(&mut ds.group, &ds.storage, &ds.group_id)?;
            if group_info.epoch() != group.group_context().epoch() {
                return Err(Error::new(
                    ErrorKind::WrongEpoch,
                    "the GroupInfo is not of the group's current epoch",
                ));
            }
            group_info::check_for_state(&group_info, group, &ds.crypto, uploader)?;
            group_info::facts(&group_info, &ds.crypto)
        })?;
        Ok(facts)
    }

    /// Verify a handshake message and apply it: a proposal is stored, a
    /// commit merged (with `group_info`, the GroupInfo of the epoch it
    /// creates, which must match the merged state).
    pub fn verify(
        &mut self,
        message: &[u8],
        group_info: Option<&[u8]>,
    ) -> Result<Changed<Verified>> {
        let protocol = match parse_message(message)?.extract() {
            MlsMessageBodyIn::PublicMessage(m) => ProtocolMessage::from(m),
            MlsMessageBodyIn::PrivateMessage(_) => {
                return Err(refuse(
                    "handshake messages reach the delivery service as PublicMessage",
                ));
            }
            _ => return Err(refuse("not a handshake message")),
        };
        if protocol.group_id().as_slice() != self.group_id {
            return Err(Error::new(
                ErrorKind::WrongGroup,
                "the message is for another group",
            ));
        }
        let group_info = match (protocol.content_type(), group_info) {
            (ContentType::Application, _) => {
                return Err(refuse("application messages travel as PrivateMessage"));
            }
            (ContentType::Commit, Some(data)) => Some(group_info::parse(data)?),
            (ContentType::Commit, None) => {
                return Err(refuse(
                    "a commit needs the GroupInfo of the epoch it creates",
                ));
            }
            (ContentType::Proposal, None) => None,
            (ContentType::Proposal, Some(_)) => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "a GroupInfo goes with a commit only",
                ));
            }
        };
        self.transact(|ds| {
            let Self {
                group_id,
                crypto,
                storage,
                group,
                touched,
            } = ds;
            let group = loaded(group, storage, group_id)?;
            let processed = group
                .process_message(crypto, protocol)
                .map_err(|e| public_process_error(&e))?;
            let sender = processed.sender().clone();
            match processed.into_content() {
                ProcessedMessageContent::ProposalMessage(proposal) => {
                    check_proposal(&proposal)?;
                    let Sender::Member(index) = sender else {
                        return Err(refuse("only members propose"));
                    };
                    let sender = identity_at(group, index)
                        .ok_or_else(|| Error::new(ErrorKind::NotAMember, "unknown sender"))?;
                    *touched = true;
                    group.add_proposal(storage, *proposal)?;
                    Ok(Verified::Proposal {
                        group_id: group_id.clone(),
                        epoch: group.group_context().epoch().as_u64(),
                        sender,
                    })
                }
                ProcessedMessageContent::StagedCommitMessage(staged) => {
                    let group_info = group_info.ok_or_else(|| {
                        Error::new(ErrorKind::Internal, "GroupInfo checked above")
                    })?;
                    let accounts: Vec<Vec<u8>> = group
                        .members()
                        .map(|m| tree_account(&m.credential, &m.signature_key))
                        .collect();
                    let summary =
                        check_commit(&staged, &sender, |i| identity_at(group, i), &accounts)?;
                    *touched = true;
                    group.merge_commit(storage, *staged).map_err(|e| {
                        Error::with(ErrorKind::StateCorrupt, "cannot merge commit", &e)
                    })?;
                    group_info::check_for_state(&group_info, group, crypto, &summary.committer)?;
                    let facts = group_info::facts(&group_info, crypto)?;
                    Ok(Verified::Commit(Box::new(CommitVerified {
                        group_id: group_id.clone(),
                        epoch: group.group_context().epoch().as_u64(),
                        summary,
                        members: roster(group),
                        group_info: facts,
                    })))
                }
                _ => Err(refuse("external proposals are not accepted")),
            }
        })
    }
}
