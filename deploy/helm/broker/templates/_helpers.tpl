{{- define "broker.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "broker.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "broker.instance" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* the serving pods only: the Service, the PDB and the spread constraints never select the migration or test pods */}}
{{- define "broker.selector" -}}
{{ include "broker.instance" . }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "broker.serviceAccountName" -}}
{{- default (include "broker.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "broker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* env shared by the broker pods and the migration job: secrets by reference, never rendered */}}
{{- define "broker.env" -}}
- name: BROKER_CONFIG
  value: /etc/broker/broker.yaml
- name: BROKER_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.existingSecret }}, key: database-url}
{{- end -}}

{{/* the fewest serving pods there may be: replicaCount, or the HPA's floor */}}
{{- define "broker.minReplicas" -}}
{{- if .Values.autoscaling.enabled -}}
{{- .Values.autoscaling.minReplicas -}}
{{- else -}}
{{- .Values.replicaCount -}}
{{- end -}}
{{- end -}}
