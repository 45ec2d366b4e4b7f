# The bucket for agent binaries and attempt logs. Its key layout is fixed
# by the code (`taskctl agent publish`, userdata/bootstrap.sh, the agent),
# so the prefixes are locals here, not variables: changing them would only
# break the tools that read and write them.
#
#   s3://BUCKET/taskfleet/agent/VERSION/agent         the agent binary
#   s3://BUCKET/taskfleet/agent/VERSION/agent.sha256  its checksum
#   s3://BUCKET/taskfleet/logs/STEP/TASK/ATTEMPT.log  one attempt's output

locals {
  agent_prefix = "taskfleet/agent/"
  log_prefix   = "taskfleet/logs/"
}

resource "aws_s3_bucket" "this" {
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
  tags          = var.tags
}

# AES256 (SSE-S3) unless a KMS key is given. With a customer managed key
# the bucket key cuts the KMS requests (and their cost) of many small log
# writes; the key policy must let the agent role and the operators use it.
resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.bucket_kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.bucket_kms_key_arn
    }
    bucket_key_enabled = var.bucket_kms_key_arn != null
  }
}

# Nothing in this bucket is ever public: instances and operators read it
# with their IAM credentials.
resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# ACLs off: every object belongs to the bucket owner, whoever wrote it, so
# access is decided by IAM and the bucket policy alone.
resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

# Refuses every request not made over TLS. This is a deny in a bucket
# policy, not an IAM grant: the IAM policies in iam.tf only allow.
data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  count  = var.deny_insecure_transport ? 1 : 0
  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.bucket.json

  # S3 refuses a policy change while the public access block is being
  # written; ordering them avoids a spurious conflict on first apply.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  # Attempt logs are for debugging and audit; they expire. Agent binaries
  # are not expired: an instance booting with an old version needs it.
  rule {
    id     = "expire-logs"
    status = "Enabled"

    filter {
      prefix = local.log_prefix
    }

    expiration {
      days = var.log_retention_days
    }
  }

  # An upload cut off (a terminated instance, an interrupted publish)
  # leaves parts that are billed but never listed; drop them after a week.
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}
