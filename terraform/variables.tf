variable "table_name" {
  description = "Name of the task table (taskctl --table / TASKFLEET_TABLE)."
  type        = string
  default     = "taskfleet"
}

variable "point_in_time_recovery" {
  description = "Keep 35 days of continuous backups of the task table."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
