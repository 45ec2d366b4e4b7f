//! Signalling a script's whole process group: a script's children (pipes,
//! background jobs) die with it. The group's leader is the script's
//! supervisor ([`crate::supervisor`]), which waits out a TERM for `bash`
//! and exits as `bash` did.

use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;

/// Sends `signal` to process group `pgid`; a group that is already gone
/// is not an error.
pub fn signal_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, ?signal, error = %e, "cannot signal process group"),
    }
}

/// TERM to the group, up to `grace` for the leader to exit, then KILL to
/// whatever is left of the group. Returns the leader's exit status.
pub async fn kill_group(
    child: &mut Child,
    pgid: u32,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    signal_group(pgid, Signal::SIGTERM);
    let status = if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        status
    } else {
        signal_group(pgid, Signal::SIGKILL);
        child.wait().await
    };
    // The leader is gone; its children may not be.
    signal_group(pgid, Signal::SIGKILL);
    status
}
