//! Stateless reading of the RFC 9420 framing, for the delivery service: the
//! wire format, and the group id, epoch and content type of PublicMessage
//! and PrivateMessage, are cleartext (RFC 9420 §6, §6.2, §6.3).

use openmls::prelude::{ContentType, MlsMessageBodyIn, MlsMessageIn, ProtocolMessage, WireFormat};
use tls_codec::DeserializeBytes;

use crate::errors::{Error, ErrorKind, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Application,
    Proposal,
    Commit,
    Welcome,
    KeyPackage,
    GroupInfo,
}

impl MessageKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Application => "APPLICATION",
            Self::Proposal => "PROPOSAL",
            Self::Commit => "COMMIT",
            Self::Welcome => "WELCOME",
            Self::KeyPackage => "KEY_PACKAGE",
            Self::GroupInfo => "GROUP_INFO",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    pub kind: MessageKind,
    pub group_id: Option<Vec<u8>>,
    pub epoch: Option<u64>,
    /// "public" or "private" for group messages, `None` otherwise.
    pub wire_format: Option<&'static str>,
}

pub fn parse_message(data: &[u8]) -> Result<MlsMessageIn> {
    MlsMessageIn::tls_deserialize_exact_bytes(data)
        .map_err(|e| Error::with(ErrorKind::MalformedMessage, "undecodable MLSMessage", &e))
}

fn content_kind(content_type: ContentType) -> MessageKind {
    match content_type {
        ContentType::Application => MessageKind::Application,
        ContentType::Proposal => MessageKind::Proposal,
        ContentType::Commit => MessageKind::Commit,
    }
}

pub fn protocol_info(message: &ProtocolMessage) -> MessageInfo {
    MessageInfo {
        kind: content_kind(message.content_type()),
        group_id: Some(message.group_id().as_slice().to_vec()),
        epoch: Some(message.epoch().as_u64()),
        wire_format: Some(match message.wire_format() {
            WireFormat::PublicMessage => "public",
            _ => "private",
        }),
    }
}

pub fn peek_message(data: &[u8]) -> Result<MessageInfo> {
    let info = match parse_message(data)?.extract() {
        MlsMessageBodyIn::PublicMessage(m) => protocol_info(&ProtocolMessage::from(m)),
        MlsMessageBodyIn::PrivateMessage(m) => protocol_info(&ProtocolMessage::from(m)),
        MlsMessageBodyIn::Welcome(_) => MessageInfo {
            kind: MessageKind::Welcome,
            group_id: None,
            epoch: None,
            wire_format: None,
        },
        MlsMessageBodyIn::KeyPackage(_) => MessageInfo {
            kind: MessageKind::KeyPackage,
            group_id: None,
            epoch: None,
            wire_format: None,
        },
        MlsMessageBodyIn::GroupInfo(gi) => MessageInfo {
            kind: MessageKind::GroupInfo,
            group_id: Some(gi.group_id().as_slice().to_vec()),
            epoch: Some(gi.epoch().as_u64()),
            wire_format: None,
        },
    };
    Ok(info)
}
