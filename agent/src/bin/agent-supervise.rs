//! `agent-supervise --parent-pid P -- bash SCRIPT`: the supervising parent
//! of one script, as a program of its own (see `agent::supervisor`). The
//! agent starts it for every script when it finds it beside itself; it
//! links only the supervisor, so that it starts fast.

use std::process::ExitCode;

use agent::supervisor::Supervise;

fn main() -> ExitCode {
    match Supervise::parse(std::env::args_os().skip(1)) {
        Ok(supervise) => supervise.run(),
        Err(usage) => {
            eprintln!("error: {usage}");
            ExitCode::from(2)
        }
    }
}
