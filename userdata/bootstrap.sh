#!/bin/bash
# First-boot user-data of a taskfleet worker instance: the minimal
# bootstrap. It records that the instance came up and which launch
# template started it, then shuts the instance down; the launch templates
# set the shutdown behaviour to `terminate`, so shutting down ends the
# instance and its bill.
#
# Not here yet (see README.md beside this file): installing the `agent`
# binary, reading the step and table from the instance's tags through
# instance metadata, and running `agent --step STEP` until it exits.
set -euo pipefail

log() { printf 'taskfleet-bootstrap: %s\n' "$*" | tee -a /var/log/taskfleet-bootstrap.log >&2; }

log "instance up at $(date -u +%Y-%m-%dT%H:%M:%SZ); no agent is installed by this bootstrap yet"
log "shutting down: this instance has nothing to run"
shutdown -h now
