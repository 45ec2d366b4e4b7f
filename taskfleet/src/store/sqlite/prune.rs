//! Pruning finished tasks in the embedded store (`taskctl prune`): a page
//! of old `done` tasks from the state index, and their removal, each
//! guarded on the task as read. Counts come from the tasks themselves
//! here, so they are exact once a task is gone.

use super::{apply, from_json, q};
use crate::model::{StepMeta, Task, TaskState};
use crate::store::{PruneCursor, StoreError};
use crate::time::Timestamp;
use crate::transition;

/// Up to `limit` tasks of `step`'s `shard` in `state` whose index time is
/// before `before`, oldest first, after `after`.
pub(super) fn in_state(
    tx: &rusqlite::Transaction<'_>,
    step: &str,
    shard: u16,
    state: TaskState,
    before: Timestamp,
    after: Option<&PruneCursor>,
    limit: usize,
) -> Result<(Vec<Task>, Option<PruneCursor>), StoreError> {
    let (from_at, from_id) = after.map_or((i64::MIN, String::new()), |(at, id)| {
        (at.as_millis(), id.clone())
    });
    let mut stmt = tx
        .prepare_cached(
            "SELECT task_id, state_at, body FROM tasks
             WHERE step = ?1 AND state = ?2 AND shard = ?3 AND state_at < ?4
               AND (state_at > ?5 OR (state_at = ?5 AND task_id > ?6))
             ORDER BY state_at, task_id LIMIT ?7",
        )
        .map_err(q)?;
    let rows = stmt
        .query_map(
            rusqlite::params![
                step,
                state.as_str(),
                shard,
                before.as_millis(),
                from_at,
                from_id,
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .map_err(q)?;
    let mut tasks = Vec::new();
    let mut last = None;
    for row in rows {
        let (id, at, body) = row.map_err(q)?;
        tasks.push(from_json(&format!("{step}/{id}"), &body)?);
        last = Some((Timestamp::from_millis(at), id));
    }
    let next = if tasks.len() < limit { None } else { last };
    Ok((tasks, next))
}

/// Removes each of `tasks` that is still as read.
pub(super) fn prune_in(
    tx: &rusqlite::Transaction<'_>,
    meta: &StepMeta,
    tasks: &[Task],
) -> Result<usize, StoreError> {
    let mut removed = 0;
    for task in tasks {
        if apply(tx, meta, &task.task_id, &transition::prune(task))?.is_some() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes the load records and the step `step`, provided none of its
/// tasks is left.
pub(super) fn remove_step_in(tx: &rusqlite::Transaction<'_>, step: &str) -> Result<(), StoreError> {
    let left: i64 = tx
        .query_row("SELECT count(*) FROM tasks WHERE step = ?1", [step], |r| {
            r.get(0)
        })
        .map_err(q)?;
    if left > 0 {
        return Err(super::super::prune_not_empty(step, left.unsigned_abs()));
    }
    tx.execute("DELETE FROM loads WHERE step = ?1", [step])
        .map_err(q)?;
    tx.execute("DELETE FROM steps WHERE step = ?1", [step])
        .map_err(q)?;
    Ok(())
}
