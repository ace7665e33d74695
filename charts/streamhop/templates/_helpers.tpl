{{/*
Named templates of the streamhop chart.

The sidecar templates (streamhop.sidecar, streamhop.sidecarVolumes, streamhop.configChecksum)
are meant to be included from YOUR chart, with streamhop as a
dependency. They read only .Values and .Release, so call them with a small context:

  {{- $streamhop := dict "Values" .Values.streamhop "Release" .Release }}
  initContainers:
    {{- include "streamhop.sidecar" $streamhop | nindent 4 }}

which is why nothing here reads .Chart (the parent's .Chart would be the wrong chart).
*/}}

{{/* The image tag used when image.tag is empty: the chart's appVersion (a test keeps them equal). */}}
{{- define "streamhop.appVersion" -}}0.1.0{{- end }}

{{- define "streamhop.name" -}}
{{- default "streamhop" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streamhop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "streamhop.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "streamhop.configMapName" -}}
{{- printf "%s-config" (include "streamhop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streamhop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamhop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "streamhop.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "streamhop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default (include "streamhop.appVersion" .) | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamhop
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "streamhop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamhop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "streamhop.image" -}}
{{- $image := .Values.image }}
{{- $repo := $image.repository }}
{{- if $image.registry }}{{ $repo = printf "%s/%s" $image.registry $image.repository }}{{ end }}
{{- if $image.digest }}
{{- printf "%s@%s" $repo $image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default (include "streamhop.appVersion" .) $image.tag) }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------------------------------
The configuration file. Keys under .Values.config are streamhop's own TOML keys (see
config.example.toml); the chart adds [server] listen and admin_listen from the mode and ports,
and the ${NAME} references of the secrets it passes as environment variables. Keys set to null
are left out (streamhop's default applies), and so are empty strings.
------------------------------------------------------------------------------------------ */}}

{{- define "streamhop.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{ toJson $v }}
{{- else if kindIs "bool" $v -}}
{{ ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- if eq (float64 $v) (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if kindIs "slice" $v -}}
{{ toJson $v }}
{{- else -}}
{{ fail (printf "streamhop: cannot write %v (%s) into the TOML config" $v (kindOf $v)) }}
{{- end -}}
{{- end }}

{{/* key = value lines of one table, sorted; sub-tables, nulls and empty strings skipped. */}}
{{- define "streamhop.tomlPairs" -}}
{{- $table := . }}
{{- range $key := keys $table | sortAlpha }}
{{- $v := get $table $key }}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (and (kindIs "string" $v) (eq $v ""))) }}
{{ $key }} = {{ include "streamhop.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end }}

{{- define "streamhop.listen" -}}
{{- if eq .Values.mode "sidecar" -}}
{{ printf "%s:%d" .Values.sidecar.listenHost (int .Values.ports.proxy) }}
{{- else -}}
{{ printf "0.0.0.0:%d" (int .Values.ports.proxy) }}
{{- end -}}
{{- end }}

{{/* The Redis URL comes from secrets.redisUrl: the ConfigMap holds redis_url =
"${STREAMHOP_REDIS_URL}" and the container gets STREAMHOP_REDIS_URL from the Secret (streamhop
expands ${NAME} in redis_url), so the password is never in the ConfigMap. */}}
{{- define "streamhop.redisFromSecret" -}}
{{- if and .Values.config.resume.enabled (eq .Values.config.resume.store "redis") .Values.secrets.redisUrl.existingSecret }}true{{ end }}
{{- end }}

{{- define "streamhop.checkValues" -}}
{{- $resume := .Values.config.resume }}
{{- if and $resume.enabled (eq $resume.store "redis") }}
{{- if not (or .Values.secrets.resumeBindingKey.existingSecret $resume.binding_key) }}
{{- fail "streamhop: config.resume.store is \"redis\": replicas sharing Redis must share the resume binding key; set secrets.resumeBindingKey.existingSecret (a Secret holding a long random string)" }}
{{- end }}
{{- if not (or .Values.secrets.redisUrl.existingSecret $resume.redis_url) }}
{{- fail "streamhop: config.resume.store is \"redis\": set secrets.redisUrl.existingSecret or config.resume.redis_url" }}
{{- end }}
{{- end }}
{{- if and .Values.terminationGracePeriodSeconds (le (float64 .Values.terminationGracePeriodSeconds) (addf .Values.config.server.drain_timeout_s .Values.lifecycle.preStopSleepSeconds)) }}
{{- fail (printf "streamhop: terminationGracePeriodSeconds (%v) must be longer than lifecycle.preStopSleepSeconds + config.server.drain_timeout_s (%v), or streams are killed before the drain ends" .Values.terminationGracePeriodSeconds (addf .Values.config.server.drain_timeout_s .Values.lifecycle.preStopSleepSeconds)) }}
{{- end }}
{{- end }}

{{- define "streamhop.configToml" -}}
{{- include "streamhop.checkValues" . }}
{{- $c := .Values.config -}}
# streamhop configuration, rendered by the Helm chart from .Values.config.
# Every key is documented in config.example.toml.

[server]
listen = {{ include "streamhop.listen" . | quote }}
admin_listen = {{ printf "0.0.0.0:%d" (int .Values.ports.admin) | quote }}
{{- include "streamhop.tomlPairs" $c.server }}
{{- range $route := $c.routes }}

[[routes]]
{{- include "streamhop.tomlPairs" $route }}
{{- with $route.headers }}
[routes.headers]
{{- range $name := keys . | sortAlpha }}
{{ toJson $name }} = {{ include "streamhop.tomlValue" (get $route.headers $name) }}
{{- end }}
{{- end }}
{{- end }}

[rechunk]
{{- include "streamhop.tomlPairs" $c.rechunk }}

[backpressure]
{{- include "streamhop.tomlPairs" $c.backpressure }}

[resume]
{{- include "streamhop.tomlPairs" (omit $c.resume "redis_url" "binding_key") }}
{{- if include "streamhop.redisFromSecret" . }}
redis_url = "${STREAMHOP_REDIS_URL}"
{{- else if $c.resume.redis_url }}
redis_url = {{ toJson $c.resume.redis_url }}
{{- end }}
{{- if .Values.secrets.resumeBindingKey.existingSecret }}
binding_key = "${STREAMHOP_RESUME_BINDING_KEY}"
{{- else if $c.resume.binding_key }}
binding_key = {{ toJson $c.resume.binding_key }}
{{- end }}

[tracing]
{{- include "streamhop.tomlPairs" $c.tracing }}

[metrics]
{{- include "streamhop.tomlPairs" $c.metrics }}
{{ end }}

{{/* sha256 of the rendered config: put it in your pod template's annotations so a config change rolls the pods. */}}
{{- define "streamhop.configChecksum" -}}
{{- include "streamhop.configToml" . | sha256sum }}
{{- end }}

{{/* ------------------------------------------------------------------------------------------
Containers
------------------------------------------------------------------------------------------ */}}

{{- define "streamhop.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{- define "streamhop.env" -}}
{{- range .Values.secrets.providerKeys.env }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName | quote }}
      key: {{ .secretKey | quote }}
{{- end }}
{{- with .Values.secrets.resumeBindingKey }}
{{- if .existingSecret }}
- name: STREAMHOP_RESUME_BINDING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .key | quote }}
{{- end }}
{{- end }}
{{- if include "streamhop.redisFromSecret" . }}
- name: STREAMHOP_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.redisUrl.existingSecret | quote }}
      key: {{ .Values.secrets.redisUrl.key | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "streamhop.envFrom" -}}
{{- with .Values.secrets.providerKeys.existingSecret }}
- secretRef:
    name: {{ . | quote }}
{{- end }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The streamhop container, for both modes. Context: dict "ctx" <root> "sidecar" <bool>. */}}
{{- define "streamhop.container" -}}
{{- $ := .ctx }}
{{- $sidecar := .sidecar }}
{{- $ports := $.Values.ports }}
{{- $env := include "streamhop.env" $ | trim }}
{{- $envFrom := include "streamhop.envFrom" $ | trim }}
- name: {{ ternary $.Values.sidecar.containerName "streamhop" $sidecar }}
  image: {{ include "streamhop.image" $ | quote }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  {{- if and $sidecar $.Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args: ["serve", "--config", "/etc/streamhop/streamhop.toml"]
  ports:
    {{- if not $sidecar }}
    - name: proxy
      containerPort: {{ $ports.proxy }}
      protocol: TCP
    {{- end }}
    - name: {{ ternary "streamhop-admin" "admin" $sidecar }}
      containerPort: {{ $ports.admin }}
      protocol: TCP
  {{- if $env }}
  env:
    {{- $env | nindent 4 }}
  {{- end }}
  {{- if $envFrom }}
  envFrom:
    {{- $envFrom | nindent 4 }}
  {{- end }}
  {{- with $.Values.probes.startup }}
  startupProbe:
    httpGet:
      path: /healthz
      port: {{ $ports.admin }}
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $.Values.probes.readiness }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ $ports.admin }}
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $.Values.probes.liveness }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $ports.admin }}
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $preStop := ternary $.Values.sidecar.preStopSleepSeconds $.Values.lifecycle.preStopSleepSeconds $sidecar }}
  {{- if and $sidecar $.Values.sidecar.native }}{{ $preStop = 0 }}{{ end }}
  {{- if gt (int $preStop) 0 }}
  lifecycle:
    preStop:
      {{- if $.Values.lifecycle.useSleepAction }}
      sleep:
        seconds: {{ int $preStop }}
      {{- else }}
      exec:
        command: ["sleep", {{ int $preStop | quote }}]
      {{- end }}
  {{- end }}
  resources:
    {{- toYaml $.Values.resources | nindent 4 }}
  securityContext:
    {{- include "streamhop.containerSecurityContext" $ | nindent 4 }}
  volumeMounts:
    - name: streamhop-config
      mountPath: /etc/streamhop
      readOnly: true
    - name: streamhop-tmp
      mountPath: /tmp
{{- end }}

{{- define "streamhop.volumes" -}}
- name: streamhop-config
  configMap:
    name: {{ include "streamhop.configMapName" . }}
- name: streamhop-tmp
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- end }}

{{/* ------------------------------------------------------------------------------------------
Sidecar mode: include these from your own pod template (see the comment at the top).
------------------------------------------------------------------------------------------ */}}

{{/* The streamhop sidecar, for initContainers when sidecar.native (Kubernetes >= 1.29: it
starts before your app, its startup probe holds your app back until it listens, and it stops
after your app), else for containers. */}}
{{- define "streamhop.sidecar" -}}
{{ include "streamhop.container" (dict "ctx" . "sidecar" true) }}
{{- end }}

{{/* The volumes the sidecar mounts. */}}
{{- define "streamhop.sidecarVolumes" -}}
{{- include "streamhop.volumes" . }}
{{- end }}

{{/* The base URL an SDK uses (printed by NOTES.txt). */}}
{{- define "streamhop.baseUrl" -}}
{{- if eq .Values.mode "sidecar" -}}
http://127.0.0.1:{{ .Values.ports.proxy }}
{{- else -}}
http://{{ include "streamhop.fullname" . }}.{{ .Release.Namespace }}.svc.cluster.local:{{ .Values.service.port }}
{{- end -}}
{{- end }}
