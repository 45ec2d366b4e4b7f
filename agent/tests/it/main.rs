//! Integration tests of the agent against DynamoDB Local: the real binary
//! as separate processes, and the store's claim and fence directly.

mod support;

mod conformance;
mod lifecycle;
mod many_agents;
mod script_env;
mod stopping;
mod supervision;
mod task_paths;
