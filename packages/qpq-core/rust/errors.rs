//! The one error type of the engine, and the mapping of OpenMLS's error enums
//! onto it.
//!
//! Each [`ErrorKind`] maps one-to-one onto a Python exception class of
//! `qpq_core.errors`. Messages are fixed texts or OpenMLS `Display` strings
//! (never `Debug` dumps), so they carry no key material.

use openmls::error::LibraryError;
use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
use openmls::group::{MlsGroupStateError, ValidationError};
use openmls::prelude::{
    CreateCommitError, CreationFromExternalError, ExternalCommitBuilderError,
    KeyPackageVerifyError, ProcessMessageError, PublicProcessMessageError, WelcomeError,
};

use crate::storage::StorageError;

/// What went wrong, one variant per Python exception class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidSignature,
    InvalidKeyPackage,
    UnsupportedCiphersuite,
    MalformedMessage,
    InvalidMessage,
    WrongEpoch,
    WrongGroup,
    ReplayedMessage,
    Decryption,
    NotAMember,
    PendingProposals,
    CommitConflict,
    NoPendingCommit,
    InvalidIdentity,
    InvalidArgument,
    StateCorrupt,
    Internal,
}

impl ErrorKind {
    /// The name of the Python exception class in `qpq_core.errors`.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::InvalidSignature => "InvalidSignatureError",
            Self::InvalidKeyPackage => "InvalidKeyPackageError",
            Self::UnsupportedCiphersuite => "UnsupportedCiphersuiteError",
            Self::MalformedMessage => "MalformedMlsMessageError",
            Self::InvalidMessage => "InvalidMlsMessageError",
            Self::WrongEpoch => "WrongEpochError",
            Self::WrongGroup => "WrongGroupError",
            Self::ReplayedMessage => "ReplayedMessageError",
            Self::Decryption => "DecryptionError",
            Self::NotAMember => "NotAMemberError",
            Self::PendingProposals => "PendingProposalsError",
            Self::CommitConflict => "CommitConflictError",
            Self::NoPendingCommit => "NoPendingCommitError",
            Self::InvalidIdentity => "InvalidIdentityError",
            Self::InvalidArgument => "InvalidMlsArgumentError",
            Self::StateCorrupt => "StateCorruptError",
            Self::Internal => "InternalMlsError",
        }
    }
}

/// An engine error: a kind and a message that is safe to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// `context: <OpenMLS Display text>`.
    pub fn with(kind: ErrorKind, context: &str, cause: &dyn std::fmt::Display) -> Self {
        Self::new(kind, format!("{context}: {cause}"))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Corrupt => Error::new(ErrorKind::StateCorrupt, e.to_string()),
            StorageError::Encode => Error::new(ErrorKind::Internal, e.to_string()),
        }
    }
}

impl From<LibraryError> for Error {
    fn from(e: LibraryError) -> Self {
        Error::with(ErrorKind::Internal, "OpenMLS internal error", &e)
    }
}

pub fn state_error(context: &str, e: &MlsGroupStateError) -> Error {
    let kind = match e {
        MlsGroupStateError::UseAfterEviction => ErrorKind::NotAMember,
        MlsGroupStateError::PendingProposal => ErrorKind::PendingProposals,
        MlsGroupStateError::PendingCommit => ErrorKind::CommitConflict,
        MlsGroupStateError::NoPendingCommit => ErrorKind::NoPendingCommit,
        MlsGroupStateError::PendingProposalNotFound => ErrorKind::InvalidArgument,
        MlsGroupStateError::LibraryError(_) => ErrorKind::Internal,
    };
    Error::with(kind, context, e)
}

fn decryption_kind(e: &MessageDecryptionError) -> ErrorKind {
    match e {
        MessageDecryptionError::SecretTreeError(
            SecretTreeError::SecretReuseError | SecretTreeError::TooDistantInThePast,
        ) => ErrorKind::ReplayedMessage,
        MessageDecryptionError::LibraryError(_) => ErrorKind::Internal,
        MessageDecryptionError::MalformedContent | MessageDecryptionError::WrongWireFormat => {
            ErrorKind::MalformedMessage
        }
        _ => ErrorKind::Decryption,
    }
}

fn validation_kind(e: &ValidationError) -> ErrorKind {
    match e {
        ValidationError::LibraryError(_) => ErrorKind::Internal,
        ValidationError::WrongGroupId => ErrorKind::WrongGroup,
        ValidationError::WrongEpoch | ValidationError::NoPastEpochData => ErrorKind::WrongEpoch,
        ValidationError::UnableToDecrypt(d) => decryption_kind(d),
        ValidationError::InvalidSignature
        | ValidationError::InvalidMembershipTag
        | ValidationError::InvalidLeafNodeSignature => ErrorKind::InvalidSignature,
        ValidationError::UnknownMember => ErrorKind::NotAMember,
        _ => ErrorKind::InvalidMessage,
    }
}

pub fn process_error<E: std::fmt::Display>(e: &ProcessMessageError<E>) -> Error {
    const CONTEXT: &str = "cannot process message";
    let kind = match e {
        ProcessMessageError::LibraryError(_) => ErrorKind::Internal,
        ProcessMessageError::StorageError(_) => ErrorKind::StateCorrupt,
        ProcessMessageError::ValidationError(v) => validation_kind(v),
        ProcessMessageError::GroupStateError(s) => return state_error(CONTEXT, s),
        _ => ErrorKind::InvalidMessage,
    };
    Error::with(kind, CONTEXT, e)
}

/// A handshake message the delivery service refused.
pub fn public_process_error(e: &PublicProcessMessageError) -> Error {
    let kind = match e {
        PublicProcessMessageError::LibraryError(_) => ErrorKind::Internal,
        PublicProcessMessageError::ValidationError(v) => validation_kind(v),
        _ => ErrorKind::InvalidMessage,
    };
    Error::with(kind, "cannot verify message", e)
}

/// A GroupInfo and tree the delivery service cannot build a group from.
pub fn creation_error<E: std::fmt::Display>(e: &CreationFromExternalError<E>) -> Error {
    let kind = match e {
        CreationFromExternalError::LibraryError(_) => ErrorKind::Internal,
        CreationFromExternalError::WriteToStorageError(_) => ErrorKind::StateCorrupt,
        CreationFromExternalError::UnsupportedCiphersuite(_) => ErrorKind::UnsupportedCiphersuite,
        CreationFromExternalError::InvalidGroupInfoSignature
        | CreationFromExternalError::UnknownSender => ErrorKind::InvalidSignature,
        _ => ErrorKind::InvalidMessage,
    };
    Error::with(kind, "invalid GroupInfo or ratchet tree", e)
}

/// A commit we could not build: an OpenMLS bug, or `fallback` (what the
/// caller's input most likely broke).
pub fn create_commit_error(context: &str, fallback: ErrorKind, e: &CreateCommitError) -> Error {
    let kind = match e {
        CreateCommitError::LibraryError(_) => ErrorKind::Internal,
        _ => fallback,
    };
    Error::with(kind, context, e)
}

/// A GroupInfo and tree we cannot rejoin from.
pub fn external_commit_error<E: std::fmt::Display>(e: &ExternalCommitBuilderError<E>) -> Error {
    const CONTEXT: &str = "cannot rejoin";
    let kind = match e {
        ExternalCommitBuilderError::LibraryError(_) => ErrorKind::Internal,
        ExternalCommitBuilderError::StorageError(_) => ErrorKind::StateCorrupt,
        ExternalCommitBuilderError::MissingRatchetTree => ErrorKind::InvalidArgument,
        ExternalCommitBuilderError::UnsupportedCiphersuite(_) => ErrorKind::UnsupportedCiphersuite,
        ExternalCommitBuilderError::PublicGroupError(inner) => {
            return Error::with(creation_error(inner).kind, CONTEXT, e);
        }
        _ => ErrorKind::InvalidMessage,
    };
    Error::with(kind, CONTEXT, e)
}

pub fn welcome_error<E: std::fmt::Display>(e: &WelcomeError<E>) -> Error {
    let kind = match e {
        WelcomeError::LibraryError(_) => ErrorKind::Internal,
        WelcomeError::StorageError(_) => ErrorKind::StateCorrupt,
        WelcomeError::UnsupportedCiphersuite(_) | WelcomeError::CiphersuiteMismatch => {
            ErrorKind::UnsupportedCiphersuite
        }
        WelcomeError::InvalidGroupInfoSignature => ErrorKind::InvalidSignature,
        WelcomeError::NoMatchingKeyPackage
        | WelcomeError::NoMatchingEncryptionKey
        | WelcomeError::PrivateInitKeyNotFound
        | WelcomeError::JoinerSecretNotFound => ErrorKind::NotAMember,
        WelcomeError::UnableToDecrypt => ErrorKind::Decryption,
        WelcomeError::GroupAlreadyExists => ErrorKind::CommitConflict,
        WelcomeError::MalformedWelcomeMessage | WelcomeError::NotAWelcomeMessage => {
            ErrorKind::MalformedMessage
        }
        _ => ErrorKind::InvalidMessage,
    };
    Error::with(kind, "cannot join from Welcome", e)
}

pub fn key_package_error(e: &KeyPackageVerifyError) -> Error {
    let kind = match e {
        // A bad signature on a KeyPackage is a bad KeyPackage: the server
        // answers INVALID_KEY_PACKAGE either way.
        KeyPackageVerifyError::LibraryError(_) => ErrorKind::Internal,
        _ => ErrorKind::InvalidKeyPackage,
    };
    Error::with(kind, "invalid KeyPackage", e)
}

/// Map an OpenMLS operation error enum that has `LibraryError`,
/// `GroupStateError` and `StorageError` variants; anything else is `fallback`.
#[macro_export]
macro_rules! op_error {
    ($err:expr, $ty:ident, $context:expr, $fallback:expr) => {{
        let e = &$err;
        match e {
            $ty::LibraryError(_) => {
                $crate::errors::Error::with($crate::errors::ErrorKind::Internal, $context, e)
            }
            $ty::GroupStateError(s) => $crate::errors::state_error($context, s),
            $ty::StorageError(_) => {
                $crate::errors::Error::with($crate::errors::ErrorKind::StateCorrupt, $context, e)
            }
            _ => $crate::errors::Error::with($fallback, $context, e),
        }
    }};
}
