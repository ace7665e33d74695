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

{{/* Worker processes as a number: config.server.workers, 1 when unset; "auto" (resolved by
streamhop from the pod's CPUs, unknown here) counts as 1. */}}
{{- define "streamhop.workers" -}}
{{- $workers := default 1 .Values.config.server.workers }}
{{- if eq (toString $workers) "auto" }}1{{ else }}{{ int $workers }}{{ end }}
{{- end }}

{{/* Open requests a pod may hold: max_streams per worker process ("auto": see above; set a
number for an exact saturation alert). */}}
{{- define "streamhop.podMaxStreams" -}}
{{ mul (int .Values.config.server.max_streams) (int (include "streamhop.workers" .)) }}
{{- end }}

{{- define "streamhop.checkValues" -}}
{{- $resume := .Values.config.resume }}
{{- $several := or (eq (toString .Values.config.server.workers) "auto") (gt (int (include "streamhop.workers" .)) 1) }}
{{- if and $several $resume.enabled (eq (default "memory" $resume.store) "memory") }}
{{- fail (printf "streamhop: config.server.workers is %v, but config.resume.store is \"memory\": each worker would hold its own resume logs and a reconnect lands on any worker; set config.resume.store to \"redis\", or workers to 1" .Values.config.server.workers) }}
{{- end }}
{{- if and $resume.enabled (eq $resume.store "redis") }}
{{- if not (or .Values.secrets.resumeBindingKey.existingSecret $resume.binding_key) }}
{{- fail "streamhop: config.resume.store is \"redis\": replicas sharing Redis must share the resume binding key; set secrets.resumeBindingKey.existingSecret (a Secret holding a long random string)" }}
{{- end }}
{{- if not (or .Values.secrets.redisUrl.existingSecret $resume.redis_url) }}
{{- fail "streamhop: config.resume.store is \"redis\": set secrets.redisUrl.existingSecret or config.resume.redis_url" }}
{{- end }}
{{- end }}
{{- include "streamhop.checkNetworkValues" . }}
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
{{- if .Values.tls.enabled }}
tls_cert_file = {{ printf "%s/tls.crt" (include "streamhop.tlsDir" .) | quote }}
tls_key_file = {{ printf "%s/tls.key" (include "streamhop.tlsDir" .) | quote }}
{{- end }}
{{- range $route := $c.routes }}

[[routes]]
{{- include "streamhop.tomlPairs" (omit $route "proxy") }}
{{- /* proxy = "" means "go direct even if HTTPS_PROXY is set": unlike other keys, an empty
string is written, and only a missing (or null) proxy is left out. */}}
{{- if and (hasKey $route "proxy") (not (kindIs "invalid" $route.proxy)) }}
proxy = {{ toJson $route.proxy }}
{{- end }}
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

[record]
{{- if .Values.record.enabled }}
dir = {{ include "streamhop.recordDir" . | quote }}
{{- end }}
{{- include "streamhop.tomlPairs" (default (dict) $c.record) }}
{{ end }}

{{/* Where record.enabled mounts its volume, and [record] dir of the rendered config. */}}
{{- define "streamhop.recordDir" -}}/var/lib/streamhop/recordings{{- end }}

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
{{- include "streamhop.networkEnv" . }}
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
  {{- if and $sidecar (include "streamhop.nativeSidecar" $) }}
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
  {{- if and $sidecar (include "streamhop.nativeSidecar" $) }}{{ $preStop = 0 }}{{ end }}
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
    {{- if $.Values.record.enabled }}
    - name: streamhop-recordings
      mountPath: {{ include "streamhop.recordDir" $ }}
    {{- end }}
{{- end }}

{{- define "streamhop.volumes" -}}
{{- $files := include "streamhop.fileSources" . | trim -}}
- name: streamhop-config
  {{- if $files }}
  projected:
    sources:
      - configMap:
          name: {{ include "streamhop.configMapName" . }}
      {{- $files | nindent 6 }}
  {{- else }}
  configMap:
    name: {{ include "streamhop.configMapName" . }}
  {{- end }}
- name: streamhop-tmp
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- with .Values.record }}
{{- if .enabled }}
- name: streamhop-recordings
  {{- if .volume.claimName }}
  persistentVolumeClaim:
    claimName: {{ .volume.claimName | quote }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .volume.sizeLimit | quote }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------------------------------------
Sidecar mode: include these from your own pod template (see the comment at the top).
------------------------------------------------------------------------------------------ */}}

{{/* "true" when the sidecar is a native one: sidecar.native, on Kubernetes >= 1.29 (restartable
init containers are on by default from 1.29; 1.28 has them behind a feature gate, older
versions drop restartPolicy, and the sidecar would block the pod's start as a plain init
container). Below 1.29 the sidecar falls back to a plain container, and NOTES.txt says so.
The version is .Capabilities.KubeVersion: pass "Capabilities" .Capabilities in the context
dict of your chart (docs/kubernetes.md); without it sidecar.native alone decides. */}}
{{- define "streamhop.nativeSidecar" -}}
{{- if .Values.sidecar.native -}}
{{- $caps := get . "Capabilities" -}}
{{- if or (not $caps) (semverCompare ">=1.29.0-0" $caps.KubeVersion.Version) }}true{{ end -}}
{{- end -}}
{{- end }}

{{/* The streamhop sidecar, for initContainers when "streamhop.nativeSidecar" (Kubernetes >= 1.29:
it starts before your app, its startup probe holds your app back until it listens, and it stops
after your app), else for containers. streamhop.sidecarInitContainers and
streamhop.sidecarContainers put it in the right list for you. */}}
{{- define "streamhop.sidecar" -}}
{{ include "streamhop.container" (dict "ctx" . "sidecar" true) }}
{{- end }}

{{/* The sidecar for your pod's initContainers: empty unless it is a native sidecar. */}}
{{- define "streamhop.sidecarInitContainers" -}}
{{- if include "streamhop.nativeSidecar" . }}{{ include "streamhop.sidecar" . }}{{ end }}
{{- end }}

{{/* The sidecar for your pod's containers: empty when it is a native sidecar. */}}
{{- define "streamhop.sidecarContainers" -}}
{{- if not (include "streamhop.nativeSidecar" .) }}{{ include "streamhop.sidecar" . }}{{ end }}
{{- end }}

{{/* The volumes the sidecar mounts. */}}
{{- define "streamhop.sidecarVolumes" -}}
{{- include "streamhop.volumes" . }}
{{- end }}

{{/* The SDK line of one route, printed by NOTES.txt. Context: dict "ctx" <root> "route" <route>.
The Anthropic SDK appends /v1/messages to its base_url, so its base URL is the route's own;
OpenAI-compatible SDKs append /chat/completions (or /responses), so theirs ends in /v1 unless
the upstream URL already does. format "auto" is taken for Anthropic when the upstream's host
names it; "sse" is any SSE API: its URL is the route's, the client adds its own paths. */}}
{{- define "streamhop.routeClient" -}}
{{- $route := .route }}
{{- $url := printf "%s%s" (include "streamhop.baseUrl" .ctx) (trimSuffix "/" $route.prefix) }}
{{- $upstream := lower $route.upstream }}
{{- $format := $route.format | default "auto" }}
{{- $host := regexReplaceAll "^[a-z][a-z0-9+.-]*://([^/@]*@)?([^/:]+).*$" $upstream "${2}" }}
{{- $upstreamPath := regexReplaceAll "^[a-z][a-z0-9+.-]*://[^/]*" $upstream "" | trimSuffix "/" }}
{{- if or (eq $format "anthropic") (and (eq $format "auto") (contains "anthropic" $host)) -}}
Anthropic(base_url="{{ $url }}")
{{- else if eq $format "sse" -}}
{{ $url }}/...  (format "sse": your client adds the provider's paths)
{{- else -}}
OpenAI(base_url="{{ $url }}{{ if not (hasSuffix "/v1" $upstreamPath) }}/v1{{ end }}")
{{- end }}
{{- end }}

{{/* One block per route for NOTES.txt: prefix, upstream (userinfo hidden, as streamhop's logs
hide it), and the SDK line with its base URL. */}}
{{- define "streamhop.routeList" -}}
{{- range $route := .Values.config.routes }}
  route {{ $route.prefix | quote }} -> {{ regexReplaceAll "://[^/]*@" $route.upstream "://***@" }}
      {{ include "streamhop.routeClient" (dict "ctx" $ "route" $route) }}
{{- end }}
{{- end }}

{{/* The base URL an SDK uses (printed by NOTES.txt). */}}
{{- define "streamhop.baseUrl" -}}
{{- if eq .Values.mode "sidecar" -}}
http://127.0.0.1:{{ .Values.ports.proxy }}
{{- else -}}
{{ ternary "https" "http" .Values.tls.enabled }}://{{ include "streamhop.fullname" . }}.{{ .Release.Namespace }}.svc.cluster.local:{{ .Values.service.port }}
{{- end -}}
{{- end }}

{{/* ------------------------------------------------------------------------------------------
Company networks: egress proxy, private CA, client certificates, TLS on the listener.

Every file streamhop reads besides its config is projected into /etc/streamhop beside
streamhop.toml, so the config volume turns into a projected volume when there are any. Not a
volume of its own mounted under /etc/streamhop: its mount point would have to be created inside
the ConfigMap volume, which the kubelet mounts read-only. Not subPath: a subPath mount never
sees a rotated Secret, and streamhop reloads the listener's certificate when it changes.
------------------------------------------------------------------------------------------ */}}

{{- define "streamhop.caBundlePath" -}}/etc/streamhop/trust/ca.pem{{- end }}
{{- define "streamhop.clientCertDir" -}}/etc/streamhop/client-certs{{- end }}
{{- define "streamhop.tlsDir" -}}/etc/streamhop/tls{{- end }}

{{/* The listener's kubernetes.io/tls Secret: tls.secretName, or with cert-manager and no name,
"<fullname>-tls" (the Certificate's secretName). */}}
{{- define "streamhop.tlsSecretName" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "streamhop.fullname" .)) }}
{{- end }}

{{/* "true" when egressProxy gives the container HTTPS_PROXY or HTTP_PROXY. */}}
{{- define "streamhop.envProxy" -}}
{{- $p := .Values.egressProxy }}
{{- if or $p.httpsProxy $p.httpProxy (and $p.existingSecret (or $p.httpsProxyKey $p.httpProxyKey)) }}true{{ end }}
{{- end }}

{{/* HTTPS_PROXY, HTTP_PROXY and NO_PROXY as Python reads them (a proxy URL with credentials
only from a Secret: the pod spec is no place for it either), and SSL_CERT_FILE. */}}
{{- define "streamhop.networkEnv" -}}
{{- $p := .Values.egressProxy }}
{{- if and $p.existingSecret $p.httpsProxyKey }}
- name: HTTPS_PROXY
  valueFrom:
    secretKeyRef:
      name: {{ $p.existingSecret | quote }}
      key: {{ $p.httpsProxyKey | quote }}
{{- else if $p.httpsProxy }}
- name: HTTPS_PROXY
  value: {{ $p.httpsProxy | quote }}
{{- end }}
{{- if and $p.existingSecret $p.httpProxyKey }}
- name: HTTP_PROXY
  valueFrom:
    secretKeyRef:
      name: {{ $p.existingSecret | quote }}
      key: {{ $p.httpProxyKey | quote }}
{{- else if $p.httpProxy }}
- name: HTTP_PROXY
  value: {{ $p.httpProxy | quote }}
{{- end }}
{{- if and (include "streamhop.envProxy" .) $p.noProxy }}
- name: NO_PROXY
  value: {{ join "," $p.noProxy | quote }}
{{- end }}
{{- if .Values.caBundle.setSslCertFile }}
- name: SSL_CERT_FILE
  value: {{ include "streamhop.caBundlePath" . | quote }}
{{- end }}
{{- end }}

{{/* The projected sources besides the ConfigMap, one per file set; empty when there are none. */}}
{{- define "streamhop.fileSources" -}}
{{- $ca := .Values.caBundle }}
{{- if or $ca.configMap $ca.secret }}
- {{ ternary "configMap" "secret" (not (empty $ca.configMap)) }}:
    name: {{ $ca.configMap | default $ca.secret | quote }}
    items:
      - key: {{ $ca.key | quote }}
        path: trust/ca.pem
{{- end }}
{{- range .Values.clientCertificates }}
- secret:
    name: {{ .secretName | quote }}
    items:
      - key: tls.crt
        path: client-certs/{{ .name }}/tls.crt
      - key: tls.key
        path: client-certs/{{ .name }}/tls.key
{{- end }}
{{- if .Values.tls.enabled }}
- secret:
    name: {{ include "streamhop.tlsSecretName" . | quote }}
    items:
      - key: tls.crt
        path: tls/tls.crt
      - key: tls.key
        path: tls/tls.key
{{- end }}
{{- end }}

{{- define "streamhop.checkNetworkValues" -}}
{{- $p := .Values.egressProxy }}
{{- if $p.existingSecret }}
{{- if not (or $p.httpsProxyKey $p.httpProxyKey) }}
{{- fail "streamhop: egressProxy.existingSecret is set, but neither egressProxy.httpsProxyKey nor egressProxy.httpProxyKey names a key of it" }}
{{- end }}
{{- if and $p.httpsProxyKey $p.httpsProxy }}
{{- fail "streamhop: HTTPS_PROXY would come from both egressProxy.httpsProxy and egressProxy.existingSecret (key egressProxy.httpsProxyKey); keep one (a proxy URL with credentials belongs in the Secret), or set httpsProxyKey to \"\"" }}
{{- end }}
{{- if and $p.httpProxyKey $p.httpProxy }}
{{- fail "streamhop: HTTP_PROXY would come from both egressProxy.httpProxy and egressProxy.existingSecret (key egressProxy.httpProxyKey); keep one, or set httpProxyKey to \"\"" }}
{{- end }}
{{- end }}
{{- $trustEnv := .Values.config.server.trust_env }}
{{- if and (include "streamhop.envProxy" .) (kindIs "bool" $trustEnv) (not $trustEnv) }}
{{- fail "streamhop: egressProxy sets HTTPS_PROXY / HTTP_PROXY, but config.server.trust_env is false, so streamhop would ignore them; turn trust_env on, or give routes their own proxy (config.routes[].proxy)" }}
{{- end }}
{{- $ca := .Values.caBundle }}
{{- if and $ca.configMap $ca.secret }}
{{- fail (printf "streamhop: caBundle.configMap (%q) and caBundle.secret (%q) are both set; %s comes from one of them" $ca.configMap $ca.secret (include "streamhop.caBundlePath" .)) }}
{{- end }}
{{- if and $ca.setSslCertFile (not (or $ca.configMap $ca.secret)) }}
{{- fail (printf "streamhop: caBundle.setSslCertFile points SSL_CERT_FILE at %s, but no bundle is mounted there; set caBundle.configMap or caBundle.secret" (include "streamhop.caBundlePath" .)) }}
{{- end }}
{{- $tls := .Values.tls }}
{{- if $tls.enabled }}
{{- if eq .Values.mode "sidecar" }}
{{- fail "streamhop: tls.enabled is for gateway mode; a sidecar listens on 127.0.0.1 inside its pod, where your app talks plain HTTP to it" }}
{{- end }}
{{- if not (or $tls.secretName $tls.certManager.enabled) }}
{{- fail "streamhop: tls.enabled needs the listener's certificate: set tls.secretName (an existing kubernetes.io/tls Secret) or tls.certManager.enabled (cert-manager writes the Secret)" }}
{{- end }}
{{- end }}
{{- if $tls.certManager.enabled }}
{{- if not $tls.enabled }}
{{- fail "streamhop: tls.certManager.enabled issues a certificate for the listener, but tls.enabled is false, so nothing would use it" }}
{{- end }}
{{- if not $tls.certManager.issuerRef.name }}
{{- fail "streamhop: tls.certManager.enabled needs tls.certManager.issuerRef.name (an Issuer, or a ClusterIssuer with issuerRef.kind ClusterIssuer)" }}
{{- end }}
{{- end }}
{{- /* Every file a route names under /etc/streamhop/ must be one the chart mounts there:
otherwise the pod would start and every request on the route would fail. */}}
{{- $mounted := list }}
{{- if or $ca.configMap $ca.secret }}
{{- $mounted = append $mounted (include "streamhop.caBundlePath" .) }}
{{- end }}
{{- $certDir := include "streamhop.clientCertDir" . }}
{{- $names := dict }}
{{- range .Values.clientCertificates }}
{{- if hasKey $names .name }}
{{- fail (printf "streamhop: clientCertificates has two entries named %q; each is mounted at %s/<name>/" .name $certDir) }}
{{- end }}
{{- $_ := set $names .name true }}
{{- $mounted = append $mounted (printf "%s/%s/tls.crt" $certDir .name) }}
{{- $mounted = append $mounted (printf "%s/%s/tls.key" $certDir .name) }}
{{- end }}
{{- range $i, $route := .Values.config.routes }}
{{- range $key := list "tls_ca_file" "tls_client_cert" "tls_client_key" }}
{{- $path := get $route $key }}
{{- if and (kindIs "string" $path) (hasPrefix "/etc/streamhop/" $path) (not (has $path $mounted)) }}
{{- fail (printf "streamhop: config.routes[%d] (prefix %q) has %s = %q, but the chart mounts no such file; under /etc/streamhop/ it mounts %s (from caBundle and clientCertificates)" $i $route.prefix $key $path (ternary "nothing" (join ", " $mounted) (empty $mounted))) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
