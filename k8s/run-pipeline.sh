#!/usr/bin/env bash
# Run the recsys pipeline on a Kubernetes cluster, stage by stage, waiting on each and stopping
# at the first failure with the stage's last log lines.
#
#   k8s/run-pipeline.sh [--overlay cpu-small|gpu|spark-submit] [--from STAGE] [--skip-fetch]
#                       [--timeout-scale X] [--dry-run]
#
# Stages, in order: fetch (Job), prepare (SparkApplication, or a Job in the spark-submit
# overlay), train (MPIJob), export, index, evaluate (Jobs). A stage's previous object is deleted
# before it is applied again (Jobs are immutable). The namespace is the overlay's. --dry-run
# renders and prints the plan without touching a cluster. Needs kubectl and python3 + PyYAML.
set -euo pipefail
cd "$(dirname "$0")/.."

OVERLAY=cpu-small
FROM=fetch
SKIP_FETCH=0
DRY_RUN=0
TIMEOUT_SCALE=1
STAGES=(fetch prepare train export index evaluate)

say() { printf '[pipeline] %s\n' "$*" >&2; }
die() { printf '[pipeline] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

# the value after an option: present and not another option, else one clear line
value() { [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#--}" = "$2" ] || die "$1 needs a value ($3)"; printf '%s' "$2"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --overlay) OVERLAY=$(value "$1" "${2-}" "an overlay: $(echo $(ls k8s/overlays))") || exit 1; shift 2 ;;
    --from) FROM=$(value "$1" "${2-}" "a stage: ${STAGES[*]}") || exit 1; shift 2 ;;
    --skip-fetch) SKIP_FETCH=1; shift ;;
    --timeout-scale) TIMEOUT_SCALE=$(value "$1" "${2-}" "a positive number such as 2 or 0.5") || exit 1; shift 2
      [[ "$TIMEOUT_SCALE" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] && [[ "$TIMEOUT_SCALE" =~ [1-9] ]] \
        || die "--timeout-scale $TIMEOUT_SCALE: give a positive number such as 2 or 0.5 (it multiplies every stage's deadline)" ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[ -d "k8s/overlays/$OVERLAY" ] || die "no overlay k8s/overlays/$OVERLAY (have: $(ls k8s/overlays | tr '\n' ' '))"
printf '%s\n' "${STAGES[@]}" | grep -qx -- "$FROM" || die "--from $FROM: not a stage (stages: ${STAGES[*]})"
command -v kubectl >/dev/null 2>&1 || die "kubectl is required (https://kubernetes.io/docs/tasks/tools/)"
PYTHON=$(command -v python3 || true)
[ -n "$PYTHON" ] && "$PYTHON" -c 'import yaml' 2>/dev/null || PYTHON=.venv/bin/python
"$PYTHON" -c 'import yaml' 2>/dev/null || die "python3 with PyYAML is required to read the rendered manifests (pip install pyyaml)"

RENDERED=$(mktemp --suffix=.yaml); trap 'rm -f "$RENDERED"' EXIT
kubectl kustomize "k8s/overlays/$OVERLAY" > "$RENDERED" \
  || die "kustomize could not render k8s/overlays/$OVERLAY"
NAMESPACE=$("$PYTHON" -c 'import sys, yaml; print(next((d["metadata"].get("namespace") for d in yaml.safe_load_all(open(sys.argv[1])) if d), None) or "default")' "$RENDERED")

# "kind name deadline_seconds images" of the object labelled with a stage's component
stage_object() {
  "$PYTHON" - "$RENDERED" "$1" <<'PY'
import sys, yaml
path, stage = sys.argv[1], sys.argv[2]

def images(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from images(value)
    elif isinstance(node, list):
        for value in node:
            yield from images(value)

for doc in yaml.safe_load_all(open(path)):
    if doc and doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == stage:
        spec = doc.get("spec", {})
        deadline = spec.get("activeDeadlineSeconds") or spec.get("runPolicy", {}).get("activeDeadlineSeconds") or 7200
        print(doc["kind"], doc["metadata"]["name"], deadline, ",".join(sorted(set(images(spec)))) or "-")
        break
else:
    sys.exit(f"no object labelled app.kubernetes.io/component={stage} in the rendered overlay")
PY
}

# succeeded | failed | running, from the object's status
stage_state() {
  local kind=$1 name=$2 out
  case "$kind" in
    Job|MPIJob)
      out=$(kubectl -n "$NAMESPACE" get "$kind" "$name" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}' 2>/dev/null || true)
      case " $out " in
        *" Complete "*|*" Succeeded "*) echo succeeded ;;
        *" Failed "*) echo failed ;;
        *) echo running ;;
      esac ;;
    SparkApplication)
      out=$(kubectl -n "$NAMESPACE" get sparkapplication "$name" -o jsonpath='{.status.applicationState.state}' 2>/dev/null || true)
      case "$out" in
        COMPLETED) echo succeeded ;;
        FAILED|SUBMISSION_FAILED|FAILING) echo failed ;;
        *) echo running ;;
      esac ;;
    *) die "do not know how to wait on a $kind" ;;
  esac
}

# "pod image reason: message" for a pod of the stage stuck pulling its image (nothing when none is)
pull_failure() {
  local kind=$1 name=$2 selector
  case "$kind" in
    Job) selector="job-name=$name" ;;
    MPIJob) selector="training.kubeflow.org/job-name=$name" ;;
    SparkApplication) selector="sparkoperator.k8s.io/app-name=$name" ;;
  esac
  kubectl -n "$NAMESPACE" get pods -l "$selector" -o json 2>/dev/null | "$PYTHON" -c '
import json, sys
try:
    pods = json.load(sys.stdin).get("items", [])
except ValueError:
    pods = []
for pod in pods:
    status = pod.get("status", {})
    for c in status.get("initContainerStatuses", []) + status.get("containerStatuses", []):
        waiting = c.get("state", {}).get("waiting") or {}
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"):
            message = " ".join(waiting.get("message", "").split())[:300]
            print("pod %s cannot pull image %s (%s: %s)" % (pod["metadata"]["name"], c.get("image"), waiting["reason"], message))
            sys.exit(0)
' || true
}

show_logs() {
  local kind=$1 name=$2
  say "last log lines of $kind/$name:"
  case "$kind" in
    Job) kubectl -n "$NAMESPACE" logs "job/$name" --tail=40 >&2 || true ;;
    MPIJob) kubectl -n "$NAMESPACE" logs -l "training.kubeflow.org/job-name=$name,training.kubeflow.org/job-role=launcher" --tail=40 >&2 || true ;;
    SparkApplication) kubectl -n "$NAMESPACE" logs "$name-driver" --tail=40 >&2 || true ;;
  esac
}

run_stage() {
  local stage=$1 kind name deadline images state waited=0 condition pull
  read -r kind name deadline images < <(stage_object "$stage")
  deadline=$("$PYTHON" -c "print(int($deadline * $TIMEOUT_SCALE))")
  if [ "$DRY_RUN" = 1 ]; then
    say "$stage: would apply $kind/$name in namespace $NAMESPACE and wait up to ${deadline}s (image ${images//,/, })"
    return
  fi
  say "$stage: applying $kind/$name"
  kubectl -n "$NAMESPACE" delete "$kind" "$name" --ignore-not-found --wait=true >/dev/null
  kubectl -n "$NAMESPACE" apply -f "$RENDERED" -l "app.kubernetes.io/component=$stage" >/dev/null
  case "$kind" in
    Job) condition=condition=Complete ;;
    MPIJob) condition=condition=Succeeded ;;
    SparkApplication) condition='jsonpath={.status.applicationState.state}=COMPLETED' ;;
  esac
  while :; do
    # kubectl wait returns as soon as the stage succeeds; between waits, look for failure
    if kubectl -n "$NAMESPACE" wait "$kind/$name" --for="$condition" --timeout=30s >/dev/null 2>&1; then
      state=succeeded
    else
      state=$(stage_state "$kind" "$name")
    fi
    if [ "$state" = running ] && pull=$(pull_failure "$kind" "$name") && [ -n "$pull" ]; then
      die "stage $stage failed ($kind/$name): $pull; push the image or set images: in the overlay (docs/kubernetes.md)"
    fi
    case "$state" in
      succeeded) say "$stage: done in ${waited}s+"; return ;;
      failed) show_logs "$kind" "$name"; die "stage $stage failed ($kind/$name); fix it and re-run with --from $stage" ;;
    esac
    waited=$((waited + 30))
    [ "$waited" -lt "$deadline" ] || { show_logs "$kind" "$name"; die "stage $stage did not finish within ${deadline}s ($kind/$name)"; }
    say "$stage: running (${waited}s)"
  done
}

say "overlay $OVERLAY, namespace $NAMESPACE$([ "$DRY_RUN" = 1 ] && echo ', dry run')"
say "images: $("$PYTHON" - "$RENDERED" <<'PY'
import re, sys
print(", ".join(sorted(set(re.findall(r"^\s*-?\s*image:\s*['\"]?([^\s'\"]+)", open(sys.argv[1]).read(), re.M)))))
PY
) (the overlay's images: entry; the shipped names are placeholders, see docs/kubernetes.md)"
if [ "$DRY_RUN" = 1 ]; then
  say "would apply the shared objects: $("$PYTHON" - "$RENDERED" <<'PY'
import sys, yaml
print(", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in yaml.safe_load_all(open(sys.argv[1]))
                if d and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "shared"))
PY
)"
else
  kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl create namespace "$NAMESPACE" >/dev/null
  kubectl -n "$NAMESPACE" apply -f "$RENDERED" -l app.kubernetes.io/component=shared
fi

started=0
for stage in "${STAGES[@]}"; do
  [ "$stage" = "$FROM" ] && started=1
  [ "$started" = 1 ] || continue
  if [ "$stage" = fetch ] && [ "$SKIP_FETCH" = 1 ]; then say "fetch: skipped"; continue; fi
  run_stage "$stage"
done
say "pipeline finished"
