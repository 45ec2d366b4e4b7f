//! Reading tasks by key and by shard partition: `taskctl where` (a batch
//! read of keys that are known) and `taskctl export` (one step's task
//! partitions, a page at a time), never the table.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::{DynamoStore, Item, decode, s};
use crate::model::{StepMeta, TaskPage, TaskSummary};
use crate::schema::{self, attr};
use crate::store::StoreError;
use crate::time::Timestamp;

/// The attributes a [`TaskSummary`] is read from.
const SUMMARY: [&str; 12] = [
    attr::STEP,
    attr::TASK_ID,
    attr::STATE,
    attr::ATTEMPT,
    attr::EXIT_CODE,
    attr::SIGNAL,
    attr::FAILURE_CLASS,
    attr::STARTED_AT,
    attr::FINISHED_AT,
    attr::LOG_URI,
    attr::REASON,
    attr::EXPIRES_AT,
];

/// Whether the task `item` has expired by `now` (it is gone, whether or
/// not the table's TTL has deleted it yet).
pub(super) fn expired_item(item: &Item, now: Timestamp) -> bool {
    super::number(item, attr::EXPIRES_AT).is_some_and(|at| Timestamp::from_secs(at) <= now)
}

/// Keys of one BatchGetItem at most.
const BATCH_KEYS: usize = 100;

impl DynamoStore {
    pub(super) async fn find_task(
        &self,
        steps: &[StepMeta],
        task_id: &str,
    ) -> Result<Vec<TaskSummary>, StoreError> {
        let mut found = Vec::new();
        for chunk in steps.chunks(BATCH_KEYS) {
            let keys: Vec<Item> = chunk
                .iter()
                .map(|m| schema::task_key(&m.step, m.shards, task_id))
                .collect();
            let now = Timestamp::now();
            for item in self.batch_get(keys, &SUMMARY).await? {
                if expired_item(&item, now) {
                    continue;
                }
                found.push(decode::<TaskSummary>(task_id, item)?);
            }
        }
        // In the order of `steps`, as the batch read returns any order.
        let order: HashMap<&str, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, m)| (m.step.as_str(), i))
            .collect();
        found.sort_by_key(|t| order.get(t.step.as_str()).copied());
        Ok(found)
    }

    pub(super) async fn page_of_shard(
        &self,
        meta: &StepMeta,
        shard: u16,
        after: Option<&str>,
        limit: usize,
    ) -> Result<TaskPage, StoreError> {
        let pk = schema::task_pk(&meta.step, shard);
        let (projection, mut names) = super::expr::projection(&SUMMARY);
        names.insert("#pk".to_owned(), attr::PK.to_owned());
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .set_expression_attribute_names(Some(names))
            .expression_attribute_values(":pk", s(&pk))
            .projection_expression(projection)
            .limit(i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000));
        if let Some(after) = after {
            query = query.set_exclusive_start_key(Some(HashMap::from([
                (attr::PK.to_owned(), s(&pk)),
                (attr::SK.to_owned(), AttributeValue::S(after.to_owned())),
            ])));
        }
        let out = query.send().await.map_err(|e| self.classify("Query", &e))?;
        let now = Timestamp::now();
        let tasks = out
            .items()
            .iter()
            .filter(|i| !expired_item(i, now))
            .map(|i| decode::<TaskSummary>(&pk, i.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let next = out
            .last_evaluated_key()
            .and_then(|k| k.get(attr::SK))
            .and_then(|v| v.as_s().ok())
            .cloned();
        Ok(TaskPage { tasks, next })
    }
}
