//! The two suites side by side: an X-Wing group does everything a group of
//! the default suite does, with the delivery service following it; a
//! KeyPackage of the other suite is refused by the adder, by a plain OpenMLS
//! committer's peers and by the service; and the default suite's leaves are
//! the bytes the build before X-Wing made (tests/fixtures/before_xwing.json).

use openmls::prelude::*;
use tls_codec::Serialize as _;

use super::interop::Plain;
use super::{User, group_with_ds};
use crate::errors::ErrorKind;
use crate::{keypackage, suite};

fn xwing() -> User {
    User::with_suite(suite::XWING)
}

#[test]
fn an_xwing_group_talks_grows_shrinks_and_restarts_with_the_service() {
    let (mut alice, mut bob, mut carol) = (xwing(), xwing(), xwing());
    let (gid, mut ds) = group_with_ds(&mut alice, &mut [&mut bob, &mut carol]);
    assert_eq!(alice.client.group_suite(&gid).unwrap(), suite::XWING);
    assert_eq!(bob.client.group_suite(&gid).unwrap(), suite::XWING);
    assert_eq!(ds.group.ciphersuite().unwrap(), suite::XWING);
    alice.send(&gid, b"from alice", &mut [&mut bob, &mut carol]);
    bob.send(&gid, b"from bob", &mut [&mut alice, &mut carol]);
    carol.send(&gid, b"from carol", &mut [&mut alice, &mut bob]);

    // A path update re-encrypts to every subtree with X-Wing HPKE.
    let update = bob.run(|c| c.self_update(&gid));
    ds.commit(&update);
    bob.merge(&gid);
    alice.applied(&update.commit);
    carol.applied(&update.commit);

    let removal = alice.run(|c| c.remove_members(&gid, &[carol.key()]));
    ds.commit(&removal);
    alice.merge(&gid);
    bob.applied(&removal.commit);
    ds.restart();
    assert_eq!(ds.group.ciphersuite().unwrap(), suite::XWING);
    assert_eq!(ds.group.members().unwrap(), vec![alice.key(), bob.key()]);
    assert_eq!(alice.secret(&gid), bob.secret(&gid));
    alice.send(&gid, b"after carol", &mut [&mut bob]);
    let err = carol
        .client
        .process(&alice.run(|c| c.encrypt(&gid, b"not for carol")))
        .unwrap_err();
    assert_ne!(err.kind, ErrorKind::Internal, "{err}");

    // A restarted member loads its X-Wing state from its rows.
    bob.client = crate::client::Client::new(
        crate::identity::Identity::from_secret(bob.client.identity().secret_bytes().as_ref())
            .unwrap(),
        bob.rows.clone(),
    );
    assert_eq!(bob.client.group_suite(&gid).unwrap(), suite::XWING);
    alice.send(&gid, b"after restart", &mut [&mut bob]);
}

#[test]
fn a_member_who_fell_behind_rejoins_an_xwing_group_by_external_commit() {
    let (mut alice, mut bob, mut carol) = (xwing(), xwing(), xwing());
    let (gid, mut ds) = group_with_ds(&mut alice, &mut [&mut bob, &mut carol]);
    let out = alice.run(|c| c.self_update(&gid));
    ds.commit(&out);
    alice.merge(&gid);
    bob.applied(&out.commit);
    // Carol missed it: she rejoins from the served GroupInfo, encrypting to
    // the group's X-Wing external_pub, and gets a leaf of the group's suite.
    let rejoin = carol.run(|c| c.rejoin(&gid, &out.group_info, b""));
    let verified = ds.commit(&rejoin);
    assert!(verified.summary.external);
    carol.merge(&gid);
    alice.applied(&rejoin.commit);
    bob.applied(&rejoin.commit);
    assert_eq!(carol.client.group_suite(&gid).unwrap(), suite::XWING);
    assert_eq!(alice.secret(&gid), carol.secret(&gid));
    carol.send(&gid, b"back", &mut [&mut alice, &mut bob]);
}

#[test]
fn xwing_key_packages_validate_with_their_suite_and_are_larger() {
    let mut bob = xwing();
    let mut dave = User::new();
    let (pq, default) = (bob.key_package(), dave.key_package());
    let info =
        keypackage::validate_key_package(&pq, None, keypackage::MAX_LIFETIME_SECONDS).unwrap();
    assert_eq!(info.ciphersuite, u16::from(suite::XWING));
    assert_eq!(info.identity_key, bob.key());
    let info =
        keypackage::validate_key_package(&default, None, keypackage::MAX_LIFETIME_SECONDS).unwrap();
    assert_eq!(info.ciphersuite, u16::from(suite::DEFAULT));
    // ML-KEM-768's public key alone is 1184 bytes, twice (init and leaf key).
    assert!(
        pq.len() > default.len() + 2 * 1184,
        "{} {}",
        pq.len(),
        default.len()
    );
    let err = User::with_suite(Ciphersuite::MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448)
        .client
        .create_key_packages(
            1,
            3600,
            false,
            Ciphersuite::MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448,
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnsupportedCiphersuite, "{err}");
    let err = bob
        .client
        .create_group(None, Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnsupportedCiphersuite, "{err}");
}

#[test]
fn a_key_package_of_the_other_suite_is_refused_by_the_adder() {
    for (group_suite, other) in [
        (suite::DEFAULT, suite::XWING),
        (suite::XWING, suite::DEFAULT),
    ] {
        let mut alice = User::with_suite(group_suite);
        let mut bob = User::with_suite(other);
        let (gid, _) = alice.create_group();
        let rows = alice.rows.clone();
        let err = alice
            .client
            .add_members(&gid, &[bob.key_package()])
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidKeyPackage, "{err}");
        assert!(err.message.contains("cannot join a group of"), "{err}");
        assert_eq!(alice.rows, rows);
        assert!(!alice.client.has_pending_commit(&gid).unwrap());
    }
}

/// opaque<V> (RFC 9420 §2.1.2).
fn vl(data: &[u8]) -> Vec<u8> {
    tls_codec::VLBytes::new(data.to_vec())
        .tls_serialize_detached()
        .unwrap()
}

/// A commit by `plain`'s leaf adding `key_package` (MLSMessage bytes) to its
/// group, framed and signed by hand (RFC 9420 §6.1, §6.2, §12.4), since
/// OpenMLS refuses to build one whose KeyPackage is of another suite
/// (ValSem105). Its signature is valid; its confirmation and membership
/// tags are random, which the service cannot check anyway (it holds no
/// epoch secrets) and a member refuses before them.
fn forged_add(plain: &mut Plain, key_package: &[u8]) -> Vec<u8> {
    plain.with(|group, _, identity| {
        let context = group.public_group().group_context();
        let leaf = group.own_leaf_index().u32();
        let mut content = vl(context.group_id().as_slice());
        content.extend(context.epoch().as_u64().to_be_bytes());
        content.push(1); // sender_type member
        content.extend(leaf.to_be_bytes());
        content.extend(vl(b"")); // authenticated_data
        content.push(3); // content_type commit
        // ProposalOrRef{proposal, Add{key_package}}: the KeyPackage without
        // its MLSMessage header (version, wire format).
        let mut proposal = vec![1, 0, 1];
        proposal.extend(&key_package[4..]);
        content.extend(vl(&proposal));
        content.push(0); // no path
        let mut tbs = vec![0, 1, 0, 1]; // mls10, mls_public_message
        tbs.extend(&content);
        tbs.extend(context.tls_serialize_detached().unwrap());
        let mut sign_content = vl(b"MLS 1.0 FramedContentTBS");
        sign_content.extend(vl(&tbs));
        let signature = identity.sign_bytes(&sign_content);
        let mut message = vec![0, 1, 0, 1];
        message.extend(&content);
        message.extend(vl(&signature));
        message.extend(vl(&[7; 32])); // confirmation_tag
        message.extend(vl(&[9; 32])); // membership_tag
        message
    })
}

#[test]
fn a_commit_adding_a_key_package_of_the_other_suite_is_refused_by_the_service() {
    let mut alice = User::new();
    let mut plain = Plain::new();
    let (gid, mut ds) = super::interop::group_with_plain(&mut alice, &mut plain);
    // The same forgery with a KeyPackage of the group's suite passes
    // OpenMLS's checks (framing, signature): the service only misses the
    // GroupInfo of the new epoch. So the forging is right and only the
    // suite differs below.
    let good = forged_add(&mut plain, &User::new().key_package());
    let err = ds.group.verify(&good, None).unwrap_err();
    assert!(err.message.contains("needs the GroupInfo"), "{err}");

    let forged = forged_add(&mut plain, &xwing().key_package());
    let group_info = alice.client.export_group_info(&gid).unwrap();
    ds.refuse(&forged, Some(&group_info), ErrorKind::InvalidMessage);
    let err = ds.group.verify(&forged, Some(&group_info)).unwrap_err();
    assert!(err.message.contains("iphersuite"), "{err}");
    ds.restart();
    assert_eq!(ds.group.members().unwrap(), vec![alice.key(), plain.key()]);

    // A member refuses it too (here already for its membership tag, which
    // only members can compute; OpenMLS's ValSem105 comes next), unchanged.
    let rows = alice.rows.clone();
    assert!(alice.client.process(&forged).is_err());
    assert_eq!(alice.rows, rows);
}

/// `data` holds `capabilities`, TLS-serialized.
fn holds(data: &[u8], capabilities: &Capabilities) -> bool {
    let wanted = capabilities.tls_serialize_detached().unwrap();
    data.windows(wanted.len()).any(|w| w == wanted.as_slice())
}

fn fixture(name: &str) -> Vec<u8> {
    let data: serde_json::Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/before_xwing.json"
    )))
    .unwrap();
    let hex = data[name].as_str().unwrap();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn default_suite_leaves_are_the_bytes_the_build_before_xwing_made() {
    // Carol's KeyPackage was made by the build before X-Wing; ours now has
    // the same leaf capabilities and the same size (every other field is a
    // fixed-size key, signature or lifetime).
    let before = fixture("carol_key_package");
    let now = User::new().key_package();
    let caps = suite::key_package_capabilities(suite::DEFAULT);
    assert!(holds(&before, &caps) && holds(&now, &caps));
    assert_eq!(now.len(), before.len());

    // A group creator's leaf: the capabilities a default-suite leaf has
    // always advertised (0x0001, 0x0002, 0x0003, OpenMLS's list without its
    // pq feature), in the old epoch-0 GroupInfo and in ours, same size.
    let caps = suite::leaf_capabilities(suite::DEFAULT);
    let before = fixture("epoch_0_group_info");
    let (_, now) = User::new().create_group();
    assert!(holds(&before, &caps) && holds(&now, &caps));
    assert_eq!(now.len(), before.len());
}
