//! A journaling OpenMLS storage provider.
//!
//! Every OpenMLS write and delete goes through one of five primitives (`get`,
//! `put`, `del`, `list_append`, `list_remove`). `put` and `del` record the new
//! value in a journal (last write wins) and the previous value in an undo log
//! (first touch wins). After each binding call the engine either drains the
//! journal into a change set for the host to persist, or replays the undo log
//! so that a failed operation leaves no trace (OpenMLS writes before it
//! validates, e.g. the secret tree right after decryption).
//!
//! The key layout is `openmls_memory_storage`'s (`label ‖ json(key) ‖
//! version_be16`) and values are the same JSON, so rows stay readable by
//! OpenMLS's own in-memory provider. Unlike it, this provider never panics on
//! bad data and deletes queued proposals when the queue is cleared.

use std::collections::{BTreeMap, HashMap};

use openmls_traits::storage::{CURRENT_VERSION, StorageProvider, traits};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

/// One persisted row change: the new value, or `None` for a deletion.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

const VERSION_SUFFIX: [u8; 2] = CURRENT_VERSION.to_be_bytes();

const KEY_PACKAGE: &[u8] = b"KeyPackage";
const PSK: &[u8] = b"Psk";
const ENCRYPTION_KEY_PAIR: &[u8] = b"EncryptionKeyPair";
const SIGNATURE_KEY_PAIR: &[u8] = b"SignatureKeyPair";
const EPOCH_KEY_PAIRS: &[u8] = b"EpochKeyPairs";
const TREE: &[u8] = b"Tree";
const GROUP_CONTEXT: &[u8] = b"GroupContext";
const INTERIM_TRANSCRIPT_HASH: &[u8] = b"InterimTranscriptHash";
const CONFIRMATION_TAG: &[u8] = b"ConfirmationTag";
const JOIN_CONFIG: &[u8] = b"MlsGroupJoinConfig";
const OWN_LEAF_NODES: &[u8] = b"OwnLeafNodes";
/// The label of the group state row: its presence marks a stored group.
pub const GROUP_STATE: &[u8] = b"GroupState";
const QUEUED_PROPOSAL: &[u8] = b"QueuedProposal";
const PROPOSAL_QUEUE_REFS: &[u8] = b"ProposalQueueRefs";
const OWN_LEAF_NODE_INDEX: &[u8] = b"OwnLeafNodeIndex";
const EPOCH_SECRETS: &[u8] = b"EpochSecrets";
const RESUMPTION_PSK_STORE: &[u8] = b"ResumptionPsk";
const MESSAGE_SECRETS: &[u8] = b"MessageSecrets";
/// qpq's own row, not OpenMLS's: the epoch of an external commit of ours
/// that waits for the delivery service (docs/mls.md, "Rejoining by external
/// commit"). Same key layout as the OpenMLS rows of the group.
const PENDING_EXTERNAL_COMMIT: &[u8] = b"QpqPendingExternalCommit";

/// Errors of the storage provider. They carry no data: a value that fails to
/// decode could hold key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageError {
    /// A value could not be encoded.
    Encode,
    /// A stored value could not be decoded (corrupt or foreign state).
    Corrupt,
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Encode => "could not encode an MLS state value",
            Self::Corrupt => "stored MLS state is unreadable",
        })
    }
}

impl std::error::Error for StorageError {}

type Result<T> = std::result::Result<T, StorageError>;

#[derive(Default)]
struct Inner {
    map: HashMap<Vec<u8>, Zeroizing<Vec<u8>>>,
    journal: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    undo: HashMap<Vec<u8>, Option<Zeroizing<Vec<u8>>>>,
}

impl Inner {
    fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(|v| v.as_slice())
    }

    fn remember(&mut self, key: &[u8]) {
        if !self.undo.contains_key(key) {
            let old = self.map.get(key).cloned();
            self.undo.insert(key.to_vec(), old);
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.remember(&key);
        self.journal.insert(key.clone(), Some(value.clone()));
        self.map.insert(key, Zeroizing::new(value));
    }

    fn del(&mut self, key: &[u8]) {
        if !self.map.contains_key(key) && !self.journal.contains_key(key) {
            return;
        }
        self.remember(key);
        self.journal.insert(key.to_vec(), None);
        self.map.remove(key);
    }
}

/// The storage provider: one map behind one mutex. `parking_lot`'s mutex is
/// never poisoned, so a panic caught by the engine leaves it usable.
#[derive(Default)]
pub struct JournalStorage {
    inner: Mutex<Inner>,
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|_| StorageError::Encode)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|_| StorageError::Corrupt)
}

fn storage_key_raw(label: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + key.len() + 2);
    out.extend_from_slice(label);
    out.extend_from_slice(key);
    out.extend_from_slice(&VERSION_SUFFIX);
    out
}

fn storage_key<K: Serialize + ?Sized>(label: &[u8], key: &K) -> Result<Vec<u8>> {
    Ok(storage_key_raw(label, &encode(key)?))
}

fn epoch_key_pairs_key(
    group_id: &impl Serialize,
    epoch: &impl Serialize,
    leaf_index: u32,
) -> Result<Vec<u8>> {
    let mut key = encode(group_id)?;
    key.extend_from_slice(&encode(epoch)?);
    key.extend_from_slice(&encode(&leaf_index)?);
    Ok(storage_key_raw(EPOCH_KEY_PAIRS, &key))
}

impl JournalStorage {
    /// Replace the whole state with persisted rows; drops journal and undo.
    pub fn load<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(&self, rows: I) {
        let mut inner = self.inner.lock();
        inner.map = rows
            .into_iter()
            .map(|(k, v)| (k, Zeroizing::new(v)))
            .collect();
        inner.journal.clear();
        inner.undo.clear();
    }

    /// True when no write is waiting to be drained or undone.
    pub fn is_clean(&self) -> bool {
        let inner = self.inner.lock();
        inner.journal.is_empty() && inner.undo.is_empty()
    }

    /// Success: hand the journal over (sorted by key) and forget the undo log.
    pub fn drain_journal(&self) -> Vec<Change> {
        let mut inner = self.inner.lock();
        inner.undo.clear();
        std::mem::take(&mut inner.journal).into_iter().collect()
    }

    /// Failure: put back every value the failed operation touched.
    pub fn rollback(&self) {
        let mut inner = self.inner.lock();
        let undo = std::mem::take(&mut inner.undo);
        for (key, old) in undo {
            match old {
                Some(value) => {
                    inner.map.insert(key, value);
                }
                None => {
                    inner.map.remove(&key);
                }
            }
        }
        inner.journal.clear();
    }

    /// Every stored key that starts with `label`, with the label stripped and
    /// the version suffix removed. Used to list stored groups.
    pub fn keys_with_label(&self, label: &[u8]) -> Vec<Vec<u8>> {
        let inner = self.inner.lock();
        inner
            .map
            .keys()
            .filter(|k| k.len() >= label.len() + 2 && k.starts_with(label))
            .filter(|k| k[k.len() - 2..] == VERSION_SUFFIX)
            .map(|k| k[label.len()..k.len() - 2].to_vec())
            .collect()
    }

    /// Mark that our external commit for `epoch` waits for the delivery
    /// service: OpenMLS merges an external commit as it builds it, so the
    /// pending state is ours to keep.
    pub fn write_pending_external_commit<G: Serialize>(
        &self,
        group_id: &G,
        epoch: u64,
    ) -> Result<()> {
        self.write(storage_key(PENDING_EXTERNAL_COMMIT, group_id)?, &epoch)
    }

    /// The epoch of our pending external commit in the group, if any.
    pub fn pending_external_commit<G: Serialize>(&self, group_id: &G) -> Result<Option<u64>> {
        self.read(&storage_key(PENDING_EXTERNAL_COMMIT, group_id)?)
    }

    pub fn delete_pending_external_commit<G: Serialize>(&self, group_id: &G) -> Result<()> {
        self.remove(&storage_key(PENDING_EXTERNAL_COMMIT, group_id)?);
        Ok(())
    }

    /// Every stored row, sorted: tests compare it with what the host stored.
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut rows: Vec<_> = self
            .inner
            .lock()
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.to_vec()))
            .collect();
        rows.sort();
        rows
    }

    /// Number of stored rows (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read<V: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<V>> {
        let inner = self.inner.lock();
        inner.get(key).map(decode).transpose()
    }

    fn write<V: Serialize + ?Sized>(&self, key: Vec<u8>, value: &V) -> Result<()> {
        let bytes = encode(value)?;
        self.inner.lock().put(key, bytes);
        Ok(())
    }

    fn remove(&self, key: &[u8]) {
        self.inner.lock().del(key);
    }

    // Lists are a JSON array of JSON-encoded items, as in MemoryStorage.
    fn raw_list(inner: &Inner, key: &[u8]) -> Result<Vec<Vec<u8>>> {
        inner
            .get(key)
            .map(decode)
            .transpose()
            .map(Option::unwrap_or_default)
    }

    fn read_list<V: DeserializeOwned>(&self, key: &[u8]) -> Result<Vec<V>> {
        let inner = self.inner.lock();
        Self::raw_list(&inner, key)?
            .iter()
            .map(|item| decode(item))
            .collect()
    }

    fn list_append<V: Serialize + ?Sized>(&self, key: Vec<u8>, item: &V) -> Result<()> {
        let item = encode(item)?;
        let mut inner = self.inner.lock();
        let mut list = Self::raw_list(&inner, &key)?;
        list.push(item);
        let bytes = encode(&list)?;
        inner.put(key, bytes);
        Ok(())
    }

    fn list_remove<V: Serialize + ?Sized>(&self, key: Vec<u8>, item: &V) -> Result<()> {
        let item = encode(item)?;
        let mut inner = self.inner.lock();
        let mut list = Self::raw_list(&inner, &key)?;
        if let Some(pos) = list.iter().position(|stored| *stored == item) {
            list.remove(pos);
            let bytes = encode(&list)?;
            inner.put(key, bytes);
        }
        Ok(())
    }
}

type V = StorageError;

impl StorageProvider<CURRENT_VERSION> for JournalStorage {
    type Error = V;

    // --- writers ---

    fn write_mls_join_config<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        config: &C,
    ) -> Result<()> {
        self.write(storage_key(JOIN_CONFIG, group_id)?, config)
    }

    fn append_own_leaf_node<
        G: traits::GroupId<CURRENT_VERSION>,
        L: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        leaf_node: &L,
    ) -> Result<()> {
        self.list_append(storage_key(OWN_LEAF_NODES, group_id)?, leaf_node)
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        Q: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        proposal_ref: &R,
        proposal: &Q,
    ) -> Result<()> {
        self.write(
            storage_key(QUEUED_PROPOSAL, &(group_id, proposal_ref))?,
            proposal,
        )?;
        self.list_append(storage_key(PROPOSAL_QUEUE_REFS, group_id)?, proposal_ref)
    }

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &G,
        tree: &T,
    ) -> Result<()> {
        self.write(storage_key(TREE, group_id)?, tree)
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        hash: &H,
    ) -> Result<()> {
        self.write(storage_key(INTERIM_TRANSCRIPT_HASH, group_id)?, hash)
    }

    fn write_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        context: &C,
    ) -> Result<()> {
        self.write(storage_key(GROUP_CONTEXT, group_id)?, context)
    }

    fn write_confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        tag: &T,
    ) -> Result<()> {
        self.write(storage_key(CONFIRMATION_TAG, group_id)?, tag)
    }

    fn write_group_state<
        S: traits::GroupState<CURRENT_VERSION>,
        G: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        state: &S,
    ) -> Result<()> {
        self.write(storage_key(GROUP_STATE, group_id)?, state)
    }

    fn write_message_secrets<
        G: traits::GroupId<CURRENT_VERSION>,
        M: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        secrets: &M,
    ) -> Result<()> {
        self.write(storage_key(MESSAGE_SECRETS, group_id)?, secrets)
    }

    fn write_resumption_psk_store<
        G: traits::GroupId<CURRENT_VERSION>,
        P: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        store: &P,
    ) -> Result<()> {
        self.write(storage_key(RESUMPTION_PSK_STORE, group_id)?, store)
    }

    fn write_own_leaf_index<
        G: traits::GroupId<CURRENT_VERSION>,
        I: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        index: &I,
    ) -> Result<()> {
        self.write(storage_key(OWN_LEAF_NODE_INDEX, group_id)?, index)
    }

    fn write_group_epoch_secrets<
        G: traits::GroupId<CURRENT_VERSION>,
        S: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        secrets: &S,
    ) -> Result<()> {
        self.write(storage_key(EPOCH_SECRETS, group_id)?, secrets)
    }

    fn write_signature_key_pair<
        K: traits::SignaturePublicKey<CURRENT_VERSION>,
        P: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &K,
        key_pair: &P,
    ) -> Result<()> {
        self.write(storage_key(SIGNATURE_KEY_PAIR, public_key)?, key_pair)
    }

    fn write_encryption_key_pair<
        K: traits::EncryptionKey<CURRENT_VERSION>,
        P: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &K,
        key_pair: &P,
    ) -> Result<()> {
        self.write(storage_key(ENCRYPTION_KEY_PAIR, public_key)?, key_pair)
    }

    fn write_encryption_epoch_key_pairs<
        G: traits::GroupId<CURRENT_VERSION>,
        E: traits::EpochKey<CURRENT_VERSION>,
        P: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
        key_pairs: &[P],
    ) -> Result<()> {
        self.write(epoch_key_pairs_key(group_id, epoch, leaf_index)?, key_pairs)
    }

    fn write_key_package<
        R: traits::HashReference<CURRENT_VERSION>,
        P: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &R,
        key_package: &P,
    ) -> Result<()> {
        self.write(storage_key(KEY_PACKAGE, hash_ref)?, key_package)
    }

    fn write_psk<I: traits::PskId<CURRENT_VERSION>, B: traits::PskBundle<CURRENT_VERSION>>(
        &self,
        psk_id: &I,
        psk: &B,
    ) -> Result<()> {
        self.write(storage_key(PSK, psk_id)?, psk)
    }

    // --- getters ---

    fn mls_group_join_config<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<C>> {
        self.read(&storage_key(JOIN_CONFIG, group_id)?)
    }

    fn own_leaf_nodes<G: traits::GroupId<CURRENT_VERSION>, L: traits::LeafNode<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Vec<L>> {
        self.read_list(&storage_key(OWN_LEAF_NODES, group_id)?)
    }

    fn queued_proposal_refs<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Vec<R>> {
        self.read_list(&storage_key(PROPOSAL_QUEUE_REFS, group_id)?)
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        Q: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Vec<(R, Q)>> {
        let refs: Vec<R> = self.queued_proposal_refs(group_id)?;
        refs.into_iter()
            .map(|proposal_ref| {
                let key = storage_key(QUEUED_PROPOSAL, &(group_id, &proposal_ref))?;
                // A reference without its proposal is corrupt state, not a panic.
                let proposal = self.read(&key)?.ok_or(StorageError::Corrupt)?;
                Ok((proposal_ref, proposal))
            })
            .collect()
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<T>> {
        self.read(&storage_key(TREE, group_id)?)
    }

    fn group_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<C>> {
        self.read(&storage_key(GROUP_CONTEXT, group_id)?)
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<H>> {
        self.read(&storage_key(INTERIM_TRANSCRIPT_HASH, group_id)?)
    }

    fn confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<T>> {
        self.read(&storage_key(CONFIRMATION_TAG, group_id)?)
    }

    fn group_state<S: traits::GroupState<CURRENT_VERSION>, G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<Option<S>> {
        self.read(&storage_key(GROUP_STATE, group_id)?)
    }

    fn message_secrets<
        G: traits::GroupId<CURRENT_VERSION>,
        M: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<M>> {
        self.read(&storage_key(MESSAGE_SECRETS, group_id)?)
    }

    fn resumption_psk_store<
        G: traits::GroupId<CURRENT_VERSION>,
        P: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<P>> {
        self.read(&storage_key(RESUMPTION_PSK_STORE, group_id)?)
    }

    fn own_leaf_index<
        G: traits::GroupId<CURRENT_VERSION>,
        I: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<I>> {
        self.read(&storage_key(OWN_LEAF_NODE_INDEX, group_id)?)
    }

    fn group_epoch_secrets<
        G: traits::GroupId<CURRENT_VERSION>,
        S: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<Option<S>> {
        self.read(&storage_key(EPOCH_SECRETS, group_id)?)
    }

    fn signature_key_pair<
        K: traits::SignaturePublicKey<CURRENT_VERSION>,
        P: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &K,
    ) -> Result<Option<P>> {
        self.read(&storage_key(SIGNATURE_KEY_PAIR, public_key)?)
    }

    fn encryption_key_pair<
        P: traits::HpkeKeyPair<CURRENT_VERSION>,
        K: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &K,
    ) -> Result<Option<P>> {
        self.read(&storage_key(ENCRYPTION_KEY_PAIR, public_key)?)
    }

    fn encryption_epoch_key_pairs<
        G: traits::GroupId<CURRENT_VERSION>,
        E: traits::EpochKey<CURRENT_VERSION>,
        P: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> Result<Vec<P>> {
        let stored: Option<Vec<P>> =
            self.read(&epoch_key_pairs_key(group_id, epoch, leaf_index)?)?;
        Ok(stored.unwrap_or_default())
    }

    fn key_package<
        R: traits::HashReference<CURRENT_VERSION>,
        P: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &R,
    ) -> Result<Option<P>> {
        self.read(&storage_key(KEY_PACKAGE, hash_ref)?)
    }

    fn psk<B: traits::PskBundle<CURRENT_VERSION>, I: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &I,
    ) -> Result<Option<B>> {
        self.read(&storage_key(PSK, psk_id)?)
    }

    // --- deleters ---

    fn remove_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        proposal_ref: &R,
    ) -> Result<()> {
        self.list_remove(storage_key(PROPOSAL_QUEUE_REFS, group_id)?, proposal_ref)?;
        self.remove(&storage_key(QUEUED_PROPOSAL, &(group_id, proposal_ref))?);
        Ok(())
    }

    fn delete_own_leaf_nodes<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<()> {
        self.remove(&storage_key(OWN_LEAF_NODES, group_id)?);
        Ok(())
    }

    fn delete_group_config<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<()> {
        self.remove(&storage_key(JOIN_CONFIG, group_id)?);
        Ok(())
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<()> {
        self.remove(&storage_key(TREE, group_id)?);
        Ok(())
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<()> {
        self.remove(&storage_key(CONFIRMATION_TAG, group_id)?);
        Ok(())
    }

    fn delete_group_state<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<()> {
        self.remove(&storage_key(GROUP_STATE, group_id)?);
        Ok(())
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> Result<()> {
        self.remove(&storage_key(GROUP_CONTEXT, group_id)?);
        Ok(())
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<()> {
        self.remove(&storage_key(INTERIM_TRANSCRIPT_HASH, group_id)?);
        Ok(())
    }

    fn delete_message_secrets<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<()> {
        self.remove(&storage_key(MESSAGE_SECRETS, group_id)?);
        Ok(())
    }

    fn delete_all_resumption_psk_secrets<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<()> {
        self.remove(&storage_key(RESUMPTION_PSK_STORE, group_id)?);
        Ok(())
    }

    fn delete_own_leaf_index<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<()> {
        self.remove(&storage_key(OWN_LEAF_NODE_INDEX, group_id)?);
        Ok(())
    }

    fn delete_group_epoch_secrets<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &G,
    ) -> Result<()> {
        self.remove(&storage_key(EPOCH_SECRETS, group_id)?);
        Ok(())
    }

    fn clear_proposal_queue<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
    ) -> Result<()> {
        // Delete every queued proposal body (with label and version, unlike
        // openmls_memory_storage, openmls #2188), then the reference list.
        let refs: Vec<R> = self.queued_proposal_refs(group_id)?;
        for proposal_ref in &refs {
            self.remove(&storage_key(QUEUED_PROPOSAL, &(group_id, proposal_ref))?);
        }
        self.remove(&storage_key(PROPOSAL_QUEUE_REFS, group_id)?);
        Ok(())
    }

    fn delete_signature_key_pair<K: traits::SignaturePublicKey<CURRENT_VERSION>>(
        &self,
        public_key: &K,
    ) -> Result<()> {
        self.remove(&storage_key(SIGNATURE_KEY_PAIR, public_key)?);
        Ok(())
    }

    fn delete_encryption_key_pair<K: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &K,
    ) -> Result<()> {
        self.remove(&storage_key(ENCRYPTION_KEY_PAIR, public_key)?);
        Ok(())
    }

    fn delete_encryption_epoch_key_pairs<
        G: traits::GroupId<CURRENT_VERSION>,
        E: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> Result<()> {
        self.remove(&epoch_key_pairs_key(group_id, epoch, leaf_index)?);
        Ok(())
    }

    fn delete_key_package<R: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &R,
    ) -> Result<()> {
        self.remove(&storage_key(KEY_PACKAGE, hash_ref)?);
        Ok(())
    }

    fn delete_psk<I: traits::PskId<CURRENT_VERSION>>(&self, psk_id: &I) -> Result<()> {
        self.remove(&storage_key(PSK, psk_id)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_restores_previous_values() {
        let s = JournalStorage::default();
        s.load(vec![(b"a".to_vec(), b"1".to_vec())]);
        s.inner.lock().put(b"a".to_vec(), b"2".to_vec());
        s.inner.lock().put(b"b".to_vec(), b"3".to_vec());
        s.inner.lock().del(b"a");
        s.rollback();
        assert!(s.is_clean());
        assert_eq!(s.inner.lock().get(b"a"), Some(&b"1"[..]));
        assert_eq!(s.inner.lock().get(b"b"), None);
    }

    #[test]
    fn journal_keeps_last_write() {
        let s = JournalStorage::default();
        s.inner.lock().put(b"a".to_vec(), b"1".to_vec());
        s.inner.lock().put(b"a".to_vec(), b"2".to_vec());
        s.inner.lock().put(b"b".to_vec(), b"3".to_vec());
        s.inner.lock().del(b"b");
        let changes = s.drain_journal();
        assert_eq!(
            changes,
            vec![(b"a".to_vec(), Some(b"2".to_vec())), (b"b".to_vec(), None)]
        );
        assert!(s.is_clean());
    }
}
