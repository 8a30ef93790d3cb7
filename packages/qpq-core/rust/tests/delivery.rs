//! The delivery service's side (`DeliveryGroup`) against real clients:
//! round trips, refusals that change nothing, restarts, external resync.

use super::{Ds, User, group_with_ds};
use crate::client::{Client, load_group};
use crate::delivery::{DeliveryGroup, Verified};
use crate::errors::ErrorKind;
use crate::identity::Identity;
use openmls_traits::OpenMlsProvider;

/// The member's current GroupInfo without the ratchet_tree extension, which
/// a qpq client never sends but another RFC 9420 client may.
fn group_info_without_tree(user: &mut User, gid: &[u8]) -> Vec<u8> {
    let client = &mut user.client;
    let group = load_group(&mut client.groups, &client.provider, gid).unwrap();
    let message = group
        .export_group_info(client.provider.crypto(), &client.identity, false)
        .unwrap();
    message.to_bytes().unwrap()
}

#[test]
fn register_verify_and_follow_a_group_through_restarts() {
    let (mut alice, mut bob, mut carol) = (User::new(), User::new(), User::new());
    let (gid, group_info) = alice.create_group();
    let (mut ds, registered) = Ds::create(&group_info);
    assert_eq!(registered.group_id, gid);
    assert_eq!(registered.epoch, 0);
    assert_eq!(registered.members, vec![alice.key()]);
    assert_eq!(registered.signer, alice.key());

    let kps = vec![bob.key_package(), carol.key_package()];
    let out = alice.run(|c| c.add_members(&gid, &kps));
    assert_eq!(out.epoch, 0);
    let verified = ds.commit(&out);
    assert_eq!(verified.epoch, 1);
    assert_eq!(verified.summary.committer, alice.key());
    assert!(!verified.summary.external);
    assert_eq!(verified.summary.added, vec![bob.key(), carol.key()]);
    assert_eq!(verified.members, vec![alice.key(), bob.key(), carol.key()]);
    alice.merge(&gid);
    bob.join(out.welcome.as_deref().unwrap());
    carol.join(out.welcome.as_deref().unwrap());

    ds.restart();
    let out = bob.run(|c| c.self_update(&gid));
    let verified = ds.commit(&out);
    assert_eq!(
        (verified.epoch, verified.summary.committer.clone()),
        (2, bob.key())
    );
    assert!(verified.summary.added.is_empty() && verified.summary.removed.is_empty());
    let applied = bob.merge(&gid);
    assert_eq!(applied.summary.committer, bob.key());
    for user in [&mut alice, &mut carol] {
        let applied = user.applied(&out.commit);
        assert_eq!((applied.epoch, applied.summary.committer), (2, bob.key()));
    }

    // Carol leaves: her proposal is verified and stored, then committed by
    // reference; she is reported as removed and as having left.
    let proposal = carol.run(|c| c.leave(&gid));
    match ds.verify(&proposal, None).unwrap() {
        Verified::Proposal { sender, epoch, .. } => assert_eq!((sender, epoch), (carol.key(), 2)),
        other => panic!("not a proposal: {other:?}"),
    }
    ds.restart();
    alice.process(&proposal);
    bob.process(&proposal);
    let out = alice.run(|c| c.commit_pending_proposals(&gid));
    let verified = ds.commit(&out);
    assert_eq!(verified.summary.removed, vec![carol.key()]);
    assert_eq!(verified.summary.left, vec![carol.key()]);
    assert_eq!(verified.members, vec![alice.key(), bob.key()]);
    let applied = alice.merge(&gid);
    assert_eq!(applied.summary.left, vec![carol.key()]);
    let applied = bob.applied(&out.commit);
    assert_eq!(applied.summary.left, vec![carol.key()]);
    assert!(carol.applied(&out.commit).self_removed);

    // Alice removes Bob: removed, but he did not leave.
    let out = alice.run(|c| c.remove_members(&gid, &[bob.key()]));
    let verified = ds.commit(&out);
    assert_eq!(verified.summary.removed, vec![bob.key()]);
    assert!(verified.summary.left.is_empty());
    assert_eq!(ds.group.members().unwrap(), vec![alice.key()]);
    assert_eq!(ds.group.epoch().unwrap(), 4);
}

#[test]
fn refused_messages_change_nothing() {
    let (mut alice, mut bob, mut carol) = (User::new(), User::new(), User::new());
    let (gid, mut ds) = group_with_ds(&mut alice, &mut [&mut bob, &mut carol]);

    // Two commits race for epoch 1; Bob's wins. Bob also made and dropped
    // one before: same signer and epoch, another tree.
    let losing = alice.run(|c| c.self_update(&gid));
    let dropped = bob.run(|c| c.self_update(&gid));
    bob.run(|c| c.clear_pending_commit(&gid));
    let winning = bob.run(|c| c.self_update(&gid));
    let current = bob.client.export_group_info(&gid).unwrap();
    for group_info in [&dropped.group_info, &current] {
        ds.refuse(&winning.commit, Some(group_info), ErrorKind::InvalidMessage);
    }
    ds.refuse(&winning.commit, None, ErrorKind::InvalidMessage);
    // Signed by Alice, not by the committer.
    ds.refuse(
        &winning.commit,
        Some(&losing.group_info),
        ErrorKind::InvalidSignature,
    );
    ds.refuse(
        &winning.commit,
        Some(b"garbage"),
        ErrorKind::MalformedMessage,
    );
    ds.refuse(
        &winning.commit,
        Some(&winning.commit),
        ErrorKind::MalformedMessage,
    );
    // The signature is the 64 bytes before the confirmation and membership
    // tags (33 bytes each, with their length).
    let mut forged = winning.commit.clone();
    let at = forged.len() - 66 - 10;
    forged[at] ^= 0x01;
    ds.refuse(
        &forged,
        Some(&winning.group_info),
        ErrorKind::InvalidSignature,
    );
    let application = alice.run(|c| c.encrypt(&gid, b"private"));
    ds.refuse(&application, None, ErrorKind::InvalidMessage);
    ds.refuse(b"\x00\x01garbage", None, ErrorKind::MalformedMessage);
    let proposal = carol.client.leave(&gid).unwrap().0;
    ds.refuse(
        &proposal,
        Some(&winning.group_info),
        ErrorKind::InvalidArgument,
    );

    ds.commit(&winning);
    // Now the losing commit, the winning one again: a past epoch.
    ds.refuse(
        &losing.commit,
        Some(&losing.group_info),
        ErrorKind::WrongEpoch,
    );
    ds.refuse(
        &winning.commit,
        Some(&winning.group_info),
        ErrorKind::WrongEpoch,
    );
    bob.merge(&gid);
    alice.run(|c| c.clear_pending_commit(&gid));
    alice.applied(&winning.commit);
    carol.applied(&winning.commit);

    // A future epoch: Bob merges a commit the service never saw and commits
    // again.
    let unseen = bob.run(|c| c.self_update(&gid));
    bob.merge(&gid);
    let future = bob.run(|c| c.self_update(&gid));
    ds.refuse(
        &future.commit,
        Some(&future.group_info),
        ErrorKind::WrongEpoch,
    );

    // Another group's commit.
    let mut dave = User::new();
    let (other, _) = dave.create_group();
    let foreign = dave.run(|c| c.self_update(&other));
    ds.refuse(
        &foreign.commit,
        Some(&foreign.group_info),
        ErrorKind::WrongGroup,
    );

    // Nothing above changed the state: the commit Bob made first verifies.
    ds.restart();
    let verified = ds.commit(&unseen);
    assert_eq!(verified.epoch, 3);
}

#[test]
fn commits_by_non_members_and_removed_members_are_refused() {
    let (mut alice, mut bob, mut carol) = (User::new(), User::new(), User::new());
    let (gid, mut ds) = group_with_ds(&mut alice, &mut [&mut bob, &mut carol]);

    // Eve holds a group with the same id at the same epoch; her commit
    // claims leaf 0 (Alice's) but is signed by Eve.
    let mut eve = User::new();
    let eve_gid = eve
        .run(|c| c.create_group(Some(gid.clone()), crate::suite::DEFAULT))
        .group_id;
    eve.run(|c| c.self_update(&eve_gid));
    eve.merge(&eve_gid);
    let fake = eve.run(|c| c.self_update(&eve_gid));
    assert_eq!(fake.epoch, 1);
    ds.refuse(
        &fake.commit,
        Some(&fake.group_info),
        ErrorKind::InvalidSignature,
    );

    // Alice removes Carol (leaf 2). Carol, from a group of her own with the
    // same id where she sits at leaf 2, commits at the current epoch.
    let removal = alice.run(|c| c.remove_members(&gid, &[carol.key()]));
    ds.commit(&removal);
    alice.merge(&gid);
    bob.applied(&removal.commit);
    let mut mallory = User::new();
    let mut filler = User::new();
    let mut carol2 = User {
        client: Client::new(
            Identity::from_secret(carol.client.identity().secret_bytes().as_slice()).unwrap(),
            Vec::new(),
        ),
        rows: Default::default(),
        suite: crate::suite::DEFAULT,
    };
    let fake_gid = mallory
        .run(|c| c.create_group(Some(gid.clone()), crate::suite::DEFAULT))
        .group_id;
    let kps = vec![filler.key_package(), carol2.key_package()];
    let add = mallory.run(|c| c.add_members(&fake_gid, &kps));
    mallory.merge(&fake_gid);
    carol2.join(add.welcome.as_deref().unwrap());
    carol2.run(|c| c.self_update(&fake_gid));
    carol2.merge(&fake_gid);
    let fake = carol2.run(|c| c.self_update(&fake_gid));
    assert_eq!(fake.epoch, ds.group.epoch().unwrap());
    ds.refuse(&fake.commit, Some(&fake.group_info), ErrorKind::NotAMember);
}

#[test]
fn a_member_who_fell_behind_rejoins_by_external_commit() {
    let (mut alice, mut bob, mut carol) = (User::new(), User::new(), User::new());
    let (gid, mut ds) = group_with_ds(&mut alice, &mut [&mut bob, &mut carol]);
    // Carol misses two commits.
    for _ in 0..2 {
        let out = alice.run(|c| c.self_update(&gid));
        ds.commit(&out);
        alice.merge(&gid);
        bob.applied(&out.commit);
    }
    assert_eq!(carol.client.epoch(&gid).unwrap(), 1);

    // The GroupInfo carries the tree here; the one without it needs the
    // delivery service's tree.
    let without_tree = group_info_without_tree(&mut alice, &gid);
    let err = carol.client.rejoin(&gid, &without_tree, b"").unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    let tree = ds.group.ratchet_tree().unwrap();
    let out = carol.run(|c| c.rejoin(&gid, &without_tree, &tree));
    assert_eq!(out.epoch, 3);
    assert!(out.welcome.is_none());
    assert!(carol.client.has_pending_commit(&gid).unwrap());
    let err = carol.client.encrypt(&gid, b"too early").unwrap_err();
    assert_eq!(err.kind, ErrorKind::CommitConflict);

    // Bob commits first: the service refuses Carol's external commit, she
    // clears it (the group goes) and rejoins from the newer GroupInfo.
    let racing = bob.run(|c| c.self_update(&gid));
    ds.commit(&racing);
    bob.merge(&gid);
    alice.applied(&racing.commit);
    ds.refuse(&out.commit, Some(&out.group_info), ErrorKind::WrongEpoch);
    carol.run(|c| c.clear_pending_commit(&gid));
    assert!(carol.client.group_ids().is_empty());

    let out = carol.run(|c| c.rejoin(&gid, &racing.group_info, b""));
    let verified = ds.commit(&out);
    assert!(verified.summary.external);
    assert_eq!(verified.summary.committer, carol.key());
    assert!(verified.summary.added.is_empty() && verified.summary.removed.is_empty());
    assert_eq!(verified.members.len(), 3);
    let applied = carol.merge(&gid);
    assert!(applied.summary.external);
    assert_eq!(applied.epoch, 5);
    for user in [&mut alice, &mut bob] {
        let applied = user.applied(&out.commit);
        assert!(applied.summary.external);
        assert_eq!(applied.summary.committer, carol.key());
        assert!(applied.summary.removed.is_empty());
    }
    carol.restart();
    let secret = carol.secret(&gid);
    assert_eq!(alice.secret(&gid), secret);
    assert_eq!(bob.secret(&gid), secret);
    carol.send(&gid, b"back again", &mut [&mut alice, &mut bob]);
    alice.send(&gid, b"welcome back", &mut [&mut bob, &mut carol]);
    // The service keeps following: the next commit verifies.
    let out = carol.run(|c| c.self_update(&gid));
    ds.commit(&out);
}

#[test]
fn only_members_rejoin() {
    let (mut alice, mut bob) = (User::new(), User::new());
    let (gid, _ds) = group_with_ds(&mut alice, &mut [&mut bob]);
    let group_info = alice.client.export_group_info(&gid).unwrap();
    let mut dave = User::new();
    let err = dave.client.rejoin(&gid, &group_info, b"").unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotAMember, "{err}");
    let err = dave.client.rejoin(b"other", &group_info, b"").unwrap_err();
    assert_eq!(err.kind, ErrorKind::WrongGroup, "{err}");
    assert!(dave.client.group_ids().is_empty());
}

#[test]
fn load_and_create_refuse_what_holds_no_group() {
    let mut alice = User::new();
    let (gid, group_info) = alice.create_group();
    let (ds, _) = Ds::create(&group_info);
    let err = DeliveryGroup::load(b"other", ds.rows.clone())
        .err()
        .unwrap();
    assert_eq!(err.kind, ErrorKind::StateCorrupt);
    let err = DeliveryGroup::load(&gid, Vec::new()).err().unwrap();
    assert_eq!(err.kind, ErrorKind::StateCorrupt);
    // A GroupInfo without its tree, or no GroupInfo at all.
    let without_tree = group_info_without_tree(&mut alice, &gid);
    let err = DeliveryGroup::create(&without_tree).err().unwrap();
    assert_eq!(err.kind, ErrorKind::InvalidMessage, "{err}");
    let key_package = alice.key_package();
    let err = DeliveryGroup::create(&key_package).err().unwrap();
    assert_eq!(err.kind, ErrorKind::MalformedMessage, "{err}");
}
