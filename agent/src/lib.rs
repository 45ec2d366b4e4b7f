//! The agent: claims tasks of one step and runs them, keeping every rule of
//! the task contract.
//!
//! - One owner: a task is claimed with one conditional write; a lost claim
//!   is an ordinary outcome and the agent tries another candidate.
//! - Fenced writes: heartbeats and the final write are conditional on
//!   (state running, our owner, our attempt). When a fence fails the script's
//!   whole process group is killed and nothing more is written for it.
//! - Leases: renewed every third of the step's lease (more often on a
//!   short one: [`lease`]); a task whose lease
//!   could not be renewed before it ran out is given up the same way.
//! - Scripts die with their agent: each runs under a supervising process
//!   that kills everything the script started once the agent is gone, so a
//!   reclaimed task never runs beside an orphan of its earlier attempt.
//! - Scripts see their row, the agent's own names, an allow-list of the
//!   agent's environment and what the operator passes through by name;
//!   never the agent's credentials.
//! - Stopping: the first signal stops claiming and gives running tasks a
//!   grace period; then they are killed and released to `pending` without
//!   using up an attempt. A second signal skips the grace period.
//!
//! # Layout
//!
//! - [`cleanup`]: removing old attempt directories and logs.
//! - [`ec2`]: the agent on EC2: its identity from instance metadata, spot
//!   interruptions and rebalance recommendations.
//! - [`config`]: the agent's settings, plain data.
//! - [`shutdown`]: the two-stage stop signal, passed in, never global.
//! - [`worker`]: the claim loop: slots, idle timeout, fatal errors.
//! - [`finder`]: where the next task is looked for: home shard, the step's
//!   counters, expired leases.
//! - [`lease`]: an attempt's lease by the agent's clock: renewals, call
//!   deadlines, and when the script must die.
//! - [`log_upload`]: an attempt's log to S3, while it runs and at its end.
//! - [`runner`]: one attempt: the script in its own process group, logs,
//!   heartbeat, timeout, and the fenced finish.
//! - [`script`]: starting a script: work directory, log file,
//!   environment, process group.
//! - [`supervisor`]: the parent each script runs under, which kills it
//!   when the agent dies and reports its end faithfully.
//! - [`process`]: process-group signalling (TERM, grace, KILL).
//! - [`stats`]: what the agent did, for `--stats-file`.

pub mod cleanup;
pub mod config;
pub mod ec2;
pub mod finder;
pub mod lease;
pub mod log_upload;
mod outcome;
pub mod process;
pub mod runner;
pub mod script;
pub mod shutdown;
pub mod stats;
pub mod supervisor;
pub mod worker;

pub use config::AgentConfig;
pub use shutdown::Shutdown;
pub use stats::Stats;
pub use worker::{AgentError, Exit, run};
