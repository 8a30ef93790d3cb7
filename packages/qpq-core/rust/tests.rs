//! Engine tests without Python: the flows the binding relies on. Shared
//! helpers here; the delivery service and interoperability with plain
//! OpenMLS in the submodules.

mod delivery;
mod devices;
mod group_info;
mod interop;
mod xwing;

use std::collections::BTreeMap;

use openmls::prelude::Ciphersuite;

use crate::client::{Client, CommitApplied, CommitOut, Processed};
use crate::delivery::{CommitVerified, DeliveryGroup, Registered, Verified};
use crate::errors::{ErrorKind, Result};
use crate::identity::Identity;
use crate::storage::Change;
use crate::suite;

type Rows = BTreeMap<Vec<u8>, Vec<u8>>;

fn apply(rows: &mut Rows, changes: Vec<Change>) {
    for (k, v) in changes {
        match v {
            Some(v) => {
                rows.insert(k, v);
            }
            None => {
                rows.remove(&k);
            }
        }
    }
}

/// A member and the rows its host persisted; its KeyPackages and the groups
/// it creates are of `suite`.
struct User {
    client: Client,
    rows: Rows,
    suite: Ciphersuite,
}

impl User {
    fn new() -> Self {
        Self::with_suite(suite::DEFAULT)
    }
    fn with_suite(suite: Ciphersuite) -> Self {
        Self {
            client: Client::new(Identity::generate().unwrap(), Vec::new()),
            rows: Rows::new(),
            suite,
        }
    }
    fn key(&self) -> Vec<u8> {
        self.client.identity().public_key().to_vec()
    }
    fn key_package(&mut self) -> Vec<u8> {
        let (mut kps, ch) = self
            .client
            .create_key_packages(1, 3600, false, self.suite)
            .unwrap();
        apply(&mut self.rows, ch);
        kps.pop().unwrap()
    }
    fn restart(&mut self) {
        let mut id =
            Identity::from_secret(self.client.identity().secret_bytes().as_slice()).unwrap();
        if let Some(cert) = self.client.identity().certificate() {
            id = id.with_certificate(cert).unwrap();
        }
        self.client = Client::new(id, self.rows.clone());
    }
    /// Run a mutating call and persist its change set.
    fn run<T>(&mut self, op: impl FnOnce(&mut Client) -> Result<(T, Vec<Change>)>) -> T {
        let (value, changes) = op(&mut self.client).unwrap();
        apply(&mut self.rows, changes);
        value
    }
    fn create_group(&mut self) -> (Vec<u8>, Vec<u8>) {
        let suite = self.suite;
        let created = self.run(|c| c.create_group(None, suite));
        (created.group_id, created.group_info)
    }
    fn merge(&mut self, gid: &[u8]) -> CommitApplied {
        self.run(|c| c.merge_pending_commit(gid))
    }
    fn join(&mut self, welcome: &[u8]) {
        self.run(|c| c.join_from_welcome(welcome));
    }
    fn process(&mut self, message: &[u8]) -> Processed {
        self.run(|c| c.process(message))
    }
    fn applied(&mut self, commit: &[u8]) -> CommitApplied {
        match self.process(commit) {
            Processed::Commit(applied) => applied,
            other => panic!("not a commit: {other:?}"),
        }
    }
    fn secret(&mut self, gid: &[u8]) -> Vec<u8> {
        self.client.export_secret(gid, "qpq test", b"", 32).unwrap()
    }
    /// `self` sends an application message that each of `to` reads.
    fn send(&mut self, gid: &[u8], text: &[u8], to: &mut [&mut User]) {
        let message = self.run(|c| c.encrypt(gid, text));
        for user in to {
            match user.process(&message) {
                Processed::Application { plaintext, .. } => assert_eq!(plaintext, text),
                other => panic!("not an application message: {other:?}"),
            }
        }
    }
}

/// The delivery service's state of one group and the rows it persisted.
struct Ds {
    group: DeliveryGroup,
    rows: Rows,
}

impl Ds {
    fn create(group_info: &[u8]) -> (Self, Registered) {
        let (group, (registered, changes)) = DeliveryGroup::create(group_info).unwrap();
        let mut rows = Rows::new();
        apply(&mut rows, changes);
        (Self { group, rows }, registered)
    }
    /// Verify and keep the change set; the state always equals the rows.
    fn verify(&mut self, message: &[u8], group_info: Option<&[u8]>) -> Result<Verified> {
        let (verified, changes) = self.group.verify(message, group_info)?;
        apply(&mut self.rows, changes);
        assert_eq!(self.group.stored(), self.stored_rows());
        Ok(verified)
    }
    fn commit(&mut self, out: &CommitOut) -> CommitVerified {
        match self.verify(&out.commit, Some(&out.group_info)).unwrap() {
            Verified::Commit(verified) => *verified,
            other => panic!("not a commit: {other:?}"),
        }
    }
    fn stored_rows(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.rows.clone().into_iter().collect()
    }
    fn state(&mut self) -> (u64, Vec<Vec<u8>>, Vec<u8>) {
        (
            self.group.epoch().unwrap(),
            self.group.members().unwrap(),
            self.group.ratchet_tree().unwrap(),
        )
    }
    /// `verify` fails with `kind`, and nothing changed: rows, state, tree.
    fn refuse(&mut self, message: &[u8], group_info: Option<&[u8]>, kind: ErrorKind) {
        let before = self.state();
        let err = self.verify(message, group_info).unwrap_err();
        assert_eq!(err.kind, kind, "{err}");
        assert_eq!(self.group.stored(), self.stored_rows());
        assert_eq!(self.state(), before);
    }
    fn restart(&mut self) {
        let gid = self.group.group_id().to_vec();
        self.group = DeliveryGroup::load(&gid, self.rows.clone()).unwrap();
    }
}

/// Alice creates a group registered with the delivery service, adds the
/// others in one commit the service verifies; everyone is at epoch 1.
fn group_with_ds(alice: &mut User, others: &mut [&mut User]) -> (Vec<u8>, Ds) {
    let (gid, group_info) = alice.create_group();
    let (mut ds, _) = Ds::create(&group_info);
    let kps: Vec<Vec<u8>> = others.iter_mut().map(|u| u.key_package()).collect();
    let out = alice.run(|c| c.add_members(&gid, &kps));
    ds.commit(&out);
    alice.merge(&gid);
    for user in others {
        user.join(out.welcome.as_deref().unwrap());
    }
    (gid, ds)
}

#[test]
fn two_members_talk_restart_and_reject_replays() {
    let mut alice = User::new();
    let mut bob = User::new();
    let (created, ch) = alice.client.create_group(None, suite::DEFAULT).unwrap();
    let gid = created.group_id;
    apply(&mut alice.rows, ch);
    let kp = bob.key_package();
    let (bundle, ch) = alice.client.add_members(&gid, &[kp]).unwrap();
    apply(&mut alice.rows, ch);
    assert_eq!(bundle.epoch, 0);
    let (applied, ch) = alice.client.merge_pending_commit(&gid).unwrap();
    apply(&mut alice.rows, ch);
    assert_eq!(applied.epoch, 1);
    let (joined, ch) = bob
        .client
        .join_from_welcome(&bundle.welcome.unwrap())
        .unwrap();
    apply(&mut bob.rows, ch);
    assert_eq!(joined.members.len(), 2);
    assert_eq!(joined.epoch, 1);
    assert_eq!(
        joined.inviter,
        alice.client.identity().public_key().to_vec()
    );

    let (ct, ch) = alice.client.encrypt(&gid, b"hi bob").unwrap();
    apply(&mut alice.rows, ch);
    bob.restart();
    let (out, ch) = bob.client.process(&ct).unwrap();
    apply(&mut bob.rows, ch);
    match out {
        Processed::Application {
            plaintext, sender, ..
        } => {
            assert_eq!(plaintext, b"hi bob");
            assert_eq!(sender, alice.client.identity().public_key().to_vec());
        }
        other => panic!("unexpected {other:?}"),
    }
    let before = bob.client.export_secret(&gid, "t", b"", 32).unwrap();
    let err = bob.client.process(&ct).unwrap_err();
    assert_eq!(err.kind, ErrorKind::ReplayedMessage, "{err}");
    assert_eq!(
        bob.client.export_secret(&gid, "t", b"", 32).unwrap(),
        before
    );
    assert_eq!(
        alice.client.export_secret(&gid, "t", b"", 32).unwrap(),
        before
    );
}

#[test]
fn leave_clears_proposal_queue() {
    let mut alice = User::new();
    let mut bob = User::new();
    let (created, ch) = alice
        .client
        .create_group(Some(b"g".to_vec()), suite::DEFAULT)
        .unwrap();
    let gid = created.group_id;
    apply(&mut alice.rows, ch);
    let kp = bob.key_package();
    let (bundle, ch) = alice.client.add_members(&gid, &[kp]).unwrap();
    apply(&mut alice.rows, ch);
    apply(
        &mut alice.rows,
        alice.client.merge_pending_commit(&gid).unwrap().1,
    );
    apply(
        &mut bob.rows,
        bob.client
            .join_from_welcome(&bundle.welcome.unwrap())
            .unwrap()
            .1,
    );

    let (proposal, ch) = bob.client.leave(&gid).unwrap();
    apply(&mut bob.rows, ch);
    let (out, ch) = alice.client.process(&proposal).unwrap();
    apply(&mut alice.rows, ch);
    assert!(matches!(out, Processed::Proposal { .. }));
    assert!(alice.rows.keys().any(|k| k.starts_with(b"QueuedProposal")));
    let (commit, ch) = alice.client.commit_pending_proposals(&gid).unwrap();
    apply(&mut alice.rows, ch);
    apply(
        &mut alice.rows,
        alice.client.merge_pending_commit(&gid).unwrap().1,
    );
    assert!(!alice.rows.keys().any(|k| k.starts_with(b"QueuedProposal")));
    assert!(
        !alice
            .rows
            .keys()
            .any(|k| k.starts_with(b"ProposalQueueRefs"))
    );
    let (out, ch) = bob.client.process(&commit.commit).unwrap();
    apply(&mut bob.rows, ch);
    match out {
        Processed::Commit(c) => assert!(c.self_removed),
        other => panic!("unexpected {other:?}"),
    }
    assert!(bob.client.group_ids().is_empty());
    assert_eq!(alice.client.members(&gid).unwrap().len(), 1);
}
