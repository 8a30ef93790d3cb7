//! qpq's commit policy, one function for both sides: every member runs it in
//! `Client::process` (and on its own commits when they are merged), the
//! delivery service in `DeliveryGroup::verify`. A commit the delivery service
//! accepts must be accepted by every honest member, or the group splits
//! (docs/mls.md, "Commit policy").
//!
//! OpenMLS has already validated the commit against RFC 9420 (signatures,
//! epoch, proposal rules, paths) when these functions run; they add what
//! RFC 9420 leaves to the application.

use openmls::prelude::{LeafNodeIndex, Proposal, QueuedProposal, Sender, StagedCommit};

use crate::errors::{Error, ErrorKind, Result};
use crate::identity::{leaf_identity, leaf_keys};

/// What a commit does to the roster, in identity keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSummary {
    /// Who committed: a member, or the joiner of an external commit.
    pub committer: Vec<u8>,
    /// An external commit (RFC 9420 §12.4.3.2): a member resynchronized, or
    /// a new device of a member account joined (then it is in `added`).
    pub external: bool,
    pub added: Vec<Vec<u8>>,
    /// Members removed, whoever proposed it (`left` is a subset).
    pub removed: Vec<Vec<u8>>,
    /// Members removed by their own Remove proposal: they left.
    pub left: Vec<Vec<u8>>,
}

fn refuse(message: &str) -> Error {
    Error::new(ErrorKind::InvalidMessage, message)
}

/// Check a staged commit against the policy and summarize it.
///
/// `identity_at` reads the tree the commit applies to (the current epoch's),
/// `accounts` the account keys of its leaves. Allowed: Add, Remove and
/// Update proposals from members; an external commit (ExternalInit, and no
/// Add or Update) either as a resync, with the Remove of the joiner's own old
/// leaf and nothing else, or as a new device of an account that already has
/// a leaf in the group joining by itself, with no Remove at all (groups are
/// made of accounts: docs/protocol.md §7.2). Every new or updated leaf's
/// credential checks out (`leaf_keys`), and no update changes a member's
/// identity. An external resync neither adds nor removes an identity, so the
/// joiner is in neither list; a new device is in `added`.
pub fn check_commit(
    staged: &StagedCommit,
    sender: &Sender,
    identity_at: impl Fn(LeafNodeIndex) -> Option<Vec<u8>>,
    accounts: &[Vec<u8>],
) -> Result<CommitSummary> {
    let external = match sender {
        Sender::Member(_) => false,
        Sender::NewMemberCommit => true,
        _ => return Err(refuse("only a member can commit")),
    };
    let path_keys = staged
        .update_path_leaf_node()
        .map(|leaf| leaf_keys(leaf.credential(), leaf.signature_key().as_slice()))
        .transpose()?;
    let joiner_account = path_keys.as_ref().map(|(_, account)| account.clone());
    let path_identity = path_keys.map(|(device, _)| device);
    let committer = match (sender, path_identity) {
        (Sender::Member(index), path) => {
            let committer = identity_at(*index).ok_or_else(|| {
                Error::new(ErrorKind::NotAMember, "the committer is not a member")
            })?;
            if path.is_some_and(|id| id != committer) {
                return Err(Error::new(
                    ErrorKind::InvalidIdentity,
                    "a commit changes its committer's identity",
                ));
            }
            committer
        }
        (_, Some(joiner)) => joiner,
        (_, None) => return Err(refuse("an external commit needs an update path")),
    };
    let mut summary = CommitSummary {
        committer,
        external,
        added: Vec::new(),
        removed: Vec::new(),
        left: Vec::new(),
    };
    let mut resynced = false;
    for queued in staged.queued_proposals() {
        match queued.proposal() {
            Proposal::Add(_) | Proposal::Update(_) if external => {
                return Err(refuse(
                    "an external commit may add only the joiner, by its own path",
                ));
            }
            Proposal::Add(add) => {
                let leaf = add.key_package().leaf_node();
                let id = leaf_identity(leaf.credential(), leaf.signature_key().as_slice())?;
                summary.added.push(id);
            }
            Proposal::Update(update) => {
                let Sender::Member(owner) = queued.sender() else {
                    return Err(refuse("an Update proposal comes from a member"));
                };
                let leaf = update.leaf_node();
                let id = leaf_identity(leaf.credential(), leaf.signature_key().as_slice())?;
                if identity_at(*owner) != Some(id) {
                    return Err(Error::new(
                        ErrorKind::InvalidIdentity,
                        "an update changes a member's identity",
                    ));
                }
            }
            Proposal::Remove(remove) => {
                let removed = identity_at(remove.removed()).ok_or_else(|| {
                    Error::new(ErrorKind::NotAMember, "a Remove names an empty leaf")
                })?;
                if external {
                    if resynced || removed != summary.committer {
                        return Err(refuse(
                            "an external commit may only remove the joiner's own old leaf",
                        ));
                    }
                    resynced = true;
                } else {
                    if *queued.sender() == Sender::Member(remove.removed()) {
                        summary.left.push(removed.clone());
                    }
                    summary.removed.push(removed);
                }
            }
            Proposal::ExternalInit(_) if external => {}
            _ => {
                return Err(refuse(
                    "a commit may carry only Add, Remove and Update proposals",
                ));
            }
        }
    }
    if external && !resynced {
        // A fresh join by external commit would let anyone who obtains the
        // GroupInfo in; only a device of an account that is already a member
        // may (a restored backup, docs/backup.md), and the delivery service
        // also checks that the device is registered and not revoked.
        let member_account = joiner_account.is_some_and(|a| accounts.contains(&a));
        if !member_account {
            return Err(Error::new(
                ErrorKind::NotAMember,
                "an external commit must replace the joiner's own leaf (resync) \
                 or add a device of an account in the group",
            ));
        }
        summary.added.push(summary.committer.clone());
    }
    Ok(summary)
}

/// A proposal outside a commit is accepted only if it is a member's Remove of
/// itself (leaving); the commit that covers it is checked by [`check_commit`].
pub fn check_proposal(proposal: &QueuedProposal) -> Result<()> {
    match (proposal.proposal(), proposal.sender()) {
        (Proposal::Remove(remove), Sender::Member(sender)) if remove.removed() == *sender => Ok(()),
        _ => Err(refuse(
            "only a member's own Remove proposal is accepted outside a commit",
        )),
    }
}
