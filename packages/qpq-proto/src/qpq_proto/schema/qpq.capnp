@0xd1a8c6f3e2b47a95;
# qpq wire protocol, version 1. See docs/protocol.md for the rules around it:
# one bidirectional QUIC stream per call; the client writes one Request and
# FIN; the server answers with one Response (and, for subscribe, a sequence
# of Events) and FIN. Field ordinals are frozen: new fields are appended,
# nothing is renumbered or removed within a protocol version.

enum ErrorCode {
  internal @0;
  badVersion @1;
  unauthenticated @2;
  forbidden @3;
  invalidArgument @4;
  payloadTooLarge @5;
  notFound @6;
  rateLimited @7;
  queueFull @8;
  epochConflict @9;
  unsupportedCiphersuite @10;
  alreadyExists @11;
  malformedRequest @12;
  invalidKeyPackage @13;
  unsupportedCall @14;
  unavailable @15;
  quotaExceeded @16;
}

# What a server knows of the account behind an identity key (resolveIdentities).
enum AccountStatus {
  unknown @0;                # no account (never registered), or a server that does not say
  active @1;
  suspended @2;              # the operator suspended it: its calls are refused for now
  deleted @3;                # deleted (by its owner or the operator): it never comes back
}

enum MessageKind {
  application @0;
  proposal @1;
  commit @2;
}

struct Auth {
  token @0 :Text;            # server access token; empty only for health
}

struct Endpoint {
  host @0 :Text;             # IP literal or DNS name
  port @1 :UInt16;
}

struct Envelope {
  seq @0 :UInt64;            # per-recipient, strictly increasing
  sender @1 :Data;           # the sender's proven identity key (32 bytes)
  payload @2 :Data;          # an MLS message, opaque to the server
  enqueuedAtMs @3 :UInt64;   # server clock, unix milliseconds
  gapGroupId @4 :Data;       # set: no message but a gap notice: messages of this
                             # group were not queued for you (your queue, or the
                             # sender's share of it, was full); payload is empty,
                             # sender is 32 zero bytes. Rejoin the group.
  groupId @5 :Data;          # the group the server delivered this for: the group of
                             # a group message, or the group whose commit added you
                             # for a Welcome (empty for a gap notice: gapGroupId)
  groupInfoDigest @6 :Data;  # a commit: GroupInfoFacts.digest of the GroupInfo the
                             # server accepted with it (32 bytes; empty otherwise)
  accountDeleted @7 :Data;   # set: no MLS message but a deletion notice: the account
                             # of this identity key (32 bytes) was deleted; groupId names
                             # the group it was in, whose members remove its leaves. The
                             # payload repeats the key (never empty: see protocol.md 4),
                             # sender is 32 zero bytes.
}

# ---- call parameters ------------------------------------------------------

struct Authenticate {
  identityKey @0 :Data;      # Ed25519 public key, 32 bytes
  signature @1 :Data;        # Ed25519 signature (64 bytes) over the challenge transcript
}

# Register a username for the proven identity: creates its account when it has
# none (with an operator's invite code where the server registers by invitation),
# else renames it.
struct RegisterUser {
  username @0 :Text;
  invite @1 :Text;           # an invite code; empty: none (ignored on a rename)
}
struct ResolveUser { username @0 :Text; }
struct ResolveIdentity { identityKey @0 :Data; }
# Many identity keys to usernames in one call (a commit that adds hundreds of
# members costs a receiver one round trip, not one per member).
struct ResolveIdentities { identityKeys @0 :List(Data); }
struct UploadKeyPackages { packages @0 :List(Data); }
struct UploadLastResort { package @0 :Data; }
struct FetchKeyPackage {
  identityKey @0 :Data;
  # The MLS ciphersuite of the KeyPackage wanted (RFC 9420 code point): a
  # group takes only KeyPackages of its own suite. 0 = the default suite
  # 0x0001 (what a client from before suites sends).
  ciphersuite @1 :UInt16;
}

# Retired before the first release: the server refuses it (unsupportedCall).
# Anything for a group goes through publish; a Welcome rides with its commit.
struct Enqueue {
  recipient @0 :Data;
  payload @1 :Data;
}

struct Publish {
  groupId @0 :Data;
  epoch @1 :UInt64;          # the epoch the payload is for (its cleartext epoch)
  kind @2 :MessageKind;
  payload @3 :Data;          # application: PrivateMessage; proposal, commit: PublicMessage
  recipients @4 :List(Data); # unused: the server derives recipients from the verified roster
  welcome @5 :Data;          # commit that adds members: their Welcome
  groupInfo @6 :Data;        # commit: the GroupInfo of the epoch it creates, signed by the committer
}

struct CreateGroup {
  groupInfo @0 :Data;        # the epoch-0 GroupInfo with the ratchet tree, signed by the creator
}

struct FetchGroupInfo { groupId @0 :Data; }

# A member replaces the GroupInfo the server serves for the group's current
# epoch with one it signed (after the one that came with the last commit did
# not match the epoch the member derived).
struct ReplaceGroupInfo {
  groupId @0 :Data;
  groupInfo @1 :Data;        # MLSMessage(GroupInfo) of the current epoch, signed by the caller
}

struct Fetch { limit @0 :UInt32; }

struct FetchWait {
  limit @0 :UInt32;
  timeoutMs @1 :UInt32;
}

struct Ack { upToSeq @0 :UInt64; }
struct PublishEndpoints { endpoints @0 :List(Endpoint); }
struct ResolveEndpoints { identityKey @0 :Data; }

# ---- peer calls (ALPN qpq-p2p/1) --------------------------------------------
# Between two clients that share a group (packages/qpq-p2p): a server answers
# them unsupportedCall. The dialing peer asks peerChallenge, then proves its
# identity key with peerAuthenticate; the listening peer answers with its own
# proof, then accepts peerDeliver.

struct PeerAuthenticate {
  identityKey @0 :Data;      # the dialing peer's Ed25519 identity key, 32 bytes
  nonce @1 :Data;            # 32 fresh random bytes of the dialing peer
  signature @2 :Data;        # Ed25519 (64 bytes) over the peer transcript, dialer's role
}

struct PeerDeliver {
  payload @0 :Data;          # one MLS application message (PrivateMessage)
}

# ---- devices (docs/protocol.md, "Devices") -----------------------------------
# An account's devices: each its own identity key, vouched for by a device
# certificate the account key signed (qpq_core.DeviceCertificate).

struct RegisterDevice {
  certificate @0 :Data;      # names the caller's (proven) key as its device key
}
struct ListDevices { accountKey @0 :Data; }
struct RevokeDevice { deviceKey @0 :Data; }   # another device of the caller's account

# Link mailbox: a new device posts a link request under the hash of a short
# code; a device of the account it names fetches it and posts the answer.
struct PostLink {
  mailbox @0 :Data;          # SHA-256 of the link code (docs/protocol.md)
  username @1 :Text;         # new device: the account it asks to join; approver: empty
  payload @2 :Data;          # new device: the request; approving device: the answer
}
struct FetchLink { mailbox @0 :Data; }

struct Request {
  version @0 :UInt16;        # = 1
  auth @1 :Auth;
  call :union {
    health @2 :Void;
    challenge @3 :Void;
    authenticate @4 :Authenticate;
    registerUser @5 :RegisterUser;
    resolveUser @6 :ResolveUser;
    resolveIdentity @7 :ResolveIdentity;
    uploadKeyPackages @8 :UploadKeyPackages;
    uploadLastResort @9 :UploadLastResort;
    fetchKeyPackage @10 :FetchKeyPackage;
    countKeyPackages @11 :Void;
    enqueue @12 :Enqueue;
    publish @13 :Publish;
    fetch @14 :Fetch;
    fetchWait @15 :FetchWait;
    ack @16 :Ack;
    subscribe @17 :Void;
    publishEndpoints @18 :PublishEndpoints;
    resolveEndpoints @19 :ResolveEndpoints;
    deleteAccount @20 :Void;
    createGroup @21 :CreateGroup;
    fetchGroupInfo @22 :FetchGroupInfo;
    peerChallenge @23 :Void;
    peerAuthenticate @24 :PeerAuthenticate;
    peerDeliver @25 :PeerDeliver;
    replaceGroupInfo @26 :ReplaceGroupInfo;
    resolveIdentities @27 :ResolveIdentities;
    registerDevice @28 :RegisterDevice;
    listDevices @29 :ListDevices;
    revokeDevice @30 :RevokeDevice;
    postLink @31 :PostLink;
    fetchLink @32 :FetchLink;
    subscribeWithAcks @33 :Void;  # subscribe, the client acknowledging on the stream (§2)
  }
}

# ---- results ----------------------------------------------------------------

struct Error {
  code @0 :ErrorCode;
  message @1 :Text;          # safe to show; never a traceback, path or secret
  field @2 :Text;            # for invalidArgument: the offending field
  acceptedCommit @3 :Data;   # epochConflict: SHA-256 of the commit the server
                             # accepted for the epoch asked for (empty if unknown)
  epoch @4 :UInt64;          # epochConflict: the group's current epoch
}

struct HealthStatus {
  status @0 :Text;           # "ok" or "degraded"
  version @1 :Text;
  uptimeSeconds @2 :UInt64;
  storage @3 :Text;          # "ok" or a short reason
}

struct ChallengeNonce {
  nonce @0 :Data;            # 32 random bytes, bound to the connection
  # The server's limits, announced to the client it is about to authenticate
  # (0: not announced; a peer's PeerChallenge answer leaves them 0).
  maxPayloadBytes @1 :UInt64;    # publish payload, welcome, groupInfo
  maxMessageBytes @2 :UInt64;    # one framed message, either direction
  messageTtlSeconds @3 :UInt64;  # how long an unacknowledged message stays queued
  streamAcks @4 :Bool;           # subscribeWithAcks is served (§2)
}
struct UserKey { identityKey @0 :Data; }
struct Username { username @0 :Text; }
struct Usernames {
  usernames @0 :List(Text);              # one per key asked for, in order; "" = none
  statuses @1 :List(AccountStatus);      # one per key, in order (empty: not said)
}
struct Fingerprints { fingerprints @0 :List(Data); }  # SHA-256 of each uploaded package, in order
struct Fingerprint { fingerprint @0 :Data; }
struct KeyPackage { package @0 :Data; }

struct KeyPackageCount {
  # The first three fields count the default suite (0x0001), as before suites.
  count @0 :UInt32;
  hasLastResort @1 :Bool;
  lastResortServed @2 :UInt32;   # claims answered with the last-resort package since it was uploaded
  suites @3 :List(SuiteKeyPackageCount);   # one per suite the identity has KeyPackages of
}

struct SuiteKeyPackageCount {
  ciphersuite @0 :UInt16;        # RFC 9420 code point
  count @1 :UInt32;
  hasLastResort @2 :Bool;
  lastResortServed @3 :UInt32;
}

struct Enqueued { seq @0 :UInt64; }   # retired with enqueue

struct Published {
  recipients @0 :UInt32;     # queues the message reached now
  epoch @1 :UInt64;          # the group's epoch after this publish
}

struct GroupSnapshot {
  groupId @0 :Data;
  epoch @1 :UInt64;
  groupInfo @2 :Data;        # the latest GroupInfo a member signed (MLSMessage)
  ratchetTree @3 :Data;      # the epoch's ratchet tree (RFC 9420 §12.4.3.3), from the server's state
}
struct Messages { messages @0 :List(Envelope); }
struct Acked {
  removed @0 :UInt32;
  upToSeq @1 :UInt64;        # the seq acknowledged (0 from servers before it was set)
}

struct PeerEndpoints {
  endpoints @0 :List(Endpoint);
  observed @1 :Endpoint;     # the address the server saw the peer connect from
}

struct PeerProof {
  identityKey @0 :Data;      # the listening peer's Ed25519 identity key, 32 bytes
  signature @1 :Data;        # Ed25519 (64 bytes) over the peer transcript, listener's role
}

struct Devices {
  deviceKeys @0 :List(Data);     # every current (unrevoked) device of the account
  certificates @1 :List(Data);   # one per key, in order; empty: the account key itself
}

struct LinkPayload {
  payload @0 :Data;          # to the approver: the request; to the new device: the answer (empty: none yet)
  deviceKey @1 :Data;        # the device that posted the request (proven by it)
}

struct Response {
  union {
    error @0 :Error;
    done @1 :Void;           # success without a result
    health @2 :HealthStatus;
    challenge @3 :ChallengeNonce;
    userKey @4 :UserKey;
    username @5 :Username;
    fingerprints @6 :Fingerprints;
    fingerprint @7 :Fingerprint;
    keyPackage @8 :KeyPackage;
    keyPackageCount @9 :KeyPackageCount;
    enqueued @10 :Enqueued;
    published @11 :Published;
    messages @12 :Messages;
    acked @13 :Acked;
    subscribed @14 :Void;    # a subscribe stream follows: Events until FIN
    peerEndpoints @15 :PeerEndpoints;
    groupSnapshot @16 :GroupSnapshot;
    peerProof @17 :PeerProof;
    usernames @18 :Usernames;
    devices @19 :Devices;
    linkPayload @20 :LinkPayload;
  }
}

# Pushed on a subscribe stream after the `subscribed` Response.
struct Event {
  union {
    message @0 :Envelope;
    error @1 :Error;         # the stream ends after an error event
    acked @2 :Acked;         # subscribeWithAcks only: an acknowledgement was applied
  }
}
