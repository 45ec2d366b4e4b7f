output "table_name" {
  description = "Pass to taskctl as --table (or TASKFLEET_TABLE)."
  value       = aws_dynamodb_table.tasks.name
}

output "table_arn" {
  description = "ARN of the task table."
  value       = aws_dynamodb_table.tasks.arn
}

output "bucket_name" {
  description = "Pass to `taskctl agent publish --bucket`; the templates' TASKFLEET_AGENT_BUCKET."
  value       = aws_s3_bucket.this.bucket
}

output "bucket_arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.this.arn
}

output "agent_role_arn" {
  description = "ARN of the role the agent runs with on worker instances."
  value       = aws_iam_role.agent.arn
}

output "agent_role_name" {
  description = "Name of the agent role."
  value       = aws_iam_role.agent.name
}

output "agent_instance_profile_name" {
  description = "Instance profile of the workers: the templates' TASKFLEET_INSTANCE_PROFILE."
  value       = aws_iam_instance_profile.agent.name
}

output "operator_policy_arn" {
  description = "Attach to the users, groups or roles that run taskctl."
  value       = aws_iam_policy.operator.arn
}

output "launch_template_names" {
  description = "Step => launch template name."
  value       = { for step, t in aws_launch_template.step : step => t.name }
}

output "launch_template_ids" {
  description = "Step => launch template id."
  value       = { for step, t in aws_launch_template.step : step => t.id }
}

output "taskctl_template_name" {
  description = "The --template-name (TASKFLEET_TEMPLATE_NAME) that makes taskctl find these templates."
  value       = replace(replace(var.template_name_format, "%s", "{step}"), "%%", "%")
}

output "agent_policy_json" {
  description = "The agent role's policy document."
  value       = local.agent_policy
}

output "operator_policy_json" {
  description = "The operator policy document."
  value       = local.operator_policy
}
