//! GroupInfo (RFC 9420 §12.4.3): parsing, and the check the delivery service
//! runs on the GroupInfo that travels with every commit (docs/mls.md,
//! "Delivery service").
//!
//! A GroupInfo is signed by a member; the delivery service cannot make one.
//! It keeps the latest one to serve to a member who fell behind, who then
//! rejoins by external commit, so a GroupInfo it accepts must be exactly the
//! one of the state it holds.
//!
//! One part it cannot check: the `external_pub` extension, the HPKE key a
//! joiner encrypts its external commit to, is derived from the epoch's
//! secrets (RFC 9420 §8, `external_secret`). A member who commits can sign a
//! GroupInfo whose `external_pub` is its own key; whoever rejoins from it
//! then makes a commit nobody else can process. So members compare
//! ([`Facts`]): each member that processed a commit derives the facts of the
//! epoch from its own state, compares them with those of the GroupInfo the
//! server keeps, and replaces a wrong one with its own (docs/mls.md,
//! "GroupInfo that members check").

use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{
    ExtensionType, HashType, LeafNodeIndex, MlsMessageBodyIn, OpenMlsCrypto,
    OpenMlsSignaturePublicKey, PublicGroup, RatchetTreeIn, Verifiable,
};
use tls_codec::{DeserializeBytes, Serialize};

use crate::errors::{Error, ErrorKind, Result};
use crate::framing::parse_message;
use crate::identity::tree_identity;
use crate::require_ciphersuite;

/// Size of the `signer` field that ends a GroupInfoTBS (RFC 9420 §12.4.3).
const SIGNER_LEN: usize = 4;

fn invalid(message: &str) -> Error {
    Error::new(ErrorKind::InvalidMessage, message)
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>> {
    value
        .tls_serialize_detached()
        .map_err(|e| Error::with(ErrorKind::Internal, "cannot encode", &e))
}

/// Decode an `MLSMessage(GroupInfo)` of our one ciphersuite.
pub fn parse(data: &[u8]) -> Result<VerifiableGroupInfo> {
    let group_info = match parse_message(data)?.extract() {
        MlsMessageBodyIn::GroupInfo(group_info) => group_info,
        _ => {
            return Err(Error::new(
                ErrorKind::MalformedMessage,
                "MLSMessage does not carry a GroupInfo",
            ));
        }
    };
    require_ciphersuite(group_info.ciphersuite())?;
    Ok(group_info)
}

/// The leaf that signed the GroupInfo. OpenMLS keeps the field to itself, but
/// it is the last field of the signed payload (RFC 9420 §12.4.3).
pub fn signer(group_info: &VerifiableGroupInfo) -> Result<LeafNodeIndex> {
    let payload = group_info
        .unsigned_payload()
        .map_err(|e| Error::with(ErrorKind::Internal, "cannot encode GroupInfo", &e))?;
    let tail = payload
        .len()
        .checked_sub(SIGNER_LEN)
        .and_then(|start| <[u8; SIGNER_LEN]>::try_from(&payload[start..]).ok())
        .ok_or_else(|| invalid("GroupInfo payload too short"))?;
    Ok(LeafNodeIndex::new(u32::from_be_bytes(tail)))
}

/// The tree of the group: the GroupInfo's ratchet_tree extension, else
/// `given` (a TLS-serialized ratchet tree, RFC 9420 §12.4.3.3).
pub fn ratchet_tree(group_info: &VerifiableGroupInfo, given: &[u8]) -> Result<RatchetTreeIn> {
    if let Some(extension) = group_info.extensions().ratchet_tree() {
        return Ok(extension.ratchet_tree().clone());
    }
    if given.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "no ratchet tree: the GroupInfo carries none and none was given",
        ));
    }
    RatchetTreeIn::tls_deserialize_exact_bytes(given)
        .map_err(|e| Error::with(ErrorKind::MalformedMessage, "undecodable ratchet tree", &e))
}

/// Domain label of [`Facts::digest`].
const FACTS_LABEL: &[u8] = b"qpq/1 group info facts\x00";

/// What a GroupInfo says about the epoch it describes, in the form members
/// and the delivery service compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub group_id: Vec<u8>,
    pub epoch: u64,
    /// SHA-256 of the TLS-serialized GroupContext: group id, epoch, tree
    /// hash, confirmed transcript hash and the group's extensions.
    pub context_hash: Vec<u8>,
    /// The `external_pub` extension's HPKE public key.
    pub external_pub: Vec<u8>,
    /// SHA-256 over a label, `context_hash` and `external_pub`: equal for two
    /// GroupInfos exactly when both describe the same epoch of the same
    /// group with the same external key, whoever signed them.
    pub digest: Vec<u8>,
}

fn sha256(crypto: &impl OpenMlsCrypto, data: &[u8]) -> Result<Vec<u8>> {
    crypto
        .hash(HashType::Sha2_256, data)
        .map_err(|e| Error::with(ErrorKind::Internal, "cannot hash", &e))
}

/// The [`Facts`] of a GroupInfo (its signature is not checked here).
pub fn facts(group_info: &VerifiableGroupInfo, crypto: &impl OpenMlsCrypto) -> Result<Facts> {
    let external_pub = group_info
        .extensions()
        .external_pub()
        .ok_or_else(|| invalid("the GroupInfo lacks the external_pub extension"))?
        .external_pub()
        .as_slice()
        .to_vec();
    let context_hash = sha256(crypto, &encode(group_info.group_context())?)?;
    let mut input = Vec::with_capacity(FACTS_LABEL.len() + context_hash.len() + external_pub.len());
    input.extend_from_slice(FACTS_LABEL);
    input.extend_from_slice(&context_hash);
    input.extend_from_slice(&external_pub);
    Ok(Facts {
        group_id: group_info.group_id().as_slice().to_vec(),
        epoch: group_info.epoch().as_u64(),
        digest: sha256(crypto, &input)?,
        context_hash,
        external_pub,
    })
}

/// Only the extensions a served GroupInfo needs: `external_pub` (without
/// it nobody can rejoin) and `ratchet_tree`. Anything else would be one
/// more field that nobody but the signer vouches for.
pub fn check_allowed_extensions(group_info: &VerifiableGroupInfo) -> Result<()> {
    if group_info.extensions().external_pub().is_none() {
        return Err(invalid("the GroupInfo lacks the external_pub extension"));
    }
    let allowed =
        |t: ExtensionType| matches!(t, ExtensionType::ExternalPub | ExtensionType::RatchetTree);
    if group_info
        .extensions()
        .iter()
        .any(|e| !allowed(e.extension_type()))
    {
        return Err(invalid(
            "the GroupInfo carries an extension other than external_pub and ratchet_tree",
        ));
    }
    Ok(())
}

/// The extensions a GroupInfo the delivery service serves must carry
/// ([`check_allowed_extensions`]), and a ratchet tree, if any, equal to the
/// group's (a wrong one would make every rejoin fail).
pub fn check_extensions(group_info: &VerifiableGroupInfo, group: &PublicGroup) -> Result<()> {
    check_allowed_extensions(group_info)?;
    if let Some(extension) = group_info.extensions().ratchet_tree()
        && encode(extension.ratchet_tree())? != encode(&group.export_ratchet_tree())?
    {
        return Err(invalid("the GroupInfo's ratchet tree is not the group's"));
    }
    Ok(())
}

/// Accept `group_info` only if it is the GroupInfo of `group`'s current
/// state (group context and confirmation tag), signed by `committer`'s leaf,
/// with the extensions [`check_extensions`] asks for. Used for the GroupInfo
/// that comes with a commit (signed by its committer) and for one a member
/// uploads to replace a wrong one (signed by that member).
///
/// This compares the signed payload with the one the state implies instead
/// of building a second `PublicGroup` from the GroupInfo: that would verify
/// the whole tree again, and refuse leaves whose KeyPackage lifetime has
/// expired (docs/mls.md, "Lifetimes on join").
pub fn check_for_state(
    group_info: &VerifiableGroupInfo,
    group: &PublicGroup,
    crypto: &impl OpenMlsCrypto,
    committer: &[u8],
) -> Result<()> {
    let not_committer = || {
        Error::new(
            ErrorKind::InvalidSignature,
            "the GroupInfo is not signed by the member who sent it",
        )
    };
    let signer = signer(group_info)?;
    let leaf = group.leaf(signer).ok_or_else(not_committer)?;
    if tree_identity(leaf.credential(), leaf.signature_key().as_slice()) != committer {
        return Err(not_committer());
    }
    let key = OpenMlsSignaturePublicKey::from_signature_key(
        leaf.signature_key().clone(),
        group.ciphersuite().signature_algorithm(),
    );
    group_info
        .verify_no_out(crypto, &key)
        .map_err(|_| Error::new(ErrorKind::InvalidSignature, "bad GroupInfo signature"))?;
    let context = group.group_context();
    if group_info.group_context() != context {
        return Err(if group_info.epoch() != context.epoch() {
            invalid("the GroupInfo is not of the epoch the commit creates")
        } else {
            invalid("the GroupInfo's group context is not the group's (tree or transcript)")
        });
    }
    // GroupInfoTBS = group_context ‖ extensions ‖ confirmation_tag ‖ signer.
    let mut expected = encode(context)?;
    expected.extend(encode(group_info.extensions())?);
    expected.extend(encode(group.confirmation_tag())?);
    expected.extend(signer.u32().to_be_bytes());
    let payload = group_info
        .unsigned_payload()
        .map_err(|e| Error::with(ErrorKind::Internal, "cannot encode GroupInfo", &e))?;
    if payload != expected {
        return Err(invalid(
            "the GroupInfo's confirmation tag is not the group's",
        ));
    }
    check_extensions(group_info, group)
}
