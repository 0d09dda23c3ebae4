//! Helpers for this crate's unit tests.

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it holds, for at most ten seconds; panics naming `what` and the last
/// failure otherwise.
pub(crate) async fn until<F: Future<Output = anyhow::Result<()>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let outcome = check().await;
        match outcome {
            Ok(()) => return,
            Err(error) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within 10 s: {error:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
