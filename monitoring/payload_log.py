"""The payload-log contract, defined once: what KServe's payload logger (and the local plane's) posts and
what the drift service reads.

KServe's logger posts one CloudEvent per request and one per response, in binary mode (ce-* headers,
the payload as the body), with the same `id`, and the extensions `inferenceservicename`, `namespace`,
`component` and `endpoint` (`default` | `canary` in Knative mode). In Standard mode `endpoint` and `source`
are empty, so Shepherd names each predictor's revision in its logger URL instead (`?role=canary&version=2`:
`serving.inference_service.revision_log_url`), and the drift service reads it there when `endpoint` is empty.
KServe's agent posts a prediction's two events from concurrent workers: either may come first. It logs a
response only when the status is 200. The local plane also logs error responses, with the status in
`statuscode`, and `modelid` (the served version); it sends its own drift service batches in the JSON event
format.
"""

REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"  # a JSON array of structured events
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"  # one structured event
STATUS_ATTRIBUTE = "statuscode"  # the response's HTTP status; absent (KServe) means 200
MODEL_ID_ATTRIBUTE = "modelid"  # the served version
# A binary tensor body (Open Inference Protocol extension): the length of its JSON part, as the
# `inference-header-content-length` header gave it, so a receiver can split the body as the predictor did.
HEADER_LENGTH_ATTRIBUTE = "inferenceheaderlength"
# A Standard-mode predictor's logger URL names its revision in these query parameters (KServe's agent does not).
REVISION_ROLE_PARAMETER = "role"  # champion | canary
REVISION_VERSION_PARAMETER = "version"
