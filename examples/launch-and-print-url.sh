#!/usr/bin/env bash
# Launch a repository, wait until it answers, and print only its URL: the
# shape of a script that hands the URL to something else.
#   OS_CLOUD=mycloud examples/launch-and-print-url.sh https://github.com/org/repo
set -euo pipefail
source="${1:?usage: $0 SOURCE [NAME]}"
name="${2:-}"
args=(--quiet launch --format json "$source")
[[ -n "$name" ]] && args+=(--name "$name")
vmbinder "${args[@]}" | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["open_url"] or d["urls"]["lab"])'
