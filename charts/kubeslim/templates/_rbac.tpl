{{/*
The operator's RBAC rules, shared by the ClusterRole (cluster scope) and the Roles
(namespace scope) in rbac.yaml. One comment per rule.
*/}}
{{- define "kubeslim.rules" }}
# Watch ModelOptimizations (kopf lists, then watches) and patch them: kopf keeps its
# finalizer and per-handler progress in annotations under kubeslim.dev.
- apiGroups: ["kubeslim.dev"]
  resources: ["modeloptimizations"]
  verbs: ["get", "list", "watch", "patch"]
# Status is a subresource: conditions, stage summaries and results are written here,
# apart from the object itself.
- apiGroups: ["kubeslim.dev"]
  resources: ["modeloptimizations/status"]
  verbs: ["get", "patch"]
# One Job per stage: created when absent, read to follow it, deleted when a spec edit
# makes a stage's result stale.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The Pods of a stage Job, found by label, to read their state and termination message.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
# The tail of a stage Pod's log: progress lines while it runs, the error when it fails.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# kopf posts Kubernetes Events about handler progress and failures on the object.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
{{- define "kubeslim.peeringRule" }}
# kopf peering (replicas > 1 only): each replica reads the peering object and patches
# its keep-alive into the object's status.
- apiGroups: ["kopf.dev"]
  resources: [{{ . | quote }}]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
