#!/usr/bin/env bash
# Starts the Docker engine and builds the sandbox image (filled in by the sandbox work).
set -euo pipefail
