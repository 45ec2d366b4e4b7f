//! Counts of the embedded store, from the state index: per step for
//! `status`, and per shard for a claiming agent.

use super::{from_json, q, read_step};
use crate::model::{StepMeta, StepStatus};
use crate::store::StoreError;

/// The step named, or every step in name order.
fn read_steps(
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
                _ => {}
            }
        }
        s.total = s.waiting + s.pending + s.running + s.done + s.failed;
        s.percent_done = if s.total == 0 {
            0.0
        } else {
            100.0 * s.done as f64 / s.total as f64
        };
        out.push(s);
    }
    Ok(out)
}

/// Pending and running tasks of each shard of `meta`, indexed by shard.
pub(super) fn open_in(
    tx: &rusqlite::Transaction<'_>,
    meta: &StepMeta,
) -> Result<Vec<u64>, StoreError> {
    let mut open = vec![0; usize::from(meta.shards)];
    let mut stmt = tx
        .prepare_cached(
            "SELECT shard, count(*) FROM tasks
             WHERE step = ?1 AND state IN ('pending', 'running') GROUP BY shard",
        )
        .map_err(q)?;
    let rows = stmt
        .query_map([&meta.step], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(q)?;
    for row in rows {
        let (shard, n) = row.map_err(q)?;
        if let Some(slot) = usize::try_from(shard).ok().and_then(|k| open.get_mut(k)) {
            *slot = n.unsigned_abs();
        }
    }
    Ok(open)
}
