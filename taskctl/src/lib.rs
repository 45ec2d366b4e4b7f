//! `taskctl`, the command line of the task table: create the table, load
//! sample sheets into steps, and see how far each step is.
//!
//! # Layout
//!
//! - [`cli`]: the arguments, with the help text users read.
//! - [`connect`]: AWS configuration, read once here and passed inward.
//! - [`commands`]: one function per subcommand; each prints its own output.
//! - [`local`]: local workers (`launch --local`, `fleet`, `stop`).
//! - [`ec2`]: the EC2 fleet (`template apply`, `launch`, the EC2 half of
//!   `fleet` and `stop`).
//! - [`publish`]: `agent publish`, the agent binary in S3 for the
//!   instances' bootstrap.
//! - [`sheets`]: where `load` reads a sheet from (a file, `-`, S3).
//!
//! `main` parses arguments, sets up logging, runs one command, and turns an
//! error into one `error: ...` line and an exit code.

pub mod browse;
pub mod cancel;
pub mod cli;
pub mod commands;
pub mod connect;
pub mod ec2;
pub mod local;
pub mod logs;
pub mod provenance;
pub mod prune;
pub mod publish;
pub mod retry;
pub mod sheets;
pub mod show;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, LogFormat};

/// Runs `taskctl` with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.log_format, cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Exit codes of `taskctl`, shared with `agent` (the README's table).
pub mod exit {
    /// An error of no other kind.
    pub const OTHER: u8 = 1;
    /// The command line itself is wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// Something is missing or not allowed, and retrying will not help: no
    /// table, store, step or template; no credentials or region; access
    /// denied; a table of another schema.
    pub const SETUP: u8 = 3;
    /// AWS or the store could not be reached, or kept failing: try again
    /// later.
    pub const UNAVAILABLE: u8 = 4;
    /// (agent) This host cannot run attempts: disk, permissions, metadata.
    pub const HOST: u8 = 5;
    /// The input was refused: a sheet, a step name, a setting, a template
    /// file.
    pub const INPUT: u8 = 6;
}

/// The exit code for an error, from the first cause that says what kind
/// it is.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use taskfleet::connect::ConnectError;
    use taskfleet::fleet::FleetError;
    use taskfleet::load::LoadError;
    use taskfleet::sheet::SheetError;
    use taskfleet::store::StoreError;
    for cause in e.chain() {
        if let Some(load) = cause.downcast_ref::<LoadError>() {
            return match load {
                LoadError::Store(s) => store_code(s),
                LoadError::Sheet(_) | LoadError::Input(_) => exit::INPUT,
            };
        }
        if cause.downcast_ref::<SheetError>().is_some() {
            return exit::INPUT;
        }
        if let Some(store) = cause.downcast_ref::<StoreError>() {
            return store_code(store);
        }
        if let Some(connect) = cause.downcast_ref::<ConnectError>() {
            return match connect {
                ConnectError::Store(s) => store_code(s),
                ConnectError::Table(_) => exit::INPUT,
            };
        }
        if let Some(fleet) = cause.downcast_ref::<FleetError>() {
            return match fleet {
                FleetError::NamePattern { .. }
                | FleetError::TemplateName { .. }
                | FleetError::TemplateFile { .. }
                | FleetError::UnsetVariables { .. }
                | FleetError::LaunchIdReused { .. } => exit::INPUT,
                FleetError::TemplateNotFound { .. } | FleetError::Unauthorized { .. } => {
                    exit::SETUP
                }
                FleetError::InsufficientCapacity { .. }
                | FleetError::VcpuLimit { .. }
                | FleetError::Ec2 { .. } => exit::UNAVAILABLE,
            };
        }
    }
    exit::OTHER
}

fn store_code(e: &taskfleet::store::StoreError) -> u8 {
    use taskfleet::store::StoreError;
    match e {
        e if e.is_fatal() => exit::SETUP,
        StoreError::ShardsFixed { .. } => exit::INPUT,
        StoreError::Corrupt { .. } => exit::OTHER,
        _ => exit::UNAVAILABLE,
    }
}

fn init_logging(format: LogFormat, verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,taskfleet=info,taskctl=info",
        _ => "debug,aws_smithy_runtime=info,aws_config=info,hyper=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TASKCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
