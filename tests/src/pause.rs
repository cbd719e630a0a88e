//! Holding the process manager at a step, to act while a flow is half done.

use std::sync::Arc;
use std::time::Duration;

use chronicle_commands::process::StepObserver;
use futures::future::BoxFuture;
use tokio::sync::Notify;

/// Holds the process manager after `step` until released.
pub struct PauseAfter {
    step: &'static str,
    reached: Notify,
    release: Notify,
}

impl PauseAfter {
    pub fn new(step: &'static str) -> Arc<Self> {
        Arc::new(Self {
            step,
            reached: Notify::new(),
            release: Notify::new(),
        })
    }

    /// Waits until a flow has completed the step (at most a minute).
    pub async fn reached(&self) {
        tokio::time::timeout(Duration::from_secs(60), self.reached.notified())
            .await
            .expect("the process manager reached the step");
    }

    /// Lets the held flow go on.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

impl StepObserver for PauseAfter {
    fn after_step(&self, step: &str) -> BoxFuture<'_, ()> {
        let pause = step == self.step;
        Box::pin(async move {
            if pause {
                self.reached.notify_one();
                self.release.notified().await;
            }
        })
    }
}
