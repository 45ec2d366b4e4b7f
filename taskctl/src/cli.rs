//! The command line: what users type and the help they read.
//!
//! Doc comments here are `--help` text for a terminal, not rustdoc, so they
//! are written without Markdown.
#![allow(clippy::doc_markdown)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod load;
mod operator;
pub use load::{LoadArgs, SheetFormat};
pub use operator::{CancelArgs, DeleteStepArgs, PruneArgs, RetryArgs};

/// Push per-sample tasks through a workflow: a DynamoDB task table, a fleet
/// of workers, and this command line to load work and see progress.
///
/// A typical session:
///
///   taskctl init
///   taskctl load --step align --script align.sh samples.csv
///   taskctl status
///   taskctl status --failed
#[derive(Debug, Parser)]
#[command(
    name = "taskctl",
    version,
    about,
    long_about,
    verbatim_doc_comment,
    max_term_width = 100
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the tasks live and how to talk about it.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Where the tasks live: sqlite://PATH (the embedded store, no AWS
    /// account needed), or dynamodb://NAME (or just NAME) for a DynamoDB
    /// table.
    #[arg(
        long,
        global = true,
        env = "TASKFLEET_TABLE",
        default_value = taskfleet::connect::DEFAULT_TABLE
    )]
    pub table: String,
    /// DynamoDB endpoint, e.g. http://127.0.0.1:8000 for DynamoDB Local.
    /// Without it the SDK's own rules apply (AWS_ENDPOINT_URL, then the
    /// region's endpoint).
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// AWS region; defaults to the standard chain (AWS_REGION, profile).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// EC2 endpoint (for launch templates and the fleet). Without it the
    /// SDK's own rules apply (AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL, then
    /// the region's endpoint).
    #[arg(long, global = true, value_name = "URL")]
    pub ec2_endpoint_url: Option<String>,
    /// How a step's launch template is named: a pattern holding {step}
    /// once, e.g. 'taskfleet-{step}'. Used wherever a template is made or
    /// looked up.
    #[arg(
        long,
        global = true,
        env = "TASKFLEET_TEMPLATE_NAME",
        value_name = "PATTERN",
        default_value = taskfleet::fleet::DEFAULT_TEMPLATE_NAME
    )]
    pub template_name: String,
    /// Format of log lines on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log lines (-v: progress of requests, -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the task table (with its index and TTL) and wait until it is
    /// active. On an existing table, check that it matches and say what
    /// differs.
    Init,
    /// Load a sample sheet into a step: one task per row, every column an
    /// environment variable of the task's script.
    ///
    /// The whole sheet is validated before anything is written. Loading the
    /// same sheet again adds only rows whose task does not exist yet;
    /// existing tasks keep their state and history unless --replace is
    /// given.
    Load(LoadArgs),
    /// How far each step is: counts per state, total and percent done.
    ///
    /// Costs the same few requests whether a step has ten tasks or ten
    /// million.
    Status(StatusArgs),
    /// One task's whole record: state, attempts, environment, script,
    /// output tail and history with each attempt's provenance; or, with
    /// --step, a step's settings and the record of each of its loads.
    Show(ShowArgs),
    /// Print an attempt's log, from S3 (agents given --log-bucket) or from
    /// the file an agent on this machine wrote; --follow prints a running
    /// attempt's log as it grows.
    Logs(LogsArgs),
    /// Put failed tasks of a step back to pending with a fresh attempt
    /// budget: all of them, those of a failure class or exit code, or the
    /// tasks named. Their attempt numbers go on from where they were, and
    /// who retried them and when is recorded. --dry-run lists them only.
    Retry(RetryArgs),
    /// Set tasks of a step aside so that they do not run: pending and
    /// waiting ones at once, running ones through their lease (the worker
    /// stops the script at its next renewal, within a third of the
    /// lease); what waits for them in later steps, and a run a retry rule
    /// escalated to another step, are cancelled with them.
    /// `retry --task ID` puts a cancelled task back. --dry-run lists them
    /// only.
    Cancel(CancelArgs),
    /// Where one task id stands in every step: state, attempts, exit code,
    /// failure class, log. A batch read of keys that are known: the same
    /// few requests for a thousand tasks or millions.
    Where(WhereArgs),
    /// Write every task of a step, one line each (id, state, attempts,
    /// exit code, failure class, duration, log), as TSV or JSON Lines;
    /// the step's partitions are read in parallel, a page at a time.
    Export(ExportArgs),
    /// Remove a step's tasks that finished done long ago, writing them
    /// whole to a JSON Lines file first (--export), their counts taken off
    /// in the same writes. --dry-run counts them only.
    Prune(PruneArgs),
    /// Remove a whole step: its tasks, counters, load records and
    /// settings, a shard at a time. Refused while its tasks run (unless
    /// --force) and while other steps name it (--after, escalate-to).
    /// --dry-run says what would go.
    DeleteStep(DeleteStepArgs),
    /// Start workers for a step: EC2 instances from the step's launch
    /// template, or with --local, agent processes on this machine.
    ///
    /// On EC2 the count is capped at what the step can use (claimable tasks
    /// divided by --slots) and at --max-instances; --dry-run says what
    /// would be launched and why.
    Launch(LaunchArgs),
    /// The workers of each step: EC2 instances (id, type, spot or
    /// on-demand, state, age, tasks) and local workers (pid, state, tasks,
    /// uptime).
    Fleet(FleetArgs),
    /// Launch templates: one per step, from launch-templates/STEP.json.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// The agent binary EC2 workers install at boot.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Recompute a step's counters from its tasks and correct those that are
    /// wrong, saying what was corrected.
    ///
    /// Counters change in the same write as the tasks they count, so this
    /// is a repair tool: for counters written by an older version, or after
    /// `status` reports that counts drift. It reads the step's state index
    /// (never the whole table); run it while few tasks are moving.
    Recount(RecountArgs),
    /// Stop the workers of a step gracefully: they claim nothing more, let
    /// running tasks finish within the agents' grace period, and release
    /// the rest. Local workers get SIGTERM; EC2 instances are tagged
    /// taskfleet:drain, which their agents read from instance metadata,
    /// and then terminate themselves. --now terminates EC2 instances at
    /// once.
    Stop(StopArgs),
}

/// `taskctl template ...`.
#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Create each step's launch template from launch-templates/STEP.json,
    /// or add a version and make it the default when the file changed.
    ///
    /// Strings in the file may hold ${NAME} variables, filled from --var
    /// NAME=VALUE, else from the environment; an unset one is an error.
    /// The user-data is read from the file UserDataFile names in
    /// --userdata-dir.
    Apply(TemplateApplyArgs),
}

/// `taskctl agent ...`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Upload an agent binary and its SHA-256 to S3 under its version, for
    /// the bootstrap of EC2 workers (userdata/bootstrap.sh) to install.
    ///
    /// The binary goes to s3://BUCKET/taskfleet/agent/VERSION/agent and
    /// its checksum beside it (agent.sha256); instances install the
    /// version their launch template's tags name (TASKFLEET_AGENT_BUCKET
    /// and TASKFLEET_AGENT_VERSION in launch-templates/STEP.json). A
    /// version is published once: publishing the same binary again does
    /// nothing, a different one under the same version is refused unless
    /// --replace is given. Build it for the instances' architecture, e.g.
    /// cargo build --release -p agent --target x86_64-unknown-linux-musl.
    Publish(AgentPublishArgs),
}

/// `taskctl agent publish`.
#[derive(Debug, Args)]
pub struct AgentPublishArgs {
    /// The agent binary to publish.
    #[arg(long, value_name = "PATH")]
    pub binary: PathBuf,
    /// The S3 bucket instances download the agent from.
    #[arg(long, env = "TASKFLEET_AGENT_BUCKET")]
    pub bucket: String,
    /// The version to publish it as [default: what `BINARY --version`
    /// prints].
    #[arg(long = "agent-version", value_name = "VERSION")]
    pub version: Option<String>,
    /// Overwrite a version already published with a different binary.
    /// Instances booting while it is replaced may see a checksum mismatch
    /// and shut down; prefer a new version.
    #[arg(long)]
    pub replace: bool,
    /// Say what would be uploaded without uploading.
    #[arg(long)]
    pub dry_run: bool,
    /// S3 endpoint (an emulator, a VPC endpoint). Without it the SDK's own
    /// rules apply (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, then the
    /// region's endpoint).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint_url: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `taskctl template apply`.
#[derive(Debug, Args)]
pub struct TemplateApplyArgs {
    /// Only this step [default: every STEP.json in --templates-dir].
    #[arg(long)]
    pub step: Option<String>,
    /// Say what would change without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// A value for ${NAME} in the template files (repeatable); beats the
    /// environment.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Where the STEP.json files are.
    #[arg(long, value_name = "DIR", default_value = "launch-templates")]
    pub templates_dir: PathBuf,
    /// Where the user-data scripts are.
    #[arg(long, value_name = "DIR", default_value = "userdata")]
    pub userdata_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("'{text}' is not NAME=VALUE")),
    }
}

/// `taskctl launch`.
#[derive(Debug, Args)]
// Flags of a command line are bools by nature; they are not a state machine.
#[allow(clippy::struct_excessive_bools)]
pub struct LaunchArgs {
    /// The step whose tasks the workers run.
    #[arg(long)]
    pub step: String,
    /// How many workers (on EC2: at most this many).
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Run the workers as processes on this machine instead of on EC2.
    #[arg(long)]
    pub local: bool,
    /// Tasks each worker runs at once.
    #[arg(long, default_value_t = 1)]
    pub slots: usize,
    /// EC2: the launch template version: a number, $Latest or $Default
    /// [default: $Latest].
    #[arg(long, value_name = "VERSION", default_value = "$Latest")]
    pub template_version: String,
    /// EC2: spot instances instead of on-demand.
    #[arg(long)]
    pub spot: bool,
    /// EC2: with --spot, the highest hourly price to pay [default: the
    /// on-demand price].
    #[arg(long, requires = "spot", value_name = "USD")]
    pub max_price: Option<String>,
    /// EC2: instead of the template's instance type.
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// EC2: the subnet to start the instances in.
    #[arg(long, value_name = "SUBNET_ID")]
    pub subnet: Option<String>,
    /// EC2: instead of the template's security groups (repeatable).
    #[arg(long, value_name = "SG_ID")]
    pub security_group: Vec<String>,
    /// EC2: at most this many instances of the step pending or running,
    /// counting those already there.
    #[arg(long, value_name = "N")]
    pub max_instances: Option<u32>,
    /// EC2: names this launch on the instances' tags, and makes the launch
    /// idempotent: running it again with the same id starts nothing new
    /// [default: a fresh id].
    #[arg(long, value_name = "ID")]
    pub launch_id: Option<String>,
    /// EC2: say what would be launched and why, and launch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// EC2: print the launch as JSON.
    #[arg(long)]
    pub json: bool,
    /// Workers exit after this long with nothing left to do.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", value_name = "DURATION")]
    pub idle_timeout: Duration,
    /// After `taskctl stop`, how long running tasks may go on before they
    /// are released.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s", value_name = "DURATION")]
    pub grace: Duration,
    /// Give the workers' scripts this variable of taskctl's environment
    /// (repeatable). Scripts get nothing else of it but PATH, HOME, LANG,
    /// LC_ALL, LC_CTYPE, TZ, USER and LOGNAME, besides their sheet row.
    #[arg(long, value_name = "NAME")]
    pub pass_env: Vec<String>,
}

/// `taskctl fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Only this step.
    #[arg(long)]
    pub step: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `taskctl stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The step whose workers to stop.
    #[arg(long)]
    pub step: String,
    /// Return without waiting for the workers to exit.
    #[arg(long)]
    pub no_wait: bool,
    /// Terminate the step's EC2 instances at once; the tasks they were
    /// running are reclaimed by other workers once their leases run out.
    #[arg(long)]
    pub now: bool,
}

/// `taskctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this step.
    #[arg(long)]
    pub step: Option<String>,
    /// List failed tasks with exit code, failure class and output tail.
    #[arg(long)]
    pub failed: bool,
    /// With --failed: at most this many tasks per step, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Refresh until every task (of --step, or of every step) is done or
    /// failed: a progress bar per step with rate and time left on a
    /// terminal, a line per change otherwise.
    #[arg(long, conflicts_with_all = ["failed", "json"])]
    pub watch: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `taskctl recount`.
#[derive(Debug, Args)]
pub struct RecountArgs {
    /// Only this step [default: every step].
    #[arg(long)]
    pub step: Option<String>,
    /// Say what is wrong without correcting it.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `taskctl where`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  taskctl where HG00096     HG00096 in align, call and qc: done, running, waiting..."
)]
pub struct WhereArgs {
    /// The task id (a sample), as in every step.
    pub task: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `taskctl export`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  taskctl export --step align > align.tsv\n  taskctl export --step align --format jsonl --output align.jsonl"
)]
pub struct ExportArgs {
    /// The step.
    #[arg(long)]
    pub step: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Tsv)]
    pub format: ExportFormat,
    /// Write to this file instead of standard output (written whole or
    /// not at all).
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

/// Formats of `taskctl export`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// Tab-separated, with a header line.
    Tsv,
    /// One JSON object per line.
    Jsonl,
}

/// `taskctl logs`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  taskctl logs align HG00096               the latest attempt's log\n  taskctl logs align HG00096 --attempt 1   the first attempt's\n  taskctl logs align HG00096 --follow      a running attempt's, as it grows"
)]
pub struct LogsArgs {
    /// The step.
    pub step: String,
    /// The task id.
    pub task: String,
    /// Which attempt [default: the latest].
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,
    /// Keep printing while the attempt runs (agents upload a running
    /// attempt's log every --log-upload-every, 2m by default).
    #[arg(long)]
    pub follow: bool,
    /// An S3 endpoint instead of the SDK's (AWS_ENDPOINT_URL_S3,
    /// AWS_ENDPOINT_URL, then the region's).
    #[arg(long, value_name = "URL")]
    pub s3_endpoint_url: Option<String>,
}

/// `taskctl show`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  taskctl show align HG00096      one task: state, attempts, environment, history\n  taskctl show --step align       the step: settings, and who loaded which sheet and script when"
)]
pub struct ShowArgs {
    /// The step.
    #[arg(required_unless_present = "step_flag")]
    pub step: Option<String>,
    /// The task id; without it, the step's settings and loads.
    pub task: Option<String>,
    /// Show the step itself: its settings and the record of each load
    /// (sheet digest and rows, script digest and git commit, who, where,
    /// the command line).
    #[arg(long = "step", value_name = "STEP", conflicts_with_all = ["step", "task"])]
    pub step_flag: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}
