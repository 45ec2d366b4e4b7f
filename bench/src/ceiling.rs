//! DynamoDB Local's own ceiling, measured in the same run with the same SDK
//! and connection settings: what every DynamoDB figure is printed beside.
#![allow(clippy::too_many_lines)]

use std::time::Instant;

use anyhow::Result;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use futures::StreamExt;
use taskfleet::store::Store;
use testkit::{Kind, TestStore};

use super::Results;

/// The emulator's own rates with the same SDK and connection settings:
/// conditional UpdateItem (4 in flight) and BatchWriteItem items.
/// Returns the conditional-write rate and the BatchWriteItem rate.
pub(crate) async fn dynamo_ceiling(r: &mut Results, quick: bool) -> Result<(f64, f64)> {
    let t = TestStore::new(Kind::Dynamo, "ceiling").await;
    let Store::Dynamo(d) = &t.store else {
        unreachable!()
    };
    let (client, table) = (d.client().clone(), d.table().to_owned());
    let key = |i: usize| {
        [
            (
                "pk".to_owned(),
                AttributeValue::S(format!("bench#{:03}", i % 16)),
            ),
            ("sk".to_owned(), AttributeValue::S(format!("k{i}"))),
        ]
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>()
    };
    let n_items = if quick { 1_000 } else { 10_000 };
    // The emulator is a JVM: warm it up with a pass of the same requests
    // before timing, as the other measurements run warm too.
    for _ in 0..2 {
        write_batches(&client, &table, n_items, &key).await;
    }
    let started = Instant::now();
    write_batches(&client, &table, n_items, &key).await;
    let batch_rate = n_items as f64 / started.elapsed().as_secs_f64();
    r.add(
        "dynamodb",
        "ceiling: BatchWriteItem (8 in flight)",
        batch_rate,
        "items/s",
        format!("{n_items} items"),
    );

    // Loading writes transactions of conditional puts: their ceiling too.
    let tx_key = |i: usize| {
        let mut k = key(i);
        k.insert("sk".into(), AttributeValue::S(format!("t{i}")));
        k
    };
    write_transactions(&client, &table, n_items, &tx_key).await;
    let started = Instant::now();
    write_transactions(&client, &table, n_items, &|i| {
        let mut k = key(i);
        k.insert("sk".into(), AttributeValue::S(format!("u{i}")));
        k
    })
    .await;
    r.add(
        "dynamodb",
        "ceiling: TransactWriteItems of 99 conditional puts (8 in flight)",
        n_items as f64 / started.elapsed().as_secs_f64(),
        "items/s",
        format!("{n_items} items"),
    );

    let n_updates = if quick { 400 } else { 4_000 };
    let mut started = Instant::now();
    for pass in 0..2 {
        if pass == 1 {
            started = Instant::now();
        }
        conditional_updates(&client, &table, n_updates, n_items, &key, 4).await;
    }
    let cond_rate = n_updates as f64 / started.elapsed().as_secs_f64();
    r.add(
        "dynamodb",
        "ceiling: conditional UpdateItem (4 in flight)",
        cond_rate,
        "writes/s",
        format!("{n_updates} writes"),
    );
    // What the emulator does with as many requests at once as the largest
    // fleet of the claim benchmarks sends it.
    let started = Instant::now();
    conditional_updates(&client, &table, n_updates, n_items, &key, 32).await;
    r.add(
        "dynamodb",
        "ceiling: conditional UpdateItem (32 in flight)",
        n_updates as f64 / started.elapsed().as_secs_f64(),
        "writes/s",
        format!("{n_updates} writes"),
    );
    Ok((cond_rate, batch_rate))
}

/// Puts `n` items with BatchWriteItem, 25 a request, 8 in flight.
async fn write_batches(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    n_items: usize,
    key: &dyn Fn(usize) -> std::collections::HashMap<String, AttributeValue>,
) {
    let batches: Vec<Vec<WriteRequest>> = (0..n_items)
        .map(|i| {
            let mut item = key(i);
            item.insert("n".into(), AttributeValue::N("0".into()));
            WriteRequest::builder()
                .put_request(
                    PutRequest::builder()
                        .set_item(Some(item))
                        .build()
                        .expect("item set"),
                )
                .build()
        })
        .collect::<Vec<_>>()
        .chunks(25)
        .map(<[WriteRequest]>::to_vec)
        .collect();
    futures::stream::iter(batches)
        .map(|b| {
            let (client, table) = (client.clone(), table.to_owned());
            async move {
                client
                    .batch_write_item()
                    .request_items(table, b)
                    .send()
                    .await
            }
        })
        .buffer_unordered(8)
        .for_each(|res| async move {
            res.expect("batch write");
        })
        .await;
}

/// Puts `n` new items in transactions of 99 conditional puts, 8 in flight.
async fn write_transactions(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    n_items: usize,
    key: &dyn Fn(usize) -> std::collections::HashMap<String, AttributeValue>,
) {
    let batches: Vec<Vec<aws_sdk_dynamodb::types::TransactWriteItem>> = (0..n_items)
        .map(|i| {
            let mut item = key(i);
            item.insert("n".into(), AttributeValue::N("0".into()));
            aws_sdk_dynamodb::types::TransactWriteItem::builder()
                .put(
                    aws_sdk_dynamodb::types::Put::builder()
                        .table_name(table)
                        .set_item(Some(item))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .expect("item set"),
                )
                .build()
        })
        .collect::<Vec<_>>()
        .chunks(99)
        .map(<[_]>::to_vec)
        .collect();
    futures::stream::iter(batches)
        .map(|b| {
            let client = client.clone();
            async move {
                client
                    .transact_write_items()
                    .set_transact_items(Some(b))
                    .send()
                    .await
            }
        })
        .buffer_unordered(8)
        .for_each(|res| async move {
            res.expect("transaction");
        })
        .await;
}

/// `n_updates` conditional UpdateItem requests over the first `n_items` keys, 4 in
/// flight.
async fn conditional_updates(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    n_updates: usize,
    n_items: usize,
    key: &dyn Fn(usize) -> std::collections::HashMap<String, AttributeValue>,
    in_flight: usize,
) {
    futures::stream::iter(0..n_updates)
        .map(|i| {
            let (client, table) = (client.clone(), table.to_owned());
            async move {
                client
                    .update_item()
                    .table_name(table)
                    .set_key(Some(key(i % n_items)))
                    .update_expression("SET n = n + :one")
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_values(":one", AttributeValue::N("1".into()))
                    .send()
                    .await
            }
        })
        .buffer_unordered(in_flight)
        .for_each(|res| async move {
            res.expect("conditional update");
        })
        .await;
}
