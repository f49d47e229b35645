#!/usr/bin/env bash
# `make demo`: the whole platform on one machine, end to end.
#   1. the local stack (S3 server + Ray head with dashboard)
#   2. sample data (a subset of the Online Boutique experiments shipped in examples/) imported to S3
#   3. the fleet retrained as a Ray Job (one task per service), versions published to S3
#   4. the Ray Serve endpoint deployed, one recommendation asked of it over HTTP and of `mora recommend`
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
DATASET=${MORA_DEMO_DATASET:-online-boutique}
SAMPLE=${MORA_DEMO_DATA:-examples/online-boutique}

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Starting the local stack"
$BIN/mora stack up
$BIN/mora stack status

step "Importing sample data from $SAMPLE as dataset '$DATASET'"
$BIN/mora data import "$SAMPLE" --dataset "$DATASET"
$BIN/mora data list

step "Retraining the fleet as a Ray Job (watch it at the Ray dashboard)"
$BIN/mora retrain --dataset "$DATASET" --services all --epochs "${MORA_DEMO_EPOCHS:-15}" --wait
$BIN/mora models list

step "Deploying the recommendation endpoint on Ray Serve"
$BIN/mora serve up
$BIN/mora serve status

step "Asking the endpoint for one recommendation"
HOME_DIR=$($BIN/python -c 'from mora_platform.settings import default_home; print(default_home())')
set -a; . "$HOME_DIR/stack.env"; [ -f .env ] && . ./.env; set +a
URL="http://${MORA_SERVE_HOST:-127.0.0.1}:${MORA_SERVE_PORT:-8000}/v1/recommendations"
# A plain question: the endpoint reads frontend's newest rows itself and calibrates the head-room on them.
BODY='{"service": "frontend"}'
echo "POST $URL"
echo "$BODY"
AUTH=()
if [ -n "${MORA_SERVE_TOKEN:-}" ]; then AUTH=(-H "Authorization: Bearer ${MORA_SERVE_TOKEN}"); fi
curl -fsS -X POST "$URL" -H 'content-type: application/json' "${AUTH[@]}" -d "$BODY" | $BIN/python -m json.tool

step "The same answer from the command line (no TensorFlow imported to answer)"
$BIN/mora recommend frontend

cat <<MSG

Done. The stack keeps running:
  Ray dashboard   ${MORA_RAY_DASHBOARD_URL:-http://127.0.0.1:8265}
  Endpoint docs   http://${MORA_SERVE_HOST:-127.0.0.1}:${MORA_SERVE_PORT:-8000}/docs
  State and logs  $HOME_DIR (MORA_HOME)
  Use mora        source .venv/bin/activate   (then \`mora --help\`, from any directory)
  Stop it with    make stack-down
MSG
