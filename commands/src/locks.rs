//! In-process serialisation of commands per aggregate.
//!
//! Optimistic locking keeps concurrent writers correct; queueing writers of the same
//! aggregate inside one process keeps them from wasting round trips on conflicts they
//! are sure to lose. Across processes the retry loop still does the work.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use tokio::sync::{Mutex, MutexGuard};

pub(crate) struct StripedLocks {
    stripes: Vec<Mutex<()>>,
}

impl StripedLocks {
    pub(crate) fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1)).map(|_| Mutex::new(())).collect(),
        }
    }

    pub(crate) async fn lock(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> MutexGuard<'_, ()> {
        let mut hasher = DefaultHasher::new();
        (aggregate_type, aggregate_id).hash(&mut hasher);
        let stripe = (hasher.finish() % self.stripes.len() as u64) as usize;
        self.stripes[stripe].lock().await
    }
}
