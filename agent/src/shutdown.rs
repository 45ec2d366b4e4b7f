//! The two-stage stop signal, passed to every part that must react to it.
//!
//! `stop` means "claim nothing more; let running tasks finish within the
//! grace period". `now` means "skip the grace period". Signals map onto
//! them in `main` (first SIGTERM/SIGINT: stop, second: now); tests trigger
//! them directly.

use tokio_util::sync::CancellationToken;

/// Cheap to clone; all clones see the same state.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    now: CancellationToken,
    spot: CancellationToken,
}

impl Shutdown {
    /// A shutdown nobody has asked for yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a graceful stop.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Asks for an immediate stop (implies `stop`).
    pub fn now(&self) {
        self.stop.cancel();
        self.now.cancel();
    }

    /// EC2 is taking the (spot) instance back: stop now; running tasks are
    /// released as class `spot`.
    pub fn spot_interruption(&self) {
        self.spot.cancel();
        self.now();
    }

    /// Whether the stop is a spot interruption.
    pub fn is_spot(&self) -> bool {
        self.spot.is_cancelled()
    }

    /// Whether a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves when a stop is asked for.
    pub async fn stopping(&self) {
        self.stop.cancelled().await;
    }

    /// Resolves when an immediate stop is asked for.
    pub async fn immediate(&self) {
        self.now.cancelled().await;
    }
}
