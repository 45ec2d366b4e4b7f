//! Where a task goes after an attempt: by the step's retry rules, as an
//! operator's cancel asks, or given back when that ask was withdrawn.

use std::time::Duration;

use taskfleet::model::{AttemptRecord, FailureClass, StepMeta, Task, TaskState};
use taskfleet::rules;
use taskfleet::store::Finish;
use taskfleet::time::Timestamp;

use crate::config::AgentConfig;

/// Longest wait before a failed task is retried.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

/// `finish` as the end of an attempt an operator cancelled: the task is
/// set aside, without using an attempt; how the script ended stays in the
/// record.
pub(crate) fn cancelled(finish: Finish) -> Finish {
    Finish {
        next: TaskState::Cancelled,
        counts_as_failure: false,
        escalate_to: None,
        record: AttemptRecord {
            outcome: TaskState::Cancelled,
            failure_class: Some(FailureClass::Cancelled),
            ..finish.record
        },
        ..finish
    }
}

/// `finish` as the end of an attempt whose script was stopped for a cancel
/// that was then withdrawn (an escalated task retried took its run back):
/// the task is given back to be run again, without using an attempt.
pub(crate) fn given_back(finish: Finish) -> Finish {
    Finish {
        next: TaskState::Pending,
        counts_as_failure: false,
        escalate_to: None,
        expires_at: None,
        ready_at: finish.record.finished_at,
        record: AttemptRecord {
            outcome: TaskState::Pending,
            failure_class: Some(FailureClass::Interrupted),
            ..finish.record
        },
        ..finish
    }
}

/// Where a task goes after an attempt that ended as `class` (`None`:
/// success) with `exit_code` or `signal`, by the step's retry rules
/// ([`taskfleet::rules`]): the next state, whether the attempt counts
/// against the limit, when it may be claimed again, and the step its run
/// is escalated to.
pub(crate) fn next_state(
    task: &Task,
    meta: &StepMeta,
    cfg: &AgentConfig,
    (class, exit_code, signal): (Option<FailureClass>, Option<i32>, Option<i32>),
    now: Timestamp,
) -> (TaskState, bool, Timestamp, Option<String>) {
    let Some(class) = class else {
        return (TaskState::Done, false, now, None);
    };
    let failure = rules::Failure {
        class,
        exit_code,
        signal,
    };
    match rules::decide(&meta.settings, &failure, task.failed_attempts) {
        rules::Next::Retry { counts: false } => (TaskState::Pending, false, now, None),
        rules::Next::Retry { counts: true } => {
            let factor = 1u32 << task.failed_attempts.min(16);
            let delay = cfg.retry_delay.saturating_mul(factor).min(MAX_RETRY_DELAY);
            (TaskState::Pending, true, now.plus(delay), None)
        }
        rules::Next::Fail => (TaskState::Failed, true, now, None),
        rules::Next::Escalate(step) => (TaskState::Waiting, true, now, Some(step)),
    }
}
