//! The Noise channel of cloud mode v2: the suite `Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256`
//! (clatter), the static identity generated at start, the suite-tagged public key as the
//! registry carries it, the two-message hybrid IK handshake for both roles (the executor is
//! the responder; the initiator exists for tests and the e2e harness), the transcript
//! prologue that binds a handshake to one registration and relay stream, and the transport
//! records (one AES-GCM record per call, implicit nonces).
//!
//! It owns no sockets and no framing: callers hand it byte strings in order. It imports
//! nothing of ours (tests include it by path). Private keys live only in memory: no type
//! here prints, serializes or logs them.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clatter::bytearray::ByteArray;
use clatter::bytearray::SensitiveByteArray;
use clatter::constants::MAX_MESSAGE_LEN;
use clatter::crypto::dh::X25519;
use clatter::crypto::kem::rust_crypto_ml_kem::MlKem768;
use clatter::error::{CipherError, CipherResult};
use clatter::handshakepattern::noise_hybrid_ik;
use clatter::traits::{Cipher, CryptoComponent, Dh, Handshaker, Hash, Kem};
use clatter::transportstate::TransportState;
use clatter::{HybridHandshake, HybridHandshakeParams, KeyPair};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

/// The suite tag that travels with every public key (registry JSON `suite`).
pub const SUITE: &str = "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256";
/// First part of every prologue; versions the transcript binding.
pub const PROLOGUE_DOMAIN: &[u8] = b"codex-exec-server-relay-noise/v1";
/// X25519 public key length in bytes.
#[cfg_attr(not(test), allow(dead_code))]
pub const X25519_PUBLIC_KEY_BYTES: usize = 32;
/// ML-KEM-768 encapsulation key length in bytes (FIPS 203).
#[cfg_attr(not(test), allow(dead_code))]
pub const MLKEM768_PUBLIC_KEY_BYTES: usize = 1184;
/// AES-GCM tag length in bytes; every record is at least this long.
pub const TAG_BYTES: usize = 16;
/// Largest Noise message (handshake or record) in bytes (Noise spec; clatter's limit).
pub const MAX_NOISE_MESSAGE_BYTES: usize = MAX_MESSAGE_LEN;
/// Records per direction before the channel refuses to go on (the relay sequence is a u32).
const MAX_RECORDS_PER_DIRECTION: u64 = u32::MAX as u64;

type Handshake = HybridHandshake<X25519, MlKem768, MlKem768, AesGcm, Sha256>;
type Transport = TransportState<AesGcm, Sha256>;
type DhKeyPair = KeyPair<<X25519 as Dh>::PubKey, <X25519 as Dh>::PrivateKey>;
type KemKeyPair = KeyPair<<MlKem768 as Kem>::PubKey, <MlKem768 as Kem>::SecretKey>;

// --- the suite's AESGCM and SHA256 on ring -----------------------------------------------
// rustls already links ring's AES-GCM and SHA-256 (assembly, hardware-accelerated), so the
// Noise suite uses them too instead of clatter's RustCrypto ones: ~22 KB less static binary.
// Same algorithms, same Noise nonce layout (4 zero bytes, then the counter big-endian);
// the tests compare both against clatter's own implementations.

/// AES-256-GCM with Noise nonces, on ring.
#[derive(Clone)]
pub struct AesGcm;

impl AesGcm {
    fn key(k: &[u8; 32]) -> CipherResult<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, k).map(LessSafeKey::new).map_err(|_| CipherError::Encrypt)
    }

    fn nonce(n: u64) -> Nonce {
        let mut full = [0u8; 12];
        full[4..].copy_from_slice(&n.to_be_bytes());
        Nonce::assume_unique_for_key(full)
    }
}

impl CryptoComponent for AesGcm {
    fn name() -> &'static str {
        "AESGCM"
    }
}

impl Cipher for AesGcm {
    type Key = SensitiveByteArray<[u8; 32]>;

    fn tag_len() -> usize {
        TAG_BYTES
    }

    fn encrypt(
        k: &Self::Key,
        nonce: u64,
        ad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> CipherResult<()> {
        if plaintext.len().checked_add(TAG_BYTES) != Some(out.len()) {
            return Err(CipherError::Encrypt);
        }
        out[..plaintext.len()].copy_from_slice(plaintext);
        Self::encrypt_in_place(k, nonce, ad, out, plaintext.len()).map(|_| ())
    }

    fn encrypt_in_place(
        k: &Self::Key,
        nonce: u64,
        ad: &[u8],
        in_out: &mut [u8],
        plaintext_len: usize,
    ) -> CipherResult<usize> {
        let out_len = plaintext_len.checked_add(TAG_BYTES).filter(|&n| n <= in_out.len());
        let out_len = out_len.ok_or(CipherError::Encrypt)?;
        let (buffer, tag_out) = in_out[..out_len].split_at_mut(plaintext_len);
        let tag = Self::key(k)?
            .seal_in_place_separate_tag(Self::nonce(nonce), Aad::from(ad), buffer)
            .map_err(|_| CipherError::Encrypt)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(out_len)
    }

    fn decrypt(
        k: &Self::Key,
        nonce: u64,
        ad: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> CipherResult<()> {
        if ciphertext.len().checked_sub(TAG_BYTES) != Some(out.len()) {
            return Err(CipherError::Decrypt);
        }
        let (body, tag) = ciphertext.split_at(out.len());
        out.copy_from_slice(body);
        let tag = Tag::try_from(tag).map_err(|_| CipherError::Decrypt)?;
        let key = Self::key(k).map_err(|_| CipherError::Decrypt)?;
        key.open_in_place_separate_tag(Self::nonce(nonce), Aad::from(ad), tag, out, 0..)
            .map(|_| ())
            .map_err(|_| CipherError::Decrypt)
    }

    fn decrypt_in_place(
        k: &Self::Key,
        nonce: u64,
        ad: &[u8],
        in_out: &mut [u8],
        ciphertext_len: usize,
    ) -> CipherResult<usize> {
        if ciphertext_len > in_out.len() || ciphertext_len < TAG_BYTES {
            return Err(CipherError::Decrypt);
        }
        let key = Self::key(k).map_err(|_| CipherError::Decrypt)?;
        let plain = key
            .open_in_place(Self::nonce(nonce), Aad::from(ad), &mut in_out[..ciphertext_len])
            .map_err(|_| CipherError::Decrypt)?;
        Ok(plain.len())
    }
}

/// SHA-256, on ring.
#[derive(Clone)]
pub struct Sha256(Context);

impl Default for Sha256 {
    fn default() -> Self {
        Sha256(Context::new(&SHA256))
    }
}

impl CryptoComponent for Sha256 {
    fn name() -> &'static str {
        "SHA256"
    }
}

impl Hash for Sha256 {
    type Block = [u8; 64];
    type Output = SensitiveByteArray<[u8; 32]>;

    fn input(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn result(self) -> Self::Output {
        Self::Output::from_slice(self.0.finish().as_ref())
    }
}

/// What went wrong in the channel. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    KeyGeneration(String),
    #[cfg_attr(not(test), allow(dead_code))]
    InvalidPublicKey(&'static str),
    InvalidMessage(&'static str),
    Handshake(String),
    Transport(String),
    Exhausted,
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::KeyGeneration(e) => write!(f, "noise key generation failed: {e}"),
            ChannelError::InvalidPublicKey(e) => write!(f, "invalid noise public key: {e}"),
            ChannelError::InvalidMessage(e) => write!(f, "invalid noise message: {e}"),
            ChannelError::Handshake(e) => write!(f, "noise handshake failed: {e}"),
            ChannelError::Transport(e) => write!(f, "noise record rejected: {e}"),
            ChannelError::Exhausted => write!(f, "noise record nonce exhausted"),
        }
    }
}

impl From<clatter::error::HandshakeError> for ChannelError {
    fn from(e: clatter::error::HandshakeError) -> Self {
        ChannelError::Handshake(e.to_string())
    }
}

impl From<clatter::error::TransportError> for ChannelError {
    fn from(e: clatter::error::TransportError) -> Self {
        ChannelError::Transport(e.to_string())
    }
}

/// A public key as the registry carries it: `{"suite", "x25519_public_key",
/// "mlkem768_public_key"}` with standard base64 values. Unknown fields are refused, like
/// upstream, so a key of another suite is never taken for this one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    pub suite: String,
    pub x25519_public_key: String,
    pub mlkem768_public_key: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public, but whole keys in logs make correlating environments easy.
        f.debug_struct("PublicKey").field("suite", &self.suite).finish_non_exhaustive()
    }
}

impl PublicKey {
    fn from_parts(dh: &[u8], kem: &[u8]) -> PublicKey {
        PublicKey {
            suite: SUITE.to_string(),
            x25519_public_key: STANDARD.encode(dh),
            mlkem768_public_key: STANDARD.encode(kem),
        }
    }

    #[cfg_attr(not(test), allow(dead_code))]
    /// Checks the suite and both lengths before anything reaches clatter (whose
    /// `from_slice` asserts lengths).
    fn decode(&self) -> Result<([u8; X25519_PUBLIC_KEY_BYTES], Vec<u8>), ChannelError> {
        if self.suite != SUITE {
            return Err(ChannelError::InvalidPublicKey("unsupported suite"));
        }
        let dh = STANDARD
            .decode(&self.x25519_public_key)
            .map_err(|_| ChannelError::InvalidPublicKey("x25519 key is not base64"))?;
        let dh: [u8; X25519_PUBLIC_KEY_BYTES] =
            dh.try_into().map_err(|_| ChannelError::InvalidPublicKey("x25519 key length"))?;
        let kem = STANDARD
            .decode(&self.mlkem768_public_key)
            .map_err(|_| ChannelError::InvalidPublicKey("ml-kem-768 key is not base64"))?;
        if kem.len() != MLKEM768_PUBLIC_KEY_BYTES {
            return Err(ChannelError::InvalidPublicKey("ml-kem-768 key length"));
        }
        Ok((dh, kem))
    }
}

/// This process's static identity: an X25519 and an ML-KEM-768 key pair, generated at
/// start and kept in memory only. Cloned to build one handshake per relay stream.
#[derive(Clone)]
pub struct Identity {
    dh: DhKeyPair,
    kem: KemKeyPair,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    pub fn generate() -> Result<Identity, ChannelError> {
        let dh = X25519::genkey().map_err(|e| ChannelError::KeyGeneration(e.to_string()))?;
        let kem = MlKem768::genkey().map_err(|e| ChannelError::KeyGeneration(e.to_string()))?;
        Ok(Identity { dh, kem })
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_parts(self.dh.public.as_slice(), self.kem.public.as_slice())
    }
}

/// The prologue both peers mix in before the first message: the domain, the environment
/// id, the executor registration id and the relay stream id, each preceded by its length
/// as a big-endian u64 (the width the 0.171 executor uses; see docs in noise-spec).
pub fn prologue(environment_id: &str, executor_registration_id: &str, stream_id: &str) -> Vec<u8> {
    let parts: [&[u8]; 4] = [
        PROLOGUE_DOMAIN,
        environment_id.as_bytes(),
        executor_registration_id.as_bytes(),
        stream_id.as_bytes(),
    ];
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn check_len(len: usize, what: &'static str) -> Result<(), ChannelError> {
    if len > MAX_NOISE_MESSAGE_BYTES {
        return Err(ChannelError::InvalidMessage(what));
    }
    Ok(())
}

/// The initiator between its first and second message (harness side; tests only in
/// this daemon). Consumed by `finish`, so one state never completes twice.
#[cfg_attr(not(test), allow(dead_code))]
pub struct Initiator {
    handshake: Handshake,
}

#[cfg_attr(not(test), allow(dead_code))]
impl Initiator {
    /// Writes message 1 to the pinned responder key; `payload` (the registry's harness
    /// key authorization) travels encrypted inside it.
    pub fn start(
        identity: &Identity,
        responder: &PublicKey,
        prologue: &[u8],
        payload: &[u8],
    ) -> Result<(Initiator, Vec<u8>), ChannelError> {
        let (rs_dh, rs_kem) = responder.decode()?;
        let params = HybridHandshakeParams::new(noise_hybrid_ik(), true)
            .with_prologue(prologue)
            .with_s(identity.dh.clone())
            .with_s_kem(identity.kem.clone())
            .with_rs(rs_dh)
            .with_rs_kem(<MlKem768 as Kem>::PubKey::from_slice(&rs_kem));
        let mut handshake = Handshake::new(params)?;
        let mut out = vec![0u8; MAX_NOISE_MESSAGE_BYTES];
        let n = handshake.write_message(payload, &mut out)?;
        out.truncate(n);
        Ok((Initiator { handshake }, out))
    }

    /// Reads message 2 (its payload must be empty) and enters transport mode.
    pub fn finish(mut self, response: &[u8]) -> Result<Channel, ChannelError> {
        check_len(response.len(), "handshake response too large")?;
        let mut payload = vec![0u8; MAX_NOISE_MESSAGE_BYTES];
        let n = self.handshake.read_message(response, &mut payload)?;
        if n != 0 {
            return Err(ChannelError::InvalidMessage("handshake response payload must be empty"));
        }
        Ok(Channel { transport: self.handshake.finalize()? })
    }
}

/// The responder after message 1 authenticated the initiator's static key, before the
/// registry said that key may connect. Not a channel yet: `complete` makes one.
pub struct PendingResponder {
    handshake: Handshake,
    initiator: PublicKey,
    payload: Vec<u8>,
}

impl PendingResponder {
    pub fn read_request(
        identity: &Identity,
        prologue: &[u8],
        request: &[u8],
    ) -> Result<PendingResponder, ChannelError> {
        check_len(request.len(), "handshake request too large")?;
        let params = HybridHandshakeParams::new(noise_hybrid_ik(), false)
            .with_prologue(prologue)
            .with_s(identity.dh.clone())
            .with_s_kem(identity.kem.clone());
        let mut handshake = Handshake::new(params)?;
        let mut payload = vec![0u8; MAX_NOISE_MESSAGE_BYTES];
        let n = handshake.read_message(request, &mut payload)?;
        payload.truncate(n);
        let remote = handshake
            .get_remote_static()
            .ok_or(ChannelError::InvalidMessage("handshake request lacks the initiator key"))?;
        let initiator = PublicKey::from_parts(remote.dh().as_slice(), remote.kem().as_slice());
        Ok(PendingResponder { handshake, initiator, payload })
    }

    /// The initiator's static key, authenticated by message 1.
    pub fn initiator(&self) -> &PublicKey {
        &self.initiator
    }

    /// The decrypted message-1 payload (the harness key authorization).
    pub fn take_payload(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.payload)
    }

    /// Writes message 2 (empty payload) and enters transport mode.
    pub fn complete(mut self) -> Result<(Channel, Vec<u8>), ChannelError> {
        let mut out = vec![0u8; MAX_NOISE_MESSAGE_BYTES];
        let n = self.handshake.write_message(&[], &mut out)?;
        out.truncate(n);
        Ok((Channel { transport: self.handshake.finalize()? }, out))
    }
}

/// An established channel: independent implicit send and receive nonces, so records
/// must be decrypted in order and each plaintext encrypted exactly once.
pub struct Channel {
    transport: Transport,
}

impl Channel {
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ChannelError> {
        if self.transport.sending_nonce() >= MAX_RECORDS_PER_DIRECTION {
            return Err(ChannelError::Exhausted);
        }
        check_len(plaintext.len() + AesGcm::tag_len(), "record plaintext too large")?;
        Ok(self.transport.send_vec(plaintext)?)
    }

    pub fn decrypt(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, ChannelError> {
        if self.transport.receiving_nonce() >= MAX_RECORDS_PER_DIRECTION {
            return Err(ChannelError::Exhausted);
        }
        if ciphertext.len() < TAG_BYTES {
            return Err(ChannelError::InvalidMessage("record shorter than its tag"));
        }
        check_len(ciphertext.len(), "record too large")?;
        Ok(self.transport.receive_vec(ciphertext)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_suite_matches_clatters() {
        use clatter::crypto::cipher::AesGcm as RustCryptoAesGcm;
        use clatter::crypto::hash::Sha256 as RustCryptoSha256;
        let key = SensitiveByteArray::from_slice(&[7u8; 32]);
        for (nonce, len) in
            [(0u64, 0usize), (1, 1), (0x0102_0304_0506_0708, 100), (u64::MAX - 1, 4096)]
        {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut ours = vec![0u8; len + TAG_BYTES];
            let mut theirs = vec![0u8; len + TAG_BYTES];
            AesGcm::encrypt(&key, nonce, b"ad", &plain, &mut ours).unwrap();
            RustCryptoAesGcm::encrypt(&key, nonce, b"ad", &plain, &mut theirs).unwrap();
            assert_eq!(ours, theirs, "nonce {nonce} len {len}");
            let mut back = vec![0u8; len];
            AesGcm::decrypt(&key, nonce, b"ad", &theirs, &mut back).unwrap();
            assert_eq!(back, plain);
            let mut in_place = theirs.clone();
            let n = AesGcm::decrypt_in_place(&key, nonce, b"ad", &mut in_place, len + TAG_BYTES);
            assert_eq!(n.ok(), Some(len));
            assert_eq!(in_place[..len], plain[..]);
            theirs[0] ^= 1;
            assert!(AesGcm::decrypt(&key, nonce, b"ad", &theirs, &mut back).is_err());
            assert!(AesGcm::decrypt(&key, nonce ^ 1, b"ad", &ours, &mut back).is_err());
            assert_eq!(Sha256::hash(&plain).as_slice(), RustCryptoSha256::hash(&plain).as_slice());
            assert_eq!(
                Sha256::hmac_many(b"key", &[&plain, b"x"]).as_slice(),
                RustCryptoSha256::hmac_many(b"key", &[&plain, b"x"]).as_slice()
            );
        }
    }

    fn pair(
        prologue_i: &[u8],
        prologue_r: &[u8],
    ) -> Result<(Channel, Channel, PublicKey), ChannelError> {
        let harness = Identity::generate()?;
        let executor = Identity::generate()?;
        let (init, m1) = Initiator::start(&harness, &executor.public_key(), prologue_i, b"authz")?;
        // Known sizes (matched the 0.171 executor): 3568 + payload, and 3424.
        assert_eq!(m1.len(), 3568 + 5);
        let mut pending = PendingResponder::read_request(&executor, prologue_r, &m1)?;
        assert_eq!(pending.take_payload(), b"authz");
        let seen = pending.initiator().clone();
        let (responder, m2) = pending.complete()?;
        assert_eq!(m2.len(), 3424);
        let initiator = init.finish(&m2)?;
        assert_eq!(seen, harness.public_key());
        Ok((initiator, responder, seen))
    }

    #[test]
    fn prologue_known_answer() {
        // Upstream's vector (u64 big-endian lengths, the 0.171 encoding).
        assert_eq!(
            prologue("env-1", "registration-1", "stream-1"),
            b"\x00\x00\x00\x00\x00\x00\x00\x20codex-exec-server-relay-noise/v1\
              \x00\x00\x00\x00\x00\x00\x00\x05env-1\
              \x00\x00\x00\x00\x00\x00\x00\x0eregistration-1\
              \x00\x00\x00\x00\x00\x00\x00\x08stream-1"
                .to_vec()
        );
    }

    #[test]
    fn handshake_roundtrip_and_records() {
        let p = prologue("e", "r", "s");
        let (mut i, mut r, _) = pair(&p, &p).expect("handshake");
        let c = i.encrypt(b"hello").expect("encrypt");
        assert_eq!(c.len(), 5 + TAG_BYTES);
        assert_eq!(r.decrypt(&c).expect("decrypt"), b"hello");
        let back = r.encrypt(b"world").expect("encrypt");
        assert_eq!(i.decrypt(&back).expect("decrypt"), b"world");
    }

    #[test]
    fn mismatched_prologue_is_refused() {
        let harness = Identity::generate().expect("id");
        let executor = Identity::generate().expect("id");
        let (_i, m1) =
            Initiator::start(&harness, &executor.public_key(), &prologue("e", "r", "s1"), b"a")
                .expect("start");
        assert!(PendingResponder::read_request(&executor, &prologue("e", "r", "s2"), &m1).is_err());
    }

    #[test]
    fn wrong_responder_key_is_refused() {
        let harness = Identity::generate().expect("id");
        let executor = Identity::generate().expect("id");
        let other = Identity::generate().expect("id");
        let p = prologue("e", "r", "s");
        let (_i, m1) = Initiator::start(&harness, &other.public_key(), &p, b"a").expect("start");
        assert!(PendingResponder::read_request(&executor, &p, &m1).is_err());
    }

    #[test]
    fn tampered_replayed_reordered_truncated_records_are_refused() {
        let p = prologue("e", "r", "s");
        let (mut i, mut r, _) = pair(&p, &p).expect("handshake");
        let c0 = i.encrypt(b"zero").expect("enc");
        let c1 = i.encrypt(b"one").expect("enc");
        // reordered: record 1 before record 0 fails (implicit nonces)
        assert!(r.decrypt(&c1).is_err());
        let (mut i, mut r, _) = pair(&p, &p).expect("handshake");
        let c0b = i.encrypt(b"zero").expect("enc");
        let mut tampered = c0b.clone();
        tampered[0] ^= 1;
        assert!(r.decrypt(&tampered).is_err());
        let (mut i, mut r, _) = pair(&p, &p).expect("handshake");
        let c = i.encrypt(b"zero").expect("enc");
        assert!(r.decrypt(&c[..c.len() - 1]).is_err()); // truncated
        assert!(r.decrypt(&c[..TAG_BYTES - 1]).is_err()); // shorter than a tag
        let (mut i, mut r, _) = pair(&p, &p).expect("handshake");
        let c = i.encrypt(b"zero").expect("enc");
        assert_eq!(r.decrypt(&c).expect("first"), b"zero");
        assert!(r.decrypt(&c).is_err()); // replayed
        drop((c0, c0b));
    }

    #[test]
    fn public_keys_are_checked() {
        let key = Identity::generate().expect("id").public_key();
        let mut bad = key.clone();
        bad.suite = "Noise_IK_25519_AESGCM_SHA256".into();
        assert_eq!(bad.decode().err(), Some(ChannelError::InvalidPublicKey("unsupported suite")));
        let mut short = key.clone();
        short.x25519_public_key = STANDARD.encode([0u8; 31]);
        assert!(short.decode().is_err());
        let mut kem = key;
        kem.mlkem768_public_key = STANDARD.encode([0u8; 1183]);
        assert!(kem.decode().is_err());
        let json = r#"{"suite":"s","x25519_public_key":"a","mlkem768_public_key":"b","extra":1}"#;
        assert!(serde_json::from_str::<PublicKey>(json).is_err());
    }

    #[test]
    fn debug_output_carries_no_key_material() {
        let id = Identity::generate().expect("id");
        let key = id.public_key();
        assert!(!format!("{id:?}").contains(&key.x25519_public_key));
        assert!(!format!("{key:?}").contains(&key.x25519_public_key));
    }
}
