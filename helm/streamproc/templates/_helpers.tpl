{{/* Names and labels shared by every manifest. */}}
{{- define "streamproc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamproc.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "streamproc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamproc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streamproc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "streamproc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/part-of: streamproc
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "streamproc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "streamproc.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "streamproc.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The worker's config file: non-secret settings; secrets are files named by *_file keys. */}}
{{- define "streamproc.config" -}}
{{- $k := .Values.kafka -}}
{{- $protocol := upper $k.securityProtocol -}}
{{- $cfg := dict "kafka_bootstrap" $k.bootstrap "kafka_security_protocol" $protocol "http_port" .Values.httpPort "data_dir" "/var/lib/streamproc" "llm_provider" .Values.llm.provider -}}
{{- if hasPrefix "SASL_" $protocol -}}
{{- if not (and $k.sasl.username $k.sasl.passwordSecret.name) -}}
{{- fail "kafka.securityProtocol SASL_* needs kafka.sasl.username and kafka.sasl.passwordSecret.name" -}}
{{- end -}}
{{- $_ := set $cfg "kafka_sasl_mechanism" $k.sasl.mechanism -}}
{{- $_ := set $cfg "kafka_sasl_username" $k.sasl.username -}}
{{- $_ := set $cfg "kafka_sasl_password_file" "/var/run/secrets/streamproc/kafka-sasl/password" -}}
{{- end -}}
{{- if has $protocol (list "SSL" "SASL_SSL") -}}
{{- $_ := set $cfg "kafka_ssl_check_hostname" $k.tls.checkHostname -}}
{{- if $k.tls.caSecret.name -}}
{{- $_ := set $cfg "kafka_ssl_ca_file" "/var/run/secrets/streamproc/kafka-ca/ca.crt" -}}
{{- end -}}
{{- if $k.tls.clientCertSecret.name -}}
{{- $_ := set $cfg "kafka_ssl_cert_file" "/var/run/secrets/streamproc/kafka-client/tls.crt" -}}
{{- $_ := set $cfg "kafka_ssl_key_file" "/var/run/secrets/streamproc/kafka-client/tls.key" -}}
{{- end -}}
{{- end -}}
{{- if .Values.schemaRegistry.url -}}
{{- $_ := set $cfg "schema_registry_url" .Values.schemaRegistry.url -}}
{{- end -}}
{{- if ne .Values.llm.provider "none" -}}
{{- $_ := set $cfg "llm_model" (required "llm.model is required when llm.provider is set" .Values.llm.model) -}}
{{- if .Values.llm.baseUrl -}}
{{- $_ := set $cfg "llm_base_url" .Values.llm.baseUrl -}}
{{- end -}}
{{- if .Values.llm.apiKeySecret.name -}}
{{- $_ := set $cfg "llm_api_key_file" "/var/run/secrets/streamproc/llm/api-key" -}}
{{- end -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $cfg .Values.settings) -}}
{{- end -}}

{{/* Secret volumes (mounted read-only as files) and their mounts. */}}
{{- define "streamproc.secretVolumes" -}}
{{- $k := .Values.kafka -}}
{{- if and (hasPrefix "SASL_" (upper $k.securityProtocol)) $k.sasl.passwordSecret.name }}
- name: kafka-sasl
  secret:
    secretName: {{ $k.sasl.passwordSecret.name }}
    items: [{key: {{ $k.sasl.passwordSecret.key }}, path: password}]
{{- end }}
{{- if $k.tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ $k.tls.caSecret.name }}
    items: [{key: {{ $k.tls.caSecret.key }}, path: ca.crt}]
{{- end }}
{{- if $k.tls.clientCertSecret.name }}
- name: kafka-client
  secret:
    secretName: {{ $k.tls.clientCertSecret.name }}
{{- end }}
{{- if .Values.llm.apiKeySecret.name }}
- name: llm
  secret:
    secretName: {{ .Values.llm.apiKeySecret.name }}
    items: [{key: {{ .Values.llm.apiKeySecret.key }}, path: api-key}]
{{- end }}
{{- end -}}

{{- define "streamproc.secretMounts" -}}
{{- $k := .Values.kafka -}}
{{- if and (hasPrefix "SASL_" (upper $k.securityProtocol)) $k.sasl.passwordSecret.name }}
- {name: kafka-sasl, mountPath: /var/run/secrets/streamproc/kafka-sasl, readOnly: true}
{{- end }}
{{- if $k.tls.caSecret.name }}
- {name: kafka-ca, mountPath: /var/run/secrets/streamproc/kafka-ca, readOnly: true}
{{- end }}
{{- if $k.tls.clientCertSecret.name }}
- {name: kafka-client, mountPath: /var/run/secrets/streamproc/kafka-client, readOnly: true}
{{- end }}
{{- if .Values.llm.apiKeySecret.name }}
- {name: llm, mountPath: /var/run/secrets/streamproc/llm, readOnly: true}
{{- end }}
{{- end -}}
