#!/usr/bin/env bash
# Installs the Kubernetes schema validator the manifest tests use
# (kubernetes-models and yaml, from npm, into scripts/k8s-validate/node_modules).
# Idempotent: does nothing when the pinned versions are already installed.
set -euo pipefail
cd "$(dirname "$0")"
installed() {
  node -e 'const p=require("./package.json").dependencies;
    for (const [n,v] of Object.entries(p)) {
      if (require("./node_modules/"+n+"/package.json").version !== v) process.exit(1);
    }' 2>/dev/null
}
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing nodejs and npm (Debian packages) for the Kubernetes manifest checks"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "node and npm are missing and cannot be installed here (needs root and apt-get)" >&2
    exit 1
  fi
fi
if installed; then
  exit 0
fi
echo "installing the Kubernetes schema validator (npm: kubernetes-models, yaml)"
npm install --no-audit --no-fund --loglevel=error --no-package-lock >/dev/null
installed
