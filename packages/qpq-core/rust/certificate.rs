//! Device certificates: an account key vouches for one device key.
//!
//! An account has one Ed25519 account key; each of its devices has its own
//! identity key (its MLS leaf signature key). The account key signs a
//! certificate naming the device key, itself, a device name and the issue
//! time, and the certificate *is* the BasicCredential identity of the
//! device's leaves, so members and the delivery service verify the chain
//! from the leaf alone (docs/protocol.md, "Device certificates").
//!
//! Encoding (version 1), all integers big-endian:
//!
//! ```text
//! magic "qpqD" | version 0x01 | device key (32) | account key (32)
//!   | issued_at u64 | name length u8 | name (UTF-8, 1..=64 bytes)
//!   | Ed25519 signature (64) by the account key
//! ```
//!
//! The signature covers [`DOMAIN`] followed by every byte before it, so it
//! cannot be replayed as any other qpq signature (the connection challenge,
//! a link request). A 32-byte credential is the legacy form: the account key
//! is the device key.

use crate::errors::{Error, ErrorKind, Result};
use crate::identity::{Identity, KEY_LEN, SIGNATURE_LEN, verify_signature};

/// Prefix of every certificate: the legacy credential is exactly 32 bytes,
/// so a certificate (longer, with this prefix) can never be mistaken for one.
pub const MAGIC: &[u8; 4] = b"qpqD";
pub const VERSION: u8 = 1;
/// Signed before the certificate body (domain separation).
pub const DOMAIN: &[u8] = b"qpq device certificate v1\0";
pub const MAX_NAME_LEN: usize = 64;

const HEADER_LEN: usize = MAGIC.len() + 1 + KEY_LEN + KEY_LEN + 8 + 1;

/// A verified device certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    pub device_key: [u8; KEY_LEN],
    pub account_key: [u8; KEY_LEN],
    pub name: String,
    pub issued_at: u64,
}

fn invalid(message: &str) -> Error {
    Error::new(ErrorKind::InvalidIdentity, message)
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid("a device name is 1 to 64 bytes of UTF-8"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("a device name has no control characters"));
    }
    Ok(())
}

fn body(
    device_key: &[u8; KEY_LEN],
    account_key: &[u8; KEY_LEN],
    name: &str,
    issued_at: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + SIGNATURE_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(device_key);
    out.extend_from_slice(account_key);
    out.extend_from_slice(&issued_at.to_be_bytes());
    // check_name bounds the length by MAX_NAME_LEN (64), so it fits a u8.
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name.as_bytes());
    out
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(DOMAIN.len() + body.len());
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(body);
    message
}

/// Sign a certificate for `device_key` with the account's identity.
pub fn issue(account: &Identity, device_key: &[u8], name: &str, issued_at: u64) -> Result<Vec<u8>> {
    let device: &[u8; KEY_LEN] = device_key
        .try_into()
        .map_err(|_| invalid("a device key is 32 bytes"))?;
    check_name(name)?;
    let mut out = body(device, &account.public_key(), name, issued_at);
    let signature = account.sign_bytes(&signed_message(&out));
    out.extend_from_slice(&signature);
    Ok(out)
}

/// Whether a credential identity is in the certificate form (not legacy).
pub fn is_certificate(identity: &[u8]) -> bool {
    identity.len() != KEY_LEN && identity.starts_with(MAGIC)
}

/// Decode and verify a certificate: the encoding is exact and the signature
/// is valid under the account key it names.
pub fn verify(data: &[u8]) -> Result<DeviceCertificate> {
    if data.len() < HEADER_LEN + 1 + SIGNATURE_LEN || !data.starts_with(MAGIC) {
        return Err(invalid("not a device certificate"));
    }
    if data[MAGIC.len()] != VERSION {
        return Err(invalid("unknown device certificate version"));
    }
    let mut at = MAGIC.len() + 1;
    let mut take = |n: usize| {
        let part = &data[at..at + n];
        at += n;
        part
    };
    let device_key: [u8; KEY_LEN] = take(KEY_LEN)
        .try_into()
        .map_err(|_| invalid("bad device key"))?;
    let account_key: [u8; KEY_LEN] = take(KEY_LEN)
        .try_into()
        .map_err(|_| invalid("bad account key"))?;
    let issued: [u8; 8] = take(8).try_into().map_err(|_| invalid("bad issue time"))?;
    let name_len = usize::from(take(1)[0]);
    if data.len() != HEADER_LEN + name_len + SIGNATURE_LEN {
        return Err(invalid("device certificate length does not match its name"));
    }
    let name = std::str::from_utf8(take(name_len))
        .map_err(|_| invalid("a device name is UTF-8"))?
        .to_owned();
    check_name(&name)?;
    let body_len = HEADER_LEN + name_len;
    verify_signature(
        &account_key,
        &signed_message(&data[..body_len]),
        &data[body_len..],
    )?;
    Ok(DeviceCertificate {
        device_key,
        account_key,
        name,
        issued_at: u64::from_be_bytes(issued),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_and_tamper() {
        let account = Identity::generate().unwrap();
        let device = Identity::generate().unwrap();
        let cert = issue(&account, &device.public_key(), "laptop-2", 1_700_000_000).unwrap();
        let got = verify(&cert).unwrap();
        assert_eq!(got.device_key, device.public_key());
        assert_eq!(got.account_key, account.public_key());
        assert_eq!(got.name, "laptop-2");
        assert_eq!(got.issued_at, 1_700_000_000);
        assert!(is_certificate(&cert));
        assert!(!is_certificate(&device.public_key()));
        for i in 0..cert.len() {
            let mut bad = cert.clone();
            bad[i] ^= 1;
            assert!(verify(&bad).is_err(), "flipped byte {i} accepted");
        }
        assert!(verify(&cert[..cert.len() - 1]).is_err());
        // A certificate the device signs for itself names itself as the
        // account: it verifies, and the account key it names is the device's.
        let own = issue(&device, &device.public_key(), "x", 0).unwrap();
        assert_eq!(verify(&own).unwrap().account_key, device.public_key());
    }

    #[test]
    fn names_are_bounded() {
        let account = Identity::generate().unwrap();
        let key = account.public_key();
        assert!(issue(&account, &key, "", 0).is_err());
        assert!(issue(&account, &key, &"a".repeat(65), 0).is_err());
        assert!(issue(&account, &key, "a\nb", 0).is_err());
        assert!(issue(&account, &key[..31], "a", 0).is_err());
        assert!(issue(&account, &key, &"é".repeat(32), 0).is_ok());
    }
}
