{{/*
The operator's RBAC rules, shared by the ClusterRole (cluster scope) and the Roles
(namespace scope) in rbac.yaml: exactly the calls docs/operator.md lists, one comment
per rule. kopf's namespace and CRD scanning is off, so nothing cluster-wide is read.
*/}}
{{- define "kubeslim.rules" }}
# Watch ModelOptimizations (kopf lists, then watches; the operator reads each one fresh
# before planning) and patch them: kopf keeps its finalizer and progress in annotations.
- apiGroups: ["kubeslim.dev"]
  resources: ["modeloptimizations"]
  verbs: ["get", "list", "watch", "patch"]
# The status subresource: conditions, stage Job summaries and results (merge patch).
- apiGroups: ["kubeslim.dev"]
  resources: ["modeloptimizations/status"]
  verbs: ["patch"]
# Stage Jobs are owned with blockOwnerDeletion: true, which the OwnerReferencesPermission-
# Enforcement admission plugin allows only to who may update the owner's finalizers.
- apiGroups: ["kubeslim.dev"]
  resources: ["modeloptimizations/finalizers"]
  verbs: ["update"]
# One Job per stage, watched for progress; delete only for a running Job that a spec edit
# made stale.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
# The rendezvous Service of a multi-worker prune Job, created before it; get tells ours
# from a deleted namesake's on a 409; delete goes with a stale Job and that namesake's.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "get", "delete"]
# A stage Job's Pods, by the batch.kubernetes.io/job-name label, for the termination message.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# The tail of a stage Pod's log: progress lines while it runs, the error when it fails.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# One Event per transition on the ModelOptimization (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{- define "kubeslim.peeringRule" }}
# kopf peering (replicas > 1 only): each replica watches the peering object and patches
# its keep-alive and priority into the object's status.
- apiGroups: ["kopf.dev"]
  resources: [{{ . | quote }}]
  verbs: ["list", "watch", "patch"]
{{- end }}
