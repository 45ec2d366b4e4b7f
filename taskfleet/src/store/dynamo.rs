//! The DynamoDB store: the task table of [`crate::schema`], through the
//! AWS SDK.
//!
//! Guarantees kept here:
//! - Task writes that change what the counters count are transactions with
//!   the counter update, so counts and tasks cannot drift apart. The one
//!   exception is loading (BatchWriteItem cannot be conditional or
//!   transactional): each batch's counter update follows the batch at once,
//!   and a loader killed between the two leaves `loaded` short by at most
//!   that batch.
//! - Nothing here scans the table. `status` costs `1 + steps * (1 + shards)`
//!   requests whatever the number of tasks.
//! - A lost condition is a value ([`ReplaceOutcome::Changed`]), not an error.

use std::collections::HashMap;

pub use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, KeysAndAttributes, Projection, ProjectionType, Put, PutRequest, ScalarAttributeType,
    Select, TimeToLiveSpecification, TimeToLiveStatus, TransactWriteItem, Update, WriteRequest,
};
use aws_smithy_types::error::display::DisplayErrorContext;
use futures::{StreamExt, TryStreamExt};

use super::{
    Candidate, Claim, Fence, Finish, ReplaceOutcome, SettingsChange, StepChange, StoreError,
    TaskStore, lost_record, reclaim_cutoff, trim_history,
};
use crate::model::{AttemptRecord, FailedTask, StepMeta, StepStatus, Task, TaskState};
use crate::retry::RetryPolicy;
use crate::schema::{self, BY_STATE_INDEX, BY_STATE_PROJECTED, STEPS_PK, attr};
use crate::time::Timestamp;

type Item = HashMap<String, AttributeValue>;

/// Most requests one `status` keeps in flight.
const STATUS_CONCURRENCY: usize = 32;

/// Table creation waits this long for the table to become active.
const CREATE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The DynamoDB task table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    endpoint: String,
    retry: RetryPolicy,
}

/// What `init` found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// The table was created and is active.
    Created,
    /// The table existed and matches the schema.
    AlreadyExists,
}

impl DynamoStore {
    /// A store over `table`, using `client` as configured by the caller.
    /// `endpoint` describes where the client points, for messages.
    pub fn new(client: Client, table: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            endpoint: endpoint.into(),
            retry: RetryPolicy::default(),
        }
    }

    /// Uses `retry` for unprocessed items and throttling.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn classify<E, R>(&self, operation: &'static str, err: &SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let code = err.code().map(str::to_owned);
        let text = DisplayErrorContext(err).to_string();
        let message = err.message().map_or_else(|| text.clone(), str::to_owned);
        match (err, code.as_deref()) {
            (_, Some("ResourceNotFoundException")) => StoreError::TableNotFound {
                table: self.table.clone(),
                endpoint: self.endpoint.clone(),
            },
            (
                _,
                Some(
                    "AccessDeniedException"
                    | "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "MissingAuthenticationTokenException"
                    | "ExpiredTokenException",
                ),
            ) => StoreError::AccessDenied { operation, message },
            _ if text.contains("no credentials found") || text.contains("CredentialsNotLoaded") => {
                StoreError::NoCredentials {
                    detail: "environment, profile, web identity, container and instance metadata all came up empty"
                        .to_owned(),
                }
            }
            _ if text.contains("region") && text.contains("missing") => StoreError::NoRegion,
            (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _) => StoreError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: innermost_cause(err),
            },
            (_, Some(code)) => StoreError::Service {
                operation,
                message: format!("{code}: {message}"),
            },
            _ => StoreError::Service { operation, message: text },
        }
    }

    /// Creates the table with its index and TTL, and waits until it is
    /// active; on an existing table, checks that it matches.
    pub async fn init(&self) -> Result<InitOutcome, StoreError> {
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(vec![
                attr_def(attr::PK, ScalarAttributeType::S),
                attr_def(attr::SK, ScalarAttributeType::S),
                attr_def(attr::STATE_PK, ScalarAttributeType::S),
                attr_def(attr::STATE_AT, ScalarAttributeType::N),
            ]))
            .set_key_schema(Some(vec![
                key(attr::PK, KeyType::Hash),
                key(attr::SK, KeyType::Range),
            ]))
            .global_secondary_indexes(by_state_index())
            .send()
            .await;
        match created {
            Ok(_) => {
                self.client
                    .wait_until_table_exists()
                    .table_name(&self.table)
                    .wait(CREATE_WAIT)
                    .await
                    .map_err(|e| StoreError::Service {
                        operation: "waiting for the table to become active",
                        message: DisplayErrorContext(&e).to_string(),
                    })?;
                self.client
                    .update_time_to_live()
                    .table_name(&self.table)
                    .time_to_live_specification(
                        TimeToLiveSpecification::builder()
                            .enabled(true)
                            .attribute_name(attr::EXPIRES_AT)
                            .build()
                            .expect("enabled and attribute name are set"),
                    )
                    .send()
                    .await
                    .map_err(|e| self.classify("UpdateTimeToLive", &e))?;
                Ok(InitOutcome::Created)
            }
            Err(e) if e.code() == Some("ResourceInUseException") => {
                self.check_table().await?;
                Ok(InitOutcome::AlreadyExists)
            }
            Err(e) => Err(self.classify("CreateTable", &e)),
        }
    }

    /// Checks that the table exists and has the schema's keys, index and
    /// TTL attribute; says what differs.
    pub async fn check_table(&self) -> Result<(), StoreError> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| self.classify("DescribeTable", &e))?;
        let Some(desc) = out.table() else {
            return Err(StoreError::TableNotFound {
                table: self.table.clone(),
                endpoint: self.endpoint.clone(),
            });
        };
        let mut differences = schema_differences(desc);
        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| self.classify("DescribeTimeToLive", &e))?;
        let ttl = ttl.time_to_live_description();
        let ttl_on = matches!(
            ttl.and_then(|t| t.time_to_live_status()),
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        );
        if !ttl_on || ttl.and_then(|t| t.attribute_name()) != Some(attr::EXPIRES_AT) {
            differences.push(format!(
                "time to live is not enabled on '{}'",
                attr::EXPIRES_AT
            ));
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(StoreError::SchemaMismatch {
                table: self.table.clone(),
                differences,
            })
        }
    }

    /// The stored step, if any.
    pub async fn read_step(&self, step: &str) -> Result<Option<StepMeta>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::PK, s(STEPS_PK))
            .key(attr::SK, s(step))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.classify("GetItem", &e))?;
        out.item().map(|i| decode(step, i.clone())).transpose()
    }

    async fn required_step(&self, step: &str) -> Result<StepMeta, StoreError> {
        self.read_step(step)
            .await?
            .ok_or_else(|| StoreError::StepNotFound {
                step: step.to_owned(),
                table: self.table.clone(),
            })
    }

    /// Every step, in name order. Reads the step list only.
    pub async fn steps(&self) -> Result<Vec<StepMeta>, StoreError> {
        let items: Vec<Item> = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_values(":pk", s(STEPS_PK))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.classify("Query", &e))?;
        items.into_iter().map(|i| decode(STEPS_PK, i)).collect()
    }

    /// Waits before the next try of a batch request, or reports that the
    /// retry budget is spent with `remaining` items not done.
    async fn backoff(
        &self,
        operation: &'static str,
        tries: u32,
        remaining: usize,
    ) -> Result<(), StoreError> {
        if tries >= self.retry.max_attempts {
            return Err(StoreError::RetriesExhausted {
                operation,
                attempts: tries,
                remaining,
            });
        }
        tokio::time::sleep(self.retry.delay(tries - 1)).await;
        Ok(())
    }

    /// Puts `items` with BatchWriteItem, 25 a request, repeating unprocessed
    /// items and throttled requests with backoff.
    async fn batch_put(&self, items: Vec<Item>) -> Result<(), StoreError> {
        for chunk in items.chunks(25) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|item| {
                    WriteRequest::builder()
                        .put_request(
                            PutRequest::builder()
                                .set_item(Some(item.clone()))
                                .build()
                                .expect("item is set"),
                        )
                        .build()
                })
                .collect();
            let mut tries = 0;
            while !pending.is_empty() {
                tries += 1;
                let result = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending.clone())
                    .send()
                    .await;
                match result {
                    Ok(out) => {
                        pending = out
                            .unprocessed_items()
                            .and_then(|u| u.get(&self.table))
                            .cloned()
                            .unwrap_or_default();
                        if !pending.is_empty() {
                            tracing::debug!(
                                unprocessed = pending.len(),
                                tries,
                                "batch write left items unprocessed"
                            );
                        }
                    }
                    Err(e)
                        if is_retryable(&e)
                            || e.as_service_error().is_some_and(|se| {
                                se.is_provisioned_throughput_exceeded_exception()
                                    || se.is_request_limit_exceeded()
                                    || se.is_throttling_exception()
                                    || se.is_internal_server_error()
                            }) =>
                    {
                        tracing::debug!(tries, error = %DisplayErrorContext(&e), "batch write throttled");
                    }
                    Err(e) => return Err(self.classify("BatchWriteItem", &e)),
                }
                if pending.is_empty() {
                    break;
                }
                self.backoff("BatchWriteItem", tries, pending.len()).await?;
            }
        }
        Ok(())
    }

    async fn counts_of(&self, meta: &StepMeta) -> Result<StepStatus, StoreError> {
        let counters: Vec<Item> = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", attr::PK)
            .expression_attribute_values(":pk", s(&schema::counts_pk(&meta.step)))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.classify("Query", &e))?;
        let sum = |name: &str| -> u64 {
            counters
                .iter()
                .filter_map(|c| c.get(name))
                .filter_map(|v| v.as_n().ok())
                .filter_map(|n| n.parse::<i64>().ok())
                .sum::<i64>()
                .max(0)
                .unsigned_abs()
        };
        let (total, done, failed, waiting) = (
            sum(attr::LOADED),
            sum(attr::DONE),
            sum(attr::FAILED),
            sum(attr::WAITING),
        );
        let running = futures::stream::iter(0..meta.shards)
            .map(|shard| self.count_in_state(&meta.step, TaskState::Running, shard))
            .buffer_unordered(STATUS_CONCURRENCY)
            .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
            .await?;
        let pending = total.saturating_sub(done + failed + waiting + running);
        Ok(StepStatus {
            step: meta.step.clone(),
            total,
            waiting,
            pending,
            running,
            done,
            failed,
            percent_done: if total == 0 {
                0.0
            } else {
                100.0 * done as f64 / total as f64
            },
            max_attempts: meta.settings.max_attempts,
        })
    }

    /// Counts one shard's index entries in `state`. Only used for states
    /// whose population is bounded by the fleet (running).
    async fn count_in_state(
        &self,
        step: &str,
        state: TaskState,
        shard: u16,
    ) -> Result<u64, StoreError> {
        let pages: Vec<_> = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_STATE_INDEX)
            .key_condition_expression("#spk = :spk")
            .expression_attribute_names("#spk", attr::STATE_PK)
            .expression_attribute_values(":spk", s(&schema::state_pk(step, state, shard)))
            .select(Select::Count)
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|e| self.classify("Query", &e))?;
        Ok(pages
            .iter()
            .map(|p| u64::try_from(p.count()).unwrap_or(0))
            .sum())
    }

    async fn failed_of(
        &self,
        meta: &StepMeta,
        limit: usize,
    ) -> Result<Vec<FailedTask>, StoreError> {
        let limit_i32 = i32::try_from(limit.min(1000)).unwrap_or(1000).max(1);
        let per_shard: Vec<Vec<Item>> = futures::stream::iter(0..meta.shards)
            .map(|shard| async move {
                self.client
                    .query()
                    .table_name(&self.table)
                    .index_name(BY_STATE_INDEX)
                    .key_condition_expression("#spk = :spk")
                    .expression_attribute_names("#spk", attr::STATE_PK)
                    .expression_attribute_values(
                        ":spk",
                        s(&schema::state_pk(&meta.step, TaskState::Failed, shard)),
                    )
                    .scan_index_forward(false)
                    .limit(limit_i32)
                    .send()
                    .await
                    .map(|out| out.items().to_vec())
                    .map_err(|e| self.classify("Query", &e))
            })
            .buffer_unordered(STATUS_CONCURRENCY)
            .try_collect()
            .await?;
        let mut entries: Vec<Item> = per_shard.into_iter().flatten().collect();
        let finished = |i: &Item| {
            i.get(attr::STATE_AT)
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<i64>().ok())
        };
        entries.sort_by_key(|i| std::cmp::Reverse(finished(i)));
        entries.truncate(limit);

        // The index holds no output; read the tails of the listed tasks.
        let mut tails: HashMap<String, String> = HashMap::new();
        for chunk in entries.chunks(100) {
            let keys: Vec<Item> = chunk
                .iter()
                .map(|i| {
                    HashMap::from([
                        (attr::PK.to_owned(), i[attr::PK].clone()),
                        (attr::SK.to_owned(), i[attr::SK].clone()),
                    ])
                })
                .collect();
            for item in self.batch_get(keys, &[attr::SK, attr::OUTPUT_TAIL]).await? {
                if let (Some(AttributeValue::S(id)), Some(AttributeValue::S(tail))) =
                    (item.get(attr::SK), item.get(attr::OUTPUT_TAIL))
                {
                    tails.insert(id.clone(), tail.clone());
                }
            }
        }
        let num = |i: &Item, a: &str| {
            i.get(a)
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<i64>().ok())
        };
        Ok(entries
            .iter()
            .map(|i| {
                let id = i
                    .get(attr::SK)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                FailedTask {
                    step: meta.step.clone(),
                    attempt: num(i, attr::ATTEMPT)
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(0),
                    exit_code: num(i, attr::EXIT_CODE).and_then(|n| i32::try_from(n).ok()),
                    signal: num(i, attr::SIGNAL).and_then(|n| i32::try_from(n).ok()),
                    failure_class: i
                        .get(attr::FAILURE_CLASS)
                        .and_then(|v| serde_dynamo::from_attribute_value(v.clone()).ok()),
                    finished_at: num(i, attr::FINISHED_AT).map(Timestamp::from_millis),
                    output_tail: tails.remove(&id),
                    task_id: id,
                }
            })
            .collect())
    }

    /// BatchGetItem with `projection`, repeating unprocessed keys.
    async fn batch_get(
        &self,
        keys: Vec<Item>,
        projection: &[&str],
    ) -> Result<Vec<Item>, StoreError> {
        let mut names = HashMap::new();
        let projection_expr = projection
            .iter()
            .enumerate()
            .map(|(n, a)| {
                names.insert(format!("#p{n}"), (*a).to_owned());
                format!("#p{n}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut found = Vec::new();
        let mut pending = keys;
        let mut tries = 0;
        while !pending.is_empty() {
            tries += 1;
            let request = KeysAndAttributes::builder()
                .set_keys(Some(pending.clone()))
                .projection_expression(&projection_expr)
                .set_expression_attribute_names(Some(names.clone()))
                .consistent_read(true)
                .build()
                .expect("keys are set");
            match self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
            {
                Ok(out) => {
                    if let Some(items) = out.responses().and_then(|r| r.get(&self.table)) {
                        found.extend(items.iter().cloned());
                    }
                    pending = out
                        .unprocessed_keys()
                        .and_then(|u| u.get(&self.table))
                        .map(|k| k.keys().to_vec())
                        .unwrap_or_default();
                }
                Err(e)
                    if is_retryable(&e)
                        || e.as_service_error().is_some_and(|se| {
                            se.is_provisioned_throughput_exceeded_exception()
                                || se.is_request_limit_exceeded()
                                || se.is_throttling_exception()
                                || se.is_internal_server_error()
                        }) => {}
                Err(e) => return Err(self.classify("BatchGetItem", &e)),
            }
            if pending.is_empty() {
                break;
            }
            self.backoff("BatchGetItem", tries, pending.len()).await?;
        }
        Ok(found)
    }

    /// Prepares the reclaim of a dead owner's task: reads it whole to record
    /// the lost attempt, and returns the condition that takes it only if it
    /// is still that attempt with its lease expired. An early outcome
    /// (`Lost`, or `FailedLost` when it had no attempts left) is `Err`.
    async fn prepare_reclaim(
        &self,
        meta: &StepMeta,
        candidate: &Candidate,
        now: Timestamp,
        e: &mut Expr,
    ) -> Result<Result<String, Claim>, StoreError> {
        // Reclaiming a dead owner's task: read it whole to record the
        // lost attempt, then take it only if it is still that attempt.
        let Some(old) = self.read_task(meta, &candidate.task_id).await? else {
            return Ok(Err(Claim::Lost));
        };
        let cutoff = reclaim_cutoff(now);
        if old.state != TaskState::Running
            || old.attempt != candidate.attempt
            || old.lease_expires_at.is_none_or(|l| l > cutoff)
        {
            return Ok(Err(Claim::Lost));
        }
        let lost = lost_record(&old, now);
        if old.failed_attempts + 1 >= meta.settings.max_attempts {
            let finish = Finish {
                next: TaskState::Failed,
                counts_as_failure: true,
                ready_at: now,
                record: AttemptRecord {
                    outcome: TaskState::Failed,
                    ..lost
                },
                output_tail: old.output_tail.clone(),
            };
            return Ok(Err(
                match TaskStore::finish(self, meta, &old, &finish).await? {
                    Fence::Held => Claim::FailedLost,
                    Fence::Lost => Claim::Lost,
                },
            ));
        }
        let mut history = old.history.clone();
        history.push(lost);
        trim_history(&mut history);
        e.set(
            attr::HISTORY,
            serde_dynamo::to_attribute_value(&history).expect("history serialises"),
        )
        .add_to(attr::FAILED_ATTEMPTS, 1);
        let (st, att, lease, running, seen, cut) = (
            e.name(attr::STATE),
            e.name(attr::ATTEMPT),
            e.name(attr::LEASE_EXPIRES_AT),
            e.value(s(TaskState::Running.as_str())),
            e.value(n(i64::from(old.attempt))),
            e.value(n(cutoff.as_millis())),
        );
        Ok(Ok(format!(
            "{st} = {running} AND {att} = {seen} AND {lease} < {cut}"
        )))
    }

    /// One task of a step whose layout is known (one GetItem).
    async fn read_task(&self, meta: &StepMeta, task_id: &str) -> Result<Option<Task>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(schema::task_key(&meta.step, meta.shards, task_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.classify("GetItem", &e))?;
        out.item()
            .map(|i| decode(&format!("{}/{task_id}", meta.step), i.clone()))
            .transpose()
    }

    /// One conditional UpdateItem of a task. `Ok(None)`: the condition
    /// failed (a lost race, not an error); `Ok(Some(item))`: the item as
    /// written when `return_new`, else empty.
    async fn update_task_if(
        &self,
        meta: &StepMeta,
        task_id: &str,
        e: Expr,
        condition: String,
        return_new: bool,
    ) -> Result<Option<Item>, StoreError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(schema::task_key(&meta.step, meta.shards, task_id)))
            .update_expression(e.update_expression())
            .condition_expression(condition)
            .set_expression_attribute_names(Some(e.names))
            .set_expression_attribute_values(Some(e.values));
        if return_new {
            request = request.return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew);
        }
        match request.send().await {
            Ok(out) => Ok(Some(out.attributes().cloned().unwrap_or_default())),
            Err(err) if err.code() == Some("ConditionalCheckFailedException") => Ok(None),
            Err(err) => Err(self.classify("UpdateItem", &err)),
        }
    }

    fn step_item(meta: &StepMeta) -> Item {
        let mut item: Item = serde_dynamo::to_item(meta).expect("a step always serialises");
        item.insert(attr::PK.to_owned(), s(STEPS_PK));
        item.insert(attr::SK.to_owned(), s(&meta.step));
        item
    }
}

/// The item that stores `task`: its attributes, keys and index entry.
pub fn task_item(meta: &StepMeta, task: &Task) -> Item {
    let mut item: Item = serde_dynamo::to_item(task).expect("a task always serialises");
    let shard = schema::shard_of(&task.task_id, meta.shards);
    item.insert(attr::PK.to_owned(), s(&schema::task_pk(&meta.step, shard)));
    item.insert(attr::SK.to_owned(), s(&task.task_id));
    let state_at = match task.state {
        TaskState::Running => task.lease_expires_at,
        TaskState::Done | TaskState::Failed => task.finished_at,
        TaskState::Pending | TaskState::Waiting => task.ready_at.or(Some(task.updated_at)),
    };
    item.insert(
        attr::STATE_PK.to_owned(),
        s(&schema::state_pk(&meta.step, task.state, shard)),
    );
    item.insert(
        attr::STATE_AT.to_owned(),
        n(state_at.unwrap_or(task.updated_at).as_millis()),
    );
    item
}

impl TaskStore for DynamoStore {
    fn describe(&self) -> String {
        format!("DynamoDB table '{}' at {}", self.table, self.endpoint)
    }

    async fn ensure_step(
        &self,
        step: &str,
        change: &SettingsChange,
    ) -> Result<(StepMeta, StepChange), StoreError> {
        loop {
            if let Some(meta) = self.read_step(step).await? {
                let Some(updated) = change.update_step(&meta)? else {
                    return Ok((meta, StepChange::Unchanged));
                };
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .key(attr::PK, s(STEPS_PK))
                    .key(attr::SK, s(step))
                    .update_expression("SET #settings = :settings, #updated = :updated")
                    .expression_attribute_names("#settings", attr::SETTINGS)
                    .expression_attribute_names("#updated", attr::UPDATED_AT)
                    .expression_attribute_values(
                        ":settings",
                        serde_dynamo::to_attribute_value(&updated.settings)
                            .expect("settings serialise"),
                    )
                    .expression_attribute_values(":updated", n(updated.updated_at.as_millis()))
                    .send()
                    .await
                    .map_err(|e| self.classify("UpdateItem", &e))?;
                return Ok((updated, StepChange::Updated));
            }
            let meta = change.new_step(step);
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(Self::step_item(&meta)))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", attr::PK)
                .send()
                .await;
            match put {
                Ok(_) => return Ok((meta, StepChange::Created)),
                // Another loader created the step first: read theirs.
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => {}
                Err(e) => return Err(self.classify("PutItem", &e)),
            }
        }
    }

    async fn existing(
        &self,
        meta: &StepMeta,
        ids: &[&str],
    ) -> Result<HashMap<String, TaskState>, StoreError> {
        let keys = ids
            .iter()
            .map(|id| schema::task_key(&meta.step, meta.shards, id))
            .collect();
        let items = self.batch_get(keys, &[attr::SK, attr::STATE]).await?;
        items
            .into_iter()
            .map(|item| {
                let id = item
                    .get(attr::SK)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                let state = item
                    .get(attr::STATE)
                    .and_then(|v| serde_dynamo::from_attribute_value(v.clone()).ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        key: format!("{}/{id}", meta.step),
                        detail: "no valid state".into(),
                    })?;
                Ok((id, state))
            })
            .collect()
    }

    async fn insert_new(&self, meta: &StepMeta, tasks: &[Task]) -> Result<(), StoreError> {
        let Some(first) = tasks.first() else {
            return Ok(());
        };
        let shard = schema::shard_of(&first.task_id, meta.shards);
        debug_assert!(
            tasks
                .iter()
                .all(|t| schema::shard_of(&t.task_id, meta.shards) == shard)
        );
        self.batch_put(tasks.iter().map(|t| task_item(meta, t)).collect())
            .await?;
        self.client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(&schema::counts_pk(&meta.step)))
            .key(attr::SK, s(&schema::shard_sk(shard)))
            .update_expression("ADD #loaded :n")
            .expression_attribute_names("#loaded", attr::LOADED)
            .expression_attribute_values(":n", n(tasks.len() as i64))
            .send()
            .await
            .map_err(|e| self.classify("UpdateItem", &e))?;
        Ok(())
    }

    async fn replace(
        &self,
        meta: &StepMeta,
        task: &Task,
        old: TaskState,
    ) -> Result<ReplaceOutcome, StoreError> {
        assert!(
            old != TaskState::Running,
            "running tasks are never replaced"
        );
        let shard = schema::shard_of(&task.task_id, meta.shards);
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(task_item(meta, task)))
            .condition_expression("#state = :old")
            .expression_attribute_names("#state", attr::STATE)
            .expression_attribute_values(":old", s(old.as_str()))
            .build()
            .expect("table and item are set");
        let counter = match old {
            TaskState::Done => Some(attr::DONE),
            TaskState::Failed => Some(attr::FAILED),
            TaskState::Waiting => Some(attr::WAITING),
            TaskState::Pending | TaskState::Running => None,
        };
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        if let Some(counter) = counter {
            let update = Update::builder()
                .table_name(&self.table)
                .key(attr::PK, s(&schema::counts_pk(&meta.step)))
                .key(attr::SK, s(&schema::shard_sk(shard)))
                .update_expression("ADD #c :minus_one")
                .expression_attribute_names("#c", counter)
                .expression_attribute_values(":minus_one", n(-1))
                .build()
                .expect("table, key and expression are set");
            items.push(TransactWriteItem::builder().update(update).build());
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(ReplaceOutcome::Replaced),
            Err(e) => {
                let lost = e
                    .as_service_error()
                    .filter(|se| se.is_transaction_canceled_exception())
                    .is_some_and(|se| {
                        DisplayErrorContext(se)
                            .to_string()
                            .contains("ConditionalCheckFailed")
                    });
                if lost {
                    Ok(ReplaceOutcome::Changed)
                } else {
                    Err(self.classify("TransactWriteItems", &e))
                }
            }
        }
    }

    async fn status(&self, step: Option<&str>) -> Result<Vec<StepStatus>, StoreError> {
        let metas = match step {
            Some(step) => vec![self.required_step(step).await?],
            None => self.steps().await?,
        };
        let counts: Vec<_> = metas.iter().map(|meta| self.counts_of(meta)).collect();
        futures::future::try_join_all(counts).await
    }

    async fn failed(
        &self,
        step: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FailedTask>, StoreError> {
        let metas = match step {
            Some(step) => vec![self.required_step(step).await?],
            None => self.steps().await?,
        };
        let mut all = Vec::new();
        for meta in &metas {
            all.extend(self.failed_of(meta, limit).await?);
        }
        Ok(all)
    }

    async fn task(&self, step: &str, task_id: &str) -> Result<Option<Task>, StoreError> {
        let meta = self.required_step(step).await?;
        self.read_task(&meta, task_id).await
    }

    async fn step(&self, step: &str) -> Result<Option<StepMeta>, StoreError> {
        self.read_step(step).await
    }

    async fn running(&self, meta: &StepMeta) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for shard in 0..meta.shards {
            let items: Vec<Item> = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(BY_STATE_INDEX)
                .key_condition_expression("#spk = :spk")
                .expression_attribute_names("#spk", attr::STATE_PK)
                .expression_attribute_values(
                    ":spk",
                    s(&schema::state_pk(&meta.step, TaskState::Running, shard)),
                )
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .map_err(|e| self.classify("Query", &e))?;
            out.extend(items.iter().map(|i| {
                let text = |a: &str| {
                    i.get(a)
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .unwrap_or_default()
                };
                (text(attr::SK), text(attr::OWNER))
            }));
        }
        Ok(out)
    }

    async fn candidates(
        &self,
        meta: &StepMeta,
        shard: u16,
        state: TaskState,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError> {
        let cutoff = match state {
            TaskState::Running => reclaim_cutoff(now),
            _ => now,
        };
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_STATE_INDEX)
            .key_condition_expression("#spk = :spk AND #sat <= :cutoff")
            .expression_attribute_names("#spk", attr::STATE_PK)
            .expression_attribute_names("#sat", attr::STATE_AT)
            .expression_attribute_values(":spk", s(&schema::state_pk(&meta.step, state, shard)))
            .expression_attribute_values(":cutoff", n(cutoff.as_millis()))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX).max(1))
            .send()
            .await
            .map_err(|e| self.classify("Query", &e))?;
        Ok(out
            .items()
            .iter()
            .filter_map(|i| {
                Some(Candidate {
                    task_id: i.get(attr::SK)?.as_s().ok()?.clone(),
                    state,
                    attempt: i.get(attr::ATTEMPT)?.as_n().ok()?.parse().ok()?,
                })
            })
            .collect())
    }

    async fn claim(
        &self,
        meta: &StepMeta,
        candidate: &Candidate,
        owner: &str,
        now: Timestamp,
    ) -> Result<Claim, StoreError> {
        let shard = schema::shard_of(&candidate.task_id, meta.shards);
        let until = now.plus(meta.settings.lease);
        let mut e = Expr::default();
        e.set(attr::STATE, s(TaskState::Running.as_str()))
            .set(attr::OWNER, s(owner))
            .add_to(attr::ATTEMPT, 1)
            .set(attr::LEASE_EXPIRES_AT, n(until.as_millis()))
            .set(attr::STARTED_AT, n(now.as_millis()))
            .set(attr::UPDATED_AT, n(now.as_millis()))
            .set(
                attr::STATE_PK,
                s(&schema::state_pk(&meta.step, TaskState::Running, shard)),
            )
            .set(attr::STATE_AT, n(until.as_millis()))
            .remove(attr::FINISHED_AT)
            .remove(attr::READY_AT)
            .remove(attr::EXIT_CODE)
            .remove(attr::SIGNAL)
            .remove(attr::FAILURE_CLASS);
        let condition = if candidate.state == TaskState::Pending {
            let (st, sat, pending, now_v) = (
                e.name(attr::STATE),
                e.name(attr::STATE_AT),
                e.value(s(TaskState::Pending.as_str())),
                e.value(n(now.as_millis())),
            );
            format!("{st} = {pending} AND {sat} <= {now_v}")
        } else {
            match self.prepare_reclaim(meta, candidate, now, &mut e).await? {
                Ok(condition) => condition,
                Err(early) => return Ok(early),
            }
        };
        match self
            .update_task_if(meta, &candidate.task_id, e, condition, true)
            .await?
        {
            Some(item) => {
                let task: Task = decode(&format!("{}/{}", meta.step, candidate.task_id), item)?;
                Ok(Claim::Claimed(Box::new(task)))
            }
            None => Ok(Claim::Lost),
        }
    }

    async fn heartbeat(
        &self,
        meta: &StepMeta,
        task: &Task,
        until: Timestamp,
    ) -> Result<Fence, StoreError> {
        let mut e = Expr::default();
        e.set(attr::LEASE_EXPIRES_AT, n(until.as_millis()))
            .set(attr::STATE_AT, n(until.as_millis()))
            .set(attr::UPDATED_AT, n(Timestamp::now().as_millis()));
        let condition = e.fence(task);
        Ok(
            match self
                .update_task_if(meta, &task.task_id, e, condition, false)
                .await?
            {
                Some(_) => Fence::Held,
                None => Fence::Lost,
            },
        )
    }

    async fn finish(
        &self,
        meta: &StepMeta,
        task: &Task,
        finish: &Finish,
    ) -> Result<Fence, StoreError> {
        let shard = schema::shard_of(&task.task_id, meta.shards);
        let now = Timestamp::now();
        let mut history = task.history.clone();
        history.push(finish.record.clone());
        trim_history(&mut history);
        let mut e = Expr::default();
        e.set(attr::STATE, s(finish.next.as_str()))
            .set(attr::UPDATED_AT, n(now.as_millis()))
            .set(
                attr::HISTORY,
                serde_dynamo::to_attribute_value(&history).expect("history serialises"),
            )
            .set(
                attr::STATE_PK,
                s(&schema::state_pk(&meta.step, finish.next, shard)),
            )
            .remove(attr::OWNER)
            .remove(attr::LEASE_EXPIRES_AT);
        let r = &finish.record;
        e.set_opt(attr::EXIT_CODE, r.exit_code.map(|c| n(i64::from(c))))
            .set_opt(attr::SIGNAL, r.signal.map(|c| n(i64::from(c))))
            .set_opt(attr::FAILURE_CLASS, r.failure_class.map(|c| s(c.as_str())))
            .set_opt(attr::LOG_URI, r.log_uri.clone().map(AttributeValue::S))
            .set_opt(
                attr::OUTPUT_TAIL,
                finish.output_tail.clone().map(AttributeValue::S),
            );
        if finish.counts_as_failure {
            e.add_to(attr::FAILED_ATTEMPTS, 1);
        }
        let counter = match finish.next {
            TaskState::Done | TaskState::Failed => {
                e.set(attr::FINISHED_AT, n(r.finished_at.as_millis()))
                    .set(attr::STATE_AT, n(r.finished_at.as_millis()));
                Some(if finish.next == TaskState::Done {
                    attr::DONE
                } else {
                    attr::FAILED
                })
            }
            _ => {
                e.set(attr::STATE_AT, n(finish.ready_at.as_millis()))
                    .set(attr::READY_AT, n(finish.ready_at.as_millis()));
                None
            }
        };
        let condition = e.fence(task);
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(schema::task_key(
                &meta.step,
                meta.shards,
                &task.task_id,
            )))
            .update_expression(e.update_expression())
            .condition_expression(condition)
            .set_expression_attribute_names(Some(e.names))
            .set_expression_attribute_values(Some(e.values))
            .build()
            .expect("table, key and expression are set");
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        if let Some(counter) = counter {
            items.push(
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.table)
                            .key(attr::PK, s(&schema::counts_pk(&meta.step)))
                            .key(attr::SK, s(&schema::shard_sk(shard)))
                            .update_expression("ADD #c :one")
                            .expression_attribute_names("#c", counter)
                            .expression_attribute_values(":one", n(1))
                            .build()
                            .expect("table, key and expression are set"),
                    )
                    .build(),
            );
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Fence::Held),
            Err(err) if is_condition_cancel(&err) => Ok(Fence::Lost),
            Err(err) => Err(self.classify("TransactWriteItems", &err)),
        }
    }
}

/// What differs between a table's description and the schema's keys and
/// index.
fn schema_differences(desc: &aws_sdk_dynamodb::types::TableDescription) -> Vec<String> {
    let mut differences = Vec::new();
    let keys = |schema: &[KeySchemaElement]| {
        schema
            .iter()
            .map(|k| format!("{} ({})", k.attribute_name(), k.key_type().as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let want_keys = format!("{} (HASH), {} (RANGE)", attr::PK, attr::SK);
    let have_keys = keys(desc.key_schema());
    if have_keys != want_keys {
        differences.push(format!(
            "key schema is [{have_keys}], expected [{want_keys}]"
        ));
    }
    match desc
        .global_secondary_indexes()
        .iter()
        .find(|g| g.index_name() == Some(BY_STATE_INDEX))
    {
        None => differences.push(format!("index '{BY_STATE_INDEX}' is missing")),
        Some(g) => {
            let want = format!("{} (HASH), {} (RANGE)", attr::STATE_PK, attr::STATE_AT);
            let have = keys(g.key_schema());
            if have != want {
                differences.push(format!(
                    "index '{BY_STATE_INDEX}' has keys [{have}], expected [{want}]"
                ));
            }
            let projected: Vec<&str> = g
                .projection()
                .map(|p| p.non_key_attributes().iter().map(String::as_str).collect())
                .unwrap_or_default();
            let is_all =
                g.projection().and_then(|p| p.projection_type()) == Some(&ProjectionType::All);
            let missing: Vec<&str> = BY_STATE_PROJECTED
                .iter()
                .copied()
                .filter(|a| !projected.contains(a))
                .collect();
            if !is_all && !missing.is_empty() {
                differences.push(format!(
                    "index '{BY_STATE_INDEX}' does not project {}",
                    missing.join(", ")
                ));
            }
        }
    }
    let key_types: HashMap<&str, &str> = desc
        .attribute_definitions()
        .iter()
        .map(|d| (d.attribute_name(), d.attribute_type().as_str()))
        .collect();
    for (name, ty) in [
        (attr::PK, "S"),
        (attr::SK, "S"),
        (attr::STATE_PK, "S"),
        (attr::STATE_AT, "N"),
    ] {
        if let Some(have) = key_types.get(name)
            && *have != ty
        {
            differences.push(format!("attribute '{name}' has type {have}, expected {ty}"));
        }
    }
    differences
}

/// Whether a transaction was cancelled because one of its conditions
/// failed (a lost race, not an error).
fn is_condition_cancel<R>(
    err: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError, R>,
) -> bool {
    err.as_service_error()
        .and_then(|se| match se {
            aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) => {
                Some(c.cancellation_reasons().iter().any(|r| r.code() == Some("ConditionalCheckFailed")))
            }
            _ => None,
        })
        .unwrap_or(false)
}

/// An update expression under construction, with its placeholders.
#[derive(Debug, Default)]
struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    sets: Vec<String>,
    adds: Vec<String>,
    removes: Vec<String>,
}

impl Expr {
    fn name(&mut self, attr: &str) -> String {
        let placeholder = format!("#{attr}");
        self.names.insert(placeholder.clone(), attr.to_owned());
        placeholder
    }

    fn value(&mut self, v: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), v);
        placeholder
    }

    fn set(&mut self, attr: &str, v: AttributeValue) -> &mut Self {
        let (name, value) = (self.name(attr), self.value(v));
        self.sets.push(format!("{name} = {value}"));
        self
    }

    fn set_opt(&mut self, attr: &str, v: Option<AttributeValue>) -> &mut Self {
        match v {
            Some(v) => self.set(attr, v),
            None => self.remove(attr),
        }
    }

    fn add_to(&mut self, attr: &str, by: i64) -> &mut Self {
        let (name, value) = (self.name(attr), self.value(n(by)));
        self.adds.push(format!("{name} {value}"));
        self
    }

    fn remove(&mut self, attr: &str) -> &mut Self {
        let name = self.name(attr);
        self.removes.push(name);
        self
    }

    /// `state = running AND owner = ours AND attempt = ours`.
    fn fence(&mut self, task: &Task) -> String {
        let (st, ow, at) = (
            self.name(attr::STATE),
            self.name(attr::OWNER),
            self.name(attr::ATTEMPT),
        );
        let running = self.value(s(TaskState::Running.as_str()));
        let owner = self.value(s(task.owner.as_deref().unwrap_or_default()));
        let attempt = self.value(n(i64::from(task.attempt)));
        format!("{st} = {running} AND {ow} = {owner} AND {at} = {attempt}")
    }

    fn update_expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.sets.is_empty() {
            parts.push(format!("SET {}", self.sets.join(", ")));
        }
        if !self.adds.is_empty() {
            parts.push(format!("ADD {}", self.adds.join(", ")));
        }
        if !self.removes.is_empty() {
            parts.push(format!("REMOVE {}", self.removes.join(", ")));
        }
        parts.join(" ")
    }
}

fn is_retryable<E, R>(err: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    matches!(
        err.code(),
        Some(
            "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "InternalServerError"
                | "ServiceUnavailable"
        )
    ) || matches!(err, SdkError::TimeoutError(_))
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, item: Item) -> Result<T, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

/// The innermost cause in an SDK error chain: the part a person can act on.
fn innermost_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn attr_def(name: &str, ty: ScalarAttributeType) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ty)
        .build()
        .expect("name and type are set")
}

fn key(name: &str, ty: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(ty)
        .build()
        .expect("name and type are set")
}

fn by_state_index() -> GlobalSecondaryIndex {
    GlobalSecondaryIndex::builder()
        .index_name(BY_STATE_INDEX)
        .key_schema(key(attr::STATE_PK, KeyType::Hash))
        .key_schema(key(attr::STATE_AT, KeyType::Range))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::Include)
                .set_non_key_attributes(Some(
                    BY_STATE_PROJECTED.iter().map(|a| (*a).to_owned()).collect(),
                ))
                .build(),
        )
        .build()
        .expect("name, keys and projection are set")
}
