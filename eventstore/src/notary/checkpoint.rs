//! Signed checkpoints: a tree size and root, the time they were signed, and an Ed25519
//! signature over a short text a third party can rebuild (ADR 0036).
//!
//! The signed bytes are, line by line (each ending in `\n`):
//!
//! ```text
//! chronicle checkpoint v1
//! <origin>
//! <tree size, decimal>
//! <root, 64 lowercase hex digits>
//! <signed at, RFC 3339 in UTC with microseconds, e.g. 2026-12-07T05:22:00.123456Z>
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::merkle::Hash;

/// `CHRONICLE_SIGNING_KEY`: base64 of the 32-byte Ed25519 seed checkpoints are signed
/// with; or `CHRONICLE_SIGNING_KEY_FILE`, a file holding the same. Never in the database.
pub const SIGNING_KEY_ENV: &str = "CHRONICLE_SIGNING_KEY";
pub const SIGNING_KEY_FILE_ENV: &str = "CHRONICLE_SIGNING_KEY_FILE";

/// The first line of every signed checkpoint.
pub const FORMAT_LINE: &str = "chronicle checkpoint v1";

/// Something wrong with signing key material (never the material itself).
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("signing key: {0}")]
    Material(String),
}

/// The key checkpoints are signed with.
pub struct CheckpointKey {
    signing: SigningKey,
    development: bool,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointKey")
            .field("key_id", &self.key_id())
            .field("development", &self.development)
            .finish_non_exhaustive()
    }
}

impl CheckpointKey {
    /// A key from base64 of its 32-byte seed.
    pub fn from_base64(text: &str) -> Result<Self, SigningKeyError> {
        let bytes = Zeroizing::new(
            BASE64
                .decode(text.trim())
                .map_err(|_| SigningKeyError::Material("not base64".into()))?,
        );
        let seed: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SigningKeyError::Material(format!("{} bytes, not 32", bytes.len())))?;
        Ok(Self {
            signing: SigningKey::from_bytes(seed),
            development: false,
        })
    }

    /// A key derived from a fixed string: for development only (a warning says so at
    /// start), like the development JWT secret and master keys.
    pub fn development() -> Self {
        let seed: [u8; 32] = Sha256::digest(b"chronicle development checkpoint key").into();
        Self {
            signing: SigningKey::from_bytes(&seed),
            development: true,
        }
    }

    /// The key the environment names ([`SIGNING_KEY_ENV`] or [`SIGNING_KEY_FILE_ENV`]);
    /// the development key when it names none. Malformed material or an unreadable file
    /// is an error, never a silent fallback.
    pub fn from_env() -> Result<Self, SigningKeyError> {
        Self::from_settings(
            std::env::var(SIGNING_KEY_ENV).ok().as_deref(),
            std::env::var(SIGNING_KEY_FILE_ENV).ok().as_deref(),
        )
    }

    /// As [`from_env`](Self::from_env), from the two settings' values.
    pub fn from_settings(
        material: Option<&str>,
        file: Option<&str>,
    ) -> Result<Self, SigningKeyError> {
        match (
            material.filter(|m| !m.trim().is_empty()),
            file.filter(|f| !f.is_empty()),
        ) {
            (Some(_), Some(_)) => Err(SigningKeyError::Material(format!(
                "set {SIGNING_KEY_ENV} or {SIGNING_KEY_FILE_ENV}, not both"
            ))),
            (Some(material), None) => Self::from_base64(material)
                .map_err(|e| SigningKeyError::Material(format!("{SIGNING_KEY_ENV}: {e}"))),
            (None, Some(path)) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    SigningKeyError::Material(format!("{SIGNING_KEY_FILE_ENV} {path:?}: {e}"))
                })?);
                Self::from_base64(&text).map_err(|e| {
                    SigningKeyError::Material(format!("{SIGNING_KEY_FILE_ENV} {path:?}: {e}"))
                })
            }
            (None, None) => Ok(Self::development()),
        }
    }

    /// Whether this is the development key.
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// The public key's id (see [`PublicKey::key_id`]).
    pub fn key_id(&self) -> String {
        self.public().key_id()
    }

    /// Signs `checkpoint`.
    pub fn sign(&self, checkpoint: Checkpoint) -> SignedCheckpoint {
        let signature = self.signing.sign(&checkpoint.signed_bytes());
        SignedCheckpoint {
            key_id: self.key_id(),
            signature: BASE64.encode(signature.to_bytes()),
            checkpoint,
        }
    }
}

/// A checkpoint verifier's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// From base64 of the 32-byte public key.
    pub fn from_base64(text: &str) -> Result<Self, SigningKeyError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| SigningKeyError::Material("public key: not base64".into()))?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            SigningKeyError::Material(format!("public key: {} bytes, not 32", bytes.len()))
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| SigningKeyError::Material("public key: not a curve point".into()))
    }

    /// Base64 of the 32 bytes.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0.as_bytes())
    }

    /// The first 8 bytes of the key's SHA-256, in hex: names the key in checkpoints.
    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }

    /// Whether `signed` carries a valid signature by this key (strict Ed25519
    /// verification: no malleable signatures, no weak keys).
    pub fn verifies(&self, signed: &SignedCheckpoint) -> bool {
        let Ok(bytes) = BASE64.decode(&signed.signature) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        signed.key_id == self.key_id()
            && self
                .0
                .verify_strict(
                    &signed.checkpoint.signed_bytes(),
                    &Signature::from_bytes(&bytes),
                )
                .is_ok()
    }
}

/// What a checkpoint states.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Which log: `CHRONICLE_CHECKPOINT_ORIGIN` (one line, no newline).
    pub origin: String,
    pub tree_size: u64,
    /// The tree's root, hex.
    pub root_hash: String,
    /// When it was signed, exactly as signed (RFC 3339, UTC, microseconds).
    pub signed_at: String,
}

impl Checkpoint {
    /// The checkpoint of the tree of `tree_size` leaves with `root`, at `at`.
    pub fn new(origin: &str, tree_size: u64, root: &Hash, at: DateTime<Utc>) -> Self {
        Self {
            origin: origin.replace('\n', " "),
            tree_size,
            root_hash: hex::encode(root),
            signed_at: at.to_rfc3339_opts(SecondsFormat::Micros, true),
        }
    }

    /// The root as bytes; `None` if the hex is malformed.
    pub fn root_bytes(&self) -> Option<Hash> {
        hex::decode(&self.root_hash).ok()?.try_into().ok()
    }

    /// The bytes the signature covers (see the module's documentation).
    pub fn signed_bytes(&self) -> Vec<u8> {
        format!(
            "{FORMAT_LINE}\n{}\n{}\n{}\n{}\n",
            self.origin, self.tree_size, self.root_hash, self.signed_at
        )
        .into_bytes()
    }
}

/// A checkpoint with its signature: one line of an auditor's export, one message of the
/// checkpoints topic, one entry of `GET /v1/audit/checkpoints`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
    /// [`PublicKey::key_id`] of the signing key.
    pub key_id: String,
    /// Base64 of the 64-byte Ed25519 signature over [`Checkpoint::signed_bytes`].
    pub signature: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        let at = DateTime::parse_from_rfc3339("2026-12-07T05:22:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        Checkpoint::new("chronicle", 42, &[7; 32], at)
    }

    #[test]
    fn the_signed_text_is_what_the_format_says() {
        let text = String::from_utf8(checkpoint().signed_bytes()).unwrap();
        assert_eq!(
            text,
            format!(
                "chronicle checkpoint v1\nchronicle\n42\n{}\n2026-12-07T05:22:00.123456Z\n",
                "07".repeat(32)
            )
        );
    }

    #[test]
    fn a_signature_verifies_with_its_key_only_and_only_for_what_it_signed() {
        let key = CheckpointKey::from_base64(&BASE64.encode([3u8; 32])).unwrap();
        let signed = key.sign(checkpoint());
        assert!(key.public().verifies(&signed));
        let public = PublicKey::from_base64(&key.public().to_base64()).unwrap();
        assert!(public.verifies(&signed));

        let other = CheckpointKey::development();
        let forged = other.sign(checkpoint());
        assert!(!key.public().verifies(&forged));
        let mut relabelled = forged.clone();
        relabelled.key_id = key.key_id();
        assert!(!key.public().verifies(&relabelled));

        let mut bigger = signed.clone();
        bigger.checkpoint.tree_size += 1;
        assert!(!key.public().verifies(&bigger));
        let mut garbled = signed;
        garbled.signature = "not base64!".into();
        assert!(!key.public().verifies(&garbled));
    }

    #[test]
    fn key_material_is_checked_and_never_shown() {
        assert!(CheckpointKey::from_base64("AAAA").is_err());
        assert!(CheckpointKey::from_settings(Some("x"), Some("/nonexistent")).is_err());
        let error = CheckpointKey::from_settings(None, Some("/nonexistent/key")).unwrap_err();
        assert!(error.to_string().contains(SIGNING_KEY_FILE_ENV));
        assert!(
            CheckpointKey::from_settings(None, None)
                .unwrap()
                .is_development()
        );
        let seed = BASE64.encode([9u8; 32]);
        let key = CheckpointKey::from_settings(Some(&seed), None).unwrap();
        assert!(!format!("{key:?}").contains(&seed));
        assert!(!key.is_development());
    }

    #[test]
    fn an_export_line_round_trips() {
        let signed = CheckpointKey::development().sign(checkpoint());
        let line = serde_json::to_string(&signed).unwrap();
        assert!(line.contains("\"tree_size\":42"));
        let back: SignedCheckpoint = serde_json::from_str(&line).unwrap();
        assert_eq!(back, signed);
        assert!(CheckpointKey::development().public().verifies(&back));
    }
}
