# One launch template per workflow step, made from the same files that
# `taskctl template apply` reads: launch-templates/STEP.json (EC2's launch
# template data under EC2's own field names, see
# taskfleet/src/fleet/template.rs) and the user-data script it names with
# UserDataFile in userdata/. No template is written a second time in HCL.
#
# Rendering follows taskctl's:
#
# - `${NAME}` and `${NAME:-DEFAULT}` in the file are shell-like variables,
#   not terraform templates, so the file is read with file(). Values come
#   from var.template_variables over what the module knows (instance
#   profile, bucket, table); a variable without a value and without a
#   default stops the plan with an error naming it and the file.
# - A file is refused, naming the field, where taskctl refuses it: unknown
#   fields, and instances that would not require IMDSv2 with hop limit 1,
#   expose their tags in instance metadata and terminate on shutdown.
# - No tag is added: `taskctl launch` adds taskfleet:table, taskfleet:step
#   and the others at launch.

locals {
  # Variable defaults cannot use path.module; null means the repository's
  # directories beside this module.
  launch_templates_dir = coalesce(var.launch_templates_dir, "${path.module}/../launch-templates")
  userdata_dir         = coalesce(var.userdata_dir, "${path.module}/../userdata")

  template_files = var.create_launch_templates ? fileset(local.launch_templates_dir, "*.json") : toset([])

  template_paths = {
    for f in local.template_files : trimsuffix(f, ".json") => "${local.launch_templates_dir}/${f}"
  }

  # How error messages name a file: absolute, without the "../".
  template_shown = { for step, path in local.template_paths : step => abspath(path) }

  # What the module knows, under the names the example files use; the
  # user's values win.
  template_values = tomap(merge(
    {
      TASKFLEET_INSTANCE_PROFILE = aws_iam_instance_profile.agent.name
      TASKFLEET_AGENT_BUCKET     = aws_s3_bucket.this.bucket
      TASKFLEET_TABLE            = aws_dynamodb_table.tasks.name
    },
    var.template_variables,
  ))

  # Terraform cannot fold a chain of replace() over a list of names, so a
  # file is cut into tokens instead: `${...}` (groups 1-4: whole, name,
  # ":-DEFAULT", DEFAULT), a lone "$", or a run of text without "$"
  # (group 5). Every character belongs to exactly one token, so joining
  # the tokens back, each variable replaced, renders the file. As in
  # taskctl, the name is everything up to the first ":-" and a "${" with
  # no "}" stays as written. Inside the braces a character is anything
  # but '"', '\' and '}', or a JSON escape such as \": a variable never
  # spans two JSON strings, as taskctl fills each string on its own.
  template_token_pattern = join("", [
    "(\\$\\{",                      # "${"
    "((?:[^}\"\\\\]|\\\\.)*?)",     # NAME: up to the first ":-" or "}"
    "(:-((?:[^}\"\\\\]|\\\\.)*))?", # ":-DEFAULT", optional
    "\\})",                         # "}"
    "|(\\$|[^$]+)",                 # or plain text
  ])

  template_tokens = {
    for step, path in local.template_paths : step => [
      for m in regexall(local.template_token_pattern, file(path)) : {
        literal = m[4]
        name    = m[1]
        default = m[3]
        value   = m[1] == null ? null : lookup(local.template_values, m[1], null)
      }
    ]
  }

  template_rendered = {
    for step, tokens in local.template_tokens : step => join("", [
      for t in tokens : (
        t.name == null ? t.literal :
        # A value is inserted into JSON text: escape it as a JSON string
        # body. A default is already JSON text, as written in the file.
        t.value != null ? trimsuffix(trimprefix(jsonencode(t.value), "\""), "\"") :
        t.default != null ? t.default :
        "" # unset: reported by the precondition below
      )
    ])
  }

  template_unset = {
    for step, tokens in local.template_tokens : step => distinct([
      for t in tokens : t.name if t.name != null && t.value == null && t.default == null
    ])
  }

  # null where the rendered file is not JSON (reported by a precondition).
  template_data = {
    for step, text in local.template_rendered : step => try(jsondecode(text), null)
  }

  # The fields taskctl's TemplateFile accepts, level by level.
  template_fields = {
    top      = ["UserDataFile", "ImageId", "InstanceType", "KeyName", "IamInstanceProfile", "SecurityGroupIds", "BlockDeviceMappings", "MetadataOptions", "InstanceInitiatedShutdownBehavior", "TagSpecifications"]
    profile  = ["Name", "Arn"]
    device   = ["DeviceName", "Ebs"]
    ebs      = ["VolumeSize", "VolumeType", "DeleteOnTermination", "Encrypted", "Iops", "Throughput"]
    metadata = ["HttpEndpoint", "HttpTokens", "HttpPutResponseHopLimit", "InstanceMetadataTags"]
    tagspec  = ["ResourceType", "Tags"]
    tag      = ["Key", "Value"]
  }

  # Every field of a file that taskctl would refuse as unknown, as a path.
  # try([for x in X : x], []) stands for "X, or none when absent or null".
  template_unknown_fields = {
    for step, d in local.template_data : step => d == null ? [] : concat(
      [for k in try(keys(d), []) : k if !contains(local.template_fields.top, k)],
      [for k in try(keys(d.IamInstanceProfile), []) : "IamInstanceProfile.${k}" if !contains(local.template_fields.profile, k)],
      [for k in try(keys(d.MetadataOptions), []) : "MetadataOptions.${k}" if !contains(local.template_fields.metadata, k)],
      flatten([
        for i, b in try([for x in d.BlockDeviceMappings : x], []) : concat(
          [for k in try(keys(b), []) : "BlockDeviceMappings[${i}].${k}" if !contains(local.template_fields.device, k)],
          [for k in try(keys(b.Ebs), []) : "BlockDeviceMappings[${i}].Ebs.${k}" if !contains(local.template_fields.ebs, k)],
        )
      ]),
      flatten([
        for i, s in try([for x in d.TagSpecifications : x], []) : concat(
          [for k in try(keys(s), []) : "TagSpecifications[${i}].${k}" if !contains(local.template_fields.tagspec, k)],
          flatten([
            for j, t in try([for x in s.Tags : x], []) : [
              for k in try(keys(t), []) : "TagSpecifications[${i}].Tags[${j}].${k}" if !contains(local.template_fields.tag, k)
            ]
          ]),
        )
      ]),
    )
  }

  # The settings every worker relies on (the rules of template.rs's
  # check()): field => [value found, value required]. coalesce() turns an
  # absent, null or empty field into "missing".
  template_worker_rules = {
    for step, d in local.template_data : step => d == null ? {} : {
      "MetadataOptions.HttpTokens"              = [coalesce(try(tostring(d.MetadataOptions.HttpTokens), null), "missing"), "required"]
      "MetadataOptions.HttpPutResponseHopLimit" = [coalesce(try(tostring(d.MetadataOptions.HttpPutResponseHopLimit), null), "missing"), "1"]
      "MetadataOptions.InstanceMetadataTags"    = [coalesce(try(tostring(d.MetadataOptions.InstanceMetadataTags), null), "missing"), "enabled"]
      "InstanceInitiatedShutdownBehavior"       = [coalesce(try(tostring(d.InstanceInitiatedShutdownBehavior), null), "missing"), "terminate"]
      # Optional (EC2's default is enabled), but never disabled.
      "MetadataOptions.HttpEndpoint" = [coalesce(try(tostring(d.MetadataOptions.HttpEndpoint), null), "enabled"), "enabled"]
    }
  }

  template_rule_violations = {
    for step, rules in local.template_worker_rules : step => [
      for field, v in rules : "${field} must be \"${v[1]}\" (it is ${v[0] == "missing" ? "missing" : "\"${v[0]}\""})" if v[0] != v[1]
    ]
  }

  template_user_data_files = {
    # "" when absent or null (reported by a precondition).
    for step, d in local.template_data : step => try(coalesce(tostring(d.UserDataFile)), "")
  }
}

resource "aws_launch_template" "step" {
  for_each = local.template_paths

  name                   = format(var.template_name_format, each.key)
  description            = "Made by terraform from ${basename(each.value)} and ${local.template_user_data_files[each.key]}"
  update_default_version = true

  # Read only after the preconditions pass (they are checked first), so a
  # bad UserDataFile is reported as such.
  user_data = base64encode(file("${local.userdata_dir}/${local.template_user_data_files[each.key]}"))

  image_id                             = try(local.template_data[each.key].ImageId, null)
  instance_type                        = try(local.template_data[each.key].InstanceType, null)
  key_name                             = try(local.template_data[each.key].KeyName, null)
  vpc_security_group_ids               = try(local.template_data[each.key].SecurityGroupIds, null)
  instance_initiated_shutdown_behavior = try(local.template_data[each.key].InstanceInitiatedShutdownBehavior, null)

  dynamic "iam_instance_profile" {
    for_each = [for p in [try(local.template_data[each.key].IamInstanceProfile, null)] : p if p != null]
    content {
      name = try(iam_instance_profile.value.Name, null)
      arn  = try(iam_instance_profile.value.Arn, null)
    }
  }

  dynamic "block_device_mappings" {
    # try(): the field may be absent or null.
    for_each = try([for b in local.template_data[each.key].BlockDeviceMappings : b], [])
    content {
      device_name = block_device_mappings.value.DeviceName
      ebs {
        volume_size           = try(block_device_mappings.value.Ebs.VolumeSize, null)
        volume_type           = try(block_device_mappings.value.Ebs.VolumeType, null)
        delete_on_termination = try(block_device_mappings.value.Ebs.DeleteOnTermination, null)
        encrypted             = try(block_device_mappings.value.Ebs.Encrypted, null)
        iops                  = try(block_device_mappings.value.Ebs.Iops, null)
        throughput            = try(block_device_mappings.value.Ebs.Throughput, null)
      }
    }
  }

  dynamic "metadata_options" {
    for_each = [for m in [try(local.template_data[each.key].MetadataOptions, null)] : m if m != null]
    content {
      http_endpoint               = try(metadata_options.value.HttpEndpoint, null)
      http_tokens                 = try(metadata_options.value.HttpTokens, null)
      http_put_response_hop_limit = try(metadata_options.value.HttpPutResponseHopLimit, null)
      instance_metadata_tags      = try(metadata_options.value.InstanceMetadataTags, null)
    }
  }

  dynamic "tag_specifications" {
    for_each = try([for t in local.template_data[each.key].TagSpecifications : t], [])
    content {
      resource_type = tag_specifications.value.ResourceType
      tags          = try({ for t in tag_specifications.value.Tags : t.Key => t.Value }, {})
    }
  }

  # Tags of the template itself; instances get only the file's tags and
  # those `taskctl launch` adds.
  tags = var.tags

  lifecycle {
    precondition {
      condition     = can(regex("^[A-Za-z][A-Za-z0-9_-]*$", each.key))
      error_message = "${local.template_shown[each.key]}: '${each.key}' is not a step name (a letter, then letters, digits, '-', '_'); name the file STEP.json."
    }
    precondition {
      condition     = can(regex("^[A-Za-z0-9().\\-/_]{3,128}$", format(var.template_name_format, each.key)))
      error_message = "${local.template_shown[each.key]}: the launch template name \"${format(var.template_name_format, each.key)}\" (from template_name_format) is not 3 to 128 letters, digits and ( ) . - / _ as EC2 requires."
    }
    precondition {
      condition     = length(local.template_unset[each.key]) == 0
      error_message = "${local.template_shown[each.key]}: no value for ${join(", ", formatlist("$${%s}", local.template_unset[each.key]))}; set it in the module's template_variables (or give a default in the file: $${NAME:-DEFAULT})."
    }
    precondition {
      condition     = local.template_data[each.key] != null
      error_message = "${local.template_shown[each.key]}: not valid JSON once its variables are filled in."
    }
    precondition {
      condition     = length(local.template_unknown_fields[each.key]) == 0
      error_message = "${local.template_shown[each.key]}: unknown field(s) ${join(", ", local.template_unknown_fields[each.key])}; the fields are those of EC2's launch template data that taskctl reads (taskfleet/src/fleet/template.rs)."
    }
    precondition {
      # Only once every variable has a value and the file is JSON: an
      # unset ${TASKFLEET_AMI} is reported as such above, not as an empty
      # ImageId.
      condition     = length(local.template_unset[each.key]) > 0 || local.template_data[each.key] == null || try(length(local.template_data[each.key].ImageId) > 0, false)
      error_message = "${local.template_shown[each.key]}: ImageId is missing or empty."
    }
    precondition {
      condition     = length(local.template_rule_violations[each.key]) == 0
      error_message = "${local.template_shown[each.key]}: ${join("; ", local.template_rule_violations[each.key])}. Workers require IMDSv2, read their tags from instance metadata and end their bill by shutting down."
    }
    precondition {
      condition = local.template_data[each.key] == null || (
        local.template_user_data_files[each.key] != "" &&
        !startswith(local.template_user_data_files[each.key], "/") &&
        !contains(split("/", local.template_user_data_files[each.key]), "..") &&
        try(fileexists("${local.userdata_dir}/${local.template_user_data_files[each.key]}"), false)
      )
      error_message = "${local.template_shown[each.key]}: UserDataFile \"${local.template_user_data_files[each.key]}\" must name a file inside ${abspath(local.userdata_dir)} (variable userdata_dir), e.g. \"bootstrap.sh\"."
    }
  }
}
