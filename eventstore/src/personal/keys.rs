//! The key material (ADR 0035): master keys that wrap each subject's data key, and the
//! pepper that names subjects. None of it is ever stored in the database, logged or
//! traced: `Debug` shows key ids only.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Bytes of an AES-256-GCM nonce.
const NONCE: usize = 12;

/// What is wrong with key material or a sealed value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key material: {0}")]
    Material(String),
    #[error("no master key {0:?} in the key material")]
    UnknownMasterKey(String),
    /// Wrong key, or a value altered or moved to another place.
    #[error("a sealed value does not open")]
    DoesNotOpen,
}

/// A data subject's name: `HMAC-SHA256(pepper, normalised e-mail)`, hex.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectId(pub String);

impl SubjectId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the subject's stream (`Subject/<uuid>`, where its erasures are
    /// appended): a name-based UUID of the subject id, since stream ids of the read
    /// models' journal are UUIDs.
    pub fn stream_id(&self) -> uuid::Uuid {
        uuid::Uuid::new_v5(&SUBJECT_STREAMS, self.0.as_bytes())
    }
}

/// The namespace of subject stream ids.
const SUBJECT_STREAMS: uuid::Uuid =
    uuid::Uuid::from_u128(0x6368_726f_6e69_636c_652f_7375_626a_6563);

/// Where key material comes from: `CHRONICLE_MASTER_KEY` (the entries themselves) or
/// `CHRONICLE_MASTER_KEY_FILE` (a file of them); with neither, the development keys.
pub const MASTER_KEY_ENV: &str = "CHRONICLE_MASTER_KEY";
pub const MASTER_KEY_FILE_ENV: &str = "CHRONICLE_MASTER_KEY_FILE";

/// A subject's data key.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let key = Aes256Gcm::generate_key(OsRng);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&key);
        Self(bytes)
    }

    pub(crate) fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.0.as_slice()))
    }
}

/// Seals `plaintext` under `cipher` with `aad`: the nonce, then the ciphertext.
pub(crate) fn seal_bytes(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = Aes256Gcm::generate_nonce(OsRng);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // Encryption fails only for inputs beyond 64 GiB.
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens what [`seal_bytes`] made.
pub(crate) fn open_bytes(
    cipher: &Aes256Gcm,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, KeyError> {
    if sealed.len() < NONCE {
        return Err(KeyError::DoesNotOpen);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| KeyError::DoesNotOpen)
}

struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

/// The master keys (the current one first) and the pepper.
pub struct MasterKeys {
    keys: Vec<MasterKey>,
    pepper: Zeroizing<Vec<u8>>,
    development: bool,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeys")
            .field("ids", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .field("development", &self.development)
            .finish_non_exhaustive()
    }
}

/// A wrapped data key as `subject_keys` keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wrapped {
    pub master_key_id: String,
    pub bytes: Vec<u8>,
}

impl MasterKeys {
    /// Reads key material: entries `id:base64` (32 bytes each), separated by newlines or
    /// commas; the entry named `pepper` is the pepper, the first other entry the current
    /// master key, the rest older keys still able to unwrap. Blank lines and lines
    /// starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        let mut pepper = None;
        for entry in text
            .split(['\n', ','])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'))
        {
            let (id, encoded) = entry
                .split_once(':')
                .ok_or_else(|| KeyError::Material("an entry is not id:base64".into()))?;
            let id = id.trim();
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| KeyError::Material(format!("entry {id:?} is not base64")))?,
            );
            if bytes.len() != 32 {
                return Err(KeyError::Material(format!(
                    "entry {id:?} holds {} bytes, not 32",
                    bytes.len()
                )));
            }
            if id == "pepper" {
                pepper = Some(bytes);
                continue;
            }
            if id.is_empty() || keys.iter().any(|k: &MasterKey| k.id == id) {
                return Err(KeyError::Material(format!(
                    "master key id {id:?} empty or repeated"
                )));
            }
            keys.push(MasterKey {
                id: id.to_owned(),
                cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
            });
        }
        let pepper = pepper.ok_or_else(|| KeyError::Material("no pepper entry".into()))?;
        if keys.is_empty() {
            return Err(KeyError::Material("no master key".into()));
        }
        Ok(Self {
            keys,
            pepper,
            development: false,
        })
    }

    /// Key material derived from fixed strings: for development only (a warning says so
    /// at start), like the development JWT secret.
    pub fn development() -> Self {
        let derive = |label: &str| {
            let mut mac =
                <Hmac<Sha256> as Mac>::new_from_slice(b"chronicle development key material")
                    .unwrap_or_else(|_| unreachable_hmac());
            mac.update(label.as_bytes());
            STANDARD.encode(mac.finalize().into_bytes())
        };
        let text = format!("pepper:{},dev:{}", derive("pepper"), derive("master"));
        let mut keys = Self::parse(&text).unwrap_or_else(|_| unreachable_material());
        keys.development = true;
        keys
    }

    /// The key material the environment names (see [`MASTER_KEY_ENV`]); the development
    /// keys when it names none. An unreadable file or malformed material is an error,
    /// never a silent fallback.
    pub fn from_env() -> Result<Self, KeyError> {
        Self::from_settings(
            std::env::var(MASTER_KEY_ENV).ok().as_deref(),
            std::env::var(MASTER_KEY_FILE_ENV).ok().as_deref(),
        )
    }

    /// As [`from_env`](Self::from_env), from the two settings' values.
    pub fn from_settings(material: Option<&str>, file: Option<&str>) -> Result<Self, KeyError> {
        match (
            material.filter(|m| !m.trim().is_empty()),
            file.filter(|f| !f.is_empty()),
        ) {
            (Some(_), Some(_)) => Err(KeyError::Material(format!(
                "set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV}, not both"
            ))),
            (Some(material), None) => Self::parse(material),
            (None, Some(path)) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    KeyError::Material(format!("{MASTER_KEY_FILE_ENV} {path:?}: {e}"))
                })?);
                Self::parse(&text)
            }
            (None, None) => Ok(Self::development()),
        }
    }

    /// Whether these are the development keys.
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// The id of the key new data keys are wrapped with.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// The subject an e-mail address names: trimmed and lower-cased, then keyed-hashed.
    pub fn subject_id(&self, email: &str) -> SubjectId {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.pepper)
            .unwrap_or_else(|_| unreachable_hmac());
        mac.update(email.trim().to_lowercase().as_bytes());
        SubjectId(hex::encode(mac.finalize().into_bytes()))
    }

    fn aad(subject: &SubjectId, version: i32) -> Vec<u8> {
        format!("chronicle/data-key/{}/{version}", subject.0).into_bytes()
    }

    /// `key` wrapped under the current master key for `subject`'s `version`.
    pub fn wrap(&self, subject: &SubjectId, version: i32, key: &DataKey) -> Wrapped {
        let current = &self.keys[0];
        Wrapped {
            master_key_id: current.id.clone(),
            bytes: seal_bytes(
                &current.cipher,
                &Self::aad(subject, version),
                key.0.as_slice(),
            ),
        }
    }

    /// The data key `wrapped` holds for `subject`'s `version`.
    pub fn unwrap(
        &self,
        subject: &SubjectId,
        version: i32,
        wrapped: &Wrapped,
    ) -> Result<DataKey, KeyError> {
        let master = self
            .keys
            .iter()
            .find(|k| k.id == wrapped.master_key_id)
            .ok_or_else(|| KeyError::UnknownMasterKey(wrapped.master_key_id.clone()))?;
        let bytes = Zeroizing::new(open_bytes(
            &master.cipher,
            &Self::aad(subject, version),
            &wrapped.bytes,
        )?);
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(KeyError::DoesNotOpen);
        }
        key.copy_from_slice(&bytes);
        Ok(DataKey(key))
    }
}

// HMAC takes keys of any length, and the development material parses: neither branch
// can be taken. Spelled out rather than unwrapped, as the workspace asks.
#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    panic!("HMAC-SHA256 accepts keys of every length")
}

#[cold]
fn unreachable_material() -> MasterKeys {
    panic!("the development key material is well formed")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn material(ids: &[&str]) -> String {
        let mut entries = vec![format!("pepper:{}", STANDARD.encode([7u8; 32]))];
        // Each key's bytes follow from its id, wherever it stands in the list.
        for id in ids {
            entries.push(format!("{id}:{}", STANDARD.encode([id.as_bytes()[1]; 32])));
        }
        entries.join("\n")
    }

    #[test]
    fn a_subject_is_named_by_its_normalised_address_and_the_pepper() {
        let keys = MasterKeys::parse(&material(&["k1"])).unwrap();
        let a = keys.subject_id("Ada@Example.org ");
        assert_eq!(a, keys.subject_id("ada@example.org"));
        assert_ne!(a, keys.subject_id("bob@example.org"));
        assert_eq!(a.as_str().len(), 64);
        // Another pepper names the same address otherwise.
        let other = MasterKeys::development();
        assert_ne!(a, other.subject_id("ada@example.org"));
    }

    #[test]
    fn a_wrapped_key_unwraps_only_for_its_subject_and_version_and_after_rotation() {
        let old = MasterKeys::parse(&material(&["k1"])).unwrap();
        let subject = old.subject_id("ada@example.org");
        let key = DataKey::generate();
        let wrapped = old.wrap(&subject, 1, &key);
        assert_eq!(wrapped.master_key_id, "k1");
        let opened = old.unwrap(&subject, 1, &wrapped).unwrap();
        assert_eq!(opened.0.as_slice(), key.0.as_slice());
        assert_eq!(
            old.unwrap(&old.subject_id("bob@example.org"), 1, &wrapped)
                .unwrap_err(),
            KeyError::DoesNotOpen
        );
        assert_eq!(
            old.unwrap(&subject, 2, &wrapped).unwrap_err(),
            KeyError::DoesNotOpen
        );
        // After rotation (k2 first, k1 kept) the old wrapping still opens and a re-wrap
        // is under k2; without k1 it does not.
        let rotated = MasterKeys::parse(&material(&["k2", "k1"])).unwrap();
        let opened = rotated.unwrap(&subject, 1, &wrapped).unwrap();
        let rewrapped = rotated.wrap(&subject, 1, &opened);
        assert_eq!(rewrapped.master_key_id, "k2");
        let k2_only = MasterKeys::parse(&material(&["k2"])).unwrap();
        assert!(k2_only.unwrap(&subject, 1, &rewrapped).is_ok());
        assert_eq!(
            k2_only.unwrap(&subject, 1, &wrapped).unwrap_err(),
            KeyError::UnknownMasterKey("k1".into())
        );
    }

    #[test]
    fn bad_material_is_refused_with_a_reason_and_never_printed() {
        for (text, reason) in [
            ("k1:AAAA", "not 32"),
            ("pepper:!!", "not base64"),
            (&material(&[])[..], "no master key"),
            ("k1", "not id:base64"),
        ] {
            let error = MasterKeys::parse(text).unwrap_err().to_string();
            assert!(error.contains(reason), "{text}: {error}");
        }
        let keys = MasterKeys::parse(&material(&["k1"])).unwrap();
        let shown = format!("{keys:?} {:?}", DataKey::generate());
        assert!(!shown.contains(&STANDARD.encode([b'1'; 32])), "{shown}");
        assert!(
            shown.contains("k1") && shown.contains("DataKey(..)"),
            "{shown}"
        );
    }

    #[test]
    fn settings_choose_the_material_the_file_or_the_development_keys() {
        let text = material(&["k1"]);
        let direct = MasterKeys::from_settings(Some(&text), None).unwrap();
        assert_eq!(direct.current_id(), "k1");
        assert!(!direct.is_development());
        let path = std::env::temp_dir().join(format!("chronicle-keys-{}", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let filed = MasterKeys::from_settings(None, path.to_str()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            filed.subject_id("ada@example.org"),
            direct.subject_id("ada@example.org")
        );
        assert!(
            MasterKeys::from_settings(None, None)
                .unwrap()
                .is_development()
        );
        assert!(MasterKeys::from_settings(Some(&text), path.to_str()).is_err());
        let missing = MasterKeys::from_settings(None, Some("/nonexistent/keys")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/keys"),
            "{missing}"
        );
    }

    #[test]
    fn a_subjects_stream_id_is_stable_and_its_own() {
        let keys = MasterKeys::development();
        let ada = keys.subject_id("ada@example.org");
        assert_eq!(
            ada.stream_id(),
            keys.subject_id(" ADA@example.org").stream_id()
        );
        assert_ne!(
            ada.stream_id(),
            keys.subject_id("bob@example.org").stream_id()
        );
    }
}
