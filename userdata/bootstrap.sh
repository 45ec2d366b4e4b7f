#!/bin/bash
# First-boot user-data of a taskfleet worker instance.
#
# 1. Reads the instance's region, id and tags through instance metadata
#    (IMDSv2: a session token first, then every read with it). The tags say
#    what to run: taskfleet:step, taskfleet:table and taskfleet:slots (set
#    by `taskctl launch`), taskfleet:agent-bucket and
#    taskfleet:agent-version (set by the launch template), and optionally
#    taskfleet:idle-timeout, taskfleet:grace and taskfleet:kill-grace.
# 2. Downloads that agent version from
#    s3://BUCKET/taskfleet/agent/VERSION/agent (published by
#    `taskctl agent publish`) and checks it against the SHA-256 published
#    beside it; a binary that does not match is never run.
# 3. Installs and starts the systemd unit taskfleet-agent.service, which
#    runs the agent for the step until the step has nothing left. The agent
#    then terminates its own instance; however the unit ends (idle, fatal
#    error, crash, stop), systemd powers the host off as well
#    (SuccessAction/FailureAction), and the launch templates make a
#    shutdown terminate the instance. Stopping the unit sends SIGTERM to
#    the agent first and waits longer than the agent's grace period. The
#    agent uploads every attempt's log to the same bucket
#    (s3://BUCKET/taskfleet/logs/STEP/TASK/ATTEMPT.log).
#
# Every failure writes why to the console log (this script's output) and
# shuts the instance down: an instance that cannot work never waits to be
# billed.
#
# Off EC2, for testing the bootstrap itself: AWS_EC2_METADATA_SERVICE_ENDPOINT
# points it at another metadata service (and is passed on to the agent), and
# TASKFLEET_ROOT prefixes every path it installs to.
set -euo pipefail

readonly ROOT="${TASKFLEET_ROOT:-}"
readonly IMDS="${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}"
readonly UNIT=taskfleet-agent.service
readonly KEY_PREFIX=taskfleet/agent

log() {
  local line
  line="taskfleet-bootstrap: $*"
  printf '%s\n' "$line" >&2
  if mkdir -p "$ROOT/var/log" 2>/dev/null; then
    printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$line" >>"$ROOT/var/log/taskfleet-bootstrap.log" || true
  fi
}

# Says why, then ends the instance (shutdown behaviour `terminate`).
fail() {
  trap - ERR
  log "FAILED: $*; shutting down"
  shutdown -h now || poweroff || true
  exit 1
}
trap 'fail "command failed at line $LINENO: $BASH_COMMAND"' ERR

for tool in curl aws sha256sum systemctl install; do
  command -v "$tool" >/dev/null || fail "'$tool' is not installed on this image; use an AMI that has it (Amazon Linux 2023 has all of curl, aws, sha256sum, systemctl)"
done

token=$(curl -fsS --retry 5 --retry-connrefused --max-time 10 -X PUT "$IMDS/latest/api/token" \
  -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600') ||
  fail "cannot get an instance metadata (IMDSv2) token from $IMDS"

# A metadata path's value; fails when it is missing.
metadata() {
  curl -fsS --retry 3 --max-time 10 -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/meta-data/$1"
}
# read_tag TAG VAR [DEFAULT]: sets VAR to the instance's tag TAG, or to
# DEFAULT when the instance does not have it. Values must be plain words:
# they go on the agent's command line.
read_tag() {
  local value
  if ! value=$(metadata "tags/instance/$1" 2>/dev/null); then
    [[ $# -ge 3 ]] || fail "the instance has no tag $1 (or its tags are not in its metadata: the launch template must set InstanceMetadataTags to enabled); launch it with taskctl launch, from a template made by taskctl template apply"
    value=$3
  fi
  [[ $value =~ ^[A-Za-z0-9._:+@/-]+$ ]] || fail "tag $1 has the value '$value', which is not a plain word"
  printf -v "$2" '%s' "$value"
}
# read_duration TAG VAR DEFAULT: like read_tag, for a duration such as 90s,
# 5m or 1h; also sets VAR_seconds.
read_duration() {
  read_tag "$1" "$2" "$3"
  local value=${!2} n
  [[ $value =~ ^([0-9]+)([smh]?)$ ]] || fail "tag $1 has the value '$value', which is not a duration like 90s, 5m or 1h"
  n=${BASH_REMATCH[1]}
  case ${BASH_REMATCH[2]} in
    m) n=$((n * 60)) ;;
    h) n=$((n * 3600)) ;;
  esac
  printf -v "$2_seconds" '%s' "$n"
}

region=$(metadata placement/region) || fail "cannot read the region from instance metadata"
instance=$(metadata instance-id) || fail "cannot read the instance id from instance metadata"
step="" table="" slots="" bucket="" version=""
idle_timeout="" grace="" kill_grace="" grace_seconds=0 kill_grace_seconds=0
read_tag taskfleet:step step
read_tag taskfleet:table table
read_tag taskfleet:slots slots 1
read_tag taskfleet:agent-bucket bucket
read_tag taskfleet:agent-version version
read_duration taskfleet:idle-timeout idle_timeout 5m
read_duration taskfleet:grace grace 60s
read_duration taskfleet:kill-grace kill_grace 10s
[[ $slots =~ ^[1-9][0-9]*$ ]] || fail "tag taskfleet:slots has the value '$slots', which is not a positive number"
log "instance $instance in $region: step $step of table $table, $slots slot(s), agent $version"

download=$(mktemp -d)
url="s3://$bucket/$KEY_PREFIX/$version"
aws s3 cp --only-show-errors --region "$region" "$url/agent" "$download/agent" ||
  fail "cannot download the agent from $url/agent; publish it with taskctl agent publish, and let the instance profile read it (s3:GetObject)"
aws s3 cp --only-show-errors --region "$region" "$url/agent.sha256" "$download/agent.sha256" ||
  fail "cannot download the agent's checksum from $url/agent.sha256; publish the agent with taskctl agent publish"
expected=$(awk 'NR == 1 { print $1 }' "$download/agent.sha256")
[[ $expected =~ ^[0-9a-f]{64}$ ]] || fail "$url/agent.sha256 holds no SHA-256 digest"
actual=$(sha256sum "$download/agent" | awk '{ print $1 }')
if [[ $actual != "$expected" ]]; then
  rm -f "$download/agent"
  fail "the agent downloaded from $url/agent has SHA-256 $actual, not the published $expected; it was not run (publish it again)"
fi

install -D -m 0755 "$download/agent" "$ROOT/usr/local/bin/taskfleet-agent"
rm -rf "$download"
mkdir -p "$ROOT/var/lib/taskfleet/work" "$ROOT/var/log/taskfleet" "$ROOT/etc/systemd/system"

# Longer than the agent's grace and its scripts' kill grace together.
stop_timeout=$((grace_seconds + kill_grace_seconds + 30))

metadata_env=""
if [[ -n ${AWS_EC2_METADATA_SERVICE_ENDPOINT:-} ]]; then
  metadata_env="Environment=AWS_EC2_METADATA_SERVICE_ENDPOINT=$AWS_EC2_METADATA_SERVICE_ENDPOINT"
fi

cat >"$ROOT/etc/systemd/system/$UNIT" <<UNIT
[Unit]
Description=taskfleet agent for step $step of table $table
Wants=network-online.target
After=network-online.target
# However the agent ends, the host powers off; the launch template makes
# that terminate the instance.
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=exec
Environment=HOME=/root
Environment=AWS_REGION=$region
$metadata_env
WorkingDirectory=$ROOT/var/lib/taskfleet
ExecStart=$ROOT/usr/local/bin/taskfleet-agent --on-ec2 --terminate-on-exit --table $table --region $region --step $step --slots $slots --idle-timeout $idle_timeout --grace $grace --kill-grace $kill_grace --work-dir $ROOT/var/lib/taskfleet/work --log-dir $ROOT/var/log/taskfleet --log-bucket $bucket --log-format json
# SIGTERM to the agent only: it stops claiming, lets its scripts finish
# within its grace period, and releases the rest; then everything left is
# killed.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=$stop_timeout
Restart=no

[Install]
WantedBy=multi-user.target
UNIT

systemctl daemon-reload
systemctl start "$UNIT" || fail "systemd could not start $UNIT"
log "started $UNIT: agent $version ($actual) for step $step"
