//! Engine tests without Python: the flows the binding relies on.

use std::collections::BTreeMap;

use crate::client::{Client, Processed};
use crate::errors::ErrorKind;
use crate::identity::Identity;
use crate::storage::Change;

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

struct User {
    client: Client,
    rows: Rows,
}

impl User {
    fn new() -> Self {
        Self {
            client: Client::new(Identity::generate().unwrap(), Vec::new()),
            rows: Rows::new(),
        }
    }
    fn key_package(&mut self) -> Vec<u8> {
        let (mut kps, ch) = self.client.create_key_packages(1, 3600, false).unwrap();
        apply(&mut self.rows, ch);
        kps.pop().unwrap()
    }
    fn restart(&mut self) {
        let id = Identity::from_secret(self.client.identity().secret_bytes().as_slice()).unwrap();
        self.client = Client::new(id, self.rows.clone());
    }
}

#[test]
fn two_members_talk_restart_and_reject_replays() {
    let mut alice = User::new();
    let mut bob = User::new();
    let (gid, ch) = alice.client.create_group(None).unwrap();
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
    let (gid, ch) = alice.client.create_group(Some(b"g".to_vec())).unwrap();
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
