//! GroupInfo facts and what members check that the delivery service cannot:
//! a commit's GroupInfo with a forged `external_pub` passes the service, its
//! facts differ from every member's own, and a member's replacement passes;
//! a Welcome made for a last-resort KeyPackage joins once.

use openmls::messages::group_info::GroupInfo;
use openmls::prelude::{
    Extension, Extensions, ExternalPubExtension, SignContent, UnknownExtension, Verifiable,
};
use openmls_traits::signatures::Signer;
use tls_codec::{Serialize, VLBytes};

use super::{Ds, User, group_with_ds};
use crate::client::Processed;
use crate::errors::ErrorKind;
use crate::group_info;
use crate::identity::Identity;

/// `group_info` (an MLSMessage) with its extensions replaced by `extensions`,
/// re-signed by `signer`: what a hostile committer can send, since it holds
/// its own signing key.
fn resigned(group_info: &[u8], signer: &Identity, extensions: Extensions<GroupInfo>) -> Vec<u8> {
    let parsed = group_info::parse(group_info).unwrap();
    let payload = parsed.unsigned_payload().unwrap();
    let context = parsed.group_context().tls_serialize_detached().unwrap();
    let old = parsed.extensions().tls_serialize_detached().unwrap();
    let mut forged = context.clone();
    forged.extend(extensions.tls_serialize_detached().unwrap());
    forged.extend(&payload[context.len() + old.len()..]);
    let to_sign = SignContent::new("GroupInfoTBS", forged.clone().into())
        .tls_serialize_detached()
        .unwrap();
    let signature = signer.sign(&to_sign).unwrap();
    let mut message = vec![0, 1, 0, 4]; // mls10, mls_group_info (RFC 9420 §6)
    message.extend(forged);
    message.extend(VLBytes::new(signature).tls_serialize_detached().unwrap());
    message
}

/// `group_info` with its `external_pub` replaced by a key of our choosing.
fn with_external_pub(group_info: &[u8], signer: &Identity, key: &[u8]) -> Vec<u8> {
    let mut extensions = group_info::parse(group_info).unwrap().extensions().clone();
    extensions
        .add_or_replace(Extension::ExternalPub(ExternalPubExtension::new(
            key.to_vec().into(),
        )))
        .unwrap();
    resigned(group_info, signer, extensions)
}

fn facts_of(group_info: &[u8]) -> group_info::Facts {
    group_info::facts(
        &group_info::parse(group_info).unwrap(),
        &openmls_rust_crypto::RustCrypto::default(),
    )
    .unwrap()
}

#[test]
fn every_member_derives_the_facts_of_the_commits_group_info() {
    let (mut alice, mut bob, mut carol) = (User::new(), User::new(), User::new());
    let (gid, mut ds) = group_with_ds(&mut alice, &mut [&mut bob, &mut carol]);
    let out = bob.run(|c| c.self_update(&gid));
    let verified = ds.commit(&out);
    bob.merge(&gid);
    alice.applied(&out.commit);
    carol.applied(&out.commit);
    let served = facts_of(&out.group_info);
    assert_eq!(verified.group_info, served);
    assert_eq!(served.epoch, 2);
    assert_eq!(served.group_id, gid);
    for user in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(user.client.group_info_facts(&gid).unwrap(), served);
    }
    // Another epoch, other facts.
    let out = carol.run(|c| c.self_update(&gid));
    ds.commit(&out);
    carol.merge(&gid);
    assert_ne!(
        carol.client.group_info_facts(&gid).unwrap().digest,
        served.digest
    );
}

#[test]
fn a_forged_external_pub_passes_the_service_and_no_member_and_a_member_replaces_it() {
    let (mut alice, mut bob, mut carol) = (User::new(), User::new(), User::new());
    let (gid, mut ds) = group_with_ds(&mut alice, &mut [&mut bob, &mut carol]);
    let mallory = Identity::from_secret(bob.client.identity().secret_bytes().as_slice()).unwrap();
    let out = bob.run(|c| c.self_update(&gid));
    let forged = with_external_pub(&out.group_info, &mallory, &[7u8; 32]);
    // What the service cannot see: it verifies and keeps the forged one.
    let verified = match ds.verify(&out.commit, Some(&forged)).unwrap() {
        crate::delivery::Verified::Commit(v) => *v,
        other => panic!("not a commit: {other:?}"),
    };
    bob.merge(&gid);
    alice.applied(&out.commit);
    let own = alice.client.group_info_facts(&gid).unwrap();
    assert_eq!(verified.group_info.context_hash, own.context_hash);
    assert_ne!(verified.group_info.external_pub, own.external_pub);
    assert_ne!(verified.group_info.digest, own.digest);

    // Alice's own GroupInfo replaces it; it is what the epoch really is.
    let replacement = alice.client.export_group_info(&gid).unwrap();
    let checked = ds
        .group
        .check_group_info(&replacement, &alice.key())
        .unwrap();
    assert_eq!(checked, own);
    assert_eq!(carol.applied(&out.commit).epoch, 2);
    assert_eq!(carol.client.group_info_facts(&gid).unwrap(), checked);

    // Signed by alice but offered as carol's; a forged key; another
    // extension; a stale epoch: all refused, the state unchanged.
    let before = ds.state();
    let err = ds
        .group
        .check_group_info(&replacement, &carol.key())
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidSignature, "{err}");
    let alice_id =
        Identity::from_secret(alice.client.identity().secret_bytes().as_slice()).unwrap();
    let forged_by_alice = with_external_pub(&replacement, &alice_id, &[9u8; 32]);
    let accepted = ds
        .group
        .check_group_info(&forged_by_alice, &alice.key())
        .unwrap();
    assert_ne!(
        accepted.digest, own.digest,
        "the service cannot tell a forged key"
    );
    let parsed = group_info::parse(&replacement).unwrap();
    let mut extra = parsed.extensions().clone();
    extra
        .add(Extension::Unknown(0xff01, UnknownExtension(vec![1, 2, 3])))
        .unwrap();
    let err = ds
        .group
        .check_group_info(&resigned(&replacement, &alice_id, extra), &alice.key())
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidMessage, "{err}");
    assert_eq!(ds.state(), before);
    let next = carol.run(|c| c.self_update(&gid));
    ds.commit(&next);
    let err = ds
        .group
        .check_group_info(&replacement, &alice.key())
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::WrongEpoch, "{err}");
}

#[test]
fn a_welcome_for_the_last_resort_package_joins_once() {
    let (mut alice, mut bob) = (User::new(), User::new());
    let (gid, group_info) = alice.create_group();
    let (mut ds, _) = Ds::create(&group_info);
    let (mut kps, changes) = bob
        .client
        .create_key_packages(1, 3600, true, crate::suite::DEFAULT)
        .unwrap();
    super::apply(&mut bob.rows, changes);
    let last_resort = kps.pop().unwrap();
    let out = alice.run(|c| c.add_members(&gid, &[last_resort]));
    ds.commit(&out);
    alice.merge(&gid);
    let welcome = out.welcome.unwrap();
    let joined = bob.run(|c| c.join_from_welcome(&welcome));
    assert!(joined.last_resort);
    assert_eq!(joined.facts, alice.client.group_info_facts(&gid).unwrap());
    // Removed, then the same Welcome again: its keys are gone.
    let removal = alice.run(|c| c.remove_members(&gid, &[bob.key()]));
    ds.commit(&removal);
    alice.merge(&gid);
    match bob.process(&removal.commit) {
        Processed::Commit(applied) => assert!(applied.self_removed),
        other => panic!("not a commit: {other:?}"),
    }
    bob.restart();
    let err = bob.client.join_from_welcome(&welcome).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotAMember, "{err}");
}

#[test]
fn an_ordinary_welcome_is_not_last_resort() {
    let (mut alice, mut bob) = (User::new(), User::new());
    let (gid, _) = alice.create_group();
    let kp = bob.key_package();
    let out = alice.run(|c| c.add_members(&gid, &[kp]));
    alice.merge(&gid);
    let joined = bob.run(|c| c.join_from_welcome(out.welcome.as_deref().unwrap()));
    assert!(!joined.last_resort);
}
