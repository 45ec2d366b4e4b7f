//! The plain values the store operations take and return: outcomes of a
//! load, a claim and a fenced write, candidates and where to read them.

use crate::model::{Task, TaskState};
use crate::time::Timestamp;

/// What happened to a step when it was ensured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepChange {
    /// The step is new.
    Created,
    /// The step existed; its settings were changed.
    Updated,
    /// The step existed as asked.
    Unchanged,
}

/// Outcome of replacing one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceOutcome {
    /// The task was reset to pending with the new script and row.
    Replaced,
    /// The task changed since it was read (for example it was claimed);
    /// it was left alone.
    Changed,
}

/// What inserting a batch of tasks found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InsertOutcome {
    /// Tasks written (and counted as loaded).
    pub inserted: usize,
    /// Tasks of the batch that existed already, as stored; they were left
    /// alone.
    pub existing: Vec<Task>,
}

/// One counter that `recount` found wrong, and what it is now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Correction {
    /// The step.
    pub step: String,
    /// The shard whose counter item was wrong.
    pub shard: u16,
    /// The counter (`loaded`, `done`, `failed`, `waiting`, `cancelled`, or
    /// an expiry counter `expiring_{at}`).
    pub counter: String,
    /// What it said.
    pub was: i64,
    /// What the tasks say.
    pub now: i64,
}

/// A task an index says may be claimable. Only a hint: the claim decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The task.
    pub task_id: String,
    /// `pending`, or `running` with an expired lease.
    pub state: TaskState,
    /// Its attempt when the index was read.
    pub attempt: u32,
    /// Its place in the index: ready time (pending) or lease expiry
    /// (running).
    pub state_at: Timestamp,
}

/// Where in a shard's index a candidate query reads: by ready time for
/// pending tasks, by lease expiry for running ones. Two workers on one
/// shard that read from opposite ends do not meet until it is nearly
/// empty; more start from points in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Earliest first.
    OldestFirst,
    /// Latest first.
    NewestFirst,
    /// Earliest first, from this time on (inclusive).
    OldestFrom(Timestamp),
}

/// What of a step is not finished yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unfinished {
    /// Tasks waiting for upstream tasks.
    pub waiting: u64,
    /// Tasks pending or running.
    pub open: u64,
}

/// A running task as `running` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningTask {
    /// The task.
    pub task_id: String,
    /// Who holds it (`host/worker`).
    pub owner: String,
    /// When its lease runs out; its last renewal was a lease before.
    pub lease_expires_at: Timestamp,
}

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The task is ours: running, with our owner and the returned attempt.
    Claimed(Box<Task>),
    /// Someone else got there first, or the task changed: try another.
    Lost,
    /// The task's owner died and it had no attempts left: it is now
    /// `failed` with class `lost` (or `cancelled`, when an operator had
    /// asked for that while it ran).
    FailedLost,
}

/// The outcome of a fenced write (heartbeat, finish, release).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// We still held the task; the write happened.
    Held,
    /// The task is no longer ours (lease taken over, reset...): nothing was
    /// written, and the worker must stop working on it.
    Lost,
    /// The task is still ours, but an operator cancelled it (`taskctl
    /// cancel`): nothing was written; the worker must stop the script and
    /// end the attempt `cancelled` ([`crate::transition::cancel`]).
    Cancelled,
}
