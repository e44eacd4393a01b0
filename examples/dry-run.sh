#!/usr/bin/env bash
# What would a launch of a pasted Binder badge send? Needs no cloud.
vmbinder launch --dry-run --format json \
  '[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/binder-examples/requirements/HEAD?labpath=index.ipynb)' \
  | python3 -c 'import json, sys; d = json.load(sys.stdin); d.pop("user_data"); print(json.dumps(d, indent=2))'
