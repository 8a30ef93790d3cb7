//! Linked devices: a device whose leaves carry a certificate by its account
//! key is a member like any other, per device key, and every member reads
//! the account its leaves belong to.

use super::{User, group_with_ds};
use crate::client::{Client, Processed};
use crate::errors::ErrorKind;
use crate::identity::Identity;

/// A second device of `account`'s owner, its certificate signed by `account`.
fn linked_device(account: &Identity, name: &str) -> User {
    let device = Identity::generate().unwrap();
    let cert = crate::certificate::issue(account, &device.public_key(), name, 1).unwrap();
    let mut user = User::new();
    user.client = Client::new(device.with_certificate(&cert).unwrap(), Vec::new());
    user
}

#[test]
fn a_linked_device_joins_sends_and_names_its_account() {
    let mut alice = User::new();
    let mut bob = User::new();
    let bob_account = bob.client.identity().clone();
    let mut bob_phone = linked_device(&bob_account, "phone");
    let (gid, mut ds) = group_with_ds(&mut alice, &mut [&mut bob, &mut bob_phone]);

    let members = ds.group.members().unwrap();
    assert!(members.contains(&bob_phone.key()));
    let accounts = alice.client.member_accounts(&gid).unwrap();
    let roster = alice.client.members(&gid).unwrap();
    let phone_at = roster.iter().position(|k| *k == bob_phone.key()).unwrap();
    assert_eq!(accounts[phone_at], bob_account.public_key().to_vec());
    assert_eq!(
        bob_phone.client.identity().account_key(),
        bob_account.public_key()
    );

    // The phone's messages name its device key; it survives a restart.
    bob_phone.restart();
    let message = bob_phone.run(|c| c.encrypt(&gid, b"from the phone"));
    match alice.process(&message) {
        Processed::Application { sender, .. } => assert_eq!(sender, bob_phone.key()),
        other => panic!("not an application message: {other:?}"),
    }
    bob.process(&message);

    // Its KeyPackages carry the certificate: the directory reads the account.
    let kp = bob_phone.key_package();
    let info = crate::keypackage::validate_key_package(&kp, None, 3600 * 24 * 90).unwrap();
    assert_eq!(info.identity_key, bob_phone.key());
    assert_eq!(info.account_key, bob_account.public_key().to_vec());
}

#[test]
fn a_certificate_for_another_key_is_refused() {
    let account = Identity::generate().unwrap();
    let device = Identity::generate().unwrap();
    let other = Identity::generate().unwrap();
    let cert = crate::certificate::issue(&account, &other.public_key(), "x", 1).unwrap();
    let err = device.with_certificate(&cert).unwrap_err();
    assert_eq!(err.kind, crate::errors::ErrorKind::InvalidIdentity);
}

#[test]
fn a_new_device_of_a_member_account_joins_by_external_commit() {
    let (mut alice, mut bob) = (User::new(), User::new());
    let bob_account = bob.client.identity().clone();
    let (gid, mut ds) = group_with_ds(&mut alice, &mut [&mut bob]);
    // A restored backup: a new key of bob's account, in no group yet.
    let mut restored = linked_device(&bob_account, "restored");
    let group_info = alice.client.export_group_info(&gid).unwrap();
    let out = restored.run(|c| c.rejoin(&gid, &group_info, b""));
    let verified = ds.commit(&out);
    assert!(verified.summary.external);
    assert_eq!(verified.summary.committer, restored.key());
    assert_eq!(verified.summary.added, vec![restored.key()]);
    assert!(verified.summary.removed.is_empty());
    assert_eq!(verified.members.len(), 3);
    restored.merge(&gid);
    for user in [&mut alice, &mut bob] {
        let applied = user.applied(&out.commit);
        assert!(applied.summary.external);
        assert_eq!(applied.summary.added, vec![restored.key()]);
    }
    let accounts = alice.client.member_accounts(&gid).unwrap();
    assert_eq!(
        accounts
            .iter()
            .filter(|a| **a == bob_account.public_key().to_vec())
            .count(),
        2
    );
    restored.send(&gid, b"back on a new key", &mut [&mut alice, &mut bob]);
    alice.send(&gid, b"hello", &mut [&mut bob, &mut restored]);
    // Its later resync replaces its own leaf, adding nobody.
    let group_info = alice.client.export_group_info(&gid).unwrap();
    let out = restored.run(|c| c.rejoin(&gid, &group_info, b""));
    let verified = ds.commit(&out);
    assert!(verified.summary.added.is_empty());
    assert_eq!(verified.members.len(), 3);
}

#[test]
fn a_device_of_another_account_cannot_rejoin() {
    let (mut alice, mut bob) = (User::new(), User::new());
    let (gid, _ds) = group_with_ds(&mut alice, &mut [&mut bob]);
    let dave = Identity::generate().unwrap();
    let mut daves_laptop = linked_device(&dave, "laptop");
    let group_info = alice.client.export_group_info(&gid).unwrap();
    let err = daves_laptop
        .client
        .rejoin(&gid, &group_info, b"")
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotAMember, "{err}");
    assert!(daves_laptop.client.group_ids().is_empty());
}
