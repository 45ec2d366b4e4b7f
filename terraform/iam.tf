# Least-privilege IAM for the two kinds of caller:
#
# - the agent, on each worker instance (role + instance profile, named by
#   the launch templates' IamInstanceProfile);
# - the operators who run taskctl (a managed policy to attach to their
#   users, groups or SSO permission sets).
#
# Every statement is Allow, lists its actions literally (no wildcards, no
# NotAction) and names its resources; a Rust test reads these policies back
# from `terraform show -json` and compares the actions with the calls the
# code makes. The policies are written with jsonencode so that each
# statement's Action stays a list, even with one action.

data "aws_partition" "current" {}

locals {
  partition = data.aws_partition.current.partition

  table_resources = [
    aws_dynamodb_table.tasks.arn,
    "${aws_dynamodb_table.tasks.arn}/index/*",
  ]
  agent_objects = "${aws_s3_bucket.this.arn}/${local.agent_prefix}*"
  log_objects   = "${aws_s3_bucket.this.arn}/${local.log_prefix}*"
  instances     = "arn:${local.partition}:ec2:*:*:instance/*"

  # "This fleet" is the instances `taskctl launch` tagged with this table.
  # Terminating is allowed on those only, for agents and operators alike.
  this_fleet = {
    StringEquals = { "aws:ResourceTag/taskfleet:table" = aws_dynamodb_table.tasks.name }
  }

  # With a customer KMS key on the bucket, reading and writing its objects
  # needs the key too (not a call of the code: implied by the setting).
  bucket_key_statements = var.bucket_kms_key_arn == null ? [] : [
    {
      Sid      = "UseTheBucketKey"
      Effect   = "Allow"
      Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
      Resource = [var.bucket_kms_key_arn]
    },
  ]

  agent_policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat([
      {
        # Claim, renew, finish and release tasks; read counters and steps.
        # Exactly the agent's list in taskfleet/src/iam.rs (a test checks).
        Sid    = "TaskTable"
        Effect = "Allow"
        Action = [
          "dynamodb:GetItem",
          "dynamodb:Query",
          "dynamodb:UpdateItem",
          "dynamodb:PutItem",
          "dynamodb:TransactWriteItems",
        ]
        Resource = local.table_resources
      },
      {
        # userdata/bootstrap.sh downloads the agent and its checksum.
        Sid      = "ReadAgentBinaries"
        Effect   = "Allow"
        Action   = ["s3:GetObject"]
        Resource = [local.agent_objects]
      },
      {
        # Attempt logs; AbortMultipartUpload cleans up a cut-off upload.
        Sid      = "WriteAttemptLogs"
        Effect   = "Allow"
        Action   = ["s3:PutObject", "s3:AbortMultipartUpload"]
        Resource = [local.log_objects]
      },
      {
        # An idle or finished agent ends its own instance. The tag
        # condition keeps it from ending any other fleet's instances.
        Sid       = "TerminateThisFleet"
        Effect    = "Allow"
        Action    = ["ec2:TerminateInstances"]
        Resource  = [local.instances]
        Condition = local.this_fleet
      },
    ], local.bucket_key_statements)
  })

  operator_policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [
        {
          # init (CreateTable, *TimeToLive, DescribeTable), load
          # (BatchWriteItem, TransactWriteItems, PutItem, UpdateItem),
          # status/show/fleet/launch (Query, GetItem, BatchGetItem),
          # recount (UpdateItem).
          Sid    = "TaskTable"
          Effect = "Allow"
          Action = [
            "dynamodb:CreateTable",
            "dynamodb:DescribeTable",
            "dynamodb:DescribeTimeToLive",
            "dynamodb:UpdateTimeToLive",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
            "dynamodb:BatchGetItem",
            "dynamodb:BatchWriteItem",
            "dynamodb:TransactWriteItems",
            "dynamodb:DeleteItem",
          ]
          Resource = local.table_resources
        },
        {
          # taskctl agent publish: reads first (a version is written once),
          # then uploads the binary and its checksum.
          Sid      = "PublishAgentBinaries"
          Effect   = "Allow"
          Action   = ["s3:GetObject", "s3:PutObject"]
          Resource = [local.agent_objects]
        },
        {
          Sid      = "ReadAttemptLogs"
          Effect   = "Allow"
          Action   = ["s3:GetObject"]
          Resource = [local.log_objects]
        },
        {
          # Without it S3 answers a missing key with 403, not NoSuchKey:
          # agent publish looks for an existing version that way.
          Sid       = "ListTaskfleetKeys"
          Effect    = "Allow"
          Action    = ["s3:ListBucket"]
          Resource  = [aws_s3_bucket.this.arn]
          Condition = { StringLike = { "s3:prefix" = ["taskfleet/*"] } }
        },
        {
          # Describe* calls have no resource-level permissions in EC2.
          Sid    = "DescribeFleet"
          Effect = "Allow"
          Action = [
            "ec2:DescribeInstances",
            "ec2:DescribeLaunchTemplates",
            "ec2:DescribeLaunchTemplateVersions",
          ]
          Resource = ["*"]
        },
        {
          # taskctl template apply. A launch template's ARN holds its id,
          # not its name, and these calls offer no condition key on the
          # name, so this cannot be narrowed to taskfleet's templates.
          Sid    = "ManageLaunchTemplates"
          Effect = "Allow"
          Action = [
            "ec2:CreateLaunchTemplate",
            "ec2:CreateLaunchTemplateVersion",
            "ec2:ModifyLaunchTemplate",
          ]
          Resource = ["arn:${local.partition}:ec2:*:*:launch-template/*"]
        },
        {
          # taskctl launch. RunInstances authorizes against the instance,
          # volumes, network interface, subnet, security groups, image and
          # launch template at once; scoping it resource by resource would
          # tie this policy to one VPC and AMI.
          Sid      = "LaunchInstances"
          Effect   = "Allow"
          Action   = ["ec2:RunInstances"]
          Resource = ["*"]
        },
        {
          # Tags at launch (RunInstances' tag specifications need
          # CreateTags) and `taskctl stop` tagging instances taskfleet:drain.
          Sid    = "TagInstances"
          Effect = "Allow"
          Action = ["ec2:CreateTags"]
          Resource = [
            local.instances,
            "arn:${local.partition}:ec2:*:*:volume/*",
          ]
        },
        {
          # taskctl stop --now: this table's instances only.
          Sid       = "TerminateThisFleet"
          Effect    = "Allow"
          Action    = ["ec2:TerminateInstances"]
          Resource  = [local.instances]
          Condition = local.this_fleet
        },
        {
          # Launching with the templates' instance profile passes the agent
          # role to EC2, and to nothing else.
          Sid       = "PassAgentRole"
          Effect    = "Allow"
          Action    = ["iam:PassRole"]
          Resource  = [aws_iam_role.agent.arn]
          Condition = { StringEquals = { "iam:PassedToService" = "ec2.amazonaws.com" } }
        },
      ],
      local.bucket_key_statements,
      # taskctl load reads sample sheets given as s3:// URLs.
      length(var.sheet_object_arns) == 0 ? [] : [
        {
          Sid      = "ReadSampleSheets"
          Effect   = "Allow"
          Action   = ["s3:GetObject"]
          Resource = var.sheet_object_arns
        },
      ],
    )
  })
}

resource "aws_iam_role" "agent" {
  name        = "${var.name_prefix}-agent"
  description = "taskfleet agent on worker instances of table ${var.table_name}"

  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect    = "Allow"
        Principal = { Service = "ec2.amazonaws.com" }
        Action    = "sts:AssumeRole"
      },
    ]
  })

  tags = var.tags
}

# The agent's one policy, inline so it lives and dies with the role.
resource "aws_iam_role_policy" "agent" {
  name   = "${var.name_prefix}-agent"
  role   = aws_iam_role.agent.id
  policy = local.agent_policy
}

resource "aws_iam_instance_profile" "agent" {
  name = "${var.name_prefix}-agent"
  role = aws_iam_role.agent.name
  tags = var.tags
}

resource "aws_iam_policy" "operator" {
  name        = coalesce(var.operator_policy_name, "${var.name_prefix}-operator")
  description = "Running taskctl against table ${var.table_name} and its fleet"
  policy      = local.operator_policy
  tags        = var.tags
}
