{{/* The labels of every object: the kustomize base's, and Helm's own. */}}
{{- define "slipway.labels" -}}
app.kubernetes.io/name: slipway
app.kubernetes.io/part-of: slipway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "slipway.operatorLabels" -}}
{{ include "slipway.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "slipway.selector" -}}
app.kubernetes.io/name: slipway
app.kubernetes.io/component: operator
{{- end }}

{{- define "slipway.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The operator's namespaced rights: in the ClusterRole when it watches every namespace, in a Role
of the watched namespace otherwise. One list, so the two cannot drift.
*/}}
{{- define "slipway.namespacedRules" -}}
# Events on the ModelDeployment (Slipway posts them, named after their outbox key).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Slipway's own resource: read; written to in its status only.
- apiGroups: ["slipway.dev"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["slipway.dev"]
  resources: ["modeldeployments/status"]
  verbs: ["patch"]
# The children Slipway renders and manages.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Revision history for rollback: one ControllerRevision per verified revision.
- apiGroups: ["apps"]
  resources: ["controllerrevisions"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Which pods of a revision are Ready; each pod's readiness gate.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["pods/status"]
  verbs: ["patch"]
# Where a Service routes before smoke tests go through it.
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list"]
{{- end }}
