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

pub mod cli;
pub mod commands;
pub mod connect;
pub mod ec2;
pub mod local;
pub mod publish;
pub mod sheets;

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
            ExitCode::FAILURE
        }
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
