//! `agent`: the worker that claims and runs tasks of one step.
//!
//! The claim loop, heartbeats and fenced completion are the next piece of
//! work; until then this binary only reports that it cannot run tasks, so
//! that nobody mistakes it for a worker.

fn main() -> std::process::ExitCode {
    eprintln!(
        "error: this build of agent cannot run tasks yet; use a release that includes the worker"
    );
    std::process::ExitCode::from(2)
}
