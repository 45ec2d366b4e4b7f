# --- Naming -----------------------------------------------------------------

variable "name_prefix" {
  description = "Prefix of the IAM names: role and instance profile \"PREFIX-agent\", operator policy \"PREFIX-operator\". Use one prefix per fleet (table) in an account."
  type        = string
  default     = "taskfleet"

  validation {
    # IAM role names are at most 64 characters; "-operator" is the longest suffix.
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,55}$", var.name_prefix))
    error_message = "name_prefix must be 1 to 55 of A-Z a-z 0-9 + = , . @ _ - (IAM name characters)."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes tags (table, bucket, role, instance profile, operator policy, launch templates). Not added to instances: they carry the launch templates' tags and those of `taskctl launch`."
  type        = map(string)
  default     = {}
}

# --- Task table ---------------------------------------------------------------

variable "table_name" {
  description = "Name of the task table (taskctl --table / TASKFLEET_TABLE). Instances of this fleet are those tagged taskfleet:table with this name."
  type        = string
  default     = "taskfleet"
}

variable "point_in_time_recovery" {
  description = "Keep 35 days of continuous backups of the task table."
  type        = bool
  default     = true
}

variable "table_kms_key_arn" {
  description = "ARN of a customer managed KMS key for the task table; null uses the AWS managed key aws/dynamodb."
  type        = string
  default     = null
}

# --- Bucket -------------------------------------------------------------------

variable "bucket_name" {
  description = "Name of the S3 bucket for agent binaries (taskfleet/agent/) and attempt logs (taskfleet/logs/); `taskctl agent publish --bucket` and the templates' TASKFLEET_AGENT_BUCKET."
  type        = string
}

variable "bucket_kms_key_arn" {
  description = "ARN of a KMS key for the bucket's default encryption (aws:kms); null uses SSE-S3 (AES256)."
  type        = string
  default     = null
}

variable "log_retention_days" {
  description = "Days after which attempt logs (objects under taskfleet/logs/) expire."
  type        = number
  default     = 365

  validation {
    condition     = var.log_retention_days >= 1 && floor(var.log_retention_days) == var.log_retention_days
    error_message = "log_retention_days must be a whole number of days, at least 1."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket with its objects (agent binaries and logs). Keep false outside tests."
  type        = bool
  default     = false
}

# --- IAM ----------------------------------------------------------------------

variable "operator_policy_name" {
  description = "Name of the operator managed policy; null means \"<name_prefix>-operator\"."
  type        = string
  default     = null
}

variable "sheet_object_arns" {
  description = "S3 object ARNs (prefixes with *) of sample sheets that operators load with taskctl load s3://..., e.g. [\"arn:aws:s3:::my-lab-sheets/cohort/*\"]. Empty: no sheet access is granted."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.sheet_object_arns : can(regex("^arn:[a-z-]+:s3:::[^/]+/.+$", a))])
    error_message = "Each sheet_object_arns entry must be an S3 object ARN such as arn:aws:s3:::BUCKET/PREFIX/*."
  }
}

# --- Launch templates -----------------------------------------------------------

variable "create_launch_templates" {
  description = "Create one launch template per launch_templates_dir/*.json. Set false where `taskctl template apply` manages the templates instead."
  type        = bool
  default     = true
}

variable "launch_templates_dir" {
  description = "Directory of the STEP.json launch template files (the same files `taskctl template apply` reads). null means the repository's launch-templates/ beside this module."
  type        = string
  default     = null
}

variable "userdata_dir" {
  description = "Directory of the user-data scripts named by the files' UserDataFile. null means the repository's userdata/ beside this module."
  type        = string
  default     = null
}

variable "template_name_format" {
  description = "format() pattern of a step's launch template name, with one %s for the step. taskctl must use the same rule: the default \"%s\" is taskctl's default (the step's name); \"taskfleet-%s\" is `--template-name 'taskfleet-{step}'` (TASKFLEET_TEMPLATE_NAME)."
  type        = string
  default     = "%s"

  validation {
    condition     = length(regexall("%", replace(var.template_name_format, "%%", ""))) == 1 && strcontains(replace(var.template_name_format, "%%", ""), "%s")
    error_message = "template_name_format must hold exactly one %s (for the step) and no other format verb."
  }
}

variable "template_variables" {
  description = "Values of the files' $${NAME} variables, e.g. TASKFLEET_AMI, TASKFLEET_SECURITY_GROUP, TASKFLEET_AGENT_VERSION. They override what the module fills in itself: TASKFLEET_INSTANCE_PROFILE (the agent instance profile), TASKFLEET_AGENT_BUCKET (the bucket), TASKFLEET_TABLE (the table)."
  type        = map(string)
  default     = {}
}

variable "deny_insecure_transport" {
  description = "Refuse every request to the bucket that is not made over TLS (its bucket policy). Turn off only for an endpoint without TLS, such as a local emulator."
  type        = bool
  default     = true
}
