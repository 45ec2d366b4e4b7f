//! Integration tests of `taskctl` and the DynamoDB store, in one test
//! binary so that the SDK is linked once.
//!
//! Tests that talk to DynamoDB use the official DynamoDB Local that
//! `scripts/test` starts inside a private network namespace, and find it
//! through `TASKFLEET_TEST_DYNAMODB`. Without it they fail with a message
//! saying how to run them; they never skip. Each test uses its own table.
//! The EC2 fleet's tests (`fleet`) use moto, found through
//! `TASKFLEET_TEST_MOTO` the same way, with launch template names of their
//! own; the refusals moto cannot produce are scripted in `mocks`.
//! `simulation` plays the whole EC2 path: instances booted from their
//! user-data, each with a metadata server of its own, agents installed
//! from moto's S3.

mod support;

mod bad_input;
mod browse;
mod cancel;
mod errors;
mod fleet;
mod init;
mod load;
mod local;
mod logs;
mod mocks;
mod provenance;
mod prune;
mod readme;
mod recount;
mod retry;
mod sheets;
mod simulation;
mod status;
mod terraform;
