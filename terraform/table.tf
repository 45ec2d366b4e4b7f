# The task table. Its keys, index and TTL attribute are defined once in
# taskfleet/src/schema.rs; this file follows it, and a test
# (schema::tests::terraform_table_matches_the_schema) checks that they agree.
# `taskctl init` creates the same table for users who do not use terraform
# (with the AWS owned key and no point-in-time recovery).

resource "aws_dynamodb_table" "tasks" {
  name         = var.table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  attribute {
    name = "state_pk"
    type = "S"
  }

  attribute {
    name = "state_at"
    type = "N"
  }

  # Claimable, reclaimable, running and failed tasks per step and shard.
  global_secondary_index {
    name               = "by_state"
    hash_key           = "state_pk"
    range_key          = "state_at"
    projection_type    = "INCLUDE"
    non_key_attributes = ["attempt", "exit_code", "signal", "failure_class", "finished_at", "owner"]
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = var.point_in_time_recovery
  }

  # DynamoDB always encrypts at rest; enabled = true moves it from the AWS
  # owned key to a KMS key in the account (key use shows in CloudTrail):
  # the AWS managed aws/dynamodb key, or table_kms_key_arn when given (its
  # key policy must then let the agent role and the operators use it).
  server_side_encryption {
    enabled     = true
    kms_key_arn = var.table_kms_key_arn
  }

  tags = var.tags
}
