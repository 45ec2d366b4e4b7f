output "table_name" {
  description = "Pass to taskctl as --table (or TASKFLEET_TABLE)."
  value       = aws_dynamodb_table.tasks.name
}

output "table_arn" {
  description = "For IAM policies of taskctl users and agents."
  value       = aws_dynamodb_table.tasks.arn
}
