//! `agent`: see `agent --help`.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent::supervisor::{SUBCOMMAND, Supervise};
use agent::{AgentConfig, Shutdown};
use clap::{Parser, ValueEnum};
use taskfleet::connect::AwsOptions;

/// Claim and run the tasks of one workflow step from the task table.
///
/// Runs until the step has nothing left for --idle-timeout (exit 0), or a
/// stop signal: the first SIGTERM/SIGINT stops claiming and gives running
/// tasks --grace to finish before they are released to pending; a second
/// one skips the grace period. Exit 3: a problem no retry fixes (no table,
/// no step, no credentials); exit 4: the task store kept failing; exit 5:
/// this host cannot prepare an attempt (disk full, a directory it cannot
/// write): its tasks were released without using an attempt.
#[derive(Debug, Parser)]
#[command(
    name = "agent",
    version,
    about,
    long_about,
    max_term_width = 100,
    args_override_self = true
)]
#[allow(clippy::doc_markdown)]
struct Args {
    /// Where the tasks live: sqlite://PATH or dynamodb://NAME (or NAME).
    #[arg(long, env = "TASKFLEET_TABLE", default_value = taskfleet::connect::DEFAULT_TABLE)]
    table: String,
    /// DynamoDB endpoint (e.g. DynamoDB Local).
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,
    /// AWS region; defaults to the standard chain.
    #[arg(long)]
    region: Option<String>,
    /// The step whose tasks to run.
    #[arg(long, env = "TASKFLEET_STEP")]
    step: String,
    /// Tasks to run at once.
    #[arg(long, default_value_t = 1)]
    slots: usize,
    /// This agent's place among the agents started with it (0, 1, ...):
    /// agent i starts in shard i mod shards, from the oldest end in the
    /// first round of a fleet and the newest in the second, so that a fleet
    /// starts spread over the step. `taskctl launch --local` passes it; on
    /// EC2 (--on-ec2) it defaults to the instance's place: the launch's
    /// first place (tag taskfleet:first-place) plus its ami-launch-index.
    #[arg(long, env = "TASKFLEET_LAUNCH_INDEX", value_name = "N")]
    launch_index: Option<u32>,
    /// Exit 0 after this long with nothing claimable and nothing running.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    idle_timeout: Option<Duration>,
    /// After a stop signal, how long running tasks may go on.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    grace: Duration,
    /// Between TERM and KILL when a script is killed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    kill_grace: Duration,
    /// Longest wait between polls of an empty step.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    poll_max: Duration,
    /// Shortest wait before a failed task is retried (doubles per failure).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    retry_delay: Duration,
    /// Where attempts get their working directories.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Where attempt logs are written.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Attempt directories and logs older than this are removed when the
    /// agent starts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7d", value_name = "AGE")]
    keep_attempts: Duration,
    /// Running on EC2: read the instance's identity from the instance
    /// metadata service (IMDSv2), name this agent after the instance, and
    /// watch for spot interruption notices (tasks are released as class
    /// `spot`, without using an attempt) and rebalance recommendations
    /// (claim nothing more).
    #[arg(long)]
    on_ec2: bool,
    /// The instance metadata endpoint [default: the SDK's:
    /// AWS_EC2_METADATA_SERVICE_ENDPOINT, else the link-local address].
    #[arg(long, value_name = "URL")]
    imds_endpoint: Option<String>,
    /// With --on-ec2: how often to look for a spot interruption notice
    /// (EC2 gives two minutes' warning).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", value_name = "DURATION")]
    spot_poll: Duration,
    /// With --on-ec2: whatever ends the agent (idle, a stop, a spot notice,
    /// a fatal error) ends the instance too, after its tasks are released:
    /// TerminateInstances on itself, else --poweroff-command. The
    /// bootstrap (userdata/bootstrap.sh) runs the agent this way.
    #[arg(long, requires = "on_ec2")]
    terminate_on_exit: bool,
    /// With --terminate-on-exit: the command that powers the host off when
    /// TerminateInstances fails (the launch templates make a shutdown
    /// terminate the instance).
    #[arg(long, value_name = "COMMAND", default_value = "shutdown -h now")]
    poweroff_command: String,
    /// Upload each attempt's log to this S3 bucket, at
    /// s3://BUCKET/PREFIX/STEP/TASK/ATTEMPT.log: every --log-upload-every
    /// while the script runs, and at its end whatever the outcome. The
    /// attempt's record names the object. The bootstrap gives the bucket
    /// the agent came from.
    #[arg(long, value_name = "BUCKET")]
    log_bucket: Option<String>,
    /// The key prefix of uploaded logs.
    #[arg(long, value_name = "PREFIX", default_value = taskfleet::logs::DEFAULT_PREFIX)]
    log_prefix: String,
    /// With --log-bucket: between uploads of a running attempt's log (what
    /// a host that dies loses of it at most).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m", value_name = "DURATION")]
    log_upload_every: Duration,
    /// An S3 endpoint instead of the SDK's (AWS_ENDPOINT_URL_S3, then the
    /// region's).
    #[arg(long, value_name = "URL")]
    s3_endpoint_url: Option<String>,
    /// This worker's id in the table [default: PID and a random suffix].
    #[arg(long)]
    worker_id: Option<String>,
    /// Write what the agent did (store calls by kind, claim latencies) to
    /// this file as JSON when it exits.
    #[arg(long, value_name = "FILE")]
    stats_file: Option<PathBuf>,
    /// Give scripts this variable of the agent's environment (repeatable).
    /// Scripts otherwise get only PATH, HOME, LANG, LC_ALL, LC_CTYPE, TZ,
    /// USER and LOGNAME of it, besides their sheet row and TASK_ID, STEP,
    /// ATTEMPT, TASK_WORKDIR and TMPDIR.
    #[arg(long, value_name = "NAME")]
    pass_env: Vec<String>,
    /// Format of log lines on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    // The hidden mode in which the agent binary supervises one script.
    let mut command_line = std::env::args_os();
    if command_line.nth(1).as_deref() == Some(OsStr::new(SUBCOMMAND)) {
        match Supervise::parse(command_line) {
            Ok(supervise) => supervise.run(),
            Err(usage) => {
                eprintln!("error: {usage}");
                return ExitCode::from(2);
            }
        }
    }
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aws=warn,hyper=warn"));
    // Colour only on a terminal: local workers log to files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    // On EC2 the instance names the agent: read it first, so that every
    // later way out can end the instance.
    let on_ec2 = match ec2_identity(&args).await {
        Ok(found) => found,
        Err(code) => {
            if args.terminate_on_exit {
                end_instance(&args, None).await;
            }
            return code;
        }
    };
    let code = run_on(&args, on_ec2.clone()).await;
    if args.terminate_on_exit {
        end_instance(&args, on_ec2.as_ref().map(|(_, instance)| instance)).await;
    }
    code
}

async fn end_instance(args: &Args, instance: Option<&agent::ec2::Instance>) {
    let ending = agent::ec2::Ending {
        poweroff: args
            .poweroff_command
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        deadline: Duration::from_secs(60),
    };
    let done = agent::ec2::end_instance(instance, &ending).await;
    tracing::info!("{done}");
}

async fn run_on(
    args: &Args,
    on_ec2: Option<(agent::ec2::Metadata, agent::ec2::Instance)>,
) -> ExitCode {
    // Scripts run under the supervisor beside this binary, or under a copy
    // of this binary; see agent::supervisor.
    let exe = match std::env::current_exe() {
        Ok(exe) => Supervise::program_beside(&exe),
        Err(e) => {
            eprintln!("error: cannot find the agent's own binary to supervise scripts with: {e}");
            return ExitCode::from(3);
        }
    };
    let inherited_env =
        match agent::config::inherited_env(&args.pass_env, |name| std::env::var_os(name)) {
            Ok(env) => env,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(3);
            }
        };
    let options = AwsOptions {
        table: args.table.clone(),
        endpoint_url: args.endpoint_url.clone(),
        region: args.region.clone(),
        caller: taskfleet::iam::Caller::Agent,
    };
    let env_endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok();
    let store = match taskfleet::connect::open(&options, env_endpoint).await {
        Ok(store) => Arc::new(store),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    let host = match &on_ec2 {
        Some((_, instance)) => instance.id.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_owned()),
    };
    let worker = args
        .worker_id
        .clone()
        .unwrap_or_else(|| format!("{}-{:04x}", std::process::id(), rand::random::<u16>()));
    let mut cfg = AgentConfig::new(&args.step, format!("{host}/{worker}"), exe);
    cfg.inherited_env = inherited_env;
    cfg.slots = args.slots.max(1);
    cfg.spread = args
        .launch_index
        .or_else(|| on_ec2.as_ref().and_then(|(_, i)| i.launch_index));
    cfg.idle_timeout = args.idle_timeout;
    cfg.grace = args.grace;
    cfg.kill_grace = args.kill_grace;
    cfg.poll_max = args.poll_max.max(cfg.poll_min);
    cfg.retry_delay = args.retry_delay;
    cfg.keep_attempts = args.keep_attempts;
    cfg.host = on_ec2.as_ref().map(|(_, instance)| instance.describe());
    if let Some(dir) = args.work_dir.clone() {
        cfg.work_dir = dir;
    }
    if let Some(dir) = args.log_dir.clone() {
        cfg.log_dir = dir;
    }
    if let Some(bucket) = &args.log_bucket {
        cfg.upload = Some(log_upload(args, bucket, on_ec2.as_ref()).await);
    }

    let shutdown = Shutdown::new();
    tokio::spawn(forward_signals(shutdown.clone()));
    if let Some((metadata, instance)) = on_ec2 {
        tracing::info!(instance = %instance.describe(), "running on EC2");
        tokio::spawn(agent::ec2::watch(
            metadata,
            shutdown.clone(),
            args.spot_poll,
        ));
    }
    let stats = Arc::new(agent::Stats::default());
    let outcome = agent::run(store, cfg, shutdown, stats.clone()).await;
    if let Some(path) = &args.stats_file
        && let Err(e) = std::fs::write(
            path,
            serde_json::to_vec(&stats.report()).unwrap_or_default(),
        )
    {
        eprintln!("warning: cannot write {}: {e}", path.display());
    }
    match outcome {
        Ok(exit) => {
            tracing::info!(?exit, "exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Where attempt logs go: an S3 client of the agent's (in the instance's
/// region on EC2), the bucket and prefix.
async fn log_upload(
    args: &Args,
    bucket: &str,
    on_ec2: Option<&(agent::ec2::Metadata, agent::ec2::Instance)>,
) -> agent::config::LogUpload {
    // An emulator or a custom endpoint has no per-bucket host names.
    let path_style = args.s3_endpoint_url.is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
        || std::env::var_os("AWS_ENDPOINT_URL").is_some();
    let client = taskfleet::connect::s3(&taskfleet::connect::S3Options {
        endpoint_url: args.s3_endpoint_url.clone(),
        region: args
            .region
            .clone()
            .or_else(|| on_ec2.map(|(_, i)| i.region.clone())),
        path_style,
        caller: taskfleet::iam::Caller::Agent,
    })
    .await;
    agent::config::LogUpload {
        client,
        to: taskfleet::logs::LogBucket {
            bucket: bucket.to_owned(),
            prefix: args.log_prefix.clone(),
        },
        every: args.log_upload_every.max(Duration::from_secs(1)),
    }
}

/// With `--on-ec2`: the metadata service and what it says of this
/// instance. Metadata that cannot be read is this host's trouble (exit 5).
async fn ec2_identity(
    args: &Args,
) -> Result<Option<(agent::ec2::Metadata, agent::ec2::Instance)>, ExitCode> {
    if !args.on_ec2 {
        return Ok(None);
    }
    let metadata = agent::ec2::Metadata::new(args.imds_endpoint.as_deref()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(3)
    })?;
    match metadata.instance().await {
        Ok(instance) => Ok(Some((metadata, instance))),
        Err(e) => {
            eprintln!(
                "error: {e}; this host's metadata is unreadable, so the agent does not start (replace the host)"
            );
            Err(ExitCode::from(5))
        }
    }
}

/// First SIGTERM/SIGINT: graceful stop. Second: stop now.
async fn forward_signals(shutdown: Shutdown) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        seen += 1;
        if seen == 1 {
            tracing::info!("stop requested; finishing running tasks (signal again to stop now)");
            shutdown.stop();
        } else {
            tracing::warn!("second stop signal; releasing running tasks now");
            shutdown.now();
            return;
        }
    }
}
