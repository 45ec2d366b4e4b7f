//! Counts of the embedded store, from the state index: per step for
//! `status`, and per shard for a claiming agent.

use super::{from_json, q, read_step};
use crate::model::{FailedTask, StepMeta, StepStatus, Task};
use crate::store::StoreError;

/// The step named, or every step in name order.
pub(super) fn read_steps(
    tx: &rusqlite::Transaction<'_>,
    wanted: Option<&str>,
    path: &str,
) -> Result<Vec<StepMeta>, StoreError> {
    if let Some(step) = wanted {
        let meta = read_step(tx, step)?.ok_or_else(|| StoreError::StepNotFound {
            step: step.to_owned(),
            table: path.to_owned(),
        })?;
        return Ok(vec![meta]);
    }
    let mut stmt = tx
        .prepare("SELECT step, meta FROM steps ORDER BY step")
        .map_err(q)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(q)?;
    let mut metas = Vec::new();
    for row in rows {
        let (step, text) = row.map_err(q)?;
        metas.push(from_json(&step, &text)?);
    }
    Ok(metas)
}

/// Counts per state of the step named, or of every step.
pub(super) fn status_in(
    tx: &rusqlite::Transaction<'_>,
    wanted: Option<&str>,
    path: &str,
) -> Result<Vec<StepStatus>, StoreError> {
    let metas = read_steps(tx, wanted, path)?;
    let mut stmt = tx
        .prepare_cached("SELECT state, count(*) FROM tasks WHERE step = ?1 GROUP BY state")
        .map_err(q)?;
    let mut out = Vec::new();
    for meta in metas {
        let mut s = StepStatus {
            step: meta.step.clone(),
            max_attempts: meta.settings.max_attempts,
            ..StepStatus::default()
        };
        let rows = stmt
            .query_map([&meta.step], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(q)?;
        for row in rows {
            let (state, n) = row.map_err(q)?;
            let n = n.unsigned_abs();
            match state.as_str() {
                "waiting" => s.waiting = n,
                "pending" => s.pending = n,
                "running" => s.running = n,
                "done" => s.done = n,
                "failed" => s.failed = n,
                "cancelled" => s.cancelled = n,
                _ => {}
            }
        }
        s.total = s.waiting + s.pending + s.running + s.done + s.failed + s.cancelled;
        s.percent_done = StepStatus::percent(s.done, s.total, s.cancelled);
        out.push(s);
    }
    Ok(out)
}

/// Most tasks counted per shard and state by [`open_in`]: the count is a
/// hint of where work is, and an exact count would read every index entry
/// of a million-task step on each call.
pub const OPEN_COUNT_CAP: i64 = 1024;

/// Pending and running tasks of each shard of `meta`, indexed by shard,
/// each state counted up to [`OPEN_COUNT_CAP`]: at most `2 × shards ×
/// 1024` index entries read, whatever the step's size.
pub(super) fn open_in(
    tx: &rusqlite::Transaction<'_>,
    meta: &StepMeta,
) -> Result<Vec<u64>, StoreError> {
    let mut open = vec![0; usize::from(meta.shards)];
    let mut stmt = tx
        .prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM tasks
             WHERE step = ?1 AND state = ?2 AND shard = ?3 LIMIT ?4)",
        )
        .map_err(q)?;
    for (shard, slot) in open.iter_mut().enumerate() {
        for state in ["pending", "running"] {
            let n: i64 = stmt
                .query_row(
                    rusqlite::params![&meta.step, state, shard as i64, OPEN_COUNT_CAP],
                    |r| r.get(0),
                )
                .map_err(q)?;
            *slot += n.unsigned_abs();
        }
    }
    Ok(open)
}

/// The latest failed tasks of each of `steps`, at most `limit` a step,
/// newest first.
pub(super) fn failed_in(
    tx: &rusqlite::Transaction<'_>,
    steps: &[String],
    limit: usize,
) -> Result<Vec<FailedTask>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = tx
        .prepare_cached(
            "SELECT body FROM tasks WHERE step = ?1 AND state = 'failed' ORDER BY state_at DESC LIMIT ?2",
        )
        .map_err(q)?;
    let mut out = Vec::new();
    for step in steps {
        let rows = stmt
            .query_map(rusqlite::params![step, limit], |r| r.get::<_, String>(0))
            .map_err(q)?;
        for row in rows {
            let t: Task = from_json(step, &row.map_err(q)?)?;
            out.push(FailedTask {
                step: t.step,
                task_id: t.task_id,
                attempt: t.attempt,
                exit_code: t.exit_code,
                signal: t.signal,
                failure_class: t.failure_class,
                finished_at: t.finished_at,
                output_tail: t.output_tail,
                log_uri: t.log_uri,
            });
        }
    }
    Ok(out)
}
