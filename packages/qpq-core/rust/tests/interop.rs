//! A member running plain OpenMLS (its own in-memory provider, default
//! settings but PublicMessage handshakes) in a qpq group: its commits are
//! processed by `Client` and verified by `DeliveryGroup`, and what qpq's
//! policy refuses it can craft, so both sides are tested to refuse it.

use openmls::prelude::*;
use openmls::schedule::PreSharedKeyId;
use openmls_rust_crypto::OpenMlsRustCrypto;

use super::{Ds, User, group_with_ds};
use crate::CIPHERSUITE;
use crate::errors::ErrorKind;
use crate::framing::peek_message;
use crate::identity::Identity;

pub(super) struct Plain {
    provider: OpenMlsRustCrypto,
    identity: Identity,
    group: Option<MlsGroup>,
}

fn bytes(message: &MlsMessageOut) -> Vec<u8> {
    message.to_bytes().unwrap()
}

fn parse(data: &[u8]) -> MlsMessageBodyIn {
    MlsMessageIn::tls_deserialize_exact_bytes(data)
        .unwrap()
        .extract()
}

impl Plain {
    pub(super) fn new() -> Self {
        Self {
            provider: OpenMlsRustCrypto::default(),
            identity: Identity::generate().unwrap(),
            group: None,
        }
    }
    pub(super) fn key(&self) -> Vec<u8> {
        self.identity.public_key().to_vec()
    }
    fn key_package(&self) -> Vec<u8> {
        let bundle = KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.identity,
                self.identity.credential_with_key(),
            )
            .unwrap();
        bytes(&MlsMessageOut::from(bundle.key_package().clone()))
    }
    /// OpenMLS's default join configuration, but handshakes as PublicMessage.
    fn join(&mut self, welcome: &[u8]) {
        let MlsMessageBodyIn::Welcome(welcome) = parse(welcome) else {
            panic!("not a Welcome");
        };
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .build();
        let group = StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None)
            .unwrap()
            .into_group(&self.provider)
            .unwrap();
        self.group = Some(group);
    }
    /// Run `f` on the group with the provider and signer.
    pub(super) fn with<T>(
        &mut self,
        f: impl FnOnce(&mut MlsGroup, &OpenMlsRustCrypto, &Identity) -> T,
    ) -> T {
        f(self.group.as_mut().unwrap(), &self.provider, &self.identity)
    }
    fn process(&mut self, message: &[u8]) -> ProcessedMessageContent {
        let protocol = MlsMessageIn::tls_deserialize_exact_bytes(message)
            .unwrap()
            .try_into_protocol_message()
            .unwrap();
        let provider = &self.provider;
        let group = self.group.as_mut().unwrap();
        let processed = group.process_message(provider, protocol).unwrap();
        match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                group.merge_staged_commit(provider, *staged).unwrap();
                ProcessedMessageContent::OwnPendingCommit
            }
            other => other,
        }
    }
    /// Merge our pending commit and export the new epoch's GroupInfo.
    fn merge(&mut self) -> Vec<u8> {
        let provider = &self.provider;
        let group = self.group.as_mut().unwrap();
        group.merge_pending_commit(provider).unwrap();
        bytes(
            &group
                .export_group_info(provider.crypto(), &self.identity, true)
                .unwrap(),
        )
    }
    fn secret(&mut self) -> Vec<u8> {
        let provider = &self.provider;
        self.group
            .as_ref()
            .unwrap()
            .export_secret(provider.crypto(), "qpq test", b"", 32)
            .unwrap()
    }
    /// A commit built by `configure`, left pending.
    fn commit(
        &mut self,
        configure: impl for<'b> FnOnce(CommitBuilder<'b, Initial>) -> CommitBuilder<'b, Initial>,
    ) -> Vec<u8> {
        let provider = &self.provider;
        let identity = &self.identity;
        let group = self.group.as_mut().unwrap();
        let bundle = configure(group.commit_builder())
            .load_psks(provider.storage())
            .unwrap()
            .build(provider.rand(), provider.crypto(), identity, |_| true)
            .unwrap()
            .stage_commit(provider)
            .unwrap();
        bytes(bundle.commit())
    }
}

/// Alice's group, registered with the service, with a plain OpenMLS member.
pub(super) fn group_with_plain(alice: &mut User, plain: &mut Plain) -> (Vec<u8>, Ds) {
    let (gid, group_info) = alice.create_group();
    let (mut ds, _) = Ds::create(&group_info);
    let out = alice.run(|c| c.add_members(&gid, &[plain.key_package()]));
    ds.commit(&out);
    alice.merge(&gid);
    plain.join(out.welcome.as_deref().unwrap());
    (gid, ds)
}

#[test]
fn a_plain_openmls_public_message_commit_is_processed_and_verified() {
    let mut alice = User::new();
    let mut plain = Plain::new();
    let (gid, mut ds) = group_with_plain(&mut alice, &mut plain);
    let commit = plain.with(|g, p, s| {
        bytes(
            g.self_update(p, s, LeafNodeParameters::default())
                .unwrap()
                .commit(),
        )
    });
    assert_eq!(peek_message(&commit).unwrap().wire_format, Some("public"));
    let group_info = plain.merge();
    match ds.verify(&commit, Some(&group_info)).unwrap() {
        crate::delivery::Verified::Commit(v) => assert_eq!(v.summary.committer, plain.key()),
        other => panic!("not a commit: {other:?}"),
    }
    let applied = alice.applied(&commit);
    assert_eq!((applied.epoch, applied.summary.committer), (2, plain.key()));
    assert_eq!(alice.secret(&gid), plain.secret());

    // And the other way: qpq's commits and messages reach the plain member.
    let out = alice.run(|c| c.self_update(&gid));
    assert_eq!(
        peek_message(&out.commit).unwrap().wire_format,
        Some("public")
    );
    ds.commit(&out);
    alice.merge(&gid);
    plain.process(&out.commit);
    let message = alice.run(|c| c.encrypt(&gid, b"hello plain"));
    assert_eq!(peek_message(&message).unwrap().wire_format, Some("private"));
    match plain.process(&message) {
        ProcessedMessageContent::ApplicationMessage(m) => {
            assert_eq!(m.into_bytes(), b"hello plain")
        }
        _ => panic!("not an application message"),
    }
    assert_eq!(alice.secret(&gid), plain.secret());
}

/// `message` is refused by the member and the service with `kind`; neither
/// changes, and a later message still goes through.
pub(super) fn refused_by_both(
    alice: &mut User,
    ds: &mut Ds,
    gid: &[u8],
    message: &[u8],
    kind: ErrorKind,
) {
    let rows = alice.rows.clone();
    let secret = alice.secret(gid);
    let err = alice.client.process(message).unwrap_err();
    assert_eq!(err.kind, kind, "{err}");
    assert_eq!(alice.rows, rows);
    assert_eq!(alice.secret(gid), secret);
    let group_info = alice.client.export_group_info(gid).unwrap();
    let with_info = matches!(
        peek_message(message).unwrap().kind,
        crate::framing::MessageKind::Commit
    );
    ds.refuse(message, with_info.then_some(group_info.as_slice()), kind);
}

#[test]
fn group_context_extensions_and_psk_commits_are_refused_by_members_and_the_service() {
    let mut alice = User::new();
    let mut plain = Plain::new();
    let (gid, mut ds) = group_with_plain(&mut alice, &mut plain);
    let extensions = plain.commit(|b| {
        b.propose_group_context_extensions(Extensions::empty())
            .unwrap()
    });
    refused_by_both(
        &mut alice,
        &mut ds,
        &gid,
        &extensions,
        ErrorKind::InvalidMessage,
    );
    let err = alice.client.process(&extensions).unwrap_err();
    assert!(err.message.contains("only Add, Remove and Update"), "{err}");
    plain.with(|g, p, _| g.clear_pending_commit(p.storage()).unwrap());

    // An external PSK both hold, so that only the policy can refuse it.
    let psk = PreSharedKeyId::external(b"shared".to_vec(), vec![7; 32]);
    psk.store(&plain.provider, &[1; 32]).unwrap();
    psk.store(&alice.client.provider, &[1; 32]).unwrap();
    let stored = alice.client.provider.storage().drain_journal();
    super::apply(&mut alice.rows, stored);
    let with_psk = plain.commit(|b| {
        b.add_proposal(Proposal::PreSharedKey(Box::new(PreSharedKeyProposal::new(
            psk,
        ))))
    });
    refused_by_both(
        &mut alice,
        &mut ds,
        &gid,
        &with_psk,
        ErrorKind::InvalidMessage,
    );
    let err = alice.client.process(&with_psk).unwrap_err();
    assert!(err.message.contains("only Add, Remove and Update"), "{err}");
    plain.with(|g, p, _| g.clear_pending_commit(p.storage()).unwrap());

    // The group goes on.
    let out = alice.run(|c| c.self_update(&gid));
    ds.commit(&out);
    alice.merge(&gid);
    plain.process(&out.commit);
    assert_eq!(alice.secret(&gid), plain.secret());
}

#[test]
fn proposals_other_than_leaving_are_refused_by_members_and_the_service() {
    let mut alice = User::new();
    let mut plain = Plain::new();
    let (gid, mut ds) = group_with_plain(&mut alice, &mut plain);
    let (update, _) = plain.with(|g, p, s| {
        g.propose_self_update(p, s, LeafNodeParameters::default())
            .unwrap()
    });
    refused_by_both(
        &mut alice,
        &mut ds,
        &gid,
        &bytes(&update),
        ErrorKind::InvalidMessage,
    );
    let (remove_alice, _) = plain.with(|g, p, s| {
        g.propose_remove_member(p, s, LeafNodeIndex::new(0))
            .unwrap()
    });
    refused_by_both(
        &mut alice,
        &mut ds,
        &gid,
        &bytes(&remove_alice),
        ErrorKind::InvalidMessage,
    );
}

#[test]
fn an_external_join_by_a_non_member_is_refused_by_members_and_the_service() {
    let (mut alice, mut bob) = (User::new(), User::new());
    let (gid, mut ds) = group_with_ds(&mut alice, &mut [&mut bob]);
    let group_info = alice.client.export_group_info(&gid).unwrap();
    let MlsMessageBodyIn::GroupInfo(verifiable) = parse(&group_info) else {
        panic!("not a GroupInfo");
    };
    let stranger = Plain::new();
    let (_, bundle) = MlsGroup::external_commit_builder()
        .build_group(
            &stranger.provider,
            verifiable,
            stranger.identity.credential_with_key(),
        )
        .unwrap()
        .load_psks(stranger.provider.storage())
        .unwrap()
        .build(
            stranger.provider.rand(),
            stranger.provider.crypto(),
            &stranger.identity,
            |_| true,
        )
        .unwrap()
        .finalize(&stranger.provider)
        .unwrap();
    let commit = bytes(bundle.commit());
    refused_by_both(&mut alice, &mut ds, &gid, &commit, ErrorKind::NotAMember);
    bob.send(&gid, b"still us", &mut [&mut alice]);
}

#[test]
fn an_external_join_by_a_device_of_an_account_not_in_the_group_is_refused() {
    let (mut alice, mut bob) = (User::new(), User::new());
    let (gid, mut ds) = group_with_ds(&mut alice, &mut [&mut bob]);
    let group_info = alice.client.export_group_info(&gid).unwrap();
    let MlsMessageBodyIn::GroupInfo(verifiable) = parse(&group_info) else {
        panic!("not a GroupInfo");
    };
    // Dave's account signs a certificate for his new device: it chains, but
    // Dave's account has no leaf in the group.
    let dave = Identity::generate().unwrap();
    let device = Identity::generate().unwrap();
    let cert = crate::certificate::issue(&dave, &device.public_key(), "laptop", 1).unwrap();
    let mut stranger = Plain::new();
    stranger.identity = device.with_certificate(&cert).unwrap();
    let (_, bundle) = MlsGroup::external_commit_builder()
        .build_group(
            &stranger.provider,
            verifiable,
            stranger.identity.credential_with_key(),
        )
        .unwrap()
        .load_psks(stranger.provider.storage())
        .unwrap()
        .build(
            stranger.provider.rand(),
            stranger.provider.crypto(),
            &stranger.identity,
            |_| true,
        )
        .unwrap()
        .finalize(&stranger.provider)
        .unwrap();
    let commit = bytes(bundle.commit());
    refused_by_both(&mut alice, &mut ds, &gid, &commit, ErrorKind::NotAMember);
    bob.send(&gid, b"still us", &mut [&mut alice]);
}

/// A KeyPackage of `device` whose BasicCredential identity is `identity`.
fn key_package_with_identity(device: &Identity, identity: Vec<u8>) -> KeyPackage {
    let provider = OpenMlsRustCrypto::default();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(identity).into(),
        signature_key: device.public_key().to_vec().into(),
    };
    KeyPackage::builder()
        .build(CIPHERSUITE, &provider, device, credential)
        .unwrap()
        .key_package()
        .clone()
}

#[test]
fn device_leaves_whose_certificate_does_not_chain_are_refused_by_members_and_the_service() {
    let mut alice = User::new();
    let mut plain = Plain::new();
    let (gid, mut ds) = group_with_plain(&mut alice, &mut plain);
    let account = Identity::generate().unwrap();
    let device = Identity::generate().unwrap();
    let other = Identity::generate().unwrap();
    let good = crate::certificate::issue(&account, &device.public_key(), "phone", 7).unwrap();

    // Signed by another key than the account key it names.
    let mut forged = crate::certificate::issue(&other, &device.public_key(), "phone", 7).unwrap();
    forged[37..69].copy_from_slice(&account.public_key());
    // A valid certificate, but for another device than the leaf's key.
    let elsewhere = crate::certificate::issue(&account, &other.public_key(), "phone", 7).unwrap();
    // The account's signature, with a byte of the body changed.
    let mut tampered = good.clone();
    let last_name_byte = tampered.len() - 65;
    tampered[last_name_byte] ^= 1;
    for identity in [forged, elsewhere, tampered] {
        let add = plain.commit(|b| b.propose_adds([key_package_with_identity(&device, identity)]));
        refused_by_both(&mut alice, &mut ds, &gid, &add, ErrorKind::InvalidIdentity);
        plain.with(|g, p, _| g.clear_pending_commit(p.storage()).unwrap());
    }

    // The chained one is accepted by both, and names the account.
    let add = plain.commit(|b| b.propose_adds([key_package_with_identity(&device, good)]));
    alice.process(&add);
    let group_info = plain.merge();
    ds.verify(&add, Some(&group_info)).unwrap();
    let accounts = alice.client.member_accounts(&gid).unwrap();
    assert!(accounts.contains(&account.public_key().to_vec()));
    assert!(
        !alice
            .client
            .members(&gid)
            .unwrap()
            .contains(&account.public_key().to_vec())
    );
    assert!(
        alice
            .client
            .members(&gid)
            .unwrap()
            .contains(&device.public_key().to_vec())
    );
}
