"""Names shared by the CLI, the operator, the Job builder and the chart."""

GROUP = "kubeslim.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelOptimization"
PLURAL = "modeloptimizations"
SINGULAR = "modeloptimization"
SHORT_NAMES = ["mopt"]
CATEGORIES = ["kubeslim", "ml"]

# Labels put on every Job and Pod the operator creates.
LABEL_NAME = f"{GROUP}/modeloptimization"
LABEL_STAGE = f"{GROUP}/stage"
LABEL_GENERATION = f"{GROUP}/generation"
LABEL_FINGERPRINT = f"{GROUP}/fingerprint"  # the stage fingerprint's first 16 hex digits
LABEL_RETRY_ROUND = f"{GROUP}/retry-round"  # on Jobs made after a kubeslim.dev/retry

# Annotations a person sets on a ModelOptimization; a new value is a new request.
ANNOTATION_RETRY = f"{GROUP}/retry"  # run the failed stage again, spec unchanged
ANNOTATION_CANCEL = f"{GROUP}/cancel"  # stop the pipeline: running Jobs go, state Failed
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubeslim"
# The server-side selector of the operator's Job watch: its stage Jobs only.
JOB_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{GROUP}/modeloptimization"

# Threads kopf runs the operator's (synchronous) handlers in, and the API client's
# connections to match. Handlers mostly wait on the API server: with kopf's default
# (cores + 4 = 6 here) a burst of 100 new resources queued behind each other's calls,
# apply -> first Job p99 6.6 s; with 16, 0.8 s (benchmarks/RESULTS.md 4d).
HANDLER_THREADS = 16

# Where kopf keeps its own bookkeeping (annotations, not status: see README).
KOPF_PREFIX = GROUP

# A stage prints one line starting with this marker for each progress update;
# the operator reads the tail of the Pod log to find the latest one.
PROGRESS_MARKER = "KUBESLIM_PROGRESS "
