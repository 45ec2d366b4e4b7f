//! Arguments of `taskctl load`: the sheet, the script, and the step's
//! settings.
//!
//! Doc comments here are `--help` text for a terminal, not rustdoc.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::parse_var;

/// `taskctl load`.
#[derive(Debug, Args)]
// Flags of a command line are bools by nature; they are not a state machine.
#[allow(clippy::struct_excessive_bools)]
#[command(group = clap::ArgGroup::new("script_source").required(true).args(["script", "command"]))]
pub struct LoadArgs {
    /// The step to load into (a letter, then letters, digits, '-', '_').
    #[arg(long)]
    pub step: String,
    /// File holding the script every task runs under bash. Row values reach
    /// it as environment variables ($SAMPLE, $FASTQ_1, ...), never as text.
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// The script as text, instead of --script.
    #[arg(long, value_name = "TEXT")]
    pub command: Option<String>,
    /// The sample sheet: CSV or TSV with a header row; '-' reads standard
    /// input, s3://BUCKET/KEY reads from S3. Also read: dsub task files
    /// (--env NAME, --input NAME, ... columns), sheets with [Section]s
    /// (Illumina v1 and v2; see --section), and empty header fields at the
    /// end of the header (the 1000 Genomes panel).
    pub sheet: PathBuf,
    /// Column holding the task id [default: the first column]. Several
    /// columns, comma-separated (--id-column patient,sample,lane), make the
    /// id from their values joined with '/' (a '/' or '%' in a value is
    /// written %2F or %25).
    #[arg(long, value_name = "COLUMN[,COLUMN...]", value_delimiter = ',')]
    pub id_column: Vec<String>,
    /// Number the rows 1, 2, ... and use that as the task id (for sheets
    /// without an id column).
    #[arg(long, conflicts_with = "id_column")]
    pub row_ids: bool,
    /// In a sheet with [Section]s, the section whose table to load [default:
    /// the only [Data] or [..._Data] section].
    #[arg(long, value_name = "NAME")]
    pub section: Option<String>,
    /// Load column COLUMN as the variable NAME (repeatable), e.g. --rename
    /// path=BAM_PATH for a column whose own name would change how the script
    /// runs.
    #[arg(long = "rename", value_name = "COLUMN=NAME", value_parser = parse_var)]
    pub renames: Vec<(String, String)>,
    /// Sheet format [default: from the extension, else from the header].
    #[arg(long, value_enum)]
    pub format: Option<SheetFormat>,
    /// Attempts a task gets before it is marked failed [default for a new
    /// step: 3].
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Lease length: a worker renews it every third of this (more often
    /// on a short lease); a task whose
    /// worker vanished is claimable again when it runs out [default for a
    /// new step: 5m].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub lease: Option<Duration>,
    /// Wall-clock limit of one attempt, e.g. 2h [default: none].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Keep each done task this long after it finished, e.g. 90d: then it
    /// leaves status, show and export, and the table's TTL deletes it
    /// (the counts stay exact). Failed and unfinished tasks never expire.
    /// Applies to tasks that finish from now on; 0 turns it off [default
    /// for a new step: never].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub expire_after: Option<Duration>,
    /// Shards of a new step (fixed once created) [default: 16].
    #[arg(long)]
    pub shards: Option<u16>,
    /// Reset existing tasks that are not running to pending, with this
    /// script and row. Running tasks are never touched.
    #[arg(long)]
    pub replace: bool,
    /// Keep the attempts' output out of the table: no output tail on the
    /// tasks (`status --failed` then shows exit code, class and log); the
    /// output stays in the logs alone (S3 with `agent --log-bucket`), for
    /// data that must not be copied into the table. Applies to the step.
    #[arg(long)]
    pub no_output_tail: bool,
    /// Each task waits until the task of the same id in STEP is done
    /// (repeatable: all of them). A task whose upstream task fails ends
    /// `failed` with class `upstream`; retrying the upstream task puts it
    /// back to waiting. Stored on the step: later loads of it keep it.
    #[arg(long, value_name = "STEP")]
    pub after: Vec<String>,
    /// Retry rule (repeatable), by exit code, signal or failure class:
    /// 'exit=137:attempts=3' retries exit 137 until 3 attempts failed;
    /// 'exit=137:escalate-to=align-large' runs the task on step align-large
    /// (its launch template: a bigger instance) once its attempts here are
    /// used, and the task takes that run's outcome; 'class=lost:free'
    /// retries lost attempts without using one; 'class=timeout:attempts=2'.
    /// Spot, interrupted and host releases never use an attempt. Any rule
    /// given replaces the step's rules (`show --step` prints them).
    #[arg(long = "retry-on", value_name = "RULE")]
    pub retry_on: Vec<String>,
    /// Fail at once on these failures (repeatable), e.g. 'exit=2' for bad
    /// input that no retry mends; looked at before --retry-on rules.
    #[arg(long = "fail-on", value_name = "RULE", value_parser = parse_fail_on)]
    pub fail_on: Vec<taskfleet::rules::Rule>,
    /// Escalate every --retry-on rule of this command that names no
    /// escalate-to= of its own (and may escalate: not free or lost ones)
    /// to STEP.
    #[arg(long, value_name = "STEP", requires = "retry_on")]
    pub escalate_to: Option<String>,
    /// Drop the step's retry rules (failures are retried up to
    /// --max-attempts).
    #[arg(long, conflicts_with_all = ["retry_on", "fail_on"])]
    pub no_retry_rules: bool,
    /// Refuse a --script file that is not committed in git, or that has
    /// uncommitted changes, so that every task's script can be found at
    /// the commit the step records (`taskctl show --step STEP`).
    #[arg(long, conflicts_with = "command")]
    pub require_clean: bool,
    /// Batches of 25 tasks in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Sheet formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SheetFormat {
    /// Comma-separated.
    Csv,
    /// Tab-separated.
    Tsv,
}

fn parse_fail_on(text: &str) -> Result<taskfleet::rules::Rule, String> {
    taskfleet::rules::parse(text, true)
}
