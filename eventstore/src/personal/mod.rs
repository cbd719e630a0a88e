//! Personal data sealed per data subject, erasable by destroying the subject's key
//! (issue 16, ADR 0035): the key material and the sealing of payload fields. The key
//! store, the repository's sealing on append and opening on load, and erasure build on
//! these.

pub mod erase;
pub mod keys;
pub mod open;
pub mod seal;
pub mod store;

pub use keys::{
    DataKey, KeyError, MASTER_KEY_ENV, MASTER_KEY_FILE_ENV, MasterKeys, SubjectId, Wrapped,
};
pub use store::{ForWriting, KeyStore, NewKeyClaim};
