//! Commits of ours (add, remove, self-update, commit proposals, rejoin by
//! external commit), leaving, and what follows the delivery service's answer
//! (merge or clear). Each call is one transaction of the engine
//! (`Client::transact`).
//!
//! Every commit travels as a bundle: the commit (a PublicMessage), the
//! Welcome if members were added, and the GroupInfo of the epoch the commit
//! creates, with the ratchet tree, which the delivery service checks against
//! the state it reaches and serves to members who fall behind.

use std::collections::HashSet;

use openmls::prelude::*;
use openmls_traits::OpenMlsProvider;

use crate::client::{
    Changed, Client, CommitApplied, CommitOut, accounts_of, bytes_out, export_group_info,
    identity_at, join_config, load_group, load_operational, member_identity,
};
use crate::errors::{
    Error, ErrorKind, Result, create_commit_error, external_commit_error, state_error,
};
use crate::group_info;
use crate::identity::{Identity, leaf_keys};
use crate::keypackage;
use crate::op_error;
use crate::policy::{CommitSummary, check_commit};
use crate::provider::Provider;
use crate::suite;

/// Build and stage a commit on `group`, configured by `configure`, with the
/// GroupInfo of the new epoch (ratchet tree and external_pub included).
fn stage_commit(
    group: &mut MlsGroup,
    provider: &Provider,
    identity: &Identity,
    context: &str,
    fallback: ErrorKind,
    configure: impl for<'b> FnOnce(CommitBuilder<'b, Initial>) -> CommitBuilder<'b, Initial>,
) -> Result<CommitOut> {
    if group.pending_commit().is_some() {
        return Err(state_error(context, &MlsGroupStateError::PendingCommit));
    }
    if !group.is_active() {
        return Err(state_error(context, &MlsGroupStateError::UseAfterEviction));
    }
    let epoch = group.epoch().as_u64();
    let bundle = configure(group.commit_builder())
        .load_psks(provider.storage())
        .map_err(|e| create_commit_error(context, fallback, &e))?
        .create_group_info(true)
        .use_ratchet_tree_extension(true)
        .build(provider.rand(), provider.crypto(), identity, |_| true)
        .map_err(|e| create_commit_error(context, fallback, &e))?
        .stage_commit(provider)
        .map_err(|e| match &e {
            CommitBuilderStageError::KeyStoreError(_) => {
                Error::with(ErrorKind::StateCorrupt, context, &e)
            }
            _ => Error::with(ErrorKind::Internal, context, &e),
        })?;
    let (commit, welcome, group_info) = bundle.into_messages();
    let group_info =
        group_info.ok_or_else(|| Error::new(ErrorKind::Internal, "no GroupInfo was made"))?;
    Ok(CommitOut {
        group_id: group.group_id().as_slice().to_vec(),
        commit: bytes_out(&commit)?,
        welcome: welcome.as_ref().map(bytes_out).transpose()?,
        group_info: bytes_out(&group_info)?,
        epoch,
    })
}

impl Client {
    pub fn add_members(
        &mut self,
        group_id: &[u8],
        key_packages: &[Vec<u8>],
    ) -> Result<Changed<CommitOut>> {
        if key_packages.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "no KeyPackages to add",
            ));
        }
        let kps = key_packages
            .iter()
            .map(|kp| keypackage::verify_for_add(kp))
            .collect::<Result<Vec<_>>>()?;
        self.transact(Some(group_id), |c| {
            let group = load_operational(&mut c.groups, &c.provider, group_id)?;
            // RFC 9420 §12.1.1: an added KeyPackage is of the group's suite.
            // OpenMLS refuses it too, in words about proposals; this names
            // the suites.
            let group_suite = group.ciphersuite();
            if let Some(kp) = kps.iter().find(|kp| kp.ciphersuite() != group_suite) {
                return Err(Error::new(
                    ErrorKind::InvalidKeyPackage,
                    format!(
                        "a KeyPackage of ciphersuite 0x{:04x} cannot join a group of 0x{:04x}",
                        u16::from(kp.ciphersuite()),
                        u16::from(group_suite)
                    ),
                ));
            }
            let existing: Vec<Vec<u8>> = group.members().map(|m| member_identity(&m)).collect();
            let mut seen = HashSet::new();
            for kp in &kps {
                let id = kp.leaf_node().signature_key().as_slice().to_vec();
                if existing.contains(&id) || !seen.insert(id) {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        "identity is already a member",
                    ));
                }
            }
            stage_commit(
                group,
                &c.provider,
                &c.identity,
                "cannot add members",
                ErrorKind::InvalidKeyPackage,
                |b| b.propose_adds(kps).force_self_update(true),
            )
        })
    }

    pub fn remove_members(
        &mut self,
        group_id: &[u8],
        identities: &[Vec<u8>],
    ) -> Result<Changed<CommitOut>> {
        if identities.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "no members to remove",
            ));
        }
        self.transact(Some(group_id), |c| {
            let group = load_operational(&mut c.groups, &c.provider, group_id)?;
            let own = c.identity.public_key();
            let mut leaves = Vec::with_capacity(identities.len());
            for id in identities {
                if id.as_slice() == own {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        "use leave() to remove yourself",
                    ));
                }
                let index = group
                    .members()
                    .find(|m| member_identity(m) == *id)
                    .map(|m| m.index)
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::NotAMember,
                            "identity is not a member of the group",
                        )
                    })?;
                if !leaves.contains(&index) {
                    leaves.push(index);
                }
            }
            stage_commit(
                group,
                &c.provider,
                &c.identity,
                "cannot remove members",
                ErrorKind::InvalidArgument,
                |b| b.propose_removals(leaves),
            )
        })
    }

    /// A commit of `configure`'s proposals, with no check of our own first.
    fn commit(
        &mut self,
        group_id: &[u8],
        context: &str,
        configure: impl for<'b> FnOnce(CommitBuilder<'b, Initial>) -> CommitBuilder<'b, Initial>,
    ) -> Result<Changed<CommitOut>> {
        self.transact(Some(group_id), |c| {
            let group = load_operational(&mut c.groups, &c.provider, group_id)?;
            stage_commit(
                group,
                &c.provider,
                &c.identity,
                context,
                ErrorKind::Internal,
                configure,
            )
        })
    }

    pub fn self_update(&mut self, group_id: &[u8]) -> Result<Changed<CommitOut>> {
        self.commit(group_id, "cannot self-update", |b| {
            b.force_self_update(true)
        })
    }

    pub fn commit_pending_proposals(&mut self, group_id: &[u8]) -> Result<Changed<CommitOut>> {
        self.commit(group_id, "cannot commit proposals", |b| {
            b.consume_proposal_store(true)
        })
    }

    pub fn leave(&mut self, group_id: &[u8]) -> Result<Changed<Vec<u8>>> {
        self.transact(Some(group_id), |c| {
            let group = load_operational(&mut c.groups, &c.provider, group_id)?;
            let proposal = group
                .leave_group(&c.provider, &c.identity)
                .map_err(|e| op_error!(e, LeaveGroupError, "cannot leave", ErrorKind::Internal))?;
            bytes_out(&proposal)
        })
    }

    pub fn merge_pending_commit(&mut self, group_id: &[u8]) -> Result<Changed<CommitApplied>> {
        self.transact(Some(group_id), |c| {
            let own = c.identity.public_key().to_vec();
            let group = load_group(&mut c.groups, &c.provider, group_id)?;
            let storage = c.provider.storage();
            if storage.pending_external_commit(group.group_id())?.is_some() {
                // OpenMLS merged the external commit as it built it; what
                // waited was our marker (see `rejoin`).
                storage.delete_pending_external_commit(group.group_id())?;
                return Ok(CommitApplied {
                    group_id: group_id.to_vec(),
                    epoch: group.epoch().as_u64(),
                    summary: CommitSummary {
                        committer: own,
                        external: true,
                        added: Vec::new(),
                        removed: Vec::new(),
                        left: Vec::new(),
                    },
                    self_removed: false,
                });
            }
            let staged = group
                .pending_commit()
                .ok_or_else(|| Error::new(ErrorKind::NoPendingCommit, "no pending commit"))?;
            let sender = Sender::Member(group.own_leaf_index());
            let accounts = accounts_of(group);
            let summary = check_commit(staged, &sender, |i| identity_at(group, i), &accounts)?;
            group
                .merge_pending_commit(&c.provider)
                .map_err(|e| match &e {
                    MergePendingCommitError::MlsGroupStateError(s) => {
                        state_error("cannot merge commit", s)
                    }
                    _ => Error::with(ErrorKind::Internal, "cannot merge commit", &e),
                })?;
            Ok(CommitApplied {
                group_id: group_id.to_vec(),
                epoch: group.epoch().as_u64(),
                summary,
                self_removed: false,
            })
        })
    }

    pub fn clear_pending_commit(&mut self, group_id: &[u8]) -> Result<Changed<Vec<u8>>> {
        self.transact(Some(group_id), |c| {
            let group = load_group(&mut c.groups, &c.provider, group_id)?;
            let storage = c.provider.storage();
            if storage.pending_external_commit(group.group_id())?.is_some() {
                // The delivery service refused our external commit: the
                // group we built for it goes; our older state went when we
                // rejoined. Rejoin again from the GroupInfo now served.
                storage.delete_pending_external_commit(group.group_id())?;
                group
                    .delete(storage)
                    .map_err(|e| Error::with(ErrorKind::StateCorrupt, "cannot delete group", &e))?;
                c.groups.remove(group_id);
                return Ok(group_id.to_vec());
            }
            group.clear_pending_commit(storage).map_err(|e| {
                Error::with(ErrorKind::StateCorrupt, "cannot clear pending commit", &e)
            })?;
            Ok(group_id.to_vec())
        })
    }

    /// The current epoch's GroupInfo with the ratchet tree, signed by us.
    pub fn export_group_info(&mut self, group_id: &[u8]) -> Result<Vec<u8>> {
        let (group_info, _) = self.transact(Some(group_id), |c| {
            let group = load_operational(&mut c.groups, &c.provider, group_id)?;
            export_group_info(group, &c.provider, &c.identity)
        })?;
        Ok(group_info)
    }

    /// Resynchronize a group we fell behind in by an external commit
    /// (RFC 9420 §12.4.3.2) built from the GroupInfo (and tree) the delivery
    /// service serves. In one change set: our old state of the group, if
    /// any, is deleted and the new one stored, its commit pending. OpenMLS
    /// adds the Remove of our old leaf (a member with our signature key);
    /// the commit is checked to have replaced it. A new device of an account
    /// that has a leaf in the tree (a restored backup) joins the same way,
    /// with no old leaf to replace (crate::policy::check_commit).
    pub fn rejoin(
        &mut self,
        group_id: &[u8],
        group_info: &[u8],
        ratchet_tree: &[u8],
    ) -> Result<Changed<CommitOut>> {
        let verifiable = group_info::parse(group_info)?;
        if verifiable.group_id().as_slice() != group_id {
            return Err(Error::new(
                ErrorKind::WrongGroup,
                "the GroupInfo is for another group",
            ));
        }
        let tree = group_info::ratchet_tree(&verifiable, ratchet_tree)?;
        let own = self.identity.public_key().to_vec();
        let account = self.identity.account_key().to_vec();
        let mut leaves = 0;
        let mut ours = false;
        let mut our_account = false;
        for leaf in tree.leaves() {
            leaves += 1;
            let (device, leaf_account) =
                leaf_keys(leaf.credential(), leaf.signature_key().as_slice())?;
            ours |= device == own;
            our_account |= leaf_account == account;
        }
        if !ours && !our_account {
            return Err(Error::new(
                ErrorKind::NotAMember,
                "neither we nor our account are in the group's tree: \
                 an external commit only resyncs a member or adds its account's device",
            ));
        }
        // A resync replaces our leaf; a new device adds one.
        let expected = if ours { leaves } else { leaves + 1 };
        let epoch = verifiable.epoch().as_u64();
        // OpenMLS would give our new leaf its default capabilities; ours are
        // those of the leaves we make in a group of this suite.
        let leaf = LeafNodeParameters::builder()
            .with_capabilities(suite::leaf_capabilities(verifiable.ciphersuite()))
            .build();
        self.transact(Some(group_id), move |c| {
            let storage = c.provider.storage();
            let gid = GroupId::from_slice(group_id);
            c.groups.remove(group_id);
            if let Some(mut old) = MlsGroup::load(storage, &gid)? {
                old.delete(storage)
                    .map_err(|e| Error::with(ErrorKind::StateCorrupt, "cannot delete group", &e))?;
            }
            storage.delete_pending_external_commit(&gid)?;
            const CONTEXT: &str = "cannot rejoin";
            // Leaf lifetimes are not checked, as on join from a Welcome
            // (docs/mls.md, "Lifetimes on join").
            let (group, bundle) = MlsGroup::external_commit_builder()
                .with_config(join_config())
                .with_ratchet_tree(tree)
                .skip_lifetime_validation()
                .build_group(&c.provider, verifiable, c.identity.credential_with_key())
                .map_err(|e| external_commit_error(&e))?
                .leaf_node_parameters(leaf)
                .load_psks(storage)
                .map_err(|e| create_commit_error(CONTEXT, ErrorKind::InvalidMessage, &e))?
                .create_group_info(true)
                .use_ratchet_tree_extension(true)
                .build(c.provider.rand(), c.provider.crypto(), &c.identity, |_| {
                    true
                })
                .map_err(|e| create_commit_error(CONTEXT, ErrorKind::InvalidMessage, &e))?
                .finalize(&c.provider)
                .map_err(|e| match &e {
                    ExternalCommitBuilderFinalizeError::StorageError(_) => {
                        Error::with(ErrorKind::StateCorrupt, CONTEXT, &e)
                    }
                    _ => Error::with(ErrorKind::Internal, CONTEXT, &e),
                })?;
            let members: Vec<Vec<u8>> = group.members().map(|m| member_identity(&m)).collect();
            if members.len() != expected || members.iter().filter(|m| **m == own).count() != 1 {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "the external commit did not replace our old leaf",
                ));
            }
            storage.write_pending_external_commit(&gid, epoch)?;
            let (commit, _, group_info) = bundle.into_messages();
            let group_info = group_info
                .ok_or_else(|| Error::new(ErrorKind::Internal, "no GroupInfo was made"))?;
            c.groups.insert(group_id.to_vec(), group);
            Ok(CommitOut {
                group_id: group_id.to_vec(),
                commit: bytes_out(&commit)?,
                welcome: None,
                group_info: bytes_out(&group_info)?,
                epoch,
            })
        })
    }
}
